# hal/esp32.py's WiFi station and service console against recording fakes: `machine` (tests/mpy/fake_machine.py),
# `network` (tests/mpy/fake_network.py, with the esp32 port's status codes) and the REPL's stdin.
import sys
import time
import fake_machine as fm
import fake_network as fn
import tinytest

sys.modules["machine"] = fm
sys.modules["network"] = fn
import hal.board
from hal.esp32 import Board


def fresh():
    fm.clear()
    fn.clear()
    return Board()


def sta():
    return fn.stations[fn.STA_IF]


def settled(b):
    # Past the window in which status() may still speak of the previous attempt (hal/esp32.py wifi_status).
    b._join_ms = time.ticks_add(time.ticks_ms(), -60000)


def test_board_interface():
    b = fresh()
    for name in hal.board.METHODS:
        assert callable(getattr(b, name)), name
    assert b.wifi_required is True  # an ESP32 reaches its Central System only through WiFi


def test_no_radio_until_a_join():
    b = fresh()
    assert b.wifi_status() == ("off", None) and b.wifi_ip() is None
    b.wifi_leave()
    assert fn.made[0] == 0  # network.WLAN is not even built


def test_join_starts_the_station_without_driver_retries():
    b = fresh()
    b.wifi_join("Net", "good-password")
    assert fn.calls == [("WLAN", fn.STA_IF), ("active", True), ("config", {"reconnects": 0}),
                        ("connect", "Net", "good-password")], fn.calls
    s = sta()
    s.st = fn.STAT_CONNECTING
    assert b.wifi_status() == ("joining", None)
    s.st = fn.STAT_GOT_IP
    s.connected = True
    s.ip = "192.168.4.23"
    assert b.wifi_status() == ("up", None) and b.wifi_ip() == "192.168.4.23"


def test_status_codes_become_reasons():
    b = fresh()
    b.wifi_join("Net", "pw-pw-pw-pw")
    settled(b)
    s = sta()
    for code, reason in ((fn.STAT_WRONG_PASSWORD, "wrong password"),
                         (15, "wrong password (key handshake timed out)"),
                         (fn.STAT_HANDSHAKE_TIMEOUT, "wrong password (key handshake timed out)"),
                         (fn.STAT_NO_AP_FOUND, "no AP found (SSID not in range)"),
                         (210, "no AP with a supported security mode"),
                         (212, "AP signal too weak"),
                         (fn.STAT_BEACON_TIMEOUT, "AP lost (beacon timeout)"),
                         (fn.STAT_ASSOC_FAIL, "the AP refused the association"),
                         (205, "connection failed"),
                         (77, "disconnected (reason 77)"),
                         (fn.STAT_IDLE, "the radio stopped joining")):
        s.st = code
        assert b.wifi_status() == ("failed", reason), (code, b.wifi_status())


def test_the_previous_attempts_reason_is_not_taken_for_this_ones():
    # Since MicroPython 1.23 status() goes on naming the last failure (or IDLE after a disconnect) until the new
    # attempt ends: right after connect() that is no verdict on it.
    b = fresh()
    b.wifi_join("Net", "pw-pw-pw-pw")
    s = sta()
    for stale in (fn.STAT_NO_AP_FOUND, fn.STAT_WRONG_PASSWORD, fn.STAT_IDLE):
        s.st = stale
        assert b.wifi_status() == ("joining", None), stale
    settled(b)
    s.st = fn.STAT_NO_AP_FOUND
    assert b.wifi_status() == ("failed", "no AP found (SSID not in range)")


def test_a_link_lost_after_a_join_is_reported_at_once():
    b = fresh()
    b.wifi_join("Net", "pw-pw-pw-pw")
    s = sta()
    s.st, s.connected = fn.STAT_GOT_IP, True
    assert b.wifi_status()[0] == "up"
    settled(b)  # joined long ago
    s.st, s.connected = fn.STAT_BEACON_TIMEOUT, False
    assert b.wifi_status() == ("failed", "AP lost (beacon timeout)") and b.wifi_ip() is None


def test_a_link_up_on_the_same_network_is_kept():
    b = fresh()
    b.wifi_join("Net", "pw-pw-pw-pw")
    s = sta()
    s.st, s.connected = fn.STAT_GOT_IP, True
    del fn.calls[:]
    b.wifi_join("Net", "pw-pw-pw-pw")  # the setup joined; the charger's supervisor asks again
    assert ("disconnect",) not in fn.calls and not [c for c in fn.calls if c[0] == "connect"]
    assert b.wifi_status() == ("up", None)
    b.wifi_join("Other", "pw2-pw2-pw2")  # another network: the old link goes first
    names = [c[0] for c in fn.calls]
    assert names.index("disconnect") < names.index("connect")
    assert fn.calls[-1] == ("connect", "Other", "pw2-pw2-pw2")


def test_radio_errors_and_old_firmware():
    b = fresh()
    b.wifi_join("Net", "x")  # builds the station
    s = sta()
    s.connect_error = "Wifi Internal Error"
    b.wifi_join("Net", "pw-pw-pw-pw")
    assert b.wifi_status() == ("failed", "radio error: Wifi Internal Error")
    b.wifi_leave()
    assert b.wifi_status() == ("off", None)
    s.connect_error = None
    s.old_firmware = True  # no reconnects option: the join still goes ahead
    b.wifi_join("Net", "pw-pw-pw-pw")
    assert fn.calls[-1] == ("connect", "Net", "pw-pw-pw-pw")
    s.st = fn.STAT_CONNECTING
    assert b.wifi_status() == ("joining", None)


def test_leave_disconnects_and_stops_joining():
    b = fresh()
    b.wifi_join("Net", "pw-pw-pw-pw")
    settled(b)
    b.wifi_leave()
    assert fn.calls[-1] == ("disconnect",)
    sta().st = fn.STAT_NO_AP_FOUND
    assert b.wifi_status() == ("off", None)  # nothing asked for: no failure to report


# ---- service console on the USB serial REPL ----

class Stdin:
    def __init__(self):
        self.data = bytearray()

    def feed(self, b):
        self.data += b

    def read(self, n):
        c = bytes(self.data[:n])
        self.data = self.data[n:]
        return c


class Poll:
    def __init__(self, stdin):
        self.stdin = stdin

    def ipoll(self, timeout):
        assert timeout == 0  # never blocks
        return iter([(self.stdin, 1)] if self.stdin.data else [])


class Echo:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s


def console():
    b = fresh()
    b._con_in = stdin = Stdin()
    b._con_poll = Poll(stdin)
    b._con_out = out = Echo()
    return b, stdin, out


def test_console_lines_without_blocking_and_echoed():
    b, stdin, out = console()
    assert b.poll_console() is None
    stdin.feed(b"Home")
    assert b.poll_console() is None  # half a line waits for the rest
    stdin.feed(b"Net\r")
    assert b.poll_console() == "HomeNet"
    assert out.text == "HomeNet\r\n"
    stdin.feed(b"a\r\nb\n\n")  # CR LF is one line end; LF alone too; an empty line is a line
    assert b.poll_console() == "a" and b.poll_console() == "b" and b.poll_console() == ""
    assert b.poll_console() is None


def test_console_backspace_and_a_masked_password():
    b, stdin, out = console()
    stdin.feed(b"wss:/\x7f//x\x08y\r")
    assert b.poll_console() == "wss://y"
    assert "\b \b" in out.text
    out.text = ""
    stdin.feed(b"s3cret pw\r")
    assert b.poll_console(True) == "s3cret pw"
    assert out.text == "*********\r\n"  # the password never reaches the screen


def test_console_utf8_and_overlong_lines():
    b, stdin, out = console()
    stdin.feed("Caf\u00e9 WLAN\r".encode())
    assert b.poll_console() == "Caf\u00e9 WLAN"
    stdin.feed(b"x" * 300 + b"\r")
    assert b.poll_console() == "x" * 256



def test_the_setup_access_point_is_named_after_the_mac_open_or_wpa2_and_closes():
    b = fresh()
    assert b.ap_ip() is None
    assert b.ap_start(None, "") == "EVSE-12AB5C"
    ap = fn.stations[fn.AP_IF]
    assert ap.on and ("config", {"ssid": "EVSE-12AB5C", "security": 0}) in fn.calls, fn.calls
    ap.ip = "192.168.4.1"
    assert b.ap_ip() == "192.168.4.1"
    assert fn.STA_IF not in fn.stations  # the station is not touched
    b.ap_stop()
    assert not ap.on and b.ap_ip() is None
    assert b.ap_start("Setup", "setup-pass-1") == "Setup"
    assert ("config", {"ssid": "Setup", "key": "setup-pass-1", "security": 3}) in fn.calls


tinytest.run(globals())
