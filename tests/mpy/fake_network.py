# A fake `network` module for testing hal/esp32.py's WiFi station on the unix port: the WLAN object records every
# call in `calls` and keeps the state a test sets (status code, connected, address), with the constants and the
# behaviour of MicroPython's esp32 port (network_wlan.c): WLAN(STA_IF) is always the same station object.
# Install with sys.modules["network"] = fake_network before hal.esp32 first joins.

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204

calls = []
stations = {}
made = [0]  # WLAN() constructions


def WLAN(interface=STA_IF):
    made[0] += 1
    calls.append(("WLAN", interface))
    w = stations.get(interface)
    if w is None:
        w = stations[interface] = Station(interface)
    return w


class Station:
    def __init__(self, interface):
        self.interface = interface
        self.on = False
        self.st = STAT_IDLE
        self.connected = False
        self.ssid = ""
        self.ip = "0.0.0.0"
        self.reconnects = -1
        self.old_firmware = False   # config(reconnects=...) unknown, as before MicroPython 1.20
        self.connect_error = None   # an OSError for connect() to raise

    def active(self, on=None):
        if on is None:
            return self.on
        calls.append(("active", bool(on)))
        self.on = bool(on)
        return self.on

    def config(self, *args, **kw):
        if args:
            if args[0] in ("ssid", "essid"):
                return self.ssid
            if args[0] == "mac":
                return b"\x24\x0a\xc4\x12\xab\x5c"
            raise ValueError("unknown config param")
        calls.append(("config", kw))
        if "ssid" in kw:
            self.ssid = kw["ssid"]
        if "reconnects" in kw:
            if self.old_firmware:
                raise ValueError("unknown config param")
            self.reconnects = kw["reconnects"]

    def connect(self, ssid=None, key=None):
        calls.append(("connect", ssid, key))
        if not self.on:
            raise OSError("Wifi Not Started")
        if self.connect_error is not None:
            raise OSError(self.connect_error)
        self.ssid = ssid

    def disconnect(self):
        calls.append(("disconnect",))
        self.connected = False
        self.st = STAT_IDLE

    def isconnected(self):
        return self.connected

    def status(self, *args):
        return self.st

    def ifconfig(self):
        return (self.ip, "255.255.255.0", "192.168.4.1", "192.168.4.1")


def clear():
    del calls[:]
    stations.clear()
    made[0] = 0
