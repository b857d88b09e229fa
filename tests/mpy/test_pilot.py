# IEC 61851-1 duty/current formulas, pilot voltage bands and PP resistor bands (digest §4).
import tinytest
from firmware import pilot


def test_duty_formulas_table_a8():
    # (current in 0.1 A, duty in 0.1 %): 6 A -> 10 %, 16 A -> 26.7 %, 32 A -> 53.3 %, 51 A -> 85 %,
    # 63 A -> 89.2 %, 80 A -> 96 %
    for da, permille in ((60, 100), (160, 267), (320, 533), (510, 850), (630, 892), (800, 960), (130, 217)):
        assert pilot.duty_permille(da) == permille, (da, pilot.duty_permille(da))


def test_below_6a_stops_the_pwm():
    for da in (0, 10, 59):
        assert pilot.duty_permille(da) == 1000


def test_ev_side_decoding_round_trips():
    for amps in range(6, 81):
        decoded = pilot.amps_from_duty(pilot.duty_permille(amps * 10))
        # The two formulas overlap just above 51 A (52 A -> 84.8 % reads as 50.9 A): never more than offered.
        tolerance = 20 if 51 < amps < 54 else 2
        assert abs(decoded - amps * 10) <= tolerance and decoded <= amps * 10 + 2, (amps, decoded)
    assert pilot.amps_from_duty(1000) == 0
    assert pilot.amps_from_duty(50) == 0  # 5 % = digital communication, no analogue current


def test_pilot_bands():
    cases = ((12000, pilot.A), (11000, pilot.A), (9000, pilot.B), (8000, pilot.B), (6000, pilot.C),
             (5000, pilot.C), (3000, pilot.D), (0, pilot.E), (-12000, pilot.F), (10500, pilot.INVALID),
             (7500, pilot.INVALID), (4500, pilot.INVALID), (-5000, pilot.INVALID))
    for mv, state in cases:
        assert pilot.classify(mv) == state, (mv, pilot.classify(mv))


def test_diode_check_only_while_pwm_runs():
    assert pilot.diode_ok(-12000, 267)
    assert not pilot.diode_ok(0, 267)
    assert pilot.diode_ok(0, 1000)  # steady +12 V has no low plateau


def test_pp_bands():
    for ohms, amps in ((1500, 13), (680, 20), (220, 32), (100, 63), (2460, 13), (936, 13), (935, 20),
                       (308, 20), (307, 32), (140, 32), (139, 63), (80, 63)):
        assert pilot.pp_amps(ohms) == amps, (ohms, pilot.pp_amps(ohms))
    for ohms in (None, 79, 2461, 100000):
        assert pilot.pp_amps(ohms) is None


tinytest.run(globals())
