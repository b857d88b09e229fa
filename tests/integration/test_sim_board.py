"""tools/sim.py (the virtual board) and hal/unix.py, driven through the public control socket.

The MCU is tests/integration/board_probe.py (SIM_MCU_SCRIPT): a crude EVSE on hal.unix.Board that prints what it
sees ("PROBE ..." lines, forwarded by the sim as "[mcu] ...") and obeys tags as commands.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
PROBE = "tests/integration/board_probe.py"
WAIT_S = 15


def pids_mentioning(text):
    """Live processes whose command line contains text (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid):
    try:
        state = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Sim:
    def __init__(self, state_dir, *extra):
        self.state_dir = Path(state_dir)
        self.port = None  # the sim binds a free port (--control 0) and names it in its ready line
        self.lines = []
        self.cond = threading.Condition()
        self.eof = False
        env = dict(os.environ, SIM_MCU_SCRIPT=PROBE)
        cmd = [str(PYTHON), str(ROOT / "tools" / "sim.py"), "--csms", "ws://127.0.0.1:9/ocpp", "--id", "PROBE1",
               "--state", str(self.state_dir), "--control", "0", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        threading.Thread(target=self._collect, daemon=True).start()
        self.sock = None

    def _collect(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_line(self, pattern, after=0, timeout=WAIT_S):
        """Index and match of the first output line from index `after` on matching pattern."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.lines)):
                    m = rx.search(self.lines[i])
                    if m:
                        return i, m
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise AssertionError("no line /%s/ in sim output:\n%s" % (pattern, "\n".join(self.lines)))
                self.cond.wait(min(left, 0.2))

    def mark(self):
        with self.cond:
            return len(self.lines)

    def ctl(self, **req):
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_S)
            self.rfile = self.sock.makefile("r")
        self.sock.sendall((json.dumps(req) + "\n").encode())
        return json.loads(self.rfile.readline())

    def status(self):
        st = self.ctl(cmd="status")
        assert st["ok"], st
        return st

    def until(self, pred, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError("condition never held; last status %s" % st)
            time.sleep(0.02)

    def events(self, since=0):
        r = self.ctl(cmd="events", since=since)
        assert r["ok"], r
        return r["events"]

    def until_event(self, since, kind, timeout=WAIT_S, **match):
        deadline = time.monotonic() + timeout
        while True:
            events = self.events(since)
            try:
                return first(events, kind, **match)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(tmp_path, *extra):
    sim = Sim(tmp_path / "state", *extra)
    try:
        sim.port = int(sim.wait_line(r"^SIM READY control=127\.0\.0\.1:(\d+)$")[1].group(1))
        sim.wait_line(r"^\[mcu\] PROBE START")
    except BaseException:
        sim.close()
        raise
    return sim


@pytest.fixture
def sim(tmp_path):
    s = start(tmp_path)
    try:
        yield s
    finally:
        s.close()
        for pid in pids_mentioning(str(s.state_dir)):
            os.kill(pid, signal.SIGKILL)


def first(events, kind, **match):
    for e in events:
        if e["kind"] == kind and all(e.get(k) == v for k, v in match.items()):
            return e
    raise AssertionError("no %s event %s in %s" % (kind, match, events))


def plug_and_charge(sim, cable_a=32):
    assert sim.ctl(cmd="plug", cable_a=cable_a)["ok"]
    sim.until(lambda st: st["duty"] == 26.7 and st["locked"])
    assert sim.ctl(cmd="ev", state="C")["ok"]
    return sim.until(lambda st: st["contactor"])


# ---- tests ----

def test_ready_status_fields_and_probe_sees_the_board(sim):
    _, m = sim.wait_line(r"^\[mcu\] PROBE START state=(\S+) methods=(\S+)")
    assert m.group(1) == str(sim.state_dir)
    assert m.group(2) == "ok"  # hal.unix.Board has every hal.board method
    st = sim.status()
    types = {"pilot": str, "duty": (int, float), "offered_a": (int, float), "contactor": bool, "locked": bool,
             "energy_wh": (int, float), "power_w": (int, float), "powered": bool}
    for key, typ in types.items():
        assert isinstance(st[key], typ), (key, st[key])
    assert st["pilot"] == "A" and st["duty"] == 100 and st["offered_a"] == 0
    assert st["contactor"] is False and st["powered"] is True and st["power_w"] == 0
    prov = json.loads((sim.state_dir / "provision.json").read_text())
    assert prov == {"CentralSystemUrl": "ws://127.0.0.1:9/ocpp", "ChargeBoxId": "PROBE1",
                    "MeterModel": "SDM630", "Variant": "socket"}


def test_provision_json_carries_every_option(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----\n")
    s = start(tmp_path, "--password", "s3cret pw", "--cafile", str(ca), "--meter", "SDM120",
              "--variant", "cable", "--heap", "120wK")
    try:
        prov = json.loads((s.state_dir / "provision.json").read_text())
        assert prov == {"CentralSystemUrl": "ws://127.0.0.1:9/ocpp", "ChargeBoxId": "PROBE1",
                        "Password": "s3cret pw", "CentralSystemCa": ca.read_text(),
                        "MeterModel": "SDM120", "Variant": "cable"}
        pid = s.status()["mcu_pid"]
        cmdline = Path("/proc/%d/cmdline" % pid).read_bytes().split(b"\0")
        assert b"heapsize=120wK" in cmdline
        # tethered cable: PP is the cable's fixed coding, plugged or not; plug only connects the car
        st = s.status()
        assert st["pp_ohms"] == 220 and st["pilot"] == "A" and st["phases"] == 1
        assert s.ctl(cmd="plug")["ok"]
        st = s.until(lambda st: st["duty"] == 26.7)
        assert st["pilot"] == "B" and st["pp_ohms"] == 220
        assert s.ctl(cmd="unplug")["ok"]
        st = s.until(lambda st: st["pilot"] == "A")
        assert st["pp_ohms"] == 220
    finally:
        s.close()


def test_plug_and_ev_reach_the_mcu_and_its_pwm_reaches_the_ev(sim):
    mark = sim.mark()
    assert sim.ctl(cmd="plug", cable_a=20)["ok"]
    sim.wait_line(r'PROBE IN .*"cp": \[9000, -?\d+\].*', after=mark)
    _, m = sim.wait_line(r'PROBE IN (.*"pp": 680.*)', after=mark)
    st = sim.until(lambda st: st["duty"] == 26.7)
    assert st["pilot"] == "B" and st["offered_a"] == 16.0 and st["cp_mv"] == [9000, -12000]
    sim.wait_line(r'PROBE IN .*"cp": \[9000, -12000\].*"lock_fb": true', after=mark)
    assert sim.ctl(cmd="ev", state="C", max_a=10, phases=3)["ok"]
    st = sim.until(lambda st: st["contactor"] and st["power_w"] > 0)
    assert st["current_a"] == [10.0, 10.0, 10.0]
    assert abs(st["power_w"] - 3 * 230 * 10) < 1
    e0 = st["energy_wh"]
    sim.until(lambda st: st["energy_wh"] > e0)
    assert sim.ctl(cmd="ev", state="B")["ok"]
    st = sim.until(lambda st: not st["contactor"])
    assert st["power_w"] == 0
    evs = sim.events()
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(seqs) and all(isinstance(e["t"], int) for e in evs)
    pilot_c = first(evs, "pilot", pilot="C")
    closed = first(evs, "contactor", on=True)
    assert closed["t"] >= pilot_c["t"] and closed["seq"] > pilot_c["seq"]
    pilot_b = [e for e in evs if e["kind"] == "pilot" and e["pilot"] == "B" and e["seq"] > closed["seq"]][0]
    opened = first([e for e in evs if e["seq"] > pilot_b["seq"]], "contactor", on=False)
    assert opened["t"] - pilot_b["t"] <= 100  # IEC 61851-1 A.6: C -> B opens within 100 ms
    later = sim.ctl(cmd="events", since=opened["seq"] + 1)
    assert all(e["seq"] > opened["seq"] for e in later["events"]) and later["now"] >= opened["t"]


def test_watch_thread_opens_while_the_main_loop_is_stuck(sim):
    plug_and_charge(sim)
    mark = sim.mark()
    assert sim.ctl(cmd="tag", id="BUSY1500")["delivered"]
    sim.wait_line(r"PROBE TAG BUSY1500", after=mark)
    since = sim.ctl(cmd="events", since=0)["next"]
    assert sim.ctl(cmd="ev", state="B")["ok"]
    sim.until(lambda st: not st["contactor"])
    i, _ = sim.wait_line(r"PROBE BUSY done", after=mark)
    evs = sim.events(since)
    pilot_b = first(evs, "pilot", pilot="B")
    opened = first(evs, "contactor", on=False)
    assert opened["t"] - pilot_b["t"] <= 100
    # and it really happened while the main thread spun: the probe's main loop saw B only afterwards
    j, _ = sim.wait_line(r'PROBE IN .*"cp": \[9000, -12000\].*"contactor_fb": false', after=mark)
    assert j > i


def test_faults(sim):
    plug_and_charge(sim)
    mark = sim.mark()
    assert sim.ctl(cmd="fault", kind="rcd", on=True)["ok"]
    sim.wait_line(r'PROBE IN .*"rcd": true', after=mark)
    st = sim.until(lambda st: not st["contactor"])
    assert st["rcd"] is True
    assert sim.ctl(cmd="fault", kind="rcd", on=False)["ok"]
    sim.until(lambda st: st["contactor"])
    assert sim.ctl(cmd="fault", kind="weld", on=True)["ok"]
    assert sim.ctl(cmd="ev", state="B")["ok"]
    st = sim.until(lambda st: st["contactor_cmd"] is False)
    assert st["contactor"] is True  # welded: the contacts stay closed although the coil is off
    sim.wait_line(r'PROBE IN .*"cp": \[9000, -12000\].*"contactor_fb": true', after=mark)
    assert sim.ctl(cmd="fault", kind="weld", on=False)["ok"]
    assert sim.until(lambda st: True)["contactor"] is False
    assert sim.ctl(cmd="fault", kind="diode", on=True)["ok"]
    assert sim.status()["cp_mv"] == [9000, 0]
    assert sim.ctl(cmd="fault", kind="diode", on=False)["ok"]
    mark = sim.mark()
    assert sim.ctl(cmd="fault", kind="cp_short", on=True)["ok"]
    st = sim.status()
    assert st["pilot"] == "E" and st["cp_mv"] == [0, 0] and st["offered_a"] == 0
    sim.wait_line(r'PROBE IN .*"cp": \[0, 0\]', after=mark)
    assert sim.ctl(cmd="fault", kind="cp_short", on=False)["ok"]
    # the short made the probe unlock (no pilot: no cable as it sees it); locked again before the lock fault, or
    # the fault would hold it open
    sim.until(lambda st: st["locked"])
    # lock fault: the lock stays where it is when commanded
    assert sim.ctl(cmd="fault", kind="lock", on=True)["ok"]
    assert sim.ctl(cmd="unplug")["ok"]
    st = sim.until(lambda st: st["lock_cmd"] is False)
    time.sleep(0.3)
    assert sim.status()["locked"] is True
    assert sim.ctl(cmd="fault", kind="lock", on=False)["ok"]
    sim.until(lambda st: st["locked"] is False)


def test_limit_block_and_ignore_pwm_commands(sim):
    mark = sim.mark()
    assert sim.ctl(cmd="limit", a=6)["ok"]
    sim.wait_line(r'PROBE LIMIT 60$', after=mark)
    assert sim.status()["limit_a"] == 6.0
    assert sim.ctl(cmd="limit", a=None)["ok"]
    sim.wait_line(r'PROBE LIMIT None$', after=mark)
    for bad in ({"a": -1}, {"a": 81}, {"a": "6"}, {}):
        assert not sim.ctl(cmd="limit", **bad)["ok"], bad
    since = sim.ctl(cmd="events", since=0)["next"]
    assert sim.ctl(cmd="mcu", block_ms=300)["delivered"]
    sim.wait_line(r"PROBE BLOCK 300", after=mark)
    # the MCU prints the line and sends its "blocking" ack over the socket: either may arrive first
    block = sim.until_event(since, "block", ms=300)
    assert block["t"] >= first(sim.events(since), "mcu", state="block")["t"]
    for bad in ({"block_ms": 0}, {"block_ms": "5"}, {"block_ms": True}, {}):
        assert not sim.ctl(cmd="mcu", **bad)["ok"], bad
    # An EV that ignores the duty draws its max_a; a normal one follows the 16 A the probe offers.
    plug_and_charge(sim)
    assert sim.ctl(cmd="ev", max_a=25)["ok"]
    assert sim.status()["current_a"][0] == 16.0
    assert sim.ctl(cmd="ev", ignore_pwm=True)["ok"]
    st = sim.status()
    assert st["current_a"][0] == 25.0 and st["ignore_pwm"] is True
    assert not sim.ctl(cmd="ev", ignore_pwm="yes")["ok"]
    assert sim.ctl(cmd="ev", ignore_pwm=False)["ok"]
    assert sim.status()["current_a"][0] == 16.0


def test_meter_poll_over_the_pty_and_meter_fault(sim):
    if not (ROOT / "tools" / "virtual_meter.py").exists() or not (ROOT / "lib" / "modbus.py").exists():
        pytest.skip("virtual meter or lib/modbus.py not written yet")
    mark = sim.mark()
    assert sim.ctl(cmd="tag", id="METER")["delivered"]
    sim.wait_line(r"PROBE METER ok 4", after=mark)
    assert sim.ctl(cmd="fault", kind="meter", on=True)["ok"]
    mark = sim.mark()
    assert sim.ctl(cmd="tag", id="METER")["ok"]
    sim.wait_line(r"PROBE METER fail", after=mark)


def test_meter_command_shifts_and_sets_the_energy_register(sim):
    # What the MCU reads over Modbus follows the command; the status tells the shift apart from real energy.
    mark = sim.mark()
    r = sim.ctl(cmd="meter", energy_wh=5000)
    assert r["ok"] and r["energy_wh"] == 5000
    assert sim.ctl(cmd="tag", id="ENERGY")["delivered"]
    sim.wait_line(r"PROBE ENERGY 5000$", after=mark)
    mark = sim.mark()
    r = sim.ctl(cmd="meter", add_wh=-1500)
    assert r["ok"] and r["energy_wh"] == 3500
    assert sim.ctl(cmd="tag", id="ENERGY")["delivered"]
    sim.wait_line(r"PROBE ENERGY 3500$", after=mark)
    mark = sim.mark()
    assert sim.ctl(cmd="meter", add_wh=250.5)["energy_wh"] == 3750.5
    assert sim.ctl(cmd="tag", id="ENERGY")["delivered"]
    sim.wait_line(r"PROBE ENERGY 3750$", after=mark)
    st = sim.status()
    assert st["energy_wh"] == 3750.5
    assert st["meter_shift_wh"] == st["energy_wh"] - 1234567  # no energy flowed: all of the change is shift
    kinds = [e for e in sim.events() if e["kind"] == "meter"]
    assert [e["shift_wh"] for e in kinds] == [5000 - 1234567, -1500, 250.5]
    for bad in ({}, {"add_wh": "5"}, {"add_wh": True}, {"energy_wh": -1}, {"add_wh": -10 ** 9},
                {"add_wh": 1, "energy_wh": 2}, {"energy_wh": None}):
        r = sim.ctl(cmd="meter", **bad)
        assert r["ok"] is False and r["error"], (bad, r)
    assert sim.status()["energy_wh"] == 3750.5  # a refused command changes nothing


def test_tags_reset_and_crash_restart(sim):
    mark = sim.mark()
    assert sim.ctl(cmd="tag", id="04A1B2C3")["delivered"] is True
    sim.wait_line(r"^\[mcu\] PROBE TAG 04A1B2C3$", after=mark)
    pid = sim.status()["mcu_pid"]
    assert sim.ctl(cmd="tag", id="RESET")["ok"]
    i, _ = sim.wait_line(r"^\[sim\] MCU reboot$", after=mark)
    sim.wait_line(r"^\[mcu\] PROBE START", after=i)
    assert not alive(pid) and sim.status()["mcu_pid"] != pid
    mark = sim.mark()
    assert sim.ctl(cmd="tag", id="THREADRESET")["ok"]  # reset() from a thread: the sim completes it
    i, _ = sim.wait_line(r"^\[sim\] MCU reboot$", after=mark)
    sim.wait_line(r"^\[mcu\] PROBE START", after=i)
    mark = sim.mark()
    assert sim.ctl(cmd="tag", id="EXIT5")["ok"]
    i, _ = sim.wait_line(r"^\[sim\] MCU exited with 5$", after=mark)
    sim.wait_line(r"^\[mcu\] PROBE START", after=i)
    evs = sim.events()
    exit5 = first(evs, "mcu", state="exit", rc=5)
    again = first([e for e in evs if e["seq"] > exit5["seq"]], "mcu", state="start")
    assert again["t"] - exit5["t"] >= 1000  # a crashed MCU comes back after the watchdog-like pause


def test_power_off_kills_and_power_on_boots(sim):
    plug_and_charge(sim)
    pid = sim.status()["mcu_pid"]
    assert alive(pid)
    r = sim.ctl(cmd="power", on=False)
    assert r["ok"]
    st = sim.status()
    assert st["powered"] is False and st["mcu_pid"] is None and st["contactor"] is False
    assert st["offered_a"] == 0
    assert not alive(pid)
    assert sim.ctl(cmd="tag", id="LOST")["delivered"] is False
    time.sleep(0.3)
    assert sim.status()["mcu_pid"] is None  # stays off until power comes back
    mark = sim.mark()
    assert sim.ctl(cmd="power", on=True)["ok"]
    sim.wait_line(r"^\[mcu\] PROBE START", after=mark)
    st = sim.until(lambda st: st["contactor"])  # the EV is still in C: the probe closes again
    assert st["powered"] is True and st["mcu_pid"] not in (None, pid)
    kinds = [(e["kind"], e.get("on")) for e in sim.events() if e["kind"] == "power"]
    assert kinds == [("power", False), ("power", True)]


def test_bad_requests_get_errors(sim):
    for req in ({"cmd": "nope"}, {"cmd": "ev", "state": "X"}, {"cmd": "fault", "kind": "fire", "on": True},
                {"cmd": "plug", "cable_a": 40}, {"cmd": "tag"}, {"cmd": "power"}, {"no": "cmd"}):
        r = sim.ctl(**req)
        assert r["ok"] is False and isinstance(r["error"], str) and r["error"], (req, r)
    sim.sock.sendall(b"this is not json\n")
    r = json.loads(sim.rfile.readline())
    assert r["ok"] is False and "JSON" in r["error"]
    assert sim.status()["pilot"] == "A"  # the socket survived the bad lines


def test_sigterm_stops_everything(tmp_path):
    s = start(tmp_path)
    try:
        pid = s.status()["mcu_pid"]
        assert alive(pid)
        s.sock.close()
        s.sock = None
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(10) == 0
        assert not alive(pid)
        assert pids_mentioning(str(s.state_dir)) == []
    finally:
        s.close()
