"""Measures the claims: flash footprint, heap, call latency against a CPython reference charge point, loop health,
safety reaction, boot time and flash wear. Prints one table and writes it as JSON to bench/results/<date>.json.

    .venv/bin/python tools/bench.py [--quick] [--only NAME,...] [--calls N] [--events N] [--wear-s S] [--no-save]

Everything runs on loopback through the harness (tools/harness/): its Central System lives in this process
(harness.csms.Csms), the firmware runs in tools/sim.py's virtual board (harness.sim.AsyncSim) and tools/refcp.py
is the reference.

In-process figures (peak live heap, loop lag, bytes written to flash) come from a probe: tools/sim.py starts
SIM_MCU_SCRIPT (tools/harness/probe_mcu.py) instead of main.py; it queues one extra asyncio task, which then runs
next to the firmware's, and runs main.py unchanged. The probe prints "BENCHPROBE ..." lines that the sim echoes.
The firmware's code is the .mpy build, as flashed.
"""
import argparse
import asyncio
import datetime
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchloop  # noqa: E402  (tools/benchloop.py)
import build  # noqa: E402  (tools/build.py)
import latstages  # noqa: E402  (tools/latstages.py)
import memreport  # noqa: E402  (tools/memreport.py)
import mqttbench  # noqa: E402  (tools/mqttbench.py)
import webbench  # noqa: E402  (tools/webbench.py)
import otabench  # noqa: E402  (tools/otabench.py)
from harness import BUILD_UNIX, PY, ROOT, TOOLS  # noqa: E402
from harness.csms import CallTimeout, Csms  # noqa: E402
from harness.sim import PROBE_RE, AsyncSim, probe_env  # noqa: E402
from harness.proc import ChildProcess, measure, run_cancellable  # noqa: E402
from harness.steps import boot_charger, change_config, local_list, profile, start_charging  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results")
CP = "CP1"
REF = "REFCP"
PACKAGES = build.PACKAGES
# A host-to-ESP32 speed ratio: DESIGN.md §5 puts the unix port at 150-250x an ESP32 at 240 MHz; 200 is its middle.
ESP32_SLOWDOWN = 200
# Issue 14's flash wear target: bytes written per charging hour at the default intervals.
WEAR_TARGET = 64 * 1024
# What would bring a figure that misses its target within it, by (area, figure) or by area; printed under the
# table beside each miss. Keep these current with the analysis in README "Measurements".
MISS_FIXES = {
    ("loop", "longest step without yielding, less GC"):
        "split the steps still near 1 ms on this host (docs/decisions.md, Loop stalls): the boot's (main: the "
        "recovery module's import and the first collection), SetChargingProfile's and SendLocalList's handlers "
        "with their two flash copies (a yield between the copies), the stop's, TxQueue.run's and the meter "
        "sample's writes in Connector.run. Done: the start's five writes are three steps, Smart Charging's import "
        "two. Below ~1 ms the same step varies by +-0.5 ms from run to run on this shared VM, with the host's "
        "preemption taken out. 0.1 ms (20 ms on an ESP32) is less than one module's import from ROMFS (0.2-0.3 "
        "ms: its names are made at run time) and, on a board, than one LittleFS commit: it takes frozen modules "
        "and each flash write in a step of its own",
    ("heap", "after boot from .mpy files, 32-bit"):
        "run the code from flash, not from .mpy files in the heap: frozen into a custom build (boards/EVSE_ESP32, "
        "docs/custom-build.md) or from a ROMFS partition (make romfs); what stays in the heap is the stdlib and "
        "the App's objects, and from ROMFS the scenario passes at the smallest heap above. make deploy refuses a "
        "stock WROOM build and says so",
    "latency": "the calls that miss still write the list or profile in two copies before answering Accepted, "
               "now in place (~170-250 us each on ext4, nearly all the unix port's fsync in flush(), kept for "
               "the two copies' order; on a RAM disk the stages show ~0.85 ms); SendLocalList's entries are "
               "checked in one pass already (280 -> 60 us), SetChargingProfile's periods are not yet "
               "(docs/decisions.md, Call latency)",
}


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
            "lazy": sum(b for _, b in res["lazy"]), "modules": [(m[0], m[1]) for m in res["modules"]]}


# The budget of issue 12 (a stock ESP32 without PSRAM, WiFi and one TLS connection up) and the 32-bit figures it
# started from (2026-11, before the heap work), so the table shows before / after. Those two counted the garbage
# too: until 2026-12-06 the WebAssembly port collected nothing during the report (docs/decisions.md, Memory), and
# the same count of this code gave 123824 and 164656 B.
BUDGET_32 = 80 * 1024
BEFORE_32 = {"imports": 126496, "after_boot": 162896}


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

def latency_calls():
    """(label, function of the call index -> (action, payload))."""
    return [
        ("TriggerMessage(Heartbeat)", lambda i: ("TriggerMessage", {"requestedMessage": "Heartbeat"})),
        ("GetConfiguration (all)", lambda i: ("GetConfiguration", {})),
        ("SendLocalList (8 tags)", lambda i: ("SendLocalList", local_list(i + 1, 8 * (i % 2)))),
        ("SetChargingProfile (3 periods)", lambda i: ("SetChargingProfile", profile(1 + i % 4))),
        ("RemoteStartTransaction", lambda i: ("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"})),
    ]


class RefCp(ChildProcess):
    """tools/refcp.py, the `ocpp`-package reference charge point, as a child process."""

    name = "refcp"
    ready_pattern = r"REFCP READY"

    async def start(self, url):
        since = self._launch([PY, os.path.join(TOOLS, "refcp.py"), "--url", url, "--id", REF])
        await self.await_line(self.ready_pattern, 30, since)
        return self

    async def stop(self):
        await asyncio.to_thread(self._terminate, 10)


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
    sim = AsyncSim(csms.url)
    ref = RefCp()
    try:
        await sim.start()
        csms.keep_frames = True
        await boot_charger(csms, sim)
        csms.keep_frames = False
        await ref.start(csms.url)
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
        ref_rss, ref_hwm = rss_kb(ref.proc.pid)
        res["_rss"] = {"mpy_kb": mpy_rss, "mpy_peak_kb": mpy_hwm, "ref_kb": ref_rss, "ref_peak_kb": ref_hwm,
                       "ratio": mpy_rss / ref_rss if mpy_rss and ref_rss else None}
        if sim.crashes():
            res["_crashes"] = sim.crash_summary()
        return res
    finally:
        await ref.stop()
        await sim.close()
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
    _, tid = await start_charging(csms, sim, tag="BENCH003")
    await csms.wait_call(CP, "MeterValues", since_t=t, timeout=step_timeout,
                         where=lambda p: p.get("transactionId") == tid and len(csms.tx[tid]["meter"]) >= 2)
    await sim.ev("B")
    await sim.unplug()
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
    """(passed, why, sim lines as (t, line), marks, extra) for one scenario run on a fresh charger. probe: the
    environment of probe_env(), or None. after(csms, sim) runs at the end while everything is up; its value is
    returned as extra. romfs: the firmware runs from a ROMFS image, whose bytes the sim adds to the heap (a board
    keeps them in flash); else from .mpy files."""
    csms = await Csms().start()
    sim = AsyncSim(csms.url, heap=heap, env=probe, state_dir=state_dir, romfs=romfs)
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
        return True, "", sim.timed(), marks, extra
    except (Failed, TimeoutError, asyncio.TimeoutError, CallTimeout, ConnectionError, RuntimeError) as e:
        return False, "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""), sim.timed(), marks, \
            extra
    finally:
        await sim.close()
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
    async def idle(csms, sim):
        return None

    image = romfs_image_size()
    ok, why, lines, marks, _ = await run_scenario(heap=heap, probe=probe_env(gc_each=True, period_ms=5,
                                                                             report_ms=100), after=idle)
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
        probe = probe_env(gc_each=False, period_ms=2, report_ms=100)

        async def calibrate(csms, sim):
            await asyncio.sleep(0.5)
            before = sim.probes()[-1]
            t = time.monotonic()
            await sim.block_loop(block_ms)
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
    # the probe (a report every 10 s, no GC) splits each reaction into the MCU's part and the link's
    sim = AsyncSim(csms.url, env=probe_env(gc_each=False, period_ms=100, report_ms=10000, safety=True))
    flood = None
    delays = {"unplug": [], "C->B": [], "rcd": []}
    missing = []
    reactions = []  # (kind, board ms of the trigger, of the contactor opening), for the MCU/link split
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
                await sim.ev("C")
                await sim.wait_status(lambda s: s["contactor"], what="contactor closed again")
            await asyncio.sleep(rnd.uniform(0.05, 0.4))
            mark = (await sim.events(1 << 60))["next"]
            if kind == "unplug":
                await sim.unplug()
                trigger = ("pilot",)
                need = "start"
            elif kind == "C->B":
                await sim.ev("B")
                trigger = ("pilot",)
                need = "resume"
            else:
                await sim.fault("rcd", True)
                trigger = ("fault",)
            await sim.wait_status(lambda s: not s["contactor"], what="contactor open after %s" % kind)
            evs = (await sim.events(mark))["events"]
            t_trig = next((e["t"] for e in evs if e["kind"] in trigger), None)
            t_open = next((e["t"] for e in evs if e["kind"] == "contactor" and not e["on"]), None)
            if t_trig is None or t_open is None:
                missing.append((kind, evs[:6]))
            else:
                delays[kind].append(t_open - t_trig)
                ev_open = next(e for e in evs if e["kind"] == "contactor" and not e["on"])
                reactions.append((kind, t_trig, t_open, ev_open.get("rx_t", t_open)))
            if kind == "rcd":
                await sim.fault("rcd", False)
                await sim.unplug()   # RCD recovery needs the EV in A (docs/decisions.md)
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
               "split": benchloop.safety_split(sim.timed(), reactions,
                                               await sim.board_clock() + time.time() - time.monotonic()),
               "crashes": sim.crash_summary()}
        return res
    finally:
        if flood is not None:
            await flood.stop()
        await sim.close()
        await csms.stop()


# ---------------------------------------------------------------------------------------------------------------
# Boot time

async def boot_times(cycles=10):
    """MCU process start (the sim's "mcu start" event) to BootNotification received and to Accepted sent, over a
    first boot on empty flash and cycles power cycles."""
    csms = await Csms().start()
    sim = AsyncSim(csms.url)
    rows = []
    try:
        await sim.start()
        for i in range(cycles + 1):
            t = time.monotonic()
            if i:
                await sim.power(False)
                mark = (await sim.events(1 << 60))["next"]
                t = time.monotonic()
                await sim.power(True)
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
        await sim.close()
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
    new inode counts its whole size, one that grew in place counts the growth), also per file. Extrapolated to an
    hour."""
    csms = await Csms().start()
    sim = AsyncSim(csms.url, env=probe_env(gc_each=False, period_ms=20, report_ms=500))
    try:
        await sim.start()
        await boot_charger(csms, sim)
        await start_charging(csms, sim)
        await asyncio.sleep(1)
        t0 = time.monotonic()
        w0 = (await sim.wait_probe(t0))["written"]
        seen = _snapshot(sim.state_dir)
        outside = 0
        by_file = {}
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
                        renames += 1  # an unchanged file under a new name (a rotation to NAME.bak): no write
                        continue
                    n = size
                elif old[1] != mtime or old[2] != size:
                    n = max(size - old[2], 0) if size >= old[2] else size
                else:
                    continue
                outside += n
                rewrites += 1
                name = os.path.relpath(path, sim.state_dir).replace(".tmp", "")
                by_file[name] = by_file.get(name, 0) + n
            seen = now
        t1 = time.monotonic()
        w1 = (await sim.wait_probe(t1))["written"]
        span = t1 - t0
        mv = sum(1 for t, f in csms.calls_in(CP, "MeterValues", t0))
        return {"seconds": span, "firmware_bytes": w1 - w0, "outside_bytes": outside, "file_writes_seen": rewrites,
                "renames_seen": renames, "by_file": by_file,
                "meter_values": mv, "per_hour_firmware": (w1 - w0) / span * 3600,
                "per_hour_outside": outside / span * 3600, "extrapolated": True, "crashes": sim.crash_summary()}
    finally:
        await sim.close()
        await csms.stop()


# ---------------------------------------------------------------------------------------------------------------
# The table

def _f(v, fmt="%.1f"):
    return "-" if v is None else fmt % v


def target_cells(value, target, better="low"):
    """(target text, ratio text) for a figure measured against an issue's target: the ratio is value/target, so
    at or below 1.0 meets a "lower is better" target; a miss is marked MISS so it stands out in the table."""
    if target is None:
        return "", ""
    limit, text = target
    if value is None or not limit:
        return text, "-"
    ratio = value / limit
    met = ratio <= 1.0 if better == "low" else ratio >= 1.0
    return text, "x%.2f%s" % (ratio, "" if met else " MISS")


def table(r):
    rows = []

    misses = []

    def row(section, name, value, note="", target=None, measured=None, better="low"):
        """target: (limit, text), e.g. (25, "<= 25 ms"); measured: the number compared with the limit (the
        value cell is text). A figure that misses its target is listed under the table with MISS_FIXES."""
        goal, ratio = target_cells(measured, target, better)
        rows.append((section, name, value, goal, ratio, note))
        if ratio.endswith("MISS"):
            misses.append("%s %s (%s, target %s): %s" % (
                section, name.strip(), value, goal, MISS_FIXES.get((section, name.split(" p")[0].strip()),
                                                                  MISS_FIXES.get(section, "not analysed yet"))))

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
                "WebAssembly port, ESP32 object layout; before the heap work %d B, garbage counted"
                % BEFORE_32["imports"])
            row("heap", "after boot from .mpy files, 32-bit", "%d B" % w["after_boot"],
                "stdlib %d + imports + App objects %s; budget %d B (stock ESP32, no PSRAM), before %d B, garbage "
                "counted" % (w["stdlib"], w["app_objects"], BUDGET_32, BEFORE_32["after_boot"]),
                target=(BUDGET_32, "<= %d KB" % (BUDGET_32 // 1024)), measured=w["after_boot"])
            for name, b in sorted(w.get("modules", []), key=lambda m: -m[1])[:12]:
                row("heap", "  32-bit import: " + name, "%d B" % b, "")
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
    web = r.get("web")
    if web:
        h = web.get("heap32") or {}
        row("web", "heap, 32-bit: the page (web + microdot + auth)", _f(h.get("firmware.web"), "%d B"),
            "on top of boot, .mpy files; microdot's objects and bytecode %s B, the setup page %s B" % (
                _f(h.get("microdot"), "%d"), _f(h.get("firmware.websetup"), "%d")))
        c = web["chromium"]
        row("web", "heap held by a logged-in browser", "%d B" % c["browser_heap_unix64"],
            "64-bit unix port (about half on 32 bits): session, SSE stream, routes compiled on first use")
        f = web["flash"]
        row("web", "flash (xtensawin)", "%d B" % f["total"],
            "static files %d B gzip (%d raw), microdot %d B .mpy, page modules %d B .mpy" % (
                f["www_gz"], f["www_raw"], f["microdot_mpy"], f["firmware_mpy"]))
        row("web", "page load in Chromium, median", "%.1f ms" % c["load_ms"],
            "DOMContentLoaded %.1f ms; %d loads over loopback, headless Debian chromium, server on the unix port"
            % (c["dom_content_loaded_ms"], c["loads"]))
    lat = r.get("latency")
    if lat:
        for label, v in lat.items():
            if label.startswith("_"):
                continue
            ans = "/".join("%s %d" % kv for kv in sorted(v["mpy"]["answers"].items()))
            row("latency", label + " p50", "%.2f ms" % v["mpy"]["p50_ms"],
                "ref %.2f ms, x%.1f of ref" % (v["ref"]["p50_ms"], v["ratio_p50"]),
                target=(0.5 * v["ref"]["p50_ms"], "<= 0.5x ref"), measured=v["mpy"]["p50_ms"])
            row("latency", label + " p99", "%.2f ms" % v["mpy"]["p99_ms"],
                "ref %.2f ms, x%.1f of ref; n=%d; %s" % (v["ref"]["p99_ms"], v["ratio_p99"], v["mpy"]["n"], ans),
                target=(v["ref"]["p99_ms"], "<= ref p99"), measured=v["mpy"]["p99_ms"])
        rss = lat["_rss"]
        row("memory", "RSS MicroPython process", "%d kB" % rss["mpy_kb"], "peak %d kB" % rss["mpy_peak_kb"])
        row("memory", "RSS reference CP (CPython+ocpp)", "%d kB" % rss["ref_kb"],
            "peak %d kB; ours/ref x%.2f" % (rss["ref_peak_kb"], rss["ratio"]))
    if r.get("stages"):
        latstages.table_rows(r["stages"], row)
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
                "ESP32 estimate x%d: %.0f ms; %s; no host fsync; GC pauses and host preemption included (the "
                "target's figure is the longest step, below)" % (ESP32_SLOWDOWN, ram["esp32_est_ms"], runs(ram)))
        fl = lh.get("files")
        if fl:
            row("loop", "  code from .mpy files instead", "%.2f ms" % fl["max_lag_ms"],
                "ESP32 estimate x%d: %.0f ms; %s; a larger heap to collect (%s)" % (
                    ESP32_SLOWDOWN, fl["esp32_est_ms"], runs(fl), fl["heap"]))
        row("loop", "probe check: injected stall", "%d ms" % lh["calibration_block_ms"],
            "probe saw %.1f ms" % lh["calibration_seen_ms"])
    if r.get("stalls"):
        benchloop.loop_rows(row, r["stalls"])
    sf = r.get("safety")
    if sf:
        row("safety", "pilot/fault -> contactor open, median", "%d ms" % sf["median_ms"],
            "%d events under flood" % sf["events"])
        row("safety", "pilot/fault -> contactor open, worst", "%d ms" % sf["worst_ms"],
            target=(25, "<= 25 ms"), measured=sf["worst_ms"], note=", ".join("%s %s/%s" % (k, _f(v["median_ms"], "%d"), _f(v["worst_ms"], "%d"))
                      for k, v in sf["per_kind"].items()))
        benchloop.safety_rows(row, sf)
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
            "store counter; %d B in %.0f s, extrapolated" % (w["firmware_bytes"], w["seconds"]),
            target=(WEAR_TARGET, "<= 64 KB/h"), measured=w["per_hour_firmware"])
        row("wear", "  seen from outside (dir polling)", "%.0f B/h" % w["per_hour_outside"],
            "%d file writes and %d renames seen, %d MeterValues" % (w["file_writes_seen"], w.get("renames_seen", 0),
                                                                     w["meter_values"]))
        if w.get("by_file"):
            row("wear", "  per file (dir polling)", "%d files" % len(w["by_file"]), ", ".join(
                "%s %.0f B/h" % (k, v / w["seconds"] * 3600) for k, v in sorted(w["by_file"].items(),
                                                                                  key=lambda kv: -kv[1])[:4]))
    if r.get("ota"):
        otabench.rows(r["ota"], row)
    for name in ("latency", "safety", "boot", "wear", "heap"):
        v = r.get(name) or {}
        c = v.get("_crashes") or v.get("crashes")
        if c:
            row("errors", "firmware errors during " + name, "%d" % sum(c.values()), next(iter(c))[:90])
    head = ("area", "figure", "value", "target", "ratio", "notes")
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(5)]
    fmt = "%-*s  %-*s  %*s  %-*s  %-*s  %s"

    def line(cells):
        return (fmt % (widths[0], cells[0], widths[1], cells[1], widths[2], cells[2], widths[3], cells[3],
                       widths[4], cells[4], cells[5])).rstrip()
    out = [line(head), "-" * (sum(widths) + 50)]
    out.extend(line(x) for x in rows)
    if misses:
        out.append("")
        out.append("Figures that miss their target, and what would fix them:")
        out.extend("- " + m for m in misses)
    return "\n".join(out)


README_BEGIN = "<!-- make bench: table begin -->"
README_END = "<!-- make bench: table end -->"


def write_readme(text, meta, path=os.path.join(ROOT, "README.md")):
    """Puts the table, with the date and machine it was measured on, between the README's markers."""
    with open(path) as f:
        doc = f.read()
    head, sep, rest = doc.partition(README_BEGIN)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise SystemExit("README.md has no %s ... %s block" % (README_BEGIN, README_END))
    block = ("\nMeasured by `make bench` on %s, commit %s%s, on %s (%s cores, Python %s, MicroPython unix port), "
             "in %.0f s:\n\n```\n%s\n```\n" % (
                 meta["date"][:16].replace("T", " "), meta.get("commit", "?"), " (uncommitted changes)"
                 if meta.get("dirty") else "", meta["host"], meta["cpus"], meta.get("python", "?"), meta["seconds"],
                 text))
    with open(path, "w") as f:
        f.write(head + README_BEGIN + block + README_END + tail)


STEPS = ("footprint", "code", "latency", "stages", "loop", "stalls", "boot", "safety", "heap", "min_heap", "files",
         "wear", "mqtt", "web", "ota")


async def run_all(args, log):
    res = {}
    only = set(args.only.split(",")) if args.only else set(STEPS)

    async def step(name, coro_fn):
        if name in only:
            await measure(res, name, coro_fn, log)

    await step("mqtt", lambda: asyncio.to_thread(mqtt_figures, 300 if args.calls >= 300 else args.calls))
    await step("web", lambda: asyncio.to_thread(webbench.measure, 5 if args.quick else 20, True, "xtensawin"))
    await step("footprint", lambda: asyncio.to_thread(footprint))
    await step("code", lambda: asyncio.to_thread(code_heap))
    build.build(BUILD_UNIX)
    await step("latency", lambda: latency(args.calls, max(1, min(100, args.calls // 10))))
    await step("stages", lambda: latstages.stages(latency_calls(), min(args.calls, 300)))

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
            try:
                v["files"] = await loop_runs(romfs=False)
            except RuntimeError:  # the whole code in the heap may not fit 110wK (README): a larger heap then
                v["files"] = await loop_runs(romfs=False, heap="160wK")
        return v
    await step("loop", loop_fn)
    await step("stalls", lambda: benchloop.stalls(run_scenario, args.loop_runs))
    await step("boot", lambda: boot_times(args.boots))
    await step("safety", lambda: safety(args.events))
    await step("ota", lambda: otabench.figures(1 if args.quick else 3))

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
    p.add_argument("--readme", action="store_true", help="also write the table into README.md's bench block")
    p.add_argument("--render", metavar="JSON", help="measure nothing: print (and with --readme, write) the table "
                   "of a saved bench/results/ file")
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        text = table(saved["results"])
        print(text)
        if args.readme:
            write_readme(text, saved["meta"])
        return 0
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
    meta["python"] = sys.version.split()[0]
    text = table(res)
    print(text)
    if args.readme:
        write_readme(text, meta)
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
