# Runs under the MicroPython unix port from the .mpy build: provision.ensure() on a fresh board that has an
# access point (played by loopback) and a console that answers only when the test says so, so a browser or an
# HTTP client can finish the first-boot setup over the web while the console setup waits.
#   setup_probe.py --state DIR [--console LINE|LINE|...] [--console-after-ms N]
# The state's provision.json sets WebPort. The simulated radio joins only ("HomeNet", "correct-horse-battery").
# Output: the console lines, then "ENSURE ran=<bool> ap_open=<bool> loaded=<modules of the setup still loaded>"
# and "CONFIG <json of the stored settings; secrets as set/unset>".
import sys
import json
import time
from firmware import config

_ARGS = sys.argv


def _arg(name, default=None):
    return _ARGS[_ARGS.index(name) + 1] if name in _ARGS else default


class Board:
    wifi_required = True

    def __init__(self, state_dir, lines, after_ms):
        self.state_dir = state_dir
        self.lines = lines
        self.after = time.ticks_add(time.ticks_ms(), after_ms)
        self.ap = None
        self.joined = None
        self.join_ms = 0

    def poll_console(self, mask=False):
        if self.lines and time.ticks_diff(time.ticks_ms(), self.after) >= 0:
            return self.lines.pop(0)
        return None

    def wifi_join(self, ssid, password):
        self.joined = (ssid, password)
        self.join_ms = time.ticks_ms()

    def wifi_status(self):
        if self.joined is None:
            return "off", None
        if time.ticks_diff(time.ticks_ms(), self.join_ms) < 300:
            return "joining", None
        if self.joined[0] != "HomeNet":
            return "failed", "no AP found"
        return ("up", None) if self.joined[1] == "correct-horse-battery" else ("failed", "wrong password")

    def wifi_ip(self):
        return "192.168.1.20" if self.wifi_status()[0] == "up" else None

    def wifi_leave(self):
        self.joined = None

    def ap_start(self, ssid, password):
        self.ap = "EVSE-PROBE1"
        return self.ap

    def ap_ip(self):
        return "127.0.0.1" if self.ap else None

    def ap_stop(self):
        self.ap = None


lines = _arg("--console")
board = Board(_arg("--state"), lines.split("|") if lines is not None else [], int(_arg("--console-after-ms", "0")))
from firmware import provision  # noqa: E402
ran = provision.ensure(board)
loaded = [m for m in sys.modules if m.startswith("microdot") or m in ("firmware.web", "firmware.websetup",
                                                                       "firmware.provision")]
print("ENSURE ran=%s ap_open=%s loaded=%s" % (ran, board.ap is not None, ",".join(loaded)))
cfg = config.Config(board.state_dir)
out = {}
for name in ("WifiSsid", "WifiPassword", "CentralSystemUrl", "ChargeBoxId", "Password", "MeterModel", "Variant",
             "MaxCurrent", "WebEnabled", "WebPassword"):
    v = cfg.get(name)
    out[name] = ("set" if v else "unset") if name.endswith("Password") else v
print("CONFIG " + json.dumps(out))
print("HASH " + cfg.get("WebPassword"))
