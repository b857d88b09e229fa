# LocalAuthListManagement profile (OCPP 1.6 §5.9, §5.15): the Central System reads the list version and
# replaces or patches the Local Authorization List. Entries are checked by hand with the CALLERROR codes of
# docs/decisions.md; what is left (versions, sizes, duplicates, storage) becomes a SendLocalList status.
# Core's ClearCache (§5.4) is here too: it is the other Central System call on firmware/ocpp/auth.py, and so
# the three load together on first use.
from firmware import clock
from firmware.ocpp import rpc
from firmware.ocpp.auth import STATUSES
from firmware.ocpp.rpc import STR, INT, OBJ, LIST, ENUM, TIME

_GET_VERSION = ()
_SEND = (("listVersion", INT, True, None), ("updateType", ENUM, True, ("Differential", "Full")),
         ("localAuthorizationList", LIST, False, None))
_ENTRY = (("idTag", STR, True, 20), ("idTagInfo", OBJ, False, None))
_INFO = (("status", ENUM, True, STATUSES), ("expiryDate", TIME, False, None), ("parentIdTag", STR, False, 20))
_CLEAR_CACHE = ()  # ClearCache.req has no fields


def register(session, app):
    """Installs GetLocalListVersion, SendLocalList and ClearCache on session, acting on app.auth."""
    auth = app.auth
    session.handle("GetLocalListVersion", _GET_VERSION, lambda p: {"listVersion": auth.list_version()})
    session.handle("SendLocalList", _SEND, lambda p: _send_local_list(auth, p))
    session.handle("ClearCache", _CLEAR_CACHE, lambda p: {"status": "Accepted" if auth.clear_cache() else "Rejected"})


def _send_local_list(auth, p):
    entries = p.get("localAuthorizationList") or []
    # A message over SendLocalListMaxLength is Failed whatever it holds: no need to read its entries.
    if len(entries) <= auth.cfg.get("SendLocalListMaxLength"):
        full = p["updateType"] == "Full"
        for e in entries:
            check_entry(e, full)
    return {"status": auth.send_local_list(p["listVersion"], p["updateType"], entries)}


def check_entry(e, full):
    """One AuthorizationData entry; raises rpc.CallError like rpc.validate."""
    if not isinstance(e, dict):
        raise rpc.CallError(rpc.TYPE, "localAuthorizationList entries must be objects")
    rpc.validate(e, _ENTRY)
    info = e.get("idTagInfo")
    if info is None:
        if full:  # OCPP 1.6 §7.2 AuthorizationData: idTagInfo is required when updateType is Full
            raise rpc.CallError(rpc.OCCURENCE, "idTagInfo missing for %s in a Full update" % e["idTag"])
        return
    rpc.validate(info, _INFO)
    exp = info.get("expiryDate")
    if exp is not None and clock.parse_iso(exp) is None:
        raise rpc.CallError(rpc.PROPERTY, "expiryDate %s is not an ISO 8601 date-time" % exp)
