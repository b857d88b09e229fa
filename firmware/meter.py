# Energy meter model: register maps per meter type, one poll of everything, sanity checks.
# The maps are data (one table per model, digest §6.2); adding a meter means adding a table.
# A reading is trusted only when it can be true (issue 9, docs/decisions.md "Meter plausibility"): the energy
# register may not go back, and may rise by at most the connector's maximum power times the time since the last
# trusted reading, plus a margin. energy_wh only ever holds trusted readings, so nothing untrue is billed.
import struct
import time
from micropython import const

from firmware import log
from lib.modbus import ModbusError

MODELS = ("SDM630", "SDM120", "SDM72", "ABB_B23")

_F32 = ">f"
_U32 = ">I"
_S32 = ">i"
_U64 = ">Q"

# "Not available" patterns of the integer meters (ABB fills the register with all ones / max positive).
_NA = {_U32: 0xFFFFFFFF, _S32: 0x7FFFFFFF, _U64: 0xFFFFFFFFFFFFFFFF}

_TAG = "meter"
_MAX_V = const(500)
_MAX_A = const(200)
_MAX_W = const(300000)  # 3 x 500 V x 200 A
# Plausibility: the most power the connector can draw is MaxCurrent x 1.25 (EVs overshoot an offer for up to 5 s,
# IEC 61851-1; meter tolerance) per phase at 260 V (230 V + 10 %, EN 50160, rounded up).
_V_TOP = const(260)
_MARGIN_WH = const(20)  # register resolution (ABB B23: 10 Wh steps) and rounding
REANCHOR_N = const(10)  # readings in a row, consistent with each other, that make a moved register the reference
FRESH_MS = const(2500)  # a trusted reading older than this is stale: not sent as a new sample
# Why the latest reading is not trusted; StatusNotification.info of PowerMeterFailure (<= 50 characters).
NOT_ANSWERING = "energy meter not answering"
BACKWARDS = "implausible meter reading: energy went backwards"
TOO_FAST = "implausible meter reading: energy rose too fast"
INVALID = "implausible meter reading: value out of range"

# A quantity is (struct format, multiplier, divisor, register, ...) giving Wh, W, V or A.
# A model is (meterType, function code, reads as (register, count), energy, power, volts, amps).
# Reads only cover registers the datasheet defines: some meters answer gaps with an exception.
_SDM3 = (
    4,
    ((0x0000, 18), (0x0034, 2), (0x0048, 2)),
    (_F32, 1000, 1, 0x0048),  # total import, kWh
    (_F32, 1, 1, 0x0034),  # total system power
    (_F32, 1, 1, 0x0000, 0x0002, 0x0004),
    (_F32, 1, 1, 0x0006, 0x0008, 0x000A),
)

_MAPS = {
    "SDM630": ("Eastron SDM630",) + _SDM3,
    # SDM72D-M v2 has per-phase values at the SDM630 addresses; v1 (totals only) is not supported.
    "SDM72": ("Eastron SDM72D-M v2",) + _SDM3,
    "SDM120": (
        "Eastron SDM120",
        4,
        ((0x0000, 2), (0x0006, 2), (0x000C, 2), (0x0048, 2)),
        (_F32, 1000, 1, 0x0048),
        (_F32, 1, 1, 0x000C),
        (_F32, 1, 1, 0x0000),
        (_F32, 1, 1, 0x0006),
    ),
    "ABB_B23": (
        "ABB B23",
        3,
        ((0x5000, 4), (0x5B00, 22)),
        (_U64, 10, 1, 0x5000),  # 0.01 kWh
        (_S32, 1, 100, 0x5B14),  # 0.01 W
        (_U32, 1, 10, 0x5B00, 0x5B02, 0x5B04),  # 0.1 V
        (_U32, 1, 100, 0x5B0C, 0x5B0E, 0x5B10),  # 0.01 A
    ),
}


def _bad(x):
    # NaN and +-inf are the only floats for which x - x is not 0.
    return x is None or x - x != 0


class Meter:
    def __init__(self, master, model="SDM630", unit=1, max_a=80):
        if model not in _MAPS:
            raise ValueError("unknown meter model %s, expected one of %s" % (model, ", ".join(MODELS)))
        self._m = master
        self.model = model
        self.unit = unit
        self._map = _MAPS[model]
        self._data = [b""] * len(self._map[2])
        self.phases = len(self._map[5]) - 3  # one register per phase: SDM120 1, the others 3
        self.max_w = max_a * self.phases * _V_TOP * 5 // 4
        self.energy_wh = 0  # the last trusted reading, less the offset (see _reanchor)
        self.power_w = 0.0
        self.current_a = [0.0, 0.0, 0.0]
        self.voltage_v = [0.0, 0.0, 0.0]
        self.ok = False  # the latest poll gave a trusted reading
        self.last_ok_ms = None
        self.trouble = None  # why the latest reading is not trusted (NOT_ANSWERING...), None when it is
        self.bad_since = None  # ticks of the first untrusted poll in a row
        self.errors = 0
        self.last_error = None
        self.hold = False  # a transaction bills against the current register track (set by the connector)
        self._ref = None  # raw register of the last trusted reading; None before the first one
        self._ref_ms = 0
        self._extra = 0  # Wh allowed on top of the physics bound until the next trusted reading (power cut)
        self._offset = 0  # raw register - energy_wh, after the register moved during a transaction
        self._cand = None  # the latest reading off the reference's track, and how many agree in a row
        self._cand_ms = 0
        self._cand0 = 0
        self._cand_n = 0
        self._v = [0.0, 0.0, 0.0]
        self._a = [0.0, 0.0, 0.0]

    def model_name(self):
        return self._map[0]

    async def poll(self):
        mp = self._map
        try:
            for i, (addr, n) in enumerate(mp[2]):
                self._data[i] = await self._m.read(self.unit, mp[1], addr, n)
        except (ModbusError, OSError) as e:
            return self._fail(NOT_ANSWERING, str(e) or type(e).__name__)
        e = self._value(mp[3], 0)
        p = self._value(mp[4], 0)
        why = self._decode_phases() or self._check(e, p)
        if why:
            return self._fail(INVALID, why)
        e = e if type(e) is int else round(e)
        now = time.ticks_ms()
        if not self._plausible(e, now):
            return False
        self.energy_wh = e - self._offset
        self.power_w = p
        for i in range(3):
            self.voltage_v[i] = self._v[i]
            self.current_a[i] = self._a[i]
        self.ok = True
        self.last_ok_ms = now
        self.trouble = None
        self.bad_since = None
        return True

    def fresh(self, now):
        """A trusted reading from the latest poll, and recent: fit to be sent as a new sample."""
        return self.ok and time.ticks_diff(now, self.last_ok_ms) < FRESH_MS

    def anchor(self, wh, extra_wh):
        """The reference for the first reading after a boot: the stored reading of a transaction cut by a power
        loss, which may have risen by extra_wh besides the physics bound counted from now."""
        self._ref = wh
        self._ref_ms = time.ticks_ms()
        self._extra = extra_wh
        self._offset = 0
        self.energy_wh = wh

    def release(self):
        """The transaction's last energy is taken: energy_wh is the register itself again."""
        self.hold = False
        if self._offset:
            self._offset = 0
            self.energy_wh = self._ref

    def _fits(self, base, base_ms, extra, e, now):
        return base <= e <= base + extra + _MARGIN_WH + self.max_w * time.ticks_diff(now, base_ms) // 3600000

    def _plausible(self, e, now):
        ref = self._ref
        if ref is None:
            # The first reading of a boot without an open transaction: nothing billed depends on what came before.
            self._ref = e
            self._ref_ms = now
            return True
        if self._fits(ref, self._ref_ms, self._extra, e, now):
            self._ref = e
            self._ref_ms = now
            self._extra = 0
            self._cand = None
            return True
        # Off the track: a glitch (ignored: the next reading back on the track is accepted), or the register moved
        # for good, which REANCHOR_N readings in a row that agree with each other tell.
        c = self._cand
        if c is not None and self._fits(c, self._cand_ms, 0, e, now):
            self._cand_n += 1
        else:
            self._cand0 = e
            self._cand_n = 1
        self._cand = e
        self._cand_ms = now
        if self._cand_n >= REANCHOR_N:
            self._reanchor(e, now)
            return True
        self._fail(BACKWARDS if e < ref else TOO_FAST, "%d Wh after %d Wh" % (e, ref))
        return False

    def _reanchor(self, e, now):
        # The jump onto the new track is never billed. During a transaction the billed energy goes on from the
        # last trusted reading plus what the new track has measured since it began; otherwise energy_wh is the
        # register again.
        log.warn(_TAG, "energy register moved by %d Wh and stayed there: new reference %d Wh, the jump is not billed"
                 % (self._cand0 - self._ref, e))
        self._offset = self._cand0 - (self._ref - self._offset) if self.hold else 0
        self._ref = e
        self._ref_ms = now
        self._extra = 0
        self._cand = None

    def _decode_phases(self):
        mp = self._map
        for i in range(3):
            # Single-phase meters have one register per quantity: L2/L3 read as 0.
            v = self._value(mp[5], i)
            a = self._value(mp[6], i)
            if _bad(v) or _bad(a):
                return "phase values not available"
            if not 0 <= v <= _MAX_V:
                return "voltage out of range: %s V" % v
            if not -1 <= a <= _MAX_A:
                return "current out of range: %s A" % a
            self._v[i] = v
            self._a[i] = a
        return None

    def _check(self, e, p):
        if _bad(e) or e < 0:
            return "energy not available"
        if _bad(p) or not -_MAX_W <= p <= _MAX_W:
            return "power out of range"
        return None

    def _fail(self, trouble, why):
        self.ok = False
        self.errors += 1
        self.trouble = trouble
        self.last_error = why
        if self.bad_since is None:
            self.bad_since = time.ticks_ms()
        return False

    def _value(self, q, i):
        if 3 + i >= len(q):
            return 0
        fmt = q[0]
        reg = q[3 + i]
        for k, (addr, n) in enumerate(self._map[2]):
            if addr <= reg < addr + n:
                raw = struct.unpack_from(fmt, self._data[k], 2 * (reg - addr))[0]
                break
        else:
            return None
        if fmt in _NA and raw == _NA[fmt]:
            return None
        v = raw * q[1]
        return v / q[2] if q[2] != 1 else v
