# OCPP-J 1.6 framing (OCPP-J §4): CALL / CALLRESULT / CALLERROR arrays and compact payload validation.
import gc
import json
from micropython import const

CALL = const(2)
RESULT = const(3)
ERROR = const(4)
_MAX_ID = const(36)  # OCPP-J §4.1.4: uniqueId is at most 36 characters

# OCPP-J 1.6 Table 7, with the 1.6 spellings kept by the errata (digest §1.3).
NOT_IMPLEMENTED = "NotImplemented"
NOT_SUPPORTED = "NotSupported"
INTERNAL = "InternalError"
PROTOCOL = "ProtocolError"
SECURITY = "SecurityError"
FORMATION = "FormationViolation"
PROPERTY = "PropertyConstraintViolation"
OCCURENCE = "OccurenceConstraintViolation"
TYPE = "TypeConstraintViolation"
GENERIC = "GenericError"


class CallError(Exception):
    def __init__(self, code, description=""):
        super().__init__(code, description)
        self.code = code
        self.description = description


class BadAnswer(CallError):
    # A CALLRESULT that does not fit the answer schema of our CALL: handled like a CALLERROR (a failed attempt).
    pass


def decode(text):
    """Returns (type, uid, action, payload) for CALL, (type, uid, None, payload) for CALLRESULT and
    (type, uid, code, (description, details)) for CALLERROR; None for a frame to ignore.
    Raises CallError(FORMATION) with .uid set (or None) when the frame is not a valid OCPP-J message."""
    try:
        msg = json.loads(text)
    except (ValueError, TypeError):
        raise _bad(None, "invalid JSON")
    except (RuntimeError, MemoryError):  # nesting deeper than the parser's stack, or than the heap holds
        msg = None
        gc.collect()
        raise _bad(None, "JSON nested too deep or too large")
    if not isinstance(msg, list) or len(msg) < 3:
        raise _bad(None, "a message must be a JSON array of 3 to 5 elements")
    kind, uid = msg[0], msg[1]
    if not isinstance(uid, str) or not uid or len(uid) > _MAX_ID:
        raise _bad(None, "uniqueId must be a string of 1 to 36 characters")
    if kind == CALL:
        if len(msg) != 4 or not isinstance(msg[2], str):
            raise _bad(uid, "a CALL is [2, uniqueId, action, payload]")
        payload = msg[3]
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise _bad(uid, "payload must be an object")
        return CALL, uid, msg[2], payload
    if kind == RESULT:
        if len(msg) != 3:
            raise _bad(uid, "a CALLRESULT is [3, uniqueId, payload]")
        return RESULT, uid, None, msg[2] if msg[2] is not None else {}
    if kind == ERROR:
        if len(msg) != 5 or not isinstance(msg[2], str):
            raise _bad(uid, "a CALLERROR is [4, uniqueId, code, description, details]")
        return ERROR, uid, msg[2], (msg[3], msg[4])
    return None  # OCPP-J §4.1.3: unknown message type numbers are ignored


def _bad(uid, why):
    e = CallError(FORMATION, why)
    e.uid = uid
    return e


# Field kinds for validate(). A spec is a tuple of (name, kind, required, limit) where limit is the maximum
# string length for STR, a tuple of allowed values for ENUM, the minimum value for INT and the spec of its
# fields for OBJ (None = no bound).
STR = const(1)
INT = const(2)
BOOL = const(3)
OBJ = const(4)
LIST = const(5)
ENUM = const(6)
NUM = const(7)
TIME = const(8)  # ISO 8601 date-time string


def validate(payload, spec, extra_ok=False):
    """Checks a received payload against a spec; raises CallError with the Table 7 code (decision: docs/decisions.md).
    extra_ok: fields the spec does not name are allowed (answers to our CALLs)."""
    if not extra_ok:
        for key in payload:  # no list of the names: every CALL validates, and the garbage adds up
            for f in spec:
                if f[0] == key:
                    break
            else:
                raise CallError(FORMATION, "unknown field " + key)
    for name, kind, required, limit in spec:
        if name not in payload:
            if required:
                raise CallError(OCCURENCE, "missing required field " + name)
            continue
        value = payload[name]
        _check(name, value, kind, limit)
        if kind == OBJ and limit is not None:
            try:
                validate(value, limit, extra_ok)
            except CallError as e:
                raise CallError(e.code, "%s: %s" % (name, e.description))


def _check(name, value, kind, limit):
    if kind == STR or kind == ENUM or kind == TIME:
        if not isinstance(value, str):
            raise CallError(TYPE, name + " must be a string")
        if kind == STR and limit is not None and len(value) > limit:
            raise CallError(TYPE, "%s longer than %d characters" % (name, limit))
        if kind == ENUM and value not in limit:
            raise CallError(PROPERTY, "%s: %s is not one of %s" % (name, value, ",".join(limit)))
        if kind == TIME and _iso_ok(value) is False:
            raise CallError(PROPERTY, name + " is not an ISO 8601 date-time")
    elif kind == INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise CallError(TYPE, name + " must be an integer")
        if limit is not None and value < limit:
            raise CallError(PROPERTY, "%s must be >= %d" % (name, limit))
    elif kind == NUM:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CallError(TYPE, name + " must be a number")
    elif kind == BOOL:
        if not isinstance(value, bool):
            raise CallError(TYPE, name + " must be a boolean")
    elif kind == OBJ:
        if not isinstance(value, dict):
            raise CallError(TYPE, name + " must be an object")
    elif kind == LIST:
        if not isinstance(value, list):
            raise CallError(TYPE, name + " must be an array")


def _iso_ok(text):
    # Cheap shape check; clock.parse_iso does the real parsing where the value is used.
    return len(text) >= 19 and text[4] == "-" and text[7] == "-" and text[10] in "Tt" and text[13] == ":"
