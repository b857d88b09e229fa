# Remote Trigger profile (OCPP 1.6 §5.17, digest §2.7): the answer goes out first, then the requested message.
from firmware.ocpp.connector import CONNECTOR
from firmware.ocpp.rpc import STR, INT

_TRIGGER = (("requestedMessage", STR, True, None), ("connectorId", INT, False, 0))
_KNOWN = ("BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification", "Heartbeat",
          "MeterValues", "StatusNotification")


def register(session, app):
    """Installs TriggerMessage on session; app is the charger whose messages it sends."""
    # Requested messages not sent yet. A request for one already waiting is answered by that one: a Central
    # System firing TriggerMessages back to back must not queue a task each (measured: 50 of them exhausted
    # the heap of the 110 KB board, each waiting for its turn to send).
    pending = set()

    def trigger(p):
        what = p["requestedMessage"]
        cid = p.get("connectorId")
        if what not in _KNOWN:
            return {"status": "NotImplemented"}
        if cid is not None and cid > CONNECTOR:
            return {"status": "Rejected"}  # OCTT TC_055: no such connector
        key = (what, cid)
        if key in pending:
            return {"status": "Accepted"}
        pending.add(key)
        return {"status": "Accepted"}, lambda: _send(app, what, cid, pending, key)

    session.handle("TriggerMessage", _TRIGGER, trigger)


async def _send(app, what, cid, pending, key):
    try:
        await _send_one(app, what, cid)
    finally:
        pending.discard(key)


async def _send_one(app, what, cid):
    session = app.session
    if what == "BootNotification":
        await session.send_boot()
    elif what == "Heartbeat":
        await session.heartbeat()
    elif what == "MeterValues":
        conn = app.connector
        await conn.sampler.triggered(conn.transaction_id())
    elif what == "StatusNotification":
        if cid is None or cid == 0:
            await app.core.status_connector0()
        if cid is None or cid == CONNECTOR:
            await app.connector.reporter.send_now()
    else:
        # The running engine's state; Idle when none runs (OCPP 1.6 §4.4, §4.5; firmware/ocpp/fwmgmt.py)
        engine = app.diag if what[0] == "D" else app.updater
        await session.notify(what, {"status": engine.status if engine is not None else "Idle"})
