# firmware.websetup on the MicroPython unix port: the first-boot setup form over the web, its handlers through
# microdot's dispatch (the same refusals as the console setup, the WiFi tried first, the page password hashed).
import json
import builtins
import asyncio
import tinytest
from microdot.microdot import Request, NoCaseDict
from firmware import config, setupcheck, webauth
from firmware import websetup

URL = "ws://cs.example:8180/steve/websocket/CentralSystemService"
WIFI_PW = "correct-horse-battery"
GOOD = {"WifiSsid": "HomeNet", "WifiPassword": WIFI_PW, "CentralSystemUrl": URL, "ChargeBoxId": "CP001",
        "Password": "cs-secret-0042", "MeterModel": "sdm120", "Variant": "cable", "MaxCurrent": "16",
        "WebPassword": ""}


def _setup(join_results=((True, "192.168.1.20"),), wifi_required=True, fail_store=False):
    cfg = config.Config(tinytest.tempdir("websetup"))
    joins, stored = [], []
    results = list(join_results)

    async def join(ssid, password):
        joins.append((ssid, password))
        return results.pop(0)

    def finish(answers):
        if fail_store:
            raise OSError("the setup could not be stored: flash full")
        stored.append(answers)
        from firmware import provision
        provision.store(cfg, answers)

    return websetup.Setup(cfg, join, finish, wifi_required), cfg, joins, stored


async def post(s, body, headers=None):
    raw = json.dumps(body).encode()
    h = NoCaseDict({"Host": "192.168.4.1", "Content-Type": "application/json", "Content-Length": str(len(raw))})
    for k, v in (headers or {}).items():
        h[k] = v
    res = await s.app.dispatch_request(Request(s.app, ("192.168.4.2", 5000), "POST", "/api/setup", "1.1", h,
                                               body=raw))
    return res.status_code, json.loads(res.body)


async def get(s, path):
    res = await s.app.dispatch_request(Request(s.app, ("192.168.4.2", 5000), "GET", path, "1.1",
                                               NoCaseDict({"Host": "192.168.4.1"})))
    return res


async def test_the_form_asks_what_the_console_asks_and_shows_no_secret():
    s, cfg, _, _ = _setup()
    cfg.set_device("Password", "old-cs-secret")
    res = await get(s, "/api/setup")
    j = json.loads(res.body)
    assert [f["name"] for f in j["fields"]] == ["WifiSsid", "WifiPassword", "CentralSystemUrl", "ChargeBoxId",
                                                "Password", "MeterModel", "Variant", "MaxCurrent", "WebPassword"]
    f = {x["name"]: x for x in j["fields"]}
    assert f["WifiSsid"]["required"] and f["CentralSystemUrl"]["required"] and not f["Password"]["required"]
    assert f["Password"]["secret"] and "value" not in f["Password"] and "old-cs-secret" not in res.body.decode()
    assert f["MeterModel"]["choices"] == ["SDM630", "SDM120", "SDM72", "ABB_B23"] and f["MaxCurrent"]["max"] == 80
    s2, _, _, _ = _setup(wifi_required=False)
    f = {x["name"]: x for x in json.loads((await get(s2, "/api/setup")).body)["fields"]}
    assert not f["WifiSsid"]["required"]  # the host is on a network already


async def test_bad_answers_are_refused_with_the_console_setups_words_and_nothing_is_stored():
    s, cfg, joins, stored = _setup()
    bad = dict(GOOD, WifiSsid="x" * 33, WifiPassword="short", CentralSystemUrl="ws:///ocpp", ChargeBoxId="",
               MaxCurrent="90", MeterModel="SDM999", WebPassword="1234")
    code, j = await post(s, bad)
    assert code == 400 and j["reason"] == "some answers were refused"
    e = j["errors"]
    for name in ("WifiSsid", "WifiPassword", "CentralSystemUrl", "ChargeBoxId", "MaxCurrent", "MeterModel"):
        # exactly what the console wizard says to the same answer
        assert e[name] == setupcheck.check(name, bad[name], name in ("WifiSsid", "CentralSystemUrl",
                                                                     "ChargeBoxId"))[1], (name, e)
    assert e["ChargeBoxId"] == "an answer is needed here" and e["MaxCurrent"] == "90 is above the maximum 80"
    assert e["WebPassword"] == webauth.password_rule("1234")
    assert "Password" not in e and "Variant" not in e
    assert joins == [] and stored == [] and not s.done.is_set()
    assert cfg.get("ChargeBoxId") == ""


async def test_a_cross_site_or_form_post_is_refused():
    s, cfg, joins, stored = _setup()
    code, j = await post(s, GOOD, {"Origin": "http://evil.example"})
    assert code == 403
    code, j = await post(s, GOOD, {"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 415 and stored == []


async def test_the_wifi_is_tried_first_and_a_failure_may_be_kept_anyway():
    s, cfg, joins, stored = _setup(((False, "wrong password"), (False, "wrong password")))
    code, j = await post(s, GOOD)
    assert code == 409 and j["reason"] == "could not join HomeNet: wrong password" and stored == []
    assert joins == [("HomeNet", WIFI_PW)]
    code, j = await post(s, dict(GOOD, keep_wifi=True))
    assert code == 200 and j == {"ok": True, "reason": None, "ssid": "HomeNet"}
    assert len(joins) == 1 and s.done.is_set()
    assert cfg.get("WifiSsid") == "HomeNet" and cfg.get("WifiPassword") == WIFI_PW


async def test_good_answers_are_stored_typed_with_the_page_password_hashed_and_the_page_on():
    s, cfg, joins, stored = _setup()
    code, j = await post(s, dict(GOOD, WebPassword="page-password-1", ChargeBoxId=" CP001 "))
    assert code == 200, j
    a = stored[0]
    assert a["MeterModel"] == "SDM120" and a["MaxCurrent"] == 16 and a["ChargeBoxId"] == "CP001"
    assert a["WebEnabled"] is True and webauth.hashed(a["WebPassword"])
    assert cfg.get("WebEnabled") is True and await webauth.verify(cfg.get("WebPassword"), "page-password-1")
    assert s.answers is a and s.done.is_set()
    from firmware import provision
    assert not provision.needed(cfg, True)


async def test_a_flash_that_will_not_store_is_said_so():
    s, cfg, joins, stored = _setup(fail_store=True)
    code, j = await post(s, GOOD)
    assert code == 500 and j["reason"] == "the setup could not be stored: flash full" and not s.done.is_set()


# ---- provision.ensure() ---------------------------------------------------------------------------------
# (the web finishing the setup while the console waits, and the reverse, run from the .mpy build on a real
# socket: tests/integration/test_web_setup.py)

class Board:
    """A board with an access point and a scripted console."""

    def __init__(self, state_dir, lines=()):
        self.state_dir = state_dir
        self.wifi_required = True
        self.lines = list(lines)
        self.polls = 0
        self.aps = []
        self.joined = None

    def poll_console(self, mask=False):
        self.polls += 1
        assert self.polls < 400, "the setup never finished"
        return self.lines.pop(0) if self.lines else None

    def wifi_join(self, ssid, password):
        self.joined = (ssid, password)

    def wifi_status(self):
        return ("up", None) if self.joined == ("HomeNet", WIFI_PW) else ("failed", "wrong password")

    def wifi_ip(self):
        return "10.1.2.3"

    def wifi_leave(self):
        self.joined = None

    def ap_start(self, ssid, password):
        self.aps.append(ssid)
        return "EVSE-TEST01"

    def ap_ip(self):
        return "127.0.0.1"

    def ap_stop(self):
        pass


def _run_ensure(board):
    from firmware import provision
    out = []
    orig = builtins.print
    builtins.print = lambda *a, **k: out.append(" ".join(str(x) for x in a))
    try:
        ran = provision.ensure(board)
    finally:
        builtins.print = orig
    return ran, out


def test_a_board_with_wifi_configured_gets_no_access_point():
    d = tinytest.tempdir("websetup")
    with open(d + "/provision.json", "w") as f:
        f.write(json.dumps({"WifiSsid": "HomeNet", "WifiPassword": WIFI_PW}))
    board = Board(d, ["", WIFI_PW, URL, "CP9", "", "", "", "", "y"])
    ran, out = _run_ensure(board)
    assert ran and board.aps == []
    assert config.Config(d).get("ChargeBoxId") == "CP9"


tinytest.run(globals())
