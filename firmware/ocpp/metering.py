# Builds OCPP 1.6 sampledValue lists (OCPP 1.6 §3.16, digest §2.9): energy as a string in Wh from the meter's own
# register, per-phase current and voltage, total power, and the offered current and power.
# Values are taken as a compact snapshot first, so a transaction can keep its samples for StopTransaction's
# transactionData in a few numbers each instead of whole sampledValue dicts.
from firmware import clock

_NOMINAL_V = 230  # Power.Offered = offered current at nominal voltage (digest §2.11)
_PHASES = ("L1", "L2", "L3")
_PHASES_N = ("L1-N", "L2-N", "L3-N")
CONTEXTS = ("Transaction.Begin", "Sample.Periodic", "Sample.Clock", "Transaction.End", "Trigger")
BEGIN = 0
PERIODIC = 1
CLOCK = 2
END = 3
TRIGGER = 4


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
    ctx = CONTEXTS[context]
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


def sampled_values(meter, evse, measurands, context):
    return values_from(snapshot(meter, evse), measurands, context)


def _sv(value, context, measurand, unit, phase):
    sv = {"value": value, "context": context, "format": "Raw", "measurand": measurand,
          "location": "Outlet", "unit": unit}
    if phase:
        sv["phase"] = phase
    return sv


def meter_value(meter, evse, measurands, context, timestamp=None):
    return {"timestamp": clock.iso(timestamp), "sampledValue": sampled_values(meter, evse, measurands, context)}
