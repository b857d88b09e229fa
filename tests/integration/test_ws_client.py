"""lib/ws.py inside the MicroPython unix port against a real `websockets` server on 127.0.0.1 (ws and wss)."""
import asyncio
import base64
import datetime
import hashlib
import os
import pathlib
import socket
import ssl
import subprocess
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import serve

ROOT = pathlib.Path(__file__).resolve().parents[2]
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
PROBE = pathlib.Path(__file__).resolve().parent / "ws_probe.py"
CP_ID = "CP001"
PASSWORD = bytes.fromhex("00ff3a41425c0a0d7f80e2a8fe0102030405067a")  # 20 bytes, ':' and CR/LF included


def run_probe(url, *args, timeout=60):
    env = dict(os.environ, MICROPYPATH=".frozen:%s:%s" % (ROOT, ROOT / "tests" / "mpy"))
    cmd = [str(MICROPYTHON), "-X", "heapsize=110wK", str(PROBE), url, *[str(a) for a in args]]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Traceback" not in out, out
    return out


def pattern(n):
    # Same text as ws_probe.pattern
    return "".join(chr(33 + (i * 7 + i // 94) % 94) for i in range(n))


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


# ---- certificates ----

def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject_key, subject, issuer_key, issuer, ca, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(subject_key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key, srv_key = _key(), _key(), _key()
    ca = _cert(ca_key, _name("Test CSMS CA"), ca_key, _name("Test CSMS CA"), True)
    other = _cert(other_key, _name("Some Other CA"), other_key, _name("Some Other CA"), True)
    good_sans = [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")), x509.DNSName("localhost")]
    srv = _cert(srv_key, _name("127.0.0.1"), ca_key, ca.subject, False, good_sans)
    wrong_host = _cert(srv_key, _name("csms.example.com"), ca_key, ca.subject, False,
                       [x509.DNSName("csms.example.com")])
    files = {}
    for name, cert in (("ca", ca), ("other", other), ("srv", srv), ("wrong_host", wrong_host)):
        files[name] = d / (name + ".pem")
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["ca_der"] = d / "ca.der"
    files["ca_der"].write_bytes(ca.public_bytes(serialization.Encoding.DER))
    files["key"] = d / "srv.key"
    files["key"].write_bytes(srv_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return files


def server_tls(pki, cert="srv"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki[cert], pki["key"])
    return ctx


# ---- server ----

async def _handler(conn, state):
    try:
        await _serve(conn, state)
    finally:
        state["close_code"] = conn.close_code


async def _serve(conn, state):
    path = conn.request.path
    state["paths"].append(path)
    state["auth"].append(conn.request.headers.get("Authorization"))
    if path.endswith("/ping"):
        waiter = await conn.ping(b"are you there?")
        await asyncio.wait_for(waiter, 10)  # resolves only on a pong with the same payload
        state["pong"] = True
        await conn.send("pong-ok")
    elif path.endswith("/big"):
        await conn.send(pattern(state["big"])[i:i + 1000] for i in range(0, state["big"], 1000))
    elif path.endswith("/single"):
        await conn.send(pattern(state["big"]))
    elif path.endswith("/noroom"):
        await conn.send(pattern(state["big"]))
        await conn.send("after")
    elif path.endswith("/close"):
        await conn.close(4000, "bye")
    async for msg in conn:
        state["received"].append(msg)
        await conn.send(msg)


class Servers:
    """websockets servers on one event loop in a background thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers = []

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self, tls=None, password=None, subprotocols=("ocpp1.6",), big=0):
        state = {"paths": [], "auth": [], "received": [], "pong": False, "close_code": None, "big": big}

        def check_auth(conn, request):
            want = "Basic " + base64.b64encode(CP_ID.encode() + b":" + password).decode()
            if request.headers.get("Authorization") != want:
                state["auth"].append(request.headers.get("Authorization"))
                return conn.respond(401, "Unauthorized\n")
            return None

        async def start():
            return await serve(lambda c: _handler(c, state), "127.0.0.1", 0, ssl=tls, ping_interval=None,
                               subprotocols=list(subprotocols) if subprotocols else None,
                               process_request=check_auth if password is not None else None)

        srv = self.call(start())
        self.servers.append(srv)
        return srv.sockets[0].getsockname()[1], state

    def stop(self):
        async def shut():
            for s in self.servers:
                s.close()
                await s.wait_closed()

        try:
            self.call(shut())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def servers():
    s = Servers()
    try:
        yield s
    finally:
        s.stop()


def wait_until(servers, check):
    # The server side finishes its handler a moment after the probe exits.
    for _ in range(100):
        if check():
            return True
        servers.call(asyncio.sleep(0.05))
    return check()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- tests ----

def test_ws_echo(servers):
    port, state = servers.start()
    out = run_probe("ws://127.0.0.1:%d/ocpp/%s" % (port, CP_ID), "--send", "hello from mpy", "--send-size", 3000,
                    "--recv", 2)
    assert "CONNECTED" in out and "MSG hello from mpy" in out, out
    assert "RECV text 3000 %s" % sha(pattern(3000)) in out, out
    assert "CLOSED-BY-US" in out, out
    assert state["paths"] == ["/ocpp/CP001"]
    # the server unmasked what we masked
    assert state["received"] == ["hello from mpy", pattern(3000)]
    assert wait_until(servers, lambda: state["close_code"] is not None)
    assert state["close_code"] == 1000


def test_wss_basic_auth_pem_and_der_ca(servers, pki):
    port, state = servers.start(tls=server_tls(pki), password=PASSWORD)
    for host, ca in (("127.0.0.1", pki["ca"]), ("localhost", pki["ca_der"])):
        out = run_probe("wss://%s:%d/ocpp/%s" % (host, port, CP_ID), "--ca", ca, "--user", CP_ID,
                        "--password-hex", PASSWORD.hex(), "--send", "over tls", "--recv", 1)
        assert "CONNECTED" in out and "MSG over tls" in out and "CLOSED-BY-US" in out, out
    header = state["auth"][0]
    assert header.startswith("Basic ")
    assert base64.b64decode(header[6:]) == CP_ID.encode() + b":" + PASSWORD
    assert state["received"] == ["over tls", "over tls"]


def test_wss_wrong_ca(servers, pki):
    port, state = servers.start(tls=server_tls(pki))
    out = run_probe("wss://127.0.0.1:%d/ocpp/%s" % (port, CP_ID), "--ca", pki["other"], "--send", "x")
    assert "ERROR TLS verification failed" in out, out
    assert state["paths"] == []


def test_wss_hostname_is_checked(servers, pki):
    port, state = servers.start(tls=server_tls(pki, "wrong_host"))
    out = run_probe("wss://127.0.0.1:%d/ocpp/%s" % (port, CP_ID), "--ca", pki["ca"], "--send", "x")
    assert "ERROR TLS verification failed" in out, out
    assert state["paths"] == []


def test_wss_without_ca_refused_before_connecting():
    out = run_probe("wss://127.0.0.1:%d/ocpp/%s" % (free_port(), CP_ID))
    assert "ERROR wss needs a CA certificate" in out, out


def test_wrong_password_gets_http_401(servers):
    port, state = servers.start(password=PASSWORD)
    out = run_probe("ws://127.0.0.1:%d/ocpp/%s" % (port, CP_ID), "--user", CP_ID, "--password-hex", "00" * 20)
    assert "ERROR HTTP 401 Unauthorized" in out, out
    assert base64.b64decode(state["auth"][0][6:]) == CP_ID.encode() + b":" + bytes(20)


def test_server_without_subprotocol(servers):
    port, _ = servers.start(subprotocols=None)
    out = run_probe("ws://127.0.0.1:%d/ocpp/%s" % (port, CP_ID))
    assert "ERROR server did not accept subprotocol ocpp1.6" in out, out


def test_connection_refused(pki):
    port = free_port()
    out = run_probe("ws://127.0.0.1:%d/ocpp/%s" % (port, CP_ID))
    assert "ERROR connection refused (127.0.0.1:%d)" % port in out, out
    out = run_probe("wss://127.0.0.1:%d/ocpp/%s" % (port, CP_ID), "--ca", pki["ca"])
    assert "ERROR connection refused (127.0.0.1:%d)" % port in out, out


def test_handshake_timeout():
    # A listener that never answers: the kernel completes TCP, the HTTP reply never comes.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        out = run_probe("ws://127.0.0.1:%d/ocpp/%s" % (s.getsockname()[1], CP_ID), "--timeout-ms", 300)
    assert "ERROR handshake timed out" in out, out


def test_server_ping_answered(servers):
    port, state = servers.start()
    out = run_probe("ws://127.0.0.1:%d/ocpp/%s/ping" % (port, CP_ID), "--recv", 1)
    assert "MSG pong-ok" in out, out
    assert state["pong"]


def test_large_fragmented_message_reassembled(servers):
    port, state = servers.start(big=12500)
    out = run_probe("ws://127.0.0.1:%d/ocpp/%s/big" % (port, CP_ID), "--recv", 1)
    assert "RECV text 12500 %s" % sha(pattern(12500)) in out, out


def test_oversized_frame_closed_with_1009(servers):
    # One frame (not fragments): the server is done writing before our close arrives, so it reads it.
    port, state = servers.start(big=12500)
    out = run_probe("ws://127.0.0.1:%d/ocpp/%s/single" % (port, CP_ID), "--recv", 1, "--max-frame", 8000)
    assert "ERROR frame too large (12500 > 8000)" in out, out
    assert wait_until(servers, lambda: state["close_code"] is not None)
    assert state["close_code"] == 1009


def test_message_with_no_room_in_the_heap_is_read_past(servers):
    # Within max_frame, but bigger than any free block of a 110wK heap: reported, and the link goes on.
    port, state = servers.start(big=400000)
    out = run_probe("ws://127.0.0.1:%d/ocpp/%s/noroom" % (port, CP_ID), "--recv", 2, "--max-frame", 500000)
    assert "NOROOM 400000" in out and "MSG after" in out and "CLOSED-BY-US" in out, out


def test_server_close_reported(servers):
    port, _ = servers.start()
    out = run_probe("ws://127.0.0.1:%d/ocpp/%s/close" % (port, CP_ID), "--recv", 1)
    assert "CLOSED 4000 bye" in out, out


# ---- a raw server for what a well-behaved library will not send (issue 9, items 15-17) ----

class RawServer:
    """One connection at a time on a plain socket; serve(conn, request_bytes) is the script."""

    def __init__(self, serve):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.result = {}
        self.thread = threading.Thread(target=self._run, args=(serve,), daemon=True)
        self.thread.start()

    def _run(self, serve):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            req = b""
            try:
                while b"\r\n\r\n" not in req:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    req += chunk
                serve(conn, req, self.result)
            except OSError as e:
                self.result.setdefault("error", e)

    def close(self):
        self.sock.close()
        self.thread.join(15)


def _upgrade(conn, req):
    key = [line.split(b":", 1)[1].strip() for line in req.split(b"\r\n")
           if line.lower().startswith(b"sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n")


def _read_client_frame(conn):
    head = b""
    while len(head) < 6:
        head += conn.recv(6 - len(head))
    n = head[1] & 0x7F
    body = b""
    while len(body) < n:
        body += conn.recv(n - len(body))
    return head[0] & 0x0F, bytes(b ^ head[2 + i % 4] for i, b in enumerate(body))


def test_endless_handshake_header_refused_within_the_bound():
    def endless(conn, req, result):
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 4 << 20:
                conn.sendall(b"a" * 4096)
                sent += 4096
        finally:
            result["sent"] = sent

    server = RawServer(endless)
    try:
        out = run_probe("ws://127.0.0.1:%d/ocpp/%s" % (server.port, CP_ID))
    finally:
        server.close()
    assert "ERROR handshake response head longer than 8192 bytes" in out, out


def test_invalid_close_code_answered_with_1002():
    def close_1006(conn, req, result):
        _upgrade(conn, req)
        conn.sendall(b"\x88\x05\x03\xeebye")  # close 1006: never valid on the wire (RFC 6455 §7.4.1)
        result["answer"] = _read_client_frame(conn)

    server = RawServer(close_1006)
    try:
        out = run_probe("ws://127.0.0.1:%d/ocpp/%s" % (server.port, CP_ID), "--recv", 1)
    finally:
        server.close()
    assert "ERROR invalid close code 1006" in out, out
    assert server.result["answer"] == (8, b"\x03\xea"), server.result  # 1002 protocol error, not an echo


def test_user_without_password_sends_no_authorization(servers):
    port, state = servers.start()
    out = run_probe("ws://127.0.0.1:%d/ocpp/%s" % (port, CP_ID), "--user", CP_ID)
    assert "CONNECTED" in out, out
    assert state["auth"] == [None]  # not "Basic Q1AwMDE6" (CP001 and an empty password)
