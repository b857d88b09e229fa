"""tools/sim.py (the virtual board running the firmware) as a child process, driven over its control socket.

Sim blocks (the pytest tests); AsyncSim is the same driver for asyncio (bench, torture): its cmd, status,
wait_status and wait_line are coroutines, and so is every verb, which is written once here over cmd():

    sim.plug(32); sim.ev("B", 16); sim.tag("TAG1"); sim.ev("C", 16)
    sim.wait_status(lambda s: s["contactor"], what="contactor closed")
    await asim.plug(32) ...                      (the same on an AsyncSim)

The verbs send the control-socket commands of ../shared/DESIGN.md §6 and README.md unchanged.
"""
import asyncio
import json
import os
import re
import shutil
import tempfile
import time

from harness import PY, TOOLS
from harness.proc import ChildProcess, json_request, until, wait_until

# The heap and loop probe (probe_mcu.py) runs in the MCU process in place of main.py and runs main.py itself.
PROBE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe_mcu.py")
PROBE_RE = re.compile(r"BENCHPROBE live=(\d+) peak=(\d+) lag_us=(\d+) written=(\d+) free=(\d+) n=(\d+)")


def probe_env(gc_each=True, period_ms=2, report_ms=250, steps=False, safety=False, pieces=False):
    """The environment that makes tools/sim.py run the firmware with the probe task beside it: every period_ms it
    measures how late its sleep wakes (loop lag) and, with gc_each, collects and reads the live heap; every
    report_ms it prints a BENCHPROBE line (PROBE_RE). steps: each asyncio step is timed and named, GC windows
    told apart (BENCHSTEPS, BENCHTASKS, BENCHGC lines); safety: the MCU's own input-to-contactor time
    (BENCHSAFE lines); pieces: at the first report, the largest block the heap can give (a BENCHHEAP line). See
    probe_mcu.py."""
    flags = (1 if steps else 0) | (2 if safety else 0) | (4 if pieces else 0)
    return {"SIM_MCU_SCRIPT": PROBE_SCRIPT,
            "BENCH_PROBE": "%d,%d,%d,%d" % (1 if gc_each else 0, period_ms, report_ms, flags)}


class SimCommandFailed(AssertionError, RuntimeError):
    """The sim answered a control command with ok: false."""


class _SimBase(ChildProcess):
    ready_pattern = r"SIM READY control=127\.0\.0\.1:(\d+)"

    def __init__(self, csms_url, cp_id="CP1", state_dir=None, password=None, cafile=None, meter="SDM630",
                 variant="socket", heap="110wK", env=None, romfs=None, settings=None):
        super().__init__()
        self.csms_url = csms_url
        self.cp_id = cp_id
        self._tmp = None if state_dir else tempfile.mkdtemp(prefix="sim-%s-" % cp_id)
        self.state_dir = state_dir or os.path.join(self._tmp, "state")
        self.password = password
        self.cafile = cafile
        self.meter = meter
        self.variant = variant
        self.heap = heap
        self.env = env
        self.romfs = romfs      # True: --romfs, False: --files, None: the sim's default
        self.settings = dict(settings or {})  # further device settings: --set NAME=VALUE
        self.control_port = None
        self.name = "sim %s" % cp_id

    def argv(self):
        argv = [PY, os.path.join(TOOLS, "sim.py"), "--csms", self.csms_url, "--id", self.cp_id,
                "--state", self.state_dir, "--control", str(self.control_port),
                "--meter", self.meter, "--variant", self.variant, "--heap", self.heap]
        if self.romfs is not None:
            argv.append("--romfs" if self.romfs else "--files")
        if self.password is not None:
            argv += ["--password", self.password]
        if self.cafile:
            argv += ["--cafile", self.cafile]
        for name, value in self.settings.items():
            argv += ["--set", "%s=%s" % (name, value)]
        return argv

    def _prepare(self):
        os.makedirs(self.state_dir, exist_ok=True)
        self.control_port = 0  # the sim binds a free port and names it in its ready line

    def _remove_tmp(self):
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # --- verbs: each returns what cmd() returns (the reply, or a coroutine of it on an AsyncSim) -------------

    def status(self):
        return self.cmd({"cmd": "status"})

    def plug(self, cable_a=32):
        return self.cmd({"cmd": "plug", "cable_a": cable_a})

    def unplug(self):
        return self.cmd({"cmd": "unplug"})

    def tag(self, id_tag):
        return self.cmd({"cmd": "tag", "id": id_tag})

    def ev(self, state, max_a=None, **extra):
        """The EV in pilot state A-F drawing at most max_a (extra: ignore_pwm=True...)."""
        req = {"cmd": "ev", "state": state}
        if max_a is not None:
            req["max_a"] = max_a
        req.update(extra)
        return self.cmd(req)

    def fault(self, kind, on=True):
        """kind: lock, meter, rcd, weld, diode, cp_short."""
        return self.cmd({"cmd": "fault", "kind": kind, "on": on})

    def power(self, on):
        return self.cmd({"cmd": "power", "on": on})

    def shift_meter(self, add_wh):
        return self.cmd({"cmd": "meter", "add_wh": add_wh})

    def set_meter(self, energy_wh):
        return self.cmd({"cmd": "meter", "energy_wh": energy_wh})

    def limit(self, a):
        return self.cmd({"cmd": "limit", "a": a})

    def console(self, line):
        return self.cmd({"cmd": "console", "line": line})

    def block_loop(self, ms):
        """Stalls the firmware's asyncio loop for ms (the sim's "mcu" command)."""
        return self.cmd({"cmd": "mcu", "block_ms": ms})

    def events(self, since=0):
        return self.cmd({"cmd": "events", "since": since})

    # --- what the output says ------------------------------------------------------------------------------

    def fatal(self):
        """Crashes proper: a task that died with an exception nobody handled, or the MCU process exiting. A
        traceback right after the firmware's own error line ("E ...: ... failed") was caught and logged."""
        out = []
        prev = ""
        for line in list(self.lines):
            if "[sim] MCU exited" in line or "Fatal" in line or "Task exception wasn't retrieved" in line:
                out.append(line)
            elif "Traceback" in line and not re.search(r" E \S+: .*failed", prev):
                out.append(line)
            if not line.startswith("[mcu]   ") and "Traceback" not in line:
                prev = line
        return out

    def crashes(self):
        """fatal() plus errors the firmware caught itself: a handler or the frame reader failing, MemoryError."""
        return [line for line in list(self.lines)
                if "Traceback" in line or "MemoryError" in line or "[sim] MCU exited" in line
                or "reader failed" in line or "handler failed" in line or "Fatal" in line]

    def crash_summary(self, fatal_only=False):
        """Error lines counted by kind (numbers folded, so a flood of one error is one row)."""
        out = {}
        for line in (self.fatal() if fatal_only else self.crashes()):
            key = re.sub(r"\d+", "N", line)
            out[key] = out.get(key, 0) + 1
        return out

    def probes(self, since_t=0.0):
        """The probe's reports (probe_env) that arrived from since_t (time.monotonic()) on, as dicts."""
        out = []
        for t, line in self.timed():
            if t >= since_t:
                m = PROBE_RE.search(line)
                if m:
                    out.append(dict(zip(("live", "peak", "lag_us", "written", "free", "n"),
                                        map(int, m.groups())), t=t))
        return out


class Sim(_SimBase):
    """The blocking driver (pytest): every call returns when its answer is in."""

    def start(self):
        self._prepare()
        ready = self._spawn(self.argv(), env=self.env)
        self.control_port = int(ready.group(1))
        return self

    def stop(self):
        self._terminate(10)

    def close(self):
        """stop() and delete the state directory if this driver made it."""
        self.stop()
        self._remove_tmp()

    def cmd(self, req, check=True, timeout=30):
        reply = json_request(self.control_port, req, timeout)
        if check and not reply.get("ok"):
            raise SimCommandFailed("sim command %r failed: %r" % (req, reply))
        return reply

    def wait_status(self, pred, timeout=15, what="board state"):
        """Waits until pred(status) holds; returns that status."""
        return wait_until(lambda: (lambda s: s if pred(s) else None)(self.status()), timeout, msg=what)


class AsyncSim(_SimBase):
    """The asyncio driver (bench, torture): one control connection kept open; the firmware runs from its ROMFS
    image unless romfs=False."""

    def __init__(self, csms_url, cp_id="CP1", romfs=True, **kwargs):
        super().__init__(csms_url, cp_id, romfs=romfs, **kwargs)
        self._ctl = None
        self._ctl_lock = asyncio.Lock()

    async def start(self, timeout=60):
        self._prepare()
        since = self._launch(self.argv(), self.env)
        m = await self.wait_line(self.ready_pattern, timeout, since)
        self.control_port = int(m.group(1))
        return self

    async def stop(self):
        if self._ctl is not None:
            self._ctl[1].close()
            self._ctl = None
        await asyncio.to_thread(self._terminate, 15)

    async def close(self):
        await self.stop()
        self._remove_tmp()

    async def cmd(self, req, check=True, timeout=30):
        async with self._ctl_lock:
            if self._ctl is None:
                self._ctl = await asyncio.open_connection("127.0.0.1", self.control_port, limit=1 << 24)
            r, w = self._ctl
            w.write((json.dumps(req) + "\n").encode())
            await w.drain()
            line = await asyncio.wait_for(r.readline(), timeout)
        reply = json.loads(line)
        if check and not reply.get("ok"):
            raise SimCommandFailed("sim %r failed: %r" % (req, reply))
        return reply

    async def wait_line(self, regex, timeout=30, since=0):
        return await self.await_line(regex, timeout, since)

    async def wait_status(self, pred, timeout=20, what="board state"):
        async def check():
            s = await self.status()
            return s if pred(s) else None
        return await until(check, timeout, 0.05, lambda: "%s\n%s" % (what, self.tail(40)))

    async def mcu_pid(self):
        return (await self.status())["mcu_pid"]

    async def board_clock(self):
        """(offset s) with board ms / 1000 + offset = this process's time.monotonic()."""
        best = None
        for _ in range(5):
            t0 = time.monotonic()
            now = (await self.events(1 << 60))["now"]
            t1 = time.monotonic()
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, (t0 + t1) / 2 - now / 1000.0)
        return best[1]

    async def wait_probe(self, since_t, timeout=10):
        """The newest probe report from since_t on, waiting for one."""
        return (await until(lambda: self.probes(since_t)[-1:], timeout, 0.05,
                            lambda: "a probe report:\n" + self.tail(40)))[0]
