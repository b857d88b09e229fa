# Runs on the MicroPython unix port in place of main.py (tools/sim.py's SIM_MCU_SCRIPT, set by
# harness.sim.probe_env): queues one probe task, then runs the firmware's main.py unchanged. asyncio keeps a task
# created before asyncio.run() in its queue, so the probe runs in the firmware's own loop with no hook in the
# firmware. Every period ms it measures how late its sleep wakes (the longest loop stall) and, with gc on,
# collects and reads the live heap; every report ms it prints a BENCHPROBE line that the sim echoes.
# BENCH_PROBE="gc,period,report[,flags]" (0/1, ms, ms, bits). The sim starts the MCU in the project root.
# flags (bench only, each file loaded only then): 1 probe_deep.py names and times every asyncio step and tells GC
# pauses from stalls; 2 probe_safety.py times the MCU's own part of each safety reaction; 4 at the first report,
# once, the largest block the heap can give (a BENCHHEAP line).
# BENCH_STAGES=1 also times the stages of every CALL served (tools/harness/probe_stages.py;
# BENCH_GC_THRESHOLD=n runs them at gc.threshold(n)); period 0: no probe task.
import os
import sys
import gc
import time
import asyncio

_cfg = [int(x) for x in (os.getenv("BENCH_PROBE") or "1,2,250").split(",")]
_GC, _PERIOD, _REPORT = _cfg[:3]
_FLAGS = _cfg[3] if len(_cfg) > 3 else 0
_window = _tick = None  # probe_deep.py's: classify a window (True: a collection ran in it), once a second
if "/rom" not in sys.path:  # tools/romboot.py mounted the firmware's ROMFS image there; else the .mpy build
    sys.path.insert(0, "build/unix")


def _largest_block():
    # The largest bytearray the heap can give: what a late allocation in one piece (a qstr pool: 15 KB after the
    # boot's names) can count on. Each refusal runs a collection first, so garbage does not hide a block.
    lo, hi = 0, gc.mem_free()
    while hi - lo > 256:
        mid = (lo + hi) // 2
        try:
            bytearray(mid)
            lo = mid
        except MemoryError:
            hi = mid
    return lo


async def _probe():
    from firmware import store  # loaded by the firmware by the time the loop runs

    pieces = _FLAGS & 4

    peak = 0
    lag = 0
    n = 0
    last = time.ticks_ms()
    while True:
        if _GC:
            gc.collect()
            live = gc.mem_alloc()
            if live > peak:
                peak = live
        else:
            live = gc.mem_alloc()
        t0 = time.ticks_us()
        await asyncio.sleep_ms(_PERIOD)
        d = time.ticks_diff(time.ticks_us(), t0) - _PERIOD * 1000
        if _window is not None and _window(live, d):
            pass  # a garbage collection ran in this window: probe_deep counts it as a GC pause
        elif d > lag:
            lag = d
        n += 1
        if _tick is not None:
            _tick()
        if time.ticks_diff(time.ticks_ms(), last) >= _REPORT:
            if pieces:
                pieces = 0
                gc.collect()
                free = gc.mem_free()
                print("BENCHHEAP largest=%d free=%d" % (_largest_block(), free))
            last = time.ticks_ms()
            print("BENCHPROBE live=%d peak=%d lag_us=%d written=%d free=%d n=%d" % (
                live, peak, lag, store.bytes_written, gc.mem_free(), n))


if os.getenv("BENCH_STAGES"):
    sys.path.append("tools/harness")
    import probe_stages

    probe_stages.install(int(os.getenv("BENCH_GC_THRESHOLD") or 0))
if _PERIOD:
    asyncio.create_task(_probe())  # before probe_deep wraps create_task: the probe's steps are not the firmware's
for _bit, _name in ((1, "probe_deep.py"), (2, "probe_safety.py")):
    if _FLAGS & _bit:
        with open("tools/harness/" + _name) as _f:
            exec(_f.read())
with open("build/unix/main.py") as _f:
    _main = _f.read()
exec(_main)
