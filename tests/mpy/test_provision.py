# firmware.provision on the MicroPython unix port: the first-boot setup dialogue over a fake line reader and
# writer, against the real configuration (firmware.config on a temporary "flash"), and ensure() on a fake board
# whose console and radio are scripted.
import sys
import json
import builtins
import asyncio
import tinytest
from firmware import config, log
from firmware import provision

URL = "ws://cs.example:8180/steve/websocket/CentralSystemService"
WIFI_PW = "correct-horse-battery"
CS_PW = "cs-secret-0042"


class Reader:
    """Answers one line per question; remembers whether the wizard asked it as a secret."""

    def __init__(self, lines):
        self.lines = list(lines)
        self.asked = []  # (answer, secret)

    async def readline(self, secret=False):
        assert self.lines, "the wizard asked more questions than the test answers"
        line = self.lines.pop(0)
        self.asked.append((line, secret))
        await asyncio.sleep_ms(0)
        return line


class Writer:
    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines.append(text)

    def refusals(self):
        return [l[2:] for l in self.lines if l.startswith("! ")]

    def questions(self):
        return [l for l in self.lines if l.startswith("? ")]


def joiner(results):
    """A fake join: (calls list, async fn) answering from results in turn."""
    calls = []

    async def join(ssid, password):
        calls.append((ssid, password))
        await asyncio.sleep_ms(0)
        return results.pop(0)

    return calls, join


def _cfg():
    return config.Config(tinytest.tempdir("prov"))


GOOD = ["HomeNet", WIFI_PW, URL, "CP001", CS_PW, "sdm120", "cable", "16", "y"]


async def test_good_answers_are_returned_stored_and_the_board_counts_as_configured():
    cfg = _cfg()
    assert provision.needed(cfg, True) and provision.needed(cfg, False)
    r, w = Reader(GOOD), Writer()
    calls, join = joiner([(True, "192.168.1.20")])
    a = await provision.wizard(r, w, cfg, join, True)
    assert a == {"WifiSsid": "HomeNet", "WifiPassword": WIFI_PW, "CentralSystemUrl": URL, "ChargeBoxId": "CP001",
                 "Password": CS_PW, "MeterModel": "SDM120", "Variant": "cable", "MaxCurrent": 16}, a
    assert calls == [("HomeNet", WIFI_PW)]
    assert "  WiFi up: HomeNet, address 192.168.1.20" in w.lines
    assert w.refusals() == []
    # the two passwords were read as secrets (masked on the ESP32 console), nothing else
    assert [ans for ans, secret in r.asked if secret] == [WIFI_PW, CS_PW]
    provision.store(cfg, a)
    again = config.Config(cfg._path[:-len("/config.json")])  # what the next boot reads from flash
    for k, v in a.items():
        assert again.get(k) == v, k
    assert again.password_bytes() == CS_PW.encode()
    assert not provision.needed(again, True)


async def test_enter_takes_the_defaults():
    cfg = _cfg()
    r, w = Reader(["HomeNet", "", URL, "CP1", "", "", "", "", ""]), Writer()
    a = await provision.wizard(r, w, cfg, None, True)
    assert a["WifiPassword"] == "" and a["Password"] == ""  # an open network, no Central System password
    assert (a["MeterModel"], a["Variant"], a["MaxCurrent"]) == ("SDM630", "socket", 32)
    assert "? Maximum current of the installation in A (6-80) [32]:" in w.lines
    assert "  WiFi: HomeNet (open network)" in w.lines


async def test_each_bad_answer_is_refused_with_its_reason_and_asked_again():
    cfg = _cfg()
    answers = [
        "", "x" * 33, "\u00e9" * 17, "Net",                     # SSID (17 characters, 34 bytes)
        "short", "g" * 64, "p" * 70, "longenough",              # WiFi password
        "http://cs.example/ocpp", "ws://", "ws://cs example/", "", URL,   # Central System URL
        "CP 1", "C" * 49, "", "CP1",                           # charge box id
        "p" * 65, "",                                           # Central System password
        "XYZ", "abb_b23",                                       # meter model
        "plug", "Socket",                                       # variant
        "abc", "5", "81", "16A", "20",                          # maximum current
        "maybe", "y",                                           # confirmation
    ]
    r, w = Reader(answers), Writer()
    a = await provision.wizard(r, w, cfg, None, True)
    assert w.refusals() == [
        "an answer is needed here",
        "length 33, must be 0-32",
        "an SSID has at most 32 bytes, this one 34",
        "a WPA2 password has 8-63 characters, this one 5 (Enter alone: an open network)",
        "64 characters must be hex digits (a raw WPA2 key); a passphrase has 8-63",
        "length 70, must be 0-64",
        "must start with ws:// or wss://",
        "no host name after ws://",
        "must not contain spaces",
        "an answer is needed here",
        "must not contain spaces or / ? # %",
        "length 49, must be 0-48",
        "an answer is needed here",
        "length 65, must be 0-64",
        "'XYZ' is not one of SDM630|SDM120|SDM72|ABB_B23",
        "'plug' is not one of socket|cable",
        "'abc' is not a base-10 integer",
        "5 is below the minimum 6",
        "81 is above the maximum 80",
        "'16A' is not a base-10 integer",
        "answer y or n",
    ], w.refusals()
    # after every refusal the same question comes again
    for i, line in enumerate(w.lines):
        if line.startswith("! "):
            before = [l for l in w.lines[:i] if l.startswith("? ")][-1]
            after = [l for l in w.lines[i:] if l.startswith("? ")][0]
            assert before == after, (before, after)
    assert (a["WifiSsid"], a["WifiPassword"], a["CentralSystemUrl"], a["ChargeBoxId"]) == (
        "Net", "longenough", URL, "CP1")
    assert (a["MeterModel"], a["Variant"], a["MaxCurrent"]) == ("ABB_B23", "socket", 20)
    assert r.lines == []


async def test_a_64_digit_hex_key_and_a_wss_url_without_ca_are_taken_with_a_note():
    cfg = _cfg()
    key = "0123456789abcdef" * 4
    r, w = Reader(["Net", key, "wss://cs.example/ocpp", "CP1", "", "", "", "", "y"]), Writer()
    a = await provision.wizard(r, w, cfg, None, True)
    assert a["WifiPassword"] == key and a["CentralSystemUrl"] == "wss://cs.example/ocpp"
    assert [l for l in w.lines if l.startswith("  note: wss:// needs the CA certificate")]


async def test_a_failed_wifi_join_says_why_and_asks_again():
    cfg = _cfg()
    calls, join = joiner([(False, "wrong password"), (True, "10.0.0.5")])
    r = Reader(["Net", "bad-password", "n", "", "good-password", URL, "CP1", "", "", "", "", "y"])
    w = Writer()
    a = await provision.wizard(r, w, cfg, join, True)
    assert "! could not join Net: wrong password" in w.lines
    assert calls == [("Net", "bad-password"), ("Net", "good-password")]
    assert "? WiFi network name (SSID) [Net]:" in w.lines  # Enter alone keeps the SSID, the password is asked
    assert a["WifiPassword"] == "good-password"


async def test_failed_wifi_settings_can_be_kept():
    cfg = _cfg()
    calls, join = joiner([(False, "no AP found (SSID not in range)")])
    r = Reader(["Barn", "barn-password", "y", URL, "CP1", "", "", "", "", ""])
    a = await provision.wizard(r, Writer(), cfg, join, True)
    assert (a["WifiSsid"], a["WifiPassword"]) == ("Barn", "barn-password") and len(calls) == 1


async def test_a_board_on_a_network_may_leave_wifi_out():
    cfg = _cfg()
    r, w = Reader(["", URL, "CP1", "", "", "", "", ""]), Writer()
    calls, join = joiner([])
    a = await provision.wizard(r, w, cfg, join, False)
    assert a["WifiSsid"] == "" and a["WifiPassword"] == "" and calls == []
    assert not [q for q in w.questions() if "WiFi password" in q]
    assert "  WiFi: none" in w.lines


async def test_no_at_the_end_asks_again_with_the_answers_as_defaults():
    cfg = _cfg()
    r = Reader(["Net", "", "ws://typo.example/ocpp", "CP1", "", "", "", "25", "n",
                "", "", "ws://cs.example/ocpp", "", "", "", "", "", "y"])
    w = Writer()
    a = await provision.wizard(r, w, cfg, None, True)
    assert a["CentralSystemUrl"] == "ws://cs.example/ocpp" and a["ChargeBoxId"] == "CP1"
    assert a["MaxCurrent"] == 25 and a["WifiSsid"] == "Net"
    assert "? Charge box id (the Central System's name for this charger) [CP1]:" in w.lines


async def test_provision_json_values_are_offered_and_its_problems_shown():
    d = tinytest.tempdir("prov")
    with open(d + "/provision.json", "w") as f:
        f.write(json.dumps({"CentralSystemUrl": URL, "ChargeBoxId": "bad id", "MaxCurrent": 20}))
    cfg = config.Config(d)
    assert provision.needed(cfg, False)
    r, w = Reader(["", "", "CP7", "", "", "", "", ""]), Writer()
    a = await provision.wizard(r, w, cfg, None, False)
    assert "  provision.json: ChargeBoxId: must not contain spaces or / ? # %" in w.lines
    assert a["CentralSystemUrl"] == URL and a["MaxCurrent"] == 20 and a["ChargeBoxId"] == "CP7"


# ---- ensure() on a board ---------------------------------------------------------------------------------

class Board:
    """Console lines come from a script (recording whether each was read masked); one access point."""

    def __init__(self, state_dir, lines, wifi_required=True, ap=("Net", WIFI_PW)):
        self.state_dir = state_dir
        self.wifi_required = wifi_required
        self.lines = list(lines)
        self.read = []     # (line, mask)
        self.empty_polls = 0
        self.ap = ap
        self.joined = None
        self.joins = 0

    def poll_console(self, mask=False):
        if not self.lines:
            self.empty_polls += 1
            assert self.empty_polls < 200, "the setup waits for more answers than the test gives"
            return None
        line = self.lines.pop(0)
        self.read.append((line, mask))
        return line

    def wifi_join(self, ssid, password):
        self.joined = (ssid, password)
        self.joins += 1

    def wifi_status(self):
        if self.joined is None:
            return "off", None
        return ("up", None) if self.joined == self.ap else ("failed", "wrong password")

    def wifi_ip(self):
        return "10.1.2.3"

    def wifi_leave(self):
        self.joined = None

    def ap_start(self, ssid, password):
        raise OSError("no access point on this test board")  # the console alone: test_websetup has the web

    def ap_ip(self):
        return None

    def ap_stop(self):
        pass


def _capture():
    """Everything printed (the console) and logged while the setup runs."""
    out = []
    orig = builtins.print

    def grab(*args, **kw):
        out.append(" ".join(str(x) for x in args))

    builtins.print = grab
    return out, lambda: setattr(builtins, "print", orig)


def test_ensure_runs_the_setup_on_the_console_and_never_shows_a_secret():
    d = tinytest.tempdir("prov")
    board = Board(d, ["Net", "wrong-password", "n", "", WIFI_PW, URL, "CP9", CS_PW, "", "", "", "y"])
    out, restore = _capture()
    try:
        assert provision.ensure(board) is True
    finally:
        restore()
    text = "\n".join(out)
    assert "? WiFi network name (SSID):" in out and "! could not join Net: wrong password" in out
    assert "  WiFi up: Net, address 10.1.2.3" in out
    assert "  Central System: %s as CP9 (password set)" % URL in out
    assert WIFI_PW not in text and CS_PW not in text and "wrong-password" not in text, text
    assert [l for l, mask in board.read if mask] == ["wrong-password", WIFI_PW, CS_PW]
    cfg = config.Config(d)
    assert cfg.get("WifiPassword") == WIFI_PW and cfg.get("ChargeBoxId") == "CP9"
    assert not provision.needed(cfg, True)
    assert board.joined == ("Net", WIFI_PW)  # left joined for the charger's own supervisor
    # GetConfiguration never shows a WiFi setting
    assert not [k for k, _, _ in cfg.ocpp_items() if k.startswith("Wifi")]
    assert "firmware.provision" not in sys.modules  # unloaded: its code leaves the heap


def test_secrets_stay_out_of_the_log_when_stored_values_are_refused():
    # A provision.json with bad secrets: the configuration logs why, never the values.
    d = tinytest.tempdir("prov")
    with open(d + "/provision.json", "w") as f:
        f.write(json.dumps({"WifiPassword": "x" * 70, "Password": "y" * 70}))
    logged = []
    orig = log.log
    log.log = lambda lvl, tag, msg: logged.append(msg)
    try:
        config.Config(d)
    finally:
        log.log = orig
    assert logged and not [m for m in logged if "xxxxxxxx" in m or "yyyyyyyy" in m], logged


def test_ensure_does_nothing_on_a_configured_board():
    d = tinytest.tempdir("prov")
    with open(d + "/provision.json", "w") as f:
        f.write(json.dumps({"CentralSystemUrl": URL, "ChargeBoxId": "CP1"}))
    board = Board(d, [], wifi_required=False)
    from firmware import provision as p
    assert p.ensure(board) is False
    assert board.empty_polls == 0 and board.joins == 0
    assert "firmware.provision" not in sys.modules
    # the same flash on a board that needs WiFi: the network is missing, so the setup is due
    assert p.needed(config.Config(d), True)


tinytest.run(globals())
