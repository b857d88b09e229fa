# firmware/chargepoint.py: the charger model the front ends use. The real Evse, Connector, TxQueue, Auth, Config and
# WiFi Link run on a fake board (pilot and PP follow a simulated EV and cable), a fake meter and a Central System
# that is never reached; the test plays the app's tasks in a fixed order (watch every 10 ms, EVSE slow path every
# 50 ms, connector tick and model poll every 100 ms), as tests/mpy/test_connector.py does.
import asyncio
import boardclock
import json
import micropython
import tinytest
import fake_model
from firmware import config, pilot, wifi
from firmware import evse as E
from firmware.chargepoint import ChargePoint
from firmware.ocpp import connector as C
from firmware.ocpp.auth import Auth
from firmware.ocpp.session import Offline
from firmware.ocpp.txqueue import TxQueue, STOP

_LEVEL = {"A": 12000, "B": 9000, "C": 6000, "D": 3000}
_PP = {13: 1500, 20: 680, 32: 220, 63: 100}


class Board:
    def __init__(self):
        self.t = 1000
        self.ev = "A"
        self.cable = None
        self.pwm = 1000
        self.cmd = False
        self.lock_cmd = False

    def ticks_ms(self):
        return self.t

    def set_pwm(self, p):
        self.pwm = p

    def set_contactor(self, on):
        self.cmd = on

    def set_lock(self, on):
        self.lock_cmd = on

    def read_cp(self):
        level = _LEVEL[self.ev]
        return level, (level if self.pwm >= 1000 else -12000)

    def read_pp_ohms(self):
        return None if self.cable is None else _PP[self.cable]

    def lock_feedback(self):
        return self.lock_cmd

    def contactor_feedback(self):
        return self.cmd

    def rcd_tripped(self):
        return False

    def local_limit_da(self):
        return None

    def take_block_ms(self):
        return 0

    def start_watch(self, ms, fn):
        pass


class Meter:
    model = "SDM630"

    def __init__(self):
        self.ok = True
        self.last_ok_ms = 0
        self.energy_wh = 1000
        self.power_w = 0.0
        self.current_a = [0.0, 0.0, 0.0]
        self.voltage_v = [230.0, 230.0, 230.0]
        self.trouble = None
        self.hold = False

    async def poll(self):
        return self.ok

    def fresh(self, now):
        return self.ok

    def release(self):
        pass

    def step(self, board):
        if not self.ok:
            return
        amps = 0
        if board.cmd and board.ev in "CD":
            amps = min(16, pilot.amps_from_duty(board.pwm) // 10)
        self.current_a = [float(amps)] * 3
        self.power_w = 690.0 * amps
        self.energy_wh += 3 if amps else 0
        self.last_ok_ms = board.t


class Ws:
    last_rx_ms = None


class Session:
    registered = False
    online = False
    ws = None
    boot_fields = {"firmwareVersion": "9.9.9"}

    async def call(self, action, payload, timeout_ms=None):
        raise Offline()


class Owner:
    """What App and its Core object do for the model: availability (with its Scheduled case), reboot, the firmware
    status."""

    def __init__(self, rig):
        self.rig = rig
        self.firmware_status = "Idle"
        self.reboots = []
        self.core = self  # App's Core object: this fake plays both

    def set_availability(self, operative):
        r = self.rig
        if r.conn.tx is not None and not operative:
            return "Scheduled"
        r.evse.operative = operative
        r.conn.tick()
        return "Accepted"

    async def reboot(self, kind):
        self.reboots.append(kind)


class Rig:
    def __init__(self, variant="socket", **keys):
        d = tinytest.tempdir("model")
        with open(d + "/provision.json", "w") as f:
            f.write(json.dumps({"Variant": variant, "MaxCurrent": 32}))
        self.cfg = cfg = config.Config(d)
        for k, v in keys.items():
            assert cfg.set(k, v)[0] == "Accepted", k
        self.board = b = Board()
        self.meter = m = Meter()
        self.evse = E.Evse(b, m, cfg)
        self.session = Session()
        self.txq = TxQueue(self.session, cfg, d)
        self.conn = C.Connector(self.session, self.txq, self.evse, m, cfg, Auth(cfg, d), d, b.ticks_ms)
        self.wifi = wifi.Link(b, "HomeNet", "secret-pw")
        self.owner = Owner(self)
        self.model = ChargePoint(self.evse, m, self.conn, self.session, cfg, self.wifi, self.owner)

    async def run(self, ms):
        for _ in range(ms // 10):
            if boardclock.step(self.board, self.evse, self.meter, self.conn):
                self.model.poll()
            await asyncio.sleep_ms(0)

    def plug(self):
        if not self.evse.cable_variant:
            self.board.cable = 32
        self.board.ev = "B"

    async def charging(self, tag="TAG1"):
        self.conn.arm(tag)
        self.plug()
        await self.run(1000)
        self.board.ev = "C"
        await self.run(1500)
        status = self.conn.reporter.status
        assert self.board.cmd and status == "Charging", (self.board.cmd, status)

    def stops(self):
        return [json.loads(data)[2] for _, data in self.txq.journal.records() if json.loads(data)[0] == STOP]


def _shape(d):
    # the keys of a snapshot, nested dicts by their own keys
    return {k: (_shape(v) if isinstance(v, dict) else None) for k, v in d.items()}


# ---- the snapshot ----
async def test_snapshot_has_the_fields_of_the_front_ends_interface():
    r = Rig()
    await r.run(500)
    s = r.model.snapshot()
    want = fake_model._snapshot()
    session = {"id_tag": "T", "start": 0, "energy_wh": 0, "duration_s": 0, "transaction_id": None}
    assert set(s) == set(want), (sorted(s), sorted(want))
    for k in ("link", "wifi", "firmware"):
        assert set(s[k]) == set(want[k]), (k, s[k])
    assert (s["status"], s["error_code"], s["error_info"], s["pilot"], s["plugged"]) == (
        "Available", "NoError", None, "A", False)
    assert (s["offered_a"], s["power_w"], s["energy_wh"], s["max_a"], s["limit_a"]) == (0.0, 0.0, 1000, 32, None)
    assert s["session"] is None and s["available"] is True
    assert s["link"] == {"online": False, "registered": False, "answer_age_s": None}
    assert s["wifi"] == {"state": "off", "ssid": "HomeNet", "ip": None, "error": None}
    assert "secret-pw" not in json.dumps(s)
    assert s["firmware"]["version"] == "9.9.9" and s["firmware"]["update"] == "Idle"
    json.dumps(s)  # every value serialises
    await r.charging()
    await r.run(2000)
    s = r.model.snapshot()
    assert set(s["session"]) == set(session), s["session"]
    assert (s["status"], s["pilot"], s["plugged"], s["offered_a"]) == ("Charging", "C", True, 32.0), s
    assert s["current_a"] == [16.0, 16.0, 16.0] and s["power_w"] == 690.0 * 16
    se = s["session"]
    assert se["id_tag"] == "TAG1" and se["transaction_id"] is None  # the Central System has not answered
    assert se["energy_wh"] == s["energy_wh"] - r.conn.tx.wh0 > 0 and se["start"].endswith("Z")


async def test_snapshot_shows_a_fault_and_the_link():
    r = Rig()
    r.meter.ok = False
    r.meter.trouble = "no answer"
    r.meter.bad_since = r.board.t
    r.meter.last_ok_ms = None
    await r.run(6000)  # the meter grace: then PowerMeterFailure
    s = r.model.snapshot()
    assert (s["status"], s["error_code"], s["error_info"]) == ("Faulted", "PowerMeterFailure", "no answer"), s
    r.session.online = r.session.registered = True
    r.session.ws = ws = Ws()
    import time
    ws.last_rx_ms = time.ticks_add(time.ticks_ms(), -5000)
    link = r.model.snapshot()["link"]
    assert link["online"] and link["registered"] and 4 <= link["answer_age_s"] <= 6, link
    r.session.ws = None  # the link went down: the age of the last answer stays known
    r.session.online = False
    assert r.model.snapshot()["link"]["answer_age_s"] >= 4


# ---- change notification ----
async def test_version_bumps_on_changes_and_changed_wakes_every_waiter():
    r = Rig()
    await r.run(300)
    m = r.model
    v0 = m.version
    await r.run(1000)
    assert m.version == v0  # nothing changed: no bump
    woke = []

    async def waiter(name):
        woke.append((name, await m.changed(v0)))

    tasks = [asyncio.create_task(waiter(n)) for n in ("web", "mqtt")]
    await asyncio.sleep_ms(0)
    assert woke == []
    r.plug()  # the pilot goes to B: status Preparing
    await r.run(1000)
    await asyncio.sleep_ms(0)
    assert len(woke) == 2 and all(v != v0 for _, v in woke), woke
    v1 = m.version
    assert await m.changed(v0) == v1  # an old version returns at once
    for t in tasks:
        t.cancel()
    # link up, a session, a limit: each bumps
    for change in (lambda: setattr(r.session, "online", True), lambda: r.conn.arm("TAG1"),
                   lambda: m.set_limit(10)):
        before = m.version
        change()
        m.poll()
        assert m.version != before


def test_poll_allocates_nothing():
    r = Rig()
    m = r.model
    m.poll()
    micropython.heap_lock()
    try:
        m.poll()  # nothing changed
        r.meter.energy_wh += 1
        r.evse.state = pilot.B
        m.poll()  # changes: the version bumps
    finally:
        micropython.heap_unlock()
    assert m._seen[12] == 1001


# ---- commands ----
async def test_start_is_refused_in_the_wrong_state_and_changes_nothing():
    r = Rig(AllowOfflineTxForUnknownId="true")
    m = r.model
    assert m.start(None) == (False, "free vend is off: give an id tag")
    assert m.start("") == (False, "id_tag must be 1-20 characters, or none for free vend")
    assert m.start("X" * 21)[0] is False and m.start(42)[0] is False
    assert m.set_availability(False) == (True, None)
    await r.run(200)
    assert m.snapshot()["status"] == "Unavailable"
    v = m.version
    assert m.start("TAG1") == (False, "the connector is unavailable")
    await r.run(200)
    assert r.conn.pending_tag is None and m.version == v
    assert m.set_availability("yes")[0] is False
    assert m.set_availability(True) == (True, None)
    assert m.start("TAG1") == (True, None)
    assert m.start("TAG2") == (False, "an id tag is being authorised")
    await r.run(200)  # authorised offline (AllowOfflineTxForUnknownId): waits for the EV
    assert r.conn.pending_tag == "TAG1" and m.snapshot()["status"] == "Preparing"
    assert m.start("TAG2") == (False, "a start for TAG1 is waiting for the EV already")
    r.plug()
    await r.run(1000)
    r.board.ev = "C"
    await r.run(1500)
    assert m.snapshot()["status"] == "Charging"
    assert m.start("TAG2") == (False, "a session is running already")
    assert r.conn.tx.tag == "TAG1"


async def test_free_vend_start_and_stop():
    r = Rig(FreeVendEnabled="false")
    m = r.model
    r.cfg.set("FreeVendEnabled", "true")
    assert m.start(None) == (True, None)
    assert r.conn.pending_tag == r.cfg.get("FreeVendIdTag")
    r.plug()
    await r.run(1000)
    r.board.ev = "C"
    await r.run(1500)
    assert m.snapshot()["session"]["id_tag"] == r.cfg.get("FreeVendIdTag")
    assert m.stop() == (True, None)
    await r.run(300)
    assert r.conn.tx is None and not r.board.cmd
    assert [s["reason"] for s in r.stops()] == ["Local"]
    assert m.stop() == (False, "no session to stop")
    assert len(r.stops()) == 1
    assert m.snapshot()["status"] == "Finishing"


async def test_limit_reaches_the_pilot_and_bad_limits_are_refused():
    r = Rig()
    m = r.model
    await r.charging()
    assert r.board.pwm == pilot.duty_permille(320)
    for bad in (3, 5.9, 33, -1, True, "10", float("nan")):
        assert m.set_limit(bad) == (False, "limit must be 0 (pause), 6-32 A, or none"), bad
    assert r.evse.ext_da is None and m.limit_a is None and r.board.pwm == pilot.duty_permille(320)
    assert m.set_limit(10) == (True, None)
    assert r.board.pwm == pilot.duty_permille(100)  # at once
    await r.run(500)
    s = m.snapshot()
    assert (s["limit_a"], s["offered_a"], s["status"]) == (10, 10.0, "Charging"), s
    assert m.set_limit(0) == (True, None)  # a pause: the EV is asked to stop drawing (X1)
    await r.run(300)
    s = m.snapshot()
    assert r.board.pwm == 1000 and (s["limit_a"], s["offered_a"], s["status"]) == (0, 0.0, "SuspendedEVSE"), s
    assert r.conn.tx is not None  # a pause keeps the session
    assert m.set_limit(None) == (True, None)
    await r.run(1000)
    assert r.board.pwm == pilot.duty_permille(320) and r.board.cmd and m.snapshot()["status"] == "Charging"


async def test_load_limit_is_polled_and_the_lower_limit_wins():
    r = Rig()
    m = r.model
    load = [80]
    m.set_load_limit(lambda now: load[0])
    await r.charging()
    assert r.board.pwm == pilot.duty_permille(80)
    m.set_limit(7)
    await r.run(200)
    assert r.board.pwm == pilot.duty_permille(70)
    load[0] = None  # load management off: the front end's limit alone
    m.set_limit(12)
    await r.run(200)
    assert r.board.pwm == pilot.duty_permille(120)
    load[0] = 0  # no room at all: a pause, never a stop under load
    await r.run(200)
    assert r.evse.ext_da == 1 and r.board.pwm == 1000 and r.conn.tx is not None


async def test_availability_scheduled_while_charging_reset_and_unlock():
    r = Rig()
    m = r.model
    await r.charging()
    ok, why = m.set_availability(False)
    assert ok and why.startswith("scheduled"), why
    assert m.unlock() == (False, "a session holds the cable: stop it first")
    assert r.board.lock_cmd
    m.stop()
    await r.run(300)
    assert m.unlock() == (True, None)
    assert not r.board.lock_cmd
    assert m.reset() == (True, None)
    await asyncio.sleep_ms(0)
    assert r.owner.reboots == ["Soft"]
    cable = Rig("cable")
    assert cable.model.unlock() == (False, "a fixed cable has no lock")


tinytest.run(globals())
