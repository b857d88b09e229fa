"""A Central System firing CALLs back to back whose answers make the charger send something afterwards.
TriggerMessage(Heartbeat), as `make bench` sends it for its latency figure, used to queue a Heartbeat task per
request; 50 of them exhausted the 110wK heap, the reader died of a MemoryError and the link dropped. A request
for a message already waiting is now answered by that one; availability toggles share one status task."""
import asyncio
import json

from harness.csms import Csms
from harness.sim import AsyncSim
from harness.steps import boot_charger

CP = "CP1"

FLOOD = 200


async def flood(action="TriggerMessage", payload=lambda i: {"requestedMessage": "Heartbeat"}, counted="Heartbeat"):
    csms = await Csms().start()
    sim = AsyncSim(csms.url)
    try:
        await sim.start()
        await boot_charger(csms, sim)
        conn = await csms.wait_connected(CP, 30)
        before = csms.incoming.get(counted, 0)
        answers = []
        for i in range(FLOOD):
            frame, _ = await csms.send_wait(CP, json.dumps([2, "flood-%d" % i, action, payload(i)]),
                                            timeout=10)
            answers.append(frame)
        deadline = asyncio.get_running_loop().time() + 10
        while csms.incoming.get(counted, 0) == before and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        last = [f[3] for _, f in csms.calls_in(CP, counted)][-1:]
        return (answers, csms.incoming.get(counted, 0) - before, csms.conns.get(CP) is conn,
                sim.crashes(), [line for line in sim.lines if "MemoryError" in line or "failed" in line], last)
    finally:
        await sim.close()
        await csms.stop()


def test_trigger_flood_keeps_the_link_and_sends_heartbeats():
    answers, beats, same_link, crashes, bad_lines, _ = asyncio.run(flood())
    assert [a[2] for a in answers] == [{"status": "Accepted"}] * FLOOD
    assert same_link, "the charger reconnected during the flood"
    assert crashes == [] and bad_lines == [], (crashes, bad_lines[:5])
    assert 1 <= beats <= FLOOD  # every request is followed by a Heartbeat, one may answer several


def test_availability_toggled_back_to_back_ends_with_the_last_status():
    # connector 0 follows the charger's availability; its StatusNotification must end on the final state
    answers, sent, same_link, crashes, bad_lines, last = asyncio.run(flood(
        "ChangeAvailability", lambda i: {"connectorId": 0, "type": "Inoperative" if i % 2 == 0 else "Operative"},
        "StatusNotification"))
    assert [a[2] for a in answers] == [{"status": "Accepted"}] * FLOOD
    assert same_link and crashes == [] and bad_lines == [], (crashes, bad_lines[:5])
    assert 1 <= sent <= FLOOD * 2
    assert last and last[0]["status"] == "Available"  # the last toggle (i = FLOOD - 1) made it Operative
