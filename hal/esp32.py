# hal.board's interface on an ESP32 (WROOM/WROVER) charge-point PCB.
#
# Pin map: PINS below are the defaults; Board(pins={...}) overrides any of them (config "Pins").
#   cp_pwm        CP generator input: GPIO high = +12 V, low = -12 V (op-amp/comparator stage, non-inverting)
#   cp_adc        CP sense: V_adc = 1.5 V + V_cp / 12 (resistor network onto a 1.5 V reference), so
#                 +12 V -> 2.5 V, -12 V -> 0.5 V: the whole +-13 V range stays in the ADC's calibrated span
#   pp_adc        PP sense: PP-PE resistance Rc under a 1 kohm pull-up to 3.3 V: V = 3.3 V * Rc / (Rc + 1 kohm)
#   contactor     relay driver, high = closed          lock     lock actuator driver, high = locked
#   led_green / led_blue / led_red                     high = lit
#   lock_fb       lock feedback contact, high = locked (GPIO 34-39 have no pulls: the PCB has them)
#   contactor_fb  contactor auxiliary contact, high = closed
#   rcd           RCD/RDC-DD trip output, high = tripped
#   uart_id, uart_tx, uart_rx   RS485 transceiver; rs485_de: driver-enable pin, None for an auto-direction part
#   spi_id, rfid_sck, rfid_mosi, rfid_miso, rfid_cs, rfid_rst   MFRC522 (RC522) RFID reader on SPI (lib/mfrc522.py);
#                 rfid_cs None = no reader fitted (its code is then never imported); rfid_rst None = not wired
#                 (soft reset instead). Wiring and power: docs/hardware.md.
#
# The safety watch (start_watch) runs from machine.Timer. On the ESP32 port its callback is a soft IRQ: it is
# scheduled between bytecodes, so it waits while a long C call runs (a TLS handshake: about 1-2 s on this chip;
# a flash erase). The firmware must not start such calls while the contactor is closed, or must accept that
# latency; the hard guarantee is the relay driver dropping on reset or brown-out.
import time
import asyncio
import machine
from machine import Pin, PWM, ADC, UART, Timer, SPI
from micropython import const

PINS = {
    "cp_pwm": 25, "cp_adc": 36, "pp_adc": 39,
    "contactor": 26, "lock": 27,
    "led_green": 18, "led_blue": 19, "led_red": 21,
    "lock_fb": 34, "contactor_fb": 35, "rcd": 32,
    "uart_id": 2, "uart_tx": 17, "uart_rx": 16, "rs485_de": None,
    "spi_id": 1, "rfid_sck": 14, "rfid_mosi": 13, "rfid_miso": 4, "rfid_cs": 33, "rfid_rst": 22,
}

_CP_HZ = const(1000)             # IEC 61851-1: 1 kHz +-2 %
_DUTY_MAX = const(65535)
_CP_SAMPLES = const(64)          # ~15 us per read: the burst spans more than one 1 ms PWM period
_CP_REF_UV = const(1500000)      # sense network: V_adc = 1.5 V + V_cp / 12
_CP_DIV = const(12)
_PP_SAMPLES = const(8)
_PP_VCC_MV = const(3300)
_PP_PULLUP_OHMS = const(1000)
_PP_OPEN_OHMS = const(10000)     # far above the 1500 ohm band: treat as no cable
_WDT_MS = const(8000)
_RFID_POLL_MS = const(150)       # a card is seen within ~0.15 s; a poll costs about 1.5 ms of the loop
_RFID_SPI_HZ = const(1000000)    # the chip takes 10 MHz; 1 MHz forgives long wires to a reader on the front

_LEDS = ("green", "blue", "red")
# hal.board parity spellings -> machine.UART's (None, 0 = even, 1 = odd)
_PARITY = {None: None, "N": None, "E": 0, "O": 1, 0: 0, 1: 1}


def cp_mv(uv):
    # ADC microvolts -> pilot millivolts, inverse of the sense network above.
    return (uv - _CP_REF_UV) * _CP_DIV // 1000


def pp_ohms(mv):
    # ADC millivolts -> PP-PE ohms under the pull-up; None when the line is (nearly) open.
    if mv >= _PP_VCC_MV:
        return None
    ohms = _PP_PULLUP_OHMS * mv // (_PP_VCC_MV - mv)
    return None if ohms > _PP_OPEN_OHMS else ohms


def duty_u16(permille):
    # 1000 -> steady high (+12 V), 0 -> steady low (-12 V, state F); both are "no PWM" at the pin.
    if permille >= 1000:
        return _DUTY_MAX
    if permille <= 0:
        return 0
    return permille * _DUTY_MAX // 1000


class _Rs485(asyncio.StreamReader):
    # Half-duplex transceiver with a driver-enable pin: drive the bus only while our frame goes out.
    def __init__(self, uart, de):
        asyncio.StreamReader.__init__(self, uart)
        self._uart = uart
        self._de = de

    def write(self, buf):
        self._de.value(1)
        asyncio.StreamReader.write(self, buf)

    async def drain(self):
        await asyncio.StreamReader.drain(self)
        while not self._uart.txdone():   # the last stop bit must leave before the bus is released
            await asyncio.sleep_ms(1)
        self._de.value(0)


def _reader(p):
    from lib.mfrc522 import Mfrc522  # imported only when a reader is fitted: its code costs heap

    spi = SPI(p["spi_id"], baudrate=_RFID_SPI_HZ, polarity=0, phase=0,
              sck=Pin(p["rfid_sck"]), mosi=Pin(p["rfid_mosi"]), miso=Pin(p["rfid_miso"]))
    rst = p.get("rfid_rst")
    return Mfrc522(spi, Pin(p["rfid_cs"], Pin.OUT, value=1), None if rst is None else Pin(rst, Pin.OUT, value=1))


class Board:
    def __init__(self, pins=None):
        p = dict(PINS)
        if pins:
            p.update(pins)
        self.pins = p
        self.state_dir = "/"
        self._pwm = PWM(Pin(p["cp_pwm"], Pin.OUT), freq=_CP_HZ, duty_u16=_DUTY_MAX)  # idle at +12 V (A1/B1)
        self._cp_adc = ADC(Pin(p["cp_adc"]), atten=ADC.ATTN_11DB)
        self._pp_adc = ADC(Pin(p["pp_adc"]), atten=ADC.ATTN_11DB)
        self._contactor = Pin(p["contactor"], Pin.OUT, value=0)
        self._lock = Pin(p["lock"], Pin.OUT, value=0)
        self._leds = {}
        for name in _LEDS:
            self._leds[name] = Pin(p["led_" + name], Pin.OUT, value=0)
        self._lock_fb = Pin(p["lock_fb"], Pin.IN)
        self._contactor_fb = Pin(p["contactor_fb"], Pin.IN)
        self._rcd = Pin(p["rcd"], Pin.IN)
        self._tags = []
        self.rfid = _reader(p) if p.get("rfid_cs") is not None else None
        self._rfid_due = time.ticks_ms()
        self._timers = []
        self._wdt = None

    # ---- outputs ----

    def set_pwm(self, permille):
        self._pwm.duty_u16(duty_u16(int(permille)))

    def set_contactor(self, on):
        self._contactor.value(1 if on else 0)

    def set_lock(self, locked):
        self._lock.value(1 if locked else 0)

    def set_led(self, name, on):
        pin = self._leds.get(name)
        if pin is None:
            raise ValueError("unknown LED %r (green, blue, red)" % (name,))
        pin.value(1 if on else 0)

    # ---- inputs ----

    def read_cp(self):
        # Max and min of a burst: the high plateau gives the state, the low one the diode check. Plain int
        # compares, no buffer: safe to call from the timer callback.
        adc = self._cp_adc
        hi = -1
        lo = 1 << 29
        for _ in range(_CP_SAMPLES):
            v = adc.read_uv()
            if v > hi:
                hi = v
            if v < lo:
                lo = v
        return cp_mv(hi), cp_mv(lo)

    def read_pp_ohms(self):
        adc = self._pp_adc
        total = 0
        for _ in range(_PP_SAMPLES):
            total += adc.read_uv()
        return pp_ohms(total // (_PP_SAMPLES * 1000))

    def lock_feedback(self):
        return self._lock_fb.value() == 1

    def contactor_feedback(self):
        return self._contactor_fb.value() == 1

    def rcd_tripped(self):
        return self._rcd.value() == 1

    def local_limit_da(self):
        # No load-management input is wired on this PCB.
        return None

    def take_block_ms(self):
        # The loop-stall test hook exists only on the virtual board.
        return 0

    def push_tag(self, uid):
        # A tag from another source than the RC522 (a second reader, a test); keeps the newest cards.
        if len(self._tags) >= 8:
            self._tags.pop(0)
        self._tags.append(uid)

    def poll_tag(self):
        if self._tags:
            return self._tags.pop(0)
        r = self.rfid
        if r is None:
            return None
        now = time.ticks_ms()
        if time.ticks_diff(now, self._rfid_due) < 0:
            return None  # however often the firmware asks, the reader is polled every _RFID_POLL_MS
        self._rfid_due = time.ticks_add(now, _RFID_POLL_MS)
        try:
            return r.poll()
        except OSError:
            r.restart()  # an SPI bus error: bring the chip up again from a reset
            return None

    def poll_console(self):
        # The service console shares the REPL UART; a line-reading driver is not wired yet.
        return None

    # ---- services ----

    def open_uart(self, baud, parity=None, stop=1):
        if parity not in _PARITY:
            raise ValueError("parity must be None, 'N', 'E' or 'O' (got %r)" % (parity,))
        p = self.pins
        uart = UART(p["uart_id"], baudrate=baud, bits=8, parity=_PARITY[parity], stop=stop,
                    tx=p["uart_tx"], rx=p["uart_rx"])
        if p.get("rs485_de") is None:
            return asyncio.StreamReader(uart)
        return _Rs485(uart, Pin(p["rs485_de"], Pin.OUT, value=0))

    def start_watch(self, period_ms, fn):
        # One hardware timer per watch (the ESP32 has four); see the header about soft IRQ latency.
        t = Timer(len(self._timers))
        t.init(mode=Timer.PERIODIC, period=int(period_ms), callback=lambda _t: fn())
        self._timers.append(t)

    def wdt_feed(self):
        if self._wdt is None:
            self._wdt = machine.WDT(timeout=_WDT_MS)  # armed by the first feed: boot may take longer
        self._wdt.feed()

    def reset(self):
        machine.reset()

    def reset_cause(self):
        cause = machine.reset_cause()
        if cause == machine.WDT_RESET:
            return "watchdog"
        if cause in (machine.SOFT_RESET, machine.HARD_RESET):
            return "soft"
        return "power"

    def ticks_ms(self):
        return time.ticks_ms()
