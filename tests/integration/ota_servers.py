"""Real file servers for the update and diagnostics tests, each on its own free port: Python's http.server over
HTTP or HTTPS (tools/pki.py certificates) and pyftpdlib, plus the MicroPython probe (ota_probe.py) and a flash
directory laid out as `make deploy` leaves a board (tools/otapack.py slot --activate)."""
import os
import pathlib
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

import otapack
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
PROBE = pathlib.Path(__file__).resolve().parent / "ota_probe.py"


class Handler(BaseHTTPRequestHandler):
    """GET /files/NAME (Content-Length), /slow/NAME (1 KB every few ms), /truncated/NAME (half, then hang up),
    anything else 404. PUT/POST /upload/NAME stores the body; /fail/... answers 500; /noput/NAME refuses PUT
    with 405 and takes POST."""

    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _send(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.command, self.path, time.time()))
        parts = self.path.split("/")
        kind, name = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
        p = srv.root / name
        if not name or not p.is_file() or kind not in ("files", "slow", "truncated"):
            return self._send(404, b"no such file\n")
        data = p.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if kind == "files":
            self.wfile.write(data)
        elif kind == "truncated":
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            try:
                for i in range(0, len(data), 1024):
                    self.wfile.write(data[i:i + 1024])
                    self.wfile.flush()
                    srv.sent = i + 1024
                    time.sleep(srv.delay)
            except OSError:  # the board lost its power mid-download (the power-cut tests)
                self.close_connection = True

    def _upload(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        srv = self.server
        srv.requests.append((self.command, self.path, time.time()))
        if self.path.startswith("/fail/"):
            return self._send(500, b"disk full\n")
        if self.path.startswith("/noput/") and self.command == "PUT":
            return self._send(405, b"", [("Allow", "POST")])
        srv.uploads[self.path] = (self.command, self.headers.get("Content-Type"), body)
        self._send(201, b"stored\n")

    do_PUT = _upload
    do_POST = _upload


class HTTPServers:
    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.servers = []

    def start(self, cert=None, key=None, delay=0.004):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        srv.root, srv.requests, srv.uploads, srv.delay, srv.sent = self.root, [], {}, delay, 0
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        self.servers.append((srv, t))
        return srv, srv.server_address[1]

    def stop(self):
        for srv, t in self.servers:
            srv.shutdown()
            srv.server_close()
            t.join(10)


class FTPServers:
    """Users: fw/fw-pass (read-only, the files directory), up/up-pass (writes into the upload directory)."""

    def __init__(self, root, upload_dir):
        self.root, self.upload_dir = str(root), str(upload_dir)
        self.running = []

    def start(self):
        auth = DummyAuthorizer()
        auth.add_user("fw", "fw-pass", self.root, perm="elr")
        auth.add_user("up", "up-pass", self.upload_dir, perm="elradfmw")
        handler = type("Handler", (FTPHandler,), {"authorizer": auth, "banner": "test ftpd ready"})
        srv = FTPServer(("127.0.0.1", 0), handler, ioloop=IOLoop())
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                srv.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
            srv.close_all()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        self.running.append((stop, t))
        return srv.address[1]

    def stop(self):
        for stop, t in self.running:
            stop.set()
            t.join(10)


def lay_out_flash(flash, old_package, pub_path, tree):
    """A board's flash as make deploy leaves it: boot.py, main.py and slotboot.mpy at the root, the vendor key,
    slot a holding old_package and active."""
    flash = pathlib.Path(flash)
    flash.mkdir(parents=True, exist_ok=True)
    for name in ("boot.py", "main.py", "slotboot.mpy"):
        shutil.copy2(os.path.join(tree, name), flash / name)
    shutil.copy2(pub_path, flash / otapack.PUBLIC_NAME)
    pub, _ = otapack.load_public(pub_path)
    otapack.write_slot(old_package, pub, str(flash / "slots" / "a"), activate=True)
    return flash


def probe_cmd(flash, op, *args, heap="110wK"):
    return [str(MICROPYTHON), "-X", "heapsize=" + heap, str(PROBE), str(flash), op, *[str(a) for a in args]]


def probe_env(flash):
    # the flash directory is the board's file system: slotboot.mpy at its root, the firmware in its slots
    return dict(os.environ, MICROPYPATH=".frozen:%s" % flash)


def run_probe(flash, op, *args, heap="110wK", timeout=180):
    r = subprocess.run(probe_cmd(flash, op, *args, heap=heap), cwd=str(flash), env=probe_env(flash),
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def statuses(out):
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("STATUS ")]


def booted(out):
    """(slot, version) from the probe's BOOT line."""
    for line in out.splitlines():
        if line.startswith("BOOT "):
            _, slot, version = line.split(" ", 2)
            return slot, version
    raise AssertionError("no BOOT line:\n" + out)


# Fixtures of the update tests (test_ota_update.py, test_fw_management.py), over the module's own `kit` fixture:
# {"tree", "pub", "old" (the package of slot a), "files" (what the servers serve)}.
@pytest.fixture
def flash(kit, tmp_path):
    return lay_out_flash(tmp_path / "flash", kit["old"], kit["pub"], kit["tree"])


@pytest.fixture
def web(kit):
    s = HTTPServers(kit["files"])
    try:
        yield s
    finally:
        s.stop()
