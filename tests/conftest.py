"""Shared pytest fixtures: the demo Central System (tools/csms.py) and the virtual board (tools/sim.py) as
child processes, each driven through its JSON-lines control socket.

    def test_boot(csms_factory, sim_factory):
        csms = csms_factory()
        sim = sim_factory(csms.url)
        boot = csms.wait_for("BootNotification", cp="CP1")

Every process a factory starts is stopped at teardown, also when the test fails; a failing test's report gets
the last lines of each process's output.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv", "bin", "python")
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
TAIL_LINES = 80
# Debian puts the broker in /usr/sbin, which a non-root PATH may lack
MOSQUITTO = shutil.which("mosquitto", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")

sys.path.insert(0, os.path.join(ROOT, "tools"))


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(fn, timeout=30, interval=0.1, msg=""):
    """Poll fn until it returns something truthy; return that value or fail with msg."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %s s waiting for %s" % (timeout, msg or fn))
        time.sleep(interval)


def json_request(port, req, timeout):
    """One JSON-lines request/reply on 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("control socket closed without a reply to %r" % (req,))
            buf += chunk
    return json.loads(buf)


class CallErrorReply(AssertionError):
    """The charge point answered a CALL with a CALLERROR (or the CSMS could not deliver it)."""


class ChildProcess:
    """A tool started with stdout+stderr captured line by line by a reader thread."""

    name = "process"
    ready_pattern = None

    def __init__(self):
        self.proc = None
        self.lines = []
        self._reader = None

    def _spawn(self, argv, env=None, timeout=30):
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self.cmdline = argv
        since = len(self.lines)  # before the reader starts: a fast tool's ready line may come at once
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     errors="replace", bufsize=1, start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        try:
            return self.wait_line(self.ready_pattern, timeout=timeout, since=since)
        except AssertionError:
            self._terminate(2)
            raise AssertionError("%s did not start: %s\n%s" % (self.name, " ".join(argv), self.tail()))

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, regex, timeout=30, since=0):
        """First match of regex in the output lines from index since on; waits for it to appear."""
        pattern = re.compile(regex)

        def find():
            for line in self.lines[since:]:
                m = pattern.search(line)
                if m:
                    return m
            if self.proc is not None and self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError("%s exited (code %s) while waiting for /%s/\n%s"
                                     % (self.name, self.proc.returncode, regex, self.tail()))
            return None

        return wait_until(find, timeout, 0.05, "/%s/ in %s output" % (regex, self.name))

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _terminate(self, grace):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                # The tool's children share its session: take them down with it.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)
        self.proc.stdout.close()

    def tail(self, n=TAIL_LINES):
        return "\n".join(self.lines[-n:])


class CsmsProc(ChildProcess):
    """tools/csms.py as a child process. messages() accumulates across restarts (indexes stay valid)."""

    name = "csms"
    ready_pattern = r"^CSMS READY url=(\S+) control=127\.0\.0\.1:(\d+)"

    def __init__(self, port=None, tls=False, pki=None, auth=None, tags=("TAG1",), boot_status="Accepted",
                 interval=300, extra_args=()):
        super().__init__()
        # Port 0 on the first start: the tool binds a free port itself and names it in its ready line (a port
        # picked here and freed again could be taken by a parallel test before the tool binds it). A restart
        # keeps both: the charger knows the WebSocket port, the test the control port.
        self.port = port or 0
        self.control_port = 0
        self.tls = tls
        self.pki = pki
        self.auth = dict(auth or {})
        self.tags = tuple(tags)
        self.boot_status = boot_status
        self.interval = interval
        self.extra_args = tuple(extra_args)
        self._tmp = tempfile.mkdtemp(prefix="csms-")
        self.log_path = os.path.join(self._tmp, "csms.jsonl")
        self._msgs = []
        self._since = 0
        if tls and pki is None:
            from pki import make_pki
            self.pki = make_pki(os.path.join(self._tmp, "pki"))

    @property
    def url(self):
        return "%s://127.0.0.1:%d/ocpp" % ("wss" if self.tls else "ws", self.port)

    @property
    def cafile(self):
        return self.pki["ca"] if self.pki else None

    @property
    def output(self):
        return self.lines

    def argv(self):
        argv = [PY, os.path.join(ROOT, "tools", "csms.py"), "--port", str(self.port),
                "--control", str(self.control_port), "--log", self.log_path,
                "--tags", ",".join(self.tags), "--boot-status", self.boot_status,
                "--interval", str(self.interval)]
        if self.tls:
            argv += ["--certfile", self.pki["server_cert"], "--keyfile", self.pki["server_key"]]
        if self.auth:
            argv += ["--auth"] + ["%s:%s" % kv for kv in self.auth.items()]
        return argv + list(self.extra_args)

    def start(self):
        self._since = 0
        ready = self._spawn(self.argv())
        self.port = int(ready.group(1).rsplit(":", 1)[1].split("/", 1)[0])
        self.control_port = int(ready.group(2))
        return self

    def stop(self):
        if self.running:
            try:
                self._fetch()
            except (OSError, ValueError):
                pass   # the output tail tells what happened to it
        self._terminate(10)

    def close(self):
        """stop() and delete the temporary files (log, generated PKI)."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def restart(self):
        self.stop()
        return self.start()

    def control(self, cmd, timeout=None):
        wait = float(cmd.get("timeout", 10)) + 10 if timeout is None else timeout
        return json_request(self.control_port, cmd, wait)

    def _fetch(self):
        reply = self.control({"cmd": "messages", "since": self._since})
        self._msgs.extend(reply["messages"])
        self._since = reply["next"]

    def messages(self, cp=None):
        """Every frame logged since the first start: dicts t, cp, dir ("in"/"out"), raw, msg."""
        if self.running:
            self._fetch()
        return [m for m in self._msgs if cp is None or m["cp"] == cp]

    def calls(self, action, cp=None, direction="in", since=0):
        """Payloads of the CALLs with this action (index since into messages() to skip older ones)."""
        out = []
        for m in self.messages(cp)[since:]:
            msg = m["msg"]
            if (m["dir"] == direction and msg and len(msg) > 3 and msg[0] == 2 and msg[2] == action):
                out.append(msg[3])
        return out

    def wait_for(self, action, cp=None, direction="in", count=1, timeout=30, where=None, since=0):
        """The count-th payload of a matching CALL (where: predicate on the payload), waiting for it."""
        def found():
            hits = [p for p in self.calls(action, cp, direction, since) if where is None or where(p)]
            return (hits[count - 1],) if len(hits) >= count else None  # a tuple: {} payloads are falsy

        desc = "%d x %s (%s, cp=%s)" % (count, action, direction, cp)
        return wait_until(lambda: found(), timeout, 0.1, desc)[0]

    def connected(self):
        return self.control({"cmd": "connected"})["cps"]

    def call(self, cp, action, payload, timeout=30, validate=True):
        """The CALLRESULT payload; raises CallErrorReply on a CALLERROR, timeout or invalid result.
        validate=False sends a payload the ocpp package's schemas would refuse."""
        reply = self.control({"cmd": "call", "cp": cp, "action": action, "payload": payload,
                              "timeout": timeout, "validate": validate})
        if not reply["ok"]:
            raise CallErrorReply("%s to %s: %s" % (action, cp, reply["error"]))
        return reply["result"]

    def raw(self, cp, text, timeout=10):
        reply = self.control({"cmd": "raw", "cp": cp, "text": text, "timeout": timeout})
        assert reply["ok"], reply
        return reply["reply"]

    def set(self, **settings):
        reply = self.control(dict(settings, cmd="set"))
        assert reply["ok"], reply
        return reply


class SimProc(ChildProcess):
    """tools/sim.py (the virtual board running the firmware) as a child process."""

    name = "sim"
    ready_pattern = r"SIM READY control=127\.0\.0\.1:(\d+)"

    def __init__(self, csms_url, cp_id="CP1", state_dir=None, password=None, cafile=None, meter="SDM630",
                 variant="socket", heap="110wK", env=None, settings=None):
        super().__init__()
        self.settings = dict(settings or {})  # further device settings: --set NAME=VALUE
        self.csms_url = csms_url
        self.cp_id = cp_id
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="sim-%s-" % cp_id)
        self.password = password
        self.cafile = cafile
        self.meter = meter
        self.variant = variant
        self.heap = heap
        self.env = env
        self.control_port = None
        self.name = "sim %s" % cp_id

    def argv(self):
        argv = [PY, os.path.join(ROOT, "tools", "sim.py"), "--csms", self.csms_url, "--id", self.cp_id,
                "--state", self.state_dir, "--control", str(self.control_port),
                "--meter", self.meter, "--variant", self.variant, "--heap", self.heap]
        if self.password is not None:
            argv += ["--password", self.password]
        if self.cafile:
            argv += ["--cafile", self.cafile]
        for name, value in self.settings.items():
            argv += ["--set", "%s=%s" % (name, value)]
        return argv

    def start(self):
        os.makedirs(self.state_dir, exist_ok=True)
        self.control_port = 0  # the sim binds a free port and names it in its ready line
        ready = self._spawn(self.argv(), env=self.env)
        self.control_port = int(ready.group(1))
        return self

    def stop(self):
        self._terminate(10)

    def cmd(self, req, check=True, timeout=30):
        reply = json_request(self.control_port, req, timeout)
        if check:
            assert reply.get("ok"), "sim command %r failed: %r" % (req, reply)
        return reply

    def status(self):
        return self.cmd({"cmd": "status"})


class MosquittoProc(ChildProcess):
    """Debian's mosquitto broker on 127.0.0.1 with a password file and no anonymous access: a plain listener
    (port) and a TLS one (tls_port) whose certificate pki["ca"] signed (tools/pki.py). pause()/resume() freeze
    and thaw it (SIGSTOP/SIGCONT): a broker that holds its connections open but answers nothing."""

    name = "mosquitto"
    ready_pattern = r"mosquitto version \S+ running"

    def __init__(self, pki, users=None):
        super().__init__()
        self.pki = pki
        self.users = dict(users or {"evse": "secret"})
        self.port = free_port()
        self.tls_port = free_port()
        self._tmp = tempfile.mkdtemp(prefix="mosquitto-")
        self.conf = os.path.join(self._tmp, "mosquitto.conf")

    def start(self):
        passwd = os.path.join(self._tmp, "passwd")
        for i, (user, password) in enumerate(self.users.items()):
            subprocess.run(["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) + [passwd, user, password],
                           check=True, capture_output=True)
        with open(self.conf, "w") as f:
            f.write("\n".join([
                "per_listener_settings false", "allow_anonymous false", "password_file " + passwd,
                # as root it would switch to user mosquitto, who cannot read our files; stderr: stdout is
                # block-buffered into a pipe, so the ready line would only come at exit
                "persistence false", "user root",
                "log_dest stderr", "log_type error", "log_type warning", "log_type notice", "log_type information",
                "listener %d 127.0.0.1" % self.port,
                "listener %d 127.0.0.1" % self.tls_port,
                "certfile " + self.pki["server_cert"], "keyfile " + self.pki["server_key"], ""]))
        self._spawn([MOSQUITTO, "-c", self.conf])
        return self

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.running:
            self.resume()  # a stopped process would not see SIGTERM
        self._terminate(10)

    def close(self):
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)


def _register(request, proc):
    request.node.__dict__.setdefault("_ev_procs", []).append(proc)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    from pki import make_pki
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def csms_factory(request):
    """csms_factory(**CsmsProc kwargs) -> a started CsmsProc; all are stopped at teardown."""
    procs = []

    def make(**kwargs):
        proc = CsmsProc(**kwargs)
        procs.append(proc)
        _register(request, proc)
        return proc.start()

    try:
        yield make
    finally:
        _stop_all(procs)


@pytest.fixture
def sim_factory(request, tmp_path):
    """sim_factory(csms_url, **SimProc kwargs) -> a started SimProc (state dir under tmp_path by default)."""
    procs = []

    def make(csms_url, **kwargs):
        cp_id = kwargs.get("cp_id", "CP1")
        kwargs.setdefault("state_dir", str(tmp_path / ("state-%s-%d" % (cp_id, len(procs)))))
        proc = SimProc(csms_url, **kwargs)
        procs.append(proc)
        _register(request, proc)
        return proc.start()

    try:
        yield make
    finally:
        _stop_all(procs)


@pytest.fixture
def mosquitto_factory(request, pki):
    """mosquitto_factory(users={"evse": "secret"}) -> a started MosquittoProc (.port, .tls_port, .pki["ca"]);
    all are stopped at teardown. Needs Debian's mosquitto (Makefile APT_PACKAGES)."""
    if not MOSQUITTO:
        pytest.fail("mosquitto is not installed: `make deps` installs it (apt-get install mosquitto)")
    procs = []

    def make(**kwargs):
        proc = MosquittoProc(pki, **kwargs)
        procs.append(proc)
        _register(request, proc)
        return proc.start()

    try:
        yield make
    finally:
        _stop_all(procs)


def _stop_all(procs):
    errors = []
    for proc in reversed(procs):
        try:
            getattr(proc, "close", proc.stop)()
        except Exception as e:  # noqa: BLE001 - stop the others regardless
            errors.append("%s: %r" % (proc.name, e))
    if errors:
        raise RuntimeError("could not stop: " + "; ".join(errors))


def pytest_configure(config):
    config.addinivalue_line("markers", "long: a test that takes tens of seconds; scheduled first so that the "
                            "parallel workers finish together")


def pytest_sessionstart(session):
    # Build the firmware once, in the controller, before any worker starts a simulator: every sim builds too
    # (incrementally), and parallel first builds would compile each module once per worker.
    if hasattr(session.config, "workerinput"):
        return
    import build
    out, _ = build.build(os.path.join(ROOT, "build", "unix"))
    build.romfs(out)


DURATIONS = os.path.join(ROOT, "tests", "durations.json")


def pytest_addoption(parser):
    parser.addoption("--save-durations", action="store_true",
                     help="record each test's time (setup + call) into tests/durations.json, merged with what is there")


def _durations():
    try:
        with open(DURATIONS) as f:
            table = json.load(f)
        return {k: float(v) for k, v in table.items()} if isinstance(table, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}  # a missing or damaged table only loses the ordering


def pytest_collection_modifyitems(session, config, items):
    # Longest first (times of an earlier run, tests/durations.json), so that the parallel workers finish
    # together instead of one starting a 90 s test at the end; tests not in the table go by their "long" mark.
    # Every worker sorts the same way, as xdist requires.
    times = _durations()
    items.sort(key=lambda item: -times.get(item.nodeid, 30.0 if item.get_closest_marker("long") else 0.0))


_measured = {}


def pytest_runtest_logreport(report):
    if report.when in ("setup", "call"):
        _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    if not session.config.getoption("--save-durations") or hasattr(session.config, "workerinput"):
        return
    table = _durations()
    table.update({k: round(v, 1) for k, v in _measured.items()})
    with open(DURATIONS, "w") as f:
        json.dump(dict(sorted(table.items())), f, indent=0)
        f.write("\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the output tails of the test's CSMS and sims to a failure report, so CI logs say why."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for proc in item.__dict__.get("_ev_procs", []):
        rep.sections.append(("%s output (last %d lines)" % (proc.name, TAIL_LINES), proc.tail()))
