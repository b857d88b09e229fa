"""Where a CALL's round trip goes: the bench's per-stage breakdown of the latency calls (tools/bench.py, step
"stages").

A charger runs with tools/harness/probe_stages.py beside it (through probe_mcu.py), which times every stage of each
CALL it serves on the MicroPython side with time.ticks_us (read, parse, validate, handle, persist, encode, write,
other; probe_stages.py says what each span is). The same calls as the latency step go to it alone, count per kind;
after each kind a "BenchStages" CALL makes the probe print its medians. The wrappers cost a few us per stage, so
this run's round trips are a little slower than the latency step's, which runs without them. The probe's own code
and record buffer (~15 KB, compiled on the unix port from source) would leave too little of a 110wK heap for the
SmartCharging profile to load, so this run takes HEAP, with the app's collection threshold unchanged.

The rest of the round trip (the harness's Csms in the bench process sending the CALL and reading the answer, the
kernel's TCP on loopback, and the charger's wake-up: its loop noticing the socket and reaching the reader task
past the others) is the round trip's median less the charger's own median total. The first two are measured
alone by a charge point that does nothing (tools/harness/nullcp_mcu.py: MicroPython, lib/ws.py, an answer
without parsing), the floor: what exceeds it is the charger's wake-up.
"""
import os
import re
import shutil
import statistics
import tempfile

import websockets

from harness import ROOT
from harness.csms import CallTimeout, Csms
from harness.proc import ChildProcess
from harness.sim import PROBE_SCRIPT, AsyncSim
from harness.steps import boot_charger

CP = "CP1"
NULL = "NULLCP"
HEAP = "120wK"
STAGES = ("read", "parse", "validate", "handle", "persist", "encode", "write", "other")
LINE_RE = re.compile(r"BENCHSTAGE action=(\S+) n=(\d+) (.*)")


class NullCp(ChildProcess):
    """tools/harness/nullcp_mcu.py: a MicroPython charge point that answers every CALL at once, unparsed."""

    name = "nullcp"
    ready_pattern = r"NULLCP READY"

    async def start(self, url):
        from sim import micropython_binary  # tools/sim.py

        since = self._launch([micropython_binary(), os.path.join(ROOT, "tools", "harness", "nullcp_mcu.py"),
                              url.rstrip("/") + "/" + NULL])
        await self.await_line(self.ready_pattern, 30, since)
        return self

    async def stop(self):
        import asyncio

        await asyncio.to_thread(self._terminate, 5)


async def floor(count=300):
    """The round trip's floor (us, p50 and p99): the same Central System calling a charge point that does
    nothing (NullCp) with a TriggerMessage, count times."""
    csms = await Csms().start()
    csms.keep_frames = False
    cp = NullCp()
    try:
        await cp.start(csms.url)
        await csms.wait_connected(NULL)
        rtts = []
        for _ in range(count):
            _, rtt = await csms.call(NULL, "TriggerMessage", {"requestedMessage": "Heartbeat"}, timeout=30)
            rtts.append(rtt)
        rtts.sort()
        return {"n": len(rtts), "p50_us": int(statistics.median(rtts) * 1e6),
                "p99_us": int(rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)] * 1e6)}
    finally:
        await cp.stop()
        await csms.stop()


def probe_env(gc_threshold=0):
    """tools/sim.py runs the firmware through the probe, with no periodic task and the stage wrappers on;
    gc_threshold: an experiment, the calls run at this gc.threshold() instead of the app's."""
    return {"SIM_MCU_SCRIPT": PROBE_SCRIPT, "BENCH_PROBE": "0,0,0", "BENCH_STAGES": "1",
            "BENCH_GC_THRESHOLD": str(gc_threshold)}


def _median(values):
    s = sorted(values)
    return s[len(s) // 2] if s else None


async def _report(csms, sim):
    """Asks the probe for its figures ("BenchStages", answered NotImplemented) -> {action: {stage: us}}."""
    since = len(sim.lines)
    await csms.call(CP, "BenchStages", {}, timeout=30)
    await sim.await_line(r"BENCHSTAGE end", 30, since)
    out = {}
    for line in sim.lines[since:]:
        m = LINE_RE.search(line)
        if m:
            cells = dict((k, int(v)) for k, v in (c.split("=") for c in m.group(3).split()))
            cells["n"] = int(m.group(2))
            out[m.group(1)] = cells
    return out


async def _run(calls, count, state_dir=None, gc_threshold=0):
    csms = await Csms().start()
    csms.keep_frames = False
    sim = AsyncSim(csms.url, env=probe_env(gc_threshold), heap=HEAP, state_dir=state_dir)
    res = {}
    try:
        await sim.start()
        csms.keep_frames = True
        await boot_charger(csms, sim)
        csms.keep_frames = False
        await _report(csms, sim)  # boot-time CALLs out of the way
        for label, make in calls:
            rtts = []
            action = None
            for i in range(count):
                action, payload = make(i)
                try:
                    _, rtt = await csms.call(CP, action, payload, timeout=30)
                except (CallTimeout, ConnectionError, websockets.ConnectionClosed):
                    await csms.wait_connected(CP, 60)
                    continue
                rtts.append(rtt)
            got = (await _report(csms, sim)).get(action)
            if not got:
                continue
            row = dict(got, action=action, rtt_us=int(_median(rtts) * 1e6))
            row["outside_us"] = row["rtt_us"] - row["total"]
            res[label] = row
        if sim.crashes():
            res["_crashes"] = sim.crash_summary()
    finally:
        await sim.close()
        await csms.stop()
    return res


async def stages(calls, count=300):
    """calls: bench.latency_calls(). -> {label: {"action", stage medians (us), "total", "total_p99", "alloc",
    "gcs", "gc_us", "rtt_us" (the round trip's median), "outside_us" (round trip less the charger's total)},
    "_floor": floor(), "_ram": the calls that write flash again, with the flash on a RAM disk}. The state
    directory is on the host disk, as in the latency step; on its ext4 a state file written as a new file and
    renamed over the old one costs ~0.5 ms (the RAM disk takes the host out of the persist figure)."""
    res = await _run(calls, count)
    persisting = [(label, make) for label, make in calls if res.get(label, {}).get("persist")]
    if persisting and os.path.isdir("/dev/shm"):
        tmp = tempfile.mkdtemp(prefix="bench-stages-", dir="/dev/shm")
        try:
            res["_ram"] = await _run(persisting, count, os.path.join(tmp, "state"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    res["_floor"] = await floor(count)
    return res


def main(argv=None):
    """The breakdown alone, optionally at another gc.threshold (an experiment: the app's is 4096)."""
    import argparse
    import asyncio
    import sys

    import bench

    p = argparse.ArgumentParser(description="per-stage breakdown of the bench's latency calls")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--gc-threshold", type=int, default=0, help="run the calls at this gc.threshold()")
    args = p.parse_args(argv)
    bench.build.build(bench.BUILD_UNIX)
    res = asyncio.run(_run(bench.latency_calls(), args.calls, gc_threshold=args.gc_threshold))
    rows = []
    table_rows(res, lambda *r: rows.append(r))
    for r in rows:
        print("%-36s %9s  %s" % r[1:4])
    return 0 if not res.get("_crashes") else 1


def table_rows(st, row):
    """Adds the breakdown to bench.table()'s rows through its row(section, name, value, note)."""
    fl = st.get("_floor")
    if fl:
        row("stages", "floor: a charge point doing nothing", "%d us" % fl["p50_us"],
            "p50 round trip (p99 %d) of a MicroPython CP on lib/ws.py answering unparsed; n=%d" % (
                fl["p99_us"], fl["n"]))
    for label, v in st.items():
        if label.startswith("_"):
            continue
        parts = " ".join("%s %d" % (s, v[s]) for s in STAGES)
        row("stages", label[:34] + " (us)", "%d us" % v["total"],
            "%s; p99 %d; heap +%d B (median, calls without a collection), collection in %.0f%% of calls (%d us); "
            "round trip %d, outside the charger's span %d (Central System, loopback, the charger's wake-up)"
            % (parts, v["total_p99"], v["alloc"], 100.0 * v["gcs"] / max(1, v["n"]), v["gc_us"], v["rtt_us"],
               v["outside_us"]))
        ram = (st.get("_ram") or {}).get(label)
        if ram:
            row("stages", "  same, flash on a RAM disk", "%d us" % ram["total"],
                "persist %d (host disk %d); round trip %d; p99 %d" % (ram["persist"], v["persist"], ram["rtt_us"],
                                                                     ram["total_p99"]))


if __name__ == "__main__":
    import sys

    sys.exit(main())
