"""Following a board's log after a reset, for tools/deploy.py: BootNotification Accepted, or the reason it is not
coming (WiFi, DNS, TLS verification, HTTP 401, no answer, a crash), read from the firmware's own log lines."""
import re
import time

# The firmware's log lines (firmware/ocpp/session.py, lib/ws.py) that tell whether the charger got in, and why
# not. The WiFi pattern matches the link code's "wifi" lines that say a join failed.
VERDICTS = (
    (r"BootNotification Accepted", "accepted",
     "BootNotification Accepted: the charger is registered with the Central System"),
    (r"BootNotification (Rejected|Pending)", "boot",
     "the Central System answered BootNotification {1}: it does not (yet) accept this ChargeBoxId; register the "
     "charge point there"),
    (r"(?i)\bwi-?fi\b.*\b(fail\w*|timed out|timeout|wrong password|no ap|not found)", "wifi",
     "WiFi join failed ({1}): check the WiFi network name and password, and that the board is in range"),
    (r"failed: cannot resolve host (\S+)", "dns",
     "DNS: the board cannot resolve {1}: check the host in CentralSystemUrl and the network's DNS"),
    (r"failed: TLS verification failed: (.*)", "tls",
     "TLS verification failed ({1}): CentralSystemCa must be the CA that signed the Central System's certificate, "
     "and the URL's host must be named in that certificate"),
    (r"(wss needs a CA certificate|bad CA certificate.*|CA certificate is neither PEM nor DER|CA certificate PEM "
     r"has bad base64)", "tls",
     "TLS: {1}: give the Central System's CA certificate in CentralSystemCa"),
    (r"failed: HTTP 401\b", "http401",
     "HTTP 401: the Central System refused the charger's credentials: check Password (HTTP Basic auth) and that "
     "ChargeBoxId is registered there"),
    (r"failed: HTTP (\d+)(.*)", "http",
     "the Central System answered the WebSocket upgrade with HTTP {1}{2}: check the path in CentralSystemUrl"),
    (r"failed: connection refused \(([^)]*)\)", "noanswer",
     "no answer: nothing accepts connections at {1}: check the host and port in CentralSystemUrl"),
    (r"connect to (\S+) failed: (handshake timed out|connection failed.*)", "noanswer",
     "no answer from {1} ({2}): check the URL, the network path and any firewall"),
    (r"BootNotification failed: (.*)", "noanswer",
     "the Central System did not answer BootNotification properly ({1})"),
    (r"slotboot: (.*given up.*)", "slot", "the firmware slot was rolled back: {1}"),
)
_VERDICTS = [(re.compile(p), kind, text) for p, kind, text in VERDICTS]
# A board whose main.py raised is back at its REPL: MicroPython's banner or prompt.
_REPL = re.compile(r'Type "help\(\)" for more information|^>>> ')
# The firmware retries every failure with a back-off; the same failure twice in a row is its answer.
SAME_FAILURE_TO_STOP = 2


def diagnose(line):
    """(kind, sentence) for a firmware log line that tells how the boot goes, else None."""
    for rx, kind, text in _VERDICTS:
        m = rx.search(line)
        if m:
            return kind, text.format(m.group(0), *m.groups())
    return None


def follow(lines, timeout, say=print):
    """Reads log lines (an iterator yielding str, or None when nothing came for a while) until BootNotification
    Accepted, the same failure twice in a row, a crash that left the board at its REPL, or timeout seconds.
    Returns (accepted, sentence)."""
    deadline = time.monotonic() + timeout
    last, count = None, 0
    traceback = False  # inside a traceback: its first unindented line is the exception
    for line in lines:
        if line is not None:
            say("  | " + line)
            verdict = diagnose(line)
            if line.startswith("Traceback (most recent call last)"):
                traceback = True
            elif traceback and line[:1] not in (" ", ""):
                traceback = False
                verdict = ("crash", "the firmware raised %s" % line.strip())
            elif last and last[0] == "crash" and _REPL.search(line):
                return False, last[1] + " and stopped at the REPL"
            if verdict:
                kind, text = verdict
                if kind == "accepted":
                    return True, text
                count = count + 1 if verdict == last else 1
                last = verdict
                if count >= SAME_FAILURE_TO_STOP:
                    return False, text + (" (again after a restart)" if kind == "crash" else
                                          " (the board keeps retrying)")
        if time.monotonic() > deadline:
            break
    if last:
        return False, last[1]
    return False, "no BootNotification Accepted within %d s, and nothing in the log says why" % timeout


class SerialLines:
    """Lines from a serial port (None when idle for a moment); reopens the port if it goes away (native USB
    re-enumerates after a reset). .ser is the port as open now."""

    def __init__(self, port, baud=115200, ser=None, idle=0.2):
        self.port, self.baud, self.ser, self.idle = port, baud, ser, idle
        if ser is not None:
            ser.timeout = idle

    def __iter__(self):
        import serial
        buf = b""
        while True:
            if self.ser is None:
                try:
                    self.ser = serial.Serial(self.port, self.baud, timeout=self.idle)
                except (OSError, serial.SerialException):
                    time.sleep(0.2)
                    yield None
                    continue
            try:
                data = self.ser.read(256)
            except (OSError, serial.SerialException):
                try:
                    self.ser.close()
                except (OSError, serial.SerialException):
                    pass
                self.ser = None
                continue
            if not data:
                yield None
                continue
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.rstrip(b"\r").decode(errors="replace")
