# MeterValues sampledValue construction (OCPP 1.6 §3.16, digest §2.9).
import tinytest
from firmware.ocpp import metering


class FakeMeter:  # the Meter model's public fields, as firmware/meter.py fills them
    model = "SDM630"
    energy_wh = 1234567
    power_w = 11040.04
    current_a = [16.0, 15.96, 0.04]
    voltage_v = [230.0, 229.94, 231.05]


class FakeEvse:
    offer_da = 163
    pwm = 272


PERIODIC, CLOCK, TRIGGER = 1, 2, 4  # metering's context numbers (private constants there)
ALL = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,Current.Offered,Power.Offered"


def _sampled(meter, evse, measurands, context):
    return metering.values_from(metering.snapshot(meter, evse), measurands, context)


def _by(values, measurand):
    return [v for v in values if v["measurand"] == measurand]


def test_energy_is_an_integer_string_in_wh():
    (e,) = _by(_sampled(FakeMeter(), FakeEvse(), ALL, PERIODIC),
               "Energy.Active.Import.Register")
    assert e == {"value": "1234567", "context": "Sample.Periodic", "format": "Raw",
                 "measurand": "Energy.Active.Import.Register", "location": "Outlet", "unit": "Wh"}


def test_per_phase_current_and_voltage():
    values = _sampled(FakeMeter(), FakeEvse(), ALL, PERIODIC)
    assert [(v["phase"], v["value"], v["unit"]) for v in _by(values, "Current.Import")] == \
        [("L1", "16.0", "A"), ("L2", "16.0", "A"), ("L3", "0.0", "A")]
    assert [(v["phase"], v["value"]) for v in _by(values, "Voltage")] == \
        [("L1-N", "230.0"), ("L2-N", "229.9"), ("L3-N", "231.1")]
    (p,) = _by(values, "Power.Active.Import")
    assert p["value"] == "11040.0" and p["unit"] == "W" and "phase" not in p


def test_offered_current_and_power():
    values = _sampled(FakeMeter(), FakeEvse(), ALL, TRIGGER)
    (c,) = _by(values, "Current.Offered")
    assert c["value"] == "16.3" and c["unit"] == "A" and c["context"] == "Trigger"
    (w,) = _by(values, "Power.Offered")
    assert w["value"] == str(163 * 230 * 3 // 10)
    evse = FakeEvse()
    evse.pwm = 1000  # no PWM: nothing is offered whatever the arbiter says
    assert _by(_sampled(FakeMeter(), evse, "Current.Offered", TRIGGER),
               "Current.Offered")[0]["value"] == "0.0"


def test_phase_suffix_selects_one_phase():
    values = _sampled(FakeMeter(), FakeEvse(), "Voltage.L2,Current.Import.L3", CLOCK)
    assert [(v["measurand"], v["phase"]) for v in values] == [("Voltage", "L2-N"), ("Current.Import", "L3")]


def test_single_phase_meter_reports_l1_only():
    m = FakeMeter()
    m.model = "SDM120"
    values = _sampled(m, FakeEvse(), "Current.Import,Voltage", PERIODIC)
    assert [v["phase"] for v in values] == ["L1", "L1-N"]


class FakeQueue:
    def __init__(self):
        self.pushed = []

    def push(self, action, lid, payload):
        self.pushed.append(metering.payload(payload))  # queued as the sample, sent as this payload


class FakeConfig:
    def get(self, key):
        return "Energy.Active.Import.Register" if key == "MeterValuesAlignedData" else None


def test_meter_value_has_timestamp():
    # A clock-aligned sample of a transaction, taken for the slot at epoch 0.
    from firmware.ocpp.txqueue import Transaction
    q = FakeQueue()
    s = metering.Sampler(None, q, FakeMeter(), FakeEvse(), FakeConfig(), lambda: 0)
    s._send(Transaction(tinytest.tempdir("metering") + "/tx.rec", 1, "T", None, 0, 0), CLOCK,
            "Energy.Active.Import.Register", 0)
    (mv,) = q.pushed[0]["meterValue"]
    assert mv["timestamp"] == "1970-01-01T00:00:00Z" and len(mv["sampledValue"]) == 1


tinytest.run(globals())
