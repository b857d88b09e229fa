# firmware/ocpp/metering.py Sampler: connector 1's MeterValues (periodic, clock-aligned, triggered) and the samples
# a transaction keeps for StopTransaction.transactionData, with the real Config, TxQueue and Transaction on a
# temporary directory, a fake meter and EVSE, and a board clock the test moves.
import asyncio
import json
import tinytest
from firmware import clock
from firmware.config import Config
from firmware.ocpp import metering
from firmware.ocpp.txqueue import TxQueue, Transaction, METER

T0 = 1767225600  # 2026-01-01T00:00:00Z


class Clock:
    def __init__(self):
        self.t = 5000

    def ticks_ms(self):
        return self.t


class Meter:
    # The fields of firmware/meter.py the sampler reads; fresh() as the real one: a trusted reading under 2.5 s old.
    model = "SDM630"

    def __init__(self, clk):
        self.clk = clk
        self.ok = True
        self.last_ok_ms = clk.t
        self.energy_wh = 1000
        self.power_w = 3680.0
        self.current_a = [16.0, 0.0, 0.0]
        self.voltage_v = [230.0, 230.0, 230.0]

    def fresh(self, now):
        return self.ok and now - self.last_ok_ms < 2500

    def reads(self, wh):
        self.energy_wh = wh
        self.last_ok_ms = self.clk.t


class Evse:
    offer_da = 160
    pwm = 267


class Session:
    registered = True
    online = True

    def __init__(self):
        self.sent = []

    async def notify(self, action, payload):
        self.sent.append((action, payload))
        return {}


class Rig:
    def __init__(self, **keys):
        d = tinytest.tempdir("sampler")
        self.cfg = cfg = Config(d)
        for k, v in keys.items():
            assert cfg.set(k, v)[0] == "Accepted", k
        self.clk = Clock()
        self.meter = Meter(self.clk)
        self.session = Session()
        self.txq = TxQueue(Session(), cfg, d)
        self.sampler = metering.Sampler(self.session, self.txq, self.meter, Evse(), cfg, self.clk.ticks_ms)
        self.tx = None
        self.dir = d

    def start(self):
        tx = Transaction(self.dir + "/tx.rec", 1, "TAG1", None, self.meter.energy_wh, clock.now())
        self.sampler.begin(tx, metering.snapshot(self.meter, Evse()))
        tx.save()
        self.tx = tx
        return tx

    def run(self, ms, fresh=True):
        """The connector's tick every 100 ms for ms, the meter read every second while fresh."""
        for _ in range(ms // 100):
            self.clk.t += 100
            if fresh and self.clk.t % 1000 == 0:
                self.meter.reads(self.meter.energy_wh + 1)
            self.sampler.periodic(self.tx, self.clk.t)

    def queued(self):
        # A MeterValues is queued as its sample: the payload the queue sends is made from it (metering.payload).
        return [metering.payload(json.loads(data)[2]) for _, data in self.txq.journal.records()
                if json.loads(data)[0] == METER]


async def _pause():
    await asyncio.sleep_ms(10)


def _flush():
    asyncio.run(_pause())  # the volatile MeterValues tasks run


def _value(mv, measurand):
    return [v for v in mv["sampledValue"] if v["measurand"] == measurand]


# ---- periodic samples ----
def test_periodic_samples_of_a_transaction_are_queued_and_stored():
    r = Rig(MeterValueSampleInterval="10")
    tx = r.start()
    r.run(9900)
    assert r.queued() == []
    r.run(200)
    (p,) = r.queued()
    (mv,) = p["meterValue"]
    (e,) = _value(mv, "Energy.Active.Import.Register")
    assert e["context"] == "Sample.Periodic" and e["value"] == str(r.meter.energy_wh)
    assert p["connectorId"] == 1 and p["transactionId"] == 0  # the queue fills in the real id when it sends
    assert tx.wh == r.meter.energy_wh and clock.iso(tx.t) == mv["timestamp"]
    from firmware.ocpp import recovery
    assert recovery.load(tx.path).wh == tx.wh  # stored with it: a power cut closes the transaction with it


def test_a_new_interval_applies_at_once():
    r = Rig(MeterValueSampleInterval="30")
    r.start()
    r.run(2000)
    assert r.cfg.set("MeterValueSampleInterval", "5")[0] == "Accepted"
    r.run(4900)
    assert r.queued() == []  # counted from the change, not from the start
    r.run(200)
    assert len(r.queued()) == 1  # not after the 30 s planned with the old interval
    r.run(5000)
    assert len(r.queued()) == 2
    assert r.cfg.set("MeterValueSampleInterval", "60")[0] == "Accepted"
    r.run(30000)
    assert len(r.queued()) == 2  # a longer one applies at once too
    assert r.cfg.set("MeterValueSampleInterval", "0")[0] == "Accepted"
    r.run(70000)
    assert len(r.queued()) == 2  # 0: no periodic samples


def test_a_stale_meter_is_not_sent_as_a_fresh_sample():
    r = Rig(MeterValueSampleInterval="10")
    r.start()
    r.run(5000)
    r.meter.ok = False  # the meter stops answering: the last trusted reading grows old
    r.run(10000, fresh=False)
    assert r.queued() == []  # due at 10 s, but the reading is 5 s old
    r.meter.ok = True
    r.meter.reads(1234)
    r.run(100, fresh=False)
    (p,) = r.queued()  # the sample goes out once the meter reads true again, with the new reading
    assert _value(p["meterValue"][0], "Energy.Active.Import.Register")[0]["value"] == "1234"


# ---- clock-aligned samples ----
def test_clock_aligned_samples_fall_on_the_slot_with_or_without_a_transaction():
    r = Rig(ClockAlignedDataInterval="900", MeterValuesAlignedData="Energy.Active.Import.Register,Voltage")
    clock.set_now(T0 + 899)
    r.sampler.aligned(None)
    _flush()
    assert r.session.sent == []  # the first slot is planned, not sent at once
    clock.set_now(T0 + 900)
    r.meter.reads(1500)
    r.sampler.aligned(None)
    _flush()
    (action, p), = r.session.sent  # no transaction: a volatile MeterValues, no transactionId
    assert action == "MeterValues" and "transactionId" not in p
    (mv,) = p["meterValue"]
    assert mv["timestamp"] == clock.iso(T0 + 900)
    assert [v["context"] for v in mv["sampledValue"]] == ["Sample.Clock"] * 4  # energy and three voltages
    tx = r.start()
    clock.set_now(T0 + 1802)  # two seconds late: still the slot's time
    r.meter.reads(1600)
    r.sampler.aligned(tx)
    _flush()
    assert len(r.session.sent) == 1  # with a transaction: queued with it
    (q,) = r.queued()
    assert q["meterValue"][0]["timestamp"] == clock.iso(T0 + 1800) and tx.wh == 1600


def test_a_clock_aligned_slot_without_a_fresh_reading_is_skipped():
    r = Rig(ClockAlignedDataInterval="900")
    clock.set_now(T0 + 10)
    r.sampler.aligned(None)
    r.clk.t += 3000  # the last reading is 3 s old
    clock.set_now(T0 + 900)
    r.sampler.aligned(None)
    _flush()
    assert r.session.sent == []
    r.meter.reads(1100)
    r.sampler.aligned(None)
    _flush()
    assert r.session.sent == []  # its time is gone: not sent late as if it were the slot's reading


def test_triggered_values_need_a_fresh_reading():
    r = Rig()
    asyncio.run(r.sampler.triggered(42))
    ((action, p),) = r.session.sent
    assert p["transactionId"] == 42 and p["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    r.clk.t += 3000
    asyncio.run(r.sampler.triggered(None))
    assert len(r.session.sent) == 1


# ---- transactionData ----
def test_transaction_data_keeps_the_begin_and_the_latest_samples():
    r = Rig(MeterValueSampleInterval="10", StopTxnSampledData="Energy.Active.Import.Register",
            StopTxnAlignedData="Voltage.L1")
    clock.set_now(T0)
    tx = r.start()
    r.run(150000)  # 15 periodic samples
    data = r.sampler.transaction_data(tx, 9999, T0 + 200)
    assert len(data) == 10  # at most 10: Transaction.Begin, the 8 latest samples, Transaction.End
    ctx = [mv["sampledValue"][0]["context"] for mv in data]
    assert ctx[0] == "Transaction.Begin" and ctx[-1] == "Transaction.End" and ctx[1:-1] == ["Sample.Periodic"] * 8
    assert data[-1]["sampledValue"][0]["value"] == "9999" and data[-1]["timestamp"] == clock.iso(T0 + 200)
    assert data[1]["sampledValue"][0]["value"] != data[2]["sampledValue"][0]["value"]


def test_transaction_data_uses_the_aligned_keys_for_aligned_samples():
    r = Rig(ClockAlignedDataInterval="900", StopTxnAlignedData="Voltage.L1")
    clock.set_now(T0 + 1)
    tx = r.start()
    r.sampler.aligned(tx)
    clock.set_now(T0 + 900)
    r.meter.reads(1100)
    r.sampler.aligned(tx)
    data = r.sampler.transaction_data(tx, 1100, T0 + 901)
    assert [[(v["measurand"], v["phase"]) for v in mv["sampledValue"]] for mv in data] == [[("Voltage", "L1-N")]]
    assert data[0]["sampledValue"][0]["context"] == "Sample.Clock"  # no sampled keys: no Begin or End kept


def test_no_transaction_data_unless_configured():
    r = Rig(MeterValueSampleInterval="10")
    tx = r.start()
    r.run(20000)
    assert tx.samples == [] and r.sampler.transaction_data(tx, 1100, clock.now()) is None


tinytest.run(globals())
