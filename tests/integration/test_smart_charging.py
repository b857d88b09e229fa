"""Smart Charging end to end (issue 4, OCTT TC_056/057/058/059/060/066/067/072/082): profiles sent by the Central
System change what the virtual board's pilot offers the car (PWM duty -> offered_a), not only the OCPP answers."""
import datetime
import os

import pytest

from conftest import ROOT, wait_until

with open(os.path.join(ROOT, "firmware", "app.py")) as _f:
    _WIRED = "smartcharging" in _f.read()
pytestmark = pytest.mark.skipif(not _WIRED, reason="firmware/app.py does not wire the SmartCharging profile yet")

CP = "CP1"
MAX_CURRENT = 32  # the installation default (MaxCurrent) and the cable used here


def _iso(offset_s=0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def profile(pid, purpose, periods, stack=0, unit="A", kind="Absolute", start=-60, duration=None, **extra):
    """A ChargingProfile; start = startSchedule in s from now (None: absent); periods (startPeriod, limit)."""
    sched = {"chargingRateUnit": unit,
             "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim} for s, lim in periods]}
    if start is not None:
        sched["startSchedule"] = _iso(start)
    if duration is not None:
        sched["duration"] = duration
    d = {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
         "chargingProfileKind": kind, "chargingSchedule": sched}
    d.update(extra)
    return d


def set_profile(csms, connector, prof):
    return csms.call(CP, "SetChargingProfile", {"connectorId": connector, "csChargingProfiles": prof})["status"]


def boot(csms_factory, sim_factory, **sim_kwargs):
    csms = csms_factory(tags=("TAG1",))
    sim = sim_factory(csms.url, **sim_kwargs)
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["connectorId"] == 1)
    return csms, sim


def healthy(sim):
    """The firmware logged no exception (a MemoryError on the ESP32-sized heap shows up here first)."""
    bad = [line for line in sim.lines if "[mcu]" in line and ("Error" in line or "Traceback" in line)]
    assert not bad, "\n".join(bad)


def wait_offered(sim, amps, timeout=10):
    """The status once the EV decodes `amps` from the duty (0 = no PWM: a pause)."""
    return wait_until(lambda: (lambda s: s if abs(s["offered_a"] - amps) < 0.3 else None)(sim.status()),
                      timeout, msg="offered_a %s" % amps)


def transaction_id(csms):
    def find():
        for m in csms.messages(CP):
            msg = m["msg"]
            if m["dir"] == "out" and msg and msg[0] == 3 and "transactionId" in msg[2]:
                return (msg[2]["transactionId"],)
        return None
    return wait_until(find, 20, msg="StartTransaction.conf")[0]


def start_charging(csms, sim, tag=True):
    sim.cmd({"cmd": "plug", "cable_a": MAX_CURRENT})
    sim.cmd({"cmd": "ev", "state": "B", "max_a": MAX_CURRENT})
    if tag:
        sim.cmd({"cmd": "tag", "id": "TAG1"})
    csms.wait_for("StartTransaction", cp=CP)
    sim.cmd({"cmd": "ev", "state": "C", "max_a": MAX_CURRENT})
    tx = transaction_id(csms)
    wait_until(lambda: sim.status()["contactor"], 15, msg="contactor closed")
    return tx


def charging_status(sim):
    return wait_until(lambda: (lambda s: s if s["contactor"] else None)(sim.status()), 15, msg="contactor")


def test_tx_default_profile_limits_a_new_session(csms_factory, sim_factory):
    # TC_056: a TxDefaultProfile installed before the session governs it from its first offer.
    csms, sim = boot(csms_factory, sim_factory)
    assert set_profile(csms, 1, profile(1, "TxDefaultProfile", [(0, 10)])) == "Accepted"
    start_charging(csms, sim)
    status = charging_status(sim)
    assert abs(status["offered_a"] - 10) < 0.3 and abs(status["duty"] - 16.7) < 0.2
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["status"] == "Charging")
    healthy(sim)


def test_tx_default_set_during_a_session_applies_at_once(csms_factory, sim_factory):
    # TC_082, and W converted to A with the measured voltage (230 V on the virtual meter) and 3 phases.
    csms, sim = boot(csms_factory, sim_factory)
    start_charging(csms, sim)
    wait_offered(sim, MAX_CURRENT)
    assert set_profile(csms, 0, profile(1, "TxDefaultProfile", [(0, 16)])) == "Accepted"
    wait_offered(sim, 16)
    assert set_profile(csms, 0, profile(1, "TxDefaultProfile", [(0, 6900)], unit="W")) == "Accepted"
    status = wait_offered(sim, 10)
    assert status["contactor"]
    healthy(sim)


def test_tx_profile_only_for_the_running_transaction(csms_factory, sim_factory):
    # TC_058_1 (no transaction), TC_058_2 (wrong transactionId), TC_057 (applied), deleted when the session ends.
    csms, sim = boot(csms_factory, sim_factory)
    assert set_profile(csms, 1, profile(5, "TxProfile", [(0, 8)], transactionId=1)) == "Rejected"
    assert set_profile(csms, 1, profile(5, "TxProfile", [(0, 8)])) == "Rejected"
    tx = start_charging(csms, sim)
    wait_offered(sim, MAX_CURRENT)
    assert set_profile(csms, 1, profile(5, "TxProfile", [(0, 8)], transactionId=tx + 1)) == "Rejected"
    assert set_profile(csms, 0, profile(5, "TxProfile", [(0, 8)], transactionId=tx)) == "Rejected"
    assert set_profile(csms, 1, profile(5, "TxProfile", [(0, 8)], transactionId=tx)) == "Accepted"
    wait_offered(sim, 8)
    sim.cmd({"cmd": "unplug"})
    csms.wait_for("StopTransaction", cp=CP)
    assert csms.call(CP, "ClearChargingProfile", {"id": 5}) == {"status": "Unknown"}  # gone with the session
    healthy(sim)


def test_remote_start_with_a_charging_profile(csms_factory, sim_factory):
    # TC_060: a profile of another purpose makes the RemoteStart Rejected; TC_059: a TxProfile governs the session.
    csms, sim = boot(csms_factory, sim_factory)
    bad = profile(3, "TxDefaultProfile", [(0, 12)], kind="Relative", start=None)
    assert csms.call(CP, "RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1", "chargingProfile": bad}) \
        == {"status": "Rejected"}
    good = profile(3, "TxProfile", [(0, 12)], kind="Relative", start=None)
    assert csms.call(CP, "RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1", "chargingProfile": good}) \
        == {"status": "Accepted"}
    start_charging(csms, sim, tag=False)
    status = charging_status(sim)
    assert abs(status["offered_a"] - 12) < 0.3
    healthy(sim)


def test_composite_schedule_and_clear(csms_factory, sim_factory):
    # TC_066 / TC_067: the composite is the profile seen from now, in A and in W; clearing restores the default.
    csms, sim = boot(csms_factory, sim_factory)
    assert set_profile(csms, 0, profile(7, "TxDefaultProfile", [(0, 16), (300, 10)], start=-60)) == "Accepted"
    reply = csms.call(CP, "GetCompositeSchedule", {"connectorId": 1, "duration": 600})
    assert reply["status"] == "Accepted" and reply["connectorId"] == 1
    sched = reply["chargingSchedule"]
    assert sched["chargingRateUnit"] == "A" and sched["duration"] == 600
    periods = sched["chargingSchedulePeriod"]
    assert [float(p["limit"]) for p in periods] == [16, 10]
    assert periods[0]["startPeriod"] == 0 and 236 <= periods[1]["startPeriod"] <= 240  # 300 s after -60 s
    watts = csms.call(CP, "GetCompositeSchedule", {"connectorId": 0, "duration": 60, "chargingRateUnit": "W"})
    assert [float(p["limit"]) for p in watts["chargingSchedule"]["chargingSchedulePeriod"]] == [16 * 230 * 3]
    assert csms.call(CP, "GetCompositeSchedule", {"connectorId": 2, "duration": 60})["status"] == "Rejected"

    start_charging(csms, sim)
    wait_offered(sim, 16)
    assert csms.call(CP, "ClearChargingProfile", {"connectorId": 0, "chargingProfilePurpose": "TxDefaultProfile"}) \
        == {"status": "Accepted"}
    wait_offered(sim, MAX_CURRENT)
    assert csms.call(CP, "ClearChargingProfile", {"chargingProfilePurpose": "TxDefaultProfile"}) == \
        {"status": "Unknown"}
    after = csms.call(CP, "GetCompositeSchedule", {"connectorId": 1, "duration": 60})
    assert [float(p["limit"]) for p in after["chargingSchedule"]["chargingSchedulePeriod"]] == [MAX_CURRENT]
    healthy(sim)


@pytest.mark.long
def test_stacked_profile_falls_back_when_its_duration_ends(csms_factory, sim_factory):
    # TC_072: the higher stackLevel wins while it runs, then the lower one governs again.
    csms, sim = boot(csms_factory, sim_factory)
    start_charging(csms, sim)
    assert set_profile(csms, 1, profile(1, "TxDefaultProfile", [(0, 16)], stack=0)) == "Accepted"
    wait_offered(sim, 16)
    assert set_profile(csms, 1, profile(2, "TxDefaultProfile", [(0, 8)], stack=1, start=0, duration=15)) \
        == "Accepted"
    wait_offered(sim, 8)
    status = wait_offered(sim, 16, timeout=30)
    assert status["contactor"]
    healthy(sim)


def test_zero_and_small_limits_pause_the_charge(csms_factory, sim_factory):
    # A 0 A period, and 0 < limit < 6 A, which no duty can signal (digest §7 Q8): PWM off, contactor open,
    # SuspendedEVSE; the charge resumes when the limit comes back.
    csms, sim = boot(csms_factory, sim_factory)
    start_charging(csms, sim)
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["status"] == "Charging")
    for pid, limit in ((1, 0), (2, 4.5)):
        mark = len(csms.messages(CP))
        assert set_profile(csms, 1, profile(pid, "TxDefaultProfile", [(0, limit)], stack=pid)) == "Accepted"
        status = wait_offered(sim, 0)
        assert status["duty"] == 100.0
        wait_until(lambda: not sim.status()["contactor"], 10, msg="contactor open")
        csms.wait_for("StatusNotification", cp=CP, since=mark, where=lambda p: p["status"] == "SuspendedEVSE")
        mark = len(csms.messages(CP))
        assert csms.call(CP, "ClearChargingProfile", {"id": pid}) == {"status": "Accepted"}
        wait_until(lambda: sim.status()["contactor"], 15, msg="contactor closed again")
        csms.wait_for("StatusNotification", cp=CP, since=mark, where=lambda p: p["status"] == "Charging")
    healthy(sim)


def test_profiles_survive_a_power_cut(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    assert set_profile(csms, 0, profile(9, "ChargePointMaxProfile", [(0, 13)])) == "Accepted"
    assert set_profile(csms, 1, profile(10, "TxDefaultProfile", [(0, 20)])) == "Accepted"
    sim.cmd({"cmd": "power", "on": False})
    sim.cmd({"cmd": "power", "on": True})
    csms.wait_for("BootNotification", cp=CP, count=2)
    reply = csms.call(CP, "GetCompositeSchedule", {"connectorId": 1, "duration": 60})
    assert [float(p["limit"]) for p in reply["chargingSchedule"]["chargingSchedulePeriod"]] == [13]
    start_charging(csms, sim)
    status = charging_status(sim)
    assert abs(status["offered_a"] - 13) < 0.3
    healthy(sim)
