# LocalAuthListManagement profile (OCPP 1.6 §5.9, §5.15): the Central System reads the list version and
# replaces or patches the Local Authorization List. Entries are checked by hand with the CALLERROR codes of
# docs/decisions.md; what is left (versions, sizes, duplicates, storage) becomes a SendLocalList status.
# Core's ClearCache (§5.4) is here too: it is the other Central System call on firmware/ocpp/auth.py, and so
# the three load together on first use.
from micropython import const

from firmware import clock
from firmware.ocpp import rpc
from firmware.ocpp.auth import STATUSES
from firmware.ocpp.rpc import INT, LIST, ENUM

_GET_VERSION = ()
_SEND = (("listVersion", INT, True, None), ("updateType", ENUM, True, ("Differential", "Full")),
         ("localAuthorizationList", LIST, False, None))
_ID_MAX = const(20)  # IdToken: CiString20Type
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


def _required_str(obj, name, where):
    if name not in obj:
        raise rpc.CallError(rpc.OCCURENCE, "%smissing required field %s" % (where, name))
    value = obj[name]
    if not isinstance(value, str):
        raise rpc.CallError(rpc.TYPE, "%s%s must be a string" % (where, name))
    return value


def check_entry(e, full):
    """One AuthorizationData entry; raises rpc.CallError with the codes and texts of rpc.validate. One pass in
    one function, not rpc.validate twice: each call's frame, and each of its field checks', comes from the heap
    and counts toward the next collection. Eight entries: 280 us that way, 125 with rpc._check per field, 60
    with the texts written here (issue 14)."""
    if not isinstance(e, dict):
        raise rpc.CallError(rpc.TYPE, "localAuthorizationList entries must be objects")
    for key in e:
        if key != "idTag" and key != "idTagInfo":
            raise rpc.CallError(rpc.FORMATION, "unknown field " + key)
    tag = _required_str(e, "idTag", "")
    if len(tag) > _ID_MAX:
        raise rpc.CallError(rpc.TYPE, "idTag longer than 20 characters")
    if "idTagInfo" not in e:
        if full:  # OCPP 1.6 §7.2 AuthorizationData: idTagInfo is required when updateType is Full
            raise rpc.CallError(rpc.OCCURENCE, "idTagInfo missing for %s in a Full update" % tag)
        return
    info = e["idTagInfo"]
    if not isinstance(info, dict):
        raise rpc.CallError(rpc.TYPE, "idTagInfo must be an object")
    for key in info:
        if key != "status" and key != "expiryDate" and key != "parentIdTag":
            raise rpc.CallError(rpc.FORMATION, "idTagInfo: unknown field " + key)
    status = _required_str(info, "status", "idTagInfo: ")
    if status not in STATUSES:
        raise rpc.CallError(rpc.PROPERTY, "idTagInfo: status: %s is not one of %s" % (status, ",".join(STATUSES)))
    if "expiryDate" in info:
        exp = info["expiryDate"]
        if not isinstance(exp, str):
            raise rpc.CallError(rpc.TYPE, "idTagInfo: expiryDate must be a string")
        if clock.parse_iso(exp) is None:
            raise rpc.CallError(rpc.PROPERTY, "expiryDate %s is not an ISO 8601 date-time" % exp)
    if "parentIdTag" in info:
        parent = info["parentIdTag"]
        if not isinstance(parent, str):
            raise rpc.CallError(rpc.TYPE, "idTagInfo: parentIdTag must be a string")
        if len(parent) > _ID_MAX:
            raise rpc.CallError(rpc.TYPE, "idTagInfo: parentIdTag longer than 20 characters")
