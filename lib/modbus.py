# Modbus RTU master over an asyncio byte stream (RS-485, half duplex). Charger-agnostic: speaks the protocol
# only; what to poll and how often lives above it. Frame facts: Modbus over Serial Line V1.02 §2.5.1.
import asyncio
import time
from array import array
from micropython import const

_FC_READ_HOLDING = const(3)
_FC_READ_INPUT = const(4)
_EXC_FLAG = const(0x80)
_MAX_ADU = const(256)
_MAX_REGS = const(125)
_EXC_LEN = const(5)  # unit, fc|0x80, code, crc lo, crc hi
_FLUSH_MAX = const(512)  # a babbling line must not hold a request back forever

# Exception codes 1-11 (Modbus Application Protocol V1.1b3 §7), one string: a dict of strings costs ~1 KB.
_EXC_NAMES = ("|illegal function|illegal data address|illegal data value|slave device failure|acknowledge"
              "|slave device busy||memory parity error||gateway path unavailable|gateway target failed to respond")


class ModbusError(Exception):
    pass


class ModbusTimeout(ModbusError):
    pass


class ModbusException(ModbusError):
    # The slave answered with an exception reply: retrying will not help, so this is never retried.
    def __init__(self, code):
        self.code = code
        names = _EXC_NAMES.split("|")
        super().__init__("exception %d (%s)" % (code, 0 < code < len(names) and names[code] or "unknown"))


def _build_table():
    t = array("H", bytes(512))
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        t[i] = crc
    return t


_TABLE = _build_table()
del _build_table  # used once: its code is freed


def crc16(buf):
    # CRC-16/MODBUS: reflected poly 0xA001, init 0xFFFF, no final xor; goes on the wire low byte first.
    crc = 0xFFFF
    t = _TABLE
    for b in buf:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc


def _gap_ms(baud):
    # Inter-frame silence: 3.5 characters of 11 bits; fixed 1.75 ms above 19200 Bd (V1.02 §2.5.1.1).
    # Rounded up, plus one tick because a ticks_ms wait of n can end after n-1 ms.
    us = 1750 if baud > 19200 else 38500000 // baud
    return (us + 999) // 1000 + 1


class RtuMaster:
    # gap_ms overrides the computed silence for UART drivers that hand bytes over in late bursts.
    def __init__(self, stream, baud, timeout_ms=300, retries=2, gap_ms=None):
        self._s = stream
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.gap_ms = gap_ms if gap_ms else _gap_ms(baud)
        self._req = bytearray(8)
        self._buf = bytearray(_MAX_ADU)
        self._mv = memoryview(self._buf)
        self._lock = asyncio.Lock()  # one transaction on the bus at a time, whoever asks
        self.discarded = 0  # bytes thrown away as noise (diagnostics)

    async def read(self, unit, fc, addr, count):
        if fc != _FC_READ_HOLDING and fc != _FC_READ_INPUT:
            raise ValueError("fc must be 3 or 4")
        if not 1 <= unit <= 247 or not 1 <= count <= _MAX_REGS or not 0 <= addr <= 0x10000 - count:
            raise ValueError("bad unit/addr/count")
        async with self._lock:
            # framed under the lock: the request buffer is shared by every caller
            r = self._req
            r[0] = unit
            r[1] = fc
            r[2] = addr >> 8
            r[3] = addr & 0xFF
            r[4] = count >> 8
            r[5] = count & 0xFF
            crc = crc16(memoryview(r)[:6])
            r[6] = crc & 0xFF
            r[7] = crc >> 8
            err = None
            for _ in range(self.retries + 1):
                try:
                    return await self._transact(unit, fc, count)
                except ModbusException:
                    raise
                except ModbusError as e:
                    err = e
            raise err

    async def _transact(self, unit, fc, count):
        await self._flush()
        self._s.write(self._req)
        await self._s.drain()
        return await self._receive(unit, fc, 2 * count)

    async def _flush(self):
        # Stale bytes (a late reply to a timed-out request, noise) would be taken for the answer: wait for
        # a silent gap first, discarding what comes.
        n = 0
        while n < _FLUSH_MAX:
            try:
                d = await asyncio.wait_for_ms(self._s.read(64), self.gap_ms)
            except asyncio.TimeoutError:
                return
            if not d:
                return
            n += len(d)
            self.discarded += len(d)

    async def _receive(self, unit, fc, nbytes):
        buf = self._buf
        have = 0
        seen = False
        deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                if seen:
                    raise ModbusError("bad CRC or framing")
                raise ModbusTimeout("no reply from unit %d" % unit)
            try:
                d = await asyncio.wait_for_ms(
                    self._s.read(_MAX_ADU - have), min(left, self.gap_ms) if have else left)
            except asyncio.TimeoutError:
                if have:
                    # Silence ended a frame that did not check out: drop it, the real reply may follow.
                    self.discarded += have
                    have = 0
                continue
            if not d:
                raise ModbusError("stream closed")
            seen = True
            buf[have:have + len(d)] = d
            have += len(d)
            have, res = self._scan(have, unit, fc, nbytes)
            if res is not None:
                return res

    def _scan(self, have, unit, fc, nbytes):
        # Look for a checked frame at every offset: noise glued in front of a reply is skipped and a bad
        # CRC only costs one byte of resync. Returns (bytes kept, register data or None).
        buf = self._buf
        mv = self._mv
        i = 0
        while i + 1 < have:
            if buf[i] == unit and (buf[i + 1] == fc or buf[i + 1] == fc | _EXC_FLAG):
                exc = buf[i + 1] & _EXC_FLAG
                if not exc and (i + 2 >= have or buf[i + 2] == nbytes):
                    size = nbytes + 5
                elif exc:
                    size = _EXC_LEN
                else:
                    size = 0  # byte count does not fit our request: not our reply
                if size:
                    if i + size > have:
                        break  # a plausible start, wait for the rest
                    crc = crc16(mv[i:i + size - 2])
                    if buf[i + size - 2] == crc & 0xFF and buf[i + size - 1] == crc >> 8:
                        self.discarded += i
                        if exc:
                            raise ModbusException(buf[i + 2])
                        return 0, bytes(mv[i + 3:i + 3 + nbytes])
            i += 1
        if i:
            self.discarded += i
            buf[0:have - i] = buf[i:have]  # the right side is a copy, so overlap is safe
        return have - i, None
