"""`make sim`: the firmware on the virtual board, talking to the demo Central System, driven from a prompt.

    .venv/bin/python tools/demo.py                       # bundled CSMS (tags TAG1, DEMO), CP id DEMO-CP1
    .venv/bin/python tools/demo.py --csms wss://cs.example/ocpp --id CP7 --password ... --cafile ca.pem
    .venv/bin/python tools/demo.py --script demo.txt     # or --script - : commands from stdin, for CI

Prints the OCPP traffic ([csms] lines) and the firmware log ([mcu] lines) as they happen. Scripts may use
`sleep N` and `wait REGEX` (wait up to 30 s for an output line). Exit code 1 if a command failed.
"""

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv", "bin", "python")
DEMO_TAGS = "TAG1,DEMO"
READY_TIMEOUT = 30
WAIT_TIMEOUT = 30

HELP = """Commands:
  plug [amps]            plug a Type 2 cable into the socket (13, 20, 32 or 63 A; default 32)
  unplug                 pull the cable out
  car charge [amps]      the EV asks for energy (state C), optionally at most this many A
  car pause              the EV stops asking (state B)
  car leave              the cable is pulled out of the car (state A)
  tag ID                 present an RFID card (the bundled CSMS accepts TAG1 and DEMO)
  status                 what the board sees: pilot, PWM offer, contactor, lock, meter
  power off|on           cut / restore the charger's power (the MCU is killed / boots again)
  fault KIND on|off      KIND: lock meter rcd weld diode cp_short
  meter add|set WH       shift the meter's energy register by WH (negative allowed) / set it: a glitch
  csms ACTION [JSON]     send a CALL from the bundled CSMS, e.g. csms Reset {"type":"Soft"}
  sleep N | wait REGEX   (scripts) pause N s | wait for an output line matching REGEX
  help, quit"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_request(port, req, timeout=40):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("control socket closed")
            buf += chunk
    return json.loads(buf)


class Console:
    """Serialises output from the reader threads with the prompt, and keeps lines for `wait`."""

    def __init__(self, interactive):
        self.interactive = interactive
        self.prompt = "demo> "
        self.lock = threading.Condition()
        self.lines = []
        self.cursor = 0   # `wait` looks at lines from here: after the previous match

    def show(self, line, keep=True):
        """Print a line; keep=False for the demo's own messages, which `wait` must not see."""
        with self.lock:
            if keep:
                self.lines.append(line)
            if self.interactive and threading.current_thread() is not threading.main_thread():
                # Output from a reader thread: redraw the prompt and what the user typed below it.
                typed = _readline_buffer()
                sys.stdout.write("\r\x1b[K%s\n%s%s" % (line, self.prompt, typed))
            else:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            self.lock.notify_all()

    def wait_for(self, regex, timeout):
        """The first line matching regex since the previous match, waiting up to timeout s for it."""
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for i in range(self.cursor, len(self.lines)):
                    if pattern.search(self.lines[i]):
                        self.cursor = i + 1
                        return self.lines[i]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.lock.wait(left)


def _readline_buffer():
    try:
        import readline
        return readline.get_line_buffer()
    except ImportError:
        return ""


class Child:
    """A tool process whose output lines go to the console with a prefix."""

    def __init__(self, name, argv, console, prefix, ready_regex):
        self.name = name
        self.console = console
        self.prefix = prefix
        self.ready = None
        self._ready_event = threading.Event()
        self._ready_re = re.compile(ready_regex)
        self.stopping = False
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if self.ready is None:
                m = self._ready_re.search(line)
                if m:
                    self.ready = m
                    self._ready_event.set()
            # sim.py already tags its lines ([mcu] firmware, [sim] board).
            self.console.show(line if line.startswith(("[mcu]", "[sim]")) else self.prefix + line)
        self._ready_event.set()
        code = self.proc.wait()
        if not self.stopping:
            self.console.show("%sexited unexpectedly (code %s)" % (self.prefix, code))

    @property
    def alive(self):
        return self.proc.poll() is None

    def wait_ready(self):
        self._ready_event.wait(READY_TIMEOUT)
        if self.ready is None:
            raise RuntimeError("%s did not start (see its output above)" % self.name)
        return self.ready

    def stop(self):
        self.stopping = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._thread.join(5)


class UsageError(Exception):
    pass


EV_STATES = {"charge": "C", "pause": "B", "leave": "A"}
FAULTS = ("lock", "meter", "rcd", "weld", "diode", "cp_short")


def on_off(word):
    if word not in ("on", "off"):
        raise UsageError("say on or off, not %r" % word)
    return word == "on"


def sim_request(words):
    """The sim control request for a board command (words split from the line), or None if not one."""
    verb, args = words[0], words[1:]
    if verb == "plug" and len(args) <= 1:
        return {"cmd": "plug", "cable_a": int(args[0]) if args else 32}
    if verb == "unplug" and not args:
        return {"cmd": "unplug"}
    if verb == "car" and 1 <= len(args) <= 2 and args[0] in EV_STATES:
        req = {"cmd": "ev", "state": EV_STATES[args[0]]}
        if len(args) == 2:
            req["max_a"] = float(args[1])
        return req
    if verb == "tag" and len(args) == 1:
        return {"cmd": "tag", "id": args[0]}
    if verb == "power" and len(args) == 1:
        return {"cmd": "power", "on": on_off(args[0])}
    if verb == "fault" and len(args) == 2 and args[0] in FAULTS:
        return {"cmd": "fault", "kind": args[0], "on": on_off(args[1])}
    if verb == "meter" and len(args) == 2 and args[0] in ("add", "set"):
        try:
            wh = float(args[1])
        except ValueError:
            raise UsageError("meter add|set takes a number of Wh, not %r" % args[1])
        return {"cmd": "meter", "add_wh" if args[0] == "add" else "energy_wh": wh}
    if verb in ("plug", "unplug", "car", "tag", "power", "fault", "meter"):
        raise UsageError("usage: " + next(h.strip() for h in HELP.splitlines() if h.strip().startswith(verb)))
    return None


def describe_status(st):
    pilot = st.get("pilot")
    offer = "%.0f A offered (duty %.1f %%)" % (st.get("offered_a", 0), st.get("duty", 0))
    return ("pilot %s, %s, contactor %s, %s, %.3f kWh, %.0f W, %s%s" % (
        pilot, offer, "CLOSED" if st.get("contactor") else "open",
        "locked" if st.get("locked") else "unlocked", st.get("energy_wh", 0) / 1000.0,
        st.get("power_w", 0), "powered" if st.get("powered") else "POWER OFF",
        ", faults: " + ",".join(st["faults"]) if st.get("faults") else ""))


class Demo:
    def __init__(self, args, console):
        self.args = args
        self.console = console
        self.csms = None
        self.sim = None
        self.csms_control = None
        self.url = args.csms

    def start(self):
        if self.url is None:
            self.start_csms()
        self.start_sim()

    def start_csms(self):
        argv = [PY, os.path.join(ROOT, "tools", "csms.py"), "--port", str(self.args.port),
                "--control", "0", "--tags", DEMO_TAGS]
        self.csms = Child("csms", argv, self.console, "[csms] ",
                          r"CSMS READY url=(\S+) control=127\.0\.0\.1:(\d+)")
        m = self.csms.wait_ready()
        self.url, self.csms_control = m.group(1), int(m.group(2))

    def start_sim(self):
        a = self.args
        state = a.state or os.path.join(ROOT, "state", a.id)
        os.makedirs(state, exist_ok=True)
        argv = [PY, os.path.join(ROOT, "tools", "sim.py"), "--csms", self.url, "--id", a.id,
                "--state", state, "--control", "0"]
        if a.password is not None:
            argv += ["--password", a.password]
        if a.cafile:
            argv += ["--cafile", a.cafile]
        self.sim = Child("sim", argv, self.console, "[sim] ", r"SIM READY control=127\.0\.0\.1:(\d+)")
        self.sim_control = int(self.sim.wait_ready().group(1))

    def stop(self):
        for child in (self.sim, self.csms):
            if child is not None:
                child.stop()

    def check_alive(self):
        for child in (self.sim, self.csms):
            if child is not None and not child.alive:
                raise RuntimeError("%s is no longer running (its last output is above)" % child.name)

    def sim_cmd(self, req):
        reply = json_request(self.sim_control, req)
        if not reply.get("ok"):
            raise UsageError("the board refused %s: %s" % (req["cmd"], reply.get("error")))
        return reply

    def run_line(self, line):
        """Carry out one command line; returns False when the user wants to quit."""
        words = shlex.split(line, comments=True)
        if not words:
            return True
        verb = words[0]
        if verb in ("quit", "exit"):
            return False
        if verb == "help":
            self.console.show(HELP, keep=False)
        elif verb == "status":
            self.console.show("status: " + describe_status(self.sim_cmd({"cmd": "status"})), keep=False)
        elif verb == "sleep" and len(words) == 2:
            time.sleep(float(words[1]))
        elif verb == "wait" and len(words) >= 2:
            self.wait(line.split(None, 1)[1].strip())
        elif verb == "csms" and len(words) >= 2:
            self.csms_call(words[1], line.split(None, 2)[2] if len(words) > 2 else "{}")
        else:
            req = sim_request(words)
            if req is None:
                raise UsageError("unknown command %r (try help)" % verb)
            self.sim_cmd(req)
        return True

    def wait(self, regex):
        timeout = self.args.wait_timeout
        if self.console.wait_for(regex, timeout) is None:
            raise UsageError("no output line matched /%s/ within %g s" % (regex, timeout))

    def csms_call(self, action, payload_text):
        if self.csms_control is None:
            raise UsageError("csms commands need the bundled Central System (no --csms)")
        payload = json.loads(payload_text)
        reply = json_request(self.csms_control, {"cmd": "call", "cp": self.args.id, "action": action,
                                                 "payload": payload, "timeout": 30})
        if not reply["ok"]:
            raise UsageError("%s: %s" % (action, reply["error"]))
        self.console.show("%s result: %s" % (action, json.dumps(reply["result"])), keep=False)


def banner(demo):
    where = "the bundled demo Central System" if demo.csms else "your Central System"
    return ("\nOpen EVSE firmware demo: charge point %s on the virtual board (MicroPython), talking OCPP 1.6-J\n"
            "to %s at %s/%s\n%s%s\n"
            "Output: [csms] OCPP frames (CP -> CSMS, CSMS <- reply), [mcu] firmware log, [sim] the board.\n"
            % (demo.args.id, where, demo.url, demo.args.id,
               "Accepted tags: %s.\n" % DEMO_TAGS.replace(",", ", ") if demo.csms else "", HELP))


def command_lines(args, console):
    """The command source: a script file, stdin, or the interactive prompt."""
    if args.script:
        stream = sys.stdin if args.script == "-" else open(args.script)
        with stream:
            for line in stream:
                line = line.strip()
                if line and not line.startswith("#"):
                    console.show("> " + line, keep=False)
                    yield line
        return
    while True:
        try:
            yield input(console.prompt)
        except EOFError:
            return


def build_parser():
    p = argparse.ArgumentParser(description="Interactive demo: firmware + virtual board + Central System.")
    p.add_argument("--csms", help="use this Central System URL instead of starting tools/csms.py")
    p.add_argument("--id", default="DEMO-CP1", help="charge point id (default DEMO-CP1)")
    p.add_argument("--password", help="HTTP Basic password for --csms (passed to sim.py)")
    p.add_argument("--cafile", help="PEM CA of a wss:// --csms (passed to sim.py)")
    p.add_argument("--state", help="state directory (default ./state/<id>)")
    p.add_argument("--port", type=int, default=0, help="port of the bundled CSMS (default: a free one)")
    p.add_argument("--script", help="read commands from FILE (- = stdin) instead of the prompt")
    p.add_argument("--wait-timeout", type=float, default=WAIT_TIMEOUT, help="limit of `wait` in s")
    return p


def _interrupt(signum, frame):
    # SIGTERM ends the demo the way Ctrl-C does, so the children are always stopped.
    raise KeyboardInterrupt


def main(argv=None):
    args = build_parser().parse_args(argv)
    console = Console(interactive=not args.script and sys.stdin.isatty())
    signal.signal(signal.SIGTERM, _interrupt)
    demo = Demo(args, console)
    failed = False
    try:
        demo.start()
        console.show(banner(demo), keep=False)
        # The firmware needs a moment to boot and register; commands typed before that would hit a board
        # whose MCU is not listening yet.
        cursor = console.cursor
        if console.wait_for(r"\[mcu\].*BootNotification", args.wait_timeout) is None:
            console.show("(the charger has not registered yet; go ahead anyway)", keep=False)
        console.cursor = cursor  # a script's own "wait" may still look for lines printed while booting
        for line in command_lines(args, console):
            demo.check_alive()
            try:
                if not demo.run_line(line):
                    break
            except (UsageError, ValueError, OSError) as e:
                failed = True
                console.show("error: %s" % e, keep=False)
    except KeyboardInterrupt:
        console.interactive = False
        console.show("\ninterrupted", keep=False)
    except RuntimeError as e:
        failed = True
        console.show("error: %s" % e, keep=False)
    finally:
        console.interactive = False
        console.show("stopping the simulation ...", keep=False)
        demo.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
