# IEC 61851-1 control pilot and proximity pilot arithmetic (Annex A, digest §4). Pure functions, no hardware.
from micropython import const

# Pilot states as small ints: cheap to compare from the safety watch, which must not allocate.
A = const(1)  # no EV, +12 V
B = const(2)  # EV connected, +9 V
C = const(3)  # EV asks for energy, +6 V
D = const(4)  # EV asks for energy with ventilation, +3 V
E = const(5)  # CP shorted to PE / no power, 0 V
F = const(6)  # EVSE fault signalled, -12 V
INVALID = const(7)  # between bands: treated as a fault when energised
NAMES = "?ABCDEFX"

_PWM_OFF = const(1000)  # permille: steady +12 V (X1)
_DIODE_MAX_MV = const(-10000)  # the low plateau must be near -12 V while the PWM runs (digest §4.1)


def classify(hi_mv):
    """State from the high plateau in mV (detection bands of digest §4.2)."""
    if 11000 <= hi_mv <= 13000:
        return A
    if 8000 <= hi_mv <= 10000:
        return B
    if 5000 <= hi_mv <= 7000:
        return C
    if 2000 <= hi_mv <= 4000:
        return D
    if -1000 <= hi_mv <= 1000:
        return E
    if -13000 <= hi_mv <= -11000:
        return F
    return INVALID


def diode_ok(lo_mv, pwm_permille):
    # Only meaningful while the PWM has a low phase; a shorted or missing diode lifts it towards 0 V.
    if pwm_permille <= 0 or pwm_permille >= _PWM_OFF:
        return True
    return lo_mv <= _DIODE_MAX_MV


def duty_permille(deci_amps):
    """PWM duty in 0.1 % for an offered current in 0.1 A (IEC 61851-1 Table A.8); 1000 (no PWM) below 6 A."""
    if deci_amps < 60:
        return _PWM_OFF
    if deci_amps <= 510:
        return (deci_amps * 100 + 30) // 60  # duty % = I / 0.6, rounded
    if deci_amps <= 800:
        return (deci_amps * 4 + 5) // 10 + 640  # duty % = I / 2.5 + 64
    return 960  # 80 A is the most the pilot can signal


def amps_from_duty(permille):
    """What an EV reads from a duty (digest §4.3, EV side), in 0.1 A; 0 = no charging allowed."""
    if permille < 80 or permille > 970:
        return 0
    if permille < 100:
        return 60
    if permille <= 850:
        return permille * 6 // 10
    if permille <= 960:
        return (permille - 640) * 25 // 10
    return 800


def pp_amps(ohms):
    """Cable ampacity from the PP-PE resistance (IEC 62196 / digest §4.5); None = no or invalid cable."""
    if ohms is None:
        return None
    if 936 <= ohms <= 2460:
        return 13
    if 308 <= ohms < 936:
        return 20
    if 140 <= ohms < 308:
        return 32
    if 80 <= ohms < 140:
        return 63
    return None
