# lib/mfrc522.py against a simulated MFRC522 with cards in its field (tests/mpy/fake_mfrc522.py): the register
# traffic of the datasheet, ISO/IEC 14443-3 anticollision for 4, 7 and 10 byte UIDs, debouncing, bad answers.
import gc
import time
import tinytest
from lib import mfrc522
from lib.mfrc522 import Mfrc522
import fake_mfrc522 as fake

UID4 = b"\xde\xad\xbe\xef"
UID7 = b"\x04\xa1\xb2\xc3\xd4\xe5\xf6"
UID10 = b"\x04\x11\x22\x33\x44\x55\x66\x77\x88\x99"


def reader(chip, rst=False, **kw):
    r = Mfrc522(fake.Spi(chip), fake.CsPin(chip.cs), fake.CsPin(chip.rst) if rst else None, **kw)
    return r


def ready(chip, **kw):
    r = reader(chip, **kw)
    for _ in range(5):
        assert r.poll() is None  # bring-up polls report nothing
        if r.ready:
            return r
    raise AssertionError("reader not ready: %r" % r.last_error)


def polls(r, n):
    return [t for t in (r.poll() for _ in range(n)) if t is not None]


def test_crc_a_vectors():
    # ISO/IEC 14443-3 Annex B examples, then agreement with the fake's bitwise CRC.
    assert mfrc522.crc_a(b"\x00\x00", 2) == 0x1EA0
    assert mfrc522.crc_a(b"\x12\x34", 2) == 0xCF26
    for data in (b"\x93\x70\xde\xad\xbe\xef\x22", b"\x50\x00", b"\x08", bytes(range(40))):
        assert mfrc522.crc_a(data, len(data)) == fake.crc_a(data), data


class RecordingSpi:
    def __init__(self, answer=0):
        self.out = []
        self.answer = answer

    def write(self, buf):
        self.out.append(("w", bytes(buf)))

    def write_readinto(self, w, r):
        self.out.append(("x", bytes(w)))
        for i in range(len(r)):
            r[i] = self.answer


def test_spi_address_byte_format():
    # Datasheet §8.1.2.3: write = (reg << 1) & 0x7E, read = that | 0x80; the data byte follows.
    spi = RecordingSpi(0x92)
    cs = fake.CsPin(lambda level: spi.out.append(("cs", level)))
    r = Mfrc522(spi, cs)
    spi.out.clear()
    r._write(0x01, 0x0F)
    assert r._read(0x37) == 0x92
    assert spi.out == [("cs", 0), ("w", b"\x02\x0f"), ("cs", 1), ("cs", 0), ("x", b"\xee\x00"), ("cs", 1)], spi.out


def test_bring_up_register_writes():
    chip = fake.Chip(wake_reads=2)
    r = reader(chip)
    assert r.poll() is None and not r.ready
    assert chip.writes() == [(0x01, 0x0F)]  # SoftReset
    for _ in range(4):
        if not r.ready:
            r.poll()
    assert r.ready and r.version == 0x92
    assert chip.writes() == [(0x01, 0x0F), (0x2A, 0x80), (0x2B, 0xA9), (0x2C, 0x00), (0x2D, 39), (0x15, 0x40),
                             (0x11, 0x3D), (0x14, 0x83)], chip.writes()
    assert 950 <= chip.timeout_us() <= 1100, chip.timeout_us()  # 1 ms: ten times the ISO reply delay
    assert chip.resets == 1


def test_bring_up_with_reset_pin_needs_no_soft_reset():
    chip = fake.Chip()
    r = reader(chip, rst=True)
    for _ in range(5):
        r.poll()
    assert r.ready
    assert chip.resets == 1  # NRSTPD low then high
    assert (0x01, 0x0F) not in chip.writes()


def test_clone_chip_versions_accepted():
    for v in (0x91, 0x92, 0x88, 0xB2, 0x12):
        assert ready(fake.Chip(version=v)).version == v


def test_absent_reader_is_cheap_and_retried():
    # MISO pulled up (nothing on the bus): CommandReg reads 0xFF, never "awake".
    spi = RecordingSpi(0xFF)
    r = Mfrc522(spi, fake.CsPin(lambda level: None))
    for _ in range(12):
        assert r.poll() is None
    assert not r.ready and "no MFRC522" in r.last_error, r.last_error
    before = len(spi.out)
    for _ in range(mfrc522.RETRY_POLLS - 1):
        assert r.poll() is None
    assert len(spi.out) == before  # while absent a poll costs nothing
    r.poll()
    assert len(spi.out) == before + 1 and spi.out[-1] == ("w", b"\x02\x0f")  # then tries again
    spi0 = RecordingSpi(0x00)  # MISO pulled down: VersionReg 0x00
    r = Mfrc522(spi0, fake.CsPin(lambda level: None))
    for _ in range(3):
        r.poll()
    assert not r.ready and "VersionReg 0x00" in r.last_error


def test_four_byte_uid():
    chip = fake.Chip()
    r = ready(chip)
    chip.insert(fake.Card(UID4))
    chip.air.clear()
    assert r.poll() == "DEADBEEF"
    sel = fake.with_crc(b"\x93\x70" + UID4 + bytes((0xDE ^ 0xAD ^ 0xBE ^ 0xEF,)))
    assert chip.air == [(b"\x52", 7), (b"\x93\x20", 0), (sel, 0), (fake.with_crc(b"\x50\x00"), 0)], chip.air
    assert chip.cards[0].state == fake.HALT


def test_seven_byte_uid():
    chip = fake.Chip(cards=[fake.Card(UID7, sak=0x00)])
    r = ready(chip)
    chip.air.clear()
    assert r.poll() == "04A1B2C3D4E5F6"
    levels = [f[0][0] for f in chip.air if len(f[0]) in (2, 9) and f[0][0] != 0x50]
    assert levels == [0x93, 0x93, 0x95, 0x95], chip.air  # anticollision + SELECT at levels 1 and 2
    assert chip.air[2][0][2] == 0x88  # CL1 starts with the cascade tag


def test_ten_byte_uid():
    chip = fake.Chip(cards=[fake.Card(UID10, sak=0x20)])
    r = ready(chip)
    assert r.poll() == "04112233445566778899"


def test_no_card_is_quick():
    chip = fake.Chip(timeout_reads=3)
    r = ready(chip)
    t0 = time.ticks_us()
    n0 = chip.transactions
    assert r.poll() is None
    spent = time.ticks_diff(time.ticks_us(), t0)
    # 7 writes to send WUPA, then ComIrqReg until the chip's timer fires
    assert chip.transactions - n0 == 7 + 3, chip.transactions - n0
    assert chip.air[-1] == (b"\x52", 7)
    assert spent < 50000, spent
    assert r.errors == 0


class TimerIrqSpi:
    # Every read answers 0x01: ComIrqReg shows TimerIRq at once, so only the driver runs.
    def write(self, buf):
        pass

    def write_readinto(self, w, r):
        r[1] = 0x01


def test_no_card_poll_allocates_nothing():
    r = ready(fake.Chip())
    r._spi = TimerIrqSpi()
    r._count = 0
    r.poll()
    gc.collect()
    before = gc.mem_alloc()
    for _ in range(20):
        assert r.poll() is None
    assert gc.mem_alloc() - before == 0, gc.mem_alloc() - before


def test_held_card_is_one_tag():
    chip = fake.Chip(cards=[fake.Card(UID4)])
    r = ready(chip)
    wupa = len([f for f in chip.air if f[0] == b"\x52"])
    assert polls(r, 20) == ["DEADBEEF"]
    # the card was read on every poll (WUPA wakes it from HALT), not merely silent
    assert len([f for f in chip.air if f[0] == b"\x52"]) - wupa == 20
    assert len([f for f in chip.air if f[0] == fake.with_crc(b"\x50\x00")]) == 20


def test_removed_and_presented_again_is_a_second_tag():
    card = fake.Card(UID7)
    chip = fake.Chip(cards=[card])
    r = ready(chip)
    assert polls(r, 3) == ["04A1B2C3D4E5F6"]
    chip.remove(card)
    assert polls(r, r.gone_polls) == []
    chip.insert(card)
    assert polls(r, 5) == ["04A1B2C3D4E5F6"]


def test_a_missed_poll_is_not_a_new_presentation():
    card = fake.Card(UID4)
    chip = fake.Chip(cards=[card])
    r = ready(chip)
    assert polls(r, 2) == ["DEADBEEF"]
    for gap in range(1, r.gone_polls):  # a card at the edge of the field drops out for a poll or two
        chip.remove(card)
        assert polls(r, gap) == []
        chip.insert(card)
        assert polls(r, 3) == [], gap


def test_another_card_is_reported_at_once():
    a = fake.Card(UID4)
    b = fake.Card(UID10)
    chip = fake.Chip(cards=[a])
    r = ready(chip)
    assert polls(r, 2) == ["DEADBEEF"]
    chip.remove(a)
    chip.insert(b)
    assert r.poll() == "04112233445566778899"


def test_bad_bcc_is_no_tag():
    chip = fake.Chip(cards=[fake.Card(UID4, bad_bcc=True)])
    r = ready(chip)
    assert polls(r, 5) == []
    # every other poll: a card left READY by a failed anticollision ignores the next WUPA (ISO 14443-3)
    assert r.last_error == "BCC" and r.errors >= 2, r.errors
    # no SELECT was sent for a UID that failed its check
    assert not [f for f in chip.air if len(f[0]) == 9]


def test_collision_is_no_tag_until_one_card_is_left():
    a = fake.Card(UID4)
    b = fake.Card(b"\x11\x22\x33\x44")
    chip = fake.Chip(cards=[a, b])
    r = ready(chip)
    assert polls(r, 5) == []
    assert r.last_error == "collision", r.last_error
    assert not [f for f in chip.air if len(f[0]) == 9]  # nobody was selected
    chip.remove(b)
    assert polls(r, 3) == ["DEADBEEF"]


def test_card_silent_at_select_is_no_tag():
    card = fake.Card(UID7, mute_select=True)
    chip = fake.Chip(cards=[card])
    r = ready(chip)
    assert polls(r, 4) == []
    assert r.last_error == "no SAK"
    card.mute_select = False
    assert polls(r, 3) == ["04A1B2C3D4E5F6"]  # left READY by the failure, it recovers on a later poll


def test_hung_chip_costs_a_bounded_wait_then_a_reset():
    card = fake.Card(UID4)
    chip = fake.Chip()
    r = ready(chip)
    chip.deaf = True  # takes no command, raises no interrupt
    n0 = chip.transactions
    t0 = time.ticks_ms()
    assert r.poll() is None
    assert chip.transactions - n0 <= 7 + mfrc522.WAIT_POLLS
    assert time.ticks_diff(time.ticks_ms(), t0) < 1000  # no sleep in it: ~1 ms, the rest is a loaded host's
    assert not r.ready and r.last_error == "chip did not answer"
    chip.deaf = False
    chip.insert(card)
    assert polls(r, 6) == ["DEADBEEF"]
    assert chip.resets == 2


def test_chip_reset_by_a_spike_is_brought_up_again():
    # A chip reset leaves the antenna off and the timer stopped: the driver notices and configures it again.
    card = fake.Card(UID4)
    chip = fake.Chip(cards=[card])
    r = ready(chip)
    assert polls(r, 2) == ["DEADBEEF"]
    chip.reset()
    assert polls(r, 6) == []  # the card stays: it must not count as presented again (that would stop a session)
    assert r.ready and chip.regs[0x14] & 0x03 == 0x03, (r.last_error, r.ready, chip.regs[0x14])
    assert polls(r, 6) == []
    chip.remove(card)  # only polls that could see the field count towards "taken away"
    assert polls(r, r.gone_polls) == []
    chip.insert(card)
    assert polls(r, 3) == ["DEADBEEF"]


def test_lost_antenna_found_by_the_periodic_check():
    card = fake.Card(UID4)
    chip = fake.Chip()
    r = ready(chip)
    chip.regs[0x14] = 0x80  # antenna off, timer still running: every poll looks like "no card"
    assert polls(r, mfrc522.CHECK_POLLS + 6) == []
    assert r.ready and chip.regs[0x14] & 0x03 == 0x03
    chip.insert(card)
    assert polls(r, 2) == ["DEADBEEF"]


tinytest.run(globals())
