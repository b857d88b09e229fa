"""A damaged flash never loses a bill, a secret or a setting in silence (issue 9, items 6-9): a state file is
truncated to half, overwritten with garbage, emptied or deleted while the MCU is off (the sim's state directory is
its flash), and the charger boots with the last good copy, names the file in its log and tells the Central System
(DataTransfer FlashRecovery, docs/decisions.md "Flash")."""
import datetime
import os

import pytest

from conftest import wait_until
from core_helpers import CP, boot, board_until, start_charging, status_seen

MODES = ("half", "garbage", "zero", "deleted")


def corrupt(path, mode):
    """The four ways a file goes bad (tools/torture.py --only flash uses the same)."""
    if mode == "deleted":
        os.remove(path)
        return
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if mode == "half":
            f.truncate(size // 2)
        elif mode == "garbage":
            f.write(bytes((i * 151 + 7) & 0xFF for i in range(size)))
        else:
            f.truncate(0)


def power_off(sim):
    sim.cmd({"cmd": "power", "on": False})


def power_on(sim):
    mark = len(sim.lines)
    sim.cmd({"cmd": "power", "on": True})
    return mark


def logged(sim, name, since):
    """The firmware's log line naming the recovered file."""
    return sim.wait_line(r"\[mcu\].* store: %s.*" % name.replace(".", r"\."), timeout=20, since=since).group(0)


def reported(csms, name):
    """The FlashRecovery DataTransfer that names the file."""
    return csms.wait_for("DataTransfer", cp=CP, timeout=30,
                         where=lambda p: p.get("messageId") == "FlashRecovery" and name in p.get("data", ""))


def _iso_in(seconds):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.mark.parametrize("mode", MODES)
def test_txids_corrupt_during_a_transaction_still_gets_its_stop(csms_factory, sim_factory, mode):
    # Item 6: the local id -> transactionId map is billing state. Before: "closing transaction 1 after
    # PowerLoss", then "dropping StopTransaction of unknown transaction 1", and the Central System never
    # got the Stop.
    csms, sim = boot(csms_factory, sim_factory, config={"MeterValueSampleInterval": 2})
    _, tid = start_charging(csms, sim)
    csms.wait_for("MeterValues", cp=CP, timeout=15)
    power_off(sim)
    corrupt(os.path.join(sim.state_dir, "txids.json"), mode)
    mark = power_on(sim)
    stop = csms.wait_for("StopTransaction", cp=CP, timeout=40)
    assert stop["transactionId"] == tid and stop["reason"] == "PowerLoss"
    assert "restored from txids.json.bak" in logged(sim, "txids.json", mark)
    reported(csms, "txids.json")
    assert not [line for line in sim.lines if "dropping" in line or "Traceback" in line]
    # and the next session gets a local id of its own: its Stop goes out under its own transactionId
    sim.cmd({"cmd": "unplug"})
    board_until(sim, lambda s: s["pilot"] == "A", msg="unplugged")
    _, tid2 = start_charging(csms, sim)
    sim.cmd({"cmd": "unplug"})
    stop2 = csms.wait_for("StopTransaction", cp=CP, count=2, timeout=30)
    assert tid2 != tid and stop2["transactionId"] == tid2


def test_corrupt_config_keeps_rotated_key_url_and_settings(csms_factory, sim_factory):
    # Item 7: before, every key went back to its default, the password rotated by AuthorizationKey was replaced
    # by provision.json's (HTTP 401 forever), and with provision.json gone the URL was lost; no log line.
    csms, sim = boot(csms_factory, sim_factory, csms_kwargs={"auth": {CP: "factory-pw-0001"}},
                     password="factory-pw-0001",
                     config={"ConnectionTimeOut": 77, "WebSocketPingInterval": 33, "LocalPreAuthorize": "true"})
    csms.set(auth={CP: "rotated-key-0001"})  # from now on only the new key is let in
    mark = len(sim.lines)
    assert csms.call(CP, "ChangeConfiguration", {"key": "AuthorizationKey", "value": "rotated-key-0001"}) \
        == {"status": "Accepted"}
    sim.wait_line(r"\[mcu\].*connected to", since=mark, timeout=30)  # it reconnects with the new key
    _, tid = start_charging(csms, sim)
    power_off(sim)
    corrupt(os.path.join(sim.state_dir, "config.json"), "garbage")
    os.remove(os.path.join(sim.state_dir, "provision.json"))  # the installer's file is gone too
    mark = power_on(sim)
    csms.wait_for("BootNotification", cp=CP, count=2, timeout=40)  # connected: the URL and the new key held
    stop = csms.wait_for("StopTransaction", cp=CP, timeout=30)
    assert stop["transactionId"] == tid
    assert "restored from config.json.bak" in logged(sim, "config.json", mark)
    keys = {k["key"]: k["value"] for k in csms.call(CP, "GetConfiguration", {
        "key": ["ConnectionTimeOut", "WebSocketPingInterval", "LocalPreAuthorize"]})["configurationKey"]}
    assert keys == {"ConnectionTimeOut": "77", "WebSocketPingInterval": "33", "LocalPreAuthorize": "true"}
    reported(csms, "config.json")


def test_corrupt_profiles_and_reservation_keep_the_limit_and_the_reservation(csms_factory, sim_factory):
    # Item 8: a 10 A ChargePointMaxProfile silently became 32 A and a reservation disappeared.
    csms, sim = boot(csms_factory, sim_factory)
    prof = {"chargingProfileId": 5, "stackLevel": 0, "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "chargingRateUnit": "A", "startSchedule": _iso_in(-60),
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}]}}
    assert csms.call(CP, "SetChargingProfile", {"connectorId": 0, "csChargingProfiles": prof}) \
        == {"status": "Accepted"}
    assert csms.call(CP, "ReserveNow", {"connectorId": 1, "expiryDate": _iso_in(600), "idTag": "RESV1",
                                        "reservationId": 41}) == {"status": "Accepted"}
    status_seen(csms, "Reserved")
    power_off(sim)
    corrupt(os.path.join(sim.state_dir, "profiles.json"), "deleted")
    corrupt(os.path.join(sim.state_dir, "reservation.json"), "half")
    mark = power_on(sim)
    csms.wait_for("BootNotification", cp=CP, count=2, timeout=40)
    status_seen(csms, "Reserved", count=2)
    logged(sim, "profiles.json", mark)
    logged(sim, "reservation.json", mark)
    reply = csms.call(CP, "GetCompositeSchedule", {"connectorId": 0, "duration": 60})
    assert [float(p["limit"]) for p in reply["chargingSchedule"]["chargingSchedulePeriod"]] == [10]
    assert csms.call(CP, "ReserveNow", {"connectorId": 1, "expiryDate": _iso_in(600), "idTag": "OTHER",
                                        "reservationId": 42}) == {"status": "Occupied"}
    reported(csms, "reservation.json")


@pytest.mark.parametrize("mode", ("zero", "garbage"))
def test_corrupt_availability_keeps_an_inoperative_charger_unavailable(csms_factory, sim_factory, mode):
    # Item 8: an Inoperative charger booted Available.
    csms, sim = boot(csms_factory, sim_factory)
    assert csms.call(CP, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}) == {"status": "Accepted"}
    status_seen(csms, "Unavailable")
    power_off(sim)
    corrupt(os.path.join(sim.state_dir, "availability.json"), mode)
    mark = power_on(sim)
    csms.wait_for("BootNotification", cp=CP, count=2, timeout=40)
    status_seen(csms, "Unavailable", count=2)
    logged(sim, "availability.json", mark)
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})
    sim.cmd({"cmd": "tag", "id": "TAG1"})
    wait_until(lambda: any("not available" in line for line in sim.lines[mark:]), 10, msg="tag refused")
    assert not sim.status()["contactor"] and csms.calls("StartTransaction") == []


@pytest.mark.parametrize("mode", ("half", "deleted"))
def test_corrupt_journal_after_an_offline_transaction_delivers_start_and_stop(csms_factory, sim_factory, mode):
    # Item 9: the Start of a transaction started offline was lost with the journal, then its Stop was dropped as
    # unknown: the Central System never learnt of the session.
    csms, sim = boot(csms_factory, sim_factory, config={"AllowOfflineTxForUnknownId": "true",
                                                        "MeterValueSampleInterval": 2})
    csms.stop()
    sim.wait_line(r"\[mcu\].*(connection lost|disconnected)", timeout=20)
    e0 = sim.status()["energy_wh"]
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})
    sim.cmd({"cmd": "tag", "id": "OFFLINE1"})
    board_until(sim, lambda s: s["contactor"], msg="offline charging")
    wait_until(lambda: sim.status()["energy_wh"] > e0 + 5, 20, msg="energy flowing")
    sim.cmd({"cmd": "unplug"})
    sim.wait_line(r"\[mcu\].*stopped \(EVDisconnected\)", timeout=10)
    e1 = sim.status()["energy_wh"]
    power_off(sim)
    corrupt(os.path.join(sim.state_dir, "txqueue.jnl"), mode)
    mark = power_on(sim)
    csms.start()
    stop = csms.wait_for("StopTransaction", cp=CP, timeout=60)
    starts = csms.calls("StartTransaction")
    assert len(starts) == 1 and starts[0]["idTag"] == "OFFLINE1" and abs(starts[0]["meterStart"] - e0) <= 1
    assert stop["reason"] == "EVDisconnected" and abs(stop["meterStop"] - e1) <= 1
    line = logged(sim, "txqueue.jnl", mark)
    assert "restored from txqueue.jnl.bak" in line, line
    reported(csms, "txqueue.jnl")
    assert len(csms.calls("StopTransaction")) == 1
    assert not [line for line in sim.lines if "dropping" in line or "Traceback" in line]
