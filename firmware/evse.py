# The EVSE: IEC 61851 pilot state, the current arbiter, and the contactor and lock rules (DESIGN.md §2).
# Safety lives here. The fast path (watch) runs from board.start_watch, off the asyncio loop, so a busy
# loop can never keep the contactor closed after the EV leaves state C/D.
import asyncio
import time
from micropython import const

from firmware import pilot, log

_TAG = "evse"
_WATCH_MS = const(10)
_LOOP_MS = const(50)
_DEBOUNCE_MS = const(100)  # a new pilot state must hold this long before the slow path acts on it
_LOCK_TIMEOUT_MS = const(1500)

# Fault codes latched by the EVSE, reported by the OCPP layer as StatusNotification errorCode.
NO_FAULT = None


class Evse:
    def __init__(self, board, meter, cfg):
        self.board = board
        self.meter = meter
        self.cfg = cfg
        self.cable_variant = cfg.get("Variant") == "cable"
        # Inputs, refreshed by the watch.
        self.raw_state = pilot.A
        self.state = pilot.A  # debounced
        self._since = time.ticks_ms()
        self.diode_ok = True
        self.cable_a = None
        # Requests from the OCPP layer.
        self.allow = False  # an authorised transaction (or free vend) wants energy
        self.limit_da = None  # smart-charging limit in 0.1 A, None = none
        self.operative = True
        self.want_lock = False
        # Outputs.
        self.pwm = 1000
        self.offer_da = 0
        self.contactor = False
        self.fault = NO_FAULT  # latched OCPP errorCode string
        self.lock_failed = False
        self._lock_cmd_ms = None
        board.set_pwm(1000)
        board.set_contactor(False)
        board.set_lock(False)

    # ---- fast path: runs every 10 ms off the loop; must not allocate or block ----
    def watch(self):
        hi, lo = self.board.read_cp()
        st = pilot.classify(hi)
        self.raw_state = st
        if self.contactor and (st != pilot.C and st != pilot.D or not pilot.diode_ok(lo, self.pwm)):
            self.board.set_contactor(False)  # IEC 61851-1 A.6: open within 100 ms of leaving C/D
            self.contactor = False

    def start(self):
        self.board.start_watch(_WATCH_MS, self.watch)

    # ---- slow path ----
    @property
    def ev_connected(self):
        return self.state in (pilot.B, pilot.C, pilot.D)

    @property
    def ev_ready(self):
        return self.state in (pilot.C, pilot.D)

    @property
    def plugged(self):
        """Cable in the socket (socket variant) or EV connected (fixed cable)."""
        if self.cable_variant:
            return self.ev_connected
        return self.cable_a is not None

    @property
    def locked(self):
        return self.board.lock_feedback()

    @property
    def charging(self):
        return self.contactor and self.meter.power_w > 50

    def max_current_a(self):
        limit = self.cfg.get("MaxCurrent")
        if not self.cable_variant and self.cable_a is not None:
            limit = min(limit, self.cable_a)
        return limit

    def _arbiter(self):
        # The one place the offered current is computed (DESIGN.md §2): min of every limit, 0 below 6 A.
        da = self.max_current_a() * 10
        if self.limit_da is not None:
            da = min(da, self.limit_da)
        return da if da >= 60 else 0

    def update(self):
        """Re-evaluates outputs from the inputs and requests; safe to call from any loop task."""
        now = time.ticks_ms()
        board = self.board
        if self.raw_state != self.state and time.ticks_diff(now, self._since) >= _DEBOUNCE_MS:
            log.info(_TAG, "pilot %s -> %s" % (pilot.NAMES[self.state], pilot.NAMES[self.raw_state]))
            self.state = self.raw_state
        if self.raw_state == self.state:
            self._since = now
        if not self.cable_variant:
            self.cable_a = pilot.pp_amps(board.read_pp_ohms())
        self._update_lock(now)
        self.offer_da = self._arbiter()
        ok = (self.allow and self.operative and self.fault is NO_FAULT and self.meter.ok
              and self.plugged and self.offer_da > 0 and self._locked_ok())
        pwm = pilot.duty_permille(self.offer_da) if ok and self.ev_connected else 1000
        if pwm != self.pwm:
            self.pwm = pwm
            board.set_pwm(pwm)
        if self.contactor:
            if not (ok and self.ev_ready and pwm < 1000):
                self.open_contactor()
        elif ok and self.ev_ready and pwm < 1000 and self.raw_state == self.state:
            self.contactor = True
            board.set_contactor(True)
            log.info(_TAG, "contactor closed, offering %d.%d A" % (self.offer_da // 10, self.offer_da % 10))

    def open_contactor(self):
        self.board.set_contactor(False)
        if self.contactor:
            log.info(_TAG, "contactor opened")
        self.contactor = False

    def _locked_ok(self):
        return self.cable_variant or self.board.lock_feedback()

    def _update_lock(self, now):
        if self.cable_variant:
            return
        want = self.want_lock and self.cable_a is not None
        if want and self._lock_cmd_ms is None:
            self.board.set_lock(True)
            self._lock_cmd_ms = now
            self.lock_failed = False
        elif not want and self._lock_cmd_ms is not None:
            self.board.set_lock(False)
            self._lock_cmd_ms = None
        if want and not self.board.lock_feedback() and time.ticks_diff(now, self._lock_cmd_ms) > _LOCK_TIMEOUT_MS:
            if not self.lock_failed:
                log.warn(_TAG, "lock did not engage")
            self.lock_failed = True

    async def run(self):
        self.start()
        while True:
            self.update()
            await asyncio.sleep_ms(_LOOP_MS)
