# RFC 6455 WebSocket client on asyncio streams: the opening handshake, the connection (send, ping, recv, close) and
# connect(). Knows nothing of OCPP: the subprotocol is an argument. The frame codec is lib/wsframe.py; TLS is the
# caller's: connect() takes a verifying SSLContext as ssl= (lib/tls.py builds one), as umqtt does.
# One task may call recv() while others call send()/ping(): writes are serialised by a lock because
# MicroPython's Stream.drain() drops bytes written by another task while it drains.
import asyncio
import binascii
import errno
import hashlib
import os
import time
from micropython import const

from lib.wsframe import Fail, WSNoRoom, apply_mask, close_code_ok, put_header, read_header

# RFC 6455 §5.2 opcodes (lib/wsframe.py has its own private copies: a private const costs no RAM)
_CONT = const(0)
_TEXT = const(1)
_BINARY = const(2)
_CLOSE = const(8)
_PING = const(9)
_PONG = const(10)

# RFC 6455 §7.4.1 status codes
_NORMAL = const(1000)
_PROTOCOL_ERROR = const(1002)
_NO_STATUS = const(1005)
_ABNORMAL = const(1006)
_BAD_DATA = const(1007)
_TOO_BIG = const(1009)

_CLOSE_WAIT_MS = const(1000)
_CHUNK = const(1024)  # outgoing payloads are masked through a buffer this big (a multiple of 4: key alignment)
# Incoming frames are read into a buffer this big: an OCPP CALL of up to ~500 bytes arrives in one read and is
# parsed where it lies; a larger payload gets a block of its own, as every payload used to. One read per frame
# instead of three (header, length, payload), each a coroutine object and a trip through the scheduler.
_RBUF = const(512)
_MAX_HEADERS = const(40)  # bounds the handshake so a hostile server cannot stall us forever
_MAX_HEAD = const(8192)  # bytes of the whole response head (nginx's default header buffer is 8 KB)
_MAX_LINE = const(256)  # bytes kept of one response line: the headers we check are far shorter
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


class WSError(Exception):
    pass


class WSClosed(WSError):
    def __init__(self, code=_ABNORMAL, reason=""):
        super().__init__("connection closed (%d %s)" % (code, reason))
        self.code = code
        self.reason = reason


class WS:
    def __init__(self, stream, max_frame=16384):
        self._s = stream
        self._max = max_frame
        # Names already interned elsewhere (start, end: builtins; _rhdr, _whdr: before the receive buffer): the
        # charger sits a few interned names below the next qstr pool (docs/decisions.md, Memory).
        self._rbuf = bytearray(_RBUF)
        self._rhdr = memoryview(self._rbuf)
        self.start = 0  # the unread bytes are _rbuf[start:end]
        self.end = 0
        self._wbuf = bytearray(_CHUNK + 14)  # room for the frame header in front of the first chunk
        self._whdr = memoryview(self._wbuf)
        self._wlock = asyncio.Lock()
        self._done = asyncio.Event()
        self._closing = False  # our close frame is out
        self._closed = None  # (code, reason) once the stream is shut
        self._reading = False
        self.last_rx_ms = time.ticks_ms()

    async def _write(self, op, payload):
        # payload: str or any buffer, left as it is. It goes out masked in chunks through one small buffer, so
        # sending a message never needs a second copy of it in RAM (a large block the heap may not have).
        key = os.urandom(4)
        src = memoryview(payload)
        n = len(src)
        wmv = self._whdr
        lock = self._wlock
        await lock.acquire()  # not "async with": two coroutine objects fewer per frame
        try:
            s = self._s
            try:
                # Header and first chunk leave in one write: two small writes would meet Nagle's algorithm
                # and the peer's delayed ACK, 40 ms per message on Linux.
                off = put_header(self._wbuf, op, n, key, True)
                i = 0
                while True:
                    k = min(n - i, _CHUNK)
                    mv = wmv[off:off + k]
                    mv[:] = src[i:i + k]
                    apply_mask(mv, key)
                    s.write(wmv[:off + k])  # the stream keeps a copy of what the socket did not take
                    i += k
                    off = 0
                    if i >= n:
                        break
                    if getattr(s, "out_buf", True):  # asyncio's Stream: drain only what the socket left over
                        await s.drain()
                # The same at the end: a drain with nothing left still yields, and a frame sent under the session's
                # send lock would hold it through a round of every other task (an answer queued behind a
                # Heartbeat's drain waited ~0.3 ms). The sender yields at its next await instead.
                if getattr(s, "out_buf", True):
                    await s.drain()
            except (OSError, ValueError) as e:  # mbedTLS reports some failures as ValueError
                await self._shut(_ABNORMAL, "connection lost: %s" % e)
                raise WSClosed(_ABNORMAL, "connection lost: %s" % e)
        finally:
            lock.release()

    def _check(self, sending):
        if self._closed:
            raise WSClosed(self._closed[0], self._closed[1])
        if sending and self._closing:  # RFC 6455 §5.5.1: no data after our close frame
            raise WSClosed(_NORMAL, "closing")

    def send(self, msg, text=False):
        """One text frame for str (or for bytes-like UTF-8 when text is true), else one binary frame. Returns
        the coroutine to await (a plain function: one coroutine object per frame, not two)."""
        self._check(True)
        return self._write(_TEXT if text or isinstance(msg, str) else _BINARY, msg)

    def ping(self, payload=b""):
        self._check(True)
        return self._write(_PING, payload)

    async def recv(self):
        """Next message: str (text) or bytes (binary). Answers pings; raises WSClosed when the link ends, and
        WSNoRoom for a message the heap cannot hold (it was read past: the link stays usable).
        Only one task may call it at a time; cancelling it mid-frame leaves the link unusable."""
        self._check(False)
        self._reading = True
        msg = None
        mop = _TEXT
        try:
            while True:
                h = read_header(self._rbuf, self.start, self.end)
                if h is None:
                    await self.fill()
                    continue
                b0, op, n, k = h
                self.start += k
                if n > self._max:
                    raise Fail(_TOO_BIG, "frame too large (%d > %d)" % (n, self._max), n)
                lo = self.start
                if n <= self.end - lo:  # the whole payload is in the buffer: used where it lies
                    self.start = lo + n
                    data = self._rhdr[lo:lo + n]
                else:
                    data = await self.read_frame(n)
                self.last_rx_ms = time.ticks_ms()
                if op >= _CLOSE:  # control frames may come between fragments
                    await self._control(op, data)
                    continue
                if op == _CONT:
                    if msg is None:
                        raise Fail(_PROTOCOL_ERROR, "continuation frame without a message")
                    if len(msg) + len(data) > self._max:
                        raise Fail(_TOO_BIG, "message too large (%d > %d)" % (len(msg) + len(data), self._max))
                    msg.extend(data)
                elif msg is not None:
                    raise Fail(_PROTOCOL_ERROR, "new message inside a fragmented one")
                elif b0 & 0x80:
                    msg = data
                    mop = op
                else:
                    msg = bytearray(data)
                    mop = op
                if b0 & 0x80:
                    if mop == _BINARY:
                        return bytes(msg)
                    try:
                        return str(msg, "utf-8")
                    except UnicodeError:
                        raise Fail(_BAD_DATA, "text message is not UTF-8")
                    except MemoryError:
                        raise WSNoRoom(len(msg))
        except Fail as e:
            await self._fail(e.code, e.unread)
            raise WSError(e.args[0])
        except (EOFError, OSError) as e:
            reason = "connection lost" if isinstance(e, EOFError) else "connection lost: %s" % e
            await self._shut(_ABNORMAL, reason)
            raise WSClosed(_ABNORMAL, reason)
        finally:
            self._reading = False

    async def fill(self):
        # Reads what the stream has, at least a byte, into the receive buffer behind what is unread.
        lo = self.start
        hi = self.end
        if lo == hi:
            lo = hi = self.start = self.end = 0
        elif hi == _RBUF:
            # Only the start of a header can be left at the very end (a payload that does not fit behind its
            # start takes a block of its own): moved to the front, at most 13 bytes.
            b = self._rbuf
            k = hi - lo
            for i in range(k):
                b[i] = b[lo + i]
            lo = self.start = 0
            hi = self.end = k
        while True:
            r = await self._s.readinto(self._rhdr[hi:])
            if r:
                self.end = hi + r
                return
            if r is not None:  # None: TLS record not complete yet
                raise EOFError

    async def read_frame(self, n):
        # A payload not all read yet: completed in place when it fits behind its start, else read into a block
        # of its own size (readexactly() would grow its result piece by piece, needing twice as much).
        lo = self.start
        if lo == self.end:
            lo = self.start = self.end = 0
        if lo + n <= _RBUF:
            while self.end - lo < n:
                await self.fill()
            self.start = lo + n
            return self._rhdr[lo:lo + n]
        try:
            data = bytearray(n)
        except MemoryError:
            await self.skip(n)
            raise WSNoRoom(n)
        got = self.end - lo
        data[:got] = self._rhdr[lo:lo + got]
        self.start = self.end = 0
        mv = memoryview(data)
        sock = getattr(self._s, "s", None)  # asyncio's Stream: its non-blocking socket
        while got < n:
            # The rest has mostly arrived with the start: taken from the socket at once (None: not yet), without
            # a trip through the scheduler, where other tasks would run first.
            r = sock.readinto(mv[got:]) if sock is not None else None
            if r is None:
                r = await self._s.readinto(mv[got:])
            if r is None:
                continue
            if not r:
                raise EOFError
            got += r
        return data

    async def skip(self, n):
        # Reads past n bytes: what is buffered first, then the stream's in buffer-sized reads.
        while True:
            k = min(n, self.end - self.start)
            self.start += k
            n -= k
            if not n:
                return
            await self.fill()

    async def _control(self, op, data):
        if op == _PING:
            if not self._closing:
                await self._write(_PONG, data)
        elif op == _CLOSE:
            code, reason = _NO_STATUS, ""
            if data:
                if len(data) < 2:
                    await self._refuse_close(_PROTOCOL_ERROR)
                    raise WSError("close frame with a 1-byte payload")
                code = (data[0] << 8) | data[1]
                if not close_code_ok(code):
                    await self._refuse_close(_PROTOCOL_ERROR)
                    raise WSError("invalid close code %d" % code)
                try:
                    reason = str(data[2:], "utf-8")
                except UnicodeError:
                    await self._refuse_close(_BAD_DATA)  # RFC 6455 §5.5.1: the reason is UTF-8
                    raise WSError("close reason is not UTF-8")
            if not self._closing:
                self._closing = True
                await self._send_close(code if code != _NO_STATUS else None)
            await self._shut(code, reason)
            raise WSClosed(code, reason)
        # an unsolicited pong only proves the link is alive (last_rx_ms)

    async def _refuse_close(self, code):
        # The server's close frame is invalid: answer with our own code and shut, without echoing it. Its close
        # frame was read already, so there is nothing left to drain.
        if not self._closing:
            self._closing = True
            await self._send_close(code)
        await self._shut(code, "protocol error")

    async def _send_close(self, code):
        try:
            await asyncio.wait_for_ms(self._write(_CLOSE, bytes((code >> 8, code & 0xFF)) if code else b""),
                                      _CLOSE_WAIT_MS)
        except Exception:  # the peer may be gone already; closing goes on regardless
            pass

    async def _fail(self, code, unread):
        if not self._closing:
            self._closing = True
            await self._send_close(code)
            # Closing a socket with unread data sends a RST that can destroy our close frame
            # before the server reads it: read to the server's close answer first.
            try:
                await asyncio.wait_for_ms(self._drain_to_close(unread), _CLOSE_WAIT_MS)
            except Exception:
                pass
        await self._shut(code, "protocol error")

    async def _shut(self, code, reason):
        if self._closed:
            return
        self._closed = (code, reason)
        try:
            self._s.close()
            await self._s.wait_closed()
        except Exception:
            pass
        self._done.set()

    async def close(self, code=_NORMAL):
        """Sends a close frame and waits briefly for the server's answer, then shuts the stream."""
        if self._closed:
            return
        if not self._closing:
            self._closing = True
            await self._send_close(code)
        if self._closed:  # the reading task got the server's answer while ours was sent: nothing left to drain
            return
        try:
            if self._reading:  # the running recv() will see the answer
                await asyncio.wait_for_ms(self._done.wait(), _CLOSE_WAIT_MS)
            else:
                await asyncio.wait_for_ms(self._drain_to_close(), _CLOSE_WAIT_MS)
        except Exception:
            pass
        await self._shut(code, "closed by us")

    async def _drain_to_close(self, skip=0):
        # Discards everything up to the server's close frame; payloads of any size are skipped.
        await self.skip(skip)
        while True:
            h = read_header(self._rbuf, self.start, self.end)
            if h is None:
                await self.fill()
                continue
            self.start += h[3]
            await self.skip(h[2])  # the close frame's payload too: unread bytes would turn our FIN into a RST
            if h[1] == _CLOSE:
                return


# ---- opening handshake ----

def _b(x):
    return x.encode() if isinstance(x, str) else bytes(x)


def _b64(data):
    return binascii.b2a_base64(data, newline=False).decode()


def accept_key(key_b64):
    """Sec-WebSocket-Accept expected for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return _b64(hashlib.sha1(_b(key_b64) + _GUID).digest())


def basic_auth(user, password):
    """Authorization header value; built from bytes because the password may be any 20-byte key."""
    user = _b(user)
    if b":" in user:
        raise WSError("user id must not contain ':' (RFC 7617)")
    return "Basic " + _b64(user + b":" + _b(password))


def parse_url(url):
    """ws[s]://host[:port][/path] -> (tls, host, port, path)."""
    i = url.find("://")
    scheme = url[:i].lower() if i > 0 else ""
    if scheme not in ("ws", "wss"):
        raise WSError("URL must start with ws:// or wss:// (%s)" % url)
    tls = scheme == "wss"
    rest = url[i + 3:]
    j = 0
    while j < len(rest) and rest[j] not in "/?#":
        j += 1
    hostport = rest[:j]
    path = rest[j:].split("#")[0]
    if not path.startswith("/"):
        path = "/" + path
    if "@" in hostport or "[" in hostport:
        raise WSError("URL host must be a name or IPv4 address, credentials go in user/password (%s)" % url)
    port = 443 if tls else 80
    host = hostport
    if ":" in hostport:
        host, p = hostport.rsplit(":", 1)
        try:
            port = int(p)
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise WSError("bad port in URL (%s)" % url)
    if not host:
        raise WSError("no host in URL (%s)" % url)
    return tls, host, port, path


async def handshake(stream, host, path, protocol, auth=None, key=None):
    """Client opening handshake (RFC 6455 §4.1) on an open stream; raises WSError unless upgraded."""
    if key is None:
        key = _b64(os.urandom(16))
    req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n"
           % (path, host, key, protocol))
    if auth:
        req += "Authorization: %s\r\n" % auth
    stream.write((req + "\r\n").encode())
    await stream.drain()
    got = None  # the headers we check, once the status line said 101
    line = bytearray(_MAX_LINE)
    left = _MAX_HEAD
    for _ in range(_MAX_HEADERS + 1):
        n, used = await _head_line(stream, line, left)
        left -= used
        try:
            text = str(memoryview(line)[:n], "utf-8").strip()
        except UnicodeError:  # would otherwise pass for a TLS error (both are ValueError)
            raise WSError("handshake response is not text: %r" % bytes(line[:min(n, 40)]))
        if got is None:
            parts = text.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise WSError("not an HTTP response: %r" % bytes(line[:min(n, 40)]))
            if parts[1] != "101":
                raise WSError("HTTP %s %s" % (parts[1], parts[2] if len(parts) > 2 else ""))
            got = {}
            continue
        if not text:
            break
        name, _, value = text.partition(":")
        name = name.strip().lower()
        if name in ("upgrade", "connection", "sec-websocket-accept", "sec-websocket-protocol"):
            if used > n + 1:
                raise WSError("handshake header %s longer than %d bytes" % (name, _MAX_LINE))
            got[name] = value.strip()
    else:
        raise WSError("too many HTTP headers in handshake response")
    if got.get("upgrade", "").lower() != "websocket" or "upgrade" not in got.get("connection", "").lower():
        raise WSError("server did not upgrade to WebSocket")
    if got.get("sec-websocket-accept") != accept_key(key):
        raise WSError("bad Sec-WebSocket-Accept")
    if got.get("sec-websocket-protocol") != protocol:
        raise WSError("server did not accept subprotocol %s" % protocol)


async def _head_line(stream, line, left):
    # One line of the response head, read a byte at a time: the server's first frame may follow in the same
    # packet and must stay in the stream (asyncio streams have no peek). Only the first len(line) bytes are
    # kept, so an endless line costs no memory; the whole head is bounded by left. -> (kept, consumed)
    one = memoryview(bytearray(1))
    n = used = 0
    while True:
        r = await stream.readinto(one)
        if r is None:  # TLS record not complete yet
            continue
        if not r:
            raise WSError("connection closed during handshake")
        used += 1
        if used > left:
            raise WSError("handshake response head longer than %d bytes" % _MAX_HEAD)
        c = one[0]
        if c == 10:
            return n, used
        if n < len(line):
            line[n] = c
            n += 1


# ---- connect ----

async def _open(tls, host, port, path, protocol, auth, ssl, max_frame):
    where = "%s:%d" % (host, port)
    kw = {}
    if tls:
        kw = {"ssl": ssl, "server_hostname": host}
    stream = None
    try:
        stream, _ = await asyncio.open_connection(host, port, **kw)
        try:
            stream.s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (same numbers on Linux and lwIP)
        except (AttributeError, OSError, TypeError):
            pass  # a TLS socket does not expose the option: the single-write framing above still helps
        await handshake(stream, host if port == (443 if tls else 80) else where, path, protocol, auth)
    except BaseException as e:  # WSError, or the timeout cancelling us, pass through once the stream is shut
        if stream is not None:
            try:
                stream.close()
                await stream.wait_closed()
            except Exception:
                pass
        if not isinstance(e, (OSError, ValueError) if stream else OSError):
            raise
        a = e.args
        # unix: "[addrinfo error -2]"; ESP32 (lwIP): errno -202
        if not stream and a and (isinstance(a[0], str) and "addrinfo" in a[0] or a[0] == -202):
            raise WSError("cannot resolve host %s" % host)
        if isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
            raise WSError("connection refused (%s)" % where)
        if tls and stream:
            # mbedTLS reports a failed handshake at the first read or write after open_connection; it pads
            # its messages with newlines
            raise WSError("TLS verification failed: %s" % " ".join(str(e).split()))
        raise WSError("connection failed (%s): %s" % (where, e))
    return WS(stream, max_frame)


async def connect(url, protocol="ocpp1.6", user=None, password=None, ssl=None, timeout_ms=10000,
                  max_frame=16384):
    """Opens a WebSocket. wss:// needs ssl, a verifying SSLContext (lib/tls.py): the server is always verified,
    and its name checked. HTTP Basic auth is sent only with a password."""
    tls, host, port, path = parse_url(url)
    if tls and ssl is None:
        raise WSError("wss needs a CA certificate")
    # No password, no Authorization header: "CP1:" would tell the server a password is empty, not absent.
    auth = basic_auth(user, password) if user is not None and password else None
    try:
        return await asyncio.wait_for_ms(_open(tls, host, port, path, protocol, auth, ssl, max_frame),
                                         timeout_ms)
    except asyncio.TimeoutError:
        raise WSError("handshake timed out")
