# OCPP-J framing and validation, byte-exact (OCPP-J 1.6 §4).
import tinytest
from firmware.jsonbuf import JsonBuf
from firmware.ocpp import rpc
from firmware.ocpp.rpc import CallError, STR, INT, ENUM, BOOL, OBJ, LIST, NUM

_OUT = JsonBuf(256)


def _wire(*frame):
    """A frame as the session writes it (its JsonBuf), checked to come out the same from the buffer it falls back
    to on a fragmented heap."""
    text = bytes(_OUT.dump(list(frame))).decode()
    _OUT._n = 0
    import json
    json.dump(list(frame), _OUT)
    assert bytes(_OUT._mv[:_OUT._n]).decode() == text
    return text


def test_encode_call_exact():
    assert _wire(rpc.CALL, "19223201", "BootNotification", {"chargePointVendor": "VendorX"}) == \
        '[2, "19223201", "BootNotification", {"chargePointVendor": "VendorX"}]'


def test_encode_result_and_error_exact():
    assert _wire(rpc.RESULT, "19223201", {"status": "Accepted"}) == '[3, "19223201", {"status": "Accepted"}]'
    assert _wire(rpc.ERROR, "1", "NotImplemented", "unknown action Foo", {}) == \
        '[4, "1", "NotImplemented", "unknown action Foo", {}]'


def test_decode_call():
    assert rpc.decode('[2,"a1","Heartbeat",{}]') == (2, "a1", "Heartbeat", {})
    assert rpc.decode('[2,"a1","Heartbeat",null]') == (2, "a1", "Heartbeat", {})  # OCPP-J: accept null


def test_decode_result_and_error():
    assert rpc.decode('[3,"x",{"currentTime":"2026-01-01T00:00:00Z"}]') == \
        (3, "x", None, {"currentTime": "2026-01-01T00:00:00Z"})
    assert rpc.decode('[4,"x","GenericError","boom",{}]') == (4, "x", "GenericError", ("boom", {}))


def test_unknown_message_type_ignored():
    assert rpc.decode('[5,"x",{}]') is None


def _formation(text):
    e = tinytest.raises(CallError, rpc.decode, text)
    assert e.code == "FormationViolation", e.code
    return e


def test_malformed_frames_are_formation_violations():
    assert _formation("not json").uid is None
    assert _formation('{"a":1}').uid is None
    assert _formation('[2,"x"]').uid is None
    assert _formation('[2,"x","Heartbeat"]').uid == "x"  # id known: the CALLERROR can carry it
    assert _formation('[2,"x","Heartbeat",[]]').uid == "x"
    assert _formation('[2,"x",7,{}]').uid == "x"
    assert _formation('[2,12,"Heartbeat",{}]').uid is None
    assert _formation('[2,"%s","Heartbeat",{}]' % ("i" * 37)).uid is None  # ids are at most 36 chars
    assert _formation('[3,"x",{},1]').uid == "x"


def test_deep_nesting_is_a_formation_violation_not_a_crash():
    e = _formation("[" * 4000 + "1" + "]" * 4000)
    assert e.uid is None
    e = _formation('[2, "d1", "DataTransfer", {"vendorId": "v", "data": ' + "[" * 3000 + "]" * 3000 + "}]")


SPEC = (("idTag", STR, True, 20), ("connectorId", INT, False, 0), ("type", ENUM, False, ("Hard", "Soft")),
        ("flag", BOOL, False, None), ("profile", OBJ, False, None), ("keys", LIST, False, None),
        ("limit", NUM, False, None))


def _code(payload):
    try:
        rpc.validate(payload, SPEC)
    except CallError as e:
        return e.code
    return None


def test_validation_codes():
    assert _code({"idTag": "A"}) is None
    assert _code({"idTag": "A", "connectorId": 1, "type": "Soft", "flag": True, "profile": {}, "keys": [],
                  "limit": 6.5}) is None
    assert _code({}) == "OccurenceConstraintViolation"
    assert _code({"idTag": 5}) == "TypeConstraintViolation"
    assert _code({"idTag": "A" * 21}) == "TypeConstraintViolation"
    assert _code({"idTag": "A", "connectorId": "1"}) == "TypeConstraintViolation"
    assert _code({"idTag": "A", "connectorId": True}) == "TypeConstraintViolation"  # JSON true is no integer
    assert _code({"idTag": "A", "connectorId": -1}) == "PropertyConstraintViolation"
    assert _code({"idTag": "A", "type": "Warm"}) == "PropertyConstraintViolation"
    assert _code({"idTag": "A", "flag": "true"}) == "TypeConstraintViolation"
    assert _code({"idTag": "A", "limit": "6"}) == "TypeConstraintViolation"
    assert _code({"idTag": "A", "extra": 1}) == "FormationViolation"


tinytest.run(globals())
