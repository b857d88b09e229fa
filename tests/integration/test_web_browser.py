"""The web page (firmware/web.py) driven by a real browser: Debian's chromium, headless, through selenium and
Debian's chromedriver. Most tests serve it from the MicroPython unix port over a FAKE charger model
(tools/webfake.py with tests/mpy/fake_model.py), which a test can put in any state; the last one serves it from the
firmware on the virtual board (tools/sim.py), over the real charger model (firmware/chargepoint.py), with the
Central System, the car and the pilot real. The HTTP-level refusals are checked with urllib, where a test can send
what a browser never would."""
import http.cookiejar
import json
import os
import shutil
import urllib.error
import urllib.request

import pytest

import webbench  # tools/webbench.py (conftest puts tools/ on sys.path)

PW = "charge-at-home-42"
SECRETS = {"Password": "cs-secret-0042", "WifiPassword": "wifi-secret-77"}

pytestmark = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                reason="needs Debian's chromium and chromium-driver (make deps installs them)")


@pytest.fixture
def fake(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    f = webbench.WebFake(str(state))
    yield f
    f.stop()


@pytest.fixture
def browser(tmp_path):
    driver = webbench.chromium(str(tmp_path / "profile"))
    yield driver
    driver.quit()


def by_id(driver, element_id):
    return driver.find_element("id", element_id)


def shows(driver, element_id, text):
    return lambda: text in by_id(driver, element_id).text


def test_set_password_live_status_stop_limit_and_login_in_chromium(fake, browser, tmp_path):
    driver = browser
    # first visit: the page offers nothing but setting a password
    driver.get(fake.url)
    webbench.wait(lambda: by_id(driver, "auth").is_displayed(), what="the password form")
    assert "Set a password" in by_id(driver, "authtitle").text
    assert not by_id(driver, "app").is_displayed()
    webbench.set_password(driver, fake.url, PW)
    webbench.wait(shows(driver, "status", "Available"), what="the first status")
    webbench.wait(shows(driver, "live", "live"))
    # the model changes: the page follows without a reload
    fake.control(cmd="change", fields=webbench.CHARGING)
    webbench.wait(shows(driver, "status", "Charging"), what="Charging on the page")
    assert by_id(driver, "power").text == "10.98 kW"
    assert "DEMO: 5.683 kWh in 0:31:57 (transaction 42)" == by_id(driver, "session").text
    # stop from the page: the model sees stop(), the page shows what the model says next
    by_id(driver, "stop").click()
    webbench.wait(lambda: ("stop",) in fake.calls(), what="stop() on the model")
    webbench.wait(shows(driver, "status", "Finishing"))
    assert by_id(driver, "session").text == "none"
    # the current limit
    by_id(driver, "amps").send_keys("10")
    by_id(driver, "setlimit").click()
    webbench.wait(lambda: ("set_limit", 10) in fake.calls(), what="set_limit(10) on the model")
    webbench.wait(shows(driver, "limit", "10.0 A"))
    by_id(driver, "amps").clear()
    by_id(driver, "amps").send_keys("3")
    by_id(driver, "setlimit").click()
    webbench.wait(shows(driver, "msg", "limit must be 0 (pause), 6-32 A, or none"), what="the refusal shown")
    by_id(driver, "clearlimit").click()
    webbench.wait(lambda: ("set_limit", None) in fake.calls())
    webbench.wait(shows(driver, "limit", "none"))
    # a log line reaches the page
    fake.control(cmd="log", text="hello from the firmware log")
    by_id(driver, "logrefresh").click()
    webbench.wait(shows(driver, "log", "I fake: hello from the firmware log"))
    # log out; a wrong password is refused, the right one opens the page again
    by_id(driver, "logout").click()
    webbench.wait(lambda: by_id(driver, "auth").is_displayed())
    assert by_id(driver, "authtitle").text == "Log in"
    by_id(driver, "pw").send_keys("not-the-password")
    by_id(driver, "authbtn").click()
    webbench.wait(shows(driver, "autherr", "wrong password"), what="the refusal")
    assert not by_id(driver, "app").is_displayed()
    by_id(driver, "pw").clear()
    by_id(driver, "pw").send_keys(PW)
    by_id(driver, "authbtn").click()
    webbench.wait(lambda: by_id(driver, "app").is_displayed(), what="the page after logging in")
    webbench.wait(shows(driver, "status", "Finishing"))
    dcl, load = webbench.navigation_ms(driver)
    assert 0 < dcl <= load < 5000
    driver.save_screenshot(str(tmp_path / "web.png"))


def test_settings_from_the_page_are_checked_and_secrets_never_reach_the_browser(fake, browser):
    driver = browser
    for name, value in SECRETS.items():
        assert fake.control(cmd="config", name=name, value=value)["ok"]
    webbench.set_password(driver, fake.url, PW)
    webbench.wait(lambda: by_id(driver, "cfg-MaxCurrent").get_attribute("value") == "32", what="the settings")
    assert by_id(driver, "cfg-Password").get_attribute("value") == ""
    assert "blank keeps it" in by_id(driver, "cfg-Password").get_attribute("placeholder")
    url = by_id(driver, "cfg-CentralSystemUrl")
    url.clear()
    url.send_keys("ws:///nohost")
    by_id(driver, "cfg-MaxCurrent").clear()
    by_id(driver, "cfg-MaxCurrent").send_keys("16")
    by_id(driver, "cfg").submit()
    webbench.wait(shows(driver, "cfgerr-CentralSystemUrl", "no host name after ws://"), what="the URL refused")
    assert by_id(driver, "cfgmsg").text == "nothing was changed"
    assert fake.control(cmd="get", name="MaxCurrent")["value"] == 32  # all or nothing
    url.clear()
    url.send_keys("ws://csms.example:8180/ocpp")
    by_id(driver, "cfg").submit()
    webbench.wait(shows(driver, "cfgmsg", "saved"))
    assert fake.control(cmd="get", name="MaxCurrent")["value"] == 16
    assert fake.control(cmd="get", name="CentralSystemUrl")["value"] == "ws://csms.example:8180/ocpp"
    assert fake.control(cmd="get", name="Password")["value"] == SECRETS["Password"]  # a blank secret is kept
    stored_hash = fake.control(cmd="get", name="WebPassword")["value"]
    assert stored_hash.startswith("s2k$")
    # nothing the browser got holds a secret: the pages, the JSON, the log
    seen = [driver.page_source]
    jar = http.cookiejar.CookieJar()
    opener = _login(fake, jar)
    for path in ("", "app.js", "app.css", "api/session", "api/status", "api/config", "api/log"):
        with opener.open(fake.url + path, timeout=10) as r:
            body = r.read()
            if r.headers.get("Content-Encoding") == "gzip":
                import gzip
                body = gzip.decompress(body)
            seen.append(body.decode() + str(r.headers))
    for text in seen:
        for secret in list(SECRETS.values()) + [PW, stored_hash, stored_hash.split("$")[3]]:
            assert secret not in text


def _post(opener, url, body, headers=None, ctype="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=dict({"Content-Type": ctype}, **(headers or {})))
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _login(fake, jar):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(fake.url + "api/session", timeout=10) as r:
        s = json.loads(r.read())
    if not s["password_set"]:
        status, body = _post(opener, fake.url + "api/password", {"password": PW})
    else:
        status, body = _post(opener, fake.url + "api/login", {"password": PW})
    assert status == 200, body
    opener.csrf = body["csrf"]
    return opener


def test_a_post_without_the_csrf_token_is_refused_over_http(fake):
    jar = http.cookiejar.CookieJar()
    opener = _login(fake, jar)
    assert any(c.name == "sid" for c in jar)
    fake.control(cmd="change", fields=webbench.CHARGING)
    for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": "0" * 32}):
        status, body = _post(opener, fake.url + "api/stop", {}, headers)
        assert status == 403 and body["reason"] == "missing or wrong CSRF token", (status, body)
        status, body = _post(opener, fake.url + "api/limit", {"amps": 6}, headers)
        assert status == 403
    # a form post (what a cross-site page can send without a preflight) is refused whatever it carries
    status, body = _post(opener, fake.url + "api/stop", b"csrf=" + opener.csrf.encode(),
                         {"X-CSRF-Token": opener.csrf}, ctype="application/x-www-form-urlencoded")
    assert status == 415
    status, body = _post(opener, fake.url + "api/stop", {}, {"X-CSRF-Token": opener.csrf,
                                                            "Origin": "http://evil.example"})
    assert status == 403 and body["reason"] == "request from another origin"
    # the cookie alone is not enough, the token alone neither
    bare = urllib.request.build_opener()
    status, body = _post(bare, fake.url + "api/stop", {}, {"X-CSRF-Token": opener.csrf})
    assert status == 401
    assert fake.calls() == []
    status, body = _post(opener, fake.url + "api/stop", {}, {"X-CSRF-Token": opener.csrf})
    assert status == 200 and body == {"ok": True, "reason": None}
    assert fake.calls() == [("stop",)]


def test_a_wrong_password_is_refused_and_repeated_failures_lock_the_login(fake):
    jar = http.cookiejar.CookieJar()
    _login(fake, jar)  # sets the password
    bare = urllib.request.build_opener()
    status, body = _post(bare, fake.url + "api/login", {"password": "wrong-password"})
    assert status == 401 and body["reason"] == "wrong password"
    for i in range(4):
        status, body = _post(bare, fake.url + "api/login", {"password": "guess-%d" % i})
    assert status == 429
    status, body = _post(bare, fake.url + "api/login", {"password": PW})
    assert status == 429 and body["reason"].startswith("too many failed logins")
    with bare.open(fake.url + "api/session", timeout=10) as r:
        assert json.loads(r.read())["logged_in"] is False


def test_static_files_are_served_gzip_compressed_from_the_build(fake):
    import gzip
    for path, ctype, src in (("", "text/html", "index.html"), ("app.js", "application/javascript", "app.js"),
                             ("app.css", "text/css", "app.css")):
        req = urllib.request.Request(fake.url + path, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Encoding"] == "gzip" and r.headers["Content-Type"] == ctype
            body = r.read()
        with open(os.path.join(webbench.ROOT, "www", src), "rb") as f:
            assert gzip.decompress(body) == f.read()


# ---- the real charger: the firmware on the virtual board serves the page over its model ------------------------

def test_sim_charger_page_live_status_limit_and_stop(csms_factory, sim_factory, browser):
    from conftest import free_port
    from core_helpers import CP, board_until
    driver = browser
    port = free_port()
    csms = csms_factory()
    sim = sim_factory(csms.url, settings={"WebEnabled": "true", "WebPort": port, "WebBind": "127.0.0.1",
                                          "WebPassword": PW})
    sim.wait_line(r"web: page on http://127\.0\.0\.1:%d/" % port)
    url = "http://127.0.0.1:%d/" % port
    # a password set at provisioning: the page asks for it, and only it
    driver.get(url)
    webbench.wait(lambda: by_id(driver, "auth").is_displayed(), what="the login form")
    assert by_id(driver, "authtitle").text == "Log in"
    by_id(driver, "pw").send_keys(PW)
    by_id(driver, "authbtn").click()
    webbench.wait(lambda: by_id(driver, "app").is_displayed(), what="the page after logging in")
    webbench.wait(shows(driver, "status", "Available"), what="the first status")
    webbench.wait(shows(driver, "link", "online, registered"), what="the Central System link")
    assert by_id(driver, "pilot").text == "A / not plugged" and by_id(driver, "session").text == "none"
    # the car plugs in: the page follows without a reload
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "B", "max_a": 16})
    webbench.wait(shows(driver, "status", "Preparing"), what="Preparing on the page")
    webbench.wait(shows(driver, "pilot", "B / plugged in"))
    sim.cmd({"cmd": "tag", "id": "TAG1"})
    csms.wait_for("StartTransaction", cp=CP)
    sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})
    webbench.wait(shows(driver, "status", "Charging"), what="Charging on the page")
    webbench.wait(shows(driver, "power", "11.04 kW"), what="the power the EV draws")
    webbench.wait(lambda: by_id(driver, "session").text.startswith("TAG1: "), what="the session")
    # the current limit from the page reaches the pilot's duty; a bad one is refused and shown
    by_id(driver, "amps").send_keys("3")
    by_id(driver, "setlimit").click()
    webbench.wait(shows(driver, "msg", "limit must be 0 (pause), 6-32 A, or none"), what="the refusal shown")
    assert board_until(sim, lambda s: s["contactor"])["duty"] == 53.3
    by_id(driver, "amps").clear()
    by_id(driver, "amps").send_keys("10")
    by_id(driver, "setlimit").click()
    board_until(sim, lambda s: s["duty"] == 16.7, msg="10 A on the pilot")
    webbench.wait(shows(driver, "limit", "10.0 A"), what="the limit on the page")
    webbench.wait(shows(driver, "power", "6.90 kW"), what="the EV following the lower offer")
    # stop from the page: the transaction ends at the Central System, the page shows it
    mark = len(csms.messages())
    by_id(driver, "stop").click()
    assert csms.wait_for("StopTransaction", cp=CP, since=mark)["reason"] == "Local"
    board_until(sim, lambda s: not s["contactor"], msg="contactor open")
    webbench.wait(shows(driver, "status", "Finishing"), what="Finishing on the page")
    webbench.wait(lambda: by_id(driver, "session").text == "none")
