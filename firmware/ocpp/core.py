# Core profile: the Central System's calls (OCPP 1.6 §5). Each handler validates with a compact spec
# (rpc.validate) and answers with a dict; a tuple (answer, after) runs `after` once the answer is sent.
# ClearCache is Core too, but it empties the authorisation cache: it lives with the list (localauth.py).
# The Core object also holds what the profile asks of the charger besides answering: availability with its
# Scheduled case, connector 0's StatusNotification, the reset sequence, the FlashRecovery report after a boot.
import asyncio

from firmware import log, store
from firmware.ocpp import rpc
from firmware.ocpp.connector import CONNECTOR
from firmware.ocpp.rpc import STR, INT, LIST, OBJ, ENUM

_TAG = "core"
VENDOR_ID = "org.micropython.evse"  # our DataTransfer vendor id (reverse DNS, digest §2.2)

_GET_CONFIGURATION = (("key", LIST, False, None),)
_CHANGE_CONFIGURATION = (("key", STR, True, 50), ("value", STR, True, 500))
_REMOTE_START = (("connectorId", INT, False, None), ("idTag", STR, True, 20), ("chargingProfile", OBJ, False, None))
_REMOTE_STOP = (("transactionId", INT, True, None),)
_RESET = (("type", ENUM, True, ("Hard", "Soft")),)
_UNLOCK = (("connectorId", INT, True, None),)
_AVAILABILITY = (("connectorId", INT, True, 0), ("type", ENUM, True, ("Inoperative", "Operative")))
_DATA_TRANSFER = (("vendorId", STR, True, 255), ("messageId", STR, False, 50), ("data", STR, False, None))


def register(session, app):
    """Installs the Core handlers on session and returns the Core object (App wires its accepted(), the charger
    model its set_availability() and reboot()); app is the charger they act on (every profile module has this
    register(session, app)). Restores the availability kept on flash."""
    c = Core(app)
    session.handle("GetConfiguration", _GET_CONFIGURATION, c.get_configuration)
    session.handle("ChangeConfiguration", _CHANGE_CONFIGURATION, c.change_configuration)
    session.handle("RemoteStartTransaction", _REMOTE_START, c.remote_start)
    session.handle("RemoteStopTransaction", _REMOTE_STOP, c.remote_stop)
    session.handle("Reset", _RESET, c.reset)
    session.handle("UnlockConnector", _UNLOCK, c.unlock)
    session.handle("ChangeAvailability", _AVAILABILITY, c.change_availability)
    session.handle("DataTransfer", _DATA_TRANSFER, c.data_transfer)
    return c


class Core:
    def __init__(self, app):
        self.app = app
        self._avail_path = app.board.state_dir + "/availability.json"
        app.evse.operative = (store.read_json(self._avail_path, None) or {}).get("operative", True)
        self.scheduled_operative = None  # ChangeAvailability waiting for the transaction to end
        self._booted = False
        self._status0_again = False   # kick_status0: connector 0's status changed since the task last sent
        self._status0_running = False
        self._reporting = False

    def get_configuration(self, p):
        cfg = self.app.cfg
        keys = p.get("key")
        if not keys:
            # every key: the session has it written as JSON straight into its send buffer (firmware/jsonbuf.py)
            return lambda buf: cfg.ocpp_items(None, buf)
        for k in keys:
            if not isinstance(k, str):
                raise rpc.CallError(rpc.TYPE, "key entries must be strings")
            if len(k) > 50:
                raise rpc.CallError(rpc.TYPE, "key longer than 50 characters")
        items, unknown = cfg.ocpp_items(keys[:cfg.get("GetConfigurationMaxKeys")])
        out = {"configurationKey": [{"key": k, "readonly": ro, "value": v} for k, ro, v in items]}
        if unknown:
            out["unknownKey"] = unknown
        return out

    def change_configuration(self, p):
        status, reason = self.app.cfg.set(p["key"], p["value"])
        if reason:
            log.info(_TAG, "ChangeConfiguration %s: %s (%s)" % (p["key"], status, reason))
        if status == "Accepted" and p["key"].lower() == "authorizationkey":
            # Security WP A01: reconnect with the new password (the queued messages stay queued).
            return {"status": status}, self.session_restart
        return {"status": status}

    def remote_start(self, p):
        app = self.app
        conn = app.connector
        cid = p.get("connectorId", CONNECTOR)
        if (not app.session.registered or cid != CONNECTOR or conn.tx is not None or conn.pending_tag is not None
                or not app.evse.operative or app.evse.fault):
            return {"status": "Rejected"}
        tag = p["idTag"]
        profile = p.get("chargingProfile")
        if profile is not None and not app.load_smart().validate_tx_profile(profile):
            return {"status": "Rejected"}  # OCTT TC_060: only a TxProfile without transactionId
        ok, res_id = conn.reservations.admits(CONNECTOR, tag, None)
        if not ok:
            return {"status": "Rejected"}  # reserved for another idTag
        if profile is not None and app.smart.install_remote_start_profile(profile) != "Accepted":
            return {"status": "Rejected"}  # the profile store is full
        if app.cfg.get("AuthorizeRemoteTxRequests"):
            return {"status": "Accepted"}, lambda: conn.authorize_start(tag)
        conn.arm(tag, None, res_id)
        return {"status": "Accepted"}

    def remote_stop(self, p):
        conn = self.app.connector
        if conn.tx is None or conn.transaction_id() != p["transactionId"]:
            return {"status": "Rejected"}
        conn.stop("Remote")
        return {"status": "Accepted"}

    def reset(self, p):
        kind = p["type"]
        return {"status": "Accepted"}, lambda: self.reboot(kind)

    async def unlock(self, p):
        app = self.app
        if p["connectorId"] != CONNECTOR or app.evse.cable_variant:
            return {"status": "NotSupported"}
        conn = app.connector
        if conn.tx is not None:
            conn.stop("UnlockCommand")
        app.evse.want_lock = False
        app.evse.update()
        for _ in range(20):  # the lock motor needs a moment; the feedback input tells
            if not app.evse.locked:
                return {"status": "Unlocked"}
            await asyncio.sleep_ms(50)
        return {"status": "UnlockFailed"}

    def change_availability(self, p):
        cid = p["connectorId"]
        if cid not in (0, CONNECTOR):
            return {"status": "Rejected"}
        return {"status": self.set_availability(p["type"] == "Operative")}

    def data_transfer(self, p):
        if p["vendorId"] != VENDOR_ID:
            return {"status": "UnknownVendorId"}
        return {"status": "UnknownMessageId"}

    # ---- what the charger does by itself ----
    def accepted(self):
        """session.on_accepted: the BootNotification was accepted (after a boot or a reconnect)."""
        # After a boot the Central System must see every connector's status; after a mere reconnect only a
        # status that changed while offline (OCPP 1.6 §4.9), which the status reporter notices by itself.
        app = self.app
        if not self._booted:
            self._booted = True
            self.kick_status0()
            app.connector.reporter.resend()
        else:
            app.connector.reporter.kick()
        app.txq.kick()
        if store.notes and not self._reporting:
            self._reporting = True
            asyncio.create_task(self._report_flash())

    async def _report_flash(self):
        # What the store had to recover or lost at boot, told to the Central System as vendor DataTransfers
        # (docs/decisions.md, Flash); a note stays until one is delivered, for the next connection.
        notes = store.notes
        try:
            while notes:
                if await self.app.session.notify("DataTransfer", {"vendorId": VENDOR_ID, "messageId": "FlashRecovery",
                                                                  "data": notes[0]}) is None:
                    break
                notes.pop(0)
        finally:
            self._reporting = False

    def kick_status0(self):
        # One task at most: a Central System toggling availability back to back must not queue a
        # StatusNotification task per toggle (a TriggerMessage flood of that kind exhausted the heap). A change
        # while the task waits for its turn to send is sent in one more round.
        self._status0_again = True
        if not self._status0_running:
            self._status0_running = True
            asyncio.create_task(self._status0_rounds())

    async def _status0_rounds(self):
        try:
            while self._status0_again:
                self._status0_again = False
                await self.status_connector0()
        finally:
            self._status0_running = False

    async def status_connector0(self):
        from firmware import clock
        status = "Available" if self.app.evse.operative else "Unavailable"
        await self.app.session.notify("StatusNotification", {"connectorId": 0, "errorCode": "NoError",
                                                             "status": status, "timestamp": clock.iso()})

    def set_availability(self, operative):
        """ChangeAvailability (from the Central System or a front end): "Accepted", or "Scheduled" when a
        transaction runs and the connector is to become inoperative (applied when it ends, apply_scheduled)."""
        if self.app.connector.tx is not None and not operative:
            self.scheduled_operative = operative
            return "Scheduled"
        self._apply_availability(operative)
        return "Accepted"

    def apply_scheduled(self):
        """Every 100 ms (App's input task): a Scheduled change applies once the transaction has ended."""
        if self.scheduled_operative is not None and self.app.connector.tx is None:
            self._apply_availability(self.scheduled_operative)

    def _apply_availability(self, operative):
        self.scheduled_operative = None
        evse = self.app.evse
        if evse.operative != operative:
            evse.operative = operative
            store.write_json(self._avail_path, {"operative": operative})
            self.kick_status0()
        self.app.connector.tick()

    async def reboot(self, kind):
        """Reset (from the Central System or a front end): the transaction stops, then the board resets."""
        app = self.app
        reason = "HardReset" if kind == "Hard" else "SoftReset"
        app.connector.stop(reason)
        # Soft: give the queue a chance to deliver the StopTransaction; Hard: it goes out after the boot.
        for _ in range(100 if kind == "Soft" else 10):
            if app.connector.stopping is None and not len(app.txq):
                break
            await asyncio.sleep_ms(100)
        log.info(_TAG, "%s reset" % kind)
        await asyncio.sleep_ms(200)  # let the Reset answer leave before the link goes down
        await self.session_restart()
        if app.ring:  # the log ring's buffered lines (firmware/diag/ring.py), when GetDiagnostics started it
            app.ring.flush()
        app.board.reset()

    async def session_restart(self):
        ws = self.app.session.ws
        if ws is not None:
            await ws.close()
