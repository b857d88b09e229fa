"""A Central System firing TriggerMessage(Heartbeat) back to back, as `make bench` does for its latency figure.
Each request used to queue its own Heartbeat task; 50 of them exhausted the 110wK heap, the reader died of a
MemoryError and the link dropped. A request for a message already waiting is now answered by that one."""
import asyncio
import json

import bench

FLOOD = 200


async def flood():
    csms = await bench.Csms().start()
    sim = bench.Sim(csms.url)
    try:
        await sim.start()
        await bench.boot_charger(csms, sim)
        conn = await csms.wait_connected(bench.CP, 30)
        beats_before = csms.incoming.get("Heartbeat", 0)
        answers = []
        for i in range(FLOOD):
            frame, _ = await csms.send_wait(bench.CP, json.dumps(
                [2, "flood-%d" % i, "TriggerMessage", {"requestedMessage": "Heartbeat"}]), timeout=10)
            answers.append(frame)
        deadline = asyncio.get_running_loop().time() + 10
        while csms.incoming.get("Heartbeat", 0) == beats_before and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        return (answers, csms.incoming.get("Heartbeat", 0) - beats_before, csms.conns.get(bench.CP) is conn,
                sim.crashes(), [line for _, line in sim.lines if "MemoryError" in line or "failed" in line])
    finally:
        await sim.stop()
        await csms.stop()


def test_trigger_flood_keeps_the_link_and_sends_heartbeats():
    answers, beats, same_link, crashes, bad_lines = asyncio.run(flood())
    assert [a[2] for a in answers] == [{"status": "Accepted"}] * FLOOD
    assert same_link, "the charger reconnected during the flood"
    assert crashes == [] and bad_lines == [], (crashes, bad_lines[:5])
    assert 1 <= beats <= FLOOD  # every request is followed by a Heartbeat, one may answer several
