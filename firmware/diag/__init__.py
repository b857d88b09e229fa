# Diagnostics: ring.py (the log on flash, loaded at boot), upload.py (GetDiagnostics, loaded when asked).
