# The EVSE: IEC 61851 pilot state, the current arbiter, and the contactor and lock rules (DESIGN.md §2).
# Safety lives here, in two halves:
# - watch(): runs every 10 ms from board.start_watch, off the asyncio loop. It opens the contactor itself when
#   the pilot leaves C/D, on E/F, a diode fault or an RCD trip, and latches the faults it can see, so a busy or
#   blocked loop never keeps the contactor closed. It does not allocate: ints, constants and attribute writes.
# - update(): the slow path on the loop (every 50 ms and on every OCPP request). It debounces the pilot, runs
#   the arbiter, the PWM, the lock, the meter and current checks, closes the contactor and clears faults whose
#   cause has gone (digest §2.8 I*: back to the pre-fault state).
# The watch owns _wf (its fault latch); the slow path asks it to clear one through _clear, so no latch is ever
# written by both threads.
import asyncio
import time
from micropython import const

from firmware import pilot, log

_TAG = "evse"
_WATCH_MS = const(10)
_LOOP_MS = const(50)
_FAST_N = const(2)  # watch samples in a row before it acts: 10-20 ms, far inside the 100 ms of IEC 61851-1 A.6
_SETTLE_N = const(5)  # a new duty must run 50 ms before the diode check trusts the low plateau
_WELD_N = const(30)  # 300 ms commanded open with the auxiliary contact still closed = welded
_DEB_FAST_MS = const(30)  # towards A/E/F, or leaving C/D while energised (digest §4.2: OpenEVSE 25 ms)
_DEB_MS = const(250)  # other changes (OpenEVSE 250 ms)
_DEB_C_MS = const(500)  # B -> C/D must hold this long before the contactor closes (SmartEVSE 500 ms)
_LOCK_TIMEOUT_MS = const(1500)
METER_GRACE_MS = const(5000)  # this long without a trusted meter reading, then PowerMeterFailure
OVERCURRENT_MS = const(5000)  # IEC 61851-1: the EV follows a lower duty within 5 s
OVERCURRENT_MARGIN_DA = const(20)  # 2 A over the offer before the EV counts as not following it
STOP_IN_C_MS = const(6000)  # X1 while the EV stays in C: open under load after 6 s (digest §4.4, seq. 10)
# The slow path silent this long means the loop is hung: the meter, current and authorisation checks have
# stopped, so the watch takes the energy away until the hardware watchdog (8 s) resets the MCU. Longer than any
# stall the loop makes on purpose or while a TLS handshake runs in C on an ESP32 (1-2 s).
LOOP_DEAD_MS = const(4000)

# Fault codes, in priority order (a smaller one replaces a larger one in the latch).
F_RCD = const(1)
F_WELD = const(2)
F_CP_SHORT = const(3)
F_PILOT_F = const(4)
F_DIODE = const(5)
F_LOCK = const(6)
F_METER = const(7)
F_OVERCURRENT = const(8)
_CODES = (None, "GroundFailure", "PowerSwitchFailure", "OtherError", "OtherError", "OtherError",
          "ConnectorLockFailure", "PowerMeterFailure", "OverCurrentFailure")
# StatusNotification.info (<= 50 chars); fault_code doubles as a vendorErrorCode.
_INFO = (None, "RCD tripped", "contactor welded", "CP shorted to PE (state E)", "CP at -12 V (state F)",
         "EV diode check failed", "connector lock did not engage", "energy meter not answering",
         "EV drew more than offered")


def _energised_ok(st, vent):
    return st == pilot.C or (st == pilot.D and vent)


class Evse:
    def __init__(self, board, meter, cfg):
        self.board = board
        self._watching = False
        self.meter = meter
        self.cfg = cfg
        self.cable_variant = cfg.get("Variant") == "cable"
        try:
            self.ventilation = bool(cfg.get("Ventilation"))  # device key; absent = no ventilation (refuse D)
        except KeyError:
            self.ventilation = False
        # Inputs.
        self.raw_state = pilot.A  # watch, every 10 ms
        self.state = pilot.A  # debounced
        self._cand = pilot.A
        self._since = board.ticks_ms()
        self._loop_ms = self._since  # when the slow path last ran: the watch's proof that the loop lives
        self.beats = 0  # turns of run(): the firmware watchdog's proof that this task makes progress
        self.cable_a = None
        self.local_da = None  # load-management input of the board, 0.1 A, None = none
        self.ext_da = None  # the charger model's limit (a front end's, load management over MQTT), 0.1 A
        # Requests from the OCPP layer.
        self.allow = False  # an authorised transaction (or free vend) wants energy
        self.limit_da = None  # smart-charging limit in 0.1 A, None = none
        self.operative = True
        self.want_lock = False
        # Outputs.
        self.pwm = 1000
        self.offer_da = 0
        self.contactor = False
        # Watch state (written by the watch only, except _clear).
        self._wf = 0
        self._clear = False
        self._n_bad = 0
        self._n_pilot = 0
        self._n_diode = 0
        self._n_weld = 0
        self._n_pwm = 0
        self._seen_pwm = 1000
        self.tripped = 0  # watch opens, counted; the slow path logs them
        self.hung_trips = 0  # of which because the loop had stopped
        self._logged_trips = 0
        self._logged_hung = 0
        # Slow-path state.
        self._sf = 0
        self._logged_fault = 0
        self._seen_a = False
        self._vent_refused = False
        self._lock_cmd_ms = None
        self._oc_since = None
        self._oc_reading = None
        self._x1_since = None
        board.set_pwm(1000)
        board.set_contactor(False)
        board.set_lock(False)

    # ---- fast path: off the loop; no allocation, no blocking ----
    def watch(self):
        b = self.board
        hi, lo = b.read_cp()
        st = pilot.classify(hi)
        self.raw_state = st
        if self._clear:
            self._clear = False
            self._wf = 0
        pwm = self.pwm
        if pwm != self._seen_pwm:
            self._seen_pwm = pwm
            self._n_pwm = 0
        elif self._n_pwm < _SETTLE_N:
            self._n_pwm += 1
        if _energised_ok(st, self.ventilation):
            self._n_bad = 0
        elif self._n_bad < _FAST_N:
            self._n_bad += 1
        # E and F are faults while we drive the pilot positive (pwm 0 would be our own F).
        pf = st == pilot.E or (st == pilot.F and pwm != 0)
        self._n_pilot = (self._n_pilot + 1 if self._n_pilot < _FAST_N else _FAST_N) if pf else 0
        dio = (0 < pwm < 1000 and self._n_pwm >= _SETTLE_N and pilot.B <= st <= pilot.D
               and not pilot.diode_ok(lo, pwm))
        self._n_diode = (self._n_diode + 1 if self._n_diode < _FAST_N else _FAST_N) if dio else 0
        if b.rcd_tripped():
            self._latch(F_RCD)
        if self._n_pilot >= _FAST_N:
            self._latch(F_CP_SHORT if st == pilot.E else F_PILOT_F)
        if self._n_diode >= _FAST_N:
            self._latch(F_DIODE)
        if self.contactor:
            self._n_weld = 0
            hung = time.ticks_diff(b.ticks_ms(), self._loop_ms) > LOOP_DEAD_MS
            if self._wf or self._n_bad >= _FAST_N or hung:
                b.set_contactor(False)  # IEC 61851-1 A.6: open within 100 ms
                self.contactor = False
                self.tripped += 1
                if hung:
                    self.hung_trips += 1
        elif b.contactor_feedback():
            if self._n_weld < _WELD_N:
                self._n_weld += 1
            else:
                self._latch(F_WELD)
        else:
            self._n_weld = 0

    def _latch(self, code):
        if self._wf == 0 or code < self._wf:
            self._wf = code

    def start(self):
        if not self._watching:  # one watch per boot, even if the loop task is restarted
            self._watching = True
            self.board.start_watch(_WATCH_MS, self.watch)

    # ---- what the OCPP layer reads ----
    @property
    def fault_code(self):
        return self._wf or self._sf

    @property
    def fault(self):
        """None, or the OCPP errorCode of the latched fault (the connector reports Faulted with it)."""
        return _CODES[self._wf or self._sf]

    @property
    def fault_info(self):
        """StatusNotification.info text of the latched fault, None without one."""
        code = self._wf or self._sf
        if code == F_METER:
            return self.meter.trouble or _INFO[F_METER]  # not answering, or which reading cannot be true
        return _INFO[code]

    @property
    def lock_failed(self):
        return self._sf == F_LOCK

    @property
    def ev_connected(self):
        # Socket: an EV is connected only through a cable in the socket. The PP is taken as read while the pilot
        # is debounced, so an unplug shows "no cable" up to one debounce before the pilot shows A; every reader
        # (the connector's status above all) must see one story, never "no cable, EV in C" (issue 9).
        return pilot.B <= self.state <= pilot.D and (self.cable_variant or self.cable_a is not None)

    @property
    def ev_ready(self):
        return self.state == pilot.C or self.state == pilot.D

    @property
    def plugged(self):
        """Cable in the socket (socket variant) or EV connected (fixed cable)."""
        if self.cable_variant:
            return self.ev_connected
        return self.cable_a is not None

    @property
    def locked(self):
        return self.board.lock_feedback()

    def max_current_a(self):
        limit = self.cfg.get("MaxCurrent")
        if not self.cable_variant and self.cable_a is not None:
            limit = min(limit, self.cable_a)  # a fixed cable is sized for the charger: PP is not read
        return limit

    def arbiter(self):
        """The one place the offered current is computed (DESIGN.md §2): min of every limit, 0 below 6 A."""
        da = self.max_current_a() * 10
        if self.limit_da is not None and self.limit_da < da:
            da = self.limit_da
        if self.local_da is not None and self.local_da < da:
            da = self.local_da
        if self.ext_da is not None and self.ext_da < da:
            da = self.ext_da
        return da if da >= 60 else 0

    # ---- slow path ----
    def update(self):
        """Re-evaluates outputs from the inputs and requests; safe to call from any loop task."""
        b = self.board
        now = b.ticks_ms()
        self._loop_ms = now
        self._debounce(now)
        if not self.cable_variant:
            self.cable_a = pilot.pp_amps(b.read_pp_ohms())
        self.local_da = b.local_limit_da()
        if self.state == pilot.A:
            self._seen_a = True
            self._vent_refused = False
        elif self.state == pilot.D and not self.ventilation and not self._vent_refused:
            self._vent_refused = True
            log.warn(_TAG, "EV asks for ventilation (state D): not available, no energy until unplugged")
        self._update_lock(now)
        self._check_meter(now)
        self._check_current(now)
        self._log_changes()
        self._recover()
        self.offer_da = 0 if self._vent_refused else self.arbiter()
        ok = self._ready(now) and self.offer_da > 0
        pwm = pilot.duty_permille(self.offer_da) if ok and self.ev_connected else 1000
        if pwm != self.pwm:
            b.set_pwm(pwm)
            self.pwm = pwm
        if self.contactor:
            self._keep_or_open(now, pwm)
        elif pwm < 1000 and self.ev_ready and self.raw_state == self.state and not self._wf:
            b.set_contactor(True)  # command first: a watch tick in between sees "open" and leaves it alone
            self.contactor = True
            log.info(_TAG, "contactor closed, offering %d.%d A" % (self.offer_da // 10, self.offer_da % 10))

    def _ready(self, now):
        # Everything DESIGN.md §2 needs besides the offer and the pilot: session, availability, no fault,
        # a meter that answered within the grace, the cable, the lock.
        m = self.meter
        meter_ok = m.ok or (m.last_ok_ms is not None and time.ticks_diff(now, m.last_ok_ms) < METER_GRACE_MS)
        return (self.allow and self.operative and not (self._wf or self._sf) and meter_ok and self.plugged
                and not self._vent_refused and (self.cable_variant or self.board.lock_feedback()))

    def _keep_or_open(self, now, pwm):
        if pwm < 1000:
            self._x1_since = None
            if not self.ev_ready:
                self.open_contactor()
            return
        # No offer. A stop (DESIGN.md §2: authorisation, availability, fault, meter, a 0 A limit) opens now;
        # a pause below 6 A waits for the EV to open S2 (the watch then opens), 6 s at most under load.
        pause = (self.offer_da == 0 and self.limit_da != 0 and self.local_da != 0 and self.ev_ready
                 and self._ready(now))
        if not pause:
            self.open_contactor()
        elif self._x1_since is None:
            self._x1_since = now
        elif time.ticks_diff(now, self._x1_since) >= STOP_IN_C_MS:
            log.warn(_TAG, "EV still in C %d ms after the offer stopped: opening under load" % STOP_IN_C_MS)
            self.open_contactor()

    def open_contactor(self):
        self.board.set_contactor(False)
        if self.contactor:
            log.info(_TAG, "contactor opened")
        self.contactor = False
        self._x1_since = None

    def _debounce(self, now):
        raw = self.raw_state
        if raw == self.state:
            self._cand = raw
            self._since = now
            return
        if raw != self._cand:
            self._cand = raw
            self._since = now
        st = self.state
        if raw == pilot.A or raw == pilot.E or raw == pilot.F or (self.contactor and (st == pilot.C or st == pilot.D)):
            need = _DEB_FAST_MS
        elif raw == pilot.C or raw == pilot.D:
            need = _DEB_C_MS
        else:
            need = _DEB_MS
        if time.ticks_diff(now, self._since) >= need:
            log.info(_TAG, "pilot %s -> %s" % (pilot.NAMES[st], pilot.NAMES[raw]))
            self.state = raw

    def _update_lock(self, now):
        if self.cable_variant:
            return
        b = self.board
        want = self.want_lock and self.cable_a is not None
        if want and self._lock_cmd_ms is None:
            b.set_lock(True)
            self._lock_cmd_ms = now
        elif not want and self._lock_cmd_ms is not None:
            b.set_lock(False)
            self._lock_cmd_ms = None
        if (want and not self._sf and not b.lock_feedback()
                and time.ticks_diff(now, self._lock_cmd_ms) > _LOCK_TIMEOUT_MS):
            self._sf = F_LOCK

    def _check_meter(self, now):
        # Idle too: a charger that cannot bill must say so and take no session (issue 9). The grace keeps one
        # lost poll or a short glitch from flapping the status.
        m = self.meter
        if m.ok or m.trouble is None or self._sf:
            return
        since = m.last_ok_ms if m.last_ok_ms is not None else m.bad_since
        if since is None or time.ticks_diff(now, since) >= METER_GRACE_MS:
            self._sf = F_METER

    def _check_current(self, now):
        # Only a new reading counts; X1 (pwm 1000) is the 6 s rule's business, not this one's.
        m = self.meter
        if not self.contactor or self.pwm >= 1000:
            self._oc_since = None
            return
        if not m.ok or m.last_ok_ms == self._oc_reading:
            return
        self._oc_reading = m.last_ok_ms
        a = m.current_a
        drawn = max(a[0], a[1], a[2])
        if drawn * 10 <= self.offer_da + OVERCURRENT_MARGIN_DA:
            self._oc_since = None
        elif self._oc_since is None:
            self._oc_since = now
            log.warn(_TAG, "EV draws %d A over the %d A offered" % (drawn, self.offer_da // 10))
        elif time.ticks_diff(now, self._oc_since) >= OVERCURRENT_MS and not self._sf:
            self._sf = F_OVERCURRENT
            self.open_contactor()

    def _recover(self):
        # Each fault clears when its cause has gone (digest §2.8 I*); the connector then reports the pre-fault
        # status again. The RCD also needs the EV to have left (state A): a person may still be touching it.
        b = self.board
        wf = self._wf
        if wf:
            if wf == F_RCD:
                done = self._seen_a and not b.rcd_tripped()
            elif wf == F_WELD:
                done = not b.contactor_feedback()
            elif wf == F_DIODE:
                done = self._seen_a  # the diode can only be checked with the PWM on: a new EV gets a new check
            else:
                done = self.state != pilot.E and self.state != pilot.F and self.raw_state == self.state
            if done:
                self._clear = True
        sf = self._sf
        if sf == F_LOCK:
            # Not when the lock is merely no longer wanted: a connector whose lock failed stays Faulted until the
            # lock confirms or the cable leaves the socket, so the Central System always hears of it (issue 9).
            if (b.lock_feedback() and self.want_lock) or self.cable_a is None:
                self._sf = 0
        elif sf == F_METER:
            if self.meter.ok:
                self._sf = 0
        elif sf == F_OVERCURRENT:
            if not self.ev_ready:
                self._sf = 0

    def _log_changes(self):
        if self.tripped != self._logged_trips:
            self._logged_trips = self.tripped
            if self.hung_trips != self._logged_hung:
                self._logged_hung = self.hung_trips
                log.warn(_TAG, "watch opened the contactor: the loop was stalled over %d ms" % LOOP_DEAD_MS)
            else:
                log.warn(_TAG, "watch opened the contactor (pilot %s)" % pilot.NAMES[self.raw_state])
        code = self._wf or self._sf
        if code != self._logged_fault:
            if code:
                log.warn(_TAG, "fault %s: %s" % (_CODES[code], self.fault_info))
            else:
                log.info(_TAG, "fault cleared")
            self._logged_fault = code
            if code:
                self._seen_a = self.state == pilot.A  # recovery that needs an unplug counts from now

    async def run(self):
        self.start()
        board = self.board
        while True:
            self.update()
            self.beats += 1
            block = board.take_block_ms()
            if block:
                # Test hook (tools/sim.py "mcu" command): stall the loop on purpose; the watch must still act.
                log.warn(_TAG, "blocking the loop for %d ms" % block)
                time.sleep_ms(block)
                log.info(_TAG, "loop unblocked")
            await asyncio.sleep_ms(_LOOP_MS)
