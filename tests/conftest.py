"""Shared pytest fixtures: the demo Central System (tools/csms.py) and the virtual board (tools/sim.py) as
child processes, each driven through its JSON-lines control socket by the harness (tools/harness/).

    def test_boot(csms_factory, sim_factory):
        csms = csms_factory()
        sim = sim_factory(csms.url)
        boot = csms.wait_for("BootNotification", cp="CP1")

Every process a factory starts is stopped at teardown, also when the test fails; a failing test's report gets
the last lines of each process's output.
"""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from harness import PY, ROOT  # noqa: E402,F401  (re-exported: the tests import them from here)
from harness.csms import CallErrorReply, CsmsProc  # noqa: E402,F401
from harness.proc import TAIL_LINES, ChildProcess, free_port, json_request, wait_until  # noqa: E402,F401
from harness.sim import Sim  # noqa: E402

MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
# Debian puts the broker in /usr/sbin, which a non-root PATH may lack
MOSQUITTO = shutil.which("mosquitto", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")


SimProc = Sim  # the blocking simulator driver, under the name the tests know


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


@pytest.fixture(scope="session")
def ota_keys(tmp_path_factory):
    """Two OTA vendor key pairs made by otapack.keygen, {"vendor": (private PEM, public JSON), "other": ...}:
    made once per run and shared by the parallel workers (read them, never write), since an RSA-3072 key costs
    the better part of a second of CPU and the update tests' fixtures would otherwise make two in every worker."""
    import otapack
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above each worker's own
    keys = root / "ota-keys"
    with open(str(root / "ota-keys.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker makes them; the others wait and read
        if not (keys / "made").exists():
            for name in ("vendor", "other"):
                otapack.keygen(str(keys / name))
            (keys / "made").write_text("")
    return {name: (str(keys / name / otapack.PRIVATE_NAME), str(keys / name / otapack.PUBLIC_NAME))
            for name in ("vendor", "other")}


@contextlib.contextmanager
def process_pool(request):
    """start(proc): proc started, its output tail in a failing test's report; every one stopped at the end
    (closed, where it has temporary files). start.procs lists them."""
    procs = []

    def start(proc):
        procs.append(proc)
        _register(request, proc)
        return proc.start()

    start.procs = procs
    try:
        yield start
    finally:
        _stop_all(procs)


@pytest.fixture
def csms_factory(request):
    """csms_factory(**CsmsProc kwargs) -> a started CsmsProc; all are stopped at teardown."""
    with process_pool(request) as start:
        yield lambda **kwargs: start(CsmsProc(**kwargs))


@pytest.fixture
def sim_factory(request, tmp_path):
    """sim_factory(csms_url, **SimProc kwargs) -> a started SimProc (state dir under tmp_path by default)."""
    with process_pool(request) as start:
        def make(csms_url, **kwargs):
            cp_id = kwargs.get("cp_id", "CP1")
            kwargs.setdefault("state_dir", str(tmp_path / ("state-%s-%d" % (cp_id, len(start.procs)))))
            return start(SimProc(csms_url, **kwargs))
        yield make


@pytest.fixture
def mosquitto_factory(request, pki):
    """mosquitto_factory(users={"evse": "secret"}) -> a started MosquittoProc (.port, .tls_port, .pki["ca"]);
    all are stopped at teardown. Needs Debian's mosquitto (Makefile APT_PACKAGES)."""
    if not MOSQUITTO:
        pytest.fail("mosquitto is not installed: `make deps` installs it (apt-get install mosquitto)")
    with process_pool(request) as start:
        yield lambda **kwargs: start(MosquittoProc(pki, **kwargs))


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
    # xdist hands each worker its first two tests at once (`--maxschedchunk 1`, the Makefile), the rest one by
    # one as they finish: pair each of the longest tests with one of the shortest, or one worker would start
    # with the two longest back to back.
    workers = getattr(config, "workerinput", {}).get("workercount", 0)
    if workers and len(items) >= 4 * workers:
        longest, shortest = items[:workers], items[-workers:]
        items[:] = [t for pair in zip(longest, shortest) for t in pair] + items[workers:-workers]


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
