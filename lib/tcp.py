# One asyncio TCP (optionally TLS) connection for the transfer clients (lib/http.py, lib/ftp.py): a timeout on
# connecting and on every read and write, reads through one caller-provided buffer, line reads that never hold
# more than that buffer (a hostile server cannot make us allocate), and errors that say what failed. The caller
# chooses the exception class, so each protocol raises a single type.
import asyncio
import errno
import time

_CONN_EOF = -0x7280  # MBEDTLS_ERR_SSL_CONN_EOF: the peer closed TCP without a TLS close_notify


class _Grab:
    # asyncio.open_connection() hands its new socket to ssl.wrap_socket() before its first wait: taking it here
    # lets a timeout during the connect close it (the unix port's sockets have no finaliser: a lost one stays
    # open). With no TLS context the socket is passed through unwrapped.
    def __init__(self, ctx):
        self.ctx = ctx
        self.sock = None

    def wrap_socket(self, sock, server_hostname=None, do_handshake_on_connect=True):
        self.sock = sock
        if self.ctx is not None:
            sock = self.ctx.wrap_socket(sock, server_hostname=server_hostname,
                                        do_handshake_on_connect=do_handshake_on_connect)
            self.sock = sock
        return sock


def _oneline(e):
    # mbedTLS pads its messages with newlines
    return " ".join(str(e).split())


class Conn:
    """err: the exception class raised for every failure (built with one message argument). buf: the bytearray
    that every read goes through. what: names the connection in messages ("connection", "data connection")."""

    def __init__(self, err, buf, what="connection"):
        self.err = err
        self.buf = buf
        self.mv = memoryview(buf)
        self.pos = 0  # unread bytes are buf[pos:end]
        self.end = 0
        self.cut = False  # the last line() was longer than the buffer: only its head came back
        self.what = what
        self.where = ""  # host:port, for messages
        self.s = None  # the asyncio stream
        self._sock = None  # the socket under it (TLS-wrapped when TLS), closed by close()
        self._tls = False
        self._fresh = True  # nothing got through yet: a TLS handshake fails at the first read or write
        self.io_ms = 10000
        self._connect_ms = 10000
        # the timeout: one watcher task per connection cancels the task whose read/write passed its due time
        self._due = 0
        self._wake = 0  # when the watcher wakes next
        self._armed = False
        self._expired = False
        self._doing = ""
        self._task = None
        self._watch = None

    async def open(self, host, port, ssl=None, connect_ms=10000, io_ms=10000):
        """Connects; ssl: an SSLContext for TLS (its verify_mode is the caller's choice), checked against host.
        The TLS handshake runs at the first write or read, under connect_ms too."""
        self.where = "%s:%d" % (host, port)
        self.io_ms = io_ms
        self._connect_ms = connect_ms
        self._tls = ssl is not None
        grab = _Grab(ssl)
        self._arm(connect_ms, "")
        try:
            self.s = (await asyncio.open_connection(host, port, grab, host))[0]
        except BaseException as e:
            self._sock = grab.sock
            self.close()
            raise self._map(e, host)
        finally:
            self._armed = False
        self._sock = grab.sock

    def close(self):
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    # ---- timeouts ----

    def _arm(self, ms, doing):
        self._due = time.ticks_add(time.ticks_ms(), ms)
        self._doing = doing
        self._task = asyncio.current_task()
        self._armed = True
        self._expired = False
        if self._watch is not None and time.ticks_diff(self._wake, self._due) > 0:
            self._watch.cancel()  # it sleeps past the new due time (a short timeout after a long one)
            self._watch = None
        if self._watch is None:
            self._watch = asyncio.create_task(self._watcher())

    async def _watcher(self):
        # Sleeps until the armed due time; every read and write moves it later, so the watcher wakes about once
        # per timeout period however many reads run (asyncio.sleep_ms does not allocate; a wait_for_ms per read
        # would make a task and a coroutine every time).
        while True:
            wait = self.io_ms
            if self._armed:
                wait = time.ticks_diff(self._due, time.ticks_ms())
                if wait <= 0:
                    self._armed = False
                    self._expired = True
                    self._watch = None  # the next read or write starts a new watcher
                    self._task.cancel()
                    return
            self._wake = time.ticks_add(time.ticks_ms(), wait)
            await asyncio.sleep_ms(wait)

    def _map(self, e, host=""):
        # -> the exception to raise for e: ours with a message, or e itself (a cancel from outside, MemoryError)
        if isinstance(e, self.err):
            return e
        if isinstance(e, asyncio.CancelledError):
            if self._expired:
                return self.err("%s timed out %s(%s)" % (self.what, self._doing, self.where))
            return e
        a = e.args
        if isinstance(e, OSError):
            # unix: "[addrinfo error -2]"; ESP32 (lwIP): -202
            if host and a and (isinstance(a[0], str) and "addrinfo" in a[0] or a[0] == -202):
                return self.err("cannot resolve host %s" % host)
            if e.errno == errno.ECONNREFUSED:
                return self.err("%s refused (%s)" % (self.what, self.where))
            if self._tls and self._fresh and a and isinstance(a[0], int) and a[0] < 0:
                return self.err("TLS handshake failed (%s): %s" % (self.where, _oneline(e)))
        elif isinstance(e, ValueError) and self._tls and self._fresh:
            # mbedTLS reports a certificate it does not accept as ValueError("The certificate ...")
            return self.err("TLS verification failed (%s): %s" % (self.where, _oneline(e)))
        if isinstance(e, (OSError, ValueError)):
            return self.err("%s lost (%s): %s" % (self.what, self.where, _oneline(e)))
        return e

    # ---- I/O ----

    async def write(self, data):
        """Sends all of data (any buffer); returns once the stream's buffer is empty, so data may be reused."""
        self._arm(self._connect_ms if self._fresh else self.io_ms, "sending ")
        try:
            self.s.write(data)
            await self.s.drain()
            self._fresh = False
        except BaseException as e:
            raise self._map(e)
        finally:
            self._armed = False

    async def readinto(self, mv):
        """Reads into mv, past the buffer (callers keep the buffered bytes in mind); -> bytes read, 0 at EOF."""
        self._arm(self._connect_ms if self._fresh else self.io_ms, "waiting for data ")
        try:
            while True:
                n = await self.s.readinto(mv)
                if n is not None:  # None: a TLS record is not complete yet
                    self._fresh = False
                    return n
        except OSError as e:
            if self._tls and not self._fresh and e.args and e.args[0] == _CONN_EOF:
                return 0  # the body's length decides whether this end came too early
            raise self._map(e)
        except BaseException as e:
            raise self._map(e)
        finally:
            self._armed = False

    async def _more(self):
        # Moves the unread bytes to the front and reads after them; -> bytes read, 0 at EOF
        n = self.end - self.pos
        if self.pos:
            self.mv[:n] = self.mv[self.pos:self.end]
            self.pos = 0
            self.end = n
        got = await self.readinto(self.mv[n:])
        self.end += got
        return got

    async def chunk(self, limit):
        """Up to limit bytes, buffered ones first, as a memoryview into the buffer that is valid until the next
        read; empty at EOF."""
        if self.pos == self.end:
            self.pos = 0
            self.end = await self.readinto(self.mv[:min(limit, len(self.buf))])
        start = self.pos
        self.pos = min(self.end, start + limit)
        return self.mv[start:self.pos]

    async def line(self):
        """Next line without its CR LF, as a memoryview into the buffer valid until the next read; None at EOF
        before a whole line. A line longer than the buffer comes back as its first half with self.cut set; the
        rest of it is read and dropped."""
        self.cut = False
        buf = self.buf
        while True:
            i = buf.find(b"\n", self.pos, self.end)
            if i >= 0:
                start = self.pos
                self.pos = i + 1
                if i > start and buf[i - 1] == 13:
                    i -= 1
                return self.mv[start:i]
            if self.pos == 0 and self.end == len(buf):
                return await self._cut_line()
            if not await self._more():
                return None

    async def _cut_line(self):
        # The buffer holds the head of an overlong line: keep its first half and read the rest through the
        # second half until the line ends.
        self.cut = True
        half = len(self.buf) // 2
        while True:
            self.pos = self.end = half
            n = await self.readinto(self.mv[half:])
            if not n:
                return None
            self.end = half + n
            i = self.buf.find(b"\n", half, self.end)
            if i >= 0:
                self.pos = i + 1
                return self.mv[:half]
