# hal/esp32.py against a recording fake `machine` module (tests/mpy/fake_machine.py).
import sys
import time
import asyncio
import fake_machine as fm
import fake_mfrc522
import tinytest

sys.modules["machine"] = fm
import hal.board
import hal.esp32
from hal.esp32 import Board, PINS

_PILOT = (("A", 12000), ("B", 9000), ("C", 6000), ("D", 3000))   # digest 4.2 nominal plateaus


def fresh(pins=None):
    fm.clear()
    return Board(pins)


def adc_uv(pilot_mv):
    # What the sense network documented in hal/esp32.py puts on the ADC pin: 1.5 V + V_cp / 12.
    return 1500000 + pilot_mv * 1000 // 12


def pwm_wave(hi_mv, lo_mv, duty_permille, n=64):
    high = n * duty_permille // 1000
    return [adc_uv(hi_mv)] * high + [adc_uv(lo_mv)] * (n - high)


def test_every_board_method_exists():
    b = fresh()
    for name in hal.board.METHODS:
        assert callable(getattr(b, name)), name
    assert b.state_dir == "/"


def test_pwm_is_1khz_and_idles_high():
    fresh()
    pwm = fm.pwms[PINS["cp_pwm"]]
    assert pwm.hz == 1000
    assert pwm.duty == 65535  # steady +12 V until the firmware decides


def test_pwm_duty_u16_per_permille():
    b = fresh()
    pwm = fm.pwms[PINS["cp_pwm"]]
    for permille in (100, 267, 533):
        b.set_pwm(permille)
        exact = permille * 65535 / 1000
        assert abs(pwm.duty - exact) <= 1, (permille, pwm.duty)
    b.set_pwm(1000)
    assert pwm.duty == 65535
    b.set_pwm(0)
    assert pwm.duty == 0
    assert pwm.hz == 1000


def test_contactor_and_lock_pin_levels():
    b = fresh()
    contactor = fm.pins[PINS["contactor"]]
    lock = fm.pins[PINS["lock"]]
    assert contactor.level == 0 and lock.level == 0  # safe state at construction
    b.set_contactor(True)
    assert contactor.level == 1
    b.set_contactor(False)
    assert contactor.level == 0
    b.set_lock(True)
    assert lock.level == 1 and contactor.level == 0
    b.set_lock(False)
    assert lock.level == 0


def test_leds():
    b = fresh()
    for name in ("green", "blue", "red"):
        b.set_led(name, True)
        assert fm.pins[PINS["led_" + name]].level == 1
        b.set_led(name, False)
        assert fm.pins[PINS["led_" + name]].level == 0
    tinytest.raises(ValueError, b.set_led, "purple", True)


def test_inputs_follow_pins():
    b = fresh()
    for key, read in (("lock_fb", b.lock_feedback), ("contactor_fb", b.contactor_feedback),
                      ("rcd", b.rcd_tripped)):
        pin = fm.pins[PINS[key]]
        assert pin.mode == fm.Pin.IN
        pin.level = 0
        assert read() is False
        pin.level = 1
        assert read() is True


def test_uart_init_args():
    b = fresh({"uart_id": 1, "uart_tx": 4, "uart_rx": 5})
    stream = b.open_uart(9600, None, 1)
    assert fm.uarts[1].settings["baudrate"] == 9600
    assert fm.uarts[1].settings["bits"] == 8
    assert fm.uarts[1].settings["parity"] is None
    assert fm.uarts[1].settings["stop"] == 1
    assert fm.uarts[1].settings["tx"] == 4 and fm.uarts[1].settings["rx"] == 5
    assert hasattr(stream, "readexactly") and hasattr(stream, "drain")
    b.open_uart(19200, "E", 2)
    s = fm.uarts[1].settings
    assert (s["baudrate"], s["parity"], s["stop"]) == (19200, 0, 2)
    b.open_uart(2400, "O", 1)
    assert fm.uarts[1].settings["parity"] == 1
    tinytest.raises(ValueError, b.open_uart, 9600, "X", 1)


async def test_rs485_driver_enable_wraps_a_frame():
    b = fresh({"rs485_de": 33})
    stream = b.open_uart(9600, None, 1)
    de = fm.pins[33]
    assert de.level == 0
    stream.write(b"\x01\x04\x00\x00\x00\x02\x71\xcb")
    assert de.level == 1  # the bus is driven while the frame goes out
    await stream.drain()
    assert de.level == 0
    assert bytes(fm.uarts[PINS["uart_id"]].written) == b"\x01\x04\x00\x00\x00\x02\x71\xcb"
    names = [c[0] for c in fm.calls]
    # released only after the UART said the last bit left
    assert names.index("UART.txdone") < len(names) - 1 - names[::-1].index("Pin.value")


def test_watch_timer_period_and_callback():
    b = fresh()
    ran = []
    b.start_watch(10, lambda: ran.append(1))
    t = fm.timers[0]
    assert t.period == 10 and t.mode == fm.Timer.PERIODIC
    t.fire()
    t.fire()
    assert len(ran) == 2
    b.start_watch(50, lambda: None)
    assert fm.timers[1].period == 50  # a second watch gets its own timer


def test_cp_burst_gives_plateaus_per_state():
    b = fresh()
    adc = fm.adcs[PINS["cp_adc"]]
    tol = 24  # one ADC microvolt step times the divider, plus rounding
    for letter, level in _PILOT:
        adc.feed(pwm_wave(level, -12000, 267))
        hi, lo = b.read_cp()
        assert abs(hi - level) <= tol, (letter, hi)
        assert abs(lo + 12000) <= tol, (letter, lo)
        assert adc.reads >= 64
    adc.feed([adc_uv(9000)])           # no PWM: both plateaus are the steady level
    hi, lo = b.read_cp()
    assert abs(hi - 9000) <= tol and abs(lo - 9000) <= tol
    adc.feed(pwm_wave(6000, 0, 267))  # missing diode: the low phase collapses to ~0 V
    hi, lo = b.read_cp()
    assert abs(lo) <= tol


def test_pp_ohms_bands():
    b = fresh()
    adc = fm.adcs[PINS["pp_adc"]]
    for rc in (1500, 680, 220, 100):
        mv = 3300 * rc // (rc + 1000)
        adc.feed([mv * 1000])
        ohms = b.read_pp_ohms()
        assert ohms is not None and abs(ohms - rc) <= rc * 3 // 100 + 1, (rc, ohms)
    adc.feed([3100000])  # open: the ADC tops out near 3.1 V at 11 dB
    assert b.read_pp_ohms() is None


def test_wdt_armed_by_first_feed_and_reset():
    b = fresh()
    assert not fm.wdts
    b.wdt_feed()
    b.wdt_feed()
    assert len(fm.wdts) == 1 and fm.wdts[0].feeds == 2
    tinytest.raises(fm.ResetCalled, b.reset)


def test_tags_queue():
    b = fresh()
    assert b.poll_tag() is None
    b.push_tag("04A1")
    b.push_tag("04B2")
    assert b.poll_tag() == "04A1"
    assert b.poll_tag() == "04B2"
    assert b.poll_tag() is None


def wire_reader(b, cards=()):
    # The simulated RC522 on the board's SPI bus, watching its CS and reset lines.
    chip = fake_mfrc522.Chip(cards=cards)
    fm.spis[PINS["spi_id"]].device = chip
    fm.listeners[PINS["rfid_cs"]] = chip.cs
    fm.listeners[PINS["rfid_rst"]] = chip.rst
    return chip


def tags_within(b, ms):
    # poll_tag as the firmware's input task calls it (every 100 ms; faster here), for ms of real time.
    got = []
    end = time.ticks_add(time.ticks_ms(), ms)
    while time.ticks_diff(end, time.ticks_ms()) > 0:
        t = b.poll_tag()
        if t is not None:
            got.append(t)
        del fm.calls[:]  # every CS edge is recorded: keep the unit-test heap for the test
        time.sleep_ms(10)
    return got


def test_rfid_spi_bus_settings():
    fresh()
    spi = fm.spis[PINS["spi_id"]]
    st = spi.settings
    assert st["polarity"] == 0 and st["phase"] == 0 and st["baudrate"] <= 10000000  # MFRC522: mode 0, <= 10 MHz
    assert (st["sck"], st["mosi"], st["miso"]) == (PINS["rfid_sck"], PINS["rfid_mosi"], PINS["rfid_miso"])
    assert fm.pins[PINS["rfid_cs"]].level == 1 and fm.pins[PINS["rfid_rst"]].level == 1


def test_poll_tag_reads_a_card_from_the_rc522():
    b = fresh()
    card = fake_mfrc522.Card(b"\x04\xa1\xb2\xc3\xd4\xe5\xf6")
    chip = wire_reader(b, [card])
    got = []
    end = time.ticks_add(time.ticks_ms(), 5000)
    while not got and time.ticks_diff(end, time.ticks_ms()) > 0:  # bring-up takes a few polls
        t = b.poll_tag()
        if t is not None:
            got.append(t)
        del fm.calls[:]
        time.sleep_ms(10)
    assert got == ["04A1B2C3D4E5F6"], (got, b.rfid.last_error)
    assert chip.resets == 1 and (0x01, 0x0F) not in chip.writes()  # reset through NRSTPD, not SoftReset
    assert tags_within(b, 700) == []  # held on the reader: one presentation, one tag
    chip.remove(card)
    assert tags_within(b, 700) == []
    chip.insert(card)
    assert tags_within(b, 700) == ["04A1B2C3D4E5F6"]


def test_poll_tag_polls_the_reader_at_most_every_150_ms():
    b = fresh()
    wire_reader(b)
    spi = fm.spis[PINS["spi_id"]]
    b.poll_tag()
    n = spi.transfers
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < 100:
        assert b.poll_tag() is None
    assert spi.transfers == n  # calls in between cost no SPI traffic


def test_no_reader_fitted_or_answering():
    b = fresh({"rfid_cs": None})
    assert b.rfid is None and PINS["spi_id"] not in fm.spis
    assert b.poll_tag() is None
    b = fresh()  # configured, but nothing on the bus: MISO reads 0xFF
    assert tags_within(b, 400) == []
    for _ in range(12):  # what 12 more poll intervals do
        b.rfid.poll()
    assert not b.rfid.ready and "no MFRC522" in b.rfid.last_error, b.rfid.last_error


def test_pushed_tags_come_first():
    b = fresh()
    wire_reader(b, [fake_mfrc522.Card(b"\xde\xad\xbe\xef")])
    b.push_tag("04B2")
    assert b.poll_tag() == "04B2"


tinytest.run(globals())
