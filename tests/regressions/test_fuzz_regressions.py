"""Replays the bad frames `make torture` once caught (tests/regressions/fuzz/*.json, written by tools/torture.py).

Every case must leave the charger answering (a reconnect is allowed: some cases close the link) and must not
crash the firmware. A case whose answer is already right carries "assert_expect": true and its answer is checked
against the CALLERROR table too; the others document a known wrong answer (see "seen") until the firmware is
fixed, at which point flipping the flag makes the test guard the fix.
"""
import asyncio
import glob
import json
import os

import pytest
import websockets

import fuzzframes
from harness.csms import CallTimeout, Csms
from harness.sim import AsyncSim
from harness.steps import boot_charger, change_config

CP = "CP1"

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz")
CASES = sorted(glob.glob(os.path.join(HERE, "*.json")))


def load(path):
    with open(path) as f:
        case = json.load(f)
    if case.get("text") is None:
        g = case["text_gen"]
        case["text"] = g["prefix"] + g["repeat"] * g["count"] + g["suffix"]
    case["expect"] = tuple(case["expect"])
    return case


async def replay(cases):
    csms = await Csms().start()
    sim = AsyncSim(csms.url)
    out = []
    try:
        await sim.start()
        await boot_charger(csms, sim)
        await change_config(csms, CP, "ReconnectBackoffMin", 1)
        for n, case in enumerate(cases):
            conn = await csms.wait_connected(CP, 60)
            start = len(conn.strays)
            closed = False
            try:
                await csms.send_raw(CP, case["text"])
                uid = "replay-%d" % n
                await csms.send_wait(CP, fuzzframes_sentinel(uid), timeout=20, uid=uid)
            except (ConnectionError, CallTimeout, websockets.ConnectionClosed):
                closed = True
            answers = conn.strays[start:]
            conn = await csms.wait_connected(CP, 60)
            frame, _ = await csms.call(CP, "GetLocalListVersion", {}, 20)
            out.append((case, fuzzframes.judge(case, answers, closed), frame[0] == 3))
        return out, sim.fatal()
    finally:
        await sim.close()
        await csms.stop()


def fuzzframes_sentinel(uid):
    return json.dumps([2, uid, "GetLocalListVersion", {}])


@pytest.mark.skipif(not CASES, reason="no regression inputs kept yet")
def test_kept_fuzz_inputs():
    cases = [load(p) for p in CASES]
    results, fatal = asyncio.run(replay(cases))
    assert fatal == [], fatal
    for case, why, alive in results:
        assert alive, "charger stopped answering after %s" % case["kind"]
        if case.get("assert_expect"):
            assert why is None, "%s: %s" % (case["kind"], why)
