# The diagnostics log on flash: the firmware's log lines in a small ring of files (diag/<seq>.log), each capped
# at `size` bytes; a full file starts the next and the oldest beyond `files` is removed, so the log never takes
# more than files x size of flash. Loaded at boot (firmware/log.py's sink); the GetDiagnostics upload that reads
# it back (firmware/diag/upload.py) is imported only when asked for.
#
# Each line is stored as "<epoch seconds> <log line>\n": the wall-clock time, so an upload can pick a time window.
# Lines are gathered in a small RAM buffer and appended to flash when it fills, at once for warnings and errors
# (what comes before a crash matters most), and at flush(): one file write per few lines, not per line (wear).
# A log line never holds a secret by design; the ring still masks the known secret values (secrets), the
# password of any URL, and a private key, before anything reaches flash.
import os
from micropython import const
from firmware import clock

DIR = "diag"
FILES = const(4)       # files in the ring
FILE_MAX = const(8192)  # bytes per file: 32 KB of flash in all by default
_BUF = const(512)
_WARN = const(30)      # firmware.log.WARN
_SECRET_MIN = const(4)  # shorter values are not masked (they would shred every line they occur in)


def secrets(cfg):
    """The charger's passwords as stored now (firmware/config.py), for Ring.secrets: read again at each
    GetDiagnostics, whose upload masks every line once more (an AuthorizationKey set over OCPP since the boot).
    The stored values, not cfg.get(), which would decode four key-table entries and cache them for good."""
    v = cfg._vals
    return v.get("Password"), v.get("WifiPassword"), v.get("MqttPassword"), v.get("WebPassword")


def start(app):
    """The ring as the firmware's log sink (firmware/log.py), kept as app.ring: at the first GetDiagnostics, and at
    every boot after it (firmware/ota/boot.py finds diag/ on flash)."""
    from firmware import log

    app.ring = r = Ring(app.board.state_dir)
    r.secrets = secrets(app.cfg)  # masked before a line reaches flash
    log.sink = r.write
    return r


def redact(text, secrets=()):
    """text with every known secret value, URL password (scheme://user:PASSWORD@host) and private key masked."""
    for s in secrets:
        if s and len(s) >= _SECRET_MIN and s in text:
            text = text.replace(s, "***")
    if "@" in text and "://" in text:
        text = _urls(text)
    i = text.find("PRIVATE KEY")
    if i >= 0:
        j = text.rfind("-----BEGIN", 0, i)
        text = text[:j if j >= 0 else i] + "[private key removed]"
    return text


def _urls(text):
    out = ""
    i = 0
    while True:
        k = text.find("://", i)
        if k < 0:
            return out + text[i:]
        end = k + 3
        while end < len(text) and text[end] not in "/?# \t\"'<>,;":
            end += 1
        at = text.rfind("@", k + 3, end)
        c = text.find(":", k + 3, at) if at > 0 else -1
        if c >= 0:
            out += text[i:c + 1] + "***"
            i = at
        else:
            out += text[i:end]
            i = end


class Ring:
    """root: the flash root. write(lvl, line) is firmware.log's sink: it never raises and never logs."""

    def __init__(self, root, files=FILES, size=FILE_MAX, buf=_BUF):
        self.dir = (root.rstrip("/") + "/" + DIR) if root.rstrip("/") else DIR
        self.files = files
        self.size = size
        self.buf = bytearray(buf)
        self.n = 0
        self.secrets = ()  # values to mask wherever they appear (the caller's passwords)
        self.frozen = False  # while an upload reads the files: lines wait in RAM, none is written
        self.dropped = 0  # lines lost while frozen with a full buffer
        self.errors = 0  # flash errors (a full or failing file system): the log goes on on the console
        try:
            os.mkdir(self.dir)
        except OSError:
            pass
        seqs = self.seqs()
        for s in seqs[:-files]:  # a smaller ring than before: the oldest go
            self._remove(s)
        self.seq = seqs[-1] if seqs else 1
        self.used = 0
        try:
            with open(self.path(self.seq), "r+b") as f:
                self.used = f.seek(0, 2)
                if self.used:
                    f.seek(-1, 2)
                    if f.read(1) != b"\n":  # a record torn by a power cut: end it, so the next starts clean
                        f.write(b"\n")
                        self.used += 1
        except OSError:
            pass

    def path(self, seq):
        return "%s/%08d.log" % (self.dir, seq)

    def seqs(self):
        """The files' sequence numbers, oldest first."""
        out = []
        try:
            for e in os.ilistdir(self.dir):
                name = e[0]
                if name.endswith(".log") and len(name) == 12 and name[:8].isdigit():
                    out.append(int(name[:8]))
        except OSError:
            pass
        out.sort()
        return out

    def write(self, lvl, line):
        try:
            rec = b"%d %s\n" % (clock.now(), redact(line, self.secrets))
            n = len(rec)
            buf = self.buf
            if n > len(buf):
                rec = rec[:len(buf) - 1] + b"\n"  # an overlong line is cut, never a bigger buffer
                n = len(buf)
            if self.n + n > len(buf):
                self.flush()
                if self.n + n > len(buf):  # frozen
                    self.dropped += 1
                    return
            buf[self.n:self.n + n] = rec
            self.n += n
            if lvl >= _WARN:
                self.flush()
        except Exception:  # the log must never fail its caller (a MemoryError on a fragmented heap...)
            self.errors += 1

    def flush(self):
        """Appends the buffered lines to the current file (starting the next one when it is full)."""
        n = self.n
        if not n or self.frozen:
            return
        try:
            if self.used and self.used + n > self.size:
                self.seq += 1
                self.used = 0
                self._remove(self.seq - self.files)
            with open(self.path(self.seq), "ab") as f:
                f.write(memoryview(self.buf)[:n])
            self.used += n
        except OSError:
            self.errors += 1
        self.n = 0

    def _remove(self, seq):
        try:
            os.remove(self.path(seq))
        except OSError:
            pass

    def records(self, start=None, stop=None):
        """(epoch, line) of every stored line with start <= epoch <= stop (None: open), oldest first. Flush and
        freeze the ring first: a rotation meanwhile would remove the file being read."""
        for seq in self.seqs():
            try:
                f = open(self.path(seq))
            except OSError:
                continue
            with f:
                for text in f:
                    sp = text.find(" ")
                    try:
                        t = int(text[:sp]) if sp > 0 else None
                    except ValueError:
                        t = None
                    if t is None:
                        continue  # a record torn by a power cut
                    if (start is None or t >= start) and (stop is None or t <= stop):
                        yield t, text[sp + 1:].rstrip("\n")
