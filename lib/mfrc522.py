# NXP MFRC522 (RC522) contactless reader over SPI: reads the UID of ISO/IEC 14443 A cards (4, 7 or 10 bytes)
# and reports each presentation of a card once. Knows nothing of boards: the caller passes a machine.SPI-like
# object (mode 0, MSB first, at most 10 MHz) and the chip-select Pin, optionally the NRSTPD (reset) Pin.
#
# Facts used: MFRC522 datasheet (NXP, rev. 3.9) §8.1.2 SPI (address byte (reg << 1) & 0x7E, | 0x80 to read;
# a write burst goes to one register, a read burst names one register per byte and ends with 0x00), §9 registers,
# §10 commands; ISO/IEC 14443-3 type A: REQA/WUPA short frames, ATQA, anticollision + SELECT per cascade level
# (cascade tag 0x88, BCC, SAK bit 0x04 = UID not complete), HLTA, CRC_A (preset 0x6363, Annex B).
#
# Never blocks for long: a poll is a few 2-byte SPI transactions and one wait on the chip's own timer (1 ms,
# bounded in loop turns and time as well). Bring-up (reset, oscillator wake-up, configuration) is spread over
# successive polls, so nothing ever sleeps.
import binascii
import time
from micropython import const

# Registers (datasheet §9.2)
_COMMAND = const(0x01)
_COM_IRQ = const(0x04)
_ERROR = const(0x06)
_FIFO_DATA = const(0x09)
_FIFO_LEVEL = const(0x0A)
_CONTROL = const(0x0C)
_BIT_FRAMING = const(0x0D)
_MODE = const(0x11)
_TX_CONTROL = const(0x14)
_TX_ASK = const(0x15)
_T_MODE = const(0x2A)
_T_PRESCALER = const(0x2B)
_T_RELOAD_HI = const(0x2C)
_T_RELOAD_LO = const(0x2D)
_VERSION = const(0x37)

# Commands (§10.3) and CommandReg bits
_CMD_IDLE = const(0x00)
_CMD_TRANSMIT = const(0x04)
_CMD_TRANSCEIVE = const(0x0C)
_CMD_SOFT_RESET = const(0x0F)
_POWER_DOWN = const(0x10)  # read as 1 while the chip wakes up after a reset

# ComIrqReg bits; writing 0x7F (Set1 = 0) clears them all
_IRQ_TX = const(0x40)
_IRQ_RX = const(0x20)
_IRQ_TIMER = const(0x01)
_IRQ_CLEAR = const(0x7F)
_ERR_COLL = const(0x08)
_FLUSH = const(0x80)       # FIFOLevelReg FlushBuffer
_START_SEND = const(0x80)  # BitFramingReg

# Configuration written after every reset
_T_MODE_VAL = const(0x80)       # TAuto: the timer starts when a transmission ends, stops when a reply begins
_T_PRESCALER_VAL = const(0xA9)  # 13.56 MHz / (2 * 169 + 1) = 40 kHz: 25 us per tick
_T_RELOAD_VAL = const(39)       # 40 ticks = 1.0 ms; ISO 14443-3 fixes the reply delay of these frames near 91 us
_TX_ASK_VAL = const(0x40)       # Force100ASK: type A needs 100 % ASK
_MODE_VAL = const(0x3D)         # TxWaitRF, MFIN active high, CRC preset 0x6363 (ISO 14443 A)
_ANTENNA = const(0x03)          # TxControlReg Tx1RFEn | Tx2RFEn

# ISO/IEC 14443-3 type A
_WUPA = const(0x52)        # wakes IDLE and HALT cards: a card we halted answers again while it stays
_HLTA = const(0x50)
_CT = const(0x88)          # cascade tag: this UID part carries 3 bytes, more follow
_SAK_CASCADE = const(0x04)
_NVB_ANTICOLL = const(0x20)
_NVB_SELECT = const(0x70)
_SEL = b"\x93\x95\x97"     # SEL of cascade levels 1-3

WAIT_POLLS = const(200)   # ComIrqReg reads before we stop trusting the chip's timer
_WAIT_US = const(5000)
_MIN_POLLS = const(16)         # ComIrqReg reads before _WAIT_US may end the wait (about 0.3 ms of SPI at 2 MHz)

# Bring-up states
_RESET = const(0)
_WAKING = const(1)
_READY = const(2)
_ABSENT = const(3)
_WAKE_POLLS = const(10)    # polls for the oscillator to come up before the reader counts as absent
RETRY_POLLS = const(32)   # polls between bring-up attempts while no chip answers
CHECK_POLLS = const(64)   # polls between checks that the configuration survived (EMI, brown-out)


def crc_a(buf, n):
    """CRC_A of buf[:n] (ISO/IEC 14443-3 Annex B); goes on the air low byte first."""
    crc = 0x6363
    for i in range(n):
        b = (buf[i] ^ crc) & 0xFF
        b = (b ^ (b << 4)) & 0xFF
        crc = (crc >> 8) ^ (b << 8) ^ (b << 3) ^ (b >> 4)
    return crc


class Mfrc522:
    # gone_polls: empty polls in a row after which a card counts as taken away (a card at the edge of the field
    # misses a poll now and then; it must not count as a second presentation).
    def __init__(self, spi, cs, rst=None, gone_polls=3):
        self._spi = spi
        self._cs = cs
        self._rst = rst
        self.gone_polls = gone_polls
        cs(1)
        self._b2 = bytearray(2)           # one register access: address byte + data
        self._io = bytearray(10)          # FIFO bursts: address byte + a 9-byte SELECT frame
        self._iomv = memoryview(self._io)
        self._f = bytearray(9)            # the frame going out, then the reply
        self.uid = bytearray(10)          # UID of the last successful read_uid()
        self._held = bytearray(10)        # UID of the card on the reader (already reported)
        self._held_n = 0
        self._misses = 0
        self._state = _RESET
        self._count = 0                   # polls spent in the current bring-up state / since the last check
        self.version = None               # VersionReg once found (0x91/0x92 NXP; clones answer other values)
        self.resets = 0
        self.errors = 0
        self.last_error = None

    # ---- SPI (§8.1.2) ----

    def _write(self, reg, val):
        b = self._b2
        b[0] = (reg << 1) & 0x7E
        b[1] = val
        self._cs(0)
        self._spi.write(b)
        self._cs(1)

    def _read(self, reg):
        b = self._b2
        b[0] = 0x80 | ((reg << 1) & 0x7E)
        b[1] = 0
        self._cs(0)
        self._spi.write_readinto(b, b)
        self._cs(1)
        return b[1]

    def _fifo_write(self, n):
        io = self._io
        io[0] = (_FIFO_DATA << 1) & 0x7E
        f = self._f
        for i in range(n):
            io[i + 1] = f[i]
        self._cs(0)
        self._spi.write(self._iomv[:n + 1])
        self._cs(1)

    def _fifo_read(self, n):
        io = self._io
        for i in range(n):
            io[i] = 0x80 | ((_FIFO_DATA << 1) & 0x7E)
        io[n] = 0
        mv = self._iomv[:n + 1]
        self._cs(0)
        self._spi.write_readinto(mv, mv)
        self._cs(1)
        f = self._f
        for i in range(n):
            f[i] = io[i + 1]

    # ---- one exchange with the card ----

    def _fail(self, why):
        self.errors += 1
        self.last_error = why
        return -1

    def _start(self, n, last_bits, cmd):
        self._write(_COMMAND, _CMD_IDLE)          # stop whatever still runs
        self._write(_COM_IRQ, _IRQ_CLEAR)
        self._write(_FIFO_LEVEL, _FLUSH)
        if n == 1:
            self._write(_FIFO_DATA, self._f[0])
        else:
            self._fifo_write(n)
        self._write(_BIT_FRAMING, last_bits)      # StartSend clear before the command starts
        self._write(_COMMAND, cmd)
        if cmd == _CMD_TRANSCEIVE:
            self._write(_BIT_FRAMING, _START_SEND | last_bits)

    def _wait(self, bits):
        # -> the ComIrqReg bits seen, 0 when the chip never raised one (then it needs a reset).
        deadline = time.ticks_add(time.ticks_us(), _WAIT_US)
        for n in range(WAIT_POLLS):
            irq = self._read(_COM_IRQ)
            if irq & bits:
                return irq
            # The time limit counts only after a few reads: a task preempted for longer than it (an interrupt,
            # a busy host) would otherwise take a working chip for a hung one.
            if n >= _MIN_POLLS and time.ticks_diff(time.ticks_us(), deadline) > 0:
                break
        self._state = _RESET
        return 0

    def _transceive(self, n, last_bits, expect):
        # Sends self._f[:n] (last byte holding last_bits bits when non-zero); -> 0 when nothing answered, the
        # reply length (== expect, in self._f) when a clean reply of that size came, -1 on a bad reply.
        self._start(n, last_bits, _CMD_TRANSCEIVE)
        irq = self._wait(_IRQ_RX | _IRQ_TIMER)
        if not irq & _IRQ_RX:
            return 0 if irq else self._fail("chip did not answer")
        err = self._read(_ERROR)
        if err:
            return self._fail("collision" if err & _ERR_COLL else "receive error")
        if self._read(_FIFO_LEVEL) != expect or self._read(_CONTROL) & 0x07:
            return self._fail("reply length")
        self._fifo_read(expect)
        return expect

    # ---- ISO/IEC 14443-3 ----

    def read_uid(self):
        """One attempt: wake a card, anticollision + SELECT per cascade level, then HLTA.
        -> UID length (4, 7 or 10; the UID in self.uid[:n]), 0 when no card (or a bad answer: see last_error)."""
        f = self._f
        f[0] = _WUPA
        got = self._transceive(1, 7, 2)
        if got <= 0:
            return 0
        n = 0
        for level in range(3):
            sel = _SEL[level]
            f[0] = sel
            f[1] = _NVB_ANTICOLL
            r = self._transceive(2, 0, 5)
            if r <= 0:
                return self._bad(r, "no UID answer")
            if f[0] ^ f[1] ^ f[2] ^ f[3] != f[4]:
                return self._bad(0, "BCC")
            cascade = f[0] == _CT
            if cascade and level == 2:
                return self._bad(0, "cascade tag at level 3")
            for i in range(4 if not cascade else 3):  # keep this part of the UID: the reply overwrites f
                self.uid[n + i] = f[i + (1 if cascade else 0)]
            for i in range(4, -1, -1):                # SEL NVB CLn(4) BCC CRC_A(2)
                f[i + 2] = f[i]
            f[0] = sel
            f[1] = _NVB_SELECT
            crc = crc_a(f, 7)
            f[7] = crc & 0xFF
            f[8] = crc >> 8
            r = self._transceive(9, 0, 3)
            if r <= 0:
                return self._bad(r, "no SAK")
            if crc_a(f, 1) != f[1] | (f[2] << 8):
                return self._bad(0, "SAK CRC")
            n += 3 if cascade else 4
            if bool(f[0] & _SAK_CASCADE) != cascade:
                return self._bad(0, "SAK disagrees with the cascade tag")
            if not cascade:
                break
        self._halt()
        return n

    def _bad(self, r, why):
        # r: _transceive's result (-1: a bad reply, already counted) or 0 (silence or a check that failed here).
        if r == 0:
            self._fail(why)
        return 0

    def _halt(self):
        # HLTA has no reply: transmit only, and wait just for the last bit to leave (about 0.4 ms).
        f = self._f
        f[0] = _HLTA
        f[1] = 0
        crc = crc_a(f, 2)
        f[2] = crc & 0xFF
        f[3] = crc >> 8
        self._start(4, 0, _CMD_TRANSMIT)
        self._wait(_IRQ_TX)

    # ---- bring-up ----

    def _bring_up(self):
        st = self._state
        if st == _RESET or (st == _ABSENT and self._count >= RETRY_POLLS):
            self.resets += 1
            rst = self._rst
            if rst is not None:
                rst(0)              # hard power-down resets everything (>= 100 ns low)
                rst(1)
            else:
                self._write(_COMMAND, _CMD_SOFT_RESET)
            self._state = _WAKING
            self._count = 0
            return
        self._count += 1
        if st == _ABSENT:
            return
        cmd = self._read(_COMMAND)
        if cmd & _POWER_DOWN or cmd & 0x0F:
            if self._count >= _WAKE_POLLS:
                self._absent("no MFRC522 answers (stuck in reset)")
            return
        v = self._read(_VERSION)
        if v == 0x00 or v == 0xFF:
            self._absent("no MFRC522 answers (VersionReg 0x%02X)" % v)
            return
        self.version = v
        self._write(_T_MODE, _T_MODE_VAL)
        self._write(_T_PRESCALER, _T_PRESCALER_VAL)
        self._write(_T_RELOAD_HI, 0)
        self._write(_T_RELOAD_LO, _T_RELOAD_VAL)
        self._write(_TX_ASK, _TX_ASK_VAL)
        self._write(_MODE, _MODE_VAL)
        self._write(_TX_CONTROL, self._read(_TX_CONTROL) | _ANTENNA)
        self._state = _READY
        self._count = 0

    def _absent(self, why):
        self.version = None
        self.last_error = why
        self._state = _ABSENT
        self._count = 0

    def _config_ok(self):
        # A spike from the contactor can reset the chip: its registers fall back to defaults (antenna off) and
        # every poll would look like "no card". Checked now and then, and the chip is brought up again.
        return (self._read(_TX_CONTROL) & _ANTENNA == _ANTENNA and self._read(_T_PRESCALER) == _T_PRESCALER_VAL
                and self._read(_T_MODE) == _T_MODE_VAL)

    @property
    def ready(self):
        return self._state == _READY

    def restart(self):
        """Start the bring-up again at the next poll (after an SPI error, say)."""
        self._state = _RESET

    def poll(self):
        """Call every 100-200 ms. -> the UID (upper-case hex) of a card newly presented, else None."""
        if self._state != _READY:
            self._bring_up()
            return None
        self._count += 1
        if self._count >= CHECK_POLLS:
            self._count = 0
            if not self._config_ok():
                self.last_error = "configuration lost"
                self._state = _RESET
                return None
        n = self.read_uid()
        if n == 0:
            if self._misses < self.gone_polls:
                self._misses += 1
                if self._misses >= self.gone_polls:
                    self._held_n = 0   # taken away: the next read is a new presentation
            return None
        self._misses = 0
        held = self._held
        uid = self.uid
        if n == self._held_n:
            i = 0
            while i < n and held[i] == uid[i]:
                i += 1
            if i == n:
                return None            # still the same card on the reader
        for i in range(n):
            held[i] = uid[i]
        self._held_n = n
        return binascii.hexlify(uid[:n]).decode().upper()
