"""Seeded generator of bad OCPP-J frames with the answer docs/decisions.md's CALLERROR table expects for each.

    from fuzzframes import Fuzzer
    for case in Fuzzer(seed=1).cases(10000): ...   # case: dict text (str), kind, expect

expect is one of
    ("error", code, uid)  a CALLERROR with that code and uniqueId (uid "-1": the frame's id is unreadable)
    ("error", None, uid)  a CALLERROR with that id whose code the table leaves open (e.g. a bad date format)
    ("answer", None, uid) any CALLRESULT or CALLERROR except InternalError (a valid payload may be refused)
    ("none",)             no answer at all (CALLRESULT/CALLERROR for an id we never sent, unknown type number)
    ("close",)            the charger may close the connection (a frame over its 16 KB limit)
Payload mutations start from valid payloads and change exactly one thing; the expected code comes from
validating the result against the OCPP 1.6 JSON schemas shipped with the `ocpp` package, mapped through the
decisions table (required -> OccurenceConstraintViolation, type / maxLength -> TypeConstraintViolation,
enum / minimum -> PropertyConstraintViolation, additionalProperties -> FormationViolation).
"""
import copy
import json
import os
import random

import jsonschema
import ocpp

SCHEMAS = os.path.join(os.path.dirname(ocpp.__file__), "v16", "schemas")
FORMATION = "FormationViolation"
OCCURENCE = "OccurenceConstraintViolation"
TYPE = "TypeConstraintViolation"
PROPERTY = "PropertyConstraintViolation"
CODE_OF = {"required": OCCURENCE, "type": TYPE, "maxLength": TYPE, "enum": PROPERTY, "minimum": PROPERTY,
           "maximum": PROPERTY, "exclusiveMinimum": PROPERTY, "additionalProperties": FORMATION}
MAX_FRAME = 16384   # lib/ws.py's default max_frame
ROOMY_MSG = 4096    # larger messages may find no heap block on a 110 KB board (docs/decisions.md)

# Valid payloads of the calls that are safe to throw at a charger in a test (no Reset, no firmware update).
BASE = {
    "GetConfiguration": {"key": ["HeartbeatInterval", "LightIntensity"]},
    "ChangeConfiguration": {"key": "LightIntensity", "value": "90"},
    "TriggerMessage": {"requestedMessage": "StatusNotification", "connectorId": 1},
    "SendLocalList": {"listVersion": 5, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "FUZZ1", "idTagInfo": {"status": "Blocked", "expiryDate": "2030-01-01T00:00:00Z"}},
        {"idTag": "FUZZ2", "idTagInfo": {"status": "Invalid", "parentIdTag": "P1"}}]},
    "GetLocalListVersion": {},
    "SetChargingProfile": {"connectorId": 0, "csChargingProfiles": {
        "chargingProfileId": 7, "stackLevel": 2, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "chargingRateUnit": "A", "startSchedule": "2024-01-01T00:00:00Z", "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": 10.0}, {"startPeriod": 600, "limit": 8.0, "numberPhases": 3}]}}},
    "ClearChargingProfile": {"id": 99},
    "GetCompositeSchedule": {"connectorId": 1, "duration": 600, "chargingRateUnit": "A"},
    "RemoteStartTransaction": {"connectorId": 1, "idTag": "FUZZ3"},
    "RemoteStopTransaction": {"transactionId": 987654},
    "DataTransfer": {"vendorId": "fuzz", "messageId": "m", "data": "d"},
    "ReserveNow": {"connectorId": 1, "expiryDate": "2020-01-01T00:00:00Z", "idTag": "FUZZ4", "reservationId": 3},
    "CancelReservation": {"reservationId": 3},
    "UnlockConnector": {"connectorId": 1},
    "ChangeAvailability": {"connectorId": 1, "type": "Operative"},
    "ClearCache": {},
}
# FirmwareManagement calls without their required location (every 1.6 action has a handler since issue 11)
NO_LOCATION = ("GetDiagnostics", "UpdateFirmware")
SAMPLES = ("", "x", 0, -1, 1.5, True, False, None, [], {}, [1], {"a": 1}, "2024-13-45T99:99:99Z", 2 ** 40, -2 ** 40)


def _schema(action):
    with open(os.path.join(SCHEMAS, action + ".json")) as f:
        return json.load(f)


def _paths(value, path=()):
    """Every (path, value) inside a payload, containers included (not the root)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path + (k,), v
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield path + (i,), v
            yield from _paths(v, path + (i,))


def _set(payload, path, value):
    obj = payload
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _del(payload, path):
    obj = payload
    for p in path[:-1]:
        obj = obj[p]
    del obj[path[-1]]


def deep(depth, leaf=1):
    return "[" * depth + json.dumps(leaf) + "]" * depth


class Fuzzer:
    def __init__(self, seed=1):
        self.rnd = random.Random(seed)
        self.n = 0
        self.validators = {a: jsonschema.Draft4Validator(_schema(a)) for a in BASE}

    def uid(self):
        self.n += 1
        return "fz%d" % self.n

    def expect_payload(self, action, payload, uid):
        """What the table says a CALL of action with this payload must get."""
        errors = list(self.validators[action].iter_errors(payload))
        if not errors:
            return ("answer", None, uid)
        if action == "TriggerMessage" and all(list(e.path) == ["requestedMessage"] and e.validator == "enum"
                                              for e in errors):
            return ("answer", None, uid)  # {"status": "NotImplemented"}: docs/decisions.md, TriggerMessage
        codes = {CODE_OF.get(e.validator) for e in errors}
        if len(codes) == 1 and None not in codes:
            return ("error", codes.pop(), uid)
        return ("error", None, uid)

    # ---- generators: each returns (kind, text, expect) ----

    def g_invalid_json(self):
        r = self.rnd
        good = json.dumps([2, self.uid(), "GetLocalListVersion", {}])
        choice = r.randrange(5)
        if choice == 0:
            text = good[:r.randrange(1, len(good) - 1)]
        elif choice == 1:
            text = "".join(chr(r.randrange(32, 127)) for _ in range(r.randrange(1, 60)))
            try:
                json.loads(text)
                text = "{" + text
            except ValueError:
                pass
        elif choice == 2:
            text = good.replace(",", ";", 1)
        elif choice == 3:
            text = "[2, 'single', \"x\", {}]"
        else:
            text = good + "]"
        return "invalid_json", text, ("error", FORMATION, "-1")

    def g_not_array(self):
        r = self.rnd
        value = r.choice([{}, {"a": 1}, 2, "s", None, True, [], [2], [2, "x"], [3, "y"]])
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str):
            pass
        return "not_array", json.dumps(value), ("error", FORMATION, "-1")

    def g_bad_uid(self):
        r = self.rnd
        uid = r.choice([None, 5, 1.5, True, [], {}, "", "u" * r.randrange(37, 200)])
        return "bad_uid", json.dumps([2, uid, "GetLocalListVersion", {}]), ("error", FORMATION, "-1")

    def g_bad_shape(self):
        r = self.rnd
        uid = self.uid()
        choice = r.randrange(5)
        if choice == 0:
            frame = [2, uid, "GetLocalListVersion"]
        elif choice == 1:
            frame = [2, uid, "GetLocalListVersion", {}, {}]
        elif choice == 2:
            frame = [2, uid, r.choice([5, None, [], {}]), {}]
        elif choice == 3:
            frame = [2, uid, "GetLocalListVersion", r.choice([[], 1, "x", True, [{}]])]
        else:
            frame = [3, uid, {}, {}]
        return "bad_shape", json.dumps(frame), ("error", FORMATION, uid)

    def g_unknown_action(self):
        r = self.rnd
        uid = self.uid()
        if r.random() < 0.3:
            action = r.choice(NO_LOCATION)
            return "no_location", json.dumps([2, uid, action, {}]), ("error", OCCURENCE, uid)
        action = r.choice(["Foo", "getconfiguration", "BootNotification", "Heartbeat", "X" * 30,
                           "StartTransaction", "Authorize", "SetVariables", "\u00e9\u00e8"])
        return "unknown_action", json.dumps([2, uid, action, {}]), ("error", "NotImplemented", uid)

    def g_stray_answer(self):
        r = self.rnd
        uid = "never-%d" % r.randrange(10 ** 6)
        if r.random() < 0.5:
            frame = [3, uid, r.choice([{}, {"status": "Accepted"}, None, {"a": [1, 2]}])]
        else:
            frame = [4, uid, "GenericError", "x", {}]
        return "stray_answer", json.dumps(frame), ("none",)

    def g_unknown_type(self):
        r = self.rnd
        frame = [r.choice([0, 1, 5, 99, -1, "2", 2.5]), self.uid(), "GetLocalListVersion", {}]
        return "unknown_type", json.dumps(frame), ("none",)

    def g_deep(self):
        r = self.rnd
        depth = r.choice([20, 50, 100, 200, 200, 1000, 4000]) if r.random() < 0.3 else r.choice([20, 50, 100])
        uid = self.uid()
        if r.random() < 0.5:
            text = deep(depth)
            return "deep_frame", text, ("error", FORMATION, "-1")
        text = '[2, "%s", "DataTransfer", {"vendorId": "v", "data": %s}]' % (uid, deep(depth, "x"))
        # a nesting the charger cannot parse is "unparsable JSON" (id "-1"); one it can parse is a wrong type
        return "deep_field", text, ("error", None, None)

    def g_huge(self):
        r = self.rnd
        uid = self.uid()
        if r.random() < 0.03:   # each one costs a reconnect: keep them rare
            n = r.choice([MAX_FRAME + 1, 40000])
            text = json.dumps([2, uid, "DataTransfer", {"vendorId": "v", "data": "y" * n}])
            return "oversized", text, ("close",)
        action = r.choice(["DataTransfer", "ChangeConfiguration", "RemoteStartTransaction", "GetConfiguration"])
        payload = copy.deepcopy(BASE[action])
        strings = [p for p, v in _paths(payload) if isinstance(v, str)]
        path = r.choice(strings)
        _set(payload, path, "H" * (r.choice([21, 51, 256, 501]) if r.random() < 0.8 else r.choice([2000, 5000, 12000])))
        text = json.dumps([2, uid, action, payload])
        expect = self.expect_payload(action, payload, uid)
        if len(text) > ROOMY_MSG:
            # may not fit the charger's heap: then it is read past and answered FormationViolation with id "-1"
            expect = ("roomy",) + tuple(expect)
        return "huge_string", text, expect

    def g_mutate(self):
        r = self.rnd
        uid = self.uid()
        action = r.choice(sorted(BASE))
        payload = copy.deepcopy(BASE[action])
        paths = list(_paths(payload))
        op = r.randrange(4) if paths else 3
        if op == 0:
            path, _ = r.choice(paths)
            _del(payload, path)
            kind = "drop_field"
        elif op == 1:
            path, _ = r.choice(paths)
            _set(payload, path, copy.deepcopy(r.choice(SAMPLES)))
            kind = "wrong_value"
        elif op == 2:
            path, value = r.choice(paths)
            if isinstance(value, str):
                _set(payload, path, r.choice(["Bogus", value.lower(), value + " ", ""]))
                kind = "bad_enum_or_string"
            else:
                _set(payload, path, r.choice([-5, 0, 10 ** 12, -0.5]) if not isinstance(value, (dict, list))
                     else r.choice([[], {}, None]))
                kind = "bad_number"
        else:
            targets = [()] + [p for p, v in paths if isinstance(v, dict)]
            path = r.choice(targets)
            obj = payload
            for p in path:
                obj = obj[p]
            obj[r.choice(["extra", "unknownField", "Key", "x" * 10])] = r.choice(SAMPLES)
            kind = "extra_field"
        return kind, json.dumps([2, uid, action, payload]), self.expect_payload(action, payload, uid)

    WEIGHTS = (("g_mutate", 40), ("g_huge", 5), ("g_invalid_json", 8), ("g_not_array", 5), ("g_bad_uid", 6),
               ("g_bad_shape", 8), ("g_unknown_action", 8), ("g_stray_answer", 7), ("g_unknown_type", 5),
               ("g_deep", 4))

    def cases(self, n):
        names = [w[0] for w in self.WEIGHTS]
        weights = [w[1] for w in self.WEIGHTS]
        for _ in range(n):
            kind, text, expect = getattr(self, self.rnd.choices(names, weights)[0])()
            yield {"kind": kind, "text": text, "expect": expect}


def judge(case, answers, closed):
    """None when the charger's reaction matches case["expect"], else a short reason. answers: the frames that
    came back for this case (parsed); closed: the connection dropped."""
    exp = case["expect"]
    if exp[0] == "roomy":  # a large message: the table's answer, or "no room for it" (docs/decisions.md)
        if not closed and len(answers) == 1 and answers[0][:3] == [4, "-1", "FormationViolation"]:
            return None
        exp = tuple(exp[1:])
        case = dict(case, expect=exp)
    if exp[0] == "close":
        return None if closed or (answers and answers[0][0] == 4) else "oversized frame neither refused nor closed"
    if closed:
        return "connection dropped"
    if exp[0] == "none":
        return None if not answers else "answered a frame that needs no answer: %s" % json.dumps(answers[0])[:120]
    if len(answers) != 1:
        return "%d answers" % len(answers)
    a = answers[0]
    if not isinstance(a, list) or len(a) < 3:
        return "malformed answer"
    if exp[2] is not None and a[1] != exp[2]:
        return "answer id %r, expected %r" % (a[1], exp[2])
    if exp[0] == "answer":
        return "InternalError" if a[0] == 4 and a[2] == "InternalError" else None
    if a[0] != 4:
        return "CALLRESULT where %s was expected" % (exp[1] or "a CALLERROR")
    if exp[1] is not None and a[2] != exp[1]:
        return "%s where %s was expected" % (a[2], exp[1])
    if a[2] == "InternalError":
        return "InternalError"
    return None
