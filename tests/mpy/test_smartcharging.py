# firmware.ocpp.smartcharging on the MicroPython unix port: what gets installed, replaced, cleared and kept on
# flash, the limit handed to the arbiter, RemoteStart profiles, and the three handlers through the real Session.
import os
import json
import tinytest
from firmware import clock, store
from firmware.config import Config
from firmware.config_keys import PROFILES_MAX, SCHEDULE_MAX_PERIODS, STACK_LEVEL_MAX
from firmware.ocpp import schedule
from firmware.ocpp.session import Session
from firmware.ocpp.smartcharging import SmartCharging, register

T0 = clock.parse_iso("2026-03-02T00:00:00Z")


_made = tinytest.made
_rmtree = tinytest.rmtree


def _fresh():
    return tinytest.tempdir("sc")


def _sc(d=None):
    d = d or _fresh()
    return SmartCharging(Config(d), d)


def prof(pid=1, purpose="TxDefaultProfile", stack=0, periods=((0, 16),), kind="Absolute", unit="A", **extra):
    sched = {"chargingRateUnit": unit, "startSchedule": clock.iso(T0),
             "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim} for s, lim in periods]}
    for k in ("duration", "startSchedule"):
        if k in extra:
            if extra[k] is None:
                sched.pop(k, None)
            else:
                sched[k] = extra[k]
            del extra[k]
    d = {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
         "chargingProfileKind": kind, "chargingSchedule": sched}
    d.update(extra)
    return d


def test_purpose_must_fit_the_connector():
    sc = _sc()
    assert sc.set_profile(1, prof(purpose="ChargePointMaxProfile"), None, T0) == "Rejected"
    assert sc.set_profile(0, prof(purpose="ChargePointMaxProfile"), None, T0) == "Accepted"
    assert sc.set_profile(2, prof(pid=2), None, T0) == "Rejected"  # NumberOfConnectors is 1
    assert sc.set_profile(0, prof(pid=3, purpose="TxProfile"), 7, T0) == "Rejected"
    assert [p[schedule.ID] for p in sc.profiles] == [1]


def test_tx_profile_needs_the_running_transaction():
    sc = _sc()
    assert sc.set_profile(1, prof(purpose="TxProfile"), None, T0) == "Rejected"          # TC_058_1
    assert sc.set_profile(1, prof(purpose="TxProfile", transactionId=8), 7, T0) == "Rejected"  # TC_058_2
    assert sc.profiles == []
    assert sc.set_profile(1, prof(purpose="TxProfile", transactionId=7), 7, T0) == "Accepted"
    assert sc.set_profile(1, prof(pid=2, stack=1, purpose="TxProfile", periods=((0, 8),)), 7, T0) == "Accepted"
    assert [p[schedule.TX] for p in sc.profiles] == [7, 7]  # without transactionId: the running one
    assert sc.limit_da(1, T0 + 10, T0, 7, 230.0) == 80
    assert sc.limit_da(1, T0 + 10, T0, 9, 230.0) is None  # another transaction does not see them


BAD = (
    ("stackLevel above the maximum", prof(stack=STACK_LEVEL_MAX + 1)),
    ("too many periods", prof(periods=tuple((i * 60, 16) for i in range(SCHEDULE_MAX_PERIODS + 1)))),
    ("no period", prof(periods=())),
    ("first startPeriod not 0", prof(periods=((60, 16),))),
    ("startPeriods not increasing", prof(periods=((0, 16), (600, 10), (600, 8)))),
    ("Recurring without recurrencyKind", prof(kind="Recurring")),
    ("Recurring without startSchedule", prof(kind="Recurring", recurrencyKind="Daily", startSchedule=None)),
    ("negative limit", prof(periods=((0, -1),))),
    ("negative duration", prof(duration=-5)),
    ("unparsable date", prof(validFrom="2026-02-30T25:00:00Z")),
)


def test_invalid_profiles_are_rejected():
    sc = _sc()
    for name, d in BAD:
        assert sc.set_profile(1, d, None, T0) == "Rejected", name
    phases = prof()
    phases["chargingSchedule"]["chargingSchedulePeriod"][0]["numberPhases"] = 4
    assert sc.set_profile(1, phases, None, T0) == "Rejected"
    assert sc.profiles == []
    top = prof(stack=STACK_LEVEL_MAX, periods=tuple((i * 60, 16) for i in range(SCHEDULE_MAX_PERIODS)))
    assert sc.set_profile(1, top, None, T0) == "Accepted"  # the limits themselves are allowed


def test_store_full_rejects_but_replacement_still_works():
    sc = _sc()
    for i in range(PROFILES_MAX):
        assert sc.set_profile(0, prof(pid=i + 1, stack=i), None, T0) == "Accepted"
    assert sc.set_profile(0, prof(pid=99, stack=STACK_LEVEL_MAX), None, T0) == "Rejected"
    assert sc.set_profile(0, prof(pid=1, stack=STACK_LEVEL_MAX, periods=((0, 9),)), None, T0) == "Accepted"
    assert len(sc.profiles) == PROFILES_MAX


def test_replacement_by_id_and_by_purpose_and_stack_level():
    sc = _sc()
    sc.set_profile(0, prof(pid=1, stack=0, periods=((0, 16),)), None, T0)
    sc.set_profile(0, prof(pid=1, stack=2, periods=((0, 12),)), None, T0)   # same id: replaced
    assert len(sc.profiles) == 1 and sc.profiles[0][schedule.STACK] == 2
    sc.set_profile(0, prof(pid=5, stack=2, periods=((0, 10),)), None, T0)   # same purpose + level: replaced
    assert [p[schedule.ID] for p in sc.profiles] == [5]
    sc.set_profile(1, prof(pid=6, stack=2, periods=((0, 8),)), None, T0)    # other connector: added
    sc.set_profile(0, prof(pid=7, stack=2, purpose="ChargePointMaxProfile"), None, T0)  # other purpose
    assert sorted(p[schedule.ID] for p in sc.profiles) == [5, 6, 7]


def _three(sc):
    sc.set_profile(0, prof(pid=1, stack=0, purpose="ChargePointMaxProfile"), None, T0)
    sc.set_profile(0, prof(pid=2, stack=1), None, T0)
    sc.set_profile(1, prof(pid=3, stack=1), None, T0)


def _ids(sc):
    return sorted(p[schedule.ID] for p in sc.profiles)


def test_clear_by_each_criterion_and_combinations():
    # (kwargs, status, ids left)
    table = (
        ({"id": 2}, "Accepted", [1, 3]),
        ({"id": 9}, "Unknown", [1, 2, 3]),
        ({"connector_id": 0}, "Accepted", [3]),
        ({"connector_id": 1}, "Accepted", [1, 2]),
        ({"purpose": "TxDefaultProfile"}, "Accepted", [1]),
        ({"purpose": "TxProfile"}, "Unknown", [1, 2, 3]),
        ({"stack_level": 1}, "Accepted", [1]),
        ({"connector_id": 0, "stack_level": 1}, "Accepted", [1, 3]),
        ({"connector_id": 0, "purpose": "TxDefaultProfile", "stack_level": 0}, "Unknown", [1, 2, 3]),
        ({}, "Accepted", []),
    )
    for kwargs, status, left in table:
        sc = _sc()
        _three(sc)
        assert sc.clear(**kwargs) == status, kwargs
        assert _ids(sc) == left, (kwargs, _ids(sc))


def test_profiles_persist_but_tx_profiles_end_with_the_boot():
    d = _fresh()
    sc = _sc(d)
    _three(sc)
    sc.set_profile(1, prof(pid=4, stack=3, purpose="TxProfile"), 7, T0)
    again = _sc(d)
    assert _ids(again) == [1, 2, 3]
    assert again.limit_da(1, T0 + 5, None, None, 230.0) == 160
    again.clear(id=2)
    assert _ids(_sc(d)) == [1, 3]


def test_corrupt_profile_file_starts_empty():
    d = _fresh()
    with open(d + "/profiles.json", "w") as f:
        f.write("garbage")
    assert _sc(d).profiles == []
    store.write_json(d + "/profiles.json", [[1, 2]])  # well-formed JSON, wrong shape
    assert _sc(d).profiles == []


def test_limit_da_pause_floor_and_on_change():
    sc = _sc()
    calls = []
    sc.on_change = lambda: calls.append(sc.limit_da(1, T0 + 5, None, None, 230.0))
    assert sc.limit_da(1, T0 + 5, None, None, 230.0) is None
    sc.set_profile(0, prof(periods=((0, 11000),), unit="W"), None, T0)
    assert calls == [159]  # 11000 W / (3 x 230 V) = 15.94 A, floored: never offer more than allowed
    assert sc.limit_da(1, T0 + 5, None, None, 240.0) == 152  # the measured voltage
    assert sc.limit_da(1, T0 + 5, None, None, 0.0) == 159    # no voltage reading: 230 V nominal
    sc.set_profile(0, prof(pid=2, stack=1, periods=((0, 5.9),)), None, T0)
    assert calls[-1] == 0  # below 6 A cannot be signalled: pause (digest §7 Q8)
    sc.set_profile(0, prof(pid=3, stack=2, periods=((0, 21.4),)), None, T0)
    assert calls[-1] == 214
    sc.clear()
    assert calls[-1] is None and len(calls) == 4


def test_tx_ended_removes_only_tx_profiles():
    sc = _sc()
    sc.set_profile(1, prof(pid=1), None, T0)
    sc.set_profile(1, prof(pid=2, stack=1, purpose="TxProfile", periods=((0, 8),)), 7, T0)
    assert sc.limit_da(1, T0 + 5, T0, 7, 230.0) == 80
    sc.tx_ended(1)
    assert _ids(sc) == [1]
    assert sc.limit_da(1, T0 + 5, T0, 7, 230.0) == 160


def test_remote_start_profile_pending_then_bound():
    sc = _sc()
    good = prof(purpose="TxProfile", periods=((0, 10),))
    assert sc.validate_tx_profile(good)
    assert not sc.validate_tx_profile(prof(purpose="TxDefaultProfile"))  # TC_060
    assert not sc.validate_tx_profile(prof(purpose="TxProfile", transactionId=3))
    assert not sc.validate_tx_profile(prof(purpose="TxProfile", periods=((5, 10),)))
    assert not sc.validate_tx_profile(prof(purpose="TxProfile", stackLevel="1"))
    assert not sc.validate_tx_profile({"chargingProfileId": 1})
    assert sc.install_remote_start_profile(good, 1, T0) == "Accepted"
    assert sc.limit_da(1, T0 + 5, None, None, 230.0) is None        # no transaction yet
    assert sc.limit_da(1, T0 + 6, T0 + 5, None, 230.0) == 100       # started, id not known yet
    sc.bind_pending(42)
    assert sc.profiles[0][schedule.TX] == 42
    assert sc.limit_da(1, T0 + 7, T0 + 5, 42, 230.0) == 100
    assert sc.limit_da(1, T0 + 7, T0 + 5, 43, 230.0) is None
    sc.install_remote_start_profile(prof(pid=2, stack=1, purpose="TxProfile"), 1, T0)
    sc.drop_pending()
    assert _ids(sc) == [1]


class _Charger:
    # What smartcharging.register takes from the charger: the SmartCharging object and the transaction's figures
    def __init__(self, sc, tx):
        self.smart = sc
        self._tx = tx

    def tx_info(self):
        return self._tx


# One Session for the whole file, made while the heap is whole, as the firmware makes one per boot: its 6 KB
# frame buffer may find no block in a heap the earlier tests left fragmented.
_SESSION = Session(Config(tinytest.tempdir("smart-session")), {})


def _session(tx=(None, None, 230.0)):
    d = _fresh()
    cfg = Config(d)
    session = _SESSION
    session.handlers = {}
    sc = SmartCharging(cfg, d)
    register(session, _Charger(sc, tx))
    return session, sc


async def _call(session, action, payload):
    reply, after = await session.dispatch(json.dumps([2, "u1", action, payload]))
    assert after is None
    return json.loads(json.dumps(reply))  # as it goes on the wire


def _set_req(d, cid=1):
    return {"connectorId": cid, "csChargingProfiles": d}


async def test_set_charging_profile_handler_error_codes():
    session, sc = _session()
    table = (
        ({"chargingProfileId": "1"}, "TypeConstraintViolation"),
        ({"chargingProfilePurpose": "Other"}, "PropertyConstraintViolation"),
        ({"stackLevel": -1}, "PropertyConstraintViolation"),
        ({"chargingSchedule": 5}, "TypeConstraintViolation"),
        ({"colour": "red"}, "FormationViolation"),
        ({"validTo": "tomorrow"}, "PropertyConstraintViolation"),
    )
    for change, code in table:
        d = prof()
        d.update(change)
        reply = await _call(session, "SetChargingProfile", _set_req(d))
        assert reply[0] == 4 and reply[2] == code, (change, reply)
    d = prof()
    del d["stackLevel"]
    assert (await _call(session, "SetChargingProfile", _set_req(d)))[2] == "OccurenceConstraintViolation"
    nested = (
        ({"startPeriod": 0, "limit": "16"}, "TypeConstraintViolation"),
        ({"startPeriod": 0.5, "limit": 16}, "TypeConstraintViolation"),
        ({"limit": 16}, "OccurenceConstraintViolation"),
        ({"startPeriod": 0, "limit": 16, "x": 1}, "FormationViolation"),
        ({"startPeriod": 0, "limit": 21.45}, "PropertyConstraintViolation"),
        (7, "TypeConstraintViolation"),
    )
    for per, code in nested:
        d = prof()
        d["chargingSchedule"]["chargingSchedulePeriod"] = [per]
        reply = await _call(session, "SetChargingProfile", _set_req(d))
        assert reply[0] == 4 and reply[2] == code, (per, reply)
    d = prof()
    d["chargingSchedule"]["chargingRateUnit"] = "kW"
    assert (await _call(session, "SetChargingProfile", _set_req(d)))[2] == "PropertyConstraintViolation"
    assert sc.profiles == []
    d = prof(periods=((0, 21.4),))
    assert (await _call(session, "SetChargingProfile", _set_req(d))) == [3, "u1", {"status": "Accepted"}]


async def test_handlers_set_clear_and_composite():
    session, sc = _session((7, clock.now() - 60, 230.0))
    tx = prof(pid=3, stack=1, purpose="TxProfile", periods=((0, 10),), startSchedule=None)
    assert (await _call(session, "SetChargingProfile", _set_req(tx)))[2] == {"status": "Accepted"}
    reply = (await _call(session, "GetCompositeSchedule", {"connectorId": 1, "duration": 600}))[2]
    assert reply["status"] == "Accepted" and reply["connectorId"] == 1
    sched = reply["chargingSchedule"]
    assert sched["chargingRateUnit"] == "A" and sched["duration"] == 600
    assert sched["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 10}]
    assert abs(clock.parse_iso(reply["scheduleStart"]) - clock.now()) <= 2
    w = (await _call(session, "GetCompositeSchedule", {"connectorId": 0, "duration": 60,
                                                       "chargingRateUnit": "W"}))[2]
    assert w["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 6900}]
    assert (await _call(session, "GetCompositeSchedule", {"connectorId": 2, "duration": 60}))[2] == \
        {"status": "Rejected"}
    assert (await _call(session, "GetCompositeSchedule", {"connectorId": 1}))[2] == "OccurenceConstraintViolation"
    assert (await _call(session, "ClearChargingProfile", {"id": 4}))[2] == {"status": "Unknown"}
    assert (await _call(session, "ClearChargingProfile", {"chargingProfilePurpose": "TxProfile",
                                                          "connectorId": 1}))[2] == {"status": "Accepted"}
    assert sc.profiles == []
    nothing = (await _call(session, "GetCompositeSchedule", {"connectorId": 1, "duration": 60}))[2]
    assert nothing["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 32}]  # MaxCurrent


def test_zz_cleanup():
    for d in _made:
        _rmtree(d)


tinytest.run(globals())
