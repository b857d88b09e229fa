"""Transactions that survive power cuts, outages and a damaged flash (issue 3, reliability). The Central System
must see exactly one StartTransaction and one StopTransaction per session, with the energy the meter measured."""
import glob
import os
import time

import pytest

from conftest import wait_until
from core_helpers import CP, boot, status_seen, board_until, start_charging, in_calls


def _power_cycle(sim):
    sim.cmd({"cmd": "power", "on": False})
    energy = sim.status()["energy_wh"]
    assert not sim.status()["contactor"]  # the relay coil drops with the MCU
    sim.cmd({"cmd": "power", "on": True})
    return energy


def _starts(csms, since=0):
    """StartTransactions as transactions: an identical resend (the answer was lost in a power cut) is the same
    transaction, and the Central System gives it the same id."""
    seen = {}
    for p in csms.calls("StartTransaction", since=since):
        seen.setdefault((p["connectorId"], p["idTag"], p["meterStart"], p["timestamp"]), p)
    return list(seen.values())


def _one_session(csms):
    starts, stops = _starts(csms), csms.calls("StopTransaction")
    assert len(starts) == 1 and len(stops) == 1, (starts, stops)
    return starts[0], stops[0]


def _start_ids(csms):
    msgs = csms.messages(CP)
    ids = {m["msg"][1] for m in msgs if m["dir"] == "in" and m["msg"] and m["msg"][0] == 2
           and m["msg"][2] == "StartTransaction"}
    return [m["msg"][2]["transactionId"] for m in msgs if m["dir"] == "out" and m["msg"] and m["msg"][0] == 3
            and m["msg"][1] in ids]


def _offline_session(csms, sim):
    """Takes the Central System down, then plugs and starts with a tag known only locally."""
    csms.stop()
    sim.wait_line(r"\[mcu\].*(connection lost|disconnected)", timeout=20)
    energy0 = sim.status()["energy_wh"]
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "B", "max_a": 16})
    sim.cmd({"cmd": "tag", "id": "OFFLINE1"})
    sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})
    board_until(sim, lambda s: s["contactor"], msg="offline charging")
    return energy0


@pytest.mark.long
def test_tc032_power_cut_mid_charge_ends_with_power_loss(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"MeterValueSampleInterval": 2})
    start, tid = start_charging(csms, sim)
    csms.wait_for("MeterValues", cp=CP, count=2, timeout=15)
    energy = _power_cycle(sim)
    stop = csms.wait_for("StopTransaction", cp=CP, timeout=30)
    start, stop = _one_session(csms)
    assert stop["reason"] == "PowerLoss" and stop["transactionId"] == tid
    assert abs(stop["meterStop"] - energy) <= 1  # the CS's energy is the meter's
    assert len(csms.calls("BootNotification")) == 2


@pytest.mark.long
def test_power_cut_before_start_is_acknowledged(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"AllowOfflineTxForUnknownId": "true",
                                                        "MeterValueSampleInterval": 2})
    energy0 = _offline_session(csms, sim)
    time.sleep(3)
    energy = _power_cycle(sim)
    csms.start()
    stop = csms.wait_for("StopTransaction", cp=CP, timeout=60)
    start, stop = _one_session(csms)
    assert start["idTag"] == "OFFLINE1" and abs(start["meterStart"] - energy0) <= 1
    assert stop["reason"] == "PowerLoss" and abs(stop["meterStop"] - energy) <= 1
    assert stop["transactionId"] == _start_ids(csms)[0]  # the real id was patched in


@pytest.mark.long
def test_power_cut_while_the_stop_is_queued(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    start_charging(csms, sim)
    csms.stop()
    sim.wait_line(r"\[mcu\].*(connection lost|disconnected)", timeout=20)
    sim.cmd({"cmd": "unplug"})
    sim.wait_line(r"\[mcu\].*stopped \(EVDisconnected\)", timeout=10)
    energy = _power_cycle(sim)
    csms.start()
    csms.wait_for("StopTransaction", cp=CP, timeout=60)
    time.sleep(2)
    start, stop = _one_session(csms)
    assert stop["reason"] == "EVDisconnected" and abs(stop["meterStop"] - energy) <= 1


def test_power_cuts_at_random_points_never_lose_or_duplicate(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"MeterValueSampleInterval": 3})
    for n, delay in enumerate((0.3, 1.0, 2.5)):  # cut while authorising, while starting, and mid-charge
        mark = len(csms.messages())
        sim.cmd({"cmd": "plug", "cable_a": 32})
        sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})
        sim.cmd({"cmd": "tag", "id": "TAG1"})
        time.sleep(delay)
        _power_cycle(sim)
        sim.cmd({"cmd": "unplug"})
        csms.wait_for("BootNotification", cp=CP, count=n + 2, timeout=30)
        status_seen(csms, "Available", since=mark)
        wait_until(lambda: len(_starts(csms, since=mark))
                   == len(csms.calls("StopTransaction", since=mark)), 40, msg="sessions closed")
    starts, stops = _starts(csms), csms.calls("StopTransaction")
    assert len(starts) == len(stops) and len(starts) >= 2
    assert len({s["transactionId"] for s in stops}) == len(stops)  # no duplicate Stop


@pytest.mark.long
def test_tc036_outage_mid_session_delivers_everything_in_order(csms_factory, sim_factory):
    interval_s = 4  # the shortest sample interval honoured as given (1-3 s act as 4 s)
    outage_s = 24
    csms, sim = boot(csms_factory, sim_factory, config={"MeterValueSampleInterval": interval_s})
    start, tid = start_charging(csms, sim)
    csms.stop()
    sim.wait_line(r"\[mcu\].*(connection lost|disconnected)", timeout=20)
    time.sleep(outage_s)  # the outage itself: the car charges on while the Central System is away
    sim.cmd({"cmd": "unplug"})
    energy = sim.status()["energy_wh"]
    mark = len(csms.messages())
    csms.start()
    stop = csms.wait_for("StopTransaction", cp=CP, since=mark, timeout=90)
    queued = [(a, p) for a, p in in_calls(csms, since=mark) if a in ("MeterValues", "StopTransaction")]
    assert queued[-1][0] == "StopTransaction"
    meter_values = [p for a, p in queued if a == "MeterValues"]
    assert len(meter_values) >= outage_s // interval_s  # one every interval during the outage
    stamps = [p["meterValue"][0]["timestamp"] for p in meter_values] + [stop["timestamp"]]
    assert stamps == sorted(stamps)  # chronological, as queued
    energies = [int(v["value"]) for p in meter_values for v in p["meterValue"][0]["sampledValue"]
                if v["measurand"] == "Energy.Active.Import.Register"]
    assert energies == sorted(energies) and all(p["transactionId"] == tid for p in meter_values)
    assert abs(stop["meterStop"] - energy) <= 1
    _one_session(csms)


@pytest.mark.long
def test_corrupted_journal_at_boot_is_recovered(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"AllowOfflineTxForUnknownId": "true",
                                                        "MeterValueSampleInterval": 2})
    _offline_session(csms, sim)
    time.sleep(5)
    sim.cmd({"cmd": "power", "on": False})
    journals = glob.glob(os.path.join(sim.state_dir, "*.jnl"))
    assert journals, os.listdir(sim.state_dir)
    with open(journals[0], "r+b") as f:  # a torn last record plus garbage, as a power cut mid-write leaves
        f.seek(0, 2)
        f.truncate(f.tell() - 7)
        f.seek(0, 2)
        f.write(b"\xff\x00garbage\x13")
    with open(os.path.join(sim.state_dir, "tx.rec"), "ab") as f:
        f.write(b"}}")  # and a damaged transaction file
    sim.cmd({"cmd": "power", "on": True})
    csms.start()
    csms.wait_for("BootNotification", cp=CP, count=2, timeout=60)
    csms.wait_for("StartTransaction", cp=CP, timeout=30)  # the intact head of the queue still goes out
    stop = csms.wait_for("StopTransaction", cp=CP, timeout=30)  # and the session is closed all the same
    assert stop["reason"] == "PowerLoss"
    _one_session(csms)
    assert csms.call(CP, "GetConfiguration", {"key": ["NumberOfConnectors"]})["configurationKey"]
    assert not [line for line in sim.lines if "Traceback" in line]


@pytest.mark.long
def test_tc037_offline_start_rejected_later_stops_with_deauthorized(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"AllowOfflineTxForUnknownId": "true",
                                                        "StopTransactionOnInvalidId": "true"})
    _offline_session(csms, sim)
    csms.start()
    csms.set(start_status="Invalid")
    stop = csms.wait_for("StopTransaction", cp=CP, timeout=60)
    assert stop["reason"] == "DeAuthorized"
    board_until(sim, lambda s: not s["contactor"], msg="contactor open")


def test_tc037_2_offline_start_rejected_later_suspends(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"AllowOfflineTxForUnknownId": "true",
                                                        "StopTransactionOnInvalidId": "false"})
    _offline_session(csms, sim)
    csms.start()
    csms.set(start_status="Invalid")
    status_seen(csms, "SuspendedEVSE", timeout=60)
    board_until(sim, lambda s: not s["contactor"], msg="contactor open")
    assert csms.calls("StopTransaction") == []


def test_watchdog_restart_mid_charge_ends_with_reboot(csms_factory, sim_factory):
    import signal
    csms, sim = boot(csms_factory, sim_factory)
    start, tid = start_charging(csms, sim)
    os.kill(sim.status()["mcu_pid"], signal.SIGKILL)  # the firmware dies; the board restarts it, as a WDT would
    stop = csms.wait_for("StopTransaction", cp=CP, timeout=40)
    assert stop["reason"] == "Reboot" and stop["transactionId"] == tid
    _one_session(csms)
