# firmware.web on the MicroPython unix port: the page's handlers through microdot's own request dispatch (no
# socket), over a fake charger model (tests/mpy/fake_model.py) and a real firmware.config on a temporary flash.
# The browser and the sockets are tests/integration/test_web_browser.py's.
import json
import asyncio
import tinytest
from microdot.microdot import Request, NoCaseDict
from firmware import config, log, web, webauth
from fake_model import FakeModel

PW = "charge-at-home-42"
URL = "ws://cs.example:8180/ocpp"


class Answer:
    def __init__(self, res):
        self.res = res
        self.status = res.status_code
        self.headers = res.headers
        body = res.body
        self.text = body.decode() if isinstance(body, bytes) else ""
        try:
            self.json = json.loads(self.text)
        except ValueError:
            self.json = None

    def cookie(self):
        c = self.headers.get("Set-Cookie")
        return c[0] if isinstance(c, list) else c


def _web(static=None):
    d = tinytest.tempdir("web")
    cfg = config.Config(d)
    cfg.set_device("CentralSystemUrl", URL)
    cfg.set_device("ChargeBoxId", "CP001")
    return web.Web(FakeModel(), cfg, static or d)


async def call(w, method, path, body=None, sid=None, csrf=None, ctype="application/json", headers=None):
    h = NoCaseDict({"Host": "board.local"})
    raw = b""
    if body is not None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        h["Content-Type"] = ctype
        h["Content-Length"] = str(len(raw))
    elif method == "POST":
        h["Content-Type"] = ctype
    if sid:
        h["Cookie"] = "theme=dark; sid=%s" % sid
    if csrf:
        h["X-CSRF-Token"] = csrf
    for k, v in (headers or {}).items():
        h[k] = v
    req = Request(w.app, ("192.168.1.50", 40000), method, path, "1.1", h, body=raw)
    return Answer(await w.app.dispatch_request(req))


def _sid(answer):
    c = answer.cookie()
    return c[c.index("sid=") + 4:c.index(";")]


async def _logged_in(w=None):
    w = w or _web()
    a = await call(w, "POST", "/api/password", {"password": PW})
    assert a.status == 200, a.text
    return w, _sid(a), a.json["csrf"]


async def test_a_fresh_board_offers_only_setting_a_password_which_logs_the_browser_in():
    w = _web()
    a = await call(w, "GET", "/api/session")
    assert a.json == {"password_set": False, "logged_in": False, "csrf": None}, a.json
    for path in ("/api/status", "/api/config", "/api/log", "/api/events"):
        a = await call(w, "GET", path)
        assert a.status == 401 and a.json["reason"] == "set a password first", (path, a.text)
    a = await call(w, "POST", "/api/login", {"password": PW})
    assert a.status == 409 and "no password is set yet" in a.json["reason"]
    a = await call(w, "POST", "/api/password", {"password": "short"})
    assert a.status == 400 and "8-64 characters" in a.json["reason"] and not w.auth.password_set()
    a = await call(w, "POST", "/api/password", {"password": PW})
    assert a.status == 200 and a.json["ok"]
    cookie = a.cookie()
    assert cookie.startswith("sid=") and "; HttpOnly" in cookie and "; SameSite=Strict" in cookie
    assert "; Path=/" in cookie and "Max-Age" not in cookie  # a session cookie
    sid, csrf = _sid(a), a.json["csrf"]
    a = await call(w, "GET", "/api/session", sid=sid)
    assert a.json == {"password_set": True, "logged_in": True, "csrf": csrf}
    a = await call(w, "GET", "/api/status", sid=sid)
    assert a.status == 200 and a.json["status"] == "Available" and a.json["energy_wh"] == 1234567
    # once set, the first-password door is closed: changing needs the session, the token and the old password
    a = await call(w, "POST", "/api/password", {"password": "taken-over-1"})
    assert a.status == 401
    assert (await call(w, "POST", "/api/login", {"password": PW})).status == 200


async def test_a_post_without_the_csrf_token_changes_nothing():
    w, sid, csrf = await _logged_in()
    model = w.model.m
    model.change(session={"id_tag": "TAG1", "start": 0, "energy_wh": 10, "duration_s": 5, "transaction_id": 7})
    for token in (None, "", "0" * 32, csrf + "0"):
        a = await call(w, "POST", "/api/stop", {}, sid=sid, csrf=token)
        assert a.status == 403 and a.json["reason"] == "missing or wrong CSRF token", a.text
    a = await call(w, "POST", "/api/limit", {"amps": 10}, sid=sid)
    assert a.status == 403
    a = await call(w, "POST", "/api/stop", {}, csrf=csrf)  # the token without the session cookie
    assert a.status == 401
    assert model.calls == []
    a = await call(w, "POST", "/api/stop", {}, sid=sid, csrf=csrf)
    assert a.status == 200 and a.json == {"ok": True, "reason": None}
    assert model.calls == [("stop",)]


async def test_a_post_that_is_no_json_or_comes_from_another_site_is_refused():
    w, sid, csrf = await _logged_in()
    a = await call(w, "POST", "/api/stop", b"x=1", sid=sid, csrf=csrf, ctype="application/x-www-form-urlencoded")
    assert a.status == 415
    a = await call(w, "POST", "/api/stop", {}, sid=sid, csrf=csrf, headers={"Origin": "http://evil.example"})
    assert a.status == 403 and a.json["reason"] == "request from another origin"
    a = await call(w, "POST", "/api/stop", {}, sid=sid, csrf=csrf, headers={"Sec-Fetch-Site": "cross-site"})
    assert a.status == 403
    a = await call(w, "POST", "/api/login", {"password": PW}, headers={"Origin": "http://evil.example"})
    assert a.status == 403  # no login CSRF either
    assert w.model.m.calls == []
    a = await call(w, "POST", "/api/stop", {}, sid=sid, csrf=csrf,
                   headers={"Origin": "http://board.local", "Sec-Fetch-Site": "same-origin"})
    assert a.status == 200


async def test_login_wrong_then_right_and_the_rate_limit():
    w, sid, csrf = await _logged_in()
    a = await call(w, "POST", "/api/login", {"password": "not-it"})
    assert a.status == 401 and a.json["reason"] == "wrong password" and a.cookie() is None
    a = await call(w, "POST", "/api/login", {"pw": PW})
    assert a.status == 400
    a = await call(w, "POST", "/api/login", {"password": PW})
    assert a.status == 200 and _sid(a) != sid
    for i in range(webauth.FREE_FAILS):
        a = await call(w, "POST", "/api/login", {"password": "guess-%d" % i})
    assert a.status == 429
    a = await call(w, "POST", "/api/login", {"password": PW})
    assert a.status == 429 and "too many failed logins" in a.json["reason"]
    a = await call(w, "POST", "/api/logout", {}, sid=sid, csrf=csrf)
    assert a.status == 200 and "Max-Age=0" in a.cookie()
    assert (await call(w, "GET", "/api/status", sid=sid)).status == 401


async def test_start_stop_and_limit_reach_the_model_checked():
    w, sid, csrf = await _logged_in()
    model = w.model.m

    async def post(path, body):
        return await call(w, "POST", path, body, sid=sid, csrf=csrf)

    assert (await post("/api/start", {"id_tag": "X" * 21})).status == 400
    assert (await post("/api/start", {"id_tag": 5})).status == 400
    assert (await post("/api/limit", {"amps": "16"})).status == 400
    assert (await post("/api/limit", {"amps": True})).status == 400
    assert (await post("/api/limit", [16])).status == 400
    assert model.calls == []
    assert (await post("/api/start", {"id_tag": "TAG1"})).json["ok"]
    assert (await post("/api/start", {"id_tag": ""})).status == 200  # free vend
    assert (await post("/api/limit", {"amps": 16})).status == 200
    assert (await post("/api/limit", {"amps": None})).status == 200
    assert (await post("/api/limit", {"amps": 0})).status == 200
    a = await post("/api/limit", {"amps": 3})
    assert a.status == 409 and a.json["reason"].startswith("limit must be"), a.text
    model.refuse = "no session to stop"
    a = await post("/api/stop", {})
    assert a.status == 409 and a.json == {"ok": False, "reason": "no session to stop"}
    assert model.calls == [("start", "TAG1"), ("start", None), ("set_limit", 16), ("set_limit", None),
                           ("set_limit", 0), ("set_limit", 3), ("stop",)], model.calls


async def test_the_configuration_shows_no_secret_and_applies_all_or_nothing():
    w, sid, csrf = await _logged_in()
    cfg = w.cfg
    cfg.set_device("Password", "cs-secret-0042")
    a = await call(w, "GET", "/api/config", sid=sid)
    keys = {k["name"]: k for k in a.json["keys"]}
    assert keys["CentralSystemUrl"]["value"] == URL and keys["CentralSystemUrl"]["required"]
    assert keys["Password"] == {"name": "Password", "type": "str", "reboot": False, "required": False,
                                "max": 64, "secret": True, "set": True}, keys["Password"]
    assert keys["MeterModel"]["choices"] == ["SDM630", "SDM120", "SDM72", "ABB_B23"]
    assert keys["MaxCurrent"]["min"] == 6 and keys["MaxCurrent"]["max"] == 80
    assert "cs-secret-0042" not in a.text and "WebPassword" not in a.text and "s2k$" not in a.text

    async def post(body):
        return await call(w, "POST", "/api/config", body, sid=sid, csrf=csrf)

    a = await post({"ChargeBoxId": "CP002", "CentralSystemUrl": "ws:///nohost", "MaxCurrent": "90",
                    "WifiSsid": "x", "MeterModel": "sdm999"})
    assert a.status == 400 and a.json["reason"] == "nothing was changed"
    e = a.json["errors"]
    assert e["CentralSystemUrl"] == "no host name after ws://" and e["MaxCurrent"] == "90 is above the maximum 80"
    assert e["WifiSsid"] == "not a setting of this page" and "is not one of" in e["MeterModel"]
    assert "ChargeBoxId" not in e and cfg.get("ChargeBoxId") == "CP001"
    a = await post({"ChargeBoxId": ""})
    assert a.status == 400 and a.json["errors"]["ChargeBoxId"] == "an answer is needed here"
    a = await post({"ChargeBoxId": " CP002 ", "MaxCurrent": "16", "Password": ""})
    assert a.status == 200 and a.json == {"ok": True, "reason": None, "reboot": False}, a.text
    assert cfg.get("ChargeBoxId") == "CP002" and cfg.get("MaxCurrent") == 16
    assert cfg.get("Password") == "cs-secret-0042"  # blank: kept
    a = await post({"Password": "new-cs-secret", "meterModel": "x"})
    assert a.status == 400 and cfg.get("Password") == "cs-secret-0042"
    a = await post({"Password": "new-cs-secret", "MeterModel": "sdm120", "FreeVendEnabled": True})
    assert a.status == 200 and a.json["reboot"] is True
    assert cfg.get("Password") == "new-cs-secret" and cfg.get("MeterModel") == "SDM120"
    assert cfg.get("FreeVendEnabled") is True


async def test_no_page_or_answer_holds_a_secret():
    d = tinytest.tempdir("static")
    for name in ("index.html", "app.js", "app.css"):
        with open("%s/%s.gz" % (d, name), "wb") as f:
            f.write(b"\x1f\x8b fake gzip of " + name.encode())
    w, sid, csrf = await _logged_in(_web(d))
    cfg = w.cfg
    secrets = ["cs-secret-0042", "wifi-secret-77", PW]
    cfg.set_device("Password", secrets[0])
    cfg.set_device("WifiPassword", secrets[1])
    secrets.append(cfg.get("WebPassword"))  # not even its hash
    log.info("test", "a log line")
    for path in ("/", "/app.js", "/app.css", "/api/session", "/api/status", "/api/config", "/api/log"):
        a = await call(w, "GET", path, sid=sid)
        assert a.status == 200, path
        body = a.text.encode() if a.text else a.res.body.read()
        for s in secrets:
            assert s.encode() not in body, (path, s)
        for k, v in a.headers.items():
            for s in secrets:
                assert s not in str(v), (path, k)


async def test_static_files_go_out_gzip_compressed_from_flash_with_the_security_headers():
    d = tinytest.tempdir("static")
    with open(d + "/index.html.gz", "wb") as f:
        f.write(b"\x1f\x8bGZ")
    w = _web(d)
    a = await call(w, "GET", "/")
    assert a.status == 200 and a.headers["Content-Encoding"] == "gzip" and a.headers["Content-Type"] == "text/html"
    assert a.res.body.read() == b"\x1f\x8bGZ"
    assert a.headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert a.headers["X-Content-Type-Options"] == "nosniff"
    a = await call(w, "GET", "/app.js")
    assert a.status == 404 and "build with tools/build.py" in a.text
    a = await call(w, "GET", "/api/nothing")
    assert a.status == 404 and "Content-Security-Policy" in a.headers
    assert (await call(w, "GET", "/api/session")).headers["Cache-Control"] == "no-store"


async def test_the_log_ring_keeps_the_last_20_lines_cut_to_100_characters():
    w, sid, csrf = await _logged_in()
    was = log.hook
    log.hook = w.log.add
    try:
        for i in range(30):
            log.info("test", "line %d %s" % (i, "x" * (200 if i == 29 else 0)))
    finally:
        log.hook = was
    lines = (await call(w, "GET", "/api/log", sid=sid)).json["lines"]
    assert len(lines) == 20 and "I test: line 10" in lines[0] and "I test: line 29 xxx" in lines[-1], lines
    assert len(lines[-1]) == 100


async def _next(ev):
    return await ev.__anext__()


async def test_the_event_stream_sends_the_snapshot_then_every_change_and_beats_while_quiet():
    w, sid, csrf = await _logged_in()
    model = w.model.m
    a = await call(w, "GET", "/api/events", sid=sid)
    assert a.status == 200 and a.headers["Content-Type"] == "text/event-stream"
    ev = a.res.body
    first = await _next(ev)
    assert first.startswith(b"data: ") and first.endswith(b"\n\n")
    assert json.loads(first[6:])["status"] == "Available"
    task = asyncio.create_task(_next(ev))
    await asyncio.sleep_ms(20)
    assert not task.done()  # nothing changed: nothing sent
    model.change(status="Charging", power_w=7360.0)
    second = await asyncio.wait_for_ms(task, 1000)
    assert json.loads(second[6:])["power_w"] == 7360.0
    w.beat_ms = 30
    assert await asyncio.wait_for_ms(_next(ev), 1000) == b": beat\n\n"
    await ev.aclose()
    assert w.streams == []
    try:
        await _next(ev)
        assert False, "a closed stream ends"
    except StopAsyncIteration:
        pass


async def test_a_fourth_stream_ends_the_oldest():
    w, sid, csrf = await _logged_in()
    streams = []
    for i in range(4):
        streams.append((await call(w, "GET", "/api/events", sid=sid)).res.body)
    assert len(w.streams) == 3 and streams[0].done and not streams[1].done
    try:
        await _next(streams[0])
        assert False
    except StopAsyncIteration:
        pass


def test_static_dir_is_www_beside_the_firmware_package():
    assert web.static_dir().endswith("/www")
    assert not web.static_dir().endswith("firmware/www")


tinytest.run(globals())
