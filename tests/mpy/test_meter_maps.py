# firmware/meter.py: every model's map decoded from reply frames built the way the device encodes its
# registers (digest §6.2), through a real RtuMaster on a fake line; sanity rejections.
import asyncio
import struct
import tinytest
from lib.modbus import RtuMaster, crc16
from firmware import meter as meter_module
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


def meter_on(dev, model, max_a=80):
    return Meter(RtuMaster(dev, 9600, timeout_ms=30, retries=1), model, 1, max_a)


class Clock:
    # Stands in for the meter module's `time`, so a test decides how much time passes between two polls.
    def __init__(self):
        self.t = 5000

    def ticks_ms(self):
        return self.t

    def ticks_diff(self, a, b):
        return a - b


def with_clock(test):
    async def wrapped():
        real = meter_module.time
        clock = Clock()
        meter_module.time = clock
        try:
            await test(clock)
        finally:
            meter_module.time = real
    return wrapped


async def reading(dev, m, kwh, clock=None, ms=0):
    """Sets the register, lets ms pass, polls; the poll's verdict."""
    if clock is not None:
        clock.t += ms
    f32(dev.regs, 0x48, kwh)
    return await m.poll()


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


async def test_no_answer_is_failure_and_recovers():
    dev = Device(4, sdm3(1.0))
    m = meter_on(dev, "SDM630")
    assert await m.poll()
    t = m.last_ok_ms
    dev.silent = True
    assert not await m.poll()
    assert not m.ok and m.errors == 1 and m.energy_wh == 1000 and m.last_ok_ms == t
    assert m.trouble == meter_module.NOT_ANSWERING and m.bad_since is not None
    dev.silent = False
    assert await m.poll() and m.ok and m.trouble is None and m.bad_since is None


# ---- plausibility (issue 9): a reading is billed only if it can be true ----

def test_power_bound_follows_max_current_and_phases():
    assert meter_on(None, "SDM630", 32).max_w == 32 * 3 * 260 * 5 // 4  # 31.2 kW: 8.7 Wh a second
    assert meter_on(None, "SDM120", 32).max_w == 32 * 260 * 5 // 4
    assert meter_on(None, "SDM120", 32).phases == 1 and meter_on(None, "ABB_B23").phases == 3


@with_clock
async def test_first_reading_of_a_boot_is_the_reference(clock):
    dev = Device(4, sdm3(1234.567))
    m = meter_on(dev, "SDM630", 32)
    assert await m.poll() and m.energy_wh == 1234567  # nothing billed depends on what came before the boot


@with_clock
async def test_energy_going_backwards_is_rejected_and_named(clock):
    dev = Device(4, sdm3(100.0))
    m = meter_on(dev, "SDM630", 32)
    assert await m.poll()
    assert not await reading(dev, m, 99.5, clock, 1000)
    assert m.trouble == meter_module.BACKWARDS and not m.ok and m.energy_wh == 100000
    assert len(m.trouble) <= 50  # StatusNotification.info
    assert await reading(dev, m, 100.005, clock, 1000)  # back on the track: trusted at once
    assert m.ok and m.trouble is None and m.energy_wh == 100005


@with_clock
async def test_rise_is_bounded_by_max_power_times_time(clock):
    dev = Device(4, sdm3(100.0))
    m = meter_on(dev, "SDM630", 32)  # 31.2 kW
    assert await m.poll()
    assert not await reading(dev, m, 100.025, clock, 0)  # 25 Wh in no time: over the 20 Wh margin
    assert m.trouble == meter_module.TOO_FAST and m.energy_wh == 100000
    assert len(m.trouble) <= 50
    assert await reading(dev, m, 100.100, clock, 10000)  # 10 s at 31.2 kW allow 86 Wh + 20
    assert m.energy_wh == 100100
    assert not await reading(dev, m, 100.250, clock, 1000)  # 150 Wh in 1 s is 540 kW
    # The glitch, 50 kWh, is far under the old 100 kWh check and far over any charge.
    assert not await reading(dev, m, 150.1, clock, 1000)


@with_clock
async def test_transient_glitch_is_ignored_and_never_billed(clock):
    dev = Device(4, sdm3(1000.0))
    m = meter_on(dev, "SDM630", 32)
    assert await m.poll()
    for i in range(3):  # +50 kWh for 3 s
        assert not await reading(dev, m, 1050.0 + i * 0.003, clock, 1000)
        assert m.energy_wh == 1000000
    assert await reading(dev, m, 1000.012, clock, 1000)  # back on track, 12 Wh later: true, billed
    assert m.energy_wh == 1000012 and m.ok


@with_clock
async def test_moved_register_reanchors_without_billing_the_jump(clock):
    # Idle: after REANCHOR_N readings on the new track, energy_wh is the register again; never stuck.
    dev = Device(4, sdm3(1000.0))
    m = meter_on(dev, "SDM630", 32)
    assert await m.poll()
    n = meter_module.REANCHOR_N
    assert 3 <= n <= 15
    for i in range(n - 1):
        assert not await reading(dev, m, 995.0, clock, 1000)
        assert m.trouble == meter_module.BACKWARDS
    assert await reading(dev, m, 995.0, clock, 1000)
    assert m.ok and m.trouble is None and m.energy_wh == 995000
    assert await reading(dev, m, 995.004, clock, 1000) and m.energy_wh == 995004  # the new normal


@with_clock
async def test_moved_register_during_a_transaction_bills_only_what_flowed(clock):
    dev = Device(4, sdm3(1000.0))
    m = meter_on(dev, "SDM630", 32)
    assert await m.poll()
    m.hold = True  # a transaction started at 1,000,000 Wh
    assert await reading(dev, m, 1000.010, clock, 1000)
    wh = 1050000
    for i in range(meter_module.REANCHOR_N):  # the register jumps by +50 kWh and goes on counting 3 Wh/s
        ok = await reading(dev, m, wh / 1000, clock, 1000)
        wh += 3
    assert ok and m.energy_wh == 1000010 + 3 * (meter_module.REANCHOR_N - 1)  # the jump is not billed
    assert await reading(dev, m, wh / 1000, clock, 1000)
    assert m.energy_wh == 1000010 + 3 * meter_module.REANCHOR_N  # billing goes on continuously
    m.release()  # the transaction ended: the register itself again
    assert m.energy_wh == wh and not m.hold
    assert await reading(dev, m, (wh + 1) / 1000, clock, 1000) and m.energy_wh == wh + 1


@with_clock
async def test_readings_that_disagree_with_each_other_never_become_the_reference(clock):
    dev = Device(4, sdm3(1000.0))
    m = meter_on(dev, "SDM630", 32)
    assert await m.poll()
    for i in range(3 * meter_module.REANCHOR_N):  # a meter gone mad: up and down by kWh
        assert not await reading(dev, m, 2000.0 if i % 2 else 1500.0, clock, 1000)
    assert m.energy_wh == 1000000 and m.trouble is not None


@with_clock
async def test_reading_after_a_power_cut_is_checked_against_the_stored_one(clock):
    # The stored reading of a transaction cut by a power loss, with what may have flowed since (extra_wh).
    dev = Device(4, sdm3(1234.600))
    m = meter_on(dev, "SDM630", 32)
    m.anchor(1234567, 50)
    assert await m.poll() and m.energy_wh == 1234600  # 33 Wh: could have flowed
    m = meter_on(dev, "SDM630", 32)
    m.anchor(1234567, 50)
    f32(dev.regs, 0x48, 1434.598)  # issue 9 item 10: +200 kWh while the MCU was off
    assert not await m.poll()
    assert m.trouble == meter_module.TOO_FAST and m.energy_wh == 1234567
    m = meter_on(dev, "SDM630", 32)
    m.anchor(1234567, 0)
    f32(dev.regs, 0x48, 1234.600)
    assert not await m.poll()  # nothing may have flowed: 33 Wh is over the margin
    assert await reading(dev, m, 1234.580, clock, 1000)  # within it


@with_clock
async def test_fresh_means_trusted_and_recent(clock):
    dev = Device(4, sdm3(1.0))
    m = meter_on(dev, "SDM630", 32)
    assert not m.fresh(clock.t)  # no reading yet
    assert await m.poll() and m.fresh(clock.t)
    assert not m.fresh(clock.t + meter_module.FRESH_MS)
    dev.silent = True
    assert not await m.poll()
    assert not m.fresh(clock.t)  # the latest poll failed: the last reading is not a new sample
    dev.silent = False
    assert not await reading(dev, m, 90.0, clock, 1000)
    assert not m.fresh(clock.t)


@with_clock
async def test_invalid_values_are_named(clock):
    dev = Device(4, sdm3(5.0))
    m = meter_on(dev, "SDM630", 32)
    assert await m.poll()
    put(dev.regs, 0x48, b"\x7f\xc0\x00\x00")  # NaN
    assert not await m.poll()
    assert m.trouble == meter_module.INVALID and len(m.trouble) <= 50


async def test_wrong_function_code_meter_fails():
    # an SDM table against an FC03-only device: exception replies, poll reports failure
    m = meter_on(Device(3, abb(1)), "SDM630")
    assert not await m.poll()
    assert "illegal function" in m.last_error


tinytest.run(globals())
