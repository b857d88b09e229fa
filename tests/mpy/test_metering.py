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


ALL = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,Current.Offered,Power.Offered"


def _by(values, measurand):
    return [v for v in values if v["measurand"] == measurand]


def test_energy_is_an_integer_string_in_wh():
    (e,) = _by(metering.sampled_values(FakeMeter(), FakeEvse(), ALL, metering.PERIODIC),
               "Energy.Active.Import.Register")
    assert e == {"value": "1234567", "context": "Sample.Periodic", "format": "Raw",
                 "measurand": "Energy.Active.Import.Register", "location": "Outlet", "unit": "Wh"}


def test_per_phase_current_and_voltage():
    values = metering.sampled_values(FakeMeter(), FakeEvse(), ALL, metering.PERIODIC)
    assert [(v["phase"], v["value"], v["unit"]) for v in _by(values, "Current.Import")] == \
        [("L1", "16.0", "A"), ("L2", "16.0", "A"), ("L3", "0.0", "A")]
    assert [(v["phase"], v["value"]) for v in _by(values, "Voltage")] == \
        [("L1-N", "230.0"), ("L2-N", "229.9"), ("L3-N", "231.1")]
    (p,) = _by(values, "Power.Active.Import")
    assert p["value"] == "11040.0" and p["unit"] == "W" and "phase" not in p


def test_offered_current_and_power():
    values = metering.sampled_values(FakeMeter(), FakeEvse(), ALL, metering.TRIGGER)
    (c,) = _by(values, "Current.Offered")
    assert c["value"] == "16.3" and c["unit"] == "A" and c["context"] == "Trigger"
    (w,) = _by(values, "Power.Offered")
    assert w["value"] == str(163 * 230 * 3 // 10)
    evse = FakeEvse()
    evse.pwm = 1000  # no PWM: nothing is offered whatever the arbiter says
    assert _by(metering.sampled_values(FakeMeter(), evse, "Current.Offered", metering.TRIGGER),
               "Current.Offered")[0]["value"] == "0.0"


def test_phase_suffix_selects_one_phase():
    values = metering.sampled_values(FakeMeter(), FakeEvse(), "Voltage.L2,Current.Import.L3", metering.CLOCK)
    assert [(v["measurand"], v["phase"]) for v in values] == [("Voltage", "L2-N"), ("Current.Import", "L3")]


def test_single_phase_meter_reports_l1_only():
    m = FakeMeter()
    m.model = "SDM120"
    values = metering.sampled_values(m, FakeEvse(), "Current.Import,Voltage", metering.PERIODIC)
    assert [v["phase"] for v in values] == ["L1", "L1-N"]


def test_meter_value_has_timestamp():
    mv = metering.meter_value(FakeMeter(), FakeEvse(), "Energy.Active.Import.Register", metering.CLOCK, 0)
    assert mv["timestamp"] == "1970-01-01T00:00:00Z" and len(mv["sampledValue"]) == 1


tinytest.run(globals())
