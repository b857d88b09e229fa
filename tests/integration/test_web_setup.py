"""First-boot setup over the web (firmware/websetup.py): provision.ensure() from the .mpy build on a fresh board with
an access point (tests/integration/setup_probe.py; loopback plays the access point), finished in a real browser
(Debian's chromium, headless, through selenium) while the console setup waits, or on the console while the web
setup waits."""
import hashlib
import json
import os
import shutil
import socket
import urllib.error
import urllib.request

import pytest

import build  # tools/build.py
import webbench  # tools/webbench.py
from conftest import MICROPYTHON, ROOT, ChildProcess, free_port

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "setup_probe.py")
WIFI_PW = "correct-horse-battery"
URL = "ws://cs.example:8180/ocpp"


class SetupProbe(ChildProcess):
    name = "setup probe"
    ready_pattern = r"or join the WiFi network (\S+) and open (\S+)|^ENSURE"

    def __init__(self, state, args=()):
        super().__init__()
        build.build(webbench.OUT)
        self.port = free_port()
        with open(os.path.join(state, "provision.json"), "w") as f:
            json.dump({"WebPort": self.port}, f)
        self.first = self._spawn([MICROPYTHON, "-X", "heapsize=110wK", PROBE, "--state", str(state)] + list(args),
                                 env={"MICROPYPATH": ".frozen:%s" % os.path.join(ROOT, webbench.OUT)})
        self.url = "http://127.0.0.1:%d/" % self.port

    def result(self):
        m = self.wait_line(r"^ENSURE ran=(\w+) ap_open=(\w+) loaded=(.*)$", timeout=30)
        cfg = json.loads(self.wait_line(r"^CONFIG (.*)$").group(1))
        return m.group(1) == "True", m.group(2) == "True", m.group(3), cfg, self.wait_line(r"^HASH (.*)$").group(1)

    def stop(self):
        self._terminate(5)


@pytest.fixture
def probe(tmp_path):
    made = []

    def start(*args):
        state = tmp_path / ("state%d" % len(made))
        state.mkdir()
        p = SetupProbe(state, args)
        made.append(p)
        return p

    yield start
    for p in made:
        p.stop()


def s2k(stored, password):
    """The page password check of firmware/webauth.py, written again from RFC 4880 3.7.1.3 on CPython."""
    _, count, salt, digest = stored.split("$")
    unit = bytes.fromhex(salt) + password.encode()
    data = (unit * (int(count) // len(unit) + 1))[:int(count)]
    return hashlib.sha256(data).hexdigest() == digest


def by_id(driver, element_id):
    return driver.find_element("id", element_id)


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (make deps installs them)")
def test_a_fresh_board_is_set_up_from_a_browser_on_its_access_point(probe, tmp_path):
    p = probe()
    assert p.first.group(1) == "EVSE-PROBE1" and p.first.group(2) == p.url
    driver = webbench.chromium(str(tmp_path / "profile"), 900, 1100)
    try:
        driver.get(p.url)
        webbench.wait(lambda: driver.find_elements("id", "f-WifiSsid"), what="the setup form")
        fill = {"WifiSsid": "HomeNet", "WifiPassword": "not-the-wifi-password", "CentralSystemUrl": "ws:///ocpp",
                "ChargeBoxId": "CP-WEB", "Password": "cs-secret-0042", "MaxCurrent": "16",
                "WebPassword": "page-password-1"}
        for name, value in fill.items():
            el = by_id(driver, "f-" + name)
            el.clear()
            el.send_keys(value)
        by_id(driver, "save").click()
        webbench.wait(lambda: by_id(driver, "e-CentralSystemUrl").text == "no host name after ws://",
                      what="the URL refused with the console's words")
        by_id(driver, "f-CentralSystemUrl").clear()
        by_id(driver, "f-CentralSystemUrl").send_keys(URL)
        by_id(driver, "save").click()
        webbench.wait(lambda: by_id(driver, "msg").text == "could not join HomeNet: wrong password",
                      what="the WiFi failure")
        assert by_id(driver, "keeprow").is_displayed()
        by_id(driver, "f-WifiPassword").clear()
        by_id(driver, "f-WifiPassword").send_keys(WIFI_PW)
        by_id(driver, "save").click()
        webbench.wait(lambda: by_id(driver, "msg").text.startswith("Saved."), what="the setup stored")
        assert "joins HomeNet" in by_id(driver, "msg").text
    finally:
        driver.quit()
    ran, ap_open, loaded, cfg, stored = p.result()
    assert ran and not ap_open and loaded == "", (ran, ap_open, loaded)
    assert cfg == {"WifiSsid": "HomeNet", "WifiPassword": "set", "CentralSystemUrl": URL, "ChargeBoxId": "CP-WEB",
                   "Password": "set", "MeterModel": "SDM630", "Variant": "socket", "MaxCurrent": 16,
                   "WebEnabled": True, "WebPassword": "set"}, cfg
    assert s2k(stored, "page-password-1") and not s2k(stored, "page-password-2")
    assert "  set up over the web" in p.lines
    text = "\n".join(p.lines)
    for secret in (WIFI_PW, "cs-secret-0042", "page-password-1", "not-the-wifi-password"):
        assert secret not in text  # never printed nor logged
    with pytest.raises(OSError):  # the setup's server is gone
        socket.create_connection(("127.0.0.1", p.port), timeout=2).close()


def _post(url, body, ctype="application/json"):
    req = urllib.request.Request(url + "api/setup", data=body if isinstance(body, bytes) else json.dumps(body)
                                 .encode(), headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_setup_form_refuses_a_form_post_and_changes_nothing(probe):
    p = probe()
    status, body = _post(p.url, b"WifiSsid=x&ChargeBoxId=evil", "application/x-www-form-urlencoded")
    assert status == 415
    status, body = _post(p.url, {"WifiSsid": "", "CentralSystemUrl": URL, "ChargeBoxId": "CP1"})
    assert status == 400 and body["errors"] == {"WifiSsid": "an answer is needed here"}
    status, body = _post(p.url, {"WifiSsid": "HomeNet", "WifiPassword": WIFI_PW, "CentralSystemUrl": URL,
                                 "ChargeBoxId": "CP1", "MaxCurrent": 20})
    assert status == 200, body
    ran, ap_open, loaded, cfg, stored = p.result()
    assert ran and cfg["ChargeBoxId"] == "CP1" and cfg["MaxCurrent"] == 20 and cfg["WebEnabled"] is False
    assert stored == ""  # no page password given: the page stays off, and asks for one when enabled


def test_the_console_finishing_first_closes_the_web_setup(probe):
    p = probe("--console", "|".join(["HomeNet", WIFI_PW, URL, "CP-CON", "", "", "", "", "y"]),
              "--console-after-ms", "1500")
    assert p.first.group(1) == "EVSE-PROBE1"
    with urllib.request.urlopen(p.url + "api/setup", timeout=10) as r:  # the form is up meanwhile
        assert json.loads(r.read())["fields"][0]["name"] == "WifiSsid"
    ran, ap_open, loaded, cfg, stored = p.result()
    assert ran and not ap_open and loaded == "" and cfg["ChargeBoxId"] == "CP-CON"
    assert "  set up over the web" not in p.lines
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
