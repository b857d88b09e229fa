# Builds OCPP 1.6 sampledValue lists (OCPP 1.6 §3.16, digest §2.9): energy as a string in Wh from the meter's own
# register, per-phase current and voltage, total power, and the offered current and power.
# Values are taken as a compact snapshot first, so a transaction can keep its samples for StopTransaction's
# transactionData in a few numbers each instead of whole sampledValue dicts. Sampler sends connector 1's
# MeterValues: periodic and clock-aligned samples, the samples a transaction keeps, triggered values.
import asyncio
import time
from micropython import const

from firmware import clock, log
from firmware.ocpp.txqueue import METER

_NOMINAL_V = const(230)  # Power.Offered = offered current at nominal voltage (digest §2.11)
_PHASES = ("L1", "L2", "L3")
_PHASES_N = ("L1-N", "L2-N", "L3-N")
# Contexts, indexed by the numbers below (kept in a snapshot list as one small int each).
_CONTEXTS = ("Transaction.Begin", "Sample.Periodic", "Sample.Clock", "Transaction.End", "Trigger")
_BEGIN = const(0)
_PERIODIC = const(1)
_CLOCK = const(2)
_END = const(3)
_TRIGGER = const(4)
_TAG = "conn"  # the connector's log lines
_CONNECTOR = const(1)


def snapshot(meter, evse):
    """[energy Wh, power W, I1, I2, I3, V1, V2, V3, offered 0.1 A, phases] rounded to 0.1 (JSON-friendly)."""
    phases = getattr(meter, "phases", 1 if meter.model == "SDM120" else 3)
    i, v = meter.current_a, meter.voltage_v
    return [meter.energy_wh, _r(meter.power_w), _r(i[0]), _r(i[1]), _r(i[2]), _r(v[0]), _r(v[1]), _r(v[2]),
            evse.offer_da if evse.pwm < 1000 else 0, phases]


def _r(x):
    return int(x * 10 + (0.5 if x >= 0 else -0.5)) / 10


def _fmt(x):
    # One decimal, no float repr noise ("230.0", "15.9"): CSMSs parse these as decimals.
    n = int(abs(x) * 10 + 0.5)
    return "%s%d.%d" % ("-" if x < 0 else "", n // 10, n % 10)


def values_from(snap, measurands, context):
    """sampledValue list for a snapshot; measurands is the CSL text of a *Data configuration key."""
    out = []
    phases = snap[9]
    ctx = _CONTEXTS[context]
    for name in measurands.split(","):
        name = name.strip()
        only = None  # "Voltage.L2" style suffix selects one phase (digest §7 Q7)
        if name[-3:-1] == ".L" and name[-1] in "123":
            only = int(name[-1]) - 1
            name = name[:-3]
        if name == "Energy.Active.Import.Register":
            out.append(_sv(str(snap[0]), ctx, name, "Wh", None))
        elif name == "Power.Active.Import":
            out.append(_sv(_fmt(snap[1]), ctx, name, "W", None))
        elif name == "Current.Import" or name == "Voltage":
            base, unit, labels = (2, "A", _PHASES) if name == "Current.Import" else (5, "V", _PHASES_N)
            for i in range(phases):
                if only is None or only == i:
                    out.append(_sv(_fmt(snap[base + i]), ctx, name, unit, labels[i]))
        elif name == "Current.Offered":
            out.append(_sv("%d.%d" % (snap[8] // 10, snap[8] % 10), ctx, name, "A", None))
        elif name == "Power.Offered":
            out.append(_sv(str(snap[8] * _NOMINAL_V * phases // 10), ctx, name, "W", None))
    return out


def payload(entry):
    """The MeterValues payload of a sample queued as [t, context, snapshot, measurands] (TxQueue sends it; the
    queue fills in the transactionId)."""
    t, ctx, snap, keys = entry
    return {"connectorId": _CONNECTOR, "transactionId": 0,
            "meterValue": [{"timestamp": clock.iso(t), "sampledValue": values_from(snap, keys, ctx)}]}


def _sv(value, context, measurand, unit, phase):
    sv = {"value": value, "context": context, "format": "Raw", "measurand": measurand,
          "location": "Outlet", "unit": unit}
    if phase:
        sv["phase"] = phase
    return sv


class Sampler:
    def __init__(self, session, txq, meter, evse, cfg, ms):
        self.session = session
        self.txq = txq
        self.meter = meter
        self.evse = evse
        self.cfg = cfg
        self.ms = ms  # the board's clock
        self._next_ms = 0
        self._interval = 0  # the MeterValueSampleInterval _next_ms was planned with
        self._next_aligned = 0

    def begin(self, tx, snap):
        """A transaction starts with the snapshot of its meterStart: its Transaction.Begin sample, and the
        periodic samples counted from now."""
        tx.keep(self._kept(tx.t0, _BEGIN, snap))  # stored by the tx.save() that follows
        self._interval = interval = self.cfg.get("MeterValueSampleInterval")
        self._next_ms = time.ticks_add(self.ms(), interval * 1000)

    def periodic(self, tx, now_ms):
        """Sample.Periodic of the running transaction tx, every MeterValueSampleInterval."""
        interval = self.cfg.get("MeterValueSampleInterval")
        if interval != self._interval:
            # A changed interval applies at once, counted from the change, not after the old timer (issue 9).
            self._interval = interval
            self._next_ms = time.ticks_add(now_ms, interval * 1000)
            return
        if not interval or time.ticks_diff(now_ms, self._next_ms) < 0:
            return
        if not self.meter.fresh(now_ms):
            return  # never the last reading as a new one: the sample goes out once the meter reads true again
        self._next_ms = time.ticks_add(now_ms, interval * 1000)
        self._send(tx, _PERIODIC, self.cfg.get("MeterValuesSampledData"), clock.now())

    def aligned(self, tx):
        """Clock-aligned data (OCPP 1.6 §4.7) at every multiple of ClockAlignedDataInterval after midnight UTC:
        part of the transaction tx, or on their own when tx is None."""
        interval = self.cfg.get("ClockAlignedDataInterval")
        if not interval or not clock.synced:
            return
        now = clock.now()
        if self._next_aligned == 0 or self._next_aligned > now + interval:
            self._next_aligned = (now // interval + 1) * interval
        if now < self._next_aligned:
            return
        slot = self._next_aligned
        self._next_aligned = (now // interval + 1) * interval
        if not self.meter.fresh(self.ms()):
            log.warn(_TAG, "clock-aligned sample skipped: no fresh meter reading")  # its time is gone
            return
        self._send(tx, _CLOCK, self.cfg.get("MeterValuesAlignedData"), slot)

    def _send(self, tx, ctx, keys, t):
        snap = snapshot(self.meter, self.evse)
        if tx is not None:
            # Queued as the sample, a tenth of the sampledValues' bytes on flash (payload() expands it), and the
            # reading appended to the transaction's record (wear: docs/decisions.md, Flash).
            self.txq.push(METER, tx.lid, [t, ctx, snap, keys])
            tx.note(snap[0], t, self._kept(t, ctx, snap))
            return
        mv = {"timestamp": clock.iso(t), "sampledValue": values_from(snap, keys, ctx)}
        if mv["sampledValue"] and self.session.registered and self.session.online:
            # Not transaction-related: volatile, and skipped while offline.
            asyncio.create_task(self.session.notify("MeterValues", {"connectorId": _CONNECTOR, "meterValue": [mv]}))

    def _kept(self, t, ctx, snap):
        # The sample for transactionData, or None: only what StopTxnSampledData / StopTxnAlignedData ask for.
        if self.cfg.get("StopTxnAlignedData" if ctx == _CLOCK else "StopTxnSampledData"):
            return [t, ctx, snap]
        return None

    def transaction_data(self, tx, wh, when):
        """StopTransaction.transactionData of tx, ending with the reading wh at when; None when not configured."""
        sampled = self.cfg.get("StopTxnSampledData")
        aligned = self.cfg.get("StopTxnAlignedData")
        if not sampled and not aligned:
            return None
        end = snapshot(self.meter, self.evse)
        end[0] = wh
        tx.keep(self._kept(when, _END, end))
        out = []
        for t, ctx, snap in tx.samples:
            keys = aligned if ctx == _CLOCK else sampled
            if keys:
                out.append({"timestamp": clock.iso(t), "sampledValue": values_from(snap, keys, ctx)})
        return out

    async def triggered(self, tx_id):
        """TriggerMessage(MeterValues): the latest values of MeterValuesSampledData, context Trigger, with the
        running transaction's id (or None); nothing while the meter has no fresh reading (a stale one would be
        taken as current)."""
        if not self.meter.fresh(self.ms()):
            log.warn(_TAG, "triggered MeterValues not sent: no fresh meter reading")
            return
        payload = {"connectorId": _CONNECTOR, "meterValue": [{"timestamp": clock.iso(), "sampledValue": values_from(
            snapshot(self.meter, self.evse), self.cfg.get("MeterValuesSampledData"), _TRIGGER)}]}
        if tx_id is not None:
            payload["transactionId"] = tx_id
        await self.session.notify("MeterValues", payload)
