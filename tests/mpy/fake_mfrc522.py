# A simulated MFRC522 and ISO/IEC 14443 A cards, driven byte by byte over SPI, for tests of lib/mfrc522.py and
# of hal/esp32.py's reader. Written from the datasheet and ISO/IEC 14443-3, independently of the driver:
#   - SPI (datasheet §8.1.2): CS low starts a transaction; the first byte is the address byte (bit 7 = read,
#     bits 6-1 = register, bit 0 must be 0). Write: every following byte goes to that register. Read: the byte
#     clocked out after each address byte is that register's value; every following MOSI byte names the next
#     register, a 0x00 ends the burst.
#   - a register file with reset values, the 64-byte FIFO, ComIrqReg's Set1 semantics, FlushBuffer, the commands
#     Idle / Transmit / Transceive (started by BitFramingReg StartSend) / SoftReset, TxLastBits / RxLastBits,
#     ErrorReg CollErr / ParityErr, the timer (TAuto) raising TimerIRq when no card answers, the antenna switch
#     and 100 % ASK (cards hear nothing without both).
#   - cards with the ISO 14443-3 state machine (IDLE, READY per cascade level, ACTIVE, HALT): REQA only wakes
#     IDLE cards, WUPA wakes HALT ones too; anticollision answers CLn + BCC; SELECT with a correct CRC_A answers
#     SAK + CRC_A (cascade bit 0x04 while the UID is not complete); HLTA halts an ACTIVE card.
# Interrupts are not instant: a reply shows in ComIrqReg at the second read, a timeout after `timeout_reads`.
# `log` records the register traffic: ("w", reg, value) and ("r", reg, value); `air` the frames sent to cards.

_RESET_VALUES = {0x01: 0x20, 0x02: 0x80, 0x04: 0x14, 0x0B: 0x08, 0x0C: 0x10, 0x0E: 0x80, 0x11: 0x3F,
                 0x14: 0x80, 0x16: 0x10, 0x17: 0x84, 0x18: 0x84, 0x19: 0x4D, 0x24: 0x26, 0x26: 0x48,
                 0x27: 0x88, 0x28: 0x20, 0x29: 0x20}
_WRITABLE = set(range(0x01, 0x0F)) | set(range(0x11, 0x20)) | set(range(0x21, 0x30)) | set(range(0x31, 0x3C))
_READ_ONLY = {0x07, 0x0A, 0x21, 0x22, 0x2E, 0x2F, 0x37}

IDLE, READY, ACTIVE, HALT = "IDLE", "READY", "ACTIVE", "HALT"


def crc_a(data):
    # Bitwise form (reflected polynomial 0x8408, preset 0x6363): a second implementation to check the driver's.
    crc = 0x6363
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def with_crc(data):
    c = crc_a(data)
    return bytes(data) + bytes((c & 0xFF, c >> 8))


class Card:
    def __init__(self, uid, sak=0x08, bad_bcc=False, mute_select=False, answer_after=0):
        assert len(uid) in (4, 7, 10)
        self.uid = bytes(uid)
        self.sak = sak                    # final SAK: 0x08 MIFARE Classic 1K, 0x00 Ultralight/NTAG, 0x20 DESFire
        self.bad_bcc = bad_bcc
        self.mute_select = mute_select    # answers anticollision but never SELECT (a card leaving mid-way)
        self.answer_after = answer_after  # ignores this many frames first (weak coupling)
        self.levels = len(uid) // 3       # 4 -> 1, 7 -> 2, 10 -> 3 cascade levels
        self.power_on()

    def power_on(self):
        self.state = IDLE
        self.halted = False   # READY*/ACTIVE*: came from HALT, falls back there on an error
        self.level = 0

    def cl(self, level):
        u = self.uid
        if self.levels == 1:
            return u
        if level < self.levels - 1:
            return b"\x88" + u[3 * level:3 * level + 3]
        return u[3 * level:]

    def atqa(self):
        return bytes(((self.levels - 1) << 6 | 0x04, 0x00))  # bits 7-6: UID size; bit 2: bit-frame anticollision

    def _error(self):
        self.state = HALT if self.halted else IDLE
        return None

    def hear(self, frame, last_bits):
        """One frame from the reader -> (reply bytes, reply last bits) or None (silence)."""
        if self.answer_after:
            self.answer_after -= 1
            return None
        if last_bits == 7 and len(frame) == 1:
            cmd = frame[0] & 0x7F
            if self.state in (READY, ACTIVE):
                return self._error()
            if cmd == 0x26 and self.state == IDLE or cmd == 0x52:
                self.halted = self.state == HALT
                self.state = READY
                self.level = 0
                return self.atqa(), 0
            return None
        if last_bits != 0:
            return self._error() if self.state in (READY, ACTIVE) else None
        if self.state == READY:
            sel = (0x93, 0x95, 0x97)[self.level]
            cl = self.cl(self.level)
            bcc = cl[0] ^ cl[1] ^ cl[2] ^ cl[3]
            if len(frame) == 2 and frame[0] == sel and frame[1] == 0x20:
                return cl + bytes((bcc ^ 0xFF if self.bad_bcc else bcc,)), 0
            if (len(frame) == 9 and frame[0] == sel and frame[1] == 0x70 and crc_a(frame) == 0
                    and frame[2:6] == cl and frame[6] == bcc):
                if self.mute_select:
                    return None
                if self.level < self.levels - 1:
                    self.level += 1
                    return with_crc(b"\x04"), 0
                self.state = ACTIVE
                return with_crc(bytes((self.sak,))), 0
            return self._error()
        if self.state == ACTIVE:
            if bytes(frame) == with_crc(b"\x50\x00"):
                self.state = HALT
                self.halted = True
                return None
            return self._error()
        return None


class Chip:
    def __init__(self, version=0x92, cards=(), timeout_reads=3, wake_reads=2):
        self.version = version
        self.cards = []
        self.timeout_reads = timeout_reads
        self.wake_reads = wake_reads
        self.log = []
        self.air = []           # (frame bytes, tx last bits) of every transmission
        self.transactions = 0   # CS low-high cycles
        self.deaf = False       # True: writes are ignored, no interrupt ever comes (a hung chip)
        self.resets = -1        # reset() below is the power-on, not a reset the driver asked for
        self.powered_down = False
        self._sel = False
        self.reset()
        for c in cards:
            self.insert(c)

    # ---- the card field ----

    def insert(self, card):
        card.power_on()
        self.cards.append(card)

    def remove(self, card):
        self.cards.remove(card)

    # ---- pins ----

    def reset(self):
        self.regs = bytearray(64)
        for reg, v in _RESET_VALUES.items():
            self.regs[reg] = v
        self.regs[0x37] = self.version
        self.fifo = []
        self.pending = None      # (ComIrqReg bits, reads until they show)
        self.waking = self.wake_reads
        self.resets += 1
        for c in self.cards:
            c.power_on()         # the field dropped with the reset

    def cs(self, level):
        if level == 0:
            self.transactions += 1
            self._sel = True
            self._first = True
            self._read_addr = None
        else:
            self._sel = False

    def rst(self, level):
        if level == 0:
            self.powered_down = True
        elif self.powered_down:
            self.powered_down = False
            self.reset()

    def xfer(self, b):
        """One byte clocked while CS is low -> the byte on MISO."""
        assert self._sel, "SPI byte with CS high"
        out = 0
        if self._read_addr is not None:
            out = self._reg_read(self._read_addr)
            self._read_addr = None
        if self._first:
            self._first = False
            assert b & 1 == 0, "address byte 0x%02x: bit 0 must be 0" % b
            self._reading = bool(b & 0x80)
            if self._reading:
                self._read_addr = (b >> 1) & 0x3F
            else:
                self._write_addr = (b >> 1) & 0x3F
        elif self._reading:
            if b:
                assert b & 0x81 == 0x80, "read burst byte 0x%02x" % b
                self._read_addr = (b >> 1) & 0x3F
        else:
            self._reg_write(self._write_addr, b)
        return out

    # ---- registers ----

    def _reg_read(self, reg):
        r = self.regs
        if reg == 0x09:
            v = self.fifo.pop(0) if self.fifo else 0
        elif reg == 0x0A:
            v = len(self.fifo)
        elif reg == 0x01 and self.waking:
            self.waking -= 1
            v = r[0x01] | 0x10        # PowerDown reads 1 while the oscillator starts
        elif reg == 0x04:
            if self.pending:
                bits, left = self.pending
                if left <= 1:
                    r[0x04] |= bits
                    self.pending = None
                else:
                    self.pending = (bits, left - 1)
            v = r[0x04]
        else:
            v = r[reg]
        self._log("r", reg, v)
        return v

    def _log(self, op, reg, v):
        log = self.log
        if len(log) >= 400:   # the unit-test heap is ESP32-sized: keep the recent traffic only
            del log[:200]
        log.append((op, reg, v))

    def _reg_write(self, reg, v):
        assert reg in _WRITABLE, "write to reserved register 0x%02x" % reg
        self._log("w", reg, v)
        r = self.regs
        if self.deaf:
            return
        if reg in _READ_ONLY:
            if reg == 0x0A and v & 0x80:
                self.fifo = []
                r[0x06] &= ~0x10
            return
        if reg == 0x09:
            if len(self.fifo) >= 64:
                r[0x06] |= 0x10       # BufferOvfl
            else:
                self.fifo.append(v)
        elif reg == 0x04 or reg == 0x05:
            r[reg] = r[reg] | (v & 0x7F) if v & 0x80 else r[reg] & ~(v & 0x7F)
        elif reg == 0x01:
            self._command(v)
        elif reg == 0x0D:
            r[reg] = v
            if v & 0x80 and r[0x01] & 0x0F == 0x0C:
                self._send(True)
        elif reg == 0x0C:
            r[reg] = (r[reg] & 0x07) | (v & 0x38)   # TStartNow / TStopNow read as 0; RxLastBits read-only
        else:
            r[reg] = v

    def _command(self, v):
        r = self.regs
        cmd = v & 0x0F
        if cmd == 0x0F:
            self.reset()
            return
        assert cmd in (0x00, 0x04, 0x0C), "command 0x%x is not modelled" % cmd
        r[0x01] = v & 0x3F
        if cmd == 0x04:
            self._send(False)
            r[0x01] = r[0x01] & 0x30   # Transmit ends by itself
            r[0x04] |= 0x10           # IdleIRq

    # ---- the air ----

    def timeout_us(self):
        """What the timer is set to (datasheet §8.5: (2 * TPrescaler + 1) * (TReload + 1) / 13.56 MHz)."""
        r = self.regs
        presc = (r[0x2A] & 0x0F) << 8 | r[0x2B]
        reload = r[0x2C] << 8 | r[0x2D]
        return (2 * presc + 1) * (reload + 1) * 1000000 // 13560000

    def _send(self, receive):
        r = self.regs
        frame = bytes(self.fifo)
        last_bits = r[0x0D] & 0x07
        self.fifo = []
        r[0x06] = 0
        r[0x0C] &= ~0x07
        assert r[0x12] & 0x80 == 0 and r[0x13] & 0x80 == 0, "hardware CRC is not modelled"
        self.air.append((frame, last_bits))
        r[0x04] |= 0x40                # TxIRq
        field = r[0x14] & 0x03 == 0x03 and r[0x15] & 0x40
        replies = []
        for c in self.cards:
            if field:
                rep = c.hear(frame, last_bits)
                if rep is not None:
                    replies.append(rep)
            else:
                c.power_on()           # no field: the card is unpowered and starts over when it comes back
        if not receive:
            return
        if not replies:
            if r[0x2A] & 0x80 and self.timeout_us() > 0:
                self.pending = (0x01, self.timeout_reads)   # TimerIRq
            return
        data, bits = replies[0]
        irq = 0x20
        if any(rep != replies[0] for rep in replies):
            merged = bytearray(max(len(d) for d, _ in replies))
            for d, _ in replies:
                for i, x in enumerate(d):
                    merged[i] |= x
            data = bytes(merged)
            r[0x06] |= 0x08            # CollErr
            irq |= 0x02                # ErrIRq
        self.fifo = list(data)
        r[0x0C] = (r[0x0C] & ~0x07) | bits
        self.pending = (irq, 2)

    # ---- what tests look at ----

    def writes(self):
        return [(reg, v) for op, reg, v in self.log if op == "w"]


class Spi:
    """machine.SPI's transfer methods on top of one chip; CS is the chip's business (see CsPin)."""

    def __init__(self, chip):
        self.chip = chip

    def write(self, buf):
        for b in buf:
            self.chip.xfer(b)

    def write_readinto(self, wbuf, rbuf):
        assert len(wbuf) == len(rbuf)
        out = bytes(self.chip.xfer(b) for b in bytes(wbuf))
        for i in range(len(out)):
            rbuf[i] = out[i]

    def readinto(self, buf, write=0):
        for i in range(len(buf)):
            buf[i] = self.chip.xfer(write)

    def read(self, n, write=0):
        return bytes(self.chip.xfer(write) for _ in range(n))


class CsPin:
    def __init__(self, fn):
        self.fn = fn
        self.level = 1

    def __call__(self, v=None):
        return self.value(v)

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = int(bool(v))
        self.fn(self.level)
