"""The virtual board (DESIGN.md §6): plays the PCB, the EV, the cable and the meter, and runs the firmware in the
MicroPython unix port as its MCU.

    .venv/bin/python tools/sim.py --csms URL --id ID --state DIR --control PORT
            [--password PW] [--cafile FILE] [--heap SIZE] [--meter MODEL] [--variant socket|cable]
            [--romfs | --files | --flash-code] [--wifi-ap SSID:PASSWORD] [--set NAME=VALUE ...]
    .venv/bin/python tools/sim.py --no-provision --state DIR --control PORT [...]

Writes DIR/provision.json (not with --no-provision: a board fresh from the factory, which starts the first-boot
setup on its console, firmware/provision.py, answered with the "console" command; --csms and --id are then optional
and unused), starts the virtual Modbus meter (tools/virtual_meter.py) on a pty, a board link server on an ephemeral
127.0.0.1 port and the MCU:
    .venv/bin/micropython -X heapsize=SIZE main.py --board 127.0.0.1:PORT --state DIR --uart PTY
(plus --wifi-ap SSID:PASSWORD when given: the only WiFi access point the board's simulated radio finds, so a
wrong SSID or password fails as on an ESP32; without it any network joins)
(env SIM_MCU_SCRIPT replaces main.py; for tests of the sim). By default (--romfs) the firmware runs from a ROMFS
image of the build (tools/romboot.py), as it is deployed on an ESP32 (README.md): the bytecode stays out of the
heap, and the heap is SIZE plus the image, which a board keeps in flash. --files imports the .mpy files instead,
with all of the code in the heap. --flash-code boots from DIR itself as a board boots from its flash: DIR/boot.py
(slotboot picks DIR/slots/a or b), then DIR/main.py, with the .mpy files `make deploy` (tools/deploy.py) installed
there, through tools/flashboot.py; nothing is built, and DIR/provision.json is left as deployed unless --csms is
given (--csms and --id are optional then; --meter and --variant default to the flash's MeterModel and Variant).
--set NAME=VALUE adds a device setting to provision.json (repeatable): the web page (WebEnabled=true, WebPort,
WebBind, WebPassword) and MQTT (MqttUrl, MqttUser, MqttPassword, ...) are switched on this way (README).
MCU output is echoed as "[mcu] ...". Exit code 3 is a
reboot request (restart at once); any other exit restarts it after 1 s, as a watchdog would. Prints
"SIM READY control=127.0.0.1:PORT" once the control socket accepts; SIGTERM/SIGINT stop everything, exit 0.

Control socket (127.0.0.1:PORT, one JSON object per line, one reply line each; {"ok":false,"error":...} on error):
    {"cmd":"status"}  -> pilot (A-F seen by the board), duty (%), offered_a (what the EV decodes from the duty,
                         0 without PWM), contactor (contacts closed), locked (lock position), energy_wh, power_w,
                         powered (power switch on); extras: t (board ms), cp_mv [hi, lo], pp_ohms, plugged, ev,
                         max_a, phases, current_a, pwm (permille, null when unpowered), contactor_cmd, lock_cmd,
                         leds, faults (active kinds), mcu_pid, variant, meter, meter_shift_wh (see "meter"),
                         wdt_ms (the watchdog timeout once the firmware armed it, else null), wdt_resets
    {"cmd":"plug","cable_a":13|20|32|63[,"pp_ohms":N|null]}   socket: cable in, EV connected (state B);
                         pp_ohms forces an out-of-band coding. cable: the tethered 32 A cable goes into the car.
    {"cmd":"unplug"}
    {"cmd":"ev"[,"state":"A"|"B"|"C"|"D"][,"max_a":16][,"phases":1|3][,"ignore_pwm":false|true]}
                         ignore_pwm: a misbehaving EV that draws max_a whatever the duty says (overcurrent tests)
    {"cmd":"tag","id":"ABC123"}                             -> delivered: false when no MCU is listening
    {"cmd":"console","line":"datatransfer VENDOR [MSGID [DATA]]"} a line typed on the service console; also
                         the answers to the first-boot setup's questions ("" = Enter alone: takes a default)
    {"cmd":"fault","kind":"lock"|"meter"|"rcd"|"weld"|"diode"|"cp_short","on":true}
    {"cmd":"power","on":false|true}                         off = SIGKILL the MCU (power cut), on = boot it again
    {"cmd":"limit","a":N|null}  the board's load-management input (a local current limit in A, 0.1 A steps;
                         null = none), read by the firmware as board.local_limit_da()
    {"cmd":"mcu","block_ms":N}  test hook: the firmware's asyncio loop stalls N ms on purpose (it reads
                         board.take_block_ms()); -> delivered. The MCU's "blocking" ack is the event "block"
    {"cmd":"meter","add_wh":N}  shifts the meter's energy register by N Wh (negative allowed) without any energy
                         flowing: a glitch, a swapped or reset meter (plausibility tests)
    {"cmd":"meter","energy_wh":N}  sets the energy register to N Wh (N >= 0)
                         -> energy_wh (the register now), meter_shift_wh (all shifts so far: the energy that
                         really flowed is energy_wh - meter_shift_wh; status reports it too)
    {"cmd":"events","since":N} -> {"events":[{"seq","t","kind",...}],"next":M,"now":T}: board events with board
                         time in monotonic ms (kinds: pilot, pwm, contactor, lock, lock_fb, led, reset, mcu, power,
                         plug, unplug, ev, tag, fault, limit, block, meter, wdt); pass "next" as "since" to read
                         on.

Board link (TCP, JSON lines; the MCU side is hal/unix.py, whose header is the reference):
    sim -> MCU: {"cp":[hi_mv,lo_mv],"pp":ohms|null,"lock_fb":b,"contactor_fb":b,"rcd":b,"limit_da":n|null} on
                connect and on every change; {"tag":"UID"}; {"console":"line"}; {"block_ms":N}
    MCU -> sim: {"pwm":permille} {"contactor":b} {"lock":b} {"led":name,"on":b} (each with "t": the MCU's ticks_ms
                of the command; its event is stamped then, with "rx_t" when the line was read) {"reset":true}
                {"blocking":N} {"wdt":timeout_ms} (a watchdog feed; the first one arms it)

The hardware watchdog: once the firmware has fed it, an MCU that goes timeout_ms without a feed is killed and
started again at once with reset cause "watchdog" (event "wdt", state "armed" / "reset").

Physical model: CP high level A 12 V / B 9 V / C 6 V / D 3 V (IEC 61851-1 A.2, digest 4.1); low level -12 V while
PWM runs (diode fault with an EV connected: 0 V); no PWM: both plateaus are the steady level; steady -12 V output
(pwm 0): -12 V; cp_short or board unpowered: 0 V. The CP generator idles at +12 V while the MCU boots.
PP: 13 A 1500, 20 A 680, 32 A 220, 63 A 100 ohm, unplugged open. The EV draws min(offered_a, max_a) per phase
while the contacts are closed, it is in C/D and PWM is on (with ignore_pwm: max_a whatever the PWM says); 230 V
per phase; the meter advances every 100 ms.
"""

import argparse
import asyncio
import collections
import json
import os
import re
import signal
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = str(ROOT / "build" / "unix")
sys.path.insert(0, str(Path(__file__).resolve().parent))

PILOT_MV = {"A": 12000, "B": 9000, "C": 6000, "D": 3000}   # digest 4.1 plateau values
PP_OHMS = {13: 1500, 20: 680, 32: 220, 63: 100}              # IEC 62196 / digest 4.5
FAULTS = ("lock", "meter", "rcd", "weld", "diode", "cp_short")
METERS = ("SDM630", "SDM120", "SDM72", "ABB_B23")
MAINS_V = 230.0
TICK_S = 0.1
LOCK_TRAVEL_S = 0.1
CRASH_RESTART_S = 1.0
EXIT_REBOOT = 3
TETHERED_CABLE_A = 32
MAX_EVENTS = 20000
TICKS_PERIOD = 1 << 30  # MicroPython's ticks_ms wraps here


class CommandError(Exception):
    pass


def ev_offered_a(permille):
    """The current an EV decodes from the duty (digest 4.3, EV-side table); 0 when it may not charge."""
    if permille is None or permille <= 0 or permille >= 1000:
        return 0.0
    d = permille / 10
    if d < 8:            # < 3 % no charging, 3-7 % digital communication only, 7-8 % no charging
        return 0.0
    if d < 10:
        return 6.0
    if d <= 85:
        return round(d * 0.6, 1)
    if d <= 96:
        return round((d - 64) * 2.5, 1)
    if d <= 97:
        return 80.0
    return 0.0


def pilot_letter(hi_mv):
    """The state a board classifies from the high plateau (midpoints between the nominal levels)."""
    for letter, floor in (("A", 10500), ("B", 7500), ("C", 4500), ("D", 1500), ("E", -1500)):
        if hi_mv >= floor:
            return letter
    return "F"


class Rig:
    """Everything physical outside the MCU: CP/PP circuit, EV, lock, contactor."""

    def __init__(self, variant, phases):
        self.variant = variant
        self.plugged = False
        self.cable_a = TETHERED_CABLE_A
        self.pp_override = False
        self.pp_forced = None
        self.ev_state = "B"
        self.max_a = 32.0
        self.ignore_pwm = False
        self.limit_da = None        # load-management input
        self.phases = phases
        self.faults = {k: False for k in FAULTS}
        self.powered = False
        self.pwm = None             # permille while powered; None = generator unpowered
        self.contactor_cmd = False
        self.contacts = False
        self.lock_cmd = False
        self.lock_pos = False
        self.leds = {"green": False, "blue": False, "red": False}

    def ev_connected(self):
        return self.plugged and self.ev_state != "A"

    def cp(self):
        if self.pwm is None or self.faults["cp_short"]:
            return 0, 0
        if self.pwm == 0:
            return -12000, -12000
        level = PILOT_MV[self.ev_state] if self.plugged else PILOT_MV["A"]
        if self.pwm >= 1000:
            return level, level
        if self.faults["diode"] and self.ev_connected():
            return level, 0
        return level, -12000

    def pp(self):
        if self.variant == "cable":
            return PP_OHMS[TETHERED_CABLE_A]
        if not self.plugged:
            return None
        return self.pp_forced if self.pp_override else PP_OHMS[self.cable_a]

    def settle_contacts(self):
        want = self.contactor_cmd and self.powered
        if not (self.faults["weld"] and self.contacts):   # welded contacts stay closed once closed
            self.contacts = want

    def inputs(self):
        return {"cp": list(self.cp()), "pp": self.pp(), "lock_fb": self.lock_pos,
                "contactor_fb": self.contacts, "rcd": self.faults["rcd"], "limit_da": self.limit_da}

    def offered_a(self):
        return 0.0 if self.faults["cp_short"] else ev_offered_a(self.pwm)

    def ev_current_a(self):
        if not (self.contacts and self.plugged and self.ev_state in "CD"):
            return 0.0
        if self.ignore_pwm:
            return self.max_a
        return min(self.offered_a(), self.max_a)

    def phase_currents(self):
        amps = self.ev_current_a()
        return [amps if i < self.phases else 0.0 for i in range(3)]

    def mcu_outputs_reset(self):
        """GPIOs after a reset or power loss: relay coil off, generator idle, LEDs off; the lock stays put."""
        self.pwm = 1000 if self.powered else None
        self.contactor_cmd = False
        for name in self.leds:
            self.leds[name] = False
        self.settle_contacts()


class NullMeter:
    """Stands in when tools/virtual_meter.py is missing: a silent pty and local energy integration."""

    def __init__(self, model, unit=1):
        self.energy_wh = 0.0
        self.power_w = 0.0
        self._fds = ()

    async def start(self):
        self._fds = os.openpty()
        return os.ttyname(self._fds[1])

    async def stop(self):
        for fd in self._fds:
            os.close(fd)
        self._fds = ()

    def set_load(self, voltage_v, current_a):
        self.power_w = sum(v * i for v, i in zip(voltage_v, current_a))

    def advance(self, dt_s):
        self.energy_wh += self.power_w * dt_s / 3600.0

    def set_fault(self, on):
        pass

    def shift_energy(self, wh):
        return self.set_energy(self.energy_wh + wh)

    def set_energy(self, wh):
        if wh < 0:
            raise ValueError("the energy register cannot go below 0 Wh (asked %s)" % wh)
        self.energy_wh = float(wh)
        return self.energy_wh


def make_meter(model):
    try:
        import virtual_meter
    except ImportError as e:
        print("[sim] tools/virtual_meter.py not usable (%s): the meter bus stays silent" % e, flush=True)
        return NullMeter(model)
    return virtual_meter.VirtualMeter(model, unit=1)


def die_with_parent():
    """Runs in the MCU child before exec: if the sim dies without cleaning up, the kernel kills the MCU too."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def heap_bytes(size):
    """-X heapsize's size in bytes for this build: N, NK or NM; a "w" (NwK) scales by the word size against a
    32-bit board, as MicroPython does."""
    m = re.fullmatch(r"(\d+)(w?)([KkMm]?)", size)
    if not m:
        raise ValueError("bad heap size %r" % size)
    n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(3).lower()]
    return n * (struct.calcsize("P") // 4) if m.group(2) else n


def micropython_binary():
    local = Path(sys.executable).with_name("micropython")
    return str(local if local.exists() else ROOT / ".venv" / "bin" / "micropython")


def write_provision(args):
    prov = {"CentralSystemUrl": args.csms, "ChargeBoxId": args.id}
    if args.password is not None:
        prov["Password"] = args.password
    if args.cafile:
        prov["CentralSystemCa"] = Path(args.cafile).read_text()
    prov["MeterModel"] = args.meter
    prov["Variant"] = args.variant
    for item in getattr(args, "settings", ()):
        name, _, value = item.partition("=")
        prov[name] = value  # text: the firmware parses it as it parses every provision.json value
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    tmp = state / "provision.json.tmp"
    tmp.write_text(json.dumps(prov, indent=1) + "\n")
    os.replace(tmp, state / "provision.json")


def say(text):
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


class Sim:
    def __init__(self, args):
        self.args = args
        self.rig = Rig(args.variant, 1 if args.meter == "SDM120" else 3)
        self.meter = None
        self.t0 = time.monotonic()
        self.events = collections.deque(maxlen=MAX_EVENTS)
        self.seq = 0
        self.board_port = None
        self.board_w = None
        self.pushed = None
        self.last_cp = None
        self.proc = None
        self.power_on = True
        self.power_evt = asyncio.Event()
        self.romfs_image = BUILD_DIR + ".romfs" if getattr(args, "romfs", False) else None
        self.meter_shift_wh = 0.0  # register shifts by the "meter" command: delivered = energy_wh - shift
        self.reset_cause = "power"  # told to the MCU as machine.reset_cause() would: power | watchdog | soft
        self.reset_requested = False
        self.wdt_ms = None          # the hardware watchdog's timeout once the firmware armed it
        self.wdt_fed = 0.0
        self.wdt_fired = False
        self.wdt_resets = 0
        self.stopping = False
        self.lock_gen = 0
        self.servers = []
        self.clients = set()
        self.tasks = []

    # ---- bookkeeping ----

    def now_ms(self):
        return int((time.monotonic() - self.t0) * 1000)

    def event(self, kind, at=None, **fields):
        now = self.now_ms()
        ev = {"seq": self.seq, "t": now if at is None else at, "kind": kind}
        if at is not None:
            ev["rx_t"] = now  # when this loop read the MCU's line
        ev.update(fields)
        self.events.append(ev)
        self.seq += 1

    def update(self):
        """Re-derive everything after any change: contacts, pilot events, inputs pushed to the MCU, meter load."""
        rig = self.rig
        rig.settle_contacts()
        cp = rig.cp()
        if cp != self.last_cp:
            self.last_cp = cp
            self.event("pilot", pilot=pilot_letter(cp[0]), hi_mv=cp[0], lo_mv=cp[1])
        inputs = rig.inputs()
        if self.board_w is not None and inputs != self.pushed:
            self.pushed = inputs
            self.board_w.write((json.dumps(inputs) + "\n").encode())
        if self.meter is not None:
            self.meter.set_load([MAINS_V] * 3, rig.phase_currents())

    # ---- lifecycle ----

    async def start(self):
        if self.args.provision and self.args.csms is not None:  # --flash-code without --csms: deployed settings
            write_provision(self.args)
        else:
            Path(self.args.state).mkdir(parents=True, exist_ok=True)
        self.meter = make_meter(self.args.meter)
        self.uart_path = await self.meter.start()
        board = await asyncio.start_server(self.on_board, "127.0.0.1", 0)
        self.board_port = board.sockets[0].getsockname()[1]
        self.servers.append(board)
        control = await asyncio.start_server(self.on_control, "127.0.0.1", self.args.control)
        self.servers.append(control)
        self.control_port = control.sockets[0].getsockname()[1]
        self.update()
        self.tasks.append(asyncio.create_task(self.physics()))
        self.tasks.append(asyncio.create_task(self.supervise()))
        self.tasks.append(asyncio.create_task(self.watchdog()))
        say("SIM READY control=127.0.0.1:%d" % self.control_port)

    async def stop(self):
        self.stopping = True
        self.power_evt.set()
        await self.kill_mcu()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for server in self.servers:
            server.close()
        for writer in list(self.clients):
            writer.close()
        if self.meter is not None:
            await self.meter.stop()

    async def physics(self):
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self.meter.set_load([MAINS_V] * 3, self.rig.phase_currents())
            self.meter.advance(now - last)
            last = now

    # ---- the MCU process ----

    def mcu_command(self):
        # The firmware runs precompiled, as flashed on a board: compiling it on a 110 KB heap would not fit.
        script = os.environ.get("SIM_MCU_SCRIPT") or os.path.join(BUILD_DIR, "main.py")
        heap = self.args.heap
        if self.args.flash_code:
            script = [str(ROOT / "tools" / "flashboot.py"), str(self.args.state)]
        elif self.romfs_image:
            heap = str(heap_bytes(heap) + os.path.getsize(self.romfs_image))
            script = [str(ROOT / "tools" / "romboot.py"), self.romfs_image]
            if os.environ.get("SIM_MCU_SCRIPT"):
                script.append(os.environ["SIM_MCU_SCRIPT"])  # run after the mount, in place of /rom/main.py
        else:
            script = [script]
        wifi = ["--wifi-ap", self.args.wifi_ap] if self.args.wifi_ap is not None else []
        return [micropython_binary(), "-X", "heapsize=" + heap, *script,
                "--board", "127.0.0.1:%d" % self.board_port, "--state", str(self.args.state),
                "--uart", self.uart_path, "--reset-cause", self.reset_cause, *wifi]

    async def spawn_mcu(self):
        # Own session: a Ctrl-C meant for the sim must not reach the MCU (the sim decides when it dies).
        path = ROOT if os.environ.get("SIM_MCU_SCRIPT") else BUILD_DIR
        cwd = ROOT
        if self.args.flash_code:
            path, cwd = "", self.args.state  # tools/flashboot.py sets a board's sys.path in the flash directory
        env = dict(os.environ, MICROPYPATH=".frozen:%s" % path, PYTHONUNBUFFERED="1")
        return await asyncio.create_subprocess_exec(
            *self.mcu_command(), cwd=str(cwd), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, limit=1 << 20,
            preexec_fn=die_with_parent, start_new_session=True)

    async def supervise(self):
        while not self.stopping:
            if not self.power_on:
                self.power_evt.clear()
                await self.power_evt.wait()
                continue
            rc = await self.run_mcu()
            if self.stopping:
                break
            if not self.power_on:
                continue
            if self.wdt_fired:
                say("[sim] MCU reset by the watchdog")
                self.reset_cause = "watchdog"
                continue
            if rc == EXIT_REBOOT or self.reset_requested:
                say("[sim] MCU reboot")
                self.reset_cause = "soft"
                continue
            say("[sim] MCU exited with %d" % rc)
            self.reset_cause = "watchdog"  # what restarts a crashed board
            await asyncio.sleep(CRASH_RESTART_S)

    async def run_mcu(self):
        self.reset_requested = False
        self.wdt_ms = None  # a reset disarms the watchdog until the firmware feeds it again
        self.wdt_fired = False
        self.rig.powered = True
        self.rig.mcu_outputs_reset()
        self.update()
        proc = await self.spawn_mcu()
        self.proc = proc
        self.event("mcu", state="start", pid=proc.pid)
        forward = asyncio.create_task(self.forward(proc.stdout))
        try:
            rc = await proc.wait()
        finally:
            if proc.returncode is None:    # cancelled while running: never leave an MCU behind
                proc.kill()
        try:
            await asyncio.wait_for(forward, 2)
        except asyncio.TimeoutError:
            pass
        self.proc = None
        self.drop_board()
        self.rig.powered = self.power_on and not self.stopping
        self.rig.mcu_outputs_reset()
        self.event("mcu", state="exit", rc=rc)
        self.update()
        return rc

    async def watchdog(self):
        """The board's hardware watchdog: once armed, an MCU that stops feeding it within its timeout is reset."""
        while True:
            await asyncio.sleep(0.05)
            proc = self.proc
            if proc is None or self.wdt_ms is None or self.wdt_fired:
                continue
            if time.monotonic() - self.wdt_fed > self.wdt_ms / 1000:
                self.wdt_fired = True
                self.wdt_resets += 1
                self.event("wdt", state="reset", timeout_ms=self.wdt_ms)
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass

    async def forward(self, stream):
        while True:
            try:
                line = await stream.readline()
            except ValueError:
                line = await stream.read(1 << 16)
            if not line:
                return
            say("[mcu] " + line.decode(errors="replace").rstrip("\r\n"))

    async def kill_mcu(self):
        proc = self.proc
        if proc is None:
            return
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        await proc.wait()
        while self.proc is proc:      # let run_mcu finish its bookkeeping
            await asyncio.sleep(0.005)

    # ---- board link ----

    def drop_board(self):
        if self.board_w is not None:
            self.board_w.close()
        self.board_w = None
        self.pushed = None

    async def on_board(self, reader, writer):
        if self.proc is None:
            writer.close()
            return
        # The newest connection is the board; an older one of the same MCU stays open but is ignored (closing
        # it would tell that hal.unix.Board the power is gone).
        self.board_w = writer
        self.pushed = None
        self.update()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if writer is self.board_w:
                    self.on_output(line)
        except (ConnectionError, ValueError):
            pass
        finally:
            if writer is self.board_w:
                self.drop_board()
            else:
                writer.close()

    def mcu_time(self, ticks):
        """Board ms of an MCU output command from its "t" (ticks_ms: CLOCK_MONOTONIC ms modulo 2**30, the clock
        of time.monotonic()), None without one or when it cannot be the same clock (then the line's arrival counts).
        The pin acts when the MCU writes it: this loop, busy under load, may read the line tens of ms later."""
        if not isinstance(ticks, int):
            return None
        late = (int(time.monotonic() * 1000) - ticks) % TICKS_PERIOD
        if late > TICKS_PERIOD // 2:
            late -= TICKS_PERIOD  # the MCU rounded a hair ahead of us
        return self.now_ms() - late if -5 <= late <= 2000 else None

    def on_output(self, line):
        try:
            msg = json.loads(line)
        except ValueError:
            say("[sim] bad board line from the MCU: %r" % line)
            return
        rig = self.rig
        at = self.mcu_time(msg.get("t"))
        if "pwm" in msg:
            rig.pwm = int(msg["pwm"])
            self.event("pwm", at, permille=rig.pwm)
        if "contactor" in msg:
            rig.contactor_cmd = bool(msg["contactor"])
            self.event("contactor", at, on=rig.contactor_cmd)
        if "lock" in msg:
            rig.lock_cmd = bool(msg["lock"])
            self.event("lock", at, on=rig.lock_cmd)
            self.move_lock()
        if "led" in msg and msg["led"] in rig.leds:
            rig.leds[msg["led"]] = bool(msg.get("on"))
            self.event("led", at, name=msg["led"], on=rig.leds[msg["led"]])
        if "blocking" in msg:
            self.event("block", ms=int(msg["blocking"]))
        if "wdt" in msg:
            if self.wdt_ms is None:
                self.event("wdt", state="armed", timeout_ms=int(msg["wdt"]))
            self.wdt_ms = int(msg["wdt"])
            self.wdt_fed = time.monotonic()
        if msg.get("reset"):
            self.reset_requested = True
            self.event("reset")
            if self.proc is not None:
                try:
                    self.proc.kill()     # completes a reset() called from a thread other than the main one
                except ProcessLookupError:
                    pass
        self.update()

    def move_lock(self):
        self.lock_gen += 1
        gen = self.lock_gen
        asyncio.get_running_loop().call_later(LOCK_TRAVEL_S, self.lock_arrived, gen)

    def lock_arrived(self, gen):
        rig = self.rig
        if gen != self.lock_gen or rig.faults["lock"] or rig.lock_pos == rig.lock_cmd:
            return
        rig.lock_pos = rig.lock_cmd
        self.event("lock_fb", on=rig.lock_pos)
        self.update()

    # ---- control socket ----

    async def on_control(self, reader, writer):
        self.clients.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                reply = await self.handle(line)
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            self.clients.discard(writer)
            writer.close()

    async def handle(self, line):
        try:
            req = json.loads(line)
        except ValueError as e:
            return {"ok": False, "error": "bad JSON: %s" % e}
        if not isinstance(req, dict):
            return {"ok": False, "error": "a request is a JSON object with a \"cmd\" field"}
        fn = COMMANDS.get(req.get("cmd"))
        if fn is None:
            return {"ok": False, "error": "unknown command %r (known: %s)" % (req.get("cmd"), ", ".join(COMMANDS))}
        try:
            reply = await fn(self, req)
        except CommandError as e:
            return {"ok": False, "error": str(e)}
        self.update()
        out = {"ok": True}
        out.update(reply or {})
        return out

    async def cmd_status(self, req):
        rig = self.rig
        hi, lo = rig.cp()
        return {"pilot": pilot_letter(hi), "duty": 0.0 if rig.pwm is None else rig.pwm / 10,
                "offered_a": rig.offered_a(), "contactor": rig.contacts, "locked": rig.lock_pos,
                "energy_wh": self.meter.energy_wh, "power_w": self.meter.power_w, "powered": self.power_on,
                "t": self.now_ms(), "cp_mv": [hi, lo], "pp_ohms": rig.pp(), "plugged": rig.plugged,
                "ev": rig.ev_state, "max_a": rig.max_a, "phases": rig.phases, "current_a": rig.phase_currents(),
                "pwm": rig.pwm, "contactor_cmd": rig.contactor_cmd, "lock_cmd": rig.lock_cmd,
                "leds": dict(rig.leds), "rcd": rig.faults["rcd"], "ignore_pwm": rig.ignore_pwm,
                "limit_a": None if rig.limit_da is None else rig.limit_da / 10,
                "faults": [k for k in FAULTS if rig.faults[k]],
                "mcu_pid": self.proc.pid if self.proc else None, "variant": rig.variant, "meter": self.args.meter,
                "meter_shift_wh": self.meter_shift_wh, "wdt_ms": self.wdt_ms, "wdt_resets": self.wdt_resets}

    async def cmd_plug(self, req):
        rig = self.rig
        if rig.variant == "socket":
            cable = req.get("cable_a", 32)
            if cable not in PP_OHMS:
                raise CommandError("cable_a must be one of 13, 20, 32, 63 (got %r)" % (cable,))
            rig.cable_a = cable
            rig.pp_override = "pp_ohms" in req
            rig.pp_forced = req.get("pp_ohms")
            if rig.pp_forced is not None and not isinstance(rig.pp_forced, int):
                raise CommandError("pp_ohms must be an integer or null")
        if not rig.plugged:
            rig.ev_state = "B"
        rig.plugged = True
        self.event("plug", cable_a=rig.cable_a)

    async def cmd_unplug(self, req):
        self.rig.plugged = False
        self.event("unplug")

    async def cmd_ev(self, req):
        rig = self.rig
        state, max_a, phases = req.get("state"), req.get("max_a"), req.get("phases")
        if state is not None and state not in PILOT_MV:
            raise CommandError("ev state must be A, B, C or D (got %r)" % (state,))
        if max_a is not None and (not isinstance(max_a, (int, float)) or max_a < 0):
            raise CommandError("max_a must be a number >= 0")
        if phases is not None and phases not in (1, 3):
            raise CommandError("phases must be 1 or 3")
        ignore = req.get("ignore_pwm")
        if ignore is not None and not isinstance(ignore, bool):
            raise CommandError("ignore_pwm must be true or false")
        if ignore is not None:
            rig.ignore_pwm = ignore
        if state is not None:
            rig.ev_state = state
        if max_a is not None:
            rig.max_a = float(max_a)
        if phases is not None:
            rig.phases = phases
        self.event("ev", state=rig.ev_state, max_a=rig.max_a, phases=rig.phases, ignore_pwm=rig.ignore_pwm)

    def to_mcu(self, msg):
        """One line over the board link to the firmware; False when no MCU is listening (booting, off)."""
        if self.board_w is None:
            return False
        self.board_w.write((json.dumps(msg) + "\n").encode())
        return True

    async def cmd_tag(self, req):
        tag = req.get("id")
        if not isinstance(tag, str) or not tag:
            raise CommandError("tag needs a non-empty string id")
        delivered = self.to_mcu({"tag": tag})
        self.event("tag", id=tag, delivered=delivered)
        return {"delivered": delivered}

    async def cmd_console(self, req):
        line = req.get("line")
        if not isinstance(line, str):
            raise CommandError("console needs a string line (\"\" for Enter alone)")
        delivered = self.to_mcu({"console": line})
        self.event("console", line=line, delivered=delivered)
        return {"delivered": delivered}

    async def cmd_fault(self, req):
        kind, on = req.get("kind"), bool(req.get("on", True))
        if kind not in FAULTS:
            raise CommandError("fault kind must be one of %s (got %r)" % (", ".join(FAULTS), kind))
        rig = self.rig
        rig.faults[kind] = on
        if kind == "meter":
            self.meter.set_fault(on)
        if kind == "weld" and not on:
            rig.contacts = rig.contactor_cmd and rig.powered
        if kind == "lock" and not on:
            self.move_lock()
        self.event("fault", fault=kind, on=on)

    async def cmd_power(self, req):
        if not isinstance(req.get("on"), bool):
            raise CommandError("power needs \"on\": true or false")
        if req["on"] == self.power_on:
            return {"changed": False}
        self.power_on = req["on"]
        self.event("power", on=self.power_on)
        self.reset_cause = "power"
        if self.power_on:
            self.power_evt.set()
        else:
            await self.kill_mcu()
            self.rig.powered = False
            self.rig.mcu_outputs_reset()
        return {"changed": True}

    async def cmd_limit(self, req):
        a = req.get("a", "missing")
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 80):
            raise CommandError("limit needs \"a\": a current 0..80 A or null (no local limit)")
        self.rig.limit_da = None if a is None else int(round(a * 10))
        self.event("limit", a=a)

    async def cmd_mcu(self, req):
        ms = req.get("block_ms")
        if isinstance(ms, bool) or not isinstance(ms, int) or not 0 < ms <= 60000:
            raise CommandError("mcu needs \"block_ms\": 1..60000")
        delivered = self.to_mcu({"block_ms": ms})
        self.event("mcu", state="block", ms=ms, delivered=delivered)
        return {"delivered": delivered}

    async def cmd_meter(self, req):
        keys = [k for k in ("add_wh", "energy_wh") if k in req]
        if len(keys) != 1:
            raise CommandError("meter needs exactly one of \"add_wh\" (shift the energy register by N Wh) or "
                               "\"energy_wh\" (set it to N Wh)")
        value = req[keys[0]]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                or abs(value) == float("inf"):
            raise CommandError("meter %s must be a number of Wh (got %r)" % (keys[0], value))
        before = self.meter.energy_wh
        try:
            if keys[0] == "add_wh":
                after = self.meter.shift_energy(value)
            else:
                after = self.meter.set_energy(value)
        except ValueError as e:
            raise CommandError("meter: %s" % e)
        self.meter_shift_wh += after - before
        self.event("meter", energy_wh=after, shift_wh=after - before)
        return {"energy_wh": after, "meter_shift_wh": self.meter_shift_wh}

    async def cmd_events(self, req):
        since = req.get("since", 0)
        if not isinstance(since, int):
            raise CommandError("since must be an integer (the \"next\" of the previous reply)")
        return {"events": [e for e in self.events if e["seq"] >= since], "next": self.seq, "now": self.now_ms()}


COMMANDS = {"status": Sim.cmd_status, "plug": Sim.cmd_plug, "unplug": Sim.cmd_unplug, "ev": Sim.cmd_ev,
            "tag": Sim.cmd_tag, "console": Sim.cmd_console, "fault": Sim.cmd_fault, "power": Sim.cmd_power, "events": Sim.cmd_events,
            "limit": Sim.cmd_limit, "mcu": Sim.cmd_mcu, "meter": Sim.cmd_meter}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Virtual charge-point board running the firmware (DESIGN.md §6).",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--csms", help="Central System URL (ws:// or wss://) for provision.json (required unless "
                   "--no-provision or --flash-code)")
    p.add_argument("--id", help="ChargeBoxId (required with --csms)")
    p.add_argument("--state", required=True, help="directory holding the MCU's flash")
    p.add_argument("--control", required=True, type=int, help="control socket port on 127.0.0.1 (0 = any)")
    p.add_argument("--password", help="HTTP Basic password (security profile 1/2)")
    p.add_argument("--cafile", help="PEM file with the CA that signed the CSMS certificate")
    p.add_argument("--heap", default="110wK", help="MicroPython heap size (default 110wK)")
    p.add_argument("--meter", choices=METERS, help="meter model (default SDM630; --flash-code: the flash's)")
    p.add_argument("--variant", choices=("socket", "cable"), help="default socket; --flash-code: the flash's")
    code = p.add_mutually_exclusive_group()
    code.add_argument("--romfs", dest="romfs", action="store_true", default=None,
                      help="run the firmware from a ROMFS image of the build, as on an ESP32 (the default)")
    code.add_argument("--files", dest="romfs", action="store_false",
                      help="import the firmware from its .mpy files: all of its code then lives in the heap")
    code.add_argument("--flash-code", action="store_true",
                      help="boot DIR/boot.py and DIR/main.py with the code make deploy installed in DIR")
    p.add_argument("--no-provision", dest="provision", action="store_false",
                   help="write no provision.json: the firmware starts its first-boot setup on the console")
    p.add_argument("--wifi-ap", metavar="SSID:PASSWORD",
                   help="the one WiFi access point in range of the board's simulated radio (default: any joins)")
    p.add_argument("--set", dest="settings", metavar="NAME=VALUE", action="append", default=[],
                   help="a further device setting in provision.json (firmware/config_keys.py, e.g. WebEnabled=true, "
                   "MqttUrl=mqtt://127.0.0.1:1883); repeatable; the firmware checks it as it checks the file")
    args = p.parse_args(argv)
    for item in args.settings:
        if "=" not in item or not item.partition("=")[0]:
            p.error("--set takes NAME=VALUE, got %r" % item)
    if args.settings and (not args.provision or args.csms is None):
        p.error("--set adds to the provision.json the sim writes: it needs --csms (and not --no-provision)")
    if args.flash_code:
        args.romfs = False
        args.state = os.path.abspath(args.state)  # the MCU runs in it
    elif args.romfs is None:
        args.romfs = not os.environ.get("SIM_MCU_SCRIPT")  # a test script of the sim runs as it is
    if args.csms is None and args.provision and not args.flash_code:
        p.error("--csms is required (unless --no-provision, or --flash-code: the flash's provision.json holds it)")
    if args.csms is not None and args.id is None:
        p.error("--id is required with --csms")
    deployed = flash_settings(args.state) if args.flash_code else {}
    if args.meter is None:
        args.meter = deployed.get("MeterModel") if deployed.get("MeterModel") in METERS else "SDM630"
    if args.variant is None:
        args.variant = deployed.get("Variant") if deployed.get("Variant") in ("socket", "cable") else "socket"
    return args


def flash_settings(state):
    """The device settings make deploy wrote to a flash directory (provision.json), {} when there are none."""
    try:
        with open(os.path.join(state, "provision.json")) as f:
            prov = json.load(f)
    except (OSError, ValueError):
        return {}
    return prov if isinstance(prov, dict) else {}


async def amain(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sim = Sim(args)
    try:
        await sim.start()
        await stop.wait()
    finally:
        await sim.stop()


def main(argv=None):
    args = parse_args(argv)
    if args.cafile and not Path(args.cafile).is_file():
        sys.exit("sim: --cafile %s does not exist" % args.cafile)
    sys.path.insert(0, str(ROOT / "tools"))
    import build
    if not os.environ.get("SIM_MCU_SCRIPT") and not args.flash_code:
        build.build(BUILD_DIR)
    if args.romfs:
        build.romfs(str(BUILD_DIR))
    try:
        asyncio.run(amain(args))
    except OSError as e:
        sys.exit("sim: %s" % e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
