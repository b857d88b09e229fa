"""A tool run as a child process, its stdout+stderr captured line by line; waits on conditions, blocking or async."""
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from harness import ROOT

TAIL_LINES = 80


class WaitTimeout(AssertionError, TimeoutError):
    """A condition that did not come in time: a failed assertion to pytest, a TimeoutError to the tools."""


class ProcessFailed(AssertionError, RuntimeError):
    """The process did not start, or ended while something waited on its output."""


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Below Linux's ephemeral range (32768-60999): a server that is restarted on the same port must not find it
# taken by some other process's outgoing connection or port-0 listener in between, which in the ephemeral range
# happens under parallel tests. Ports from here are only ever chosen by stable_port().
_STABLE_PORTS = (20000, 32767)


def stable_port():
    """A free port on 127.0.0.1 outside the ephemeral range, for a server that is restarted on the same port."""
    import random
    while True:
        port = random.randint(*_STABLE_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def wait_until(fn, timeout=30, interval=0.1, msg=""):
    """Poll fn until it returns something truthy; return that value or fail with msg."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout("timed out after %s s waiting for %s" % (timeout, msg or fn))
        time.sleep(interval)


async def measure(res, name, fn, log):
    """res[name] = await fn(), timed and logged; an exception is kept as res[name + "_error"], so that one broken
    run does not lose the others (bench's measurements, torture's campaigns)."""
    t = time.monotonic()
    log("%s ..." % name)
    try:
        res[name] = await fn()
    except Exception as e:  # noqa: BLE001 - report it and go on with the other runs
        res[name + "_error"] = "%s: %s" % (type(e).__name__, str(e)[:2000])
        log("  %s failed: %s" % (name, e))
    log("  %s took %.0f s" % (name, time.monotonic() - t))


async def until(fn, timeout=30, interval=0.05, msg=""):
    """wait_until for a coroutine: fn may be a plain function or return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout("timed out after %s s waiting for %s" % (timeout, (msg() if callable(msg) else msg)
                                                                          or fn))
        await asyncio.sleep(interval)


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


class ChildProcess:
    """A tool started with stdout+stderr captured by a reader thread: lines[i] arrived at stamps[i]
    (time.monotonic()). echo, when set, is called from that thread with each line as it comes and with None
    when the output ends (`make sim` shows them live)."""

    name = "process"
    ready_pattern = None

    def __init__(self):
        self.proc = None
        self.lines = []
        self.stamps = []
        self.echo = None
        self._reader = None

    def _launch(self, argv, env=None):
        """Starts the process; the index of its first line."""
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self.cmdline = argv
        since = len(self.lines)  # before the reader starts: a fast tool's ready line may come at once
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     errors="replace", bufsize=1, start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        return since

    def _spawn(self, argv, env=None, timeout=30):
        """Starts the process and waits for its ready line (the match)."""
        since = self._launch(argv, env)
        try:
            return self.wait_line(self.ready_pattern, timeout=timeout, since=since)
        except AssertionError:
            self._terminate(2)
            raise ProcessFailed("%s did not start: %s\n%s" % (self.name, " ".join(argv), self.tail()))

    def _read(self, proc):
        for line in proc.stdout:
            self.stamps.append(time.monotonic())  # first: a line that can be seen has its stamp
            self.lines.append(line.rstrip("\n"))
            if self.echo is not None:
                self.echo(self.lines[-1])
        if self.echo is not None:
            self.echo(None)

    def timed(self, since=0):
        """(arrival time, line) of the output lines from index since on."""
        return list(zip(self.stamps[since:], self.lines[since:]))

    def _find(self, pattern, since):
        for line in self.lines[since:]:
            m = pattern.search(line)
            if m:
                return m
        if self.proc is not None and self.proc.poll() is not None and not self._reader.is_alive():
            raise ProcessFailed("%s exited (code %s) while waiting for /%s/\n%s"
                                 % (self.name, self.proc.returncode, pattern.pattern, self.tail()))
        return None

    def wait_line(self, regex, timeout=30, since=0):
        """First match of regex in the output lines from index since on; waits for it to appear."""
        pattern = re.compile(regex)
        return wait_until(lambda: self._find(pattern, since), timeout, 0.05, "/%s/ in %s output" % (regex, self.name))

    async def await_line(self, regex, timeout=30, since=0):
        """wait_line without blocking the event loop."""
        pattern = re.compile(regex)
        return await until(lambda: self._find(pattern, since), timeout, 0.02,
                           lambda: "/%s/ in %s output:\n%s" % (regex, self.name, self.tail(40)))

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


def run_cancellable(name, run_all, args, t0):
    """asyncio.run(run_all(args, log)) that SIGTERM/SIGINT cancel cleanly (the finally blocks stop the sims);
    None when cancelled. log prints "[name Ns] msg" to stderr."""
    def log(msg):
        print("[%s %4.0fs] %s" % (name, time.monotonic() - t0, msg), file=sys.stderr, flush=True)

    async def guarded():
        task = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        return await run_all(args, log)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        return None
