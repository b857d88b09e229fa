# Runs first on every reset. Kept tiny: the application starts from main.py.
import gc

gc.collect()
