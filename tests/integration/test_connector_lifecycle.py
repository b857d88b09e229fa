"""Core behaviours of the charge session found by independent testing (issue 9, items 1, 2, 4, 5 and 19): the
firmware on the virtual board against the demo Central System. tests/mpy/test_connector.py replays the same
cases step by step on a fake board."""
import time

import pytest

from conftest import wait_until
from core_helpers import CP, boot, status_seen, board_until, start_charging, transaction_id, in_calls

_SUSPENDED = ("Charging", "SuspendedEV", "SuspendedEVSE")


def _statuses(csms, since):
    return [p["status"] for p in csms.calls("StatusNotification", cp=CP, since=since) if p["connectorId"] == 1]


@pytest.mark.parametrize("variant", ["cable", "socket"])
def test_tc005_3_car_unplugged_keeps_the_transaction_and_resumes(csms_factory, sim_factory, variant):
    """Item 1: with StopTransactionOnEVSideDisconnect = false, pulling the cable out of the car (for a tethered
    cable that is `unplug`) suspends the transaction with the contactor open; plugging the car in again resumes
    energy in the same transaction without a new tag."""
    csms, sim = boot(csms_factory, sim_factory, config={"StopTransactionOnEVSideDisconnect": "false"},
                     variant=variant)
    start, tid = start_charging(csms, sim)
    status_seen(csms, "Charging")
    mark = len(csms.messages())
    if variant == "cable":
        sim.cmd({"cmd": "unplug"})
    else:
        sim.cmd({"cmd": "ev", "state": "A"})
    status_seen(csms, "SuspendedEV", since=mark)
    board_until(sim, lambda s: not s["contactor"] and s["pilot"] == "A" and s["offered_a"] == 0, msg="no offer")
    energy = sim.status()["energy_wh"]
    assert csms.calls("StopTransaction") == []
    if variant == "cable":
        sim.cmd({"cmd": "plug"})
    else:
        assert sim.status()["locked"]  # the session goes on: the cable stays locked in the socket
        sim.cmd({"cmd": "ev", "state": "B"})
    sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})
    board_until(sim, lambda s: s["contactor"], msg="contactor closed again")
    # a whole Wh at least: the meter's register counts in Wh, and meterStop must show the energy
    board_until(sim, lambda s: s["energy_wh"] > energy + 2, msg="energy flows again")
    status_seen(csms, "Charging", since=mark)
    assert csms.calls("StopTransaction") == [] and len(csms.calls("StartTransaction")) == 1
    assert in_calls(csms, "Authorize", since=mark) == []
    sim.cmd({"cmd": "tag", "id": "TAG1"})
    stop = csms.wait_for("StopTransaction", cp=CP, since=mark)
    assert stop["transactionId"] == tid and stop["reason"] == "Local" and stop["meterStop"] > energy


def test_fixed_cable_unplugged_stops_when_the_key_is_true(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, variant="cable")  # StopTransactionOnEVSideDisconnect: true
    start_charging(csms, sim)
    mark = len(csms.messages())
    sim.cmd({"cmd": "unplug"})
    assert csms.wait_for("StopTransaction", cp=CP, since=mark)["reason"] == "EVDisconnected"
    status_seen(csms, "Available", since=mark)


def test_lock_failure_starts_no_transaction(csms_factory, sim_factory):
    """Item 2: a lock that does not engage means no StartTransaction at all: the authorised start waits for the
    lock, the connector reports Faulted/ConnectorLockFailure, ConnectionTimeOut drops the start, and nothing is
    ever energised."""
    csms, sim = boot(csms_factory, sim_factory, config={"ConnectionTimeOut": 5})
    mark = len(csms.messages())
    since = len(sim.lines)
    sim.cmd({"cmd": "fault", "kind": "lock", "on": True})
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "B", "max_a": 16})
    sim.cmd({"cmd": "tag", "id": "TAG1"})
    csms.wait_for("Authorize", cp=CP, since=mark)
    sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})
    faulted = csms.wait_for("StatusNotification", cp=CP, since=mark, where=lambda p: p["status"] == "Faulted")
    assert faulted["errorCode"] == "ConnectorLockFailure"
    sim.wait_line(r"\[mcu\].*start for TAG1 cancelled: connector not locked", timeout=15, since=since)
    assert csms.calls("StartTransaction") == [] and csms.calls("StopTransaction") == []
    # the lock is released by the EVSE's next step after the start is dropped
    status = board_until(sim, lambda s: not s["lock_cmd"], msg="lock released after the dropped start")
    assert not status["contactor"] and status["offered_a"] == 0
    events = sim.cmd({"cmd": "events", "since": 0})["events"]
    assert not [e for e in events if e["kind"] == "contactor" and e["on"]]
    assert _statuses(csms, mark)[-1] == "Faulted"  # until the cable is taken out
    sim.cmd({"cmd": "unplug"})
    status_seen(csms, "Available", since=mark)
    assert csms.calls("StartTransaction") == []


def test_unplug_while_charging_never_reports_preparing(csms_factory, sim_factory):
    """Item 4: 30 unplugs while charging. The StatusNotifications of each must go Charging -> Available (the
    plug is gone: no Finishing), never through Preparing, with one StopTransaction EVDisconnected each."""
    csms, sim = boot(csms_factory, sim_factory, config={"MeterValueSampleInterval": 1})
    bad = []
    for n in range(30):
        mark = len(csms.messages())
        start_charging(csms, sim)
        status_seen(csms, "Charging", since=mark)
        if n % 2:
            csms.wait_for("MeterValues", cp=CP, since=mark, timeout=15)  # the field saw it after a sample
        sim.cmd({"cmd": "unplug"})
        stop = csms.wait_for("StopTransaction", cp=CP, since=mark)
        assert stop["reason"] == "EVDisconnected", stop
        status_seen(csms, "Available", since=mark)
        seq = _statuses(csms, mark)
        seq = seq[seq.index("Charging"):]
        if any(a in _SUSPENDED and b == "Preparing" for a, b in zip(seq, seq[1:])) or seq[-1] != "Available":
            bad.append((n, seq))
    assert len(csms.calls("StartTransaction")) == 30 and len(csms.calls("StopTransaction")) == 30
    assert bad == []


def test_new_sample_interval_applies_at_once(csms_factory, sim_factory):
    """Item 5: MeterValueSampleInterval 30 -> 5 during a session: the next sample within 5 s of the change, not
    when the old 30 s timer runs out."""
    csms, sim = boot(csms_factory, sim_factory, config={"MeterValueSampleInterval": 30})
    start_charging(csms, sim)
    mark = len(csms.messages())
    t0 = time.monotonic()
    assert csms.call(CP, "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "5"}) == \
        {"status": "Accepted"}
    csms.wait_for("MeterValues", cp=CP, since=mark, timeout=12)
    first = time.monotonic() - t0
    csms.wait_for("MeterValues", cp=CP, since=mark, count=2, timeout=12)
    second = time.monotonic() - t0
    assert first <= 5 + 1.5 and 4 <= second - first <= 6.5, (first, second)


def test_same_card_in_another_case_stops_and_cancels(csms_factory, sim_factory):
    """Item 19: IdToken is a CiString: `tag1` is the card `TAG1`, both to stop its session (no Authorize) and to
    cancel its pending start."""
    csms, sim = boot(csms_factory, sim_factory, config={"ConnectionTimeOut": 60})
    start, tid = start_charging(csms, sim, tag="TAG1")
    mark = len(csms.messages())
    sim.cmd({"cmd": "tag", "id": "tag1"})
    stop = csms.wait_for("StopTransaction", cp=CP, since=mark)
    assert stop["reason"] == "Local" and stop["transactionId"] == tid and stop["idTag"] == "tag1"
    assert in_calls(csms, "Authorize", since=mark) == []
    sim.cmd({"cmd": "unplug"})
    status_seen(csms, "Available", since=mark)
    mark = len(csms.messages())
    sim.cmd({"cmd": "tag", "id": "TAG1"})  # identification first: waits for a plug
    status_seen(csms, "Preparing", since=mark)
    sim.cmd({"cmd": "tag", "id": "tag1"})
    status_seen(csms, "Available", since=mark, timeout=10)
    assert csms.calls("StartTransaction", since=mark) == []
