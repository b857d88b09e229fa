# lib/modbus.py on a scripted fake stream: exact bytes on the wire, reply parsing, timeouts, resync.
import asyncio
import time
import tinytest
from lib import modbus
from lib.modbus import RtuMaster, ModbusError, ModbusTimeout, ModbusException, crc16


def frame(*parts):
    b = bytes(parts)
    c = crc16(b)
    return b + bytes((c & 0xFF, c >> 8))


class FakeStream:
    # Each request written and drained releases the next scripted reply: a list of (delay_ms, bytes)
    # chunks. `stale` is already on the line before the first request.
    def __init__(self, replies, stale=b""):
        self.replies = list(replies)
        self.rx = bytearray(stale)
        self.pending = []
        self.written = []
        self._out = bytearray()

    def write(self, b):
        self._out += b

    async def drain(self):
        self.written.append(bytes(self._out))
        self._out = bytearray()
        if self.replies:
            now = time.ticks_ms()
            for delay, chunk in self.replies.pop(0):
                self.pending.append((time.ticks_add(now, delay), chunk))

    async def read(self, n):
        while True:
            now = time.ticks_ms()
            while self.pending and time.ticks_diff(now, self.pending[0][0]) >= 0:
                self.rx += self.pending.pop(0)[1]
            if self.rx:
                d = bytes(self.rx[:n])
                self.rx = self.rx[n:]
                return d
            await asyncio.sleep_ms(1)


def regs_reply(unit, fc, data):
    return frame(unit, fc, len(data), *data)


# A reply the test expects to be read: a timeout far above the scripted delays, so that a host too busy to run
# this process for 300 ms (parallel tests on two cores) does not turn a good reply into "bad CRC or framing".
_SLOW_HOST_MS = 5000
# Pieces of one reply scripted a few ms apart stay one frame only if the process is not descheduled for longer
# than the gap between them: a wait_for_ms whose read completes in the same loop pass as its timeout loses the
# bytes read (a retry on a real bus; a failed read here). The tests of framing give the gap room; the gap's own
# length is tested by test_gap on its computation.
_BUSY_HOST_GAP_MS = 200
DATA4 = bytes((0x43, 0x66, 0x00, 0x00, 0x41, 0x80, 0x00, 0x00))  # 230.0 V, 16.0 A


def test_crc16_check_value():
    assert crc16(b"123456789") == 0x4B37
    assert crc16(b"") == 0xFFFF


def test_crc16_digest_examples():
    for req, lo, hi in (
        (b"\x01\x03\x00\x00\x00\x0A", 0xC5, 0xCD),
        (b"\x01\x04\x00\x00\x00\x02", 0x71, 0xCB),
        (b"\x01\x04\x00\x48\x00\x02", 0xF1, 0xDD),
    ):
        c = crc16(req)
        assert (c & 0xFF, c >> 8) == (lo, hi), hex(c)


def test_crc16_sdm120_baud_frame():
    # digest §6.2: set 9600 Bd = 01 10 00 1C 00 02 04 40 00 00 00 E7 36
    c = crc16(b"\x01\x10\x00\x1C\x00\x02\x04\x40\x00\x00\x00")
    assert (c & 0xFF, c >> 8) == (0xE7, 0x36)


async def test_request_bytes_on_the_wire():
    s = FakeStream([[(0, regs_reply(1, 4, b"\0" * 4))], [(0, regs_reply(7, 3, b"\0" * 20))]])
    m = RtuMaster(s, 9600)
    await m.read(1, 4, 0x0048, 2)
    await m.read(7, 3, 0x0000, 10)
    assert s.written[0] == b"\x01\x04\x00\x48\x00\x02\xF1\xDD", s.written[0]
    assert s.written[1] == bytes((7, 3, 0, 0, 0, 10)) + bytes((lambda c: (c & 0xFF, c >> 8))(
        crc16(bytes((7, 3, 0, 0, 0, 10))))), s.written[1]


async def test_reply_in_one_chunk():
    s = FakeStream([[(5, regs_reply(1, 4, DATA4))]])
    assert await RtuMaster(s, 9600).read(1, 4, 0, 4) == DATA4


async def test_reply_in_pieces_within_gap():
    r = regs_reply(1, 4, DATA4)
    s = FakeStream([[(2, r[:3]), (3, r[3:7]), (4, r[7:])]])
    m = RtuMaster(s, 9600, timeout_ms=_SLOW_HOST_MS, gap_ms=_BUSY_HOST_GAP_MS)
    assert await m.read(1, 4, 0, 4) == DATA4
    assert m.discarded == 0


async def test_exception_reply():
    s = FakeStream([[(0, frame(1, 0x84, 2))]])
    e = await _raises(ModbusException, RtuMaster(s, 9600).read(1, 4, 0x1234, 2))
    assert e.code == 2
    assert "illegal data address" in str(e)
    assert len(s.written) == 1  # an exception reply is an answer: no retry


async def test_exception_is_a_modbus_error():
    s = FakeStream([[(0, frame(1, 0x83, 4))]])
    e = await _raises(ModbusError, RtuMaster(s, 9600).read(1, 3, 0, 2))
    assert e.code == 4


async def test_timeout_after_retries():
    s = FakeStream([])
    m = RtuMaster(s, 9600, timeout_ms=50, retries=2)
    t0 = time.ticks_ms()
    await _raises(ModbusTimeout, m.read(1, 4, 0, 2))
    took = time.ticks_diff(time.ticks_ms(), t0)
    assert len(s.written) == 3, s.written
    assert 150 <= took < 1000, took  # three timeouts of 50 ms; the bound only catches a wait that never ends


async def test_retry_succeeds_after_silence():
    s = FakeStream([[], [(1, regs_reply(1, 4, DATA4))]])
    m = RtuMaster(s, 9600, timeout_ms=40, retries=1)
    assert await m.read(1, 4, 0, 4) == DATA4
    assert len(s.written) == 2


async def test_bad_crc_is_error_then_retry():
    bad = bytearray(regs_reply(1, 4, DATA4))
    bad[-1] ^= 0xFF
    s = FakeStream([[(0, bytes(bad))], [(0, regs_reply(1, 4, DATA4))]])
    m = RtuMaster(s, 9600, timeout_ms=40, retries=1)
    assert await m.read(1, 4, 0, 4) == DATA4
    assert len(s.written) == 2


async def test_bad_crc_only_raises_modbus_error_not_timeout():
    bad = bytearray(regs_reply(1, 4, DATA4))
    bad[5] ^= 0x01
    s = FakeStream([[(0, bytes(bad))]])
    e = await _raises(ModbusError, RtuMaster(s, 9600, timeout_ms=40, retries=0).read(1, 4, 0, 4))
    assert not isinstance(e, ModbusTimeout)


async def test_wrong_unit_is_ignored():
    s = FakeStream([[(0, regs_reply(2, 4, DATA4))]])
    await _raises(ModbusError, RtuMaster(s, 9600, timeout_ms=40, retries=0).read(1, 4, 0, 4))


async def test_wrong_function_is_ignored():
    s = FakeStream([[(0, regs_reply(1, 3, DATA4))]])
    await _raises(ModbusError, RtuMaster(s, 9600, timeout_ms=40, retries=0).read(1, 4, 0, 4))


async def test_wrong_unit_then_right_unit():
    # another slave's late answer followed by ours on the same line
    s = FakeStream([[(0, regs_reply(2, 4, DATA4)), (3, regs_reply(1, 4, DATA4))]])
    m = RtuMaster(s, 9600, timeout_ms=_SLOW_HOST_MS, retries=0, gap_ms=_BUSY_HOST_GAP_MS)
    assert await m.read(1, 4, 0, 4) == DATA4


async def test_leading_garbage_glued_to_reply():
    s = FakeStream([[(0, b"\x01\xff\x00\x04\x01" + regs_reply(1, 4, DATA4))]])
    m = RtuMaster(s, 9600, timeout_ms=_SLOW_HOST_MS, retries=0)
    assert await m.read(1, 4, 0, 4) == DATA4
    assert m.discarded == 5


async def test_garbage_then_silence_then_reply():
    s = FakeStream([[(0, b"\x01\x04\x08\x43"), (30, regs_reply(1, 4, DATA4))]])
    m = RtuMaster(s, 9600, timeout_ms=_SLOW_HOST_MS, retries=0)
    assert await m.read(1, 4, 0, 4) == DATA4


async def test_stale_bytes_flushed_before_request():
    # A complete valid-looking reply left on the line must not be taken for the next answer.
    stale = regs_reply(1, 4, b"\x00\x00\x00\x00\x00\x00\x00\x00")
    s = FakeStream([[(5, regs_reply(1, 4, DATA4))]], stale=stale)
    m = RtuMaster(s, 9600, timeout_ms=_SLOW_HOST_MS, retries=0)
    assert await m.read(1, 4, 0, 4) == DATA4
    assert m.discarded >= len(stale)


async def test_loop_keeps_running_while_waiting():
    ticks = []

    async def ticker():
        for _ in range(20):
            ticks.append(time.ticks_ms())
            await asyncio.sleep_ms(5)

    t = asyncio.create_task(ticker())
    await _raises(ModbusTimeout, RtuMaster(FakeStream([]), 9600, timeout_ms=100, retries=0).read(1, 4, 0, 2))
    timed_out = time.ticks_ms()
    await t
    assert len(ticks) == 20
    # the ticker ran during the 100 ms wait, not after it: a read that blocked the loop would leave it none
    # (counted, not timed: a busy host may stretch any single gap)
    assert sum(1 for tick in ticks if time.ticks_diff(timed_out, tick) > 0) >= 3, (ticks, timed_out)


async def test_bad_arguments():
    m = RtuMaster(FakeStream([]), 9600)
    await _raises(ValueError, m.read(1, 6, 0, 1))
    await _raises(ValueError, m.read(1, 4, 0, 126))
    await _raises(ValueError, m.read(0, 4, 0, 1))
    await _raises(ValueError, m.read(1, 4, -1, 1))
    await _raises(ValueError, m.read(1, 4, 0xFFFF, 2))


def test_gap():
    assert modbus._gap_ms(9600) == 6  # 4.01 ms rounded up, plus a tick
    assert modbus._gap_ms(2400) == 18
    assert modbus._gap_ms(115200) == 3  # fixed 1.75 ms
    assert RtuMaster(None, 9600, gap_ms=20).gap_ms == 20


async def test_concurrent_callers_are_serialised():
    s = FakeStream([[(3, regs_reply(1, 4, DATA4))], [(3, regs_reply(2, 3, b"\x00\x07"))]])
    m = RtuMaster(s, 9600, timeout_ms=_SLOW_HOST_MS, retries=0)
    a, b = await asyncio.gather(m.read(1, 4, 0, 4), m.read(2, 3, 0x14, 1))
    assert a == DATA4 and b == b"\x00\x07"
    assert s.written[0][:6] == b"\x01\x04\x00\x00\x00\x04"
    assert s.written[1][:6] == b"\x02\x03\x00\x14\x00\x01"


async def _raises(exc, aw):
    try:
        await aw
    except exc as e:
        return e
    raise AssertionError("expected %s" % exc.__name__)


tinytest.run(globals())
