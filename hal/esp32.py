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
# WiFi: the station interface of network.WLAN. The driver's own reconnects are switched off (reconnects=0) so that
# firmware/wifi.py alone decides when to try again, with its back-off, and wlan.status() keeps the reason of the
# last failure, mapped here to a short text (wifi_reason).
#
# Service console: the USB serial REPL. poll_console() reads what has arrived without blocking (select.poll on
# sys.stdin), echoes it (the REPL's own echo is off while main.py runs) and hands out whole lines; Ctrl-C still
# raises KeyboardInterrupt and so stops the firmware into the REPL, as mpremote expects.
#
# The safety watch (start_watch) runs from machine.Timer. On the ESP32 port its callback is a soft IRQ: it is
# scheduled between bytecodes, so it waits while a long C call runs (a TLS handshake: about 1-2 s on this chip;
# a flash erase). The firmware must not start such calls while the contactor is closed, or must accept that
# latency; the hard guarantee is the relay driver dropping on reset or brown-out.
import sys
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

_CONSOLE_MAX = const(256)         # longest console line kept; more is dropped (a URL fits, a paste does not)
_WIFI_STALE_MS = const(8000)      # see wifi_status()
_STAT_IDLE = const(1000)          # network.STAT_* (MicroPython's esp32 port)
_AP_OPEN = const(0)               # network.AUTH_OPEN, network.AUTH_WPA2_PSK: the access point's security
_AP_WPA2 = const(3)
_STAT_CONNECTING = const(1001)
_STAT_GOT_IP = const(1010)
_WIFI_OFF = ("off", None)
_WIFI_JOINING = ("joining", None)
_WIFI_UP = ("up", None)
# wlan.status() failure codes: ESP-IDF's wifi_err_reason_t, which network.STAT_NO_AP_FOUND (201),
# STAT_WRONG_PASSWORD (202), STAT_BEACON_TIMEOUT (200), STAT_ASSOC_FAIL (203), STAT_HANDSHAKE_TIMEOUT (204) name.
# With WPA2 a wrong passphrase mostly shows as a 4-way handshake that never completes (15, 204), not as 202.
# One string, "|code|text" per reason, searched on a failure: a table of tuples would hold a dozen objects.
_WIFI_REASONS = (
    "|202|wrong password|15|wrong password (key handshake timed out)|204|wrong password (key handshake timed out)"
    "|201|no AP found (SSID not in range)|210|no AP with a supported security mode"
    "|211|no AP with a supported security mode|212|AP signal too weak|200|AP lost (beacon timeout)"
    "|203|the AP refused the association|205|connection failed|2|the AP did not complete authentication"
    "|8|left the network|"
)


def wifi_reason(code):
    # wlan.status() failure code -> a short text for a person.
    i = _WIFI_REASONS.find("|%d|" % code)
    if i < 0:
        return "disconnected (reason %d)" % code
    i = _WIFI_REASONS.find("|", i + 1) + 1
    return _WIFI_REASONS[i:_WIFI_REASONS.find("|", i)]

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
    wifi_required = True  # the Central System is reached only through the WiFi station

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
        self._con_poll = None  # select.poll on sys.stdin, made on the first poll_console()
        self._con_in = None
        self._con_out = sys.stdout
        self._con_buf = bytearray()
        self._con_cr = False   # the last line ended with CR: a LF right after it is the same line end
        self._sta = None       # network.WLAN(STA_IF), made on the first wifi_join()
        self._ap = None        # network.WLAN(AP_IF) while the setup's access point is open
        self._wifi_err = None  # an OSError of the last join, reported as its failure
        self._joining = False  # a join was asked for and not left since
        self._join_ms = time.ticks_ms()

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

    def poll_console(self, mask=False):
        if self._con_poll is None:
            import select
            self._con_in = getattr(sys.stdin, "buffer", sys.stdin)  # bytes: a UTF-8 character may come split
            self._con_poll = select.poll()
            self._con_poll.register(sys.stdin, select.POLLIN)
        buf = self._con_buf
        while self._con_ready():
            c = self._con_in.read(1)
            if not c:
                break
            b = c[0] if isinstance(c, (bytes, bytearray)) else ord(c)
            if b == 10 and self._con_cr:  # the LF of a CR LF pair
                self._con_cr = False
                continue
            self._con_cr = b == 13
            if b == 10 or b == 13:
                self._con_out.write("\r\n")
                line = bytes(buf).decode("utf-8", "ignore") if buf else ""
                buf[:] = b""
                return line
            if b == 8 or b == 127:  # backspace / delete: erase one byte (an ASCII character) on screen too
                if buf:
                    buf[-1:] = b""
                    self._con_out.write("\b \b")
            elif b >= 32 and len(buf) < _CONSOLE_MAX:
                buf.append(b)
                if b < 0x80 or b >= 0xC0:  # one echo per character, not per UTF-8 continuation byte
                    self._con_out.write("*" if mask else (chr(b) if b < 0x80 else "?"))
        return None

    def _con_ready(self):
        # ipoll reuses its result tuple: asked ten times a second, poll()'s fresh list would be steady garbage
        for _ in self._con_poll.ipoll(0):
            return True
        return False

    # ---- WiFi station ----

    def _wlan(self):
        if self._sta is None:
            import network
            self._sta = network.WLAN(network.STA_IF)
        return self._sta

    def wifi_join(self, ssid, password):
        self._wifi_err = None
        self._joining = True
        try:
            w = self._wlan()
            w.active(True)
            try:
                w.config(reconnects=0)  # firmware/wifi.py retries, with back-off; see the header
            except (ValueError, TypeError):
                pass  # an older firmware without the option: its driver retries too, which does no harm
            if w.isconnected():
                try:
                    if w.config("ssid") == ssid:
                        return  # joined already (a soft reset keeps the link, or the setup just joined)
                except (ValueError, OSError):
                    pass
                w.disconnect()
            w.connect(ssid, password)
        except OSError as e:  # "Wifi Internal Error", "Wifi Invalid Argument", ...
            self._wifi_err = "radio error: %s" % (e,)
        self._join_ms = time.ticks_ms()

    def wifi_status(self):
        if self._wifi_err is not None:
            return "failed", self._wifi_err
        w = self._sta
        if w is None or not w.active():
            return _WIFI_OFF
        st = w.status()
        if st == _STAT_GOT_IP:
            return _WIFI_UP
        if not self._joining:
            return _WIFI_OFF
        if st == _STAT_CONNECTING:
            return _WIFI_JOINING
        # Since MicroPython 1.23 status() names a wrong password or a missing AP as soon as an attempt has met it,
        # and keeps naming it, or STAT_IDLE after a disconnect(), after connect() until the new attempt ends:
        # early in a join what it says is the previous attempt's.
        if time.ticks_diff(time.ticks_ms(), self._join_ms) < _WIFI_STALE_MS:
            return _WIFI_JOINING
        if st == _STAT_IDLE:
            return "failed", "the radio stopped joining"
        return "failed", wifi_reason(st)

    def wifi_ip(self):
        w = self._sta
        if w is None or not w.isconnected():
            return None
        return w.ifconfig()[0]

    def wifi_leave(self):
        self._wifi_err = None
        self._joining = False
        w = self._sta
        if w is not None:
            try:
                w.disconnect()
            except OSError:
                pass  # not started or not joined: nothing to leave

    # ---- WiFi access point (first-boot setup over the web) ----

    def ap_start(self, ssid, password):
        import network
        ap = self._ap = network.WLAN(network.AP_IF)
        ap.active(True)
        if ssid is None:
            mac = ap.config("mac")
            ssid = "EVSE-%02X%02X%02X" % (mac[3], mac[4], mac[5])
        if password:
            ap.config(ssid=ssid, key=password, security=_AP_WPA2)
        else:
            ap.config(ssid=ssid, security=_AP_OPEN)
        return ssid

    def ap_ip(self):
        ap = self._ap
        if ap is None or not ap.active():
            return None
        return ap.ifconfig()[0]

    def ap_stop(self):
        ap = self._ap
        if ap is not None:
            ap.active(False)
            self._ap = None

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
