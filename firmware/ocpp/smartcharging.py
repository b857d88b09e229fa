# Smart Charging profile (OCPP 1.6 §3.13, §5.5, §5.7, §5.16; digest §2.11): the installed charging profiles
# (validated, replaced, cleared, kept on flash) and the Central System's three calls. The arithmetic is in
# schedule.py; this module decides what gets installed and hands the EVSE arbiter its limit.
from micropython import const

from firmware import clock, log, store
from firmware.config_keys import NUMBER_OF_CONNECTORS, PROFILES_MAX, SCHEDULE_MAX_PERIODS, STACK_LEVEL_MAX
from firmware.ocpp import rpc
from firmware.ocpp import schedule as S
from firmware.ocpp.rpc import ENUM, INT, LIST, NUM, OBJ, TIME

_TAG = "smart"
_COMPOSITE_MAX_S = const(604800)  # a week of composite schedule: longer answers would not fit the heap
_MIN_DA = const(60)              # IEC 61851-1: 6 A is the smallest current a PWM duty can offer
_NOMINAL_V = 230.0               # when the meter gives no plausible voltage (digest §2.11 U_nominal)
_MIN_V = const(100)

_PROFILE = (("chargingProfileId", INT, True, None), ("transactionId", INT, False, None),
            ("stackLevel", INT, True, 0), ("chargingProfilePurpose", ENUM, True, S.PURPOSES),
            ("chargingProfileKind", ENUM, True, S.KINDS), ("recurrencyKind", ENUM, False, S.RECURRENCY),
            ("validFrom", TIME, False, None), ("validTo", TIME, False, None),
            ("chargingSchedule", OBJ, True, None))
_SCHEDULE = (("duration", INT, False, None), ("startSchedule", TIME, False, None),
             ("chargingRateUnit", ENUM, True, S.UNITS), ("chargingSchedulePeriod", LIST, True, None),
             ("minChargingRate", NUM, False, None))
_PERIOD = (("startPeriod", INT, True, 0), ("limit", NUM, True, None), ("numberPhases", INT, False, None))
_SET = (("connectorId", INT, True, 0), ("csChargingProfiles", OBJ, True, None))
_CLEAR = (("id", INT, False, None), ("connectorId", INT, False, 0),
          ("chargingProfilePurpose", ENUM, False, S.PURPOSES), ("stackLevel", INT, False, 0))
_COMPOSITE = (("connectorId", INT, True, 0), ("duration", INT, True, 0), ("chargingRateUnit", ENUM, False, S.UNITS))


def validate_profile(d):
    """Type check of a ChargingProfile object and its nested parts; raises rpc.CallError (digest §1.3 table)."""
    rpc.validate(d, _PROFILE)
    sched = d["chargingSchedule"]
    rpc.validate(sched, _SCHEDULE)
    if "minChargingRate" in sched:
        _one_decimal("minChargingRate", sched["minChargingRate"])
    for per in sched["chargingSchedulePeriod"]:
        if not isinstance(per, dict):
            raise rpc.CallError(rpc.TYPE, "chargingSchedulePeriod entries must be objects")
        rpc.validate(per, _PERIOD)
        _one_decimal("limit", per["limit"])


def _one_decimal(name, v):
    # Schema multipleOf 0.1. json gives binary floats (21.4 is 21.39999...), so compare with a tolerance
    # that also holds for the ESP32's single-precision floats.
    x = v * 10
    if abs(x - round(x)) > 0.01:
        raise rpc.CallError(rpc.PROPERTY, name + " takes at most one decimal")


def _schedule_fault(d, cfg):
    """Why a type-checked profile cannot be installed (digest §2.11 validation list), or None."""
    if d["stackLevel"] > STACK_LEVEL_MAX:
        return "stackLevel > ChargeProfileMaxStackLevel"
    sched = d["chargingSchedule"]
    if d["chargingProfileKind"] == "Recurring" and ("recurrencyKind" not in d or "startSchedule" not in sched):
        return "Recurring needs recurrencyKind and startSchedule"
    if sched.get("duration", 0) < 0:
        return "negative duration"
    word = "Current" if sched["chargingRateUnit"] == "A" else "Power"
    if word not in cfg.get_list("ChargingScheduleAllowedChargingRateUnit"):
        return "chargingRateUnit not allowed"
    pers = sched["chargingSchedulePeriod"]
    if not pers or len(pers) > SCHEDULE_MAX_PERIODS:
        return "no period, or more than ChargingScheduleMaxPeriods"
    prev = -1
    for per in pers:
        sp = per["startPeriod"]
        if sp <= prev or (prev < 0 and sp != 0):
            return "startPeriod must begin at 0 and increase"
        prev = sp
        if per["limit"] < 0 or not 1 <= per.get("numberPhases", 3) <= 3:
            return "limit below 0 or numberPhases not 1-3"
    return None


def _volts(v):
    return v if v and v >= _MIN_V else _NOMINAL_V


class SmartCharging:
    def __init__(self, cfg, state_dir):
        self.cfg = cfg
        self._path = store.join(state_dir, "profiles.json")
        self.profiles = self._load()
        self.on_change = None  # fn() after every change, so the arbiter re-evaluates at once
        self._cache = None  # (now, tx_id, tx_start, volts, da): one evaluation per second, not per loop turn

    def _load(self):
        data = store.read_json(self._path, None)
        if not isinstance(data, list):
            return []
        # A transaction never survives a reboot here (it ends as PowerLoss), so its TxProfiles go too.
        keep = [p for p in data if isinstance(p, list) and len(p) == S.FIELDS and p[S.PURPOSE] != S.TXPROF]
        if len(keep) != len(data):
            store.write_json(self._path, keep)
        return keep

    def _commit(self, profiles):
        """Takes a filtered copy of the list when it dropped something; True if so."""
        if len(profiles) == len(self.profiles):
            return False
        self.profiles = profiles
        self._changed()
        return True

    def _changed(self):
        store.write_json(self._path, self.profiles)
        self._cache = None
        if self.on_change is not None:
            self.on_change()

    def _view(self, connector_id):
        # The profiles that bear on one connector: the charge point's (connector 0) and its own.
        if NUMBER_OF_CONNECTORS == 1:
            return self.profiles
        return [p for p in self.profiles if p[S.CONN] == 0 or p[S.CONN] == connector_id]

    # ---- installing and clearing ----
    def set_profile(self, connector_id, d, tx_id_running, now=None):
        """SetChargingProfile for a type-checked profile -> "Accepted" | "Rejected"."""
        why = self._fault(connector_id, d, tx_id_running)
        if why is None:
            tx = tx_id_running if d["chargingProfilePurpose"] == "TxProfile" else None
            p = S.from_wire(connector_id, d, clock.now() if now is None else now, tx)
            if p is None:
                why = "bad date"
            else:
                why = self._install(p)
        if why is not None:
            log.info(_TAG, "profile %s rejected: %s" % (d.get("chargingProfileId"), why))
            return "Rejected"
        return "Accepted"

    def _fault(self, cid, d, tx_id):
        if cid > NUMBER_OF_CONNECTORS:
            return "no such connector"
        purpose = d["chargingProfilePurpose"]
        if purpose == "ChargePointMaxProfile" and cid != 0:
            return "ChargePointMaxProfile needs connector 0"
        if purpose == "TxProfile" and (cid == 0 or tx_id is None or d.get("transactionId", tx_id) != tx_id):
            return "TxProfile needs the running transaction's connector and id"
        return _schedule_fault(d, self.cfg)

    def _install(self, p):
        # Replaces the same id, and the same stackLevel + purpose on the same connector (digest §2.11, §7 Q8).
        keep = [q for q in self.profiles if q[S.ID] != p[S.ID] and not (
            q[S.STACK] == p[S.STACK] and q[S.PURPOSE] == p[S.PURPOSE] and q[S.CONN] == p[S.CONN])]
        if len(keep) >= PROFILES_MAX:
            return "MaxChargingProfilesInstalled reached"
        keep.append(p)
        self.profiles = keep
        self._changed()
        return None

    def clear(self, id=None, connector_id=None, purpose=None, stack_level=None):
        """ClearChargingProfile -> "Accepted" | "Unknown" (nothing matched)."""
        if id is not None:
            keep = [q for q in self.profiles if q[S.ID] != id]
        else:
            pc = None if purpose is None else S.PURPOSES.index(purpose)
            keep = [q for q in self.profiles if not (
                (connector_id is None or q[S.CONN] == connector_id) and (pc is None or q[S.PURPOSE] == pc)
                and (stack_level is None or q[S.STACK] == stack_level))]
        return "Accepted" if self._commit(keep) else "Unknown"

    def tx_ended(self, connector_id):
        """A TxProfile lives as long as its transaction (OCPP 1.6 §3.13.2); a pending one goes too."""
        self._commit([q for q in self.profiles if not (q[S.PURPOSE] == S.TXPROF and q[S.CONN] == connector_id)])

    # ---- RemoteStartTransaction.chargingProfile (OCPP 1.6 §5.11) ----
    def validate_tx_profile(self, d):
        """True when d may come with RemoteStartTransaction: a valid TxProfile without transactionId."""
        try:
            validate_profile(d)
        except rpc.CallError:
            return False
        return (d["chargingProfilePurpose"] == "TxProfile" and "transactionId" not in d
                and _schedule_fault(d, self.cfg) is None)

    def install_remote_start_profile(self, d, connector_id=1, now=None):
        """Keeps a validated RemoteStart profile for the coming transaction -> "Accepted" | "Rejected"."""
        p = S.from_wire(connector_id, d, clock.now() if now is None else now, S.PENDING)
        why = "bad date" if p is None else self._install(p)
        if why is not None:
            log.info(_TAG, "RemoteStart profile rejected: " + why)
            return "Rejected"
        return "Accepted"

    def bind_pending(self, tx_id):
        """The transaction's id is known: the pending RemoteStart profile becomes its TxProfile."""
        hit = False
        for p in self.profiles:
            if p[S.TX] == S.PENDING:
                p[S.TX] = tx_id
                hit = True
        if hit:
            self._changed()

    def drop_pending(self):
        """The remote start did not become a transaction (no EV within ConnectionTimeOut)."""
        self._commit([q for q in self.profiles if q[S.TX] != S.PENDING or q[S.PURPOSE] != S.TXPROF])

    # ---- what the charger does with them ----
    def limit_da(self, connector_id, now, tx_start=None, tx_id=None, volts=None):
        """The smart-charging limit in 0.1 A for the arbiter, None = no profile limits. Floored, so the offer
        never exceeds the profile; 0 < limit < 6 A -> 0, a pause (digest §7 Q8)."""
        c = self._cache
        if c is not None and c[0] == now and c[1] == tx_id and c[2] == tx_start and c[3] == volts:
            return c[4]
        a = S.limit_at(self._view(connector_id), now, tx_start, tx_id, _volts(volts))
        da = None
        if a is not None:
            da = int(a * 10 + 0.001)
            if da < _MIN_DA:
                da = 0
        self._cache = (now, tx_id, tx_start, volts, da)
        return da

    def composite(self, connector_id, now, duration, unit="A", tx_start=None, tx_id=None, volts=None,
                  hw_limit_a=None):
        """GetCompositeSchedule's chargingSchedule; the installation limit (MaxCurrent) caps it and fills the
        stretches no profile limits. Connector 0 (the whole charge point) equals connector 1 on this board."""
        if hw_limit_a is None:
            hw_limit_a = self.cfg.get("MaxCurrent")
        return S.composite(self._view(connector_id or 1), now, min(duration, _COMPOSITE_MAX_S), unit or "A",
                           tx_start, tx_id, _volts(volts), hw_limit_a)


def register(session, app):
    """Installs the SmartCharging handlers on session, acting on app.smart. app.tx_info() -> (transactionId or
    None, start epoch or None, volts)."""
    sc = app.smart
    get_tx = app.tx_info

    def set_profile(p):
        prof = p["csChargingProfiles"]
        validate_profile(prof)
        return {"status": sc.set_profile(p["connectorId"], prof, get_tx()[0])}

    def clear(p):
        return {"status": sc.clear(p.get("id"), p.get("connectorId"), p.get("chargingProfilePurpose"),
                                   p.get("stackLevel"))}

    def composite(p):
        cid = p["connectorId"]
        if cid > NUMBER_OF_CONNECTORS:
            return {"status": "Rejected"}
        tx_id, tx_start, volts = get_tx()
        now = clock.now()
        sched = sc.composite(cid, now, p["duration"], p.get("chargingRateUnit", "A"), tx_start, tx_id, volts)
        return {"status": "Accepted", "connectorId": cid, "scheduleStart": clock.iso(now),
                "chargingSchedule": sched}

    session.handle("SetChargingProfile", _SET, set_profile)
    session.handle("ClearChargingProfile", _CLEAR, clear)
    session.handle("GetCompositeSchedule", _COMPOSITE, composite)
