# Core profile: the Central System's calls (OCPP 1.6 §5). Each handler validates with a compact spec
# (rpc.validate) and answers with a dict; a tuple (answer, after) runs `after` once the answer is sent.
# ClearCache is Core too, but it empties the authorisation cache: it lives with the list (localauth.py).
import asyncio

from firmware import log
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
    """Installs the Core handlers on session; app is the charger they act on (every profile module has this
    register(session, app))."""
    c = Core(app)
    session.handle("GetConfiguration", _GET_CONFIGURATION, c.get_configuration)
    session.handle("ChangeConfiguration", _CHANGE_CONFIGURATION, c.change_configuration)
    session.handle("RemoteStartTransaction", _REMOTE_START, c.remote_start)
    session.handle("RemoteStopTransaction", _REMOTE_STOP, c.remote_stop)
    session.handle("Reset", _RESET, c.reset)
    session.handle("UnlockConnector", _UNLOCK, c.unlock)
    session.handle("ChangeAvailability", _AVAILABILITY, c.change_availability)
    session.handle("DataTransfer", _DATA_TRANSFER, c.data_transfer)


class Core:
    def __init__(self, app):
        self.app = app

    def get_configuration(self, p):
        cfg = self.app.cfg
        keys = p.get("key")
        if not keys:
            items = cfg.ocpp_items()
            unknown = []
        else:
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
            return {"status": status}, self.app.session_restart
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
        return {"status": "Accepted"}, lambda: self.app.reboot(kind)

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
        return {"status": self.app.set_availability(p["type"] == "Operative")}

    def data_transfer(self, p):
        if p["vendorId"] != VENDOR_ID:
            return {"status": "UnknownVendorId"}
        return {"status": "UnknownMessageId"}
