"""The loop-stall breakdown and the safety split of tools/bench.py (issue 14), kept apart from bench.py.

stalls(): the standard scenario with tools/harness/probe_deep.py in the MCU: every asyncio step is timed and named
(task, and the OCPP action for the reader), a probe window in which the live heap went down held a garbage
collection and counts as a GC pause rather than a stall, and the probe times one gc.collect() a second.
safety_split(): the MCU's own part of each safety reaction (input applied by the board's reader thread to the
contactor-open command), from the BENCHSAFE lines, beside the board-time figure the sim stamps.
"""
import asyncio
import os
import re
import shutil
import statistics
import tempfile

from harness.sim import PROBE_RE, probe_env

ESP32_SLOWDOWN = 200
# The deep probe's own code and tables live in the MCU's heap (compiled there from source): the run gets this
# much more than the 110wK the charger has, so that the probe does not starve the firmware it measures.
PROBE_HEAP = "120wK"
GC_RE = re.compile(r"BENCHGC windows=(\d+) gc_windows=(\d+) gc_lag_us=(\d+) pauses=(\d+) pause_med_us=(\d+) "
                   r"pause_max_us=(\d+) seen=(\d+) s=(\d+)")


def _last(lines, key):
    found = None
    for _, line in lines:
        i = line.find(key + " ")
        if i >= 0:
            found = line[i + len(key) + 1:]
    return found


def parse(lines):
    """The figures of the last deep-probe report in the sim's lines ((t, line) pairs)."""
    probe = [PROBE_RE.search(line) for _, line in lines if PROBE_RE.search(line)]
    top = []
    for item in (_last(lines, "BENCHSTEPS") or "").split(";"):
        if item:
            us, task, label, store_us, import_us, log_us, in_gc, pre_us = item.split(" ")
            top.append({"us": int(us), "task": task, "label": label, "flash_us": int(store_us),
                        "import_us": int(import_us), "log_us": int(log_us), "gc": int(in_gc),
                        "preempted_us": int(pre_us)})
    tasks = []
    for item in (_last(lines, "BENCHTASKS") or "").split(";"):
        if item:
            f = item.split(" ")
            n = [int(x) for x in f[2:]]
            tasks.append({"task": f[0], "label": f[1], "max_us": n[0], "n": n[1], "sum_us": n[2], "flash_us": n[3],
                          "gc_n": n[4], "gc_max_us": n[5], "import_us": n[6], "log_us": n[7], "preempted_us": n[8]})
    tasks.sort(key=lambda r: -r["max_us"])
    g = GC_RE.search("BENCHGC " + (_last(lines, "BENCHGC") or ""))
    gcf = None
    if g:
        windows, gc_windows, gc_lag, pauses, med, mx, seen, ms = (int(x) for x in g.groups())
        # the probe's own collections (one a second, timed) are not among those seen
        gcf = {"windows": windows, "gc_windows": gc_windows, "gc_lag_us": gc_lag, "timed": pauses,
               "pause_med_us": med, "pause_max_us": mx, "seen": seen, "per_s": seen * 1000.0 / ms if ms else None,
               "esp32_est_ms": med / 1000.0 * ESP32_SLOWDOWN}
    lag = int(probe[-1].group(3)) if probe else None
    return {"stall_ms": None if lag is None else lag / 1000.0, "top": top, "tasks": tasks, "gc": gcf}


async def stalls(run_scenario, runs=1, heap=PROBE_HEAP):
    """runs scenario runs with the deep probe, flash on a RAM disk; the run with the median stall is kept."""
    out = []
    for _ in range(runs):
        tmp = tempfile.mkdtemp(prefix="bench-steps-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        try:
            async def settle(csms, sim):
                await asyncio.sleep(2.2)  # reports come every second: the reconnect's steps are in the last

            ok, why, lines, _, _ = await run_scenario(
                heap=heap, probe=probe_env(gc_each=False, period_ms=2, report_ms=1000, steps=True),
                after=settle, state_dir=os.path.join(tmp, "state"))
            if not ok:
                raise RuntimeError("scenario failed with the step probe: " + why)
            v = parse(lines)
            v["heap"] = heap
            out.append(v)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out.sort(key=lambda v: v["stall_ms"] or 0)
    v = out[len(out) // 2]
    v["runs_ms"] = [r["stall_ms"] for r in out]
    v["steps"] = _steps_median(out)
    return v


def _steps_median(runs):
    """Per task and action, the median over the runs of its longest step (a host preemption that lands in one
    step of one run does not make it the worst), the longest first."""
    per = {}
    for v in runs:
        for r in v["tasks"]:
            per.setdefault((r["task"], r["label"]), []).append(r)
    out = []
    for (task, label), rs in per.items():
        rs += [None] * (len(runs) - len(rs))  # a step a run did not have counts as 0
        rs.sort(key=lambda r: r["max_us"] if r else 0)
        mid = rs[len(rs) // 2]
        if mid:
            out.append({"task": task, "label": label, "us": mid["max_us"], "flash_us": mid["flash_us"],
                        "import_us": mid["import_us"], "log_us": mid["log_us"], "preempted_us": mid["preempted_us"],
                        "n": mid["n"], "mean_us": mid["sum_us"] / mid["n"] if mid["n"] else 0})
    out.sort(key=lambda r: -r["us"])
    return out


def safety_split(lines, reactions, wall_offset_s):
    """Each reaction (kind, board ms of the trigger, of the contactor-open event, of the sim reading that line)
    split by the BENCHSAFE lines, matched by time: "in" the trigger to the MCU's reader thread applying it (the
    sim's write, the socket, the reader thread's turn), "mcu" that to the open command, "out" the command to the
    event's time (the sim stamps the command's own time: about 0), "read" the command to the sim's loop reading
    it (not board time: the pin acted at the command). wall_offset_s: board ms / 1000 + it = wall-clock s."""
    got = [tuple(int(x) for x in m.groups()) for m in
           (re.search(r"BENCHSAFE mcu_us=(-?\d+) in_ns=(\d+) out_ns=(\d+)", line) for _, line in lines) if m]
    out = {}
    mcu = []
    for kind, t_trig, t_open, t_read in reactions:
        trig = t_trig / 1000.0 + wall_offset_s
        opened = t_open / 1000.0 + wall_offset_s
        # the MCU's line for this opening: the one whose command time is nearest the event's (the sim stamps
        # the event with the command's time; other openings, a stop's, are seconds away)
        near = min(got, key=lambda g: abs(g[2] / 1e9 - opened), default=None)
        if near is None or abs(near[2] / 1e9 - opened) > 0.05:
            continue
        mcu_us, in_ns, out_ns = near
        parts = out.setdefault(kind, {"in": [], "mcu": [], "out": [], "read": []})
        parts["in"].append((in_ns / 1e9 - trig) * 1000)
        parts["mcu"].append(mcu_us / 1000.0)
        parts["out"].append((opened - out_ns / 1e9) * 1000)
        parts["read"].append(t_read - t_open)
        mcu.append(mcu_us / 1000.0)
    return {"per_kind": out, "mcu_ms": mcu, "unmatched": len(reactions) - len(mcu)}


def loop_rows(row, st):
    """Table rows for stalls()' figures; row is bench.table's row()."""
    runs = st.get("runs_ms") or [st["stall_ms"]]
    steps = st.get("steps") or st["top"]
    worst = steps[0] if steps else None
    if worst:
        # A step is exactly a stretch without yielding; the median over runs keeps a host preemption that lands
        # in one step of one run from being taken for the firmware's.
        row("loop", "longest step without yielding, less GC", "%.2f ms" % (worst["us"] / 1000.0),
            "ESP32 estimate x%d: %.0f ms; %s%s; RAM disk, step probe, heap %s%s" % (
                ESP32_SLOWDOWN, worst["us"] / 1000.0 * ESP32_SLOWDOWN, worst["task"],
                "" if worst["label"] == "-" else " " + worst["label"], st["heap"],
                "; the host's preemption taken out" if "preempted_us" in worst else ""),
            target=(0.1, "<= 0.1 ms"), measured=worst["us"] / 1000.0)
    row("loop", "  probe lag without GC windows", "%.2f ms" % st["stall_ms"],
        "the loop's lateness as the probe saw it (steps back to back, host preemption); median of %d runs "
        "(%.1f-%.1f ms)" % (len(runs), min(runs), max(runs)))
    for r in steps[:10]:
        pre = r.get("preempted_us")  # None in results saved before the probe took it out
        row("loop", "  step %s%s" % (r["task"], "" if r["label"] == "-" else " " + r["label"]),
            "%.2f ms" % (r["us"] / 1000.0), "longest less GC%s (median of runs); in it: flash writes %.2f, lazy "
            "import %.2f, log lines %.2f ms; %d steps, mean %.2f ms with GC%s" % (
                "" if pre is None else " and host preemption", r["flash_us"] / 1000.0,
                r["import_us"] / 1000.0, r["log_us"] / 1000.0, r.get("n", 0), r.get("mean_us", 0) / 1000.0,
                "" if pre is None else "; preemption taken out %.2f ms" % (pre / 1000.0)))
    g = st.get("gc")
    if g:
        row("loop", "GC pause (one collection, host)", "%.2f ms" % (g["pause_med_us"] / 1000.0),
            "max %.2f ms of %d timed; x%d estimate %.0f ms (C code: an ESP32 is likely faster than x%d)" % (
                g["pause_max_us"] / 1000.0, g["timed"], ESP32_SLOWDOWN, g["esp32_est_ms"], ESP32_SLOWDOWN))
        row("loop", "GC: automatic collections", "%.1f /s" % (g["per_s"] or 0),
            "%d seen (estimate: heap use down 1 KB, or gc.threshold() bytes allocated); %d of %d probe windows "
            "held one, their longest lag %.2f ms (GC + steps beside it)" % (
                g["seen"], g["gc_windows"], g["gc_windows"] + g["windows"], g["gc_lag_us"] / 1000.0))


def safety_rows(row, sf):
    split = sf.get("split") or {}
    mcu = split.get("mcu_ms")
    if mcu:
        row("safety", "  MCU part: input in -> open command", "%.1f ms" % statistics.median(mcu),
            "worst %.1f ms, n=%d%s (the watch's 2 samples 10 ms apart)" % (
                max(mcu), len(mcu), " (%d unmatched)" % split["unmatched"] if split.get("unmatched") else ""))
    for kind, parts in (split.get("per_kind") or {}).items():
        row("safety", "  %s: link in / MCU / link out" % kind, "/".join("%.0f" % max(parts[p]) for p in
                                                                        ("in", "mcu", "out")) + " ms",
            "worst of each; medians %s ms; the sim's loop read the command up to %.0f ms later (not board time)" % (
                "/".join("%.1f" % statistics.median(parts[p]) for p in ("in", "mcu", "out")), max(parts["read"])))
