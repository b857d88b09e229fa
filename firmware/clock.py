# Wall clock in Unix epoch seconds, independent of the port's own epoch (1970 on unix, 2000 on older ESP32
# builds). Set from BootNotification.conf / Heartbeat.conf currentTime (OCPP 1.6 §4.2, §4.6).
import time

_SHIFT = 0  # seconds between the port's epoch and 1970-01-01
_delta = 0  # correction set by the Central System
synced = False


def _days_from_civil(y, m, d):
    # Days since 1970-01-01 of a proleptic Gregorian date (era-based, valid for any year).
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z):
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


_g = time.gmtime(0)
_SHIFT = _days_from_civil(_g[0], _g[1], _g[2]) * 86400
del _g


def now():
    return int(time.time()) + _SHIFT + _delta


def set_now(epoch):
    global _delta, synced
    _delta = epoch - int(time.time()) - _SHIFT
    synced = True


def iso(epoch=None):
    if epoch is None:
        epoch = now()
    days, secs = divmod(epoch, 86400)
    y, m, d = _civil_from_days(days)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, secs // 3600, secs // 60 % 60, secs % 60)


def parse_iso(text):
    """ISO 8601 date-time -> epoch seconds (fractions dropped, offsets applied); None when malformed."""
    try:
        y, mo, d = int(text[0:4]), int(text[5:7]), int(text[8:10])
        h, mi, s = int(text[11:13]), int(text[14:16]), int(text[17:19])
        if text[4] != "-" or text[7] != "-" or text[10] not in "Tt " or text[13] != ":" or text[16] != ":":
            return None
        if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 61):
            return None
        rest = text[19:]
        if rest[:1] == ".":
            i = 1
            while i < len(rest) and rest[i].isdigit():
                i += 1
            rest = rest[i:]
        offset = 0
        if rest in ("", "Z", "z"):
            pass
        elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
            offset = (int(rest[1:3]) * 60 + int(rest[4:6])) * 60
            if rest[0] == "-":
                offset = -offset
        else:
            return None
    except (ValueError, IndexError):
        return None
    return _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset
