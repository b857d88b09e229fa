# Builds OCPP 1.6 sampledValue lists from the meter model (OCPP 1.6 §3.16, digest §2.9): energy as a string
# in Wh from the meter's own register, per-phase current and voltage, total power, and the offered current.
from firmware import clock

_NOMINAL_V = 230  # Power.Offered is the offered current at nominal voltage (digest §2.11)
_PHASES = ("L1", "L2", "L3")
_PHASES_N = ("L1-N", "L2-N", "L3-N")


def _fmt(x):
    # One decimal, no float repr noise ("230.0", "15.9"): CSMSs parse these as decimals.
    neg = x < 0
    n = int(abs(x) * 10 + 0.5)
    return "%s%d.%d" % ("-" if neg else "", n // 10, n % 10)


def sampled_values(meter, evse, measurands, context):
    """measurands: CSL text from MeterValuesSampledData / ...AlignedData; returns a list of sampledValue."""
    out = []
    phases = getattr(meter, "phases", 1 if meter.model == "SDM120" else 3)
    for name in measurands.split(","):
        name = name.strip()
        only = None  # "Voltage.L2" style suffix selects one phase (digest §7 Q7)
        if name[-3:-1] == ".L" and name[-1] in "123":
            only = int(name[-1]) - 1
            name = name[:-3]
        if name == "Energy.Active.Import.Register":
            out.append(_sv(str(meter.energy_wh), context, name, "Wh", None))
        elif name == "Power.Active.Import":
            out.append(_sv(_fmt(meter.power_w), context, name, "W", None))
        elif name == "Current.Import":
            for i in range(phases):
                if only is None or only == i:
                    out.append(_sv(_fmt(meter.current_a[i]), context, name, "A", _PHASES[i]))
        elif name == "Voltage":
            for i in range(phases):
                if only is None or only == i:
                    out.append(_sv(_fmt(meter.voltage_v[i]), context, name, "V", _PHASES_N[i]))
        elif name == "Current.Offered":
            da = evse.offer_da if evse.pwm < 1000 else 0
            out.append(_sv("%d.%d" % (da // 10, da % 10), context, name, "A", None))
        elif name == "Power.Offered":
            da = evse.offer_da if evse.pwm < 1000 else 0
            out.append(_sv(str(da * _NOMINAL_V * phases // 10), context, name, "W", None))
    return out


def _sv(value, context, measurand, unit, phase):
    sv = {"value": value, "context": context, "format": "Raw", "measurand": measurand,
          "location": "Outlet", "unit": unit}
    if phase:
        sv["phase"] = phase
    return sv


def meter_value(meter, evse, measurands, context, timestamp=None):
    return {"timestamp": clock.iso(timestamp), "sampledValue": sampled_values(meter, evse, measurands, context)}
