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
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ROOT  # noqa: E402
from harness.csms import CallErrorReply, CsmsProc  # noqa: E402
from harness.sim import Sim  # noqa: E402

DEMO_TAGS = "TAG1,DEMO"
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
        self.url = args.csms
        self.stopping = False

    def start(self):
        if self.url is None:
            self.start_csms()
        self.start_sim()

    def start_csms(self):
        self.csms = self._shown(CsmsProc(port=self.args.port, tags=DEMO_TAGS.split(",")), "[csms] ").start()
        self.url = self.csms.url

    def start_sim(self):
        a = self.args
        self.sim = self._shown(Sim(self.url, cp_id=a.id, state_dir=a.state or os.path.join(ROOT, "state", a.id),
                                   password=a.password, cafile=a.cafile), "[sim] ").start()

    def _shown(self, child, prefix):
        """child with its output lines on the console as they come (sim.py tags its own: [mcu], [sim])."""
        def show(line):
            if line is None:
                if not self.stopping:
                    self.console.show("%sexited unexpectedly (code %s)" % (prefix, child.proc.wait()))
            else:
                self.console.show(line if line.startswith(("[mcu]", "[sim]")) else prefix + line)
        child.echo = show
        return child

    def stop(self):
        self.stopping = True
        for child in (self.sim, self.csms):
            if child is not None:
                child.close()

    def check_alive(self):
        for child in (self.sim, self.csms):
            if child is not None and not child.running:
                raise RuntimeError("%s is no longer running (its last output is above)" % child.name)

    def sim_cmd(self, req):
        reply = self.sim.cmd(req, check=False, timeout=40)
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
        if self.csms is None:
            raise UsageError("csms commands need the bundled Central System (no --csms)")
        try:
            result = self.csms.call(self.args.id, action, json.loads(payload_text))
        except CallErrorReply as e:
            raise UsageError(str(e))
        self.console.show("%s result: %s" % (action, json.dumps(result)), keep=False)


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
