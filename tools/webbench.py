"""The web page's figures (issue 13): heap on 32 bits, flash of its files, page load time in Chromium; and the
README's screenshot.

    .venv/bin/python tools/webbench.py [--loads N] [--screenshot docs/web.png] [--json]

The page runs in the MicroPython unix port from the .mpy build, as flashed (tools/webfake.py: firmware/web.py
over a fake charger model, which the screenshot puts in a charging state), and Debian's chromium, headless through selenium and
Debian's chromedriver (no browser download), loads it. measure() returns the figures as a dict for `make bench`.

Heap: tools/memreport.py --wasm32 measures modules the firmware loads lazily on top of the boot state (heap32()).
Load time: Navigation Timing (performance.getEntriesByType("navigation")), the median of N loads of / by a
logged-in browser: the document, app.css and app.js over loopback from the board's server (a host is about 200x
faster than an ESP32 at running the server; the network is not in the figure).
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import build  # noqa: E402  (tools/build.py)

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
OUT = "build/unix"
WEBFAKE = os.path.join(ROOT, "tools", "webfake.py")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# This machine's closed network refuses a browser's background connections: none are started.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
WEB_MODULES = ("firmware/web.mpy", "firmware/webauth.mpy", "firmware/setupcheck.mpy", "firmware/websetup.mpy")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebFake:
    """tools/webfake.py in the MicroPython unix port: the page on 127.0.0.1:port over a fake model."""

    # The page is for boards with room to spare (PSRAM, or frozen code: README "Web page"): 110wK with the code
    # imported from .mpy files leaves it too little once a password has been hashed (16 KB chunks).
    def __init__(self, state_dir, heap="160wK"):
        import subprocess
        build.build(OUT)
        self.port = free_port()
        self.control_port = free_port()
        env = dict(os.environ, MICROPYPATH=".frozen:%s:%s" % (os.path.join(ROOT, OUT),
                                                                os.path.join(ROOT, "tests", "mpy")))
        self.lines = []
        self.proc = subprocess.Popen(
            [MICROPYTHON, "-X", "heapsize=" + heap, WEBFAKE, "--port", str(self.port), "--control",
             str(self.control_port), "--state", state_dir], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        import threading
        threading.Thread(target=self._read, daemon=True).start()
        self.url = "http://127.0.0.1:%d/" % self.port
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "api/session", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("tools/webfake.py did not start:\n" + "\n".join(self.lines[-40:]))
                time.sleep(0.05)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def control(self, **req):
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=10) as s:
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("webfake control closed")
                buf += chunk
        return json.loads(buf)

    def calls(self):
        return [tuple(c) for c in self.control(cmd="calls")["calls"]]

    def stop(self):
        import signal
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except Exception:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc.stdout.close()


def chromium(user_data_dir, width=1200, height=1000):
    """Debian's chromium, headless, through Debian's chromedriver, with a fresh profile in user_data_dir."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument("--user-data-dir=" + user_data_dir)
    opts.add_argument("--window-size=%d,%d" % (width, height))
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait(fn, timeout=20, what=""):
    """fn() until it is true. An element the page has not rendered yet (NoSuchElementException, or a stale one
    replaced by a re-render) counts as "not yet", not as a failure."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = fn()
        except (NoSuchElementException, StaleElementReferenceException):
            v = None
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %s s waiting for %s" % (timeout, what or fn))
        time.sleep(0.05)


def text(driver, element_id):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, element_id).text


def set_password(driver, url, password):
    """Opens the page of a board without a password and sets one (which logs this browser in)."""
    from selenium.webdriver.common.by import By
    driver.get(url)
    wait(lambda: driver.find_element(By.ID, "auth").is_displayed(), what="the password form")
    driver.find_element(By.ID, "pw").send_keys(password)
    driver.find_element(By.ID, "pw2").send_keys(password)
    driver.find_element(By.ID, "authbtn").click()
    wait(lambda: driver.find_element(By.ID, "app").is_displayed(), what="the page after setting the password")


def navigation_ms(driver):
    """(DOMContentLoaded, load) of the last navigation in ms since it started (Navigation Timing 2)."""
    t = driver.execute_script("const n = performance.getEntriesByType('navigation')[0];"
                              "return [n.domContentLoadedEventEnd - n.startTime, n.loadEventEnd - n.startTime];")
    return t[0], t[1]


def page_load_ms(driver, url, loads=5):
    """Median (DOMContentLoaded, load) over `loads` loads of url."""
    dcl, load = [], []
    for _ in range(loads):
        driver.get(url)
        wait(lambda: driver.execute_script("return document.readyState") == "complete")
        wait(lambda: navigation_ms(driver)[1] > 0)
        a, b = navigation_ms(driver)
        dcl.append(a)
        load.append(b)
    return statistics.median(dcl), statistics.median(load)


CHARGING = {"status": "Charging", "pilot": "C", "plugged": True, "offered_a": 16.0, "current_a": [15.9, 15.8, 16.0],
            "power_w": 10980.0, "energy_wh": 1240417, "limit_a": 16,
            "session": {"id_tag": "DEMO", "start": 0, "energy_wh": 5683, "duration_s": 1917,
                        "transaction_id": 42}}


def screenshot(path, password="charge-at-home-42"):
    """The page of a charging board, logged in, as a PNG at path."""
    with tempfile.TemporaryDirectory(prefix="webshot") as d:
        os.makedirs(os.path.join(d, "state"))
        fake = WebFake(os.path.join(d, "state"))
        driver = chromium(os.path.join(d, "profile"), 1200, 1420)
        try:
            set_password(driver, fake.url, password)
            for line in ("wifi: joined HomeNet, address 192.168.1.20", "session: Accepted BootNotification",
                         "connector: transaction 42 started for DEMO"):
                fake.control(cmd="log", text=line)
            fake.control(cmd="change", fields=CHARGING)
            wait(lambda: "Charging" in text(driver, "status"), what="the charging status")
            driver.find_element("id", "logrefresh").click()
            wait(lambda: "transaction 42" in text(driver, "log"), what="the log")
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(path)
        finally:
            driver.quit()
            fake.stop()
    return path


def flash(out=None, march=None):
    """Bytes on flash: the static files (gzip), microdot (.mpy) and the page's firmware modules (.mpy), from the
    build in out (this port's build by default; `make bench` builds for the ESP32, march xtensawin)."""
    out = os.path.join(ROOT, OUT) if out is None else out
    build.build(out, march)
    www = {rel: os.path.getsize(os.path.join(out, rel)) for rel, _ in build.static_sources()}
    raw = {rel: os.path.getsize(src) for rel, src in build.static_sources()}
    md = {rel[:-3] + ".mpy": os.path.getsize(os.path.join(out, rel[:-3] + ".mpy"))
          for rel, _ in build.installed_sources()}
    mods = {rel: os.path.getsize(os.path.join(out, rel)) for rel in WEB_MODULES if os.path.exists(os.path.join(out, rel))}
    return {"www_gz": sum(www.values()), "www_raw": sum(raw.values()), "www": www, "microdot_mpy": sum(md.values()),
            "microdot": md, "firmware_mpy": sum(mods.values()), "firmware": mods,
            "total": sum(www.values()) + sum(md.values()) + sum(mods.values())}


def heap32():
    """Heap of the page on the 32-bit WebAssembly port (tools/memreport.py --wasm32), each figure on top of the boot
    state. A module's qstrs stay interned once loaded, so the order matters: firmware.web goes first and pays for
    everything it loads (microdot, webauth, setupcheck, their qstrs); microdot, measured after it, shows its own
    objects and bytecode without its qstrs; firmware.websetup is the setup's (it runs before the charger)."""
    import memreport
    order = ["firmware.web", "microdot", "firmware.webauth", "firmware.websetup"]
    plain = memreport.modules

    def modules():
        boot, _, found = plain()
        return boot, order, found

    memreport.modules = modules
    try:
        res = memreport.measure(wasm32=True)
    finally:
        memreport.modules = plain
    lazy = dict(res["lazy"])
    return {name: lazy.get(name) for name in order}


def load_time(loads=5):
    with tempfile.TemporaryDirectory(prefix="webload") as d:
        os.makedirs(os.path.join(d, "state"))
        fake = WebFake(os.path.join(d, "state"))
        idle = fake.control(cmd="heap")["alloc"]
        driver = chromium(os.path.join(d, "profile"))
        try:
            set_password(driver, fake.url, "charge-at-home-42")
            wait(lambda: "Available" in text(driver, "status"), what="the live status")
            busy = fake.control(cmd="heap")["alloc"]
            dcl, load = page_load_ms(driver, fake.url, loads)
        finally:
            driver.quit()
            fake.stop()
    # The heap a logged-in browser holds on the server (its session, one SSE stream and its connection, and the
    # first use of every route: microdot compiles a route's pattern when it is first matched), on this 64-bit
    # port: about half of it on 32 bits.
    return {"dom_content_loaded_ms": dcl, "load_ms": load, "loads": loads, "browser_heap_unix64": busy - idle}


def measure(loads=5, heap=True, march=None):
    """The rows `make bench` shows for the web page; march: the flash figures from a build for that
    architecture (xtensawin: an ESP32's .mpy files), built in a scratch directory."""
    if march:
        tmp = tempfile.mkdtemp(prefix="webbench-")
        try:
            files = flash(tmp, march)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        files = flash()
    res = {"flash": files, "chromium": load_time(loads)}
    if heap:
        res["heap32"] = heap32()
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loads", type=int, default=5)
    p.add_argument("--screenshot", help="write the README's screenshot here (docs/web.png)")
    p.add_argument("--no-heap", action="store_true", help="skip the 32-bit heap figures (needs node)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.screenshot:
        print("screenshot:", screenshot(args.screenshot))
        return
    res = measure(args.loads, not args.no_heap)
    if args.json:
        print(json.dumps(res, indent=1))
        return
    f = res["flash"]
    print("flash: static files %d B gzip (%d B raw), microdot %d B .mpy, page modules %d B .mpy: %d B"
          % (f["www_gz"], f["www_raw"], f["microdot_mpy"], f["firmware_mpy"], f["total"]))
    c = res["chromium"]
    print("chromium: DOMContentLoaded %.1f ms, load %.1f ms (median of %d); a browser with the live status open "
          "holds %d B of the server's heap (64-bit)" % (c["dom_content_loaded_ms"], c["load_ms"], c["loads"],
                                                        c["browser_heap_unix64"]))
    h = res.get("heap32") or {}
    if h:
        print("heap (32-bit, on top of boot): the page %s B (firmware.web with microdot and its qstrs); microdot's "
              "own objects and bytecode %s B; webauth %s B; the setup over the web %s B"
              % (h["firmware.web"], h["microdot"], h["firmware.webauth"], h["firmware.websetup"]))


if __name__ == "__main__":
    main()
