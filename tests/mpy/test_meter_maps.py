# firmware/meter.py: every model's map decoded from reply frames built the way the device encodes its
# registers (digest §6.2), through a real RtuMaster on a fake line; sanity rejections.
import asyncio
import struct
import tinytest
from lib.modbus import RtuMaster, crc16
from firmware.meter import Meter, MODELS


class Device:
    # A fake line with a register file behind it: answers FC03/FC04 reads of defined registers with a
    # real RTU frame and undefined ones with exception 02, like a strict meter would.
    def __init__(self, fc, regs, unit=1):
        self.fc = fc
        self.regs = regs  # address -> 16-bit value
        self.unit = unit
        self.rx = bytearray()
        self.out = bytearray()
        self.requests = []
        self.silent = False

    def write(self, b):
        self.out += b

    async def drain(self):
        req = bytes(self.out)
        self.out = bytearray()
        self.requests.append(req)
        if self.silent:
            return
        unit, fc, addr, n = req[0], req[1], (req[2] << 8) | req[3], (req[4] << 8) | req[5]
        if fc != self.fc or any(a not in self.regs for a in range(addr, addr + n)):
            body = bytes((unit, fc | 0x80, 2 if fc == self.fc else 1))
        else:
            data = b"".join(struct.pack(">H", self.regs[a]) for a in range(addr, addr + n))
            body = bytes((unit, fc, 2 * n)) + data
        c = crc16(body)
        self.rx += body + bytes((c & 0xFF, c >> 8))

    async def read(self, n):
        while not self.rx:
            await asyncio.sleep_ms(1)
        d = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return d


def put(regs, addr, raw):
    for i in range(0, len(raw), 2):
        regs[addr + i // 2] = (raw[i] << 8) | raw[i + 1]


def f32(regs, addr, x):
    put(regs, addr, struct.pack(">f", x))


def fill(regs, first, last):
    for a in range(first, last + 1):
        regs.setdefault(a, 0)


def sdm3(kwh, v=(230.0, 231.0, 229.0), a=(16.0, 15.5, 0.0), w=7200.0):
    r = {}
    for i in range(3):
        f32(r, 2 * i, v[i])
        f32(r, 6 + 2 * i, a[i])
        f32(r, 12 + 2 * i, v[i] * a[i])
    f32(r, 0x34, w)
    f32(r, 0x48, kwh)
    return r


def abb(e_001kwh, v=(2301, 2310, 2290), a=(1600, 1550, 0), w_001=720000):
    r = {}
    fill(r, 0x5B00, 0x5B3F)
    for i in range(3):
        put(r, 0x5B00 + 2 * i, struct.pack(">I", v[i]))
        put(r, 0x5B0C + 2 * i, struct.pack(">I", a[i]))
    put(r, 0x5B14, struct.pack(">i", w_001))
    put(r, 0x5000, struct.pack(">Q", e_001kwh))
    put(r, 0x5004, struct.pack(">Q", 0))
    return r


def meter_on(dev, model):
    return Meter(RtuMaster(dev, 9600, timeout_ms=30, retries=1), model)


def test_digest_float_encoding():
    r = {}
    f32(r, 0, 230.0)
    assert (r[0], r[1]) == (0x4366, 0x0000)


async def test_sdm630():
    dev = Device(4, sdm3(1234.567))
    m = meter_on(dev, "SDM630")
    assert await m.poll()
    assert m.ok and m.errors == 0
    assert m.energy_wh == 1234567 and type(m.energy_wh) is int
    assert m.voltage_v == [230.0, 231.0, 229.0]
    assert m.current_a == [16.0, 15.5, 0.0]
    assert m.power_w == 7200.0
    assert len(dev.requests) == 3  # V/I/P block, total power, energy
    assert dev.requests[0][:6] == b"\x01\x04\x00\x00\x00\x12"
    assert m.last_ok_ms is not None


async def test_sdm72_uses_sdm630_addresses():
    m = meter_on(Device(4, sdm3(10.5)), "SDM72")
    assert await m.poll()
    assert m.energy_wh == 10500
    assert m.current_a[1] == 15.5
    assert "SDM72" in m.model_name()


async def test_sdm120_single_phase():
    r = {}
    f32(r, 0x00, 240.5)
    f32(r, 0x06, 10.25)
    f32(r, 0x0C, 2465.125)
    f32(r, 0x48, 0.125)
    dev = Device(4, r)  # gaps undefined: a read across them would fail
    m = meter_on(dev, "SDM120")
    assert await m.poll(), m.last_error
    assert m.energy_wh == 125
    assert m.voltage_v == [240.5, 0.0, 0.0]
    assert m.current_a == [10.25, 0.0, 0.0]
    assert m.power_w == 2465.125


async def test_abb_b23():
    dev = Device(3, abb(123456789))
    m = meter_on(dev, "ABB_B23")
    assert await m.poll(), m.last_error
    assert m.energy_wh == 1234567890 and type(m.energy_wh) is int
    assert m.voltage_v == [230.1, 231.0, 229.0]
    assert m.current_a == [16.0, 15.5, 0.0]
    assert m.power_w == 7200.0
    assert all(q[1] == 3 for q in dev.requests)


async def test_abb_negative_power():
    m = meter_on(Device(3, abb(100, w_001=-12345)), "ABB_B23")
    assert await m.poll(), m.last_error
    assert m.power_w == -123.45


async def test_abb_not_available_rejected():
    r = abb(100)
    put(r, 0x5000, b"\xff" * 8)
    m = meter_on(Device(3, r), "ABB_B23")
    assert not await m.poll()
    assert m.errors == 1 and not m.ok


def test_model_names_fit_boot_notification():
    for name in MODELS:
        n = Meter(None, name).model_name()
        assert 0 < len(n) <= 25, n


def test_unknown_model():
    e = tinytest.raises(ValueError, Meter, None, "XYZ")
    assert "SDM630" in str(e)


async def test_energy_decrease_rejected():
    dev = Device(4, sdm3(100.0))
    m = meter_on(dev, "SDM630")
    assert await m.poll()
    f32(dev.regs, 0x48, 99.5)
    assert not await m.poll()
    assert m.energy_wh == 100000 and m.errors == 1 and not m.ok
    assert "decreased" in m.last_error
    f32(dev.regs, 0x48, 100.25)
    assert await m.poll() and m.energy_wh == 100250 and m.ok


async def test_nan_rejected_keeps_last_good():
    dev = Device(4, sdm3(5.0))
    m = meter_on(dev, "SDM630")
    assert await m.poll()
    put(dev.regs, 0x48, b"\x7f\xc0\x00\x00")  # NaN
    f32(dev.regs, 0x00, 999.0)
    assert not await m.poll()
    assert m.energy_wh == 5000 and m.voltage_v[0] == 230.0


async def test_inf_and_out_of_range_rejected():
    for addr, raw in ((0x34, b"\x7f\x80\x00\x00"), (0x00, struct.pack(">f", 501.0)),
                      (0x06, struct.pack(">f", -5.0)), (0x08, struct.pack(">f", 250.0))):
        dev = Device(4, sdm3(5.0))
        put(dev.regs, addr, raw)
        m = meter_on(dev, "SDM630")
        assert not await m.poll(), hex(addr)
        assert m.errors == 1


async def test_negative_energy_rejected():
    m = meter_on(Device(4, sdm3(-1.0)), "SDM630")
    assert not await m.poll()


async def test_energy_jump_rejected():
    dev = Device(4, sdm3(10.0))
    m = meter_on(dev, "SDM630")
    assert await m.poll()
    f32(dev.regs, 0x48, 10.0 + 100.5)
    assert not await m.poll()
    assert "jump" in m.last_error
    f32(dev.regs, 0x48, 10.0 + 99.0)
    assert await m.poll() and m.energy_wh == 109000


async def test_no_answer_is_failure_and_recovers():
    dev = Device(4, sdm3(1.0))
    m = meter_on(dev, "SDM630")
    assert await m.poll()
    t = m.last_ok_ms
    dev.silent = True
    assert not await m.poll()
    assert not m.ok and m.errors == 1 and m.energy_wh == 1000 and m.last_ok_ms == t
    dev.silent = False
    assert await m.poll() and m.ok


async def test_wrong_function_code_meter_fails():
    # an SDM table against an FC03-only device: exception replies, poll reports failure
    m = meter_on(Device(3, abb(1)), "SDM630")
    assert not await m.poll()
    assert "illegal function" in m.last_error


tinytest.run(globals())
