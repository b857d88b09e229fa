# firmware.ocpp.schedule: the limit in effect and GetCompositeSchedule as table cases (digest §2.11).
# Times are offsets in seconds from T0, a Monday 00:00 UTC; profiles are written as the Central System sends them.
import tinytest
from firmware import clock
from firmware.ocpp import schedule

T0 = clock.parse_iso("2026-03-02T00:00:00Z")
H = 3600
DAY = 86400
_CONN = {"ChargePointMaxProfile": 0, "TxDefaultProfile": 0, "TxProfile": 1}
_PURPOSE = {"max": "ChargePointMaxProfile", "def": "TxDefaultProfile", "tx": "TxProfile"}


def P(pid, purpose, stack, periods, kind="Absolute", unit="A", start=0, dur=None, rec=None, vf=None, vt=None,
      tx=None, conn=None):
    """A compiled profile from the wire form. purpose: max | def | tx; periods: (startPeriod, limit[, phases])."""
    purpose = _PURPOSE[purpose]
    sched = {"chargingRateUnit": unit, "chargingSchedulePeriod": []}
    for per in periods:
        d = {"startPeriod": per[0], "limit": per[1]}
        if len(per) > 2:
            d["numberPhases"] = per[2]
        sched["chargingSchedulePeriod"].append(d)
    if start is not None:
        sched["startSchedule"] = clock.iso(T0 + start)
    if dur is not None:
        sched["duration"] = dur
    d = {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
         "chargingProfileKind": kind, "chargingSchedule": sched}
    if rec:
        d["recurrencyKind"] = rec
    if vf is not None:
        d["validFrom"] = clock.iso(T0 + vf)
    if vt is not None:
        d["validTo"] = clock.iso(T0 + vt)
    if tx is not None:
        d["transactionId"] = tx
    p = schedule.from_wire(_CONN[purpose] if conn is None else conn, d, T0 - 5 * DAY)
    assert p is not None
    return p


DEF16 = P(1, "def", 0, [(0, 16)])
DEF10 = P(2, "def", 0, [(0, 10)])
DEF_STEPS = P(3, "def", 0, [(0, 16), (600, 10), (1200, 6)])

# (name, profiles, window start, duration, unit, tx_start, tx_id, hw_limit_a, [(startPeriod, limit[, phases])])
COMPOSITE = (
    ("nothing installed, hardware limit", [], 0, H, "A", None, None, 32, [(0, 32)]),
    ("nothing installed, no hardware limit", [], 0, H, "A", None, None, None, []),
    ("one TxDefault", [DEF16], 0, H, "A", None, None, None, [(0, 16)]),
    ("three periods", [DEF_STEPS], 0, H, "A", None, None, None, [(0, 16), (600, 10), (1200, 6)]),
    ("window starts inside the second period", [DEF_STEPS], 900, H, "A", None, None, None, [(0, 10), (300, 6)]),
    ("window ends before a period starts", [P(4, "def", 0, [(0, 16), (600, 8)])], 0, 600, "A", None, None, None,
     [(0, 16)]),
    ("duration ends: hardware limit after",
     [P(4, "def", 0, [(0, 16), (600, 10), (1200, 6)], dur=1800)], 0, H, "A", None, None, 32,
     [(0, 16), (600, 10), (1200, 6), (1800, 32)]),
    ("stacking: higher level wins, falls back when its duration ends",
     [DEF16, P(5, "def", 1, [(0, 10)], start=300, dur=600)], 0, H, "A", None, None, None,
     [(0, 16), (300, 10), (900, 16)]),
    ("stacking: higher level without duration never falls back",
     [DEF16, P(5, "def", 1, [(0, 8)], start=300)], 0, H, "A", None, None, None, [(0, 16), (300, 8)]),
    ("stacking picks the level, not the smaller limit",
     [DEF10, P(5, "def", 3, [(0, 20)])], 0, H, "A", None, None, None, [(0, 20)]),
    ("stack order does not depend on install order",
     [P(5, "def", 3, [(0, 20)]), DEF10], 0, H, "A", None, None, None, [(0, 20)]),
    ("ChargePointMax below the default", [P(6, "max", 0, [(0, 12)]), DEF16], 0, H, "A", None, None, None,
     [(0, 12)]),
    ("ChargePointMax above the default", [P(6, "max", 0, [(0, 20)]), DEF16], 0, H, "A", None, None, None,
     [(0, 16)]),
    ("ChargePointMax alone limits", [P(6, "max", 0, [(0, 20)])], 0, H, "A", None, None, 32, [(0, 20)]),
    ("ChargePointMax steps under the default", [P(6, "max", 0, [(0, 20), (600, 8)]), DEF16], 0, H, "A", None,
     None, None, [(0, 16), (600, 8)]),
    ("TxProfile overrides TxDefault, also upwards", [DEF10, P(7, "tx", 0, [(0, 16)], tx=42)], 0, H, "A", -60,
     42, None, [(0, 16)]),
    ("TxProfile ignored without a transaction", [DEF10, P(7, "tx", 0, [(0, 16)], tx=42)], 0, H, "A", None,
     None, None, [(0, 10)]),
    ("TxProfile of another transaction ignored", [DEF10, P(7, "tx", 0, [(0, 16)], tx=41)], 0, H, "A", -60, 42,
     None, [(0, 10)]),
    ("TxProfile duration ends: back to TxDefault", [DEF10, P(7, "tx", 0, [(0, 16)], dur=600, tx=42)], 0, H,
     "A", -60, 42, None, [(0, 16), (600, 10)]),
    ("expired TxProfile: TxDefault", [DEF10, P(7, "tx", 0, [(0, 16)], start=-H, dur=1800, tx=42)], 0, H, "A",
     -60, 42, None, [(0, 10)]),
    ("pending RemoteStart profile applies once a transaction runs",
     [DEF10, P(7, "tx", 0, [(0, 6)], tx=schedule.PENDING)], 0, H, "A", -10, None, None, [(0, 6)]),
    ("Relative TxProfile counts from the transaction start",
     [P(8, "tx", 0, [(0, 16), (600, 8)], kind="Relative", start=None, tx=42)], 0, H, "A", -300, 42, 32,
     [(0, 16), (300, 8)]),
    ("Relative TxDefault without transaction counts from now",
     [P(8, "def", 0, [(0, 16), (600, 8)], kind="Relative", start=None)], 5000, H, "A", None, None, None,
     [(0, 16), (600, 8)]),
    ("Daily recurring crossing midnight",
     [DEF16, P(9, "def", 1, [(0, 10)], kind="Recurring", rec="Daily", start=22 * H, dur=8 * H)],
     20 * H, 12 * H, "A", None, None, None, [(0, 16), (2 * H, 10), (10 * H, 16)]),
    ("Daily recurring: after midnight, still in yesterday's occurrence",
     [DEF16, P(9, "def", 1, [(0, 10)], kind="Recurring", rec="Daily", start=22 * H, dur=8 * H)],
     DAY + H, 6 * H, "A", None, None, None, [(0, 10), (5 * H, 16)]),
    ("Daily recurring: two days in one window",
     [DEF16, P(9, "def", 1, [(0, 10)], kind="Recurring", rec="Daily", start=22 * H, dur=2 * H)],
     12 * H, 2 * DAY, "A", None, None, None,
     [(0, 16), (10 * H, 10), (12 * H, 16), (34 * H, 10), (36 * H, 16)]),
    ("Daily recurring with validFrom: nothing before it",
     [DEF16, P(9, "def", 1, [(0, 10)], kind="Recurring", rec="Daily", start=22 * H, dur=8 * H, vf=22 * H)],
     H, 6 * H, "A", None, None, None, [(0, 16)]),
    ("Daily recurring: periods beyond 24 h are cut",
     [P(9, "def", 0, [(0, 10), (DAY + H, 6)], kind="Recurring", rec="Daily", start=0)], 0, 2 * DAY, "A",
     None, None, None, [(0, 10)]),
    ("Weekly recurring: same weekday and time",
     [DEF16, P(10, "def", 1, [(0, 6)], kind="Recurring", rec="Weekly", start=8 * H, dur=2 * H)],
     7 * DAY + 7 * H, 4 * H, "A", None, None, None, [(0, 16), (H, 6), (3 * H, 16)]),
    ("Weekly recurring: silent on other days",
     [DEF16, P(10, "def", 1, [(0, 6)], kind="Recurring", rec="Weekly", start=8 * H, dur=2 * H)],
     DAY + 7 * H, 4 * H, "A", None, None, None, [(0, 16)]),
    ("validFrom in the future", [DEF16, P(11, "def", 1, [(0, 8)], vf=600)], 0, H, "A", None, None, None,
     [(0, 16), (600, 8)]),
    ("validTo ends a profile", [DEF16, P(11, "def", 1, [(0, 8)], vt=600)], 0, H, "A", None, None, None,
     [(0, 8), (600, 16)]),
    ("Absolute without startSchedule starts at validFrom",
     [DEF16, P(11, "def", 1, [(0, 8), (300, 12)], start=None, vf=600)], 0, H, "A", None, None, None,
     [(0, 16), (600, 8), (900, 12)]),
    ("W profile shown in A", [P(12, "def", 0, [(0, 11000)], unit="W")], 0, H, "A", None, None, None,
     [(0, 15.9)]),
    ("A profile shown in W", [DEF16], 0, H, "W", None, None, None, [(0, 11040)]),
    ("W profile shown in W", [P(12, "def", 0, [(0, 11000)], unit="W")], 0, H, "W", None, None, None,
     [(0, 11000)]),
    ("one phase", [P(12, "def", 0, [(0, 3680, 1)], unit="W")], 0, H, "A", None, None, 32, [(0, 16, 1)]),
    ("hardware limit caps a one-phase limit", [P(12, "def", 0, [(0, 7360, 1)], unit="W")], 0, H, "A", None,
     None, 20, [(0, 20, 1)]),
    ("0 A period: a pause", [P(13, "def", 0, [(0, 16), (600, 0), (1200, 16)])], 0, H, "A", None, None, None,
     [(0, 16), (600, 0), (1200, 16)]),
    ("TxDefault installed during a session applies at once",
     [P(14, "def", 0, [(0, 12)], start=-H)], 0, H, "A", -1800, 42, 32, [(0, 12)]),
    ("connector TxDefault replaces the charge point's",
     [P(15, "def", 5, [(0, 10)], conn=0), P(16, "def", 0, [(0, 20)], conn=1)], 0, H, "A", None, None, None,
     [(0, 20)]),
    ("connector TxDefault ends: the charge point's takes over",
     [P(15, "def", 5, [(0, 10)], conn=0), P(16, "def", 0, [(0, 20)], dur=600, conn=1)], 0, H, "A", None,
     None, None, [(0, 20), (600, 10)]),
    ("equal neighbours merge", [DEF16, P(17, "def", 1, [(0, 16)], start=300, dur=600)], 0, H, "A", None,
     None, None, [(0, 16)]),
    ("hardware limit below every profile", [DEF16], 0, H, "A", None, None, 13, [(0, 13)]),
    ("ChargePointMax in W, default in A", [P(18, "max", 0, [(0, 6900)], unit="W"), DEF16], 0, H, "A", None,
     None, None, [(0, 10)]),
    ("ChargePointMax caps a TxProfile", [P(18, "max", 0, [(0, 10)]), P(7, "tx", 0, [(0, 16)], tx=42)], 0, H,
     "A", -60, 42, None, [(0, 10)]),
)


def _same(got, want):
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g["startPeriod"] != w[0] or abs(g["limit"] - w[1]) > 0.05:
            return False
        if g.get("numberPhases", 3) != (w[2] if len(w) > 2 else 3):
            return False
    return True


def test_composite_table():
    assert len(COMPOSITE) >= 30
    bad = []
    for name, profiles, start, duration, unit, tx_start, tx_id, hw, want in COMPOSITE:
        ts = None if tx_start is None else T0 + start + tx_start
        got = schedule.composite(profiles, T0 + start, duration, unit, ts, tx_id, 230.0, hw)
        assert got["duration"] == duration and got["chargingRateUnit"] == unit, name
        assert got["startSchedule"] == clock.iso(T0 + start), name
        if not _same(got["chargingSchedulePeriod"], want):
            bad.append("%s: got %r, want %r" % (name, got["chargingSchedulePeriod"], want))
    assert not bad, "\n".join(bad)


# (name, profiles, t, tx_start, tx_id, volts, expected A or None)
LIMIT = (
    ("nothing installed", [], 0, None, None, 230.0, None),
    ("TxDefault", [DEF16], 0, None, None, 230.0, 16),
    ("before startSchedule", [P(20, "def", 0, [(0, 16)], start=600)], 599, None, None, 230.0, None),
    ("at startSchedule", [P(20, "def", 0, [(0, 16)], start=600)], 600, None, None, 230.0, 16),
    ("last second of the duration", [P(20, "def", 0, [(0, 16)], dur=600)], 599, None, None, 230.0, 16),
    ("duration end is exclusive", [P(20, "def", 0, [(0, 16)], dur=600)], 600, None, None, 230.0, None),
    ("validTo is exclusive", [P(20, "def", 0, [(0, 16)], vt=600)], 600, None, None, 230.0, None),
    ("last period runs on", [DEF_STEPS], 10 * DAY, None, None, 230.0, 6),
    ("W with the measured voltage", [P(21, "def", 0, [(0, 11520)], unit="W")], 0, None, None, 240.0, 16),
    ("W with one phase", [P(21, "def", 0, [(0, 2300, 1)], unit="W")], 0, None, None, 230.0, 10),
    ("Relative TxProfile from the transaction start",
     [P(22, "tx", 0, [(0, 16), (600, 8)], kind="Relative", start=None, tx=5)], 1000, -700, 5, 230.0, 8),
    ("Relative TxDefault without transaction: first period",
     [P(22, "def", 0, [(0, 16), (600, 8)], kind="Relative", start=None)], 5000, None, None, 230.0, 16),
    ("recurring at 23:59", [P(23, "def", 0, [(0, 10)], kind="Recurring", rec="Daily", start=22 * H,
                                dur=8 * H)], 3 * DAY + 24 * H - 60, None, None, 230.0, 10),
    ("recurring at 06:00 next day", [P(23, "def", 0, [(0, 10)], kind="Recurring", rec="Daily", start=22 * H,
                                         dur=8 * H)], 4 * DAY + 6 * H, None, None, 230.0, None),
    ("transaction with unknown id takes the pending profile",
     [DEF16, P(24, "tx", 0, [(0, 8)], tx=schedule.PENDING)], 0, -5, None, 230.0, 8),
    ("zero limit", [P(25, "def", 0, [(0, 0)])], 0, None, None, 230.0, 0),
)


def test_limit_at_table():
    bad = []
    for name, profiles, t, tx_start, tx_id, volts, want in LIMIT:
        ts = None if tx_start is None else T0 + t + tx_start
        got = schedule.limit_at(profiles, T0 + t, ts, tx_id, volts)
        if (got is None) != (want is None) or (got is not None and abs(got - want) > 0.001):
            bad.append("%s: got %r, want %r" % (name, got, want))
    assert not bad, "\n".join(bad)


def test_limit_at_agrees_with_composite():
    # Every composite period must equal the instant limit at its start and just before the next one.
    profiles = [DEF_STEPS, P(30, "max", 0, [(0, 12), (900, 20)]),
                P(31, "def", 2, [(0, 7)], kind="Recurring", rec="Daily", start=23 * H, dur=H + 1800)]
    start = T0 + 22 * H
    got = schedule.composite(profiles, start, 4 * H, "A", None, None, 230.0, None)["chargingSchedulePeriod"]
    assert len(got) >= 3, got
    for i, per in enumerate(got):
        t = start + per["startPeriod"]
        assert abs(schedule.limit_at(profiles, t) - per["limit"]) < 0.05
        end = start + (got[i + 1]["startPeriod"] if i + 1 < len(got) else 4 * H)
        assert abs(schedule.limit_at(profiles, end - 1) - per["limit"]) < 0.05


def test_from_wire_absolute_without_start_uses_receive_time():
    d = {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
         "chargingProfileKind": "Absolute",
         "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 8}]}}
    p = schedule.from_wire(0, d, T0 + 123)
    assert p[schedule.START] == T0 + 123
    assert schedule.limit_at([p], T0 + 122) is None and schedule.limit_at([p], T0 + 123) == 8


def test_from_wire_relative_ignores_start_schedule_and_bad_dates_fail():
    d = {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
         "chargingProfileKind": "Relative",
         "chargingSchedule": {"chargingRateUnit": "W", "startSchedule": "2026-03-02T10:00:00Z",
                              "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 4000.5}]}}
    p = schedule.from_wire(0, d, T0)
    assert p[schedule.START] is None and p[schedule.UNIT] == 1 and p[schedule.PERIODS] == [0, 4000.5, 3]
    d["validTo"] = "2026-13-02T10:00:00Z"
    assert schedule.from_wire(0, d, T0) is None


def test_composite_offsets_with_timezone_dates():
    # A startSchedule with an offset is the same instant as its UTC form.
    d = {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
         "chargingProfileKind": "Absolute",
         "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": "2026-03-02T02:00:00+02:00",
                              "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 8}]}}
    p = schedule.from_wire(0, d, T0)
    got = schedule.composite([p], T0 - 600, 1200, "A", hw_limit_a=16)["chargingSchedulePeriod"]
    assert _same(got, [(0, 16), (600, 8)]), got


tinytest.run(globals())
