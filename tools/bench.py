"""Measures the claims: flash footprint, heap, call latency against a CPython reference charge point, loop health,
safety reaction, boot time and flash wear. Prints one table and writes it as JSON to bench/results/<date>.json.

    .venv/bin/python tools/bench.py [--quick] [--only NAME,...] [--calls N] [--events N] [--wear-s S] [--no-save]

Everything runs on loopback: a small websockets Central System lives in this process (Csms, reused by
tools/torture.py), the firmware runs in tools/sim.py's virtual board and tools/refcp.py is the reference.

In-process figures (peak live heap, loop lag, bytes written to flash) come from a probe: tools/sim.py starts
SIM_MCU_SCRIPT instead of main.py, and this script (written to a temporary directory) puts the compiled build
first on sys.path, starts one extra asyncio task next to the firmware's and then runs main.py unchanged. The probe
prints "BENCHPROBE ..." lines that the sim echoes. The firmware's code is the .mpy build, as flashed.
"""
import argparse
import asyncio
import base64
import datetime
import http
import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import websockets
from websockets.asyncio.server import serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, TOOLS)
import build  # noqa: E402  (tools/build.py)
import memreport  # noqa: E402  (tools/memreport.py)
import mqttbench  # noqa: E402  (tools/mqttbench.py)

PY = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable
BUILD_UNIX = os.path.join(ROOT, "build", "unix")
RESULTS = os.path.join(ROOT, "bench", "results")
CP = "CP1"
REF = "REFCP"
PACKAGES = build.PACKAGES
# A host-to-ESP32 speed ratio: DESIGN.md §5 puts the unix port at 150-250x an ESP32 at 240 MHz; 200 is its middle.
ESP32_SLOWDOWN = 200

# ---------------------------------------------------------------------------------------------------------------
# Central System


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class CallTimeout(Exception):
    pass


class Conn:
    def __init__(self, cp, ws):
        self.cp = cp
        self.ws = ws
        self.waiting = {}       # uid -> future of the answer frame
        self.strays = []        # answers whose uid we never sent (e.g. "-1" CALLERRORs to malformed frames)
        self.closed = asyncio.Event()


class Csms:
    """A Central System that answers the charge point's CALLs at once and records every frame.

    Transactions: StartTransaction gets a fresh id; self.tx[id] keeps start, meter values and stop in arrival
    order, so torture can check "once, in order". tag_status answers Authorize and StartTransaction.
    A StartTransaction identical to one already booked (same charger, connector, idTag, meterStart and
    timestamp) is the charger's resend after it lost our answer: it gets the same id back, as a production
    Central System does, and is counted in tx[id]["resends"]; so are a MeterValues or StopTransaction identical
    to one already booked."""

    def __init__(self, port=0):
        self.port = port
        self.server = None
        self.conns = {}
        self.frames = []        # (monotonic t, cp, "in"|"out", parsed frame or None, raw text)
        self.keep_frames = True
        self.tag_status = "Accepted"
        self.tx = {}
        self.tx_order = []      # (cp, action, payload) of every transaction message, as received
        self.next_tx = 1
        self.start_ids = {}     # identity of a booked StartTransaction -> its transactionId
        self.incoming = {}      # action -> count
        self.on_frame = None    # callback(t, cp, frame) for incoming CALLs
        self.connected_evt = {}
        self.boot_interval = 120    # the charger's own HeartbeatInterval default, so its default timing holds
        self.password = None        # when set, HTTP Basic auth "<cp>:<password>" is required (401 otherwise)
        self.refused = 0            # connections refused with 401

    @property
    def url(self):
        return "ws://127.0.0.1:%d/ocpp" % self.port

    async def start(self):
        self.server = await serve(self._handler, "127.0.0.1", self.port, subprotocols=["ocpp1.6"],
                                  ping_interval=None, max_size=None, compression=None,
                                  process_request=self._check_auth)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        """Central System down: the listener closes and every connection drops."""
        if self.server is None:
            return
        self.server.close()
        for conn in list(self.conns.values()):
            await conn.ws.close()
        await self.server.wait_closed()
        self.server = None

    def evt(self, cp):
        return self.connected_evt.setdefault(cp, asyncio.Event())

    def _check_auth(self, connection, request):
        if self.password is None:
            return None
        cp = request.path.rstrip("/").rsplit("/", 1)[-1]
        want = "Basic " + base64.b64encode(("%s:%s" % (cp, self.password)).encode()).decode()
        if request.headers.get("Authorization") == want:
            return None
        self.refused += 1
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")

    async def wait_connected(self, cp, timeout=60):
        await asyncio.wait_for(self.evt(cp).wait(), timeout)
        return self.conns[cp]

    async def _handler(self, ws):
        cp = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        conn = Conn(cp, ws)
        self.conns[cp] = conn
        self.evt(cp).set()
        try:
            async for text in ws:
                await self._frame(conn, text)
        except websockets.ConnectionClosed:
            pass
        finally:
            conn.closed.set()
            for fut in conn.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))
            if self.conns.get(cp) is conn:
                del self.conns[cp]
                self.evt(cp).clear()

    def _log(self, cp, direction, frame, text):
        if self.keep_frames:
            self.frames.append((time.monotonic(), cp, direction, frame, text))

    async def _frame(self, conn, text):
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        self._log(conn.cp, "in", frame, text)
        if not isinstance(frame, list) or len(frame) < 3:
            conn.strays.append(frame)
            return
        if frame[0] == 2 and len(frame) == 4:
            action = frame[2]
            self.incoming[action] = self.incoming.get(action, 0) + 1
            if self.on_frame:
                self.on_frame(time.monotonic(), conn.cp, frame)
            reply = self.answer(conn.cp, action, frame[3])
            out = [3, frame[1], reply] if isinstance(reply, dict) else [4, frame[1], reply[0], reply[1], {}]
            text = json.dumps(out)
            self._log(conn.cp, "out", out, text)
            try:
                await conn.ws.send(text)
            except websockets.ConnectionClosed:
                pass
            return
        fut = conn.waiting.pop(frame[1], None)
        if fut is not None and not fut.done():
            fut.set_result(frame)
        else:
            conn.strays.append(frame)

    def answer(self, cp, action, p):
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": now_iso(), "interval": self.boot_interval}
        if action == "Heartbeat":
            return {"currentTime": now_iso()}
        if action == "Authorize":
            return {"idTagInfo": {"status": self.tag_status}}
        if action == "StartTransaction":
            key = (cp, p.get("connectorId"), p.get("idTag"), p.get("meterStart"), p.get("timestamp"))
            tid = self.start_ids.get(key)
            if tid is not None:
                self.tx[tid]["resends"] += 1
                return {"transactionId": tid, "idTagInfo": {"status": self.tag_status}}
            tid = self.next_tx
            self.next_tx += 1
            self.start_ids[key] = tid
            self.tx[tid] = {"cp": cp, "start": p, "meter": [], "stop": None, "stops": 0, "resends": 0}
            self.tx_order.append((cp, action, p, tid))
            return {"transactionId": tid, "idTagInfo": {"status": self.tag_status}}
        if action == "StopTransaction":
            t = self.tx.get(p.get("transactionId"))
            if t is not None and t["stop"] == p:
                t["resends"] += 1  # the same Stop again: its answer was lost, it is not a second Stop
            elif t is not None:
                t["stops"] += 1
                t["stop"] = p
                self.tx_order.append((cp, action, p, p.get("transactionId")))
            else:
                self.tx_order.append((cp, action, p, p.get("transactionId")))
            return {"idTagInfo": {"status": "Accepted"}}
        if action == "MeterValues":
            t = self.tx.get(p.get("transactionId"))
            if t is not None and p in t["meter"]:
                t["resends"] += 1  # identical values again after a lost answer: booked once
            else:
                if t is not None:
                    t["meter"].append(p)
                self.tx_order.append((cp, action, p, p.get("transactionId")))
            return {}
        if action == "DataTransfer":
            return {"status": "Accepted"}
        if action in ("StatusNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification"):
            return {}
        return ("NotImplemented", "no handler for %s" % action)

    _uids = itertools.count(1)

    async def call(self, cp, action, payload, timeout=30):
        """(answer frame, round trip s). The round trip runs from just before the send to the answer's arrival."""
        return await self.send_wait(cp, json.dumps([2, "b%d" % next(self._uids), action, payload]), timeout)

    async def send_wait(self, cp, text, timeout=30, uid=None):
        conn = self.conns.get(cp)
        if conn is None:
            raise ConnectionError("%s is not connected" % cp)
        if uid is None:
            uid = json.loads(text)[1]
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a dropped link fails unawaited ones
        conn.waiting[uid] = fut
        t0 = time.perf_counter()
        self._log(cp, "out", None, text)
        await conn.ws.send(text)
        try:
            frame = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            conn.waiting.pop(uid, None)
            raise CallTimeout("%s: no answer within %s s" % (text[:80], timeout))
        return frame, time.perf_counter() - t0

    async def send_raw(self, cp, data):
        conn = self.conns.get(cp)
        if conn is None:
            raise ConnectionError("%s is not connected" % cp)
        self._log(cp, "out", None, data if isinstance(data, str) else "<%d bytes>" % len(data))
        await conn.ws.send(data)

    async def drop(self, cp):
        conn = self.conns.get(cp)
        if conn is not None:
            await conn.ws.close()
            await conn.closed.wait()

    def calls_in(self, cp=None, action=None, since_t=0.0):
        return [(t, f) for t, c, d, f, _ in self.frames
                if d == "in" and t >= since_t and (cp is None or c == cp) and isinstance(f, list) and len(f) == 4
                and f[0] == 2 and (action is None or f[2] == action)]

    async def wait_call(self, cp, action, since_t=0.0, timeout=30, where=None):
        deadline = time.monotonic() + timeout
        while True:
            hits = [(t, f) for t, f in self.calls_in(cp, action, since_t) if where is None or where(f[3])]
            if hits:
                return hits[0]
            if time.monotonic() > deadline:
                raise TimeoutError("no %s from %s within %s s" % (action, cp, timeout))
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------------------------
# The virtual board (tools/sim.py) as a child process, driven over its control socket

PROBE = r"""
import sys
if "/rom" not in sys.path:  # tools/romboot.py mounted the firmware's ROMFS image there
    sys.path.insert(0, %(build)r)
import gc, time, asyncio
import firmware.app as _app
from firmware import store as _store
_orig = _app.App.main
async def _probe():
    peak = 0
    lag = 0
    n = 0
    last = time.ticks_ms()
    while True:
        if %(gc)d:
            gc.collect()
            live = gc.mem_alloc()
            if live > peak:
                peak = live
        else:
            live = gc.mem_alloc()
        t0 = time.ticks_us()
        await asyncio.sleep_ms(%(period)d)
        d = time.ticks_diff(time.ticks_us(), t0) - %(period)d * 1000
        if d > lag:
            lag = d
        n += 1
        if time.ticks_diff(time.ticks_ms(), last) >= %(report)d:
            last = time.ticks_ms()
            print("BENCHPROBE live=%%d peak=%%d lag_us=%%d written=%%d free=%%d n=%%d" %% (
                live, peak, lag, _store.bytes_written, gc.mem_free(), n))
async def _main(self):
    asyncio.create_task(_probe())
    await _orig(self)
_app.App.main = _main
exec(open(%(main)r).read())
"""


def write_probe(dirpath, gc_each=True, period_ms=2, report_ms=250):
    path = os.path.join(dirpath, "benchprobe.py")
    with open(path, "w") as f:
        f.write(PROBE % {"build": BUILD_UNIX, "gc": 1 if gc_each else 0, "period": period_ms,
                         "report": report_ms, "main": os.path.join(BUILD_UNIX, "main.py")})
    return path


PROBE_RE = re.compile(r"BENCHPROBE live=(\d+) peak=(\d+) lag_us=(\d+) written=(\d+) free=(\d+) n=(\d+)")


class Sim:
    """tools/sim.py with stdout kept (with arrival times) and an async control connection."""

    def __init__(self, csms_url, cp_id=CP, heap="110wK", state_dir=None, probe=None, romfs=True, password=None):
        self.csms_url = csms_url
        self.password = password
        self.romfs = romfs      # the firmware runs from a ROMFS image (tools/sim.py --romfs), else --files
        self.cp_id = cp_id
        self.heap = heap
        self._tmp = tempfile.mkdtemp(prefix="bench-sim-")
        self.state_dir = state_dir or os.path.join(self._tmp, "state")
        self.probe = probe
        self.proc = None
        self.lines = []         # (monotonic t, text)
        self.port = None
        self._ctl = None
        self._ctl_lock = None

    async def start(self, timeout=60):
        os.makedirs(self.state_dir, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.probe:
            env["SIM_MCU_SCRIPT"] = self.probe
        self.proc = await asyncio.create_subprocess_exec(
            PY, os.path.join(TOOLS, "sim.py"), "--csms", self.csms_url, "--id", self.cp_id, "--state",
            self.state_dir, "--control", "0", "--heap", self.heap, "--romfs" if self.romfs else "--files",
            *(("--password", self.password) if self.password is not None else ()),
            cwd=ROOT, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, limit=1 << 22)
        self._reader = asyncio.create_task(self._read())
        m = await self.wait_line(r"SIM READY control=127\.0\.0\.1:(\d+)", timeout)
        self.port = int(m.group(1))
        self._ctl_lock = asyncio.Lock()
        return self

    async def _read(self):
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            self.lines.append((time.monotonic(), line.decode(errors="replace").rstrip("\n")))

    async def wait_line(self, regex, timeout=30, since=0):
        pat = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            for _, line in self.lines[since:]:
                m = pat.search(line)
                if m:
                    return m
            if self.proc.returncode is not None and self._reader.done():
                raise RuntimeError("sim exited while waiting for /%s/:\n%s" % (regex, self.tail()))
            if time.monotonic() > deadline:
                raise TimeoutError("no /%s/ in sim output within %s s:\n%s" % (regex, timeout, self.tail()))
            await asyncio.sleep(0.02)

    def tail(self, n=40):
        return "\n".join(l for _, l in self.lines[-n:])

    async def cmd(self, req, timeout=30):
        async with self._ctl_lock:
            if self._ctl is None:
                self._ctl = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 24)
            r, w = self._ctl
            w.write((json.dumps(req) + "\n").encode())
            await w.drain()
            line = await asyncio.wait_for(r.readline(), timeout)
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError("sim %r failed: %r" % (req, reply))
        return reply

    async def status(self):
        return await self.cmd({"cmd": "status"})

    async def events(self, since=0):
        return await self.cmd({"cmd": "events", "since": since})

    async def board_clock(self):
        """(offset s) with board ms / 1000 + offset = this process's time.monotonic()."""
        best = None
        for _ in range(5):
            t0 = time.monotonic()
            now = (await self.events(1 << 60))["now"]
            t1 = time.monotonic()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, (t0 + t1) / 2 - now / 1000.0)
        return best[1]

    def probes(self, since_t=0.0):
        out = []
        for t, line in self.lines:
            if t >= since_t:
                m = PROBE_RE.search(line)
                if m:
                    out.append(dict(zip(("live", "peak", "lag_us", "written", "free", "n"),
                                        map(int, m.groups())), t=t))
        return out

    async def wait_probe(self, since_t, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.probes(since_t)
            if p:
                return p[-1]
            await asyncio.sleep(0.05)
        raise TimeoutError("no probe report:\n" + self.tail())

    def crash_summary(self, fatal_only=False):
        """Error lines counted by kind (numbers folded, so a flood of one error is one row)."""
        out = {}
        for line in (self.fatal() if fatal_only else self.crashes()):
            key = re.sub(r"\d+", "N", line)
            out[key] = out.get(key, 0) + 1
        return out

    def fatal(self):
        """Crashes proper: a task that died with an exception nobody handled, or the MCU process exiting. A
        traceback right after the firmware's own error line ("E ...: ... failed") was caught and logged."""
        out = []
        prev = ""
        for _, line in self.lines:
            if "[sim] MCU exited" in line or "Fatal" in line or "Task exception wasn't retrieved" in line:
                out.append(line)
            elif "Traceback" in line and not re.search(r" E \S+: .*failed", prev):
                out.append(line)
            if not line.startswith("[mcu]   ") and "Traceback" not in line:
                prev = line
        return out

    def crashes(self):
        """fatal() plus errors the firmware caught itself: a handler or the frame reader failing, MemoryError."""
        bad = []
        for _, line in self.lines:
            if ("Traceback" in line or "MemoryError" in line or "[sim] MCU exited" in line
                    or "reader failed" in line or "handler failed" in line or "Fatal" in line):
                bad.append(line)
        return bad

    async def stop(self):
        if self._ctl is not None:
            self._ctl[1].close()
            self._ctl = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        if self.proc is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except asyncio.TimeoutError:
                pass
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def mcu_pid(self):
        return (await self.status())["mcu_pid"]


def rss_kb(pid):
    """Resident set size of a process (VmRSS, kB) and its peak (VmHWM)."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        return None, None
    return out.get("VmRSS"), out.get("VmHWM")


async def boot_charger(csms, sim, timeout=60):
    """Waits until the charger is booted and has reported connector 1."""
    await csms.wait_call(sim.cp_id, "StatusNotification", timeout=timeout, where=lambda p: p.get("connectorId") == 1)


async def change_config(csms, cp, key, value):
    frame, _ = await csms.call(cp, "ChangeConfiguration", {"key": key, "value": str(value)})
    if frame[0] != 3 or frame[2].get("status") not in ("Accepted", "RebootRequired"):
        raise RuntimeError("ChangeConfiguration %s=%s: %r" % (key, value, frame))


async def board_until(sim, pred, timeout=20, what="board state"):
    deadline = time.monotonic() + timeout
    while True:
        s = await sim.status()
        if pred(s):
            return s
        if time.monotonic() > deadline:
            raise TimeoutError("%s not reached within %s s: %r\n%s" % (what, timeout, s, sim.tail()))
        await asyncio.sleep(0.05)


async def start_charging(csms, sim, tag="TAG1", max_a=16):
    """Plug, present the tag, EV to C; returns the transactionId once the contactor is closed."""
    t = time.monotonic()
    await sim.cmd({"cmd": "plug", "cable_a": 32})
    await sim.cmd({"cmd": "ev", "state": "B", "max_a": max_a})
    await sim.cmd({"cmd": "tag", "id": tag})
    await csms.wait_call(sim.cp_id, "StartTransaction", since_t=t)
    await sim.cmd({"cmd": "ev", "state": "C", "max_a": max_a})
    await board_until(sim, lambda s: s["contactor"], what="contactor closed")
    for tid in sorted(csms.tx, reverse=True):
        if csms.tx[tid]["cp"] == sim.cp_id:
            return tid
    return None


def pct(values, q):
    """The q-quantile (0..1) by nearest rank."""
    s = sorted(values)
    if not s:
        return None
    k = max(0, min(len(s) - 1, int(round(q * len(s) + 0.5)) - 1))
    return s[k]


# ---------------------------------------------------------------------------------------------------------------
# Heap taken by the code itself

def code_heap():
    """What importing the firmware costs in heap (tools/memreport.py): on this 64-bit unix port, and on the 32-bit
    WebAssembly port, where objects are laid out as on the ESP32 (None there when node is missing)."""
    out = {"unix64": _code_figures(memreport.measure())}
    try:
        out["wasm32"] = _code_figures(memreport.measure(wasm32=True))
    except (OSError, RuntimeError) as e:
        out["wasm32"], out["wasm32_error"] = None, str(e).splitlines()[0]
    return out


def _code_figures(res):
    return {"stdlib": res["stdlib"], "imports": res["imports"], "mpy": res["mpy"],
            "app_objects": dict(res["objects"]).get("App(board)"), "after_boot": res["after_boot"],
            "lazy": sum(b for _, b in res["lazy"])}


def mqtt_figures(count=300):
    """The MQTT front end (tools/mqttbench.py): heap on the 32-bit port, flash of its modules, publish latency."""
    out = {"heap": mqttbench.heap(), "latency": mqttbench.latency(count)}
    tmp = tempfile.mkdtemp(prefix="bench-mqtt-")
    try:
        build.build(tmp, "xtensawin")
        out["mpy"] = {m: os.path.getsize(os.path.join(tmp, m)) for m in (
            "lib/mqtt.mpy", "firmware/mqttfront.mpy", "firmware/mqttha.mpy", "firmware/loadlimit.mpy")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Flash footprint


def footprint(march="xtensawin"):
    """Bytes of .mpy per top-level package, compiled for march into a temporary directory."""
    out = tempfile.mkdtemp(prefix="bench-mpy-")
    try:
        build.build(out, march)
        res = {"files": {}}
        for pkg in PACKAGES:
            n = 0
            for dirpath, _, files in os.walk(os.path.join(out, pkg)):
                for name in files:
                    if name.endswith(".mpy"):
                        size = os.path.getsize(os.path.join(dirpath, name))
                        res["files"][os.path.relpath(os.path.join(dirpath, name), out)] = size
                        n += size
            res[pkg] = n
        res["total"] = sum(res[p] for p in PACKAGES)
        res["march"] = march
        return res
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Latency: the same calls to the firmware and to the reference charge point

def local_list(version, start, n=8, update="Full"):
    return {"listVersion": version, "updateType": update,
            "localAuthorizationList": [{"idTag": "BENCH%03d" % i, "idTagInfo": {"status": "Accepted"}}
                                       for i in range(start, start + n)]}


def profile(pid=1, purpose="TxDefaultProfile", periods=3, connector=1):
    return {"connectorId": connector, "csChargingProfiles": {
        "chargingProfileId": pid, "stackLevel": 1, "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "chargingRateUnit": "A", "startSchedule": "2024-01-01T00:00:00Z", "chargingSchedulePeriod": [
                {"startPeriod": 3600 * i, "limit": 16.0 - 2 * i} for i in range(periods)]}}}


def latency_calls():
    """(label, function of the call index -> (action, payload))."""
    return [
        ("TriggerMessage(Heartbeat)", lambda i: ("TriggerMessage", {"requestedMessage": "Heartbeat"})),
        ("GetConfiguration (all)", lambda i: ("GetConfiguration", {})),
        ("SendLocalList (8 tags)", lambda i: ("SendLocalList", local_list(i + 1, 8 * (i % 2)))),
        ("SetChargingProfile (3 periods)", lambda i: ("SetChargingProfile", profile(1 + i % 4))),
        ("RemoteStartTransaction", lambda i: ("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"})),
    ]


async def start_refcp(url):
    proc = await asyncio.create_subprocess_exec(PY, os.path.join(TOOLS, "refcp.py"), "--url", url, "--id", REF,
                                                cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if b"REFCP READY" not in line:
        raise RuntimeError("refcp did not start: %r" % line)
    return proc


async def stop_proc(proc):
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def time_calls(csms, cp, make, count, start=0):
    """Round trips (s) and answer statuses of count sequential calls."""
    rtts, answers = [], {}
    for i in range(start, start + count):
        action, payload = make(i)
        try:
            frame, rtt = await csms.call(cp, action, payload, timeout=30)
        except (CallTimeout, ConnectionError, websockets.ConnectionClosed) as e:
            key = "failed: " + type(e).__name__
            answers[key] = answers.get(key, 0) + 1
            await csms.wait_connected(cp, 60)
            continue
        rtts.append(rtt)
        if frame[0] == 3:
            key = frame[2].get("status", "ok") if isinstance(frame[2], dict) else "ok"
        else:
            key = "CALLERROR " + str(frame[2])
        answers[key] = answers.get(key, 0) + 1
    return rtts, answers


async def latency(count=1000, batch=100):
    """Both charge points on one Central System; per call type, batches alternate between them so drift of
    the machine's speed hits both alike."""
    csms = await Csms().start()
    csms.keep_frames = False
    sim = Sim(csms.url)
    ref = None
    try:
        await sim.start()
        csms.keep_frames = True
        await boot_charger(csms, sim)
        csms.keep_frames = False
        ref = await start_refcp(csms.url)
        await csms.wait_connected(REF)
        res = {}
        mcu_pid = await sim.mcu_pid()
        for label, make in latency_calls():
            data = {CP: ([], {}), REF: ([], {})}
            done = 0
            while done < count:
                n = min(batch, count - done)
                for cp in (CP, REF):
                    rtts, answers = await time_calls(csms, cp, make, n, done)
                    data[cp][0].extend(rtts)
                    for k, v in answers.items():
                        data[cp][1][k] = data[cp][1].get(k, 0) + v
                done += n
            row = {}
            for cp, key in ((CP, "mpy"), (REF, "ref")):
                rtts, answers = data[cp]
                row[key] = {"n": len(rtts), "p50_ms": pct(rtts, 0.5) * 1000, "p99_ms": pct(rtts, 0.99) * 1000,
                            "max_ms": max(rtts) * 1000, "answers": answers}
            row["ratio_p50"] = row["mpy"]["p50_ms"] / row["ref"]["p50_ms"]
            row["ratio_p99"] = row["mpy"]["p99_ms"] / row["ref"]["p99_ms"]
            res[label] = row
        mpy_rss, mpy_hwm = rss_kb(mcu_pid)
        ref_rss, ref_hwm = rss_kb(ref.pid)
        res["_rss"] = {"mpy_kb": mpy_rss, "mpy_peak_kb": mpy_hwm, "ref_kb": ref_rss, "ref_peak_kb": ref_hwm,
                       "ratio": mpy_rss / ref_rss if mpy_rss and ref_rss else None}
        if sim.crashes():
            res["_crashes"] = sim.crash_summary()
        return res
    finally:
        if ref is not None:
            await stop_proc(ref)
        await sim.stop()
        await csms.stop()


# ---------------------------------------------------------------------------------------------------------------
# The standard scenario: boot, 16-tag local list in two messages, a 3-period profile, a charge session with
# MeterValues, a reconnect. Used for the peak heap, the smallest heap and the loop health.

class Failed(Exception):
    pass


async def _guard(sim, coro):
    """Runs coro; fails as soon as the sim output shows a crash (a low heap makes the firmware die)."""
    task = asyncio.create_task(coro)
    while not task.done():
        bad = sim.crashes()
        if bad:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
            raise Failed("firmware crashed: %s" % bad[0])
        await asyncio.wait({task}, timeout=0.1)
    return task.result()


def _status(frame):
    if frame[0] != 3:
        raise Failed("CALLERROR %r" % (frame,))
    return frame[2].get("status")


async def scenario(csms, sim, step_timeout=30, marks=None):
    """Each step must succeed; marks (a list) gets (name, monotonic t) after each step."""
    def mark(name):
        if marks is not None:
            marks.append((name, time.monotonic()))

    await boot_charger(csms, sim, timeout=step_timeout)
    mark("booted")
    await change_config(csms, CP, "MeterValueSampleInterval", 4)
    await change_config(csms, CP, "ReconnectBackoffMin", 1)
    f, _ = await csms.call(CP, "SendLocalList", local_list(1, 0, 8, "Full"), step_timeout)
    if _status(f) != "Accepted":
        raise Failed("SendLocalList Full: %r" % (f,))
    f, _ = await csms.call(CP, "SendLocalList", local_list(2, 8, 8, "Differential"), step_timeout)
    if _status(f) != "Accepted":
        raise Failed("SendLocalList Differential: %r" % (f,))
    f, _ = await csms.call(CP, "GetLocalListVersion", {}, step_timeout)
    if f[0] != 3 or f[2].get("listVersion") != 2:
        raise Failed("GetLocalListVersion: %r" % (f,))
    mark("local list")
    f, _ = await csms.call(CP, "SetChargingProfile", profile(1, "TxDefaultProfile", 3, 0), step_timeout)
    if _status(f) != "Accepted":
        raise Failed("SetChargingProfile: %r" % (f,))
    mark("profile")
    t = time.monotonic()
    tid = await start_charging(csms, sim, tag="BENCH003")
    await csms.wait_call(CP, "MeterValues", since_t=t, timeout=step_timeout,
                         where=lambda p: p.get("transactionId") == tid and len(csms.tx[tid]["meter"]) >= 2)
    await sim.cmd({"cmd": "ev", "state": "B"})
    await sim.cmd({"cmd": "unplug"})
    await csms.wait_call(CP, "StopTransaction", since_t=t, timeout=step_timeout,
                         where=lambda p: p.get("transactionId") == tid)
    mark("session")
    await csms.drop(CP)
    await csms.wait_connected(CP, step_timeout)
    f, _ = await csms.call(CP, "GetConfiguration", {"key": ["HeartbeatInterval"]}, step_timeout)
    if f[0] != 3:
        raise Failed("after reconnect: %r" % (f,))
    mark("reconnect")


async def run_scenario(heap="110wK", probe=None, step_timeout=30, after=None, state_dir=None, romfs=True):
    """(passed, why, sim lines, marks, extra) for one scenario run on a fresh charger. after(csms, sim) runs
    at the end while everything is up; its value is returned as extra. romfs: the firmware runs from a ROMFS
    image, whose bytes the sim adds to the heap (a board keeps them in flash); else from .mpy files."""
    csms = await Csms().start()
    sim = Sim(csms.url, heap=heap, probe=probe, state_dir=state_dir, romfs=romfs)
    marks = []
    extra = None
    try:
        await sim.start()
        marks.append(("start", time.monotonic()))
        await _guard(sim, scenario(csms, sim, step_timeout, marks))
        if after is not None:
            extra = await after(csms, sim)
        bad = sim.crashes()
        if bad:
            raise Failed("firmware crashed: %s" % bad[0])
        return True, "", sim.lines, marks, extra
    except (Failed, TimeoutError, asyncio.TimeoutError, CallTimeout, ConnectionError, RuntimeError) as e:
        return False, "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""), sim.lines, marks, extra
    finally:
        await sim.stop()
        await csms.stop()


def heap_line(lines):
    for _, line in lines:
        m = re.search(r"heap (\d+) used, (\d+) free", line)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None, None


def heap_words(heap):
    m = re.fullmatch(r"(\d+)wK", heap)
    return int(m.group(1)) if m else None


def romfs_image_size():
    """Bytes of the ROMFS image the sim runs the firmware from (it sits in the unix port's heap, on top of
    the heap size asked for; a board maps it from flash)."""
    return build.romfs(BUILD_UNIX)[1]


async def heap_figures(heap="110wK"):
    """Live heap after boot (the firmware's own line, and the probe once idle), peak live heap over the
    scenario (the probe collects and reads gc.mem_alloc() every few ms); the firmware runs from its ROMFS
    image, as deployed, and the figures leave the image out."""
    tmp = tempfile.mkdtemp(prefix="bench-probe-")
    try:
        probe = write_probe(tmp, gc_each=True, period_ms=5, report_ms=100)

        async def idle(csms, sim):
            return None

        image = romfs_image_size()
        ok, why, lines, marks, _ = await run_scenario(heap=heap, probe=probe, after=idle)
        if not ok:
            raise RuntimeError("scenario failed with the heap probe: " + why)
        used, free = heap_line(lines)
        reports = [(t, PROBE_RE.search(l)) for t, l in lines if PROBE_RE.search(l)]
        booted = dict(marks)["booted"]
        after_boot = [int(m.group(1)) - image for t, m in reports if t >= booted][:5]
        peak = max(int(m.group(2)) for _, m in reports) - image
        return {"start_used": used - image, "heap_total": used + free - image, "image": image,
                "after_boot_live": min(after_boot) if after_boot else None,
                "peak_live": peak, "probe_reports": len(reports), "heap": heap}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def min_heap(start=110, lo=48, top=256, resolution=4, repeat=2, log=None, romfs=True):
    """The smallest -X heapsize=NwK at which the scenario passes repeat times in a row, by bisection (plain sim,
    no probe). Starts at start; if that fails the upper bound doubles up to top. Returns (N or None, runs) where
    runs lists (N, passed, why). romfs: firmware run from its ROMFS image (N does not count the image), else
    from .mpy files."""
    runs = []

    async def passes(n):
        for _ in range(repeat):
            ok, why, lines, _, _ = await run_scenario(heap="%dwK" % n, step_timeout=20, romfs=romfs)
            runs.append((n, ok, why))
            if log:
                log("  heap %dwK%s: %s %s" % (n, "" if romfs else " (.mpy files)", "pass" if ok else "FAIL", why))
            if not ok:
                return False
        return True

    hi = start
    while not await passes(hi):
        lo, hi = hi, hi * 2
        if hi > top:
            return None, runs
    while hi - lo > resolution:
        mid = (lo + hi) // 2
        if await passes(mid):
            hi = mid
        else:
            lo = mid
    return hi, runs


async def retry_scenario(fn, tries=3):
    """fn() until it succeeds; (value, failures) where failures lists why earlier tries failed."""
    failures = []
    for _ in range(tries):
        try:
            return await fn(), failures
        except RuntimeError as e:
            failures.append(str(e))
    raise RuntimeError("; ".join(failures))


async def loop_health(block_ms=50, heap="110wK", ram_flash=False, romfs=True):
    """Longest stretch the firmware's asyncio loop went without yielding during the scenario, seen by a probe
    task that sleeps 2 ms and measures how late it wakes. Then a calibration: the sim's "mcu" hook stalls the
    loop block_ms on purpose and the probe must see at least that. ram_flash puts the charger's flash on a
    RAM disk: the host disk's fsync (about 1 ms a file write here) then drops out, leaving the interpreter's
    work, which is what the x200 ESP32 estimate scales."""
    tmp = tempfile.mkdtemp(prefix="bench-probe-", dir="/dev/shm" if ram_flash and os.path.isdir("/dev/shm")
                           else None)
    try:
        probe = write_probe(tmp, gc_each=False, period_ms=2, report_ms=100)

        async def calibrate(csms, sim):
            await asyncio.sleep(0.5)
            before = sim.probes()[-1]
            t = time.monotonic()
            await sim.cmd({"cmd": "mcu", "block_ms": block_ms})
            await sim.wait_line("loop unblocked", 10)
            await asyncio.sleep(0.5)
            return before, sim.probes(t)[-1]

        ok, why, lines, marks, extra = await run_scenario(heap=heap, probe=probe, after=calibrate,
                                                          state_dir=os.path.join(tmp, "state"), romfs=romfs)
        if not ok:
            raise RuntimeError("scenario failed with the loop probe: " + why)
        before, after = extra
        lags = [int(PROBE_RE.search(l).group(3)) for t, l in lines if PROBE_RE.search(l)]
        return {"max_lag_ms": before["lag_us"] / 1000.0, "esp32_est_ms": before["lag_us"] / 1000.0 * ESP32_SLOWDOWN,
                "samples": before["n"], "calibration_block_ms": block_ms,
                "calibration_seen_ms": after["lag_us"] / 1000.0, "reports": len(lags), "heap": heap,
                "flash": "RAM disk" if tmp.startswith("/dev/shm") else "host disk"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Safety reaction under load

FLOOD_CALLS = (
    lambda i: ("GetConfiguration", {}),
    lambda i: ("SendLocalList", local_list(i + 1, 8 * (i % 2))),
    lambda i: ("SetChargingProfile", profile(1 + i % 4, "TxDefaultProfile", 3, 0)),
    lambda i: ("DataTransfer", {"vendorId": "bench", "data": "x" * 64}),
    lambda i: ("GetConfiguration", {"key": ["MeterValueSampleInterval"]}),
)


class Flood:
    """workers tasks sending CALLs back to back until stopped; counts answers and failures."""

    def __init__(self, csms, cp, workers=3, calls=FLOOD_CALLS):
        self.csms, self.cp, self.calls = csms, cp, calls
        self.stopping = False
        self.answers = 0
        self.errors = {}
        self.tasks = [asyncio.create_task(self._work(w)) for w in range(workers)]

    async def _work(self, w):
        i = w
        while not self.stopping:
            action, payload = self.calls[i % len(self.calls)](i)
            i += 1
            try:
                frame, _ = await self.csms.call(self.cp, action, payload, timeout=30)
                if frame[0] == 3:
                    self.answers += 1
                else:
                    key = "CALLERROR %s (%s)" % (frame[2], action)
                    self.errors[key] = self.errors.get(key, 0) + 1
            except (CallTimeout, ConnectionError, websockets.ConnectionClosed) as e:
                key = type(e).__name__
                self.errors[key] = self.errors.get(key, 0) + 1
                await asyncio.sleep(0.2)

    async def stop(self):
        self.stopping = True
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def safety(events=100, seed=1):
    """Unplug, C->B and RCD trips in turn while the Central System floods the charger; for each, board time from
    the physical change (pilot event; fault event for the RCD) to the MCU's contactor-open command."""
    rnd = random.Random(seed)
    csms = await Csms().start()
    sim = Sim(csms.url)
    flood = None
    delays = {"unplug": [], "C->B": [], "rcd": []}
    missing = []
    try:
        await sim.start()
        await boot_charger(csms, sim)
        flood = Flood(csms, CP)
        kinds = ("unplug", "C->B", "rcd")
        need = "start"
        for i in range(events):
            kind = kinds[i % len(kinds)]
            if need == "start":
                await start_charging(csms, sim)
            elif need == "resume":
                await sim.cmd({"cmd": "ev", "state": "C"})
                await board_until(sim, lambda s: s["contactor"], what="contactor closed again")
            await asyncio.sleep(rnd.uniform(0.05, 0.4))
            mark = (await sim.events(1 << 60))["next"]
            if kind == "unplug":
                await sim.cmd({"cmd": "unplug"})
                trigger = ("pilot",)
                need = "start"
            elif kind == "C->B":
                await sim.cmd({"cmd": "ev", "state": "B"})
                trigger = ("pilot",)
                need = "resume"
            else:
                await sim.cmd({"cmd": "fault", "kind": "rcd", "on": True})
                trigger = ("fault",)
            await board_until(sim, lambda s: not s["contactor"], what="contactor open after %s" % kind)
            evs = (await sim.events(mark))["events"]
            t_trig = next((e["t"] for e in evs if e["kind"] in trigger), None)
            t_open = next((e["t"] for e in evs if e["kind"] == "contactor" and not e["on"]), None)
            if t_trig is None or t_open is None:
                missing.append((kind, evs[:6]))
            else:
                delays[kind].append(t_open - t_trig)
            if kind == "rcd":
                await sim.cmd({"cmd": "fault", "kind": "rcd", "on": False})
                await sim.cmd({"cmd": "unplug"})   # RCD recovery needs the EV in A (docs/decisions.md)
                await csms.wait_call(CP, "StatusNotification", timeout=30,
                                     where=lambda p: p.get("status") == "Available", since_t=time.monotonic() - 0.2)
                need = "start"
            elif kind == "unplug":
                await asyncio.sleep(0.3)
        all_d = [d for v in delays.values() for d in v]
        res = {"events": len(all_d), "median_ms": statistics.median(all_d), "worst_ms": max(all_d),
               "per_kind": {k: {"n": len(v), "median_ms": statistics.median(v) if v else None,
                                "worst_ms": max(v) if v else None} for k, v in delays.items()},
               "flood_answers": flood.answers, "flood_errors": flood.errors, "missing": missing,
               "crashes": sim.crash_summary()}
        return res
    finally:
        if flood is not None:
            await flood.stop()
        await sim.stop()
        await csms.stop()


# ---------------------------------------------------------------------------------------------------------------
# Boot time

async def boot_times(cycles=10):
    """MCU process start (the sim's "mcu start" event) to BootNotification received and to Accepted sent, over a
    first boot on empty flash and cycles power cycles."""
    csms = await Csms().start()
    sim = Sim(csms.url)
    rows = []
    try:
        await sim.start()
        for i in range(cycles + 1):
            t = time.monotonic()
            if i:
                await sim.cmd({"cmd": "power", "on": False})
                mark = (await sim.events(1 << 60))["next"]
                t = time.monotonic()
                await sim.cmd({"cmd": "power", "on": True})
            else:
                mark = 0
            tb, boot = await csms.wait_call(CP, "BootNotification", since_t=t, timeout=60)
            await csms.wait_call(CP, "StatusNotification", since_t=tb, timeout=60,
                                 where=lambda p: p.get("connectorId") == 1)
            offset = await sim.board_clock()
            evs = (await sim.events(mark))["events"]
            start = next(e["t"] for e in evs if e["kind"] == "mcu" and e.get("state") == "start")
            t_start = start / 1000.0 + offset
            t_acc = next(ft for ft, c, d, f, _ in csms.frames
                         if d == "out" and c == CP and isinstance(f, list) and f[0] == 3 and f[1] == boot[1])
            rows.append({"first": i == 0, "to_boot_ms": (tb - t_start) * 1000, "to_accepted_ms": (t_acc - t_start) * 1000})
            await asyncio.sleep(0.5)
        warm = [r for r in rows if not r["first"]]
        return {"first_boot": rows[0], "cycles": len(warm),
                "to_boot_median_ms": statistics.median(r["to_boot_ms"] for r in warm),
                "to_boot_worst_ms": max(r["to_boot_ms"] for r in warm),
                "to_accepted_median_ms": statistics.median(r["to_accepted_ms"] for r in warm),
                "to_accepted_worst_ms": max(r["to_accepted_ms"] for r in warm), "crashes": sim.crash_summary()}
    finally:
        await sim.stop()
        await csms.stop()


# ---------------------------------------------------------------------------------------------------------------
# Flash wear

def _snapshot(state_dir):
    out = {}
    for dirpath, _, files in os.walk(state_dir):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                continue   # renamed away between listing and stat (an atomic write in progress)
            out[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


async def flash_wear(seconds=240, poll_s=0.05):
    """Bytes written to the state directory while charging at the default intervals, counted two ways: the
    firmware's own store.bytes_written (read by the probe) and, from outside, polling the directory (a file with a
    new inode counts its whole size, one that grew in place counts the growth). Extrapolated to an hour."""
    tmp = tempfile.mkdtemp(prefix="bench-probe-")
    csms = await Csms().start()
    sim = Sim(csms.url, probe=write_probe(tmp, gc_each=False, period_ms=20, report_ms=500))
    try:
        await sim.start()
        await boot_charger(csms, sim)
        await start_charging(csms, sim)
        await asyncio.sleep(1)
        t0 = time.monotonic()
        w0 = (await sim.wait_probe(t0))["written"]
        seen = _snapshot(sim.state_dir)
        outside = 0
        rewrites = 0
        renames = 0
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(poll_s)
            now = _snapshot(sim.state_dir)
            before = {v[0]: v for v in seen.values()}
            for path, (ino, mtime, size) in now.items():
                old = seen.get(path)
                if old is None or old[0] != ino:
                    if before.get(ino) == (ino, mtime, size):
                        renames += 1  # an unchanged file under a new name (tx.json -> tx.json.bak): no write
                        continue
                    outside += size
                    rewrites += 1
                elif old[1] != mtime or old[2] != size:
                    outside += max(size - old[2], 0) if size >= old[2] else size
                    rewrites += 1
            seen = now
        t1 = time.monotonic()
        w1 = (await sim.wait_probe(t1))["written"]
        span = t1 - t0
        mv = sum(1 for t, f in csms.calls_in(CP, "MeterValues", t0))
        return {"seconds": span, "firmware_bytes": w1 - w0, "outside_bytes": outside, "file_writes_seen": rewrites,
                "renames_seen": renames,
                "meter_values": mv, "per_hour_firmware": (w1 - w0) / span * 3600,
                "per_hour_outside": outside / span * 3600, "extrapolated": True, "crashes": sim.crash_summary()}
    finally:
        await sim.stop()
        await csms.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# The table

def _f(v, fmt="%.1f"):
    return "-" if v is None else fmt % v


def table(r):
    rows = []

    def row(section, name, value, note=""):
        rows.append((section, name, value, note))

    fp = r.get("footprint")
    if fp:
        for pkg in PACKAGES:
            row("flash", "%s/ .mpy (%s)" % (pkg, fp["march"]), "%d B" % fp[pkg])
        row("flash", "total .mpy (%s)" % fp["march"], "%d B" % fp["total"], "%d files" % len(fp["files"]))
    h = r.get("heap")
    if h:
        row("heap", "used at start (firmware's line)", "%d B" % h["start_used"],
            "of %d B (%s%s); code run from a %d B ROMFS image, as deployed" % (
                h["heap_total"], h["heap"], ", 110wK runs crashed" if h["heap"] != "110wK" else "", h["image"]))
        row("heap", "live after boot + GC", _f(h["after_boot_live"], "%d B"), "probe, charger idle and booted")
        row("heap", "peak live, standard scenario", "%d B" % h["peak_live"],
            "%.0f%% of a 110wK heap" % (100.0 * h["peak_live"] / h["heap_total"] * 110 / heap_words(h["heap"])))
        if h.get("failures"):
            row("heap", "probe runs that crashed", "%d" % sum(f.count("crashed") for f in h["failures"]),
                "MemoryError at 110wK")
    mh = r.get("min_heap")
    if mh:
        row("heap", "smallest heap passing the scenario", "-" if mh["words"] is None else "%dwK" % mh["words"],
            "bisection, %d runs, %d-run streak" % (len(mh["runs"]), mh["repeat"]))
    fl = r.get("files")
    if fl:
        row("heap", "from .mpy files: used at start", _f(fl["start_used"], "%d B"),
            "of %s B (110wK): the whole code in the heap (tools/sim.py --files)" % _f(fl["heap_total"], "%d"))
        row("heap", "from .mpy files: smallest heap passing", "-" if fl["words"] is None else "%dwK" % fl["words"],
            "bisection, %d runs" % len(fl["runs"]))
    ch = r.get("code")
    if ch:
        u = ch["unix64"]
        row("heap", "code imported from .mpy files, 64-bit", "%d B" % u["imports"],
            "%d B of .mpy; modules loaded on first use: %d B more" % (u["mpy"], u["lazy"]))
        w = ch.get("wasm32")
        if w:
            row("heap", "code imported from .mpy files, 32-bit", "%d B" % w["imports"],
                "WebAssembly port, ESP32 object layout; with stdlib and App objects %d B" % w["after_boot"])
        else:
            row("heap", "code imported from .mpy files, 32-bit", "-", ch.get("wasm32_error", "")[:80])
    mq = r.get("mqtt")
    if mq:
        hp = mq["heap"]
        row("mqtt", "heap, 32-bit: modules + objects", "%d B" % hp["total"],
            "lib.mqtt %s, mqttfront (with loadlimit) %s, mqttha %s; objects and tasks %d B" % (
                hp["import lib.mqtt"], hp["import firmware.mqttfront"], hp["import firmware.mqttha"],
                hp["objects"]))
        row("mqtt", "flash .mpy (xtensawin)", "%d B" % sum(mq["mpy"].values()),
            ", ".join("%s %d" % (os.path.basename(k)[:-4], v) for k, v in mq["mpy"].items()))
        for kind, label in (("raw", "publish -> paho receive"), ("change", "model change -> state received")):
            v = mq["latency"][kind]
            row("mqtt", "%s p50 / p99" % label, "%.2f / %.2f ms" % (v["p50_ms"], v["p99_ms"]),
                "loopback, n=%d, max %.1f ms" % (v["n"], v["max_ms"]))
    lat = r.get("latency")
    if lat:
        for label, v in lat.items():
            if label.startswith("_"):
                continue
            ans = "/".join("%s %d" % kv for kv in sorted(v["mpy"]["answers"].items()))
            row("latency", label + " p50", "%.2f ms" % v["mpy"]["p50_ms"],
                "ref %.2f ms, x%.1f" % (v["ref"]["p50_ms"], v["ratio_p50"]))
            row("latency", label + " p99", "%.2f ms" % v["mpy"]["p99_ms"],
                "ref %.2f ms, x%.1f; n=%d; %s" % (v["ref"]["p99_ms"], v["ratio_p99"], v["mpy"]["n"], ans))
        rss = lat["_rss"]
        row("memory", "RSS MicroPython process", "%d kB" % rss["mpy_kb"], "peak %d kB" % rss["mpy_peak_kb"])
        row("memory", "RSS reference CP (CPython+ocpp)", "%d kB" % rss["ref_kb"],
            "peak %d kB; ours/ref x%.2f" % (rss["ref_peak_kb"], rss["ratio"]))
    lh = r.get("loop")
    if lh:
        def runs(v):
            r = v.get("runs_ms") or [v["max_lag_ms"]]
            return "median of %d runs (%.1f-%.1f ms)" % (len(r), min(r), max(r))

        row("loop", "longest stall, standard scenario", "%.2f ms" % lh["max_lag_ms"],
            "ESP32 estimate x%d: %.0f ms; %s; heap %s%s, flash on the %s" % (
                ESP32_SLOWDOWN, lh["esp32_est_ms"], runs(lh), lh["heap"],
                " (110wK runs crashed)" if lh["heap"] != "110wK" else "", lh.get("flash", "host disk")))
        ram = lh.get("ram")
        if ram:
            row("loop", "  same, flash on a RAM disk", "%.2f ms" % ram["max_lag_ms"],
                "ESP32 estimate x%d: %.0f ms; %s; no host fsync" % (ESP32_SLOWDOWN, ram["esp32_est_ms"], runs(ram)))
        fl = lh.get("files")
        if fl:
            row("loop", "  code from .mpy files instead", "%.2f ms" % fl["max_lag_ms"],
                "ESP32 estimate x%d: %.0f ms; %s; a larger heap to collect" % (
                    ESP32_SLOWDOWN, fl["esp32_est_ms"], runs(fl)))
        row("loop", "probe check: injected stall", "%d ms" % lh["calibration_block_ms"],
            "probe saw %.1f ms" % lh["calibration_seen_ms"])
    sf = r.get("safety")
    if sf:
        row("safety", "pilot/fault -> contactor open, median", "%d ms" % sf["median_ms"],
            "%d events under flood" % sf["events"])
        row("safety", "pilot/fault -> contactor open, worst", "%d ms" % sf["worst_ms"],
            ", ".join("%s %s/%s" % (k, _f(v["median_ms"], "%d"), _f(v["worst_ms"], "%d"))
                      for k, v in sf["per_kind"].items()))
        row("safety", "flood calls answered / failed", "%d / %d" % (sf["flood_answers"], sum(sf["flood_errors"].values())),
            "; ".join("%s %d" % kv for kv in sf["flood_errors"].items())[:90])
    b = r.get("boot")
    if b:
        row("boot", "start -> BootNotification, median", "%.0f ms" % b["to_boot_median_ms"],
            "worst %.0f ms, %d power cycles" % (b["to_boot_worst_ms"], b["cycles"]))
        row("boot", "start -> Accepted, median", "%.0f ms" % b["to_accepted_median_ms"],
            "worst %.0f ms; empty flash %.0f ms" % (b["to_accepted_worst_ms"], b["first_boot"]["to_accepted_ms"]))
    w = r.get("wear")
    if w:
        row("wear", "bytes written / hour charging", "%.0f B/h" % w["per_hour_firmware"],
            "store counter; %d B in %.0f s, extrapolated" % (w["firmware_bytes"], w["seconds"]))
        row("wear", "  seen from outside (dir polling)", "%.0f B/h" % w["per_hour_outside"],
            "%d file writes and %d renames seen, %d MeterValues" % (w["file_writes_seen"], w.get("renames_seen", 0),
                                                                     w["meter_values"]))
    for name in ("latency", "safety", "boot", "wear", "heap"):
        v = r.get(name) or {}
        c = v.get("_crashes") or v.get("crashes")
        if c:
            row("errors", "firmware errors during " + name, "%d" % sum(c.values()), next(iter(c))[:90])
    w1 = max(len(x[0]) for x in rows)
    w2 = max(len(x[1]) for x in rows)
    w3 = max(len(x[2]) for x in rows)
    out = ["%-*s  %-*s  %*s  %s" % (w1, "area", w2, "figure", w3, "value", "notes")]
    out.append("-" * (w1 + w2 + w3 + 40))
    for sec, name, value, note in rows:
        out.append("%-*s  %-*s  %*s  %s" % (w1, sec, w2, name, w3, value, note))
    return "\n".join(out)


STEPS = ("footprint", "code", "latency", "loop", "boot", "safety", "heap", "min_heap", "files", "wear", "mqtt")


async def run_all(args, log):
    res = {}
    only = set(args.only.split(",")) if args.only else set(STEPS)

    async def step(name, coro_fn):
        if name not in only:
            return
        t = time.monotonic()
        log("%s ..." % name)
        try:
            res[name] = await coro_fn()
        except Exception as e:  # noqa: BLE001 - one broken measurement must not lose the others
            res[name + "_error"] = "%s: %s" % (type(e).__name__, e)
            log("  %s failed: %s" % (name, e))
        log("  %s took %.0f s" % (name, time.monotonic() - t))

    await step("mqtt", lambda: asyncio.to_thread(mqtt_figures, 300 if args.calls >= 300 else args.calls))
    await step("footprint", lambda: asyncio.to_thread(footprint))
    await step("code", lambda: asyncio.to_thread(code_heap))
    build.build(BUILD_UNIX)
    await step("latency", lambda: latency(args.calls, max(1, min(100, args.calls // 10))))

    async def loop_runs(**kw):
        # The longest stall of one run is a maximum of wall-clock gaps, and the host's scheduler only ever adds
        # to it: the median of a few runs is the figure, their range goes in the notes.
        runs = []
        for _ in range(args.loop_runs):
            v, _ = await retry_scenario(lambda: loop_health(**kw), 2)
            runs.append(v)
        runs.sort(key=lambda v: v["max_lag_ms"])
        v = runs[len(runs) // 2]
        v["runs_ms"] = [r["max_lag_ms"] for r in runs]
        return v

    async def loop_fn():
        # The loop figure is about time: if the scenario dies of MemoryError at 110wK it is taken on a larger
        # heap, and the table says which.
        try:
            v = await loop_runs()
        except RuntimeError:
            v = await loop_runs(heap="160wK")
        if v["heap"] == "110wK":
            v["ram"] = await loop_runs(ram_flash=True)
            v["files"] = await loop_runs(romfs=False)
        return v
    await step("loop", loop_fn)
    await step("boot", lambda: boot_times(args.boots))
    await step("safety", lambda: safety(args.events))

    async def heap_fn():
        # Live heap after GC does not depend on the heap's size; when the scenario dies of MemoryError at 110wK
        # the figures are taken on a larger heap and the table says so.
        try:
            v, failures = await retry_scenario(heap_figures, 2)
        except RuntimeError as e:
            v, failures = await retry_scenario(lambda: heap_figures("160wK"), 2)
            failures = [str(e)] + failures
        v["failures"] = failures
        return v

    async def min_heap_fn():
        words, runs = await min_heap(start=80, lo=32, repeat=args.repeat, log=log)
        return {"words": words, "runs": runs, "repeat": args.repeat}

    async def files_fn():
        # the same from plain .mpy files, the deployment that does not fit an ESP32 (README.md)
        ok, why, lines, _, _ = await run_scenario(romfs=False, step_timeout=20)
        used, free = heap_line(lines)
        words, runs = await min_heap(repeat=args.repeat, log=log, romfs=False)
        return {"start_used": used, "heap_total": None if used is None else used + free, "scenario_ok": ok,
                "why": why, "words": words, "runs": runs, "repeat": args.repeat}

    # The wear run is mostly waiting for meter intervals, and the heap runs are pass/fail, not timing: run
    # them side by side to keep `make bench` short.
    async def both():
        await step("heap", heap_fn)
        await step("min_heap", min_heap_fn)
        await step("files", files_fn)

    await asyncio.gather(both(), step("wear", lambda: flash_wear(args.wear_s)))
    return res


def run_cancellable(name, run_all, args, t0):
    """asyncio.run(run_all(args, log)) that SIGTERM/SIGINT cancel cleanly (the finally blocks stop the sims);
    None when cancelled. log prints "[name Ns] msg" to stderr."""
    def log(msg):
        print("[%s %4.0fs] %s" % (name, time.monotonic() - t0, msg), file=sys.stderr, flush=True)

    async def guarded():
        task = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        return await run_all(args, log)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run of every measurement")
    p.add_argument("--only", help="comma-separated subset of: " + ",".join(STEPS))
    p.add_argument("--calls", type=int, default=1000, help="calls per type per charge point (default 1000)")
    p.add_argument("--events", type=int, default=102, help="safety events (default 102, 34 of each kind)")
    p.add_argument("--boots", type=int, default=10, help="power cycles for the boot time (default 10)")
    p.add_argument("--wear-s", type=float, default=240, help="seconds of charging for flash wear (default 240)")
    p.add_argument("--repeat", type=int, default=2, help="passes in a row for a heap size to count (default 2)")
    p.add_argument("--loop-runs", type=int, default=3, help="scenario runs per loop-stall figure (default 3)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.events, args.boots, args.wear_s, args.repeat, args.loop_runs = 50, 9, 3, 35, 1, 1
    t0 = time.monotonic()
    res = run_cancellable("bench", run_all, args, t0)
    if res is None:
        return 130
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": os.uname().nodename,
            "cpus": os.cpu_count(), "seconds": round(time.monotonic() - t0, 1), "args": vars(args)}
    try:
        meta["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip()
        meta["dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "firmware", "hal", "lib"], cwd=ROOT,
                                            capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    text = table(res)
    print(text)
    for k, v in res.items():
        if k.endswith("_error"):
            print("! %s: %s" % (k[:-6], v))
    if not args.no_save:
        os.makedirs(RESULTS, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
        path = os.path.join(RESULTS, "%s%s%s.json" % (stamp, "-quick" if args.quick else "",
                                                      "-" + args.only.replace(",", "+") if args.only else ""))
        with open(path, "w") as f:
            json.dump({"meta": meta, "results": res, "table": text.splitlines()}, f, indent=1, sort_keys=True)
        print("written %s" % os.path.relpath(path, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
