# Energy meter model: register maps per meter type, one poll of everything, sanity checks.
# The maps are data (one table per model, digest §6.2); adding a meter means adding a table.
import struct
import time
from micropython import const

from lib.modbus import ModbusError

MODELS = ("SDM630", "SDM120", "SDM72", "ABB_B23")

_F32 = ">f"
_U32 = ">I"
_S32 = ">i"
_U64 = ">Q"

# "Not available" patterns of the integer meters (ABB fills the register with all ones / max positive).
_NA = {_U32: 0xFFFFFFFF, _S32: 0x7FFFFFFF, _U64: 0xFFFFFFFFFFFFFFFF}

_MAX_V = const(500)
_MAX_A = const(200)
_MAX_W = const(300000)  # 3 x 500 V x 200 A
_MAX_JUMP_WH = const(100000)  # more than 100 kWh between two polls is a misread, not a charge

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
    def __init__(self, master, model="SDM630", unit=1):
        if model not in _MAPS:
            raise ValueError("unknown meter model %s, expected one of %s" % (model, ", ".join(MODELS)))
        self._m = master
        self.model = model
        self.unit = unit
        self._map = _MAPS[model]
        self._data = [b""] * len(self._map[2])
        self.energy_wh = 0
        self.power_w = 0.0
        self.current_a = [0.0, 0.0, 0.0]
        self.voltage_v = [0.0, 0.0, 0.0]
        self.ok = False
        self.last_ok_ms = None
        self.errors = 0
        self.last_error = None
        self._have_energy = False
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
            return self._fail(str(e) or type(e).__name__)
        e = self._value(mp[3], 0)
        p = self._value(mp[4], 0)
        why = self._decode_phases() or self._check(e, p)
        if why:
            return self._fail(why)
        self.energy_wh = e if type(e) is int else round(e)
        self._have_energy = True
        self.power_w = p
        for i in range(3):
            self.voltage_v[i] = self._v[i]
            self.current_a[i] = self._a[i]
        self.ok = True
        self.last_ok_ms = time.ticks_ms()
        return True

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
        if self._have_energy:
            e = e if type(e) is int else round(e)
            if e < self.energy_wh:
                return "energy decreased: %d < %d Wh" % (e, self.energy_wh)
            if e - self.energy_wh > _MAX_JUMP_WH:
                return "energy jumped by %d Wh" % (e - self.energy_wh)
        return None

    def _fail(self, why):
        self.ok = False
        self.errors += 1
        self.last_error = why
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
