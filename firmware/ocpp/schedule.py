# Charging-profile arithmetic (OCPP 1.6 §3.13, digest §2.11): the limit in effect at a time t and the
# composite schedule over a window. Pure: no I/O, no clock reads; every time is an epoch-seconds argument.
#
# A profile is held as one flat list (field indexes below), built once by from_wire() from the wire dict, so
# evaluation never touches strings or parses dates. Periods are a flat list: start, limit, phases, start, ...
from micropython import const

from firmware import clock

# Field indexes of a compiled profile (public: smartcharging.py reads them too).
ID = const(0)
CONN = const(1)
PURPOSE = const(2)
STACK = const(3)
KIND = const(4)
RECUR = const(5)    # recurrence length in s (Recurring), else 0
FROM = const(6)     # validFrom, None = open
TO = const(7)       # validTo, None = open
START = const(8)    # startSchedule (Absolute: resolved at install; Relative: None)
DUR = const(9)      # duration in s, None = open-ended
UNIT = const(10)    # 0 = A per phase, 1 = W total
PERIODS = const(11)
TX = const(12)      # TxProfile: transactionId it belongs to, PENDING before the id is known
FIELDS = const(13)

CPMAX = const(0)
TXDEFAULT = const(1)
TXPROF = const(2)
PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")
ABSOLUTE = const(0)
RECURRING = const(1)
RELATIVE = const(2)
KINDS = ("Absolute", "Recurring", "Relative")
RECURRENCY = ("Daily", "Weekly")
UNITS = ("A", "W")
PENDING = const(-1)  # a RemoteStartTransaction profile waiting for its transactionId
_DAY = const(86400)
_WEEK = const(604800)
_PHASES = const(3)   # numberPhases when absent (OCPP 1.6 §7.13)


def from_wire(conn, d, now, tx_id=None):
    """Wire ChargingProfile dict (already type-checked) -> compact list; None when a date does not parse.
    now is the receive time: the start of an Absolute schedule that has neither startSchedule nor validFrom."""
    sched = d["chargingSchedule"]
    vf = _time(d.get("validFrom"))
    vt = _time(d.get("validTo"))
    ss = _time(sched.get("startSchedule"))
    if vf is False or vt is False or ss is False:
        return None
    kind = KINDS.index(d["chargingProfileKind"])
    recur = 0
    if kind == RECURRING:
        recur = _WEEK if d.get("recurrencyKind") == "Weekly" else _DAY
    elif kind == RELATIVE:
        ss = None
    elif ss is None:
        ss = vf if vf is not None else now  # digest §2.11 impl.: Absolute without startSchedule
    flat = []
    for per in sched["chargingSchedulePeriod"]:
        flat.append(per["startPeriod"])
        flat.append(per["limit"])
        flat.append(per.get("numberPhases", _PHASES))
    tx = d.get("transactionId", tx_id)
    return [d["chargingProfileId"], conn, PURPOSES.index(d["chargingProfilePurpose"]), d["stackLevel"], kind,
            recur, vf, vt, ss, sched.get("duration"), UNITS.index(sched["chargingRateUnit"]), flat, tx]


def _time(text):
    if text is None:
        return None
    t = clock.parse_iso(text)
    return False if t is None else t


def _start(p, t, anchor):
    kind = p[KIND]
    if kind == ABSOLUTE:
        return p[START]
    if kind == RELATIVE:
        return anchor
    n = p[RECUR]
    ss = p[START]
    return ss + (t - ss) // n * n  # the latest recurrence start <= t (also before startSchedule)


def _at(p, t, anchor, volts):
    """(A per phase, phases) that profile p sets at t, or None when it is silent at t."""
    vf = p[FROM]
    vt = p[TO]
    if (vf is not None and t < vf) or (vt is not None and t >= vt):
        return None
    s = _start(p, t, anchor)
    if t < s:
        return None
    off = t - s
    dur = p[DUR]
    if dur is not None and off >= dur:
        return None
    per = p[PERIODS]
    i = 0
    while i + 3 < len(per) and per[i + 3] <= off:
        i += 3
    limit = per[i + 1]
    phases = per[i + 2]
    if p[UNIT]:
        limit = limit / (volts * phases)  # W is the total power (OCPP 1.6 §3.13.4)
    return limit, phases


def _eval(profiles, purpose, conn, t, anchor, volts, tx_id, running):
    # conn: None = any connector, 0 = the charge-point-wide ones, 1 = the connector-specific ones.
    best = None
    level = -1
    for p in profiles:
        if p[PURPOSE] != purpose or p[STACK] <= level:
            continue
        if conn is not None and (p[CONN] != 0) != (conn != 0):
            continue
        if purpose == TXPROF and not (running and (p[TX] == tx_id or p[TX] == PENDING)):
            continue
        r = _at(p, t, anchor, volts)
        if r is not None:
            best = r
            level = p[STACK]
    return best


def _limit(profiles, t, anchor, tx_id, running, volts):
    cp = _eval(profiles, CPMAX, None, t, anchor, volts, None, running)
    tx = None
    if running:
        tx = _eval(profiles, TXPROF, None, t, anchor, volts, tx_id, running)
    if tx is None:  # the connector's own default first, the charge point's when it is silent (decisions)
        tx = _eval(profiles, TXDEFAULT, 1, t, anchor, volts, None, running)
        if tx is None:
            tx = _eval(profiles, TXDEFAULT, 0, t, anchor, volts, None, running)
    if cp is None:
        return tx
    if tx is None or cp[0] < tx[0]:
        return cp
    return tx


def limit_at(profiles, t, tx_start=None, tx_id=None, volts=230.0):
    """The limit in A per phase at t for one connector's view (CPMax of 0, TxDefault of 0 and of the
    connector, its TxProfiles), or None when no profile limits. A transaction runs when tx_start or tx_id is
    given; Relative profiles count from tx_start, or from t without a transaction."""
    r = _limit(profiles, t, t if tx_start is None else tx_start, tx_id,
               tx_start is not None or tx_id is not None, volts)
    return None if r is None else r[0]


def _breaks(p, start, end, anchor, pts):
    """Appends every instant where p can change the result: validity bounds, schedule and period starts,
    schedule ends (also of each recurrence inside [start, end))."""
    if p[FROM] is not None:
        pts.append(p[FROM])
    if p[TO] is not None:
        pts.append(p[TO])
    n = p[RECUR]
    if p[KIND] == RECURRING:
        s = _start(p, start, anchor)
        while s < end:
            _sched_breaks(s, p[PERIODS], p[DUR], pts)
            s += n
    else:
        _sched_breaks(_start(p, start, anchor), p[PERIODS], p[DUR], pts)


def _sched_breaks(s, per, dur, pts):
    pts.append(s)
    for i in range(0, len(per), 3):
        pts.append(s + per[i])
    if dur is not None:
        pts.append(s + dur)


def composite(profiles, start, duration, unit, tx_start=None, tx_id=None, volts=230.0, hw_limit_a=None):
    """GetCompositeSchedule's chargingSchedule over [start, start + duration): the minimum of the schedules in
    force, merged where neighbours are equal, in unit "A" (per phase) or "W" (total), periods relative to start.
    hw_limit_a caps every period and fills the stretches no profile limits; without it those stretches are
    left out (digest §2.11 algorithm)."""
    end = start + duration
    anchor = start if tx_start is None else tx_start
    running = tx_start is not None or tx_id is not None
    pts = [start]
    for p in profiles:
        _breaks(p, start, end, anchor, pts)
    pts.sort()
    out = []
    prev = None
    last = None
    for b in pts:
        if b < start or b >= end or b == prev:
            continue
        prev = b
        r = _limit(profiles, b, anchor, tx_id, running, volts)
        amps, phases = r if r is not None else (None, _PHASES)
        if hw_limit_a is not None and (amps is None or amps > hw_limit_a):
            amps = hw_limit_a
        if amps is None:
            last = None
            continue
        value = round(amps * volts * phases if unit == "W" else amps, 1)
        if last is not None and last[0] == value and last[1] == phases:
            continue
        last = (value, phases)
        per = {"startPeriod": b - start, "limit": value}
        if phases != _PHASES:
            per["numberPhases"] = phases
        out.append(per)
    return {"duration": duration, "startSchedule": clock.iso(start), "chargingRateUnit": unit,
            "chargingSchedulePeriod": out}
