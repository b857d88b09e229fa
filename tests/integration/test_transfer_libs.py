"""lib/http.py and lib/ftp.py inside the MicroPython unix port (110wK heap) against real servers on 127.0.0.1:
Python's http.server over HTTP and HTTPS (tools/pki.py certificates) and pyftpdlib, each started by the test on
free ports. The MicroPython side (transfer_probe.py) hashes what it streams; the test compares byte for byte."""
import base64
import hashlib
import os
import pathlib
import re
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

import pki

ROOT = pathlib.Path(__file__).resolve().parents[2]
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
PROBE = pathlib.Path(__file__).resolve().parent / "transfer_probe.py"
SIZE = 300 * 1024
USER, PASSWORD = "fw", "p@ss:w0rd/%"
PASSWORD_IN_URL = "p%40ss%3Aw0rd%2F%25"


def run_probe(op, url, *args, heap="110wK", timeout=120):
    env = dict(os.environ, MICROPYPATH=".frozen:%s:%s" % (ROOT, ROOT / "tests" / "mpy"))
    cmd = [str(MICROPYTHON), "-X", "heapsize=" + heap, str(PROBE), op, url, *[str(a) for a in args]]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out, out
    return out


def ok_line(out):
    m = re.search(r"^OK (\d+) ([0-9a-f]{64}) ?(\d*)$", out, re.M)
    assert m, out
    return int(m.group(1)), m.group(2), m.group(3)


def error_line(out):
    m = re.search(r"^ERROR (.*)$", out, re.M)
    assert m, out
    return m.group(1)


def heap_figures(out, what):
    """The probe's MEM line as ints (after: a list, one per transfer); printed for the report (pytest -s)."""
    mem = {}
    for kv in re.search(r"^MEM (.*)$", out, re.M).group(1).split():
        k, v = kv.split("=")
        mem[k] = [int(x) for x in v.split(",")] if k == "after" else int(v)
    print("heap during %d-byte %s downloads: %s" % (SIZE, what, mem))
    return mem


def assert_no_leak(mem):
    # The first transfer leaves 1-2.5 KB of asyncio's own bookkeeping (its poll map grows once, more for FTP's
    # two connections); after that, nothing may stay behind per transfer
    after = mem["after"]
    assert after[0] < 3072 and max(after) - min(after) < 256, mem


def sha(data):
    return hashlib.sha256(data).hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    data = os.urandom(SIZE)
    (d / "fw.bin").write_bytes(data)
    (d / "small.txt").write_bytes(b"hello over the wire\n")
    return d


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    paths = pki.make_pki(str(d))
    # make_pki keeps its CA key to itself: a second CA signs a leaf for another host name
    wrong_ca, wrong_ca_key = pki.make_ca("Wrong Host Test CA")
    leaf, leaf_key = pki.make_server_cert(wrong_ca, wrong_ca_key, hosts=("files.example.com",))
    paths["wrong_host_ca"] = pki._write(str(d / "wrong_host_ca.pem"), pki._cert_pem(wrong_ca))
    paths["wrong_host_cert"] = pki._write(str(d / "wrong_host.pem"), pki._cert_pem(leaf))
    paths["wrong_host_key"] = pki._write(str(d / "wrong_host.key"), pki._key_pem(leaf_key))
    return paths


# ---- HTTP(S) server ----

class Handler(BaseHTTPRequestHandler):
    """GET /files/NAME (Content-Length), /chunked/NAME, /truncated/NAME (half the body, then hang up),
    /redirect/NAME (302 to /files/NAME), /auth/NAME (Basic auth USER:PASSWORD); PUT/POST /upload/NAME."""

    protocol_version = "HTTP/1.1"  # chunked needs it

    def log_message(self, fmt, *args):
        self.server.log.append(fmt % args)

    def _file(self, name):
        p = self.server.root / name
        return p.read_bytes() if p.is_file() else None

    def _send(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.requests.append((self.command, self.path, self.headers.get("Authorization")))
        parts = self.path.split("/")
        kind, name = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
        data = self._file(name)
        if kind == "auth":
            want = "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()
            if self.headers.get("Authorization") != want:
                return self._send(401, b"who are you?\n", [("WWW-Authenticate", 'Basic realm="fw"')])
        if data is None or kind not in ("files", "chunked", "truncated", "redirect", "auth"):
            return self._send(404, b"no such file\n")
        if kind == "redirect":
            return self._send(302, b"", [("Location", "/files/" + name)])
        if kind == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            i, n = 0, 1
            while i < len(data):  # chunk sizes 1, 2, 3 ... then up to 7000: odd sizes against our buffer
                piece = data[i:i + n]
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
                i += len(piece)
                n = n + 1 if n < 40 else (n * 7) % 7001 + 1
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
            return
        if kind == "truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(200, data, [("Content-Type", "application/octet-stream")])

    def _upload(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.server.requests.append((self.command, self.path, self.headers.get("Authorization")))
        self.server.uploads[self.path] = (self.command, self.headers.get("Content-Type"), body)
        self._send(201, b"stored\n")

    do_PUT = _upload
    do_POST = _upload


class HTTPServers:
    def __init__(self, root):
        self.root = root
        self.servers = []

    def start(self, cert=None, key=None):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        srv.root, srv.requests, srv.uploads, srv.log = self.root, [], {}, []
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


@pytest.fixture
def web(files):
    s = HTTPServers(files)
    try:
        yield s
    finally:
        s.stop()


# ---- FTP server ----

class NoEpsvHandler(FTPHandler):
    # A server without RFC 2428: the client must fall back to PASV
    proto_cmds = {k: v for k, v in FTPHandler.proto_cmds.items() if k != "EPSV"}


class FTPServers:
    def __init__(self, root, upload_dir):
        self.root, self.upload_dir = root, upload_dir
        self.running = []

    def start(self, handler_base=FTPHandler):
        auth = DummyAuthorizer()
        auth.add_user(USER, PASSWORD, str(self.root), perm="elr")
        auth.add_user("up", "up", str(self.upload_dir), perm="elradfmw")
        auth.add_anonymous(str(self.root))
        handler = type("Handler", (handler_base,), {"authorizer": auth, "banner": "test ftpd ready"})
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


@pytest.fixture
def ftpd(files, tmp_path):
    s = FTPServers(files, tmp_path)
    try:
        yield s
    finally:
        s.stop()


# ---- HTTP ----

def test_http_get_300k_content_length_in_small_heap(web, files):
    srv, port = web.start()
    out = run_probe("get", "http://127.0.0.1:%d/files/fw.bin" % port, "--mem", "--repeat", 3)
    want = (SIZE, sha((files / "fw.bin").read_bytes()), "")
    assert re.findall(r"^OK (\d+) ([0-9a-f]{64}) ?(\d*)$", out, re.M) == [("%d" % SIZE,) + want[1:]] * 3, out
    mem = heap_figures(out, "HTTP")
    assert mem["largest_chunk"] <= 1024 and mem["buf"] == 1024
    # the connection, its stream and the watcher task: a few KB, never a share of the body
    assert mem["peak_live"] < 6000, mem
    assert_no_leak(mem)


def test_http_get_chunked_redirect_and_basic_auth(web, files):
    srv, port = web.start()
    want = sha((files / "fw.bin").read_bytes())
    out = run_probe("get", "http://127.0.0.1:%d/chunked/fw.bin" % port, "--buf", 700)
    assert ok_line(out)[:2] == (SIZE, want), out
    out = run_probe("get", "http://127.0.0.1:%d/redirect/fw.bin" % port)
    assert ok_line(out)[:2] == (SIZE, want), out
    assert [r[1] for r in srv.requests[-2:]] == ["/redirect/fw.bin", "/files/fw.bin"]
    out = run_probe("get", "http://%s:%s@127.0.0.1:%d/auth/small.txt" % (USER, PASSWORD_IN_URL, port))
    assert ok_line(out)[:2] == (20, sha(b"hello over the wire\n")), out
    out = run_probe("get", "http://%s:wrong@127.0.0.1:%d/auth/small.txt" % (USER, port))
    assert error_line(out) == "HTTP 401 Unauthorized", out


def test_http_errors_say_what_failed(web):
    srv, port = web.start()
    out = run_probe("get", "http://127.0.0.1:%d/files/missing.bin" % port)
    assert error_line(out) == "HTTP 404 Not Found", out
    out = run_probe("get", "http://127.0.0.1:%d/truncated/fw.bin" % port)
    assert error_line(out) == "body truncated at %d of %d bytes" % (SIZE // 2, SIZE), out
    dead = free_port()
    out = run_probe("get", "http://127.0.0.1:%d/files/fw.bin" % dead)
    assert error_line(out) == "connection refused (127.0.0.1:%d)" % dead, out


def test_http_read_timeout_against_a_silent_server():
    # A listening socket that never accepts: the TCP connect succeeds (backlog), no answer ever comes
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        out = run_probe("get", "http://127.0.0.1:%d/fw.bin" % port, "--timeout-ms", 300)
    assert error_line(out) == "connection timed out waiting for data (127.0.0.1:%d)" % port, out


LEAK_SCRIPT = """
import os, asyncio
from lib import http
def fds():
    return len(os.listdir("/proc/self/fd"))
async def main():
    asyncio.open_connection  # asyncio's stream module loads at the first use
    start = fds()
    for url in %r:
        for _ in range(5):
            try:
                await http.get(url, lambda mv: None, None, None, None, 150, 150)
                print("ERROR no failure")
            except http.HTTPError as e:
                print("FAILED", e)
    print("FDS", start, fds())
asyncio.run(main())
"""


def test_failed_connects_leave_no_socket_open(tmp_path):
    # The unix port's sockets have no finaliser: one that a timeout or refusal lost would stay open
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):  # fill the accept queue: later SYNs are dropped and connects hang
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        dead = free_port()
        script = tmp_path / "leak.py"
        script.write_text(LEAK_SCRIPT % (("http://127.0.0.1:%d/x" % port, "http://127.0.0.1:%d/x" % dead),))
        env = dict(os.environ, MICROPYPATH=".frozen:%s" % ROOT)
        r = subprocess.run([str(MICROPYTHON), "-X", "heapsize=110wK", str(script)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
        for c in fillers:
            c.close()
    out = r.stdout + r.stderr
    assert out.count("FAILED connection timed out (127.0.0.1:%d)" % port) == 5, out
    assert out.count("FAILED connection refused (127.0.0.1:%d)" % dead) == 5, out
    start, end = re.search(r"^FDS (\d+) (\d+)$", out, re.M).groups()
    assert start == end, out


def test_http_put_and_post_uploads(web, files, tmp_path):
    srv, port = web.start()
    up = tmp_path / "diag.log"
    up.write_bytes(os.urandom(100 * 1024 + 17))
    out = run_probe("put", "http://127.0.0.1:%d/upload/diag.log" % port, "--file", up, "--buf", 512)
    n, digest, status = ok_line(out)
    assert (n, digest, status) == (up.stat().st_size, sha(up.read_bytes()), "201"), out
    assert srv.uploads["/upload/diag.log"] == ("PUT", "application/octet-stream", up.read_bytes())
    out = run_probe("post", "http://u:p@127.0.0.1:%d/upload/posted" % port, "--file", files / "small.txt")
    assert ok_line(out)[2] == "201", out
    assert srv.uploads["/upload/posted"][0::2] == ("POST", b"hello over the wire\n")
    assert srv.requests[-1][2] == "Basic " + base64.b64encode(b"u:p").decode()


# ---- HTTPS ----

def test_https_verified_download_and_upload(web, files, certs, tmp_path):
    srv, port = web.start(certs["server_cert"], certs["server_key"])
    data = (files / "fw.bin").read_bytes()
    for host in ("127.0.0.1", "localhost"):  # IP and DNS subject alternative names
        out = run_probe("get", "https://%s:%d/files/fw.bin" % (host, port), "--ca", certs["ca"], "--mem")
        assert ok_line(out)[:2] == (SIZE, sha(data)), out
    mem = heap_figures(out, "HTTPS")
    assert mem["peak_live"] < 6000, mem  # mbedTLS keeps its buffers outside the GC heap, as on the ESP32
    out = run_probe("get", "https://127.0.0.1:%d/chunked/fw.bin" % port, "--ca", certs["ca"])
    assert ok_line(out)[:2] == (SIZE, sha(data)), out
    out = run_probe("get", "https://127.0.0.1:%d/truncated/fw.bin" % port, "--ca", certs["ca"])
    assert error_line(out) == "body truncated at %d of %d bytes" % (SIZE // 2, SIZE), out
    up = tmp_path / "up.bin"
    up.write_bytes(os.urandom(50000))
    out = run_probe("put", "https://127.0.0.1:%d/upload/up.bin" % port, "--ca", certs["ca"], "--file", up)
    assert ok_line(out)[2] == "201", out
    assert srv.uploads["/upload/up.bin"][2] == up.read_bytes()


def test_https_wrong_ca_and_wrong_host_fail_clearly(web, certs):
    srv, port = web.start(certs["server_cert"], certs["server_key"])
    out = run_probe("get", "https://127.0.0.1:%d/files/fw.bin" % port, "--ca", certs["other_ca"])
    err = error_line(out)
    assert err.startswith("TLS verification failed (127.0.0.1:%d): " % port) and "trusted CA" in err, out
    wrong, wport = web.start(certs["wrong_host_cert"], certs["wrong_host_key"])
    out = run_probe("get", "https://127.0.0.1:%d/files/fw.bin" % wport, "--ca", certs["wrong_host_ca"])
    err = error_line(out)
    assert err.startswith("TLS verification failed (127.0.0.1:%d): " % wport) and "CN" in err, out
    assert srv.requests == [] and wrong.requests == []
    # an https URL pointing at a plain HTTP server
    plain, pport = web.start()
    out = run_probe("get", "https://127.0.0.1:%d/files/fw.bin" % pport, "--ca", certs["ca"])
    assert error_line(out).startswith("TLS handshake failed (127.0.0.1:%d): " % pport), out


# ---- FTP ----

def test_ftp_retr_300k_epsv_and_pasv(ftpd, files):
    want = sha((files / "fw.bin").read_bytes())
    port = ftpd.start()
    out = run_probe("retr", "ftp://%s:%s@127.0.0.1:%d/fw.bin" % (USER, PASSWORD_IN_URL, port), "--mem",
                    "--repeat", 3)
    assert ok_line(out)[:2] == (SIZE, want) and out.count("OK %d %s" % (SIZE, want)) == 3, out
    mem = heap_figures(out, "FTP")
    assert mem["largest_chunk"] <= 1024 and mem["peak_live"] < 8000, mem
    assert_no_leak(mem)
    port = ftpd.start(NoEpsvHandler)
    out = run_probe("retr", "ftp://%s:%s@127.0.0.1:%d/fw.bin" % (USER, PASSWORD_IN_URL, port), "--buf", 333)
    assert ok_line(out)[:2] == (SIZE, want), out
    out = run_probe("retr", "ftp://127.0.0.1:%d/small.txt" % port)  # anonymous
    assert ok_line(out)[:2] == (20, sha(b"hello over the wire\n")), out


def test_ftp_stor(ftpd, tmp_path):
    port = ftpd.start()
    up = tmp_path / "src.bin"
    up.write_bytes(os.urandom(120 * 1024 + 3))
    out = run_probe("stor", "ftp://up:up@127.0.0.1:%d/diag-cp1.bin" % port, "--file", up)
    n, digest, _ = ok_line(out)
    assert (n, digest) == (up.stat().st_size, sha(up.read_bytes())), out
    assert (ftpd.upload_dir / "diag-cp1.bin").read_bytes() == up.read_bytes()


def test_ftp_errors_say_what_failed(ftpd):
    port = ftpd.start()
    out = run_probe("retr", "ftp://%s:wrong@127.0.0.1:%d/fw.bin" % (USER, port))
    assert error_line(out) == "FTP 530 Authentication failed.", out
    out = run_probe("retr", "ftp://%s:%s@127.0.0.1:%d/missing.bin" % (USER, PASSWORD_IN_URL, port))
    err = error_line(out)
    assert err.startswith("FTP 550 ") and "No such file" in err, out
    out = run_probe("stor", "ftp://%s:%s@127.0.0.1:%d/x.bin" % (USER, PASSWORD_IN_URL, port), "--file", PROBE)
    assert error_line(out).startswith("FTP 550 "), out  # read-only user
    dead = free_port()
    out = run_probe("retr", "ftp://127.0.0.1:%d/fw.bin" % dead)
    assert error_line(out) == "control connection refused (127.0.0.1:%d)" % dead, out
