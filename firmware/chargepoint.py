# The charger model (issue 10): what every front end (the web page, MQTT, later provisioning) sees of the charger
# and may do with it. snapshot() is the state as a plain dict; the commands answer (ok, reason) and never raise for
# bad input: a refused command changes nothing and says why. A change is announced as in Peter Hinch's primitives:
# `version` counts changes and one asyncio.Event wakes every task waiting in changed(), which compares versions,
# so nothing is queued or allocated per change and a slow front end simply reads the latest state.
#
# The model owns nothing of the charger but the front ends' current limit: it reads the parts App wires (Evse,
# Meter, Connector, Session, the WiFi link) and calls into them. Changes are found by poll(), which the model's
# task (run()) calls every 100 ms: a comparison of a few fields against their last values, with no allocation and
# no hook in the parts themselves; a command bumps the version at once. App starts the model (start(), below) only
# when a front end is configured, so a charger without one pays no heap for it.
import asyncio
import sys
import time
from micropython import const

from firmware import clock, log, pilot

_TAG = "model"
_PAUSE_DA = const(1)     # as loadlimit.PAUSE_DA: 1-59 (0.1 A) pauses the EV (X1); 0 would open under load
_MIN_A = const(6)        # IEC 61851-1: the smallest current the pilot can offer
_TAG_MAX = const(20)     # OCPP IdToken: CiString20
_FIELDS = const(15)      # values poll() compares
_POLL_MS = const(100)    # as the connector's tick: a change reaches the front ends within this
_WRAP = const(0x3FFFFFFF)  # version stays a small int (no heap) on a 32-bit board


def _slot():
    # The firmware slot this interpreter runs from ("a" / "b", docs/ota.md), None without slots: slotboot puts
    # the slot's directory first on sys.path. Read here rather than importing slotboot, which boot.py unloads.
    for p in sys.path:
        i = p.rfind("/slots/")
        if i >= 0 and p[i + 7:] in ("a", "b"):
            return p[i + 7:]
    return None


class ChargePoint:
    """evse, meter, connector, session, cfg, wifi: the parts App wires. owner: App, for the rest the model asks
    for: owner.core (firmware/ocpp/core.py: set_availability(operative) -> "Accepted" | "Scheduled", async
    reboot(kind)) and owner.firmware_status (the FirmwareStatusNotification state)."""

    def __init__(self, evse, meter, connector, session, cfg, wifi, owner):
        self.evse = evse
        self.meter = meter
        self.conn = connector
        self.session = session
        self.cfg = cfg
        self.wifi = wifi
        self.owner = owner
        self.version = 0
        self._evt = asyncio.Event()
        self._seen = [None] * _FIELDS
        self.limit_a = None      # the front ends' limit as given (A; 0 = pause), None = none
        self._limit_da = None    # the same for the arbiter (0.1 A, a pause as _PAUSE_DA)
        self._load = None        # load management: fn(now_ms) -> 0.1 A or None (firmware/mqttfront.py)
        self._rx_ms = None       # when the Central System was last heard (kept across a reconnect)
        self._authorizing = False  # a start's id tag is with the Central System
        self._slot = _slot()
        self.web = None          # the front ends start() made
        self.mqtt = None
        self.poll()

    # ---- change notification ----
    def touch(self):
        """Something a front end shows has changed: wake every task in changed()."""
        self.version = (self.version + 1) & _WRAP
        self._evt.set()

    async def changed(self, seen):
        """Waits until the version differs from seen; returns the new version."""
        while self.version == seen:
            self._evt.clear()
            await self._evt.wait()
        return self.version

    def _differs(self, i, value):
        seen = self._seen
        old = seen[i]
        if value is old or value == old:  # identity first: the running transaction is the same record
            return 0
        seen[i] = value
        return 1

    async def run(self):
        while True:
            try:
                self.poll()
            except Exception as e:  # a bug here must not end the task: the arbiter would keep a stale limit
                log.error(_TAG, "poll failed: %r" % (e,))
            await asyncio.sleep_ms(_POLL_MS)

    def poll(self):
        """Every 100 ms (run()): hands the arbiter the current limit (load management must be asked
        at every turn: a stale input falls back on time alone) and bumps the version when a field the
        snapshot shows has changed."""
        e = self.evse
        c = self.conn
        m = self.meter
        s = self.session
        self._apply()
        w = self.wifi
        # self._differs(...) each time: a bound method kept in a local would be allocated at every poll
        n = (self._differs(0, c.reporter.status) + self._differs(1, e.state) + self._differs(2, e.plugged)
             + self._differs(3, e.offer_da) + self._differs(4, e.pwm) + self._differs(5, e.contactor)
             + self._differs(6, e.fault_code) + self._differs(7, e.operative) + self._differs(8, c.tx)
             + self._differs(9, c.pending_tag) + self._differs(10, s.online) + self._differs(11, s.registered)
             + self._differs(12, m.energy_wh) + self._differs(13, int(m.power_w or 0))
             + self._differs(14, w.state if w is not None else None))
        if n:
            self.touch()

    # ---- the state ----
    def snapshot(self):
        e = self.evse
        m = self.meter
        s = self.session
        w = self.wifi
        fault = e.fault
        return {"status": self.conn.reporter.status or self.conn.reporter.compute(), "error_code": fault or "NoError",
                "error_info": e.fault_info if fault else None, "pilot": pilot.NAMES[e.state],
                "plugged": e.plugged, "offered_a": e.offer_da / 10 if 0 < e.pwm < 1000 else 0.0,
                "current_a": list(m.current_a), "power_w": m.power_w, "energy_wh": m.energy_wh,
                "max_a": self.cfg.get("MaxCurrent"), "limit_a": self.limit_a, "session": self._session(),
                "link": {"online": s.online, "registered": s.registered, "answer_age_s": self._answer_age()},
                "wifi": {"state": w.state, "ssid": w.ssid, "ip": w.ip, "error": w.error} if w is not None else None,
                "firmware": {"version": s.boot_fields.get("firmwareVersion"), "slot": self._slot,
                             "update": self.owner.firmware_status},
                "available": e.operative}

    def _session(self):
        # The one place that reads the connector's transaction record
        tx = self.conn.tx
        if tx is None:
            return None
        t0 = tx.t0
        return {"id_tag": tx.tag, "start": clock.iso(t0), "energy_wh": max(0, self.meter.energy_wh - tx.wh0),
                "duration_s": max(0, clock.now() - t0), "transaction_id": self.conn.transaction_id()}

    def _answer_age(self):
        ws = self.session.ws
        if ws is not None:
            self._rx_ms = ws.last_rx_ms
        return None if self._rx_ms is None else time.ticks_diff(time.ticks_ms(), self._rx_ms) // 1000

    # ---- commands: (ok, reason) ----
    def start(self, id_tag=None):
        """A session for id_tag, authorised as a card presented at the charger is (local list, cache, Central
        System); None: free vend, when FreeVendEnabled. ok: the start is under way (Preparing until the EV is
        there, ConnectionTimeOut at most); an id tag that is not authorised is logged."""
        if id_tag is not None and not (isinstance(id_tag, str) and 0 < len(id_tag) <= _TAG_MAX):
            return False, "id_tag must be 1-%d characters, or none for free vend" % _TAG_MAX
        why = self._startable()
        if why:
            return False, why
        conn = self.conn
        if id_tag is None:
            if not self.cfg.get("FreeVendEnabled"):
                return False, "free vend is off: give an id tag"
            conn.arm(self.cfg.get("FreeVendIdTag"))
        else:
            self._authorizing = True
            asyncio.create_task(self._authorize(id_tag))
        log.info(_TAG, "start requested for %s" % (id_tag or "free vend"))
        self.touch()
        return True, None

    async def _authorize(self, id_tag):
        try:
            await self.conn.authorize_start(id_tag)
        finally:
            self._authorizing = False
            self.touch()

    def _startable(self):
        conn = self.conn
        e = self.evse
        if conn.tx is not None:
            return "a session is running already"
        if self._authorizing:
            return "an id tag is being authorised"
        if conn.pending_tag is not None:
            return "a start for %s is waiting for the EV already" % conn.pending_tag
        if not e.operative:
            return "the connector is unavailable"
        if e.fault:
            return "the connector is faulted (%s)" % e.fault
        return None

    def stop(self):
        """Ends the running session (StopTransaction reason Local)."""
        if self.conn.tx is None:
            return False, "no session to stop"
        self.conn.stop("Local")
        log.info(_TAG, "session stopped by a front end")
        self.touch()
        return True, None

    def set_limit(self, amps):
        """The front ends' current limit: 0 pauses (the EV is asked to stop drawing, X1), 6 A up to MaxCurrent
        limits, None clears it. Kept in RAM: after a reboot the charger starts without it."""
        top = self.cfg.get("MaxCurrent")
        if amps is not None and (isinstance(amps, bool) or not isinstance(amps, (int, float)) or amps != amps
                                 or (amps != 0 and not _MIN_A <= amps <= top)):
            return False, "limit must be 0 (pause), %d-%d A, or none" % (_MIN_A, top)
        self.limit_a = amps
        self._limit_da = None if amps is None else int(amps * 10) or _PAUSE_DA
        self._apply()
        self.evse.update()  # the new offer reaches the PWM now, not at the next turn
        self.touch()
        return True, None

    def set_load_limit(self, fn):
        """Load management (firmware/mqttfront.py): fn(now_ms) -> 0.1 A or None, asked at every poll."""
        self._load = fn

    def _apply(self):
        da = self._limit_da
        fn = self._load
        if fn is not None:
            v = fn(time.ticks_ms())
            if v is not None and (da is None or v < da):
                da = v or _PAUSE_DA
        self.evse.ext_da = da

    def set_availability(self, operative):
        """ChangeAvailability from a front end: with a session running, inoperative waits for its end."""
        if not isinstance(operative, bool):
            return False, "expected true (operative) or false (inoperative)"
        answer = self.owner.core.set_availability(operative)
        self.touch()
        if answer == "Scheduled":
            return True, "scheduled: the connector becomes unavailable when the session ends"
        return True, None

    def reset(self, hard=False):
        """Reboots the charger as a Reset from the Central System does (a running session stops first)."""
        asyncio.create_task(self.owner.core.reboot("Hard" if hard else "Soft"))
        return True, None

    def unlock(self):
        """Releases the socket's lock, when no session holds it."""
        e = self.evse
        if e.cable_variant:
            return False, "a fixed cable has no lock"
        if self.conn.tx is not None or self.conn.pending_tag is not None:
            return False, "a session holds the cable: stop it first"
        e.want_lock = False
        e.update()
        self.touch()
        return True, None


def start(app):
    """The model (app.chargepoint) and its task, the web page when WebEnabled, MQTT when MqttUrl is set; App.main
    calls this only when one of them is. Each front end is imported here, so a charger without it pays no heap.
    MqttUrl set later (from the page) starts MQTT then."""
    cfg = app.cfg
    model = app.chargepoint = ChargePoint(app.evse, app.meter, app.connector, app.session, cfg, app.wifi, app)
    asyncio.create_task(model.run())
    if cfg.get("WebEnabled"):
        from firmware import web

        model.web = web.start(model, cfg)
    if cfg.get("MqttUrl"):
        _start_mqtt(app, model)
    else:
        cfg.watch(lambda name: name == "MqttUrl" and model.mqtt is None and cfg.get("MqttUrl")
                  and _start_mqtt(app, model))


def _start_mqtt(app, model):
    from firmware import mqttfront
    from firmware.app import VENDOR, MODEL

    model.mqtt = mqttfront.start(model, app.cfg, app.board.state_dir, device=(VENDOR, MODEL))
