"""Reservation and Remote Trigger profiles through the Central System and the virtual board (issue 4).
Test names carry the OCTT test case id (digest §5)."""
import datetime
import time

from conftest import wait_until
from core_helpers import CP, boot, status_seen, board_until, in_calls


def _in(seconds):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _reserve(csms, reservation_id=7, tag="TAG1", connector=1, seconds=300, parent=None):
    p = {"connectorId": connector, "expiryDate": _in(seconds), "idTag": tag, "reservationId": reservation_id}
    if parent:
        p["parentIdTag"] = parent
    return csms.call(CP, "ReserveNow", p)["status"]


def test_tc046_reserved_connector_local_start_carries_the_reservation(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, csms_kwargs={"tags": ("TAG1", "TAG2")})
    assert _reserve(csms) == "Accepted"
    status_seen(csms, "Reserved")
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "C", "max_a": 16})
    mark = len(csms.messages())
    sim.cmd({"cmd": "tag", "id": "TAG2"})  # somebody else: refused, no energy
    csms.wait_for("Authorize", cp=CP, since=mark)
    time.sleep(1)
    assert csms.calls("StartTransaction") == [] and not sim.status()["contactor"]
    sim.cmd({"cmd": "tag", "id": "TAG1"})
    start = csms.wait_for("StartTransaction", cp=CP)
    assert start["reservationId"] == 7 and start["idTag"] == "TAG1"
    board_until(sim, lambda s: s["contactor"], msg="charging")
    assert csms.call(CP, "CancelReservation", {"reservationId": 7}) == {"status": "Rejected"}  # consumed


def test_tc046_2_reserved_connector_remote_start(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, csms_kwargs={"tags": ("TAG1", "TAG2")})
    assert _reserve(csms, reservation_id=11) == "Accepted"
    assert csms.call(CP, "RemoteStartTransaction", {"idTag": "TAG2", "connectorId": 1}) == {"status": "Rejected"}
    assert csms.call(CP, "RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 1}) == {"status": "Accepted"}
    sim.cmd({"cmd": "plug", "cable_a": 32})
    assert csms.wait_for("StartTransaction", cp=CP)["reservationId"] == 11


def test_tc047_reservation_expires(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    assert _reserve(csms, seconds=3) == "Accepted"
    status_seen(csms, "Reserved")
    status_seen(csms, "Available", count=2, timeout=15)


def test_tc048_reserve_statuses_and_replacement(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, csms_kwargs={"tags": ("TAG1", "TAG2")})
    assert _reserve(csms, reservation_id=1) == "Accepted"
    assert _reserve(csms, reservation_id=2, tag="TAG2") == "Occupied"  # already reserved
    assert _reserve(csms, reservation_id=1, tag="TAG2") == "Accepted"  # same id: replaced
    assert _reserve(csms, reservation_id=3, connector=2) == "Rejected"
    assert csms.call(CP, "CancelReservation", {"reservationId": 99}) == {"status": "Rejected"}  # TC_052
    assert csms.call(CP, "CancelReservation", {"reservationId": 1}) == {"status": "Accepted"}  # TC_051
    status_seen(csms, "Available", count=2)
    sim.cmd({"cmd": "plug", "cable_a": 32})
    status_seen(csms, "Preparing")
    assert _reserve(csms, reservation_id=4) == "Occupied"  # TC_048_2
    sim.cmd({"cmd": "unplug"})
    assert csms.call(CP, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})["status"] == "Accepted"
    status_seen(csms, "Unavailable")
    assert _reserve(csms, reservation_id=5) == "Unavailable"  # TC_048_3
    assert csms.call(CP, "ChangeAvailability", {"connectorId": 1, "type": "Operative"})["status"] == "Accepted"
    sim.cmd({"cmd": "fault", "kind": "rcd", "on": True})
    status_seen(csms, "Faulted")
    assert _reserve(csms, reservation_id=6) == "Faulted"  # TC_048_1


def test_tc049_reserve_connector_zero_and_tc053_parent_tag(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory, csms_kwargs={"tags": ("TAG1", "TAG2")})
    csms.set(parents={"TAG2": "GROUP"})
    assert _reserve(csms, reservation_id=21, connector=0, tag="TAG1", parent="GROUP") == "Accepted"
    status_seen(csms, "Reserved")  # a real connector shows the reservation (MicroOcpp #434)
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "tag", "id": "TAG2"})  # another card of the same group may use it (TC_053)
    assert csms.wait_for("StartTransaction", cp=CP)["reservationId"] == 21


def test_reservation_survives_a_reboot(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    assert _reserve(csms, reservation_id=31) == "Accepted"
    status_seen(csms, "Reserved")  # reported before the power cut
    sim.cmd({"cmd": "power", "on": False})
    sim.cmd({"cmd": "power", "on": True})
    csms.wait_for("BootNotification", cp=CP, count=2)
    status_seen(csms, "Reserved", count=2)
    assert csms.call(CP, "CancelReservation", {"reservationId": 31}) == {"status": "Accepted"}


def test_tc054_trigger_messages_answer_first_then_send(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    for what, expect in (("Heartbeat", "Heartbeat"), ("BootNotification", "BootNotification"),
                         ("StatusNotification", "StatusNotification"), ("MeterValues", "MeterValues"),
                         ("FirmwareStatusNotification", "FirmwareStatusNotification"),
                         ("DiagnosticsStatusNotification", "DiagnosticsStatusNotification")):
        mark = len(csms.messages())
        assert csms.call(CP, "TriggerMessage", {"requestedMessage": what}) == {"status": "Accepted"}, what
        payload = csms.wait_for(expect, cp=CP, since=mark, timeout=10)
        msgs = csms.messages(CP)[mark:]
        answer = next(i for i, m in enumerate(msgs) if m["dir"] == "in" and m["msg"] and m["msg"][0] == 3)
        sent = next(i for i, m in enumerate(msgs) if m["dir"] == "in" and m["msg"] and m["msg"][0] == 2
                    and m["msg"][2] == expect)
        assert answer < sent, what  # the TriggerMessage answer goes out before the triggered message
        if what == "MeterValues":
            assert payload["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
        if what.endswith("StatusNotification") and what != "StatusNotification":
            assert payload["status"] == "Idle"
    mark = len(csms.messages())
    csms.call(CP, "TriggerMessage", {"requestedMessage": "StatusNotification"})
    wait_until(lambda: {p["connectorId"] for p in csms.calls("StatusNotification", since=mark)} == {0, 1}, 10,
               msg="status for connectors 0 and 1")
    mark = len(csms.messages())
    csms.call(CP, "TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1})
    assert csms.wait_for("StatusNotification", cp=CP, since=mark)["connectorId"] == 1


def test_tc055_trigger_rejected_and_not_implemented(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    assert csms.call(CP, "TriggerMessage", {"requestedMessage": "Heartbeat", "connectorId": 5}) == \
        {"status": "Rejected"}
    reply = csms.raw(CP, '[2,"t1","TriggerMessage",{"requestedMessage":"SignChargePointCertificate"}]')
    assert reply == [3, "t1", {"status": "NotImplemented"}]


def test_trigger_boot_while_pending(csms_factory, sim_factory):
    csms = csms_factory(boot_status="Pending", interval=120)
    sim_factory(csms.url)
    csms.wait_for("BootNotification", cp=CP)
    csms.set(boot_status="Accepted")
    assert csms.call(CP, "TriggerMessage", {"requestedMessage": "BootNotification"}) == {"status": "Accepted"}
    csms.wait_for("BootNotification", cp=CP, count=2, timeout=10)  # long before the 120 s interval
    status_seen(csms, "Available")
