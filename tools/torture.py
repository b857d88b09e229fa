"""Torture runs against the firmware on the virtual board: power cuts, Central System outages, bad input, soak,
meter glitches, damaged flash. Prints one table; exit status 1 when a must-be-zero figure is not zero.

    .venv/bin/python tools/torture.py [--quick] [--only cuts,outages,fuzz,soak,glitch,flash] [--cuts N] [-j JOBS]
                                      [--outages N] [--frames N] [--exchanges N] [--glitches N] [--seed S]
                                      [--save-failures DIR]

Runs on the harness (tools/harness/): its in-process Central System, which books every transaction, and its
simulator driver. Every random choice comes from --seed, so a run can be repeated (with the same --jobs: board j
draws from seed + 1000 j). The power cuts (500 sessions by default, `make torture`) run on --jobs boards at once,
each with its own Central System and flash; -j 1 runs them one after the other, as the quick version does. Failing fuzz inputs are written to --save-failures (default tests/regressions/fuzz/) as JSON cases
that tests/regressions/test_fuzz_regressions.py replays.
"""
import argparse
import asyncio
import json
import os
import random
import re
import sys
import time

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build  # noqa: E402
import fuzzframes  # noqa: E402
from harness import BUILD_UNIX, ROOT  # noqa: E402
from harness.csms import CallTimeout, Csms  # noqa: E402
from harness.proc import measure, run_cancellable, until  # noqa: E402
from harness.sim import AsyncSim, probe_env  # noqa: E402
from harness.steps import boot_charger, change_config, local_list, profile, start_charging  # noqa: E402

CP = "CP1"
REGRESSIONS = os.path.join(ROOT, "tests", "regressions", "fuzz")


def tx_checks(csms, booked_per_session=()):
    """Counts over the Central System's transaction records: duplicated starts (a session that left more than one
    transaction booked: booked_per_session holds each session's count), transaction messages the charger sent
    again and the Central System recognised (at-least-once delivery, not a duplicate), unclosed transactions,
    duplicated stops, duplicated MeterValues (two for one transaction and timestamp), messages out of order (a MeterValues after its
    StopTransaction, or sampled values going back in time)."""
    dup_start = sum(max(0, n - 1) for n in booked_per_session)
    resent = sum(t["resends"] for t in csms.tx.values())  # Start, MeterValues or Stop sent again
    unclosed = sum(1 for t in csms.tx.values() if t["stops"] == 0)
    dup_stop = sum(t["stops"] - 1 for t in csms.tx.values() if t["stops"] > 1)
    dup_mv = out_of_order = 0
    stopped = set()
    last_ts = {}
    mv_seen = set()
    for cp, action, p, tid in csms.tx_order:
        if action == "StopTransaction":
            stopped.add(tid)
        elif action == "MeterValues":
            if tid in stopped:
                out_of_order += 1
            # identical resends were recognised by the Central System; two different values for one sample are not
            key = (tid, tuple(mv.get("timestamp") for mv in p.get("meterValue", [])))
            dup_mv += key in mv_seen
            mv_seen.add(key)
            ts = max((mv.get("timestamp", "") for mv in p.get("meterValue", [])), default="")
            if ts and tid in last_ts and ts < last_ts[tid]:
                out_of_order += 1
            if ts:
                last_ts[tid] = ts
    return {"transactions": len(csms.tx), "dup_start": dup_start, "resent": resent,
            "unclosed": unclosed, "dup_stop": dup_stop,
            "dup_meter_values": dup_mv, "out_of_order": out_of_order}


# ---------------------------------------------------------------------------------------------------------------
# Power cuts

async def power_cuts(n=50, seed=1, max_charge_s=6.0, sample_s=4, log=print):
    """n sessions, each cut at a random moment between presenting the tag and a few seconds of charging. After
    power returns the car leaves, so the firmware must close the open transaction itself (PowerLoss)."""
    rnd = random.Random(seed)
    csms = await Csms().start()
    sim = AsyncSim(csms.url)
    sessions = []
    stuck = []
    dups = []
    try:
        await sim.start()
        await boot_charger(csms, sim)
        await change_config(csms, CP, "MeterValueSampleInterval", sample_s)
        for i in range(n):
            t0 = time.monotonic()
            first_tid = csms.next_tx
            e0 = (await sim.status())["energy_wh"]
            mark = (await sim.events(1 << 60))["next"]
            await sim.plug(32)
            await sim.ev("C", 16)
            await sim.tag("TAG1")
            await asyncio.sleep(rnd.uniform(0, max_charge_s))
            await sim.power(False)
            e1 = (await sim.status())["energy_wh"]
            evs = (await sim.events(mark))["events"]
            closed = any(e["kind"] == "contactor" and e["on"] for e in evs)
            await asyncio.sleep(rnd.uniform(0.05, 1.0))
            await sim.ev("A")
            await sim.unplug()
            t_on = time.monotonic()
            lines_on = len(sim.lines)
            await sim.power(True)
            try:
                await csms.wait_call(CP, "BootNotification", since_t=t_on, timeout=30)
            except TimeoutError:  # a charger that does not come back: what it printed is the evidence
                log("  session %d: no BootNotification 30 s after power on:\n    %s"
                    % (i, "\n    ".join(sim.lines[-60:])))
                raise
            # the queue drains after the boot: wait until every transaction begun so far is closed
            # only this session's transactions: one left open earlier is counted, not waited for again
            deadline = time.monotonic() + 20
            while any(t["stops"] == 0 for tid, t in csms.tx.items() if tid >= first_tid) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            try:
                await _queue_sent(csms, sim, t_on, lines_on)
                await csms.wait_call(CP, "StatusNotification", since_t=t_on, timeout=20,
                                     where=lambda p: p.get("connectorId") == 1 and p.get("status") == "Available")
            except TimeoutError:
                stuck.append({"session": i, "tail": sim.lines[-12:]})
                log("  session %d stuck:\n    %s" % (i, "\n    ".join(stuck[-1]["tail"])))
            sessions.append({"t0": t0, "t1": time.monotonic(), "closed": closed, "meter_wh": e1 - e0,
                             "booked": csms.next_tx - first_tid})
            if csms.next_tx - first_tid > 1:  # a duplicated start: what the Central System booked, and the log
                dup = {"session": i, "booked": {tid: csms.tx[tid]["start"] for tid in range(first_tid, csms.next_tx)
                                                if tid in csms.tx}, "tail": sim.lines[-40:]}
                dups.append(dup)
                log("  session %d booked %d transactions: %s\n    %s" % (i, csms.next_tx - first_tid, dup["booked"],
                                                                    "\n    ".join(dup["tail"])))
            if (i + 1) % 10 == 0:
                log("  power cuts %d/%d (%.0f s for the last)" % (i + 1, n, time.monotonic() - t0))
        await asyncio.sleep(1)
        checks = tx_checks(csms, [s["booked"] for s in sessions])
        lost = 0
        gaps = []
        # when each booked start was sent (a resend is the same payload object again), indexed once: scanning
        # every frame for each session and transaction held the event loop, which the other boards' Central
        # Systems share, for a minute at 250 sessions, and a board booting meanwhile timed out
        sent_at = {}
        for ft, f in csms.calls_in(CP, "StartTransaction"):
            sent_at.setdefault(id(f[3]), []).append(ft)
        for s in sessions:
            txs = [t for t in csms.tx.values()
                   if any(s["t0"] <= ft <= s["t1"] for ft in sent_at.get(id(t["start"]), ()))]
            if s["closed"] and not txs:
                lost += 1
            billed_wh = sum(t["stop"]["meterStop"] - t["start"]["meterStart"] for t in txs if t["stop"])
            gaps.append(s["meter_wh"] - billed_wh)
        res = dict(checks, sessions=len(sessions), charged=sum(s["closed"] for s in sessions), lost=lost,
                   gap_total_wh=sum(gaps), gap_mean_wh=sum(gaps) / len(gaps), gap_max_wh=max(gaps),
                   gap_min_wh=min(gaps), meter_total_wh=sum(s["meter_wh"] for s in sessions),
                   stop_reasons=_count(t["stop"].get("reason") for t in csms.tx.values() if t["stop"]),
                   crashes=sim.crash_summary(True), stuck=stuck, dup_sessions=dups)
        return res
    finally:
        await sim.close()
        await csms.stop()


async def _queue_sent(csms, sim, t_on, lines_on, timeout=20):
    """After a cut's boot: a transaction the boot closed (PowerLoss) has its Stop sent, behind its Start if the cut
    fell before that went out, or dropped by the queue (a record whose Start was never queued). Available goes
    out before them: a session that ended on it alone left a late Start to be booked in the next session, seen
    as one session booking two transactions (full run of 2026-12-07 03:24)."""
    await sim.wait_line(r"BootNotification Accepted", timeout, since=lines_on)  # the boot's own lines are in
    if not any("closing transaction" in line for line in sim.lines[lines_on:]):
        return
    await until(lambda: csms.calls_in(CP, "StopTransaction", t_on)
                or any("dropping StopTransaction" in line for line in sim.lines[lines_on:]),
                timeout, 0.05, "the Stop of the transaction the boot closed")


async def power_cuts_parallel(n=500, jobs=4, seed=1, log=print):
    """power_cuts on `jobs` boards at once, each with its own Central System and flash, n sessions in all (seeds
    seed, seed + 1000, ...): the same sessions as one board would run, in a fraction of the time. A job that fails
    to run is counted (jobs_failed, a must-be-zero figure), the others still report."""
    jobs = max(1, min(jobs, n))
    sizes = [n // jobs + (1 if j < n % jobs else 0) for j in range(jobs)]

    def job_log(j):
        return lambda text: log(("[board %d] " % (j + 1) + text) if jobs > 1 else text)

    got = await asyncio.gather(*(power_cuts(k, seed + 1000 * j, log=job_log(j)) for j, k in enumerate(sizes)),
                               return_exceptions=True)
    errors = ["board %d: %s: %s" % (j + 1, type(r).__name__, str(r)[:300]) for j, r in enumerate(got)
              if isinstance(r, BaseException)]
    res = merge_cuts([r for r in got if not isinstance(r, BaseException)])
    res.update(jobs=jobs, jobs_failed=len(errors), job_errors=errors, planned=n)
    for e in errors:
        log("  " + e)
    return res


def merge_cuts(parts):
    """One power_cuts result from several boards' results."""
    out = {}
    for key in ("transactions", "dup_start", "resent", "unclosed", "dup_stop", "dup_meter_values", "out_of_order",
                "sessions", "charged", "lost", "gap_total_wh", "meter_total_wh"):
        out[key] = sum(r[key] for r in parts)
    out["gap_mean_wh"] = out["gap_total_wh"] / out["sessions"] if out["sessions"] else 0.0
    out["gap_max_wh"] = max((r["gap_max_wh"] for r in parts), default=0.0)
    out["gap_min_wh"] = min((r["gap_min_wh"] for r in parts), default=0.0)
    for key in ("stop_reasons", "crashes"):
        merged = {}
        for r in parts:
            for k, v in r[key].items():
                merged[k] = merged.get(k, 0) + v
        out[key] = merged
    out["stuck"] = [s for r in parts for s in r["stuck"]]
    out["dup_sessions"] = [s for r in parts for s in r.get("dup_sessions", [])]
    return out


def _count(items):
    out = {}
    for x in items:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


# ---------------------------------------------------------------------------------------------------------------
# Central System outages

async def outages(n=10, seed=2, log=print):
    """n charge sessions; in each the Central System goes down once or twice for 1-8 s at random moments, and
    sometimes the car leaves while it is down (the StopTransaction then waits in the queue)."""
    rnd = random.Random(seed)
    csms = await Csms().start()
    sim = AsyncSim(csms.url)
    downs = 0
    try:
        await sim.start()
        await boot_charger(csms, sim)
        for key, value in (("MeterValueSampleInterval", 4), ("ReconnectBackoffMin", 1), ("ReconnectBackoffMax", 4)):
            await change_config(csms, CP, key, value)
        booked = []
        for i in range(n):
            first_tid = csms.next_tx
            await start_charging(csms, sim)
            for _ in range(rnd.choice((1, 2))):
                await asyncio.sleep(rnd.uniform(0.5, 6))
                await csms.stop()
                downs += 1
                down_s = rnd.uniform(1, 8)
                leave = rnd.random() < 0.4
                if leave:
                    await asyncio.sleep(down_s / 2)
                    await sim.ev("B")
                    await sim.unplug()
                    await asyncio.sleep(down_s / 2)
                else:
                    await asyncio.sleep(down_s)
                await csms.start()
                await csms.wait_connected(CP, 60)
                if leave:
                    break
            if (await sim.status())["plugged"]:
                await sim.ev("B")
                await sim.unplug()
            deadline = time.monotonic() + 60
            while any(t["stops"] == 0 for t in csms.tx.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            booked.append(csms.next_tx - first_tid)
            log("  outage session %d/%d" % (i + 1, n))
        res = tx_checks(csms, booked)
        res.update(outages=downs, sessions=n, meter_values=sum(len(t["meter"]) for t in csms.tx.values()),
                   crashes=sim.crash_summary())
        return res
    finally:
        await sim.close()
        await csms.stop()


# ---------------------------------------------------------------------------------------------------------------
# Meter glitches

GLITCH_KINDS = ("transient", "up", "down", "cut", "idle")
GLITCH_TOL_WH = 2       # the SDM630's float32 kWh register and the firmware's rounding to whole Wh
GLITCH_STUCK_S = 25     # "sane" -> no longer Faulted: the firmware re-anchors after 10 readings, reports after 5 s


def _glitch_size(rnd):
    """A register shift far beyond what a charge could add between two polls (the firmware's bound is some
    30 Wh a second), from a few hundred Wh to 100 kWh."""
    return round(10 ** rnd.uniform(2.7, 5.0))


async def glitches(n=40, seed=5, log=print):
    """n scenarios of meter-register shifts (tools/sim.py "meter" command), the kinds in shuffled rounds:
    transient (a shift up or down for 0.3-4 s, then back, while charging), up / down (a permanent shift while
    charging), cut (a power cut while charging, the register shifted or not while the MCU is off) and idle (a shift
    with no session, half of them across a power cut). The sim's energy minus its shifts is the energy that really
    flowed; every energy value of every transaction message the Central System received is checked against it,
    and after each scenario the charger must leave Faulted once the register is sane again."""
    rnd = random.Random(seed)
    csms = await Csms().start()
    sim = AsyncSim(csms.url)
    track = []      # (monotonic t, register Wh, energy that really flowed Wh)
    shifts = {k: 0 for k in GLITCH_KINDS}
    stuck, recoveries = [], []
    state = {"stop": False}

    async def watch():
        while not state["stop"]:
            st = await sim.status()
            track.append((time.monotonic(), st["energy_wh"], st["energy_wh"] - st["meter_shift_wh"]))
            await asyncio.sleep(0.1)

    async def shift(kind):
        reg = (await sim.status())["energy_wh"]
        size = _glitch_size(rnd)
        sign = -1 if (kind == "down" or (kind != "up" and rnd.random() < 0.5)) and reg - size > 10000 else 1
        await sim.shift_meter(sign * size)
        shifts[kind] += 1
        return sign * size

    def status1():
        hits = [(t, f[3]) for t, f in csms.calls_in(CP, "StatusNotification") if f[3].get("connectorId") == 1]
        return hits[-1] if hits else (0.0, {})

    async def settle(sane_t, at_least_s):
        """Waits until the register has been sane for at_least_s and the connector is not Faulted."""
        while True:
            now = time.monotonic()
            t, last = status1()
            if now - sane_t >= at_least_s and last.get("status") != "Faulted":
                faulted = [tt for tt, f in csms.calls_in(CP, "StatusNotification", since_t=sane_t - 6)
                           if f[3].get("connectorId") == 1 and f[3].get("status") == "Faulted"]
                if faulted:
                    recoveries.append(max(t - sane_t, 0.0))
                return True
            if now - sane_t > GLITCH_STUCK_S:
                stuck.append({"t": now, "status": last, "tail": sim.lines[-8:]})
                log("  stuck Faulted %.0f s after the meter was sane: %s" % (now - sane_t, last.get("info")))
                return False
            await asyncio.sleep(0.1)

    async def end_session(first_tid):
        await sim.ev("A")
        await sim.unplug()
        deadline = time.monotonic() + 30
        while any(t["stops"] == 0 for tid, t in csms.tx.items() if tid >= first_tid) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    watcher = None
    try:
        await sim.start()
        await boot_charger(csms, sim)
        await change_config(csms, CP, "MeterValueSampleInterval", 4)
        await change_config(csms, CP, "StopTxnSampledData", "Energy.Active.Import.Register")
        watcher = asyncio.create_task(watch())
        kinds = []
        for i in range(n):
            if not kinds:
                kinds = list(GLITCH_KINDS)
                rnd.shuffle(kinds)
            kind = kinds.pop()
            first_tid = csms.next_tx
            if kind == "idle":
                cut = rnd.random() < 0.5
                if cut:
                    await sim.power(False)
                await shift(kind)
                sane = time.monotonic()
                if cut:
                    await asyncio.sleep(rnd.uniform(0.1, 1.0))
                    await sim.power(True)
                await settle(sane, 13)
                continue
            await start_charging(csms, sim)
            await asyncio.sleep(rnd.uniform(1, 5))
            if kind == "transient":
                size = await shift(kind)
                await asyncio.sleep(rnd.uniform(0.3, 4.0))
                await sim.shift_meter(-size)
                sane = time.monotonic()
                await asyncio.sleep(rnd.uniform(2, 6))
                await end_session(first_tid)
                await settle(sane, 1)
            elif kind in ("up", "down"):
                await shift(kind)
                sane = time.monotonic()
                await settle(sane, 13)   # charging again on the re-anchored register
                await asyncio.sleep(rnd.uniform(2, 6))
                await end_session(first_tid)
            else:
                await sim.power(False)
                if rnd.random() < 0.8:
                    await shift(kind)
                sane = time.monotonic()
                await asyncio.sleep(rnd.uniform(0.1, 1.5))
                await sim.ev("A")
                await sim.unplug()
                await sim.power(True)
                await end_session(first_tid)
                await settle(sane, 13)
            if (i + 1) % 5 == 0:
                log("  meter glitches %d/%d" % (i + 1, n))
        await asyncio.sleep(1)
        state["stop"] = True
        await watcher
        watcher = None
        res = _glitch_checks(csms, track)
        res.update(scenarios=n, shifts=shifts, stuck=stuck, recovery_max_s=max(recoveries, default=0.0),
                   recoveries=len(recoveries), crashes=sim.crash_summary(True),
                   unclosed=sum(1 for t in csms.tx.values() if t["stops"] == 0))
        return res
    finally:
        state["stop"] = True
        if watcher is not None:
            watcher.cancel()
        await sim.close()
        await csms.stop()


def _glitch_checks(csms, track):
    """Every energy value of every transaction message against the energy that really flowed: a value may not be
    below meterStart or an earlier value of its transaction, nor exceed meterStart by more than really flowed from
    2 s before the StartTransaction arrived until the message arrived; meterStart must be the register as it was
    then. Returns counts, the first offenders, and how much real energy was left unbilled (jumps bridged)."""
    def true_at(t, after):
        vals = [x for x in track if (x[0] >= t if after else x[0] <= t)]
        if not vals:
            vals = track[-1:] if after else track[:1]
        return (vals[0] if after else vals[-1])[2]

    def received(payload, action):
        for t, f in csms.calls_in(CP, action):
            if f[3] is payload:
                return t
        return None

    def values(payload):
        return [int(v["value"]) for mv in payload.get("meterValue", []) for v in mv["sampledValue"]
                if v.get("measurand", "Energy.Active.Import.Register") == "Energy.Active.Import.Register"]

    checked = bad = 0
    offenders = []
    unbilled = []
    delivered_total = 0.0
    for tid, tx in sorted(csms.tx.items()):
        start = tx["start"]
        t0 = received(start, "StartTransaction")
        base = true_at(t0 - 2.0, after=False)
        m0 = start["meterStart"]
        regs = [x[1] for x in track if t0 - 3.0 <= x[0] <= t0 + 0.2]
        checked += 1
        if regs and not min(regs) - GLITCH_TOL_WH <= m0 <= max(regs) + GLITCH_TOL_WH:
            bad += 1
            offenders.append("tx %d meterStart %d, register %d..%d" % (tid, m0, min(regs), max(regs)))
        # Two chains, each in order: the MeterValues then meterStop, and the transactionData history.
        chains = [[(received(p, "MeterValues"), values(p), "MeterValues") for p in tx["meter"]], []]
        if tx["stop"]:
            stop = tx["stop"]
            t = received(stop, "StopTransaction")
            chains[0].append((t, [stop["meterStop"]], "meterStop"))
            chains[1].append((t, [v for mv in stop.get("transactionData", []) for v in values({"meterValue": [mv]})],
                              "transactionData"))
        for msgs in chains:
            last = m0
            for t, vals, action in msgs:
                flowed = true_at(t, after=True) - base
                for v in vals:
                    checked += 1
                    if v < last or v - m0 > flowed + GLITCH_TOL_WH:
                        bad += 1
                        if len(offenders) < 10:
                            offenders.append("tx %d %s %d: %+d Wh over meterStart, %.0f Wh really flowed" % (
                                tid, action, v, v - m0, flowed))
                    last = max(last, v)
        if tx["stop"]:
            flowed = true_at(received(tx["stop"], "StopTransaction"), after=True) - true_at(t0 - 2.0, after=False)
            delivered_total += flowed
            unbilled.append(flowed - (tx["stop"]["meterStop"] - m0))
    return {"transactions": len(csms.tx), "values_checked": checked, "implausible": bad, "offenders": offenders,
            "unbilled_total_wh": sum(unbilled), "unbilled_max_wh": max(unbilled, default=0.0),
            "delivered_wh": delivered_total}


# ---------------------------------------------------------------------------------------------------------------
# Bad input

SENTINEL = json.dumps([2, "%s", "GetLocalListVersion", {}])


async def fuzz(frames=10000, seed=3, batch=8, save_dir=None, log=print):
    """Sends generated bad frames in batches, each followed by a good CALL (the sentinel): the charger answers in
    order, so what arrives before the sentinel's answer belongs to the batch. A batch whose answer count is off
    is sent again one frame at a time. The EV waits in state C with nobody authorised: any contactor close is a
    violation."""
    fz = fuzzframes.Fuzzer(seed)
    csms = await Csms().start()
    csms.keep_frames = False
    sim = AsyncSim(csms.url)
    mismatches, by_kind, failures = {}, {}, []
    drops = sent = 0
    sentinel_n = 0
    try:
        await sim.start()
        csms.keep_frames = True
        await boot_charger(csms, sim)
        csms.keep_frames = False
        for key, value in (("AuthorizeRemoteTxRequests", "true"), ("ReconnectBackoffMin", 1),
                           ("ReconnectBackoffMax", 2)):
            await change_config(csms, CP, key, value)
        csms.tag_status = "Invalid"
        await sim.plug(32)
        await sim.ev("C", 16)
        mark = (await sim.events(1 << 60))["next"]

        async def run(cases):
            """answers per case (None for all when the link dropped)."""
            nonlocal sentinel_n
            conn = await csms.wait_connected(CP, 60)
            start = len(conn.strays)
            sentinel_n += 1
            uid = "sentinel-%d" % sentinel_n
            try:
                for c in cases:
                    await csms.send_raw(CP, c["text"])
                await csms.send_wait(CP, SENTINEL % uid, timeout=20, uid=uid)
            except (ConnectionError, CallTimeout, websockets.ConnectionClosed):
                await asyncio.sleep(0.3)
                return None
            return conn.strays[start:]

        cases = list(fz.cases(frames))
        i = 0
        while i < len(cases):
            chunk = cases[i:i + batch]
            i += len(chunk)
            got = await run(chunk)
            expected = sum(1 for c in chunk if c["expect"][0] in ("error", "answer", "roomy"))
            if got is not None and len(got) == expected and not any(c["expect"][0] == "close" for c in chunk):
                it = iter(got)
                results = [(c, [next(it)] if c["expect"][0] in ("error", "answer", "roomy") else [], False) for c in chunk]
            else:
                results = []
                for c in chunk:
                    one = await run([c])
                    results.append((c, one or [], one is None))
            for c, answers, closed in results:
                sent += 1
                by_kind[c["kind"]] = by_kind.get(c["kind"], 0) + 1
                drops += closed and c["expect"][0] != "close"
                why = fuzzframes.judge(c, answers, closed)
                if why:
                    key = "%s: %s" % (c["kind"], why.split(":")[0])
                    mismatches[key] = mismatches.get(key, 0) + 1
                    if len(failures) < 200:
                        failures.append(dict(c, why=why, answers=answers[:1]))
            if i % 1000 < batch:
                log("  fuzz %d/%d frames, %d mismatches" % (i, len(cases), sum(mismatches.values())))
        evs = (await sim.events(mark))["events"]
        unauthorised = sum(1 for e in evs if e["kind"] == "contactor" and e["on"])
        alive = True
        try:
            await csms.wait_connected(CP, 30)
            f, _ = await csms.call(CP, "GetLocalListVersion", {}, 20)
            alive = f[0] == 3
        except Exception:  # noqa: BLE001 - any failure here means the charger stopped answering
            alive = False
        if save_dir and failures:
            _save_failures(save_dir, failures, seed)
        return {"frames": sent, "by_kind": by_kind, "mismatches": mismatches,
                "mismatch_total": sum(mismatches.values()), "unexpected_drops": drops,
                "unauthorised_closes": unauthorised, "alive_after": alive, "crashes": sim.crash_summary(True),
                "errors": sim.crash_summary(),
                "mcu_restarts": sum(1 for l in sim.lines if "[sim] MCU" in l), "failures": failures}
    finally:
        await sim.close()
        await csms.stop()


def _save_failures(save_dir, failures, seed):
    """One file per (kind, reason), the first input that showed it: small, reviewable regression data."""
    os.makedirs(save_dir, exist_ok=True)
    done = set()
    for f in failures:
        key = (f["kind"], f["why"].split(":")[0].split(" where")[0])
        if key in done:
            continue
        done.add(key)
        name = "%s-%s.json" % (f["kind"], "".join(ch if ch.isalnum() else "_" for ch in key[1])[:40])
        text = f["text"] if len(f["text"]) <= 4096 else None
        case = {"kind": f["kind"], "expect": list(f["expect"]), "seed": seed, "seen": f["why"][:200],
                "text": text, "text_gen": None if text else _describe(f["text"])}
        with open(os.path.join(save_dir, name), "w") as out:
            json.dump(case, out, indent=1)


def _describe(text):
    """A long input as a recipe, so the regression file stays small: a repeated character run is folded."""
    best = max(((ch, len(text) - len(text.replace(ch * 64, ""))) for ch in set(text)), key=lambda x: x[1])
    ch = best[0]
    start = text.find(ch * 64)
    end = start
    while end < len(text) and text[end] == ch:
        end += 1
    return {"prefix": text[:start], "repeat": ch, "count": end - start, "suffix": text[end:]}


# ---------------------------------------------------------------------------------------------------------------
# Soak

SOAK_CALLS = (
    lambda i: ("TriggerMessage", {"requestedMessage": "Heartbeat"}),
    lambda i: ("GetConfiguration", {"key": ["HeartbeatInterval", "MeterValueSampleInterval", "LightIntensity"]}),
    lambda i: ("SendLocalList", local_list(i + 1, 8 * (i % 2))),
    lambda i: ("SetChargingProfile", profile(1 + i % 4, "TxDefaultProfile", 3, 0)),
    lambda i: ("GetLocalListVersion", {}),
    lambda i: ("DataTransfer", {"vendorId": "soak", "data": "z" * (i % 200)}),
    lambda i: ("GetCompositeSchedule", {"connectorId": 1, "duration": 3600}),
    lambda i: ("ChangeConfiguration", {"key": "LightIntensity", "value": str(50 + i % 50)}),
    lambda i: ("GetConfiguration", {}),
)


async def soak(exchanges=10000, workers=2, log=print):
    """exchanges message exchanges (CALLs either way) on a charger that also runs charge sessions; live heap
    after GC (probe) at the start, once every call type has been loaded, and at the end."""
    csms = await Csms().start()
    csms.keep_frames = False
    sim = AsyncSim(csms.url, env=probe_env(gc_each=True, period_ms=500, report_ms=500))
    errors = {}
    done = [0]
    try:
        await sim.start()
        csms.keep_frames = True
        await boot_charger(csms, sim)
        csms.keep_frames = False
        await change_config(csms, CP, "MeterValueSampleInterval", 5)
        for j, make in enumerate(SOAK_CALLS):   # warm-up: lazy profiles load, every handler runs once
            await csms.call(CP, *make(j))
        await asyncio.sleep(1.5)
        t_start = time.monotonic()
        live0 = (await sim.wait_probe(t_start))["live"]
        in0 = sum(csms.incoming.values())

        def total():
            return done[0] + sum(csms.incoming.values()) - in0

        async def worker(w):
            i = w
            while total() < exchanges:
                action, payload = SOAK_CALLS[i % len(SOAK_CALLS)](i)
                i += workers
                try:
                    frame, _ = await csms.call(CP, action, payload, timeout=30)
                    if frame[0] != 3:
                        key = "CALLERROR %s (%s)" % (frame[2], action)
                        errors[key] = errors.get(key, 0) + 1
                except (CallTimeout, ConnectionError, websockets.ConnectionClosed) as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    await asyncio.sleep(0.5)
                done[0] += 1

        async def sessions():
            while total() < exchanges:
                try:
                    await start_charging(csms, sim)
                    await asyncio.sleep(12)
                    await sim.ev("B")
                    await sim.unplug()
                    await asyncio.sleep(1)
                except (TimeoutError, asyncio.TimeoutError) as e:
                    errors["session " + type(e).__name__] = errors.get("session " + type(e).__name__, 0) + 1
                    await sim.unplug()
                    await asyncio.sleep(1)

        async def progress():
            step = max(exchanges // 5, 1)
            nxt = step
            while total() < exchanges:
                await asyncio.sleep(1)
                if total() >= nxt:
                    log("  soak %d/%d exchanges" % (total(), exchanges))
                    nxt += step

        await asyncio.gather(*(worker(w) for w in range(workers)), sessions(), progress())
        if (await sim.status())["plugged"]:
            await sim.ev("B")
            await sim.unplug()
        await asyncio.sleep(2)
        t_end = time.monotonic()
        live1 = (await sim.wait_probe(t_end))["live"]
        probes = sim.probes(t_start)
        return {"exchanges": total(), "cs_calls": done[0], "cp_calls": sum(csms.incoming.values()) - in0,
                "seconds": t_end - t_start, "live_start": live0, "live_end": live1, "growth": live1 - live0,
                "live_max": max(p["live"] for p in probes), "errors": errors, "crashes": sim.crash_summary(True),
                "fw_errors": sim.crash_summary(),
                "tx": tx_checks(csms)}
    finally:
        await sim.close()
        await csms.stop()


# ---------------------------------------------------------------------------------------------------------------
# Damaged flash

FLASH_MODES = ("half", "garbage", "zero", "deleted")
# (state file, moments at which it is damaged). during: a transaction started online is cut while charging with
# the Central System down (MeterValues queued); after: a transaction started and stopped offline (Start, values
# and Stop queued) is cut; idle: no transaction (the file's own setting is checked).
FLASH_FILES = (("tx.rec", ("during",)), ("txids.json", ("during", "after")), ("txqueue.jnl", ("during", "after")),
               ("config.json", ("during", "after")), ("profiles.json", ("during", "after")),
               ("authlist.json", ("during", "after")), ("authcache.json", ("during", "after")),
               ("availability.json", ("idle",)), ("reservation.json", ("idle",)))
# The short version (make test): one run per mode, on the files bugs 6-9 of issue 9 were about, and the
# transaction's append-only record (issue 14).
FLASH_QUICK = (("txids.json", "garbage", "during"), ("txqueue.jnl", "half", "after"),
               ("config.json", "zero", "during"), ("reservation.json", "deleted", "idle"),
               ("tx.rec", "half", "during"))
FLASH_PASSWORD = ("factory-pw-0001", "rotated-key-0001")
FLASH_KEYS = {"ConnectionTimeOut": "77", "LightIntensity": "42", "MeterValueSampleInterval": "3"}


def flash_runs(quick=False):
    """(file, mode, moment) of every run: each file and its copy (NAME.bak, damaged at one moment) in each mode."""
    if quick:
        return list(FLASH_QUICK)
    runs = []
    for name, moments in FLASH_FILES:
        for mode in FLASH_MODES:
            runs += [(name, mode, m) for m in moments]
            runs.append((name + ".bak", mode, moments[0]))
    return runs


def corrupt_file(path, mode):
    """Damages a file the way the flash campaign does; False when there was no such file."""
    if not os.path.exists(path):
        return False
    if mode == "deleted":
        os.remove(path)
        return True
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if mode == "half":
            f.truncate(size // 2)
        elif mode == "garbage":
            f.write(bytes((i * 151 + 7) & 0xFF for i in range(size)))
        else:
            f.truncate(0)
    return True


def _iso_in(seconds):
    t = time.time() + seconds
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


async def _flash_setup(csms, sim):
    """Settings that must survive: config keys, a rotated AuthorizationKey, a 10 A ChargePointMaxProfile, a local
    list; TAG1 cached; provision.json removed, so the URL and the key live in config.json alone."""
    await boot_charger(csms, sim)
    for key, value in dict(FLASH_KEYS, ReconnectBackoffMin=1, ReconnectBackoffMax=4).items():
        await change_config(csms, CP, key, value)
    prof = {"chargingProfileId": 5, "stackLevel": 0, "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "chargingRateUnit": "A", "startSchedule": _iso_in(-60),
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}]}}
    for action, payload in (("SetChargingProfile", {"connectorId": 0, "csChargingProfiles": prof}),
                            ("SendLocalList", {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
                                {"idTag": "LISTED1", "idTagInfo": {"status": "Accepted"}}]}),
                            ("ChangeAvailability", {"connectorId": 0, "type": "Operative"})):
        frame, _ = await csms.call(CP, action, payload)
        assert frame[0] == 3 and frame[2].get("status") == "Accepted", (action, frame)
    mark = len(sim.lines)
    csms.password = FLASH_PASSWORD[1]
    frame, _ = await csms.call(CP, "ChangeConfiguration", {"key": "AuthorizationKey", "value": FLASH_PASSWORD[1]})
    assert frame[2] == {"status": "Accepted"}, frame
    await sim.wait_line(r"\[mcu\].*connected to", timeout=30, since=mark)  # again, with the new key
    await csms.wait_connected(CP, 30)
    t = time.monotonic()
    mark = len(sim.lines)
    await sim.tag("TAG1")  # Authorize: TAG1 is cached
    await csms.wait_call(CP, "Authorize", since_t=t)
    await sim.wait_line(r"\[mcu\].*tag TAG1 authorised", timeout=10, since=mark)
    await sim.tag("TAG1")  # a second swipe cancels the start that waits for an EV
    await sim.wait_line(r"\[mcu\].*Preparing -> Available", timeout=10, since=mark)
    os.remove(os.path.join(sim.state_dir, "provision.json"))


async def _settings_kept(csms):
    """The settings of _flash_setup that did not come back as they were (names)."""
    lost = []
    frame, _ = await csms.call(CP, "GetConfiguration", {"key": sorted(FLASH_KEYS)})
    got = {k["key"]: k.get("value") for k in frame[2].get("configurationKey", [])}
    lost += [k for k, v in FLASH_KEYS.items() if got.get(k) != v]
    frame, _ = await csms.call(CP, "GetLocalListVersion", {})
    if frame[2].get("listVersion") != 1:
        lost.append("local list")
    frame, _ = await csms.call(CP, "GetCompositeSchedule", {"connectorId": 0, "duration": 60})
    periods = frame[2].get("chargingSchedule", {}).get("chargingSchedulePeriod", [])
    if [float(p["limit"]) for p in periods] != [10.0]:
        lost.append("ChargePointMaxProfile")
    return lost


async def _status_after(csms, since_t, status, timeout=20):
    try:
        await csms.wait_call(CP, "StatusNotification", since_t=since_t, timeout=timeout,
                             where=lambda p: p.get("connectorId") == 1 and p.get("status") == status)
        return True
    except TimeoutError:
        return False


async def _flash_run(csms, sim, target, mode, moment):
    """One run; returns its record (see flash())."""
    rec = {"file": target, "mode": mode, "moment": moment}
    first_tid = csms.next_tx
    t0 = time.monotonic()
    if moment in ("during", "after"):
        if moment == "after":
            await csms.stop()
        await sim.plug(32)
        await sim.ev("C", 16)
        await sim.tag("TAG1")
        await sim.wait_status(lambda s: s["contactor"], what="contactor closed")
        if moment == "during":
            await csms.wait_call(CP, "StartTransaction", since_t=t0)
            await asyncio.sleep(0.5)  # the answer is stored
            await csms.stop()
        await asyncio.sleep(3.5)  # a MeterValue: a reading appended to tx.rec, a record queued
        if moment == "after":
            n = len(sim.lines)
            await sim.unplug()
            await sim.wait_line(r"\[mcu\].*stopped \(EVDisconnected\)", timeout=10, since=n)
    elif target.startswith("availability"):
        frame, _ = await csms.call(CP, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"})
        assert frame[2]["status"] == "Accepted", frame
        await _status_after(csms, t0, "Unavailable")
    else:
        frame, _ = await csms.call(CP, "ReserveNow", {"connectorId": 1, "expiryDate": _iso_in(900), "idTag": "RESV1",
                                                      "reservationId": 77})
        assert frame[2]["status"] == "Accepted", frame
        await _status_after(csms, t0, "Reserved")
    await sim.power(False)
    rec["damaged"] = corrupt_file(os.path.join(sim.state_dir, target), mode)
    if (await sim.status())["plugged"]:
        await sim.ev("A")
        await sim.unplug()
    if csms.server is None:
        await csms.start()
    mark = len(sim.lines)
    t_on = time.monotonic()
    await sim.power(True)
    try:
        await csms.wait_call(CP, "BootNotification", since_t=t_on, timeout=30)
        rec["reconnected"] = True
    except TimeoutError:
        rec["reconnected"] = False
        return rec
    deadline = time.monotonic() + 20
    while any(t["stops"] == 0 for tid, t in csms.tx.items() if tid >= first_tid) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    want = {"availability.json": "Unavailable", "reservation.json": "Reserved"}.get(target.replace(".bak", ""),
                                                                                     "Available")
    rec["status_kept"] = await _status_after(csms, t_on, want)
    rec["lost_settings"] = await _settings_kept(csms)
    if not rec["status_kept"]:
        rec["lost_settings"].append("status %s" % want)
    if moment == "idle":
        if target.startswith("availability"):
            frame, _ = await csms.call(CP, "ChangeAvailability", {"connectorId": 0, "type": "Operative"})
        else:
            frame, _ = await csms.call(CP, "CancelReservation", {"reservationId": 77})
            if frame[2].get("status") != "Accepted":
                rec["lost_settings"].append("reservation")
        await _status_after(csms, time.monotonic() - 1, "Available")
    await asyncio.sleep(0.3)
    pat = re.compile(r"\[mcu\].* store: %s[ :]" % re.escape(target))
    lines = sim.lines[mark:]
    rec["logged"] = any(pat.search(l) for l in lines)
    rec["booked"] = csms.next_tx - first_tid
    rec["stopped"] = sum(1 for tid, t in csms.tx.items() if tid >= first_tid and t["stops"] >= 1)
    # A Stop dropped as unknown is a transaction the Central System never hears closed. A MeterValues of a closed
    # transaction is dropped when the damage took the pop that said it was delivered: no loss, counted apart.
    rec["dropped"] = sum(1 for l in lines if "dropping StopTransaction" in l)
    rec["dropped_mv"] = sum(1 for l in lines if "dropping MeterValues" in l)
    rec["reports"] = sum(1 for t, f in csms.calls_in(CP, "DataTransfer", t_on) if f[3].get("messageId") == "FlashRecovery")
    return rec


async def flash(quick=False, log=print):
    """Every state file (and its copy) damaged in each of the four modes around a power cut during and after a
    transaction, or with its setting in force: transactions booked once and closed, settings, the rotated
    password and the Central System URL kept, every recovery logged."""
    csms = await Csms().start()
    csms.password = FLASH_PASSWORD[0]
    sim = AsyncSim(csms.url, password=FLASH_PASSWORD[0])
    runs = []
    try:
        await sim.start()
        await _flash_setup(csms, sim)
        plan = flash_runs(quick)
        for i, (target, mode, moment) in enumerate(plan):
            t = time.monotonic()
            rec = await _flash_run(csms, sim, target, mode, moment)
            runs.append(rec)
            bad = _flash_faults(rec)
            if bad or (i + 1) % 10 == 0:
                log("  flash %d/%d %s %s %s (%.0f s)%s" % (i + 1, len(plan), target, mode, moment,
                                                         time.monotonic() - t, "  " + ", ".join(bad) if bad else ""))
            if not rec.get("reconnected"):
                log("  charger did not reconnect after %s %s:\n    %s" % (target, mode, "\n    ".join(
                    sim.lines[-15:])))
                break
        await asyncio.sleep(1)
        checks = tx_checks(csms)
        tx_runs = [r for r in runs if r["moment"] != "idle"]
        return dict(checks, runs=len(runs), planned=len(plan), damaged=sum(1 for r in runs if r.get("damaged")),
                    lost=sum(1 for r in tx_runs if r.get("stopped", 0) < 1),
                    dup_runs=sum(1 for r in tx_runs if r.get("booked", 0) > 1),
                    not_reconnected=sum(1 for r in runs if not r.get("reconnected")),
                    settings_lost=sum(1 for r in runs if r.get("lost_settings")),
                    silent=sum(1 for r in runs if r.get("damaged") and not r.get("logged")),
                    dropped=sum(r.get("dropped", 0) for r in runs),
                    dropped_mv=sum(r.get("dropped_mv", 0) for r in runs),
                    reports=sum(r.get("reports", 0) for r in runs), refused=csms.refused,
                    failures=[r for r in runs if _flash_faults(r)][:20], crashes=sim.crash_summary(True))
    finally:
        await sim.close()
        await csms.stop()


def _flash_faults(rec):
    out = []
    if not rec.get("reconnected"):
        out.append("no reconnect")
    if rec["moment"] != "idle" and rec.get("reconnected"):
        if rec.get("stopped", 0) < 1:
            out.append("transaction lost")
        if rec.get("booked", 0) > 1:
            out.append("booked %d times" % rec["booked"])
    if rec.get("lost_settings"):
        out.append("lost " + "/".join(rec["lost_settings"]))
    if rec.get("damaged") and rec.get("reconnected") and not rec.get("logged"):
        out.append("not logged")
    if rec.get("dropped"):
        out.append("%d dropped" % rec["dropped"])
    return out


# ---------------------------------------------------------------------------------------------------------------

def must_be_zero(res):
    """(name, value) of every figure that has to be 0 (or True) for the run to pass."""
    out = []
    c = res.get("cuts")
    if c:
        out += [("power cuts: lost", c["lost"]), ("power cuts: duplicated starts", c["dup_start"]),
                ("power cuts: duplicated stops", c["dup_stop"]), ("power cuts: unclosed", c["unclosed"]),
                ("power cuts: boards that failed to run", c.get("jobs_failed", 0)),
                ("power cuts: sessions not run", c.get("planned", c["sessions"]) - c["sessions"])]
    o = res.get("outages")
    if o:
        out += [("outages: duplicated starts", o["dup_start"]), ("outages: duplicated stops", o["dup_stop"]),
                ("outages: duplicated MeterValues", o["dup_meter_values"]), ("outages: unclosed", o["unclosed"]),
                ("outages: out of order", o["out_of_order"])]
    f = res.get("fuzz")
    if f:
        out += [("fuzz: crashes (Traceback / MCU exit)", sum(f["crashes"].values())),
                ("fuzz: charger stopped answering", 0 if f["alive_after"] else 1),
                ("fuzz: contactor closed unauthorised", f["unauthorised_closes"])]
    s = res.get("soak")
    if s:
        out += [("soak: crashes", sum(s["crashes"].values()))]
    g = res.get("glitch")
    if g:
        out += [("meter glitches: implausible readings in transaction messages", g["implausible"]),
                ("meter glitches: stuck Faulted after the meter was sane", len(g["stuck"])),
                ("meter glitches: unclosed transactions", g["unclosed"]),
                ("meter glitches: crashes", sum(g["crashes"].values()))]
    fl = res.get("flash")
    if fl:
        out += [("flash: lost transactions", fl["lost"]), ("flash: duplicated starts", fl["dup_runs"]),
                ("flash: duplicated stops", fl["dup_stop"]), ("flash: unclosed", fl["unclosed"]),
                ("flash: no reconnect (URL or password lost)", fl["not_reconnected"]),
                ("flash: settings lost", fl["settings_lost"]), ("flash: recoveries not logged", fl["silent"]),
                ("flash: Stops dropped as unknown", fl["dropped"]), ("flash: runs not done", fl["planned"] - fl["runs"]),
                ("flash: crashes", sum(fl["crashes"].values()))]
    return out


def table(res):
    rows = []

    def row(area, name, value, note=""):
        rows.append((area, name, str(value), note))

    c = res.get("cuts")
    if c:
        row("cuts", "sessions cut / with contactor closed", "%d / %d" % (c["sessions"], c["charged"]),
            "on %d board(s) at once, each with its own Central System and flash" % c.get("jobs", 1))
        if c.get("job_errors"):
            row("cuts", "boards that failed to run", len(c["job_errors"]), "must be 0; " + c["job_errors"][0][:80])
        row("cuts", "lost transactions", c["lost"], "must be 0")
        row("cuts", "duplicated starts / stops", "%d / %d" % (c["dup_start"], c["dup_stop"]),
            "must be 0; a session booked twice, or one Stop booked twice")
        row("cuts", "messages resent, recognised by the CS", c["resent"],
            "cut after the CS booked a message, before its answer was stored: sent again, identical")
        row("cuts", "unclosed transactions", c["unclosed"], "must be 0")
        row("cuts", "sessions that did not settle in 20 s", len(c.get("stuck", [])),
            (c["stuck"][0]["tail"][-1][:80] if c.get("stuck") else ""))
        row("cuts", "stop reasons", ", ".join("%s %d" % kv for kv in sorted(c["stop_reasons"].items())))
        row("cuts", "energy gap meter - CS, total", "%.1f Wh" % c["gap_total_wh"],
            "of %.1f Wh metered; per session mean %.2f, max %.2f, min %.2f Wh" % (
                c["meter_total_wh"], c["gap_mean_wh"], c["gap_max_wh"], c["gap_min_wh"]))
    o = res.get("outages")
    if o:
        row("outages", "sessions / outages", "%d / %d" % (o["sessions"], o["outages"]),
            "%d transactions, %d MeterValues" % (o["transactions"], o["meter_values"]))
        row("outages", "dup starts / stops / MeterValues", "%d / %d / %d" % (o["dup_start"], o["dup_stop"],
                                                                          o["dup_meter_values"]), "must be 0")
        row("outages", "messages resent, recognised by the CS", o["resent"],
            "link lost after the CS booked a message, before its answer arrived")
        row("outages", "unclosed / out of order", "%d / %d" % (o["unclosed"], o["out_of_order"]), "must be 0")
    f = res.get("fuzz")
    if f:
        row("fuzz", "frames sent", f["frames"], "%d kinds" % len(f["by_kind"]))
        row("fuzz", "crashes (Traceback, MCU exit)", sum(f["crashes"].values()),
            "must be 0; " + "; ".join(list(f["crashes"])[:1])[:80])
        row("fuzz", "firmware errors caught (MemoryError...)", sum(f["errors"].values()),
            "; ".join(list(f["errors"])[:1])[:80])
        row("fuzz", "charger answers afterwards", "yes" if f["alive_after"] else "NO",
            "unexpected link drops %d, MCU restarts %d" % (f["unexpected_drops"], f["mcu_restarts"]))
        row("fuzz", "contactor closed unauthorised", f["unauthorised_closes"], "must be 0")
        row("fuzz", "answers differing from the table", f["mismatch_total"])
        for k, v in sorted(f["mismatches"].items(), key=lambda kv: -kv[1])[:12]:
            row("fuzz", "  " + k[:60], v)
    s = res.get("soak")
    if s:
        row("soak", "exchanges (CS->CP / CP->CS)", s["exchanges"], "%d / %d in %.0f s" % (
            s["cs_calls"], s["cp_calls"], s["seconds"]))
        row("soak", "live heap after GC start -> end", "%d -> %d B" % (s["live_start"], s["live_end"]),
            "growth %+d B; max %d B" % (s["growth"], s["live_max"]))
        row("soak", "call failures", sum(s["errors"].values()),
            "; ".join("%s %d" % kv for kv in s["errors"].items())[:90])
        row("soak", "crashes (Traceback, MCU exit)", sum(s["crashes"].values()), "must be 0; " + "; ".join(list(s["crashes"])[:1])[:80])
        row("soak", "firmware errors caught", sum(s["fw_errors"].values()), "; ".join(list(s["fw_errors"])[:1])[:80])
    g = res.get("glitch")
    if g:
        row("glitch", "scenarios / register shifts", "%d / %d" % (g["scenarios"], sum(g["shifts"].values())),
            ", ".join("%s %d" % kv for kv in g["shifts"].items()) + " (cut: while the MCU was off)")
        row("glitch", "transactions / energy values checked", "%d / %d" % (g["transactions"], g["values_checked"]),
            "meterStart, MeterValues, transactionData, meterStop against the energy that really flowed")
        row("glitch", "implausible readings billed", g["implausible"],
            "must be 0; " + "; ".join(g["offenders"][:1])[:80])
        row("glitch", "stuck Faulted after the meter was sane", len(g["stuck"]),
            "must be 0; %d recoveries, slowest %.1f s" % (g["recoveries"], g["recovery_max_s"]))
        row("glitch", "unclosed transactions", g["unclosed"], "must be 0")
        row("glitch", "real energy not billed", "%.1f Wh" % g["unbilled_total_wh"],
            "of %.1f Wh delivered; max %.1f Wh in one: flowed while a jump was bridged, or since the last "
            "stored reading before a cut" % (g["delivered_wh"], g["unbilled_max_wh"]))
        row("glitch", "crashes (Traceback, MCU exit)", sum(g["crashes"].values()),
            "must be 0; " + "; ".join(list(g["crashes"])[:1])[:80])
    fl = res.get("flash")
    if fl:
        row("flash", "runs (file x mode x moment) / file damaged", "%d / %d" % (fl["runs"], fl["damaged"]),
            "%d files and their copies, half/garbage/zero/deleted, during/after a transaction" % len(FLASH_FILES))
        row("flash", "lost transactions / duplicated starts", "%d / %d" % (fl["lost"], fl["dup_runs"]), "must be 0")
        row("flash", "duplicated stops / unclosed", "%d / %d" % (fl["dup_stop"], fl["unclosed"]), "must be 0")
        row("flash", "messages resent, recognised by the CS", fl["resent"])
        row("flash", "no reconnect (URL or rotated password lost)", fl["not_reconnected"],
            "must be 0; %d connections refused with 401" % fl["refused"])
        row("flash", "settings lost (silent resets)", fl["settings_lost"],
            "must be 0; keys, local list, 10 A limit, availability, reservation")
        row("flash", "recoveries not logged", fl["silent"], "must be 0; a log line names the file")
        row("flash", "Stops dropped as unknown", fl["dropped"], "must be 0")
        row("flash", "delivered MeterValues back, dropped", fl.get("dropped_mv", 0),
            "the damage took the pops of a closed transaction's values: sent before, not again")
        row("flash", "FlashRecovery reports to the CS", fl["reports"], "DataTransfer")
        for f in fl["failures"][:6]:
            row("flash", "  %s %s %s" % (f["file"], f["mode"], f["moment"]), ", ".join(_flash_faults(f))[:40])
    for name, v in res.items():
        if name.endswith("_error"):
            row(name[:-6], "FAILED TO RUN", "-", v[:100])
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    out = ["%-*s  %-*s  %*s  %s" % (w[0], "area", w[1], "figure", w[2], "value", "notes"), "-" * (sum(w) + 40)]
    out += ["%-*s  %-*s  %*s  %s" % (w[0], a, w[1], b, w[2], c_, d) for a, b, c_, d in rows]
    return "\n".join(out)


async def run_all(args, log):
    only = set(args.only.split(",")) if args.only else {"cuts", "outages", "fuzz", "soak", "glitch", "flash"}
    res = {}
    build.build(BUILD_UNIX)
    steps = (("cuts", lambda: power_cuts_parallel(args.cuts, args.jobs, args.seed, log=log)),
             ("outages", lambda: outages(args.outages, args.seed + 1, log=log)),
             ("fuzz", lambda: fuzz(args.frames, args.seed + 2, save_dir=args.save_failures, log=log)),
             ("soak", lambda: soak(args.exchanges, log=log)),
             ("glitch", lambda: glitches(args.glitches, args.seed + 4, log=log)),
             ("flash", lambda: flash(args.quick, log=log)))
    for name, fn in steps:
        if name in only:
            await measure(res, name, fn, log)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the short version (as in make test)")
    p.add_argument("--only", help="comma-separated subset of cuts,outages,fuzz,soak,glitch,flash")
    p.add_argument("--cuts", type=int, default=500, help="power-cut sessions (default 500)")
    p.add_argument("-j", "--jobs", type=int, default=4,
                   help="boards cut at once, each with its own Central System (default 4; 1 = one after the other)")
    p.add_argument("--outages", type=int, default=10)
    p.add_argument("--frames", type=int, default=10000)
    p.add_argument("--exchanges", type=int, default=10000)
    p.add_argument("--glitches", type=int, default=40, help="meter-glitch scenarios")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--save-failures", default=REGRESSIONS, help="where failing fuzz inputs go ('' = nowhere)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.cuts, args.outages, args.frames, args.exchanges, args.glitches = 5, 1, 500, 1000, 5
        args.jobs = 1
    res = run_cancellable("torture", run_all, args, time.monotonic())
    if res is None:
        return 130
    print(table(res))
    bad = [(k, v) for k, v in must_be_zero(res) if v]
    bad += [(k, 1) for k in res if k.endswith("_error")]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    for k, v in bad:
        print("! %s: %s" % (k, v))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
