"""OCPP 1.6 Core profile, driven through the demo Central System and the virtual board (issue 3). Test names
carry the OCTT charge-point test case id (digest §5) they follow."""
import time

import pytest

from conftest import wait_until
from core_helpers import CP, boot, status_seen, board_until, start_charging, transaction_id, in_calls


def test_tc002_pending_answers_calls_but_initiates_nothing(csms_factory, sim_factory):
    csms = csms_factory(boot_status="Pending", interval=4)
    sim = sim_factory(csms.url)
    csms.wait_for("BootNotification", cp=CP)
    cfg = csms.call(CP, "GetConfiguration", {"key": ["HeartbeatInterval"]})
    assert cfg["configurationKey"][0]["key"] == "HeartbeatInterval"
    assert csms.call(CP, "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "10"}) == \
        {"status": "Accepted"}
    assert csms.call(CP, "RemoteStartTransaction", {"idTag": "TAG1"}) == {"status": "Rejected"}
    sim.cmd({"cmd": "plug", "cable_a": 32})  # a status change while Pending is not reported
    csms.wait_for("BootNotification", cp=CP, count=2, timeout=15)  # retried after the interval
    assert [a for a, _ in in_calls(csms)] == ["BootNotification", "BootNotification"]
    csms.set(boot_status="Accepted")
    csms.wait_for("BootNotification", cp=CP, count=3, timeout=15)
    status_seen(csms, "Preparing")


@pytest.mark.long
def test_tc019_tc021_tc040_configuration(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    everything = csms.call(CP, "GetConfiguration", {})
    keys = {k["key"]: k for k in everything["configurationKey"]}
    for required in ("HeartbeatInterval", "MeterValueSampleInterval", "ConnectionTimeOut", "NumberOfConnectors",
                     "SupportedFeatureProfiles", "TransactionMessageAttempts", "StopTxnSampledData",
                     "LocalAuthListMaxLength", "ChargeProfileMaxStackLevel", "WebSocketPingInterval"):
        assert required in keys, required
    assert "AuthorizationKey" not in keys  # write-only
    assert keys["NumberOfConnectors"]["readonly"] is True and keys["NumberOfConnectors"]["value"] == "1"
    assert set(keys["SupportedFeatureProfiles"]["value"].split(",")) >= {"Core", "LocalAuthListManagement",
                                                                          "SmartCharging", "RemoteTrigger",
                                                                          "Reservation"}
    assert "FirmwareManagement" in keys["SupportedFeatureProfiles"]["value"]  # OTA and diagnostics work (issue 11)
    some = csms.call(CP, "GetConfiguration", {"key": ["heartbeatinterval", "NoSuchKey"]})
    assert [k["key"] for k in some["configurationKey"]] == ["HeartbeatInterval"]  # CiString: case-insensitive
    assert some["unknownKey"] == ["NoSuchKey"]
    # TC_021: accepted and effective
    assert csms.call(CP, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "10"}) == {"status": "Accepted"}
    mark = len(csms.messages())
    csms.wait_for("Heartbeat", cp=CP, since=mark, timeout=25)
    # TC_040_1 / TC_040_2
    assert csms.call(CP, "ChangeConfiguration", {"key": "NoSuchKey", "value": "1"}) == {"status": "NotSupported"}
    for key, value in (("HeartbeatInterval", "ten"), ("NumberOfConnectors", "2"), ("WebSocketPingInterval", "-1"),
                       ("MeterValuesSampledData", "Energy.Active.Import.Register,Temperature"),
                       ("LocalPreAuthorize", "maybe")):
        assert csms.call(CP, "ChangeConfiguration", {"key": key, "value": value}) == {"status": "Rejected"}, key
    value = csms.call(CP, "GetConfiguration", {"key": ["HeartbeatInterval"]})["configurationKey"][0]["value"]
    assert value == "10"  # a refused value leaves the old one


def test_configuration_persists_across_reboot(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"ConnectionTimeOut": 77, "StopTxnSampledData":
                                                        "Energy.Active.Import.Register"})
    sim.cmd({"cmd": "power", "on": False})
    sim.cmd({"cmd": "power", "on": True})
    csms.wait_for("BootNotification", cp=CP, count=2)
    got = csms.call(CP, "GetConfiguration", {"key": ["ConnectionTimeOut", "StopTxnSampledData"]})
    assert {k["key"]: k["value"] for k in got["configurationKey"]} == \
        {"ConnectionTimeOut": "77", "StopTxnSampledData": "Energy.Active.Import.Register"}


def test_tc003_plugin_first_session_and_tc068_stop_with_same_tag(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"MeterValueSampleInterval": 4})
    start, tid = start_charging(csms, sim)
    status_seen(csms, "Charging")
    csms.wait_for("MeterValues", cp=CP, timeout=15)
    mark = len(csms.messages())
    sim.cmd({"cmd": "tag", "id": "TAG1"})  # the same card stops, without an Authorize (TC_068)
    stop = csms.wait_for("StopTransaction", cp=CP, since=mark)
    assert stop["reason"] == "Local" and stop["idTag"] == "TAG1" and stop["transactionId"] == tid
    assert in_calls(csms, "Authorize", since=mark) == []
    assert not sim.status()["contactor"]
    status_seen(csms, "Finishing", since=mark)  # the plug is still in
    sim.cmd({"cmd": "unplug"})
    status_seen(csms, "Available", since=mark)
    board_until(sim, lambda s: not s["locked"], msg="unlocked")  # the MCU applies the command a moment later


def test_tc004_identification_first_and_tc004_2_connection_timeout(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"ConnectionTimeOut": 3})
    sim.cmd({"cmd": "tag", "id": "TAG1"})
    status_seen(csms, "Preparing")
    status_seen(csms, "Available", count=2, timeout=15)  # no plug within ConnectionTimeOut
    assert csms.calls("StartTransaction") == []
    mark = len(csms.messages())
    sim.cmd({"cmd": "tag", "id": "TAG1"})
    status_seen(csms, "Preparing", since=mark)
    sim.cmd({"cmd": "plug", "cable_a": 32})
    start = csms.wait_for("StartTransaction", cp=CP, since=mark)
    assert start["idTag"] == "TAG1"


def test_tc005_1_ev_side_disconnect_stops_and_unlocks(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"StopTransactionOnEVSideDisconnect": "true",
                                                        "UnlockConnectorOnEVSideDisconnect": "true"})
    start_charging(csms, sim)
    mark = len(csms.messages())
    sim.cmd({"cmd": "ev", "state": "A"})  # cable pulled out of the car, still in the socket
    stop = csms.wait_for("StopTransaction", cp=CP, since=mark)
    assert stop["reason"] == "EVDisconnected"
    status_seen(csms, "Finishing", since=mark)
    board_until(sim, lambda s: not s["locked"] and not s["contactor"], msg="unlocked")
    sim.cmd({"cmd": "unplug"})
    status_seen(csms, "Available", since=mark)


def test_tc005_2_ev_side_disconnect_keeps_the_lock(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"StopTransactionOnEVSideDisconnect": "true",
                                                        "UnlockConnectorOnEVSideDisconnect": "false"})
    start_charging(csms, sim)
    mark = len(csms.messages())
    sim.cmd({"cmd": "ev", "state": "A"})
    csms.wait_for("StopTransaction", cp=CP, since=mark)
    time.sleep(1)
    assert sim.status()["locked"]


def test_tc005_3_ev_side_disconnect_suspends_without_stop(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"StopTransactionOnEVSideDisconnect": "false"})
    start_charging(csms, sim)
    status_seen(csms, "Charging")  # reported: else a short Charging never leaves SuspendedEV to report again
    mark = len(csms.messages())
    sim.cmd({"cmd": "ev", "state": "A"})
    status_seen(csms, "SuspendedEV", since=mark)
    board_until(sim, lambda s: s["locked"] and not s["contactor"], msg="contactor open, lock kept")
    sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})  # re-plugged: energy flows again in the same transaction
    board_until(sim, lambda s: s["contactor"], msg="contactor closed again")
    assert csms.calls("StopTransaction") == [] and len(csms.calls("StartTransaction")) == 1


def test_tc023_invalid_blocked_expired_tags_never_start(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})
    for tag, status in (("BLOCKED1", "Blocked"), ("EXPIRED1", "Expired"), ("NOBODY", "Invalid")):
        csms.set(tag_status={tag: status})
        mark = len(csms.messages())
        sim.cmd({"cmd": "tag", "id": tag})
        csms.wait_for("Authorize", cp=CP, since=mark)
        time.sleep(1)
        assert not sim.status()["contactor"]
    assert csms.calls("StartTransaction") == []


def test_tc069_stop_with_a_tag_of_the_same_group(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, csms_kwargs={"tags": ("TAG1", "TAG2", "TAG3")})
    csms.set(parents={"TAG1": "FLEET", "TAG2": "FLEET", "TAG3": "OTHER"})
    start_charging(csms, sim)
    mark = len(csms.messages())
    sim.cmd({"cmd": "tag", "id": "TAG3"})  # another group: refused
    csms.wait_for("Authorize", cp=CP, since=mark)
    time.sleep(1)
    assert csms.calls("StopTransaction") == [] and sim.status()["contactor"]
    sim.cmd({"cmd": "tag", "id": "TAG2"})
    stop = csms.wait_for("StopTransaction", cp=CP, since=mark)
    assert stop["idTag"] == "TAG2" and stop["reason"] == "Local"


@pytest.mark.long
def test_tc070_sampled_meter_values(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={
        "MeterValueSampleInterval": 4, "StopTxnSampledData": "Energy.Active.Import.Register,Current.Import"})
    start, tid = start_charging(csms, sim)
    values = [csms.wait_for("MeterValues", cp=CP, count=n, timeout=20) for n in (1, 2, 3)]
    energies = []
    for mv in values:
        assert mv["transactionId"] == tid
        (sample,) = mv["meterValue"]
        by = {(s["measurand"], s.get("phase")): s for s in sample["sampledValue"]}
        assert by[("Energy.Active.Import.Register", None)]["context"] == "Sample.Periodic"
        energies.append(int(by[("Energy.Active.Import.Register", None)]["value"]))
        assert by[("Voltage", "L1-N")]["unit"] == "V"
        assert float(by[("Current.Offered", None)]["value"]) == 32.0
    assert energies == sorted(energies) and energies[-1] > start["meterStart"]
    sim.cmd({"cmd": "unplug"})
    stop = csms.wait_for("StopTransaction", cp=CP)
    data = stop["transactionData"]
    contexts = [d["sampledValue"][0]["context"] for d in data]
    assert contexts[0] == "Transaction.Begin" and contexts[-1] == "Transaction.End"
    assert "Sample.Periodic" in contexts
    assert data[-1]["sampledValue"][0]["value"] == str(stop["meterStop"])
    assert {s["measurand"] for d in data for s in d["sampledValue"]} == {"Energy.Active.Import.Register",
                                                                         "Current.Import"}


def test_tc071_clock_aligned_meter_values(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"ClockAlignedDataInterval": 5,
                                                        "MeterValueSampleInterval": 0,
                                                        "MeterValuesAlignedData": "Energy.Active.Import.Register"})
    start_charging(csms, sim)
    first = csms.wait_for("MeterValues", cp=CP, timeout=15, where=lambda p: "transactionId" in p)
    second = csms.wait_for("MeterValues", cp=CP, count=2, timeout=15, where=lambda p: "transactionId" in p)
    for mv in (first, second):
        (sample,) = mv["meterValue"]
        assert sample["sampledValue"][0]["context"] == "Sample.Clock"
        assert int(sample["timestamp"][17:19]) % 5 == 0  # on the clock grid, not the session's
    assert first["meterValue"][0]["timestamp"] != second["meterValue"][0]["timestamp"]


def test_tc010_tc012_remote_start_and_stop(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})
    assert csms.call(CP, "RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 1}) == {"status": "Accepted"}
    start = csms.wait_for("StartTransaction", cp=CP)
    assert start["idTag"] == "TAG1"
    assert csms.calls("Authorize") == []  # AuthorizeRemoteTxRequests is false by default
    board_until(sim, lambda s: s["contactor"], msg="charging")
    tid = transaction_id(csms)
    assert csms.call(CP, "RemoteStopTransaction", {"transactionId": tid + 1000}) == {"status": "Rejected"}  # 028
    assert csms.call(CP, "RemoteStopTransaction", {"transactionId": tid}) == {"status": "Accepted"}
    stop = csms.wait_for("StopTransaction", cp=CP)
    assert stop["reason"] == "Remote" and stop["transactionId"] == tid
    board_until(sim, lambda s: not s["contactor"], msg="contactor open")


def test_tc011_2_tc026_tc027_remote_start_rejections_and_timeout(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"ConnectionTimeOut": 3})
    assert csms.call(CP, "RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 0}) == {"status": "Rejected"}
    assert csms.call(CP, "RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 2}) == {"status": "Rejected"}
    assert csms.call(CP, "RemoteStartTransaction", {"idTag": "TAG1"}) == {"status": "Accepted"}
    status_seen(csms, "Preparing")
    status_seen(csms, "Available", count=2, timeout=15)
    assert csms.calls("StartTransaction") == []


def test_remote_start_with_authorize_remote_tx_requests(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"AuthorizeRemoteTxRequests": "true"})
    sim.cmd({"cmd": "plug", "cable_a": 32})
    assert csms.call(CP, "RemoteStartTransaction", {"idTag": "STRANGER"}) == {"status": "Accepted"}
    assert csms.wait_for("Authorize", cp=CP)["idTag"] == "STRANGER"
    time.sleep(1.5)
    assert csms.calls("StartTransaction") == []
    assert csms.call(CP, "RemoteStartTransaction", {"idTag": "TAG1"}) == {"status": "Accepted"}
    csms.wait_for("StartTransaction", cp=CP)


def _reset_case(csms_factory, sim_factory, kind, with_tx):
    csms, sim = boot(csms_factory, sim_factory)
    if with_tx:
        start_charging(csms, sim)
    assert csms.call(CP, "Reset", {"type": kind}) == {"status": "Accepted"}
    csms.wait_for("BootNotification", cp=CP, count=2, timeout=30)
    sim.wait_line(r"\[sim\] MCU reboot")
    if with_tx:
        stop = csms.wait_for("StopTransaction", cp=CP)
        assert stop["reason"] == kind + "Reset"
        assert len(csms.calls("StopTransaction")) == 1
        board_until(sim, lambda s: not s["contactor"], msg="contactor open")


def test_tc013_hard_reset_without_transaction(csms_factory, sim_factory):
    _reset_case(csms_factory, sim_factory, "Hard", False)


def test_tc014_soft_reset_without_transaction(csms_factory, sim_factory):
    _reset_case(csms_factory, sim_factory, "Soft", False)


def test_tc015_hard_reset_with_transaction(csms_factory, sim_factory):
    _reset_case(csms_factory, sim_factory, "Hard", True)


def test_tc016_soft_reset_with_transaction(csms_factory, sim_factory):
    _reset_case(csms_factory, sim_factory, "Soft", True)


def test_tc017_tc018_tc031_unlock_connector(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    start, tid = start_charging(csms, sim)
    assert csms.call(CP, "UnlockConnector", {"connectorId": 2}) == {"status": "NotSupported"}  # TC_031
    assert csms.call(CP, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}  # TC_018_1
    stop = csms.wait_for("StopTransaction", cp=CP)
    assert stop["reason"] == "UnlockCommand" and stop["transactionId"] == tid
    status = sim.status()
    assert not status["locked"] and not status["contactor"]


def test_tc017_2_unlock_fixed_cable_not_supported(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, variant="cable")
    assert csms.call(CP, "UnlockConnector", {"connectorId": 1}) == {"status": "NotSupported"}


def test_change_availability_scheduled_and_persisted(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    start_charging(csms, sim)
    assert csms.call(CP, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == {"status": "Scheduled"}
    assert sim.status()["contactor"]  # the running session goes on
    mark = len(csms.messages())
    sim.cmd({"cmd": "unplug"})
    csms.wait_for("StopTransaction", cp=CP, since=mark)
    status_seen(csms, "Unavailable", since=mark)
    sim.cmd({"cmd": "power", "on": False})  # TC_034: Unavailable survives a power cut
    sim.cmd({"cmd": "power", "on": True})
    csms.wait_for("BootNotification", cp=CP, count=2)
    status_seen(csms, "Unavailable", since=mark, count=2)
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "tag", "id": "TAG1"})
    time.sleep(1.5)
    assert csms.calls("Authorize", since=mark) == [] and not sim.status()["contactor"]
    assert csms.call(CP, "ChangeAvailability", {"connectorId": 0, "type": "Operative"}) == {"status": "Accepted"}
    wait_until(lambda: [p for p in csms.calls("StatusNotification", since=mark)
                        if p["connectorId"] == 1 and p["status"] in ("Preparing", "Available")], 15)
    assert csms.call(CP, "ChangeAvailability", {"connectorId": 3, "type": "Operative"}) == {"status": "Rejected"}


def test_tc061_clear_cache(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"LocalPreAuthorize": "true"})
    start_charging(csms, sim)  # TAG1 is now in the cache
    sim.cmd({"cmd": "unplug"})
    csms.wait_for("StopTransaction", cp=CP)
    mark = len(csms.messages())
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "tag", "id": "TAG1"})  # TC_007: a cached id starts without Authorize
    csms.wait_for("StartTransaction", cp=CP, since=mark)
    assert in_calls(csms, "Authorize", since=mark) == []
    sim.cmd({"cmd": "unplug"})
    csms.wait_for("StopTransaction", cp=CP, since=mark)
    assert csms.call(CP, "ClearCache", {}) == {"status": "Accepted"}
    mark = len(csms.messages())
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "tag", "id": "TAG1"})
    csms.wait_for("Authorize", cp=CP, since=mark)  # after ClearCache the tag is checked again


def test_tc062_data_transfer(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    assert csms.call(CP, "DataTransfer", {"vendorId": "com.example.unknown", "data": "x"}) == \
        {"status": "UnknownVendorId"}
    assert csms.call(CP, "DataTransfer", {"vendorId": "org.micropython.evse", "messageId": "nope"}) == \
        {"status": "UnknownMessageId"}


def test_tc064_data_transfer_to_the_central_system(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    sim.cmd({"cmd": "console", "line": "datatransfer org.micropython.evse Diag hello world"})
    p = csms.wait_for("DataTransfer", cp=CP)
    assert p == {"vendorId": "org.micropython.evse", "messageId": "Diag", "data": "hello world"}
    sim.wait_line(r"\[mcu\].*DataTransfer answer: .*Accepted")
    sim.cmd({"cmd": "console", "line": "datatransfer com.nobody"})
    sim.wait_line(r"\[mcu\].*DataTransfer answer: .*UnknownVendorId")


@pytest.mark.long
def test_transaction_message_attempts_and_retry_interval(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, config={"TransactionMessageAttempts": 3,
                                                        "TransactionMessageRetryInterval": 2})
    csms.set(fail={"StartTransaction": 2})  # two CALLERRORs, then the third attempt goes through
    start, tid = start_charging(csms, sim)
    tries = [m["t"] for m in csms.messages(CP) if m["dir"] == "in" and m["msg"] and m["msg"][0] == 2
             and m["msg"][2] == "StartTransaction"]
    assert len(tries) == 3
    assert 1.5 <= tries[1] - tries[0] <= 4 and 3.5 <= tries[2] - tries[1] <= 6  # interval x 1, then x 2
    mark = len(csms.messages())
    csms.set(fail={"MeterValues": 0, "StopTransaction": 3})  # the Stop fails every attempt: dropped
    sim.cmd({"cmd": "unplug"})
    wait_until(lambda: len(csms.calls("StopTransaction", since=mark)) == 3, 20, msg="3 Stop attempts")
    sim.wait_line(r"\[mcu\].*giving up on StopTransaction")
    time.sleep(3)
    assert len(csms.calls("StopTransaction", since=mark)) == 3  # not a fourth time


@pytest.mark.long
def test_websocket_ping_detects_a_dead_link(csms_factory, sim_factory):
    import os
    import signal
    csms, sim = boot(csms_factory, sim_factory, config={"WebSocketPingInterval": 2})
    os.kill(csms.proc.pid, signal.SIGSTOP)  # the server freezes: TCP stays up, nothing answers
    try:
        sim.wait_line(r"\[mcu\].*no traffic for \d+ ms, reconnecting", timeout=30)
    finally:
        os.kill(csms.proc.pid, signal.SIGCONT)
    csms.wait_for("StatusNotification", cp=CP, count=1)  # and it comes back once the server does
    wait_until(lambda: CP in csms.connected(), 40, msg="reconnected")
