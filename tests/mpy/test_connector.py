# firmware/ocpp/connector.py: the session lifecycle and the OCPP status machine, with the real Evse, TxQueue,
# Auth and Config on a fake board whose pilot and PP follow a simulated EV and cable, and a fake meter. The
# connector's clock is the board clock, and the test plays the app's tasks in a fixed order (watch every 10 ms,
# EVSE slow path every 50 ms, connector tick every 100 ms at a chosen phase), so the interleavings that the
# asyncio loop produces now and then on the virtual board are replayed exactly, every time.
import asyncio
import gc
import json
import boardclock
import tinytest
from firmware import config, pilot, store
from firmware import evse as E
from firmware.ocpp import connector as C
from firmware.ocpp.auth import Auth
from firmware.ocpp.session import Offline
from firmware.ocpp.txqueue import TxQueue, START, STOP, METER

_LEVEL = {"A": 12000, "B": 9000, "C": 6000, "D": 3000}
_PP = {13: 1500, 20: 680, 32: 220, 63: 100}


class Board:
    def __init__(self):
        self.t = 1000
        self.ev = "A"  # pilot as the EV sets it: A = no EV (or, fixed cable, the cable not in a car)
        self.cable = None  # socket: the cable's rating while it is in the socket
        self.lock_works = True
        self.pwm = 1000
        self.cmd = False
        self.lock_cmd = False
        self.lock_fb = False
        self.closes = 0

    def ticks_ms(self):
        return self.t

    def set_pwm(self, p):
        self.pwm = p

    def set_contactor(self, on):
        if on and not self.cmd:
            self.closes += 1
        self.cmd = on

    def set_lock(self, on):
        self.lock_cmd = on
        if self.lock_works:
            self.lock_fb = on

    def read_cp(self):
        level = _LEVEL[self.ev]
        return level, (level if self.pwm >= 1000 else -12000)

    def read_pp_ohms(self):
        return None if self.cable is None else _PP[self.cable]

    def lock_feedback(self):
        return self.lock_fb

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

    async def poll(self):
        return self.ok

    def fresh(self, now):
        return self.ok

    def release(self):
        pass

    def anchor(self, wh, extra_wh):
        self.anchored = (wh, extra_wh)

    max_w = 22080

    def step(self, board):
        amps = 0
        if board.cmd and board.ev in "CD":
            amps = min(16, pilot.amps_from_duty(board.pwm) // 10)
        self.current_a = [float(amps)] * 3
        self.power_w = 690.0 * amps
        self.energy_wh += amps * 690 // 3600 + (1 if amps else 0)
        self.last_ok_ms = board.t


class Session:
    registered = False
    online = False

    async def call(self, action, payload, timeout_ms=None):
        raise Offline()


class Rig:
    def __init__(self, variant="socket", flash=None, **keys):
        d = flash or tinytest.tempdir("conn")  # flash: the directory of an earlier Rig (a reboot on the same flash)
        self.dir = d
        with open(d + "/provision.json", "w") as f:
            f.write(json.dumps({"Variant": variant}))
        self.cfg = cfg = config.Config(d)
        for k, v in keys.items():
            assert cfg.set(k, v)[0] == "Accepted", k
        self.board = b = Board()
        self.meter = m = Meter()
        self.evse = E.Evse(b, m, cfg)
        self.txq = TxQueue(Session(), cfg, d)
        self.conn = conn = C.Connector(Session(), self.txq, self.evse, m, cfg, Auth(cfg, d), d, b.ticks_ms)
        self.statuses = []  # every status the connector took, in order (what the reporter would send)
        update = conn.reporter.update

        def record():
            update()
            if not self.statuses or self.statuses[-1] != conn.reporter.status:
                self.statuses.append(conn.reporter.status)
        conn.reporter.update = record
        self.phase = 0  # board ms (mod 100) at which the connector ticks

    def step(self):
        """10 ms of board time, without yielding."""
        boardclock.step(self.board, self.evse, self.meter, self.conn, self.phase)

    async def run(self, ms):
        for _ in range(ms // 10):
            self.step()
            await asyncio.sleep_ms(0)  # the connector's own tasks (the Stop after its meter reading) run

    def plug(self):
        if not self.evse.cable_variant:
            self.board.cable = 32
        self.board.ev = "B"

    def unplug(self):
        self.board.cable = None
        self.board.ev = "A"

    async def charging(self, tag="TAG1"):
        self.conn.arm(tag)
        self.plug()
        await self.run(1000)
        assert self.conn.tx is not None
        self.board.ev = "C"
        await self.run(1000)
        assert self.board.cmd and self.conn.reporter.status == "Charging", (self.board.cmd, self.conn.reporter.status)

    def queued(self, action=None):
        out = []
        for _, data in self.txq.journal.records():
            rec = json.loads(data)
            if action is None or rec[0] == action:
                out.append(rec[2])
        return out


def _after(statuses, first):
    return statuses[statuses.index(first):]


# ---- issue 9 item 4: the status follows one view of (plug, pilot, transaction) ----
async def test_unplug_while_charging_never_reports_preparing():
    # The PP shows the cable gone at the next slow-path turn, the pilot shows A only after its 30 ms debounce:
    # a connector tick in between used to stop the transaction and then see "no cable, EV still in C".
    r = None
    for phase in range(0, 100, 10):
        for offset in range(0, 50, 10):
            r = None  # 50 rigs in a row: the previous one's 4 KB buffers go before the next is built
            gc.collect()
            r = Rig()
            r.phase = phase
            await r.charging()
            await r.run(offset)
            r.unplug()
            await r.run(1000)
            seq = _after(r.statuses, "Charging")
            assert "Preparing" not in seq, (phase, offset, seq)
            assert seq[-1] == "Available", (phase, offset, seq)
            (stop,) = r.queued(STOP)
            assert stop["reason"] == "EVDisconnected"
            assert not r.board.cmd and not r.board.lock_cmd


async def test_unplug_race_replayed_step_by_step():
    r = Rig()
    await r.charging()
    r.unplug()
    r.board.t += 10
    r.evse.watch()
    r.board.t += 10
    r.evse.watch()  # the watch opens the contactor
    assert not r.board.cmd
    r.evse.update()  # PP: no cable; pilot A seen for the first time (debounce starts)
    r.conn.tick()
    assert r.conn.tx is None and r.conn.reporter.status == "Available", r.statuses


# ---- issue 9 item 1: EV-side disconnect with StopTransactionOnEVSideDisconnect = false ----
async def test_fixed_cable_pulled_from_the_car_suspends_and_resumes():
    r = Rig("cable", StopTransactionOnEVSideDisconnect="false")
    await r.charging()
    lid = r.conn.tx.lid
    r.board.ev = "A"  # the tethered cable leaves the car
    await r.run(1000)
    assert r.conn.tx is not None and r.conn.reporter.status == "SuspendedEV", r.statuses
    assert not r.board.cmd and r.board.pwm == 1000 and r.queued(STOP) == []
    r.board.ev = "B"  # back into the car: the same transaction, no new tag
    await r.run(1000)
    r.board.ev = "C"
    await r.run(1000)
    assert r.board.cmd and r.conn.reporter.status == "Charging" and r.conn.tx.lid == lid
    assert len(r.queued(START)) == 1 and r.queued(STOP) == []
    r.conn.present_tag("TAG1")
    await r.run(500)
    assert r.queued(STOP)[0]["reason"] == "Local"


async def test_fixed_cable_pulled_from_the_car_stops_when_the_key_is_true():
    r = Rig("cable", StopTransactionOnEVSideDisconnect="true")
    await r.charging()
    r.board.ev = "A"
    await r.run(1000)
    assert r.conn.tx is None and r.queued(STOP)[0]["reason"] == "EVDisconnected"
    assert r.statuses[-1] == "Available" and "Preparing" not in _after(r.statuses, "Charging")


async def test_socket_ev_side_disconnect_suspends_and_resumes():
    r = Rig(StopTransactionOnEVSideDisconnect="false")
    await r.charging()
    r.board.ev = "A"  # the cable leaves the car, stays in the socket
    await r.run(1000)
    assert r.conn.tx is not None and r.conn.reporter.status == "SuspendedEV" and not r.board.cmd
    assert r.board.lock_cmd  # the session goes on: the cable stays locked
    r.board.ev = "B"
    await r.run(500)
    r.board.ev = "C"
    await r.run(1000)
    assert r.board.cmd and r.queued(STOP) == []
    r.unplug()  # the cable leaves the socket: that ends it whatever the key says
    await r.run(500)
    assert r.queued(STOP)[0]["reason"] == "EVDisconnected"


# ---- issue 9 item 2: no transaction on a connector whose lock does not engage ----
async def test_lock_failure_before_start_sends_no_start_transaction():
    r = Rig(ConnectionTimeOut="10")
    r.board.lock_works = False
    r.conn.arm("TAG1")
    r.plug()
    await r.run(3000)
    assert r.board.lock_cmd  # the lock was tried
    assert r.conn.tx is None and r.queued(START) == []
    assert r.conn.reporter.status == "Faulted" and r.conn.reporter.error_code() == "ConnectorLockFailure"
    r.board.ev = "C"
    await r.run(8000)  # ConnectionTimeOut: the authorised start is dropped
    assert r.conn.pending_tag is None and r.queued() == []
    assert r.board.closes == 0 and r.board.pwm == 1000 and not r.board.lock_cmd


async def test_lock_that_engages_late_starts_the_transaction():
    r = Rig()
    r.board.lock_works = False
    r.conn.arm("TAG1")
    r.plug()
    await r.run(3000)
    assert r.conn.reporter.status == "Faulted" and r.queued(START) == []
    r.board.lock_works = True
    r.board.set_lock(r.board.lock_cmd)  # the lock reaches its commanded position after all
    await r.run(500)
    assert len(r.queued(START)) == 1 and r.conn.reporter.status == "SuspendedEV"
    r.board.ev = "C"
    await r.run(1000)
    assert r.board.cmd and r.conn.reporter.status == "Charging"


async def test_lock_lost_during_a_transaction_ends_it():
    r = Rig()
    await r.charging()
    r.board.lock_works = False
    r.board.lock_fb = False  # the lock lets go under load
    await r.run(500)
    assert not r.board.cmd and r.conn.tx is None
    (stop,) = r.queued(STOP)
    assert stop["reason"] == "Other"
    assert "Faulted" in _after(r.statuses, "Charging")
    assert r.conn.reporter.error_code() == "ConnectorLockFailure" and r.conn.reporter.status == "Faulted"
    await r.run(3000)
    assert r.board.closes == 1 and not r.board.lock_cmd  # unlocked so the cable can be taken out
    r.unplug()
    await r.run(500)
    assert r.conn.reporter.status == "Available"


# ---- issue 9 item 5: a new MeterValueSampleInterval applies at once ----
async def test_new_sample_interval_applies_at_once():
    r = Rig(MeterValueSampleInterval="30")
    await r.charging()
    await r.run(2000)
    assert r.queued(METER) == []
    assert r.cfg.set("MeterValueSampleInterval", "5")[0] == "Accepted"
    await r.run(4900)
    assert r.queued(METER) == []
    await r.run(200)
    assert len(r.queued(METER)) == 1
    await r.run(5000)
    assert len(r.queued(METER)) == 2
    assert r.cfg.set("MeterValueSampleInterval", "60")[0] == "Accepted"
    await r.run(30000)
    assert len(r.queued(METER)) == 2  # a longer one applies at once too


# ---- issue 9 item 19: IdToken is a CiString ----
async def test_the_same_card_in_another_case_stops_its_session():
    r = Rig()
    await r.charging("ABC123")
    r.conn.present_tag("abc123")
    await r.run(500)
    (stop,) = r.queued(STOP)
    assert stop["reason"] == "Local" and stop["idTag"] == "abc123"


async def test_the_same_card_in_another_case_cancels_a_pending_start():
    r = Rig()
    r.conn.arm("ABC123")
    await r.run(200)
    assert r.conn.reporter.status == "Preparing"
    r.conn.present_tag("abc123")
    await r.run(200)
    assert r.conn.pending_tag is None and r.conn.reporter.status == "Available"


# ---- boot: the transaction a reset left open (firmware/ocpp/recovery.py with TxQueue.recover) ----
async def test_a_transaction_cut_by_a_power_loss_is_closed_at_boot_once():
    r = Rig(MeterValueSampleInterval="10")
    await r.charging()
    await r.run(11000)  # a sample: stored with the transaction
    tx = r.conn.tx
    stored = tx.wh
    assert len(r.queued(METER)) == 1 and r.queued(STOP) == []
    r2 = Rig(flash=r.dir)  # the power comes back: a new MCU on the same flash
    r2.meter.energy_wh = stored + 5  # the register moved by what flowed after the last sample
    await r2.conn.recover("power")
    assert r2.meter.anchored[0] == stored  # the first reading was checked against the stored one
    (stop,) = r2.queued(STOP)
    assert stop["reason"] == "PowerLoss" and stop["meterStop"] == stored + 5
    assert len(r2.queued(START)) == 1 and r2.conn.tx is None
    d, lid = r.dir, tx.lid
    r = r2 = tx = None  # a reboot: the earlier MCUs' objects are gone (a third rig beside them fragments the heap)
    gc.collect()
    r3 = Rig(flash=d)  # and again: it has its Stop, none more
    await r3.conn.recover("power")
    assert len(r3.queued(STOP)) == 1
    assert r3.txq.new_local_id() > lid


async def test_a_watchdog_reset_closes_it_with_reason_reboot():
    r = Rig()
    await r.charging()
    r2 = Rig(flash=r.dir)
    await r2.conn.recover("watchdog")
    (stop,) = r2.queued(STOP)
    assert stop["reason"] == "Reboot"


async def test_a_lost_transaction_file_still_gets_its_stop():
    r = Rig()
    await r.charging()
    lid = r.conn.tx.lid
    store.delete(r.dir + "/tx.rec")  # both copies gone (corrupt flash)
    r2 = Rig(flash=r.dir)
    await r2.conn.recover("power")
    (stop,) = r2.queued(STOP)
    assert stop["reason"] == "PowerLoss" and json.loads(list(r2.txq.journal.records())[-1][1])[1] == lid


# ---- issue 14: the start's flash writes, one loop step each ----
def _until_started(r):
    # Plays the board without yielding until the tick that starts the transaction: the moment just after it
    for _ in range(300):
        r.step()
        if r.conn.tx is not None:
            return r.conn.tx
    raise AssertionError("no transaction started")


async def test_the_start_writes_its_record_and_its_message_in_loop_steps_of_their_own():
    r = Rig()
    r.conn.arm("TAG1")
    r.plug()
    r.board.ev = "C"  # the EV asks for energy from the start: the contactor would close at once
    tx = _until_started(r)
    # the tick that started it wrote only the id map: no record, no message, no energy, no status yet
    assert not store.present(r.conn.tx_path) and r.queued(START) == [] and not r.evse.allow and not r.board.cmd
    assert r.conn.starting is not None and r.statuses[-1] == "Preparing", r.statuses
    await asyncio.sleep_ms(0)  # the next step: the record, before any message
    assert store.present(r.conn.tx_path) and r.queued(START) == [] and not r.evse.allow
    await asyncio.sleep_ms(0)  # then the StartTransaction, then the contactor
    (start,) = r.queued(START)
    assert start["idTag"] == "TAG1" and start["meterStart"] == tx.wh0 and r.evse.allow and r.board.cmd
    assert r.conn.starting is None and r.statuses[-1] == "Charging", r.statuses
    await r.run(1000)
    assert "SuspendedEVSE" not in r.statuses and r.statuses[-2:] == ["Preparing", "Charging"], r.statuses


async def test_a_stop_while_the_start_is_written_queues_the_start_first():
    r = Rig()
    r.conn.arm("TAG1")
    r.plug()
    r.board.ev = "C"
    tx = _until_started(r)
    r.conn.stop("Local", "TAG1")  # the same card again, before the start's writes ran
    await r.run(1000)
    recs = [json.loads(d) for _, d in r.txq.journal.records()]
    assert [(a, lid) for a, lid, _ in recs] == [(START, tx.lid), (STOP, tx.lid)], recs
    assert r.board.closes == 0 and not r.evse.allow  # no energy for a transaction stopped before it opened
    assert not store.present(r.conn.tx_path) and r.conn.starting is None and r.conn.stopping is None


async def test_a_start_right_after_a_stop_waits_for_the_stop_to_be_queued():
    # RemoteStop then RemoteStart at once (a Central System's script does that): the Stop waits for a meter reading
    # taken after the contactor opened; the new transaction's record must not be the one its forget() deletes
    r = Rig()
    await r.charging("TAG1")
    first = r.conn.tx
    polls = r.meter.poll

    async def slow_poll():  # a Modbus read: some loop steps long
        for _ in range(3):
            await asyncio.sleep_ms(0)
        return await polls()

    r.meter.poll = slow_poll
    r.conn.stop("Remote")
    r.conn.arm("TAG2")  # the EV is still plugged and the lock holds: the start can go at once
    await r.run(1000)
    recs = [json.loads(d) for _, d in r.txq.journal.records()]
    second = r.conn.tx
    assert second is not None and second.lid != first.lid and second.tag == "TAG2"
    assert [(a, lid) for a, lid, _ in recs if a != METER] == [
        (START, first.lid), (STOP, first.lid), (START, second.lid)], recs
    assert store.present(r.conn.tx_path), "the new transaction's record was deleted with the old one's"


async def test_a_stop_the_flash_refuses_keeps_the_record_and_starts_nothing_over_it():
    r = Rig()
    await r.charging("TAG1")
    lid = r.conn.tx.lid
    push = r.txq.push

    def full(action, local_id, payload):
        if action == STOP:
            raise OSError(28)  # ENOSPC
        return push(action, local_id, payload)

    r.txq.push = full
    r.conn.stop("Remote")
    r.conn.arm("TAG2")
    await r.run(1000)
    assert r.queued(STOP) == [] and r.conn.tx is None and not r.board.cmd
    assert store.present(r.conn.tx_path) and r.conn.stopping is not None  # for the next boot to close
    assert [rec[1] for rec in (json.loads(d) for _, d in r.txq.journal.records()) if rec[0] == START] == [lid]


tinytest.run(globals())
