# The virtual board: hal.board's interface on the MicroPython unix port, wired to tools/sim.py.
#
# Command line (read from sys.argv): --board HOST:PORT --state DIR --uart PATH [--wifi-ap SSID:PASSWORD] [--soft-ap]
#
# --soft-ap: the board can open the first-boot setup's access point (ap_start), which loopback plays (ap_ip
# 127.0.0.1); without it ap_start raises OSError, as on a board without one.
#
# WiFi: the host is always on the network, so the board needs no WiFi (wifi_required False) and a simulated
# radio stands in for the ESP32's. A join takes _WIFI_JOIN_MS and then succeeds, with the address 127.0.0.1;
# with --wifi-ap (tools/sim.py --wifi-ap) that is the only access point in range: another SSID fails with
# "no AP found", another password with "wrong password", as the ESP32 reports them.
#
# Link to the sim: one TCP connection, JSON objects one per line ("\n"), both ways.
#   sim -> MCU (inputs, pushed whenever one changes; the first line arrives right after connect and is complete):
#     {"cp": [hi_mv, lo_mv], "pp": ohms|null, "lock_fb": bool, "contactor_fb": bool, "rcd": bool}
#       optional in that line: "limit_da": int|null   the load-management input (a local current limit)
#     {"tag": "04A1B2C3"}                     an RFID card was presented
#     {"console": "line"}                     a line typed on the service console ("" = Enter alone)
#     {"block_ms": N}                         test hook: take_block_ms() hands N to the firmware once
#   MCU -> sim (outputs, sent only when they change; each with "t": the ticks_ms of the command, so the sim
#   stamps the event when the MCU drove the output, not when its own loop got round to the line):
#     {"pwm": permille}  {"contactor": bool}  {"lock": bool}  {"led": "green"|"blue"|"red", "on": bool}
#     {"reset": true}                         sent by reset() just before the process exits with code 3
#     {"blocking": N}                         take_block_ms() handed out N (the sim timestamps it)
#     {"wdt": timeout_ms}                     wdt_feed(): a watchdog feed; the first one arms the sim's watchdog
# A reader thread stores the inputs in plain attributes, so reads are instant and never wait for the asyncio loop
# (DESIGN.md §2). Outputs are sent by whichever thread calls them, under one lock. If the link drops, the board
# has lost power: the process kills itself, as the MCU would die with it.
import sys
import os
import time
import json
import socket
import _thread
from micropython import const

_READY_WAIT_MS = const(5000)
_MAX_TAGS = const(8)
_RX_CHUNK = const(512)
_EXIT_REBOOT = const(3)
_WDT_LINE = b'{"wdt":8000}\n'  # the timeout hal/esp32.py gives machine.WDT
_WIFI_JOIN_MS = const(300)  # scan, association and DHCP of a real join take a few seconds; kept short here
_WIFI_OFF = ("off", None)
_WIFI_JOINING = ("joining", None)
_WIFI_UP = ("up", None)

# name -> (off, on) line heads, built once; _send ends each with the command's time (',"t":MS}\n')
_LEDS = {}
for _n in ("green", "blue", "red"):
    _LEDS[_n] = (b'{"led":"%s","on":false' % _n, b'{"led":"%s","on":true' % _n)
del _n
_CONTACTOR = (b'{"contactor":false', b'{"contactor":true')
_LOCK = (b'{"lock":false', b'{"lock":true')
# hal.board parity spellings -> hal.unix_uart's
_PARITY = {None: None, "N": None, "E": "E", "O": "O", 0: "E", 1: "O"}


def _arg(argv, name):
    try:
        return argv[argv.index(name) + 1]
    except (ValueError, IndexError):
        return None


class Board:
    wifi_required = False  # the host's network is always there

    def __init__(self, argv=None):
        argv = sys.argv if argv is None else argv
        addr = _arg(argv, "--board")
        if not addr or ":" not in addr:
            raise ValueError("hal.unix needs --board HOST:PORT (start the firmware through tools/sim.py)")
        self.state_dir = _arg(argv, "--state") or "."
        self._uart_path = _arg(argv, "--uart")
        self._reset_cause = _arg(argv, "--reset-cause") or "power"
        ap = _arg(argv, "--wifi-ap")  # SSID:PASSWORD; no colon = an open network
        if ap is not None and ":" not in ap:
            ap += ":"
        self._wifi_ap = None if ap is None else ap.split(":", 1)  # [ssid, password]
        self._wifi = None  # [ssid, password, ticks_ms of the join] while joining or joined
        # --soft-ap: the board may open the setup's access point (firmware/websetup.py), played by loopback.
        # Off by default, so parallel simulations of fresh boards do not all open a setup page.
        self._soft_ap = "--soft-ap" in argv
        self._ap = None
        # Every attribute the reader thread writes exists before it starts: without a GIL, adding a key to the
        # instance dict while the main thread reads it could resize the dict under the reader's feet.
        self._cp = (0, 0)
        self._pp = None
        self._lock_fb = False
        self._contactor_fb = False
        self._rcd = False
        self._limit_da = None
        self._block_ms = 0
        self._ready = False
        self._tags = []
        self._console = []  # service-console lines (the maintenance UART of a real board)
        self._rx = _thread.allocate_lock()
        self._tx = _thread.allocate_lock()
        # last value sent per output; every key exists up front so no thread ever resizes this dict
        self._out = {"pwm": None, "contactor": None, "lock": None, "green": None, "blue": None, "red": None}
        host, port = addr.rsplit(":", 1)
        self._sock = socket.socket()
        try:
            self._sock.connect(socket.getaddrinfo(host, int(port))[0][-1])
        except OSError as e:
            raise OSError("cannot reach the virtual board at %s (%s): is tools/sim.py running?" % (addr, e))
        _thread.start_new_thread(self._reader, ())
        self._wait_ready()

    def _wait_ready(self):
        start = time.ticks_ms()
        while not self._ready:
            if time.ticks_diff(time.ticks_ms(), start) > _READY_WAIT_MS:
                raise OSError("virtual board sent no inputs within %d ms" % _READY_WAIT_MS)
            time.sleep_ms(2)

    # ---- inputs (reader thread) ----

    def _reader(self):
        buf = b""
        while True:
            try:
                chunk = self._sock.recv(_RX_CHUNK)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            i = buf.find(b"\n")
            while i >= 0:
                if i:
                    self._apply(buf[:i])
                buf = buf[i + 1:]
                i = buf.find(b"\n")
        self._link_lost()

    def _apply(self, line):
        try:
            msg = json.loads(line)
        except ValueError:
            print("[hal] bad line from the board:", line)
            return
        if "cp" in msg:
            cp = msg["cp"]
            self._cp = (int(cp[0]), int(cp[1]))  # one tuple, so a reader never sees hi and lo from two updates
            self._ready = True
        if "pp" in msg:
            self._pp = msg["pp"]
        if "lock_fb" in msg:
            self._lock_fb = bool(msg["lock_fb"])
        if "contactor_fb" in msg:
            self._contactor_fb = bool(msg["contactor_fb"])
        if "rcd" in msg:
            self._rcd = bool(msg["rcd"])
        if "limit_da" in msg:
            v = msg["limit_da"]
            self._limit_da = None if v is None else int(v)
        if "block_ms" in msg:
            self._block_ms = int(msg["block_ms"])
        if "console" in msg:
            with self._rx:
                if len(self._console) < _MAX_TAGS:
                    self._console.append(str(msg["console"]))
        if "tag" in msg:
            with self._rx:
                if len(self._tags) >= _MAX_TAGS:
                    self._tags.pop(0)  # a reader that nobody polls keeps the newest cards
                self._tags.append(str(msg["tag"]))

    def _link_lost(self):
        # No board, no MCU: end the whole process from this thread (sys.exit would only end the thread).
        print("[hal] virtual board link lost: powering off")
        os.system("kill -9 $PPID")

    def read_cp(self):
        return self._cp

    def read_pp_ohms(self):
        return self._pp

    def lock_feedback(self):
        return self._lock_fb

    def contactor_feedback(self):
        return self._contactor_fb

    def rcd_tripped(self):
        return self._rcd

    def local_limit_da(self):
        return self._limit_da

    def take_block_ms(self):
        n = self._block_ms
        if n:
            self._block_ms = 0
            with self._tx:
                try:
                    self._sock.send(b'{"blocking":%d}\n' % n)
                except OSError:
                    pass
        return n

    def poll_tag(self):
        with self._rx:
            return self._tags.pop(0) if self._tags else None

    def reset_cause(self):
        """Why the MCU (re)started: "power" (power-on), "watchdog" (a crash restart) or "soft" (reset())."""
        return self._reset_cause

    def poll_console(self, mask=False):
        # Lines come whole from the sim (its "console" command): nothing to echo or mask here.
        with self._rx:
            return self._console.pop(0) if self._console else None

    # ---- WiFi (simulated radio, see the header) ----

    def wifi_join(self, ssid, password):
        w = self._wifi
        if w is not None and w[0] == ssid and self.wifi_status() is _WIFI_UP:
            return
        self._wifi = [ssid, password, time.ticks_ms()]

    def wifi_status(self):
        w = self._wifi
        if w is None:
            return _WIFI_OFF
        if time.ticks_diff(time.ticks_ms(), w[2]) < _WIFI_JOIN_MS:
            return _WIFI_JOINING
        ap = self._wifi_ap
        if ap is not None:
            if w[0] != ap[0]:
                return "failed", "no AP found"
            if w[1] != ap[1]:
                return "failed", "wrong password"
        return _WIFI_UP

    def wifi_ip(self):
        return "127.0.0.1" if self.wifi_status() is _WIFI_UP else None

    def wifi_leave(self):
        self._wifi = None

    # ---- WiFi access point (simulated: the host's loopback plays it, only with --soft-ap) ----

    def ap_start(self, ssid, password):
        if not self._soft_ap:
            raise OSError("the virtual board offers no access point without --soft-ap")
        self._ap = ssid or "EVSE-51D000"
        return self._ap

    def ap_ip(self):
        return "127.0.0.1" if self._ap else None

    def ap_stop(self):
        self._ap = None

    # ---- outputs (any thread) ----

    def _send(self, key, value, head):
        # Each output line carries the time of the command ("t", ticks_ms: CLOCK_MONOTONIC, as the sim's clock):
        # a GPIO acts when it is written, and the sim's own loop, busy under load, may read the line much later.
        with self._tx:
            if self._out[key] == value:
                return  # the watch may repeat a command every tick; the wire only carries changes
            self._out[key] = value
            mv = memoryview(b'%s,"t":%d}\n' % (head, time.ticks_ms()))
            try:
                while mv:
                    mv = mv[self._sock.send(mv):]
            except OSError:
                pass  # the reader thread sees the closed link and ends the process

    def set_pwm(self, permille):
        permille = int(permille)
        if not 0 <= permille <= 1000:
            raise ValueError("pwm permille out of 0..1000: %d" % permille)
        if self._out["pwm"] == permille:
            return  # skip the formatting too; _send re-checks under the lock
        self._send("pwm", permille, b'{"pwm":%d' % permille)

    def set_contactor(self, on):
        on = bool(on)
        self._send("contactor", on, _CONTACTOR[on])

    def set_lock(self, locked):
        locked = bool(locked)
        self._send("lock", locked, _LOCK[locked])

    def set_led(self, name, on):
        lines = _LEDS.get(name)
        if lines is None:
            raise ValueError("unknown LED %r (green, blue, red)" % (name,))
        on = bool(on)
        self._send(name, on, lines[on])

    # ---- services ----

    def open_uart(self, baud, parity=None, stop=1):
        if not self._uart_path:
            raise ValueError("hal.unix needs --uart PATH for the meter bus")
        if parity not in _PARITY:
            raise ValueError("parity must be None, 'N', 'E' or 'O' (got %r)" % (parity,))
        import hal.unix_uart
        return hal.unix_uart.open_tty(self._uart_path, baud, _PARITY[parity], stop)

    def start_watch(self, period_ms, fn):
        _thread.start_new_thread(self._watch, (int(period_ms), fn))

    def _watch(self, period_ms, fn):
        due = time.ticks_ms()
        while True:
            try:
                fn()
            except Exception as e:  # the safety watch must outlive one bad tick
                sys.print_exception(e)
            due = time.ticks_add(due, period_ms)
            wait = time.ticks_diff(due, time.ticks_ms())
            if wait > 0:
                time.sleep_ms(wait)
            else:
                due = time.ticks_ms()  # fell behind: skip the missed ticks instead of bursting

    def wdt_feed(self):
        # The watchdog is the sim's (it is hardware outside the MCU): each feed is a line; the first arms it.
        with self._tx:
            try:
                self._sock.send(_WDT_LINE)
            except OSError:
                pass

    def reset(self):
        # Tell the sim first: if a non-main thread calls this, sys.exit only ends that thread, and the sim's
        # SIGKILL completes the reboot.
        with self._tx:
            try:
                self._sock.send(b'{"reset":true}\n')
            except OSError:
                pass
        sys.exit(_EXIT_REBOOT)

    def ticks_ms(self):
        return time.ticks_ms()
