# A fake `machine` module for testing hal/esp32.py on the unix port: every constructor and call is recorded in
# `calls` as a tuple, and the objects keep their state so a test can read pin levels, PWM duty, UART settings,
# feed ADC samples and fire timers. Install with sys.modules["machine"] = fake_machine before importing hal.esp32.

calls = []
pins = {}      # pin id -> last Pin built on it
adcs = {}      # pin id -> ADC
pwms = {}      # pin id -> PWM
uarts = {}     # uart id -> UART
timers = {}    # timer id -> Timer
spis = {}      # SPI id -> SPI
listeners = {}  # pin id -> fn(level), called on every level written (a chip watching its CS or reset line)
wdts = []


class ResetCalled(Exception):
    pass


def clear():
    del calls[:]
    for d in (pins, adcs, pwms, uarts, timers, spis, listeners):
        for k in list(d):
            del d[k]
    del wdts[:]


def reset():
    calls.append(("reset",))
    raise ResetCalled()  # machine.reset() never returns; a test sees this instead


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        self.pull = pull
        self.level = 0 if value is None else int(bool(value))
        pins[id] = self
        calls.append(("Pin", id, mode, pull, value))
        if value is not None and id in listeners:
            listeners[id](self.level)

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = int(bool(v))
        calls.append(("Pin.value", self.id, self.level))
        if self.id in listeners:
            listeners[self.id](self.level)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class PWM:
    def __init__(self, pin, freq=None, duty_u16=None):
        self.pin = pin
        self.hz = freq
        self.duty = duty_u16
        pwms[pin.id] = self
        calls.append(("PWM", pin.id, freq, duty_u16))

    def freq(self, hz=None):
        if hz is None:
            return self.hz
        self.hz = hz
        calls.append(("PWM.freq", self.pin.id, hz))

    def duty_u16(self, d=None):
        if d is None:
            return self.duty
        if not 0 <= d <= 65535:
            raise ValueError("duty_u16 out of range")
        self.duty = d
        calls.append(("PWM.duty_u16", self.pin.id, d))

    def deinit(self):
        calls.append(("PWM.deinit", self.pin.id))


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.pin = pin
        self.attenuation = atten
        self.samples = [0]   # read_uv cycles through these (microvolts)
        self.pos = 0
        self.reads = 0
        adcs[pin.id] = self
        calls.append(("ADC", pin.id, atten))

    def feed(self, samples_uv):
        self.samples = list(samples_uv)
        self.pos = 0

    def read_uv(self):
        v = self.samples[self.pos % len(self.samples)]
        self.pos += 1
        self.reads += 1
        return v

    def read_u16(self):
        return min(65535, self.read_uv() * 65535 // 3300000)


class UART:
    def __init__(self, id, baudrate=115200, bits=8, parity=None, stop=1, tx=None, rx=None, **kw):
        self.id = id
        self.settings = {"baudrate": baudrate, "bits": bits, "parity": parity, "stop": stop, "tx": tx, "rx": rx}
        self.settings.update(kw)
        self.written = bytearray()
        self.rx = bytearray()
        uarts[id] = self
        calls.append(("UART", id, baudrate, bits, parity, stop, tx, rx))

    def write(self, buf):
        self.written += buf
        calls.append(("UART.write", self.id, bytes(buf)))
        return len(buf)

    def read(self, n=-1):
        if not self.rx:
            return None
        n = len(self.rx) if n is None or n < 0 else n
        data = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return data

    def any(self):
        return len(self.rx)

    def txdone(self):
        calls.append(("UART.txdone", self.id))
        return True

    def flush(self):
        calls.append(("UART.flush", self.id))


class SPI:
    # Bytes go to `device` (an object with xfer(byte) -> byte, e.g. tests/mpy/fake_mfrc522.Chip), which sees
    # its chip select through `listeners`; with no device the bus reads 0xFF (MISO pulled up, nothing there).
    MSB = 0
    LSB = 1

    def __init__(self, id, baudrate=1000000, polarity=0, phase=0, bits=8, firstbit=0, sck=None, mosi=None,
                 miso=None):
        self.id = id
        self.settings = {"baudrate": baudrate, "polarity": polarity, "phase": phase, "bits": bits,
                         "firstbit": firstbit, "sck": sck and sck.id, "mosi": mosi and mosi.id,
                         "miso": miso and miso.id}
        self.device = None
        self.transfers = 0
        spis[id] = self
        calls.append(("SPI", id, baudrate, polarity, phase))

    def _xfer(self, b):
        return self.device.xfer(b) if self.device else 0xFF

    def write(self, buf):
        self.transfers += 1
        for b in buf:
            self._xfer(b)

    def write_readinto(self, wbuf, rbuf):
        self.transfers += 1
        out = [self._xfer(b) for b in wbuf]
        for i in range(len(out)):
            rbuf[i] = out[i]

    def readinto(self, buf, write=0):
        self.transfers += 1
        for i in range(len(buf)):
            buf[i] = self._xfer(write)

    def read(self, n, write=0):
        buf = bytearray(n)
        self.readinto(buf, write)
        return bytes(buf)


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id, **kw):
        self.id = id
        self.period = None
        self.mode = None
        self.callback = None
        timers[id] = self
        calls.append(("Timer", id))
        if kw:
            self.init(**kw)

    def init(self, mode=PERIODIC, period=-1, callback=None, **kw):
        self.mode = mode
        self.period = period
        self.callback = callback
        calls.append(("Timer.init", self.id, mode, period))

    def fire(self):
        # What the port does every period: the callback gets the timer object.
        self.callback(self)

    def deinit(self):
        calls.append(("Timer.deinit", self.id))


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.feeds = 0
        wdts.append(self)
        calls.append(("WDT", timeout))

    def feed(self):
        self.feeds += 1
        calls.append(("WDT.feed",))
