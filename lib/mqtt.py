# MQTT 3.1.1 client on asyncio streams (OASIS MQTT 3.1.1, section numbers below). Knows nothing of chargers.
# It speaks the protocol only: what to do when the connection ends (connect again, back off) is the caller's
# policy, as umqtt.simple leaves it to umqtt.robust.
#
# Per connection one reader task matches acknowledgements and hands incoming PUBLISH packets to a callback, and
# one keepalive task sends PINGREQ and declares the link dead when no answer comes in time. Writes are serialised
# by a lock because MicroPython's Stream.drain() drops bytes written by another task while it drains.
import asyncio
import errno
import time
from micropython import const

# Fixed header first bytes (§2.2): packet type in the high nibble, required flags in the low one
_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)  # §3.8.1: flags 0010
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

_SUB_FAILED = const(0x80)  # SUBACK return code (§3.9.3)
_MAX_LEN = const(268435455)  # largest remaining length in 4 bytes (§2.2.3)
_SLOTS = const(4)  # QoS 1 publishes and subscriptions that may wait for their acknowledgement at once
_WBUF = const(128)  # holds a packet's header and topic; payloads that do not fit are written from the caller's
_WHEAD = const(10)  # bytes of a PUBLISH/SUBSCRIBE around its topic: fixed header, lengths, packet id, QoS


class MQTTError(Exception):
    """What failed, in words. rc is the CONNACK return code when the broker refused the connection, else 0."""

    def __init__(self, reason, rc=0):
        super().__init__(reason)
        self.rc = rc


def _refusal(rc):
    # CONNACK return codes 1-5 (§3.2.2.3)
    if 1 <= rc <= 5:
        why = ("unacceptable protocol version", "identifier rejected", "server unavailable",
               "bad user name or password", "not authorised")[rc - 1]
    else:
        why = "return code %d" % rc
    return MQTTError("connection refused: " + why, rc)


def encode_len(buf, i, n):
    """Writes the remaining length n at buf[i:] as a variable byte integer (§2.2.3); returns the index after it."""
    if not 0 <= n <= _MAX_LEN:
        raise MQTTError("packet too large (%d bytes)" % n)
    while n > 0x7F:
        buf[i] = (n & 0x7F) | 0x80
        n >>= 7
        i += 1
    buf[i] = n
    return i + 1


def decode_len(buf, i):
    """The remaining length encoded at buf[i:]."""
    n = 0
    shift = 0
    while True:
        c = buf[i]
        n |= (c & 0x7F) << shift
        if not c & 0x80:
            return n
        shift += 7
        i += 1
        if shift > 21:
            raise MQTTError("protocol error: remaining length longer than 4 bytes")


def _u16(buf, i, v):
    buf[i] = v >> 8
    buf[i + 1] = v & 0xFF
    return i + 2


def _str(buf, i, data):
    # A length-prefixed string or binary field (§1.5.3); data is a memoryview (of a str: its UTF-8 bytes)
    n = len(data)
    if n > 0xFFFF:
        raise MQTTError("field of %d bytes: MQTT allows 65535" % n)
    i = _u16(buf, i, n)
    buf[i:i + n] = data
    return i + n


class MQTTClient:
    """callback(topic, payload, retained) receives each incoming PUBLISH inside the reader task. topic and payload
    are memoryviews into the read buffer, valid only during the call (copy what you keep); it must not block (start
    a task to publish an answer). A message larger than max_packet is skipped: payload is None, and so is topic if
    even the topic did not fit. An exception in the callback ends the connection with an MQTTError.
    timeout_ms bounds every wait for the broker: CONNACK, SUBACK, PUBACK before a resend, PINGRESP."""

    def __init__(self, client_id, callback=None, user=None, password=None, keepalive=60, clean=True,
                 max_packet=1024, timeout_ms=10000, retries=3):
        if not 0 <= keepalive <= 0xFFFF:
            raise MQTTError("keepalive must be 0-65535 s")
        if password is not None and user is None:
            raise MQTTError("a password needs a user name (§3.1.2.9)")
        self._id = client_id
        self._cb = callback
        self._user = user
        self._password = password
        self._keepalive = keepalive
        self._ka_ms = keepalive * 1000
        self._clean = clean
        self._will = None
        self._timeout = timeout_ms
        self._retries = retries
        self._buf = bytearray(max(max_packet, 16))  # the one read buffer; at least a fixed header's 5 bytes
        self._mv = memoryview(self._buf)
        self._wbuf = bytearray(_WBUF)
        self._wmv = memoryview(self._wbuf)
        self._lock = asyncio.Lock()
        self._pids = [0] * _SLOTS  # packet id waiting in each slot, 0 = free
        self._res = [0] * _SLOTS  # -1 while waiting, then 0 (PUBACK) or the SUBACK return code
        self._evs = [asyncio.Event() for _ in range(_SLOTS)]
        self._free = asyncio.Event()  # a slot was released
        self._pid = 0
        self._s = None  # the stream while connected
        self._tasks = None
        self._down = asyncio.Event()
        self._down.set()
        self._rx_ms = self._tx_ms = 0
        self.error = None  # the MQTTError that ended the last connection (None after disconnect())

    @property
    def connected(self):
        return self._tasks is not None

    def set_last_will(self, topic, payload, qos=0, retain=False):
        """The message the broker publishes when this client goes away without DISCONNECT (§3.1.2.5)."""
        if not 0 <= qos <= 2:
            raise MQTTError("will QoS must be 0-2")
        self._topic(topic, False)
        self._will = (topic, payload, qos, retain)

    # ---- connecting ----

    async def connect(self, host, port=0, ssl=None, server_hostname=None):
        """Opens the connection and waits for CONNACK; returns the session-present flag. ssl: an SSLContext that
        verifies the server (CERT_REQUIRED); server_hostname defaults to host. Raises MQTTError."""
        if self._s is not None:
            raise MQTTError("already connected or connecting")
        if ssl is not None:
            from ssl import CERT_REQUIRED

            if ssl is True or ssl.verify_mode != CERT_REQUIRED:
                raise MQTTError("ssl must be an SSLContext with verify_mode CERT_REQUIRED")
        port = port or (8883 if ssl else 1883)
        where = "%s:%d" % (host, port)
        try:
            return await asyncio.wait_for_ms(self._open(host, port, ssl, server_hostname, where), self._timeout)
        except asyncio.TimeoutError:
            raise MQTTError("no CONNACK from %s within %d ms" % (where, self._timeout))

    async def _open(self, host, port, ssl, server_hostname, where):
        kw = {}
        if ssl is not None:
            kw = {"ssl": ssl, "server_hostname": server_hostname or host}
        s = None
        try:
            s, _ = await asyncio.open_connection(host, port, **kw)
            try:
                s.s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (same numbers on Linux and lwIP)
            except (AttributeError, OSError, TypeError):
                pass  # a TLS socket does not expose the option
            return await self.start(s)
        except MQTTError:
            raise
        except EOFError:
            raise MQTTError("%s closed the connection before CONNACK" % where)
        except (OSError, ValueError) as e:  # mbedTLS reports some failures as ValueError
            a = e.args
            # unix: "[addrinfo error -2]"; ESP32 (lwIP): errno -202
            if not s and a and (isinstance(a[0], str) and "addrinfo" in a[0] or a[0] == -202):
                raise MQTTError("cannot resolve host %s" % host)
            if isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
                raise MQTTError("TCP connection to %s refused (no broker listening?)" % where)
            if ssl is not None and s:
                # the handshake runs at the first write; mbedTLS pads its messages with newlines
                raise MQTTError("TLS handshake with %s failed: %s" % (where, " ".join(str(e).split())))
            raise MQTTError("connection to %s failed: %s" % (where, e))
        finally:
            if s is not None and self._s is not s:  # failed or cancelled by the timeout
                await self._close(s)

    async def start(self, stream):
        """Runs MQTT over an open stream: sends CONNECT, waits for CONNACK, starts the connection's tasks.
        Returns the session-present flag. (connect() calls it; a test or another transport may too.)"""
        self._s = stream
        self._tx_ms = self._rx_ms = time.ticks_ms()
        b = self._buf
        try:
            async with self._lock:
                await self._out(0, self._connect_packet())
            b0, n = await self._header()
            if b0 != _CONNACK or n != 2:
                raise MQTTError("protocol error: expected CONNACK, got packet type %d" % (b0 >> 4))
            await self._fill(self._mv[:2])
            if b[1]:
                raise _refusal(b[1])
        except BaseException:
            self._s = None
            await self._close(stream)
            raise
        present = bool(b[0] & 1)
        self.error = None
        self._down.clear()
        for e in self._evs:
            e.clear()
        self._tasks = [asyncio.create_task(self._reader())]
        if self._ka_ms:
            self._tasks.append(asyncio.create_task(self._pinger()))
        return present

    def _connect_packet(self):
        # Built once per connection in a block of its own: the strings may be longer than the write buffer.
        flags = 2 if self._clean else 0  # clean session
        fields = [memoryview(self._id)]  # in the order of §3.1.3
        if self._will:
            topic, payload, qos, retain = self._will
            fields += (memoryview(topic), memoryview(payload))
            flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        if self._user is not None:
            fields.append(memoryview(self._user))
            flags |= 0x80
        if self._password is not None:
            fields.append(memoryview(self._password))
            flags |= 0x40
        n = 10 + sum(2 + len(f) for f in fields)
        pkt = bytearray(5 + n)
        pkt[0] = _CONNECT
        i = encode_len(pkt, 1, n)
        pkt[i:i + 7] = b"\x00\x04MQTT\x04"  # protocol name and level 4 = 3.1.1 (§3.1.2.1-2)
        pkt[i + 7] = flags
        i = _u16(pkt, i + 8, self._keepalive)
        for f in fields:
            i = _str(pkt, i, f)
        return memoryview(pkt)[:i]

    async def disconnect(self):
        """Sends DISCONNECT (so the broker drops the will) and closes the connection."""
        if self._tasks is None:
            return
        for t in self._tasks:  # the reader must not report the broker closing the link as a failure
            t.cancel()
        self._tasks = []
        try:
            await asyncio.wait_for_ms(self._short(_DISCONNECT), self._timeout)
        except Exception:  # the broker may be gone already; closing goes on regardless
            pass
        await self._drop(None)

    async def wait_closed(self):
        """Waits until the connection ends; returns the MQTTError that ended it (None after disconnect())."""
        await self._down.wait()
        return self.error

    async def _close(self, s):
        try:
            s.close()
            await s.wait_closed()
        except Exception:
            pass

    async def _drop(self, err):
        # Ends the connection once: stops its tasks, closes the stream, wakes everyone waiting for an answer.
        s = self._s
        if s is None:
            return
        self._s = None
        self.error = err
        me = asyncio.current_task()
        for t in self._tasks or ():
            if t is not me:
                t.cancel()
        self._tasks = None
        for e in self._evs:
            e.set()
        self._free.set()
        await self._close(s)
        self._down.set()

    def _check(self):
        if self._tasks is None:
            e = self.error
            raise MQTTError(e.args[0], e.rc) if e else MQTTError("not connected")

    # ---- writing ----

    async def _out(self, i, data=None):
        # Sends wbuf[:i] then data; the caller holds the lock (or owns the stream, in start()). Data that fits
        # is copied behind the header to leave in one write; a larger one goes out from the caller's buffer.
        s = self._s
        b = self._wbuf
        try:
            if data is not None and i + len(data) <= len(b):
                b[i:i + len(data)] = data
                i += len(data)
                data = None
            if i:
                s.write(self._wmv[:i])
                await s.drain()  # empties the stream's buffer before ours is reused
            if data is not None:
                s.write(data)
                await s.drain()
        except (OSError, ValueError) as e:
            if self._tasks is None and self._s is not None:  # still in start(): connect() says what failed
                raise
            await self._drop(MQTTError("connection lost: %s" % e))
            self._check()
        self._tx_ms = time.ticks_ms()

    async def _short(self, b0, pid=-1):
        # PUBACK, PINGREQ, DISCONNECT: a fixed header and at most a packet id
        async with self._lock:
            self._check()
            b = self._wbuf
            b[0] = b0
            b[1] = 0 if pid < 0 else 2
            await self._out(2 if pid < 0 else _u16(b, 2, pid))

    def _topic(self, topic, wild):
        # -> the topic's bytes as a memoryview; refuses what the broker would answer by dropping us (§4.7)
        mv = memoryview(topic)
        if not 0 < len(mv) <= _WBUF - _WHEAD:
            raise MQTTError("topic must be 1-%d bytes long (%r)" % (_WBUF - _WHEAD, topic))
        if not wild:
            h, p = ("#", "+") if isinstance(topic, str) else (b"#", b"+")
            if h in topic or p in topic:
                raise MQTTError("wildcard in topic name %r" % (topic,))
        return mv

    async def _publish(self, t, payload, qos, retain, dup, pid):
        async with self._lock:
            self._check()
            b = self._wbuf
            b[0] = _PUBLISH | dup << 3 | qos << 1 | (1 if retain else 0)
            i = _str(b, encode_len(b, 1, 2 + len(t) + 2 * qos + len(payload)), t)
            if qos:
                i = _u16(b, i, pid)
            await self._out(i, payload)

    async def publish(self, topic, payload, qos=0, retain=False):
        """Sends a message (str or bytes-like). QoS 1 returns once the broker's PUBACK came; without one within
        timeout_ms the message is sent again with the DUP flag, `retries` times, then MQTTError."""
        if qos != 0 and qos != 1:
            raise MQTTError("QoS must be 0 or 1, not %r" % (qos,))
        t = self._topic(topic, False)
        payload = memoryview(payload)
        if not qos:
            return await self._publish(t, payload, 0, retain, 0, 0)
        k = await self._take()
        try:
            for n in range(self._retries + 1):
                await self._publish(t, payload, 1, retain, 1 if n else 0, self._pids[k])
                if await self._wait(k):
                    return
            raise MQTTError("no PUBACK for %r after %d sends" % (topic, self._retries + 1))
        finally:
            self._release(k)

    async def subscribe(self, topic, qos=0):
        """Subscribes to one topic filter; returns the QoS the broker granted. MQTTError if it refused."""
        if qos != 0 and qos != 1:
            raise MQTTError("QoS must be 0 or 1, not %r" % (qos,))
        t = self._topic(topic, True)
        k = await self._take()
        try:
            async with self._lock:
                self._check()
                b = self._wbuf
                b[0] = _SUBSCRIBE
                i = _str(b, _u16(b, encode_len(b, 1, 5 + len(t)), self._pids[k]), t)
                b[i] = qos
                await self._out(i + 1)
            if not await self._wait(k):
                raise MQTTError("no SUBACK for %r within %d ms" % (topic, self._timeout))
            rc = self._res[k]
        finally:
            self._release(k)
        if rc == _SUB_FAILED:
            raise MQTTError("subscription to %r refused by the broker" % (topic,))
        if rc > qos:
            raise MQTTError("protocol error: SUBACK grants QoS %d for %r" % (rc, topic))
        return rc

    # ---- waiting for acknowledgements ----

    async def _take(self):
        # A free slot with a new packet id (1-65535, none in use, §2.3.1); waits while all slots are busy
        pids = self._pids
        while True:
            self._check()
            for k in range(_SLOTS):
                if not pids[k]:
                    pid = self._pid
                    while True:
                        pid = pid % 0xFFFF + 1
                        if pid not in pids:
                            break
                    self._pid = pids[k] = pid
                    self._res[k] = -1
                    self._evs[k].clear()
                    return k
            self._free.clear()
            await self._free.wait()

    def _release(self, k):
        self._pids[k] = 0
        self._free.set()

    async def _wait(self, k):
        # True once slot k's acknowledgement came, False after timeout_ms; MQTTError if the connection ended.
        # Each slot has its own event: with a shared one a waiter could clear a wake-up meant for another.
        try:
            await asyncio.wait_for_ms(self._evs[k].wait(), self._timeout)
        except asyncio.TimeoutError:
            pass
        if self._res[k] >= 0:
            return True
        self._check()
        return False

    def _ack(self, pid, rc):
        for k in range(_SLOTS):
            if self._pids[k] == pid and self._res[k] < 0:
                self._res[k] = rc
                self._evs[k].set()
                return
        # else: a second PUBACK after a resend, or an answer we stopped waiting for

    # ---- reading ----

    async def _fill(self, mv):
        s = self._s
        got = 0
        n = len(mv)
        while got < n:
            r = await s.readinto(mv[got:])
            if r is None:  # TLS record not complete yet
                continue
            if not r:
                raise EOFError
            got += r

    async def _skip(self, n):
        mv = self._mv
        while n > 0:
            k = min(n, len(mv))
            await self._fill(mv[:k])
            n -= k

    async def _header(self):
        # -> (first byte, remaining length) of the next packet; its body is still in the stream
        b = self._buf
        await self._fill(self._mv[:2])
        i = 1
        while b[i] & 0x80:
            i += 1
            if i > 4:
                raise MQTTError("protocol error: remaining length longer than 4 bytes")
            await self._fill(self._mv[i:i + 1])
        self._rx_ms = time.ticks_ms()
        return b[0], decode_len(b, 1)

    async def _reader(self):
        try:
            while True:
                b0, n = await self._header()
                t = b0 & 0xF0
                if t == _PUBLISH:
                    await self._incoming(b0, n)
                elif b0 == _PUBACK and n == 2 or b0 == _SUBACK and n == 3:
                    await self._fill(self._mv[:n])
                    b = self._buf
                    self._ack((b[0] << 8) | b[1], b[2] if n == 3 else 0)
                elif b0 != _PINGRESP or n:
                    raise MQTTError("protocol error: unexpected packet type %d (flags %d, %d bytes)"
                                    % (b0 >> 4, b0 & 0x0F, n))
        except MQTTError as e:
            err = e
        except EOFError:
            err = MQTTError("connection closed by the broker")
        except (OSError, ValueError) as e:
            err = MQTTError("connection lost: %s" % e)
        await self._drop(err)

    async def _incoming(self, b0, n):
        qos = (b0 >> 1) & 3
        if n < 2:
            raise MQTTError("protocol error: PUBLISH of %d bytes" % n)
        if qos > 1:
            raise MQTTError("protocol error: QoS %d PUBLISH (subscriptions ask for 0 or 1)" % qos)
        b = self._buf
        mv = self._mv
        await self._fill(mv[:2])
        tn = (b[0] << 8) | b[1]
        j = 2 + tn + 2 * qos  # where the payload starts
        if j > n:
            raise MQTTError("protocol error: PUBLISH shorter than its topic")
        k = min(n, len(b))  # what the buffer takes; the rest of an oversized message is skipped
        pid = 0
        if j <= k:
            await self._fill(mv[2:k])
            if qos:
                pid = (b[j - 2] << 8) | b[j - 1]
            self._deliver(mv[2:2 + tn], mv[j:n] if n == k else None, b0 & 1)
            await self._skip(n - k)
        else:  # not even the topic fits
            await self._skip(tn)
            if qos:
                await self._fill(mv[:2])
                pid = (b[0] << 8) | b[1]
            await self._skip(n - j)
            self._deliver(None, None, b0 & 1)
        if qos:
            await self._short(_PUBACK, pid)

    def _deliver(self, topic, payload, retained):
        if self._cb is not None:
            try:
                self._cb(topic, payload, bool(retained))
            except Exception as e:
                raise MQTTError("message callback failed: %r" % (e,))

    async def _pinger(self):
        # §3.1.2.10: something must reach the broker within the keepalive. A ping is also due when the broker has
        # been silent that long, so a broker that stopped answering is noticed while we keep publishing. The
        # deadline is at most the keepalive, so pings stay within it (the broker gives up after 1.5 times that).
        deadline = min(self._timeout, self._ka_ms)
        while True:
            now = time.ticks_ms()
            idle = max(time.ticks_diff(now, self._tx_ms), time.ticks_diff(now, self._rx_ms))
            if idle < self._ka_ms:
                await asyncio.sleep_ms(self._ka_ms - idle)
                continue
            try:
                await asyncio.wait_for_ms(self._short(_PINGREQ), deadline)
                await asyncio.sleep_ms(deadline - time.ticks_diff(time.ticks_ms(), now))
            except asyncio.TimeoutError:  # could not even send it: the link is stalled
                pass
            except MQTTError:  # the write failed and the connection is down already
                return
            if time.ticks_diff(self._rx_ms, now) < 0:  # not a byte since the ping
                await self._drop(MQTTError("no PINGRESP within %d ms: connection dead" % deadline))
                return
