# firmware/ocpp/status.py StatusReporter: connector 1's status from one view of the EVSE and the connector, and its
# StatusNotifications (MinimumStatusDuration, resend after a boot, a failed call retried), with a fake EVSE model
# and a fake session; the real Config.
import asyncio
import time
import tinytest
from firmware.config import Config
from firmware.ocpp.status import StatusReporter


class Evse:
    # The fields of firmware/evse.py the status is computed from.
    def __init__(self):
        self.fault = None
        self.fault_info = ""
        self.fault_code = 0
        self.operative = True
        self.ev_connected = False
        self.allow = False
        self.offer_da = 0
        self.contactor = False


class Session:
    registered = True
    online = True

    def __init__(self):
        self.sent = []
        self.fail = False

    async def notify(self, action, payload):
        await asyncio.sleep_ms(0)
        if self.fail:
            return None  # what session.notify returns when the call failed (it logs it)
        self.sent.append(payload)
        return {}


class NoReservation:
    def active(self, connector_id):
        return False


class Reserved:
    def active(self, connector_id):
        return connector_id == 1


class View:
    # What the reporter reads of the connector at a tick.
    def __init__(self):
        self.tx = None
        self.finishing = False
        self.pending_tag = None
        self.reservations = NoReservation()

    def set(self, tx=False, finishing=False, pending=False, reserved=False):
        self.tx = object() if tx else None
        self.finishing = finishing
        self.pending_tag = "TAG1" if pending else None
        self.reservations = Reserved() if reserved else NoReservation()


def _rig(**keys):
    cfg = Config(tinytest.tempdir("status"))
    for k, v in keys.items():
        assert cfg.set(k, v)[0] == "Accepted", k
    evse = Evse()
    session = Session()
    view = View()
    r = StatusReporter(view, session, evse, cfg, time.ticks_ms)

    def update(*args, **kw):
        view.set(*args, **kw)
        r.update()
    r.see = update  # the view of one tick, then the update the connector makes
    return r, evse, session


async def _until(cond, ms=3000):
    t0 = time.ticks_ms()
    while not cond():
        assert time.ticks_diff(time.ticks_ms(), t0) < ms, "condition never held"
        await asyncio.sleep_ms(10)


# ---- the status ----
def test_a_charge_session_goes_through_its_statuses():
    r, evse, _ = _rig()
    seen = []

    def view(tx=False, finishing=False, pending=False, reserved=False):
        r.see(tx, finishing, pending, reserved)
        if not seen or seen[-1] != r.status:
            seen.append(r.status)

    assert r.status is None and r.compute() == "Available"  # before the first tick (the charger model asks)
    view()
    evse.ev_connected = True  # plugged in
    view()
    view(pending=True)  # a card authorised
    evse.allow = True  # the transaction started; the EV does not draw yet
    evse.offer_da = 160
    view(tx=True)
    evse.contactor = True
    view(tx=True)
    evse.contactor = False  # the EV paused
    view(tx=True)
    evse.allow = False  # the transaction stopped, the cable still in
    view(finishing=True)
    evse.ev_connected = False
    view()
    assert seen == ["Available", "Preparing", "SuspendedEV", "Charging", "SuspendedEV", "Finishing", "Available"], seen


def test_no_preparing_while_a_transaction_is_open():
    # The unplug race of issue 9: the EV still seen connected, the contactor already open by the watch, the
    # transaction not stopped yet. Whatever the EVSE shows, an open transaction is never Preparing.
    r, evse, _ = _rig()
    evse.allow = True
    evse.offer_da = 160
    evse.contactor = True
    r.see(True, False, False, False)
    assert r.status == "Charging"
    for connected in (True, False):
        for contactor in (True, False):
            evse.ev_connected = connected
            evse.contactor = contactor
            r.see(True, False, True, False)
            assert r.status in ("Charging", "SuspendedEV"), (connected, contactor, r.status)
    evse.contactor = False
    evse.offer_da = 0  # the arbiter offers nothing (a 0 A profile)
    r.see(True, False, False, False)
    assert r.status == "SuspendedEVSE"
    evse.operative = False  # inoperative scheduled while the transaction runs: it keeps its status
    r.see(True, False, False, False)
    assert r.status == "SuspendedEVSE"


def test_fault_first_then_availability_then_reservation():
    r, evse, _ = _rig()
    r.see(False, False, False, True)
    assert r.status == "Reserved" and r.error_code() == "NoError"
    evse.operative = False
    r.see(False, False, False, True)
    assert r.status == "Unavailable"
    evse.fault = "GroundFailure"
    r.see(True, True, True, True)
    assert r.status == "Faulted" and r.error_code() == "GroundFailure"


# ---- StatusNotification ----
async def test_a_status_goes_out_once_it_lasted_minimum_status_duration():
    r, evse, session = _rig(MinimumStatusDuration="1")
    task = asyncio.create_task(r.report())
    r.see(False, False, False, False)
    r.resend()
    await _until(lambda: len(session.sent) == 1)
    assert session.sent[0]["status"] == "Available" and session.sent[0]["connectorId"] == 1
    evse.ev_connected = True
    r.see(False, False, False, False)  # Preparing for a moment only
    await asyncio.sleep_ms(300)
    evse.ev_connected = False
    r.see(False, False, False, False)
    await asyncio.sleep_ms(1200)
    assert len(session.sent) == 1  # back to what the Central System has: nothing to tell
    evse.ev_connected = True
    r.see(False, False, False, False)
    t0 = time.ticks_ms()
    await _until(lambda: len(session.sent) == 2)
    assert time.ticks_diff(time.ticks_ms(), t0) >= 1000 and session.sent[1]["status"] == "Preparing"
    task.cancel()


async def test_a_failed_notification_is_sent_again_and_a_fault_carries_its_info():
    r, evse, session = _rig()
    task = asyncio.create_task(r.report())
    session.fail = True
    evse.fault = "ConnectorLockFailure"
    evse.fault_info = "connector lock did not engage"
    evse.fault_code = 6
    r.see(False, False, False, False)
    await asyncio.sleep_ms(100)
    assert session.sent == [] and r.reported is None
    session.fail = False
    await _until(lambda: session.sent)  # retried after 2 s
    (p,) = session.sent
    assert (p["status"], p["errorCode"], p["info"], p["vendorErrorCode"]) == \
        ("Faulted", "ConnectorLockFailure", "connector lock did not engage", "EVSE-6")
    assert r.reported == "Faulted"
    task.cancel()


async def test_after_a_reconnect_only_a_changed_status_goes_out_after_a_boot_the_current_one():
    r, evse, session = _rig()
    task = asyncio.create_task(r.report())
    r.see(False, False, False, False)
    await _until(lambda: session.sent)
    r.kick()  # a reconnect: the Central System has Available already
    await asyncio.sleep_ms(100)
    assert len(session.sent) == 1
    r.resend()  # BootNotification accepted: it must see the current status
    await _until(lambda: len(session.sent) == 2)
    await asyncio.wait_for_ms(r.send_now(), 1000)  # TriggerMessage: sent even though it has it
    assert [p["status"] for p in session.sent] == ["Available"] * 3
    task.cancel()


tinytest.run(globals())
