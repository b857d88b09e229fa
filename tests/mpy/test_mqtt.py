# lib/mqtt.py on a fake broker stream: the exact bytes on the wire (MQTT 3.1.1 figures) and the parsing of every
# packet a broker sends. The real broker (mosquitto) is in tests/integration/test_mqtt_lib.py.
import asyncio
import gc
import time
import tinytest
from lib.mqtt import MQTTClient, MQTTError, encode_len, decode_len


def h(text):
    return bytes.fromhex(text.replace(" ", ""))


class Peer:
    # The broker's end of a connection: the test feeds what the broker sends (handed out 3 bytes at a time, to
    # exercise partial reads) and looks at what the client wrote.
    def __init__(self, rx=b""):
        self.rx = bytearray(rx)
        self.pos = 0
        self.tx = bytearray()
        self.ev = asyncio.Event()
        self.eof = False
        self.closed = False

    def feed(self, data):
        self.rx += data
        self.ev.set()

    def hang_up(self):
        self.eof = True
        self.ev.set()

    async def readinto(self, buf):
        while self.pos >= len(self.rx):
            if self.eof or self.closed:
                return 0
            self.ev.clear()
            await self.ev.wait()
        n = min(len(buf), 3, len(self.rx) - self.pos)
        buf[:n] = self.rx[self.pos:self.pos + n]
        self.pos += n
        if self.pos == len(self.rx):  # keeps a long test's heap flat
            self.rx = bytearray()
            self.pos = 0
        return n

    def write(self, buf):
        assert not self.closed, "write after close"
        self.tx.extend(buf)

    async def drain(self):
        await asyncio.sleep_ms(0)

    def close(self):
        pass

    async def wait_closed(self):
        self.closed = True
        self.ev.set()

    def take(self):
        out = bytes(self.tx)
        self.tx = bytearray()
        return out


CONNACK = h("20 02 00 00")


class Inbox:
    def __init__(self):
        self.got = []

    def __call__(self, topic, payload, retained):
        self.got.append((None if topic is None else bytes(topic), None if payload is None else bytes(payload),
                         retained))


async def online(**kw):
    kw.setdefault("timeout_ms", 2000)
    inbox = Inbox()
    c = MQTTClient("CP1", inbox, **kw)
    p = Peer(CONNACK)
    assert await c.start(p) is False
    p.take()
    return c, p, inbox


async def until(cond, ms=2000):
    t0 = time.ticks_ms()
    while not cond():
        assert time.ticks_diff(time.ticks_ms(), t0) < ms, "condition not met in %d ms" % ms
        await asyncio.sleep_ms(2)


async def expect_raise(coro, text):
    try:
        await coro
    except MQTTError as e:
        assert text in str(e), str(e)
        return e
    raise AssertionError("no MQTTError (%s)" % text)


# ---- remaining length (§2.2.3, table 2.4) ----

VARINTS = ((0, "00"), (127, "7f"), (128, "80 01"), (16383, "ff 7f"), (16384, "80 80 01"), (2097151, "ff ff 7f"),
           (2097152, "80 80 80 01"), (268435455, "ff ff ff 7f"))


def test_varint_encode_decode_edges():
    for n, wire in VARINTS:
        buf = bytearray(6)
        end = encode_len(buf, 1, n)
        assert buf[1:end] == h(wire), (n, buf)
        assert decode_len(buf, 1) == n
    tinytest.raises(MQTTError, encode_len, bytearray(6), 0, 268435456)
    tinytest.raises(MQTTError, encode_len, bytearray(6), 0, -1)
    e = tinytest.raises(MQTTError, decode_len, h("ff ff ff ff 01"), 0)
    assert "longer than 4 bytes" in str(e)


async def test_varint_edges_through_the_reader():
    # PUBLISH packets whose remaining length is 127, 128, 16383, 16384 arrive whole and in step
    got = []

    def sizes(topic, payload, retained):
        got.append((bytes(topic), len(payload), payload[-1]))
    c = MQTTClient("CP1", sizes, max_packet=16400)
    p = Peer(CONNACK)
    await c.start(p)
    for n in (127, 128, 16383, 16384):
        packet = bytearray(5 + n)
        i = encode_len(packet, 1, n)
        packet[0] = 0x30
        packet[i:i + 3] = b"\x00\x01t"
        packet[i + n - 1] = n & 0xFF
        p.feed(memoryview(packet)[:i + n])
        del packet
        await until(lambda: len(got) == 1)
        assert got.pop() == (b"t", n - 3, n & 0xFF), n
        assert p.pos == 0 and not p.rx  # every byte of it read, no more
        gc.collect()
    await c.disconnect()


# ---- CONNECT (§3.1) ----

async def test_connect_with_will_and_credentials_exact_bytes():
    c = MQTTClient("CP1", user="u", password="p", keepalive=60)
    c.set_last_will("evse/status", "offline", qos=1, retain=True)
    p = Peer(CONNACK)
    await c.start(p)
    # flags EE: user, password, will retain, will QoS 1, will, clean session
    assert p.take() == (h("10 2b 00 04") + b"MQTT" + h("04 ee 00 3c 00 03") + b"CP1" + h("00 0b") + b"evse/status"
                        + h("00 07") + b"offline" + h("00 01") + b"u" + h("00 01") + b"p")
    assert c.connected
    await c.disconnect()


async def test_connect_minimal_and_persistent_session():
    c = MQTTClient("x", keepalive=0)
    p = Peer(CONNACK)
    await c.start(p)
    assert p.take() == h("10 0d 00 04") + b"MQTT" + h("04 02 00 00 00 01") + b"x"
    await c.disconnect()
    c = MQTTClient("x", user="only-user", keepalive=300, clean=False)
    p = Peer(h("20 02 01 00"))
    assert await c.start(p) is True  # session present
    assert p.take() == (h("10 18 00 04") + b"MQTT" + h("04 80 01 2c 00 01") + b"x" + h("00 09") + b"only-user")
    await c.disconnect()


async def test_connect_utf8_and_binary_password():
    c = MQTTClient("zähler", user="ü", password=b"\x00\xff", keepalive=0)
    p = Peer(CONNACK)
    await c.start(p)
    assert p.take() == (h("10 1b 00 04") + b"MQTT" + h("04 c2 00 00 00 07") + "zähler".encode() + h("00 02")
                        + "ü".encode() + h("00 02 00 ff"))
    await c.disconnect()


async def test_connack_refusals_say_why():
    texts = ((1, "unacceptable protocol version"), (2, "identifier rejected"), (3, "server unavailable"),
             (4, "bad user name or password"), (5, "not authorised"), (9, "return code 9"))
    for rc, text in texts:
        c = MQTTClient("CP1")
        p = Peer(bytes((0x20, 2, 0, rc)))
        e = await expect_raise(c.start(p), "connection refused: " + text)
        assert e.rc == rc and p.closed and not c.connected
    assert str(e) == "connection refused: return code 9"


async def test_connack_expected_first():
    for rx, text in ((h("30 03 00 01 74"), "expected CONNACK, got packet type 3"),
                     (h("20 03 00 00 00"), "expected CONNACK")):
        c = MQTTClient("CP1")
        p = Peer(rx)
        await expect_raise(c.start(p), text)
        assert p.closed


async def test_eof_before_connack():
    c = MQTTClient("CP1")
    p = Peer(h("20"))
    p.hang_up()
    tinytest.raises(EOFError, c.start, p)  # connect() turns it into "closed the connection before CONNACK"
    assert p.closed and not c.connected


def test_bad_arguments():
    tinytest.raises(MQTTError, MQTTClient, "x", None, None, "pw")  # password without a user (§3.1.2.9)
    tinytest.raises(MQTTError, MQTTClient, "x", None, None, None, 65536)
    c = MQTTClient("x")
    e = tinytest.raises(MQTTError, c.set_last_will, "a/#", "x")
    assert "wildcard" in str(e)
    tinytest.raises(MQTTError, c.set_last_will, "a", "x", 3)


async def test_connect_refuses_unverified_tls():
    import ssl
    c = MQTTClient("x")
    await expect_raise(c.connect("127.0.0.1", 1, ssl=True), "CERT_REQUIRED")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # MicroPython defaults to CERT_NONE
    await expect_raise(c.connect("127.0.0.1", 1, ssl=ctx), "CERT_REQUIRED")


# ---- PUBLISH out (§3.3) ----

async def test_publish_qos0_exact_bytes():
    c, p, _ = await online()
    await c.publish("a/b", "hi")
    await c.publish(b"a/b", b"\x00\xff", retain=True)
    await c.publish("a/b", "")
    assert p.take() == h("30 07 00 03 61 2f 62 68 69  31 07 00 03 61 2f 62 00 ff  30 05 00 03 61 2f 62")
    await c.disconnect()


async def test_publish_qos1_waits_for_puback():
    c, p, _ = await online()
    t = asyncio.create_task(c.publish("a/b", "hi", qos=1, retain=True))
    await until(lambda: len(p.tx) == 11)
    assert p.take() == h("33 09 00 03 61 2f 62 00 01 68 69")
    assert not t.done()
    p.feed(h("40 02 00 07"))  # someone else's id changes nothing
    await asyncio.sleep_ms(20)
    assert not t.done()
    p.feed(h("40 02 00 01"))
    await t
    await c.disconnect()


async def test_publish_qos1_resends_with_dup_then_gives_up():
    c, p, _ = await online(timeout_ms=40, retries=2)
    await expect_raise(c.publish("a/b", "hi", qos=1), "no PUBACK for 'a/b' after 3 sends")
    assert p.take() == h("32 09 00 03 61 2f 62 00 01 68 69  3a 09 00 03 61 2f 62 00 01 68 69"
                         "3a 09 00 03 61 2f 62 00 01 68 69")
    # a resend that is answered completes; the late second PUBACK is ignored
    t = asyncio.create_task(c.publish("a/b", "hi", qos=1))
    await until(lambda: p.tx.count(b"\x00\x02hi") == 2)
    p.feed(h("40 02 00 02  40 02 00 02"))
    await t
    assert p.take() == h("32 09 00 03 61 2f 62 00 02 68 69  3a 09 00 03 61 2f 62 00 02 68 69")
    assert c.connected
    await c.disconnect()


async def test_publish_large_payload_goes_out_uncopied_in_two_writes():
    c, p, _ = await online()
    payload = bytes(range(256)) + bytes(44)  # 300 bytes > the 128-byte write buffer
    await c.publish("t", payload, qos=0)
    assert p.take() == h("30 af 02 00 01 74") + payload  # remaining length 2 + 1 + 300 = 303
    await c.disconnect()


async def test_publish_checks_its_arguments():
    c, p, _ = await online()
    await expect_raise(c.publish("a/+/b", "x"), "wildcard")
    await expect_raise(c.publish(b"a/#", "x"), "wildcard")
    await expect_raise(c.publish("", "x"), "topic must be 1-118 bytes")
    await expect_raise(c.publish("t" * 119, "x"), "topic must be 1-118 bytes")
    await expect_raise(c.publish("t", "x", qos=2), "QoS must be 0 or 1")
    await c.publish("t" * 118, "x")
    assert p.take() == h("30 79 00 76") + b"t" * 118 + b"x"
    await c.disconnect()


async def test_packet_ids_unique_with_four_in_flight():
    # five QoS 1 publishes at once: four take the slots, the fifth waits for one to free
    c, p, _ = await online()
    tasks = [asyncio.create_task(c.publish("t", str(i), qos=1)) for i in range(5)]
    await until(lambda: p.tx.count(b"\x32\x06") == 4)
    await asyncio.sleep_ms(20)
    assert p.tx.count(b"\x32\x06") == 4
    p.feed(h("40 02 00 03"))  # out of order
    await until(lambda: tasks[2].done())
    await until(lambda: p.tx.count(b"\x32\x06") == 5)
    assert p.take()[-8:] == h("32 06 00 01 74 00 05 34")
    p.feed(h("40 02 00 01 40 02 00 02 40 02 00 04 40 02 00 05"))
    for t in tasks:
        await t
    await c.disconnect()


# ---- SUBSCRIBE (§3.8, §3.9) ----

async def test_subscribe_exact_bytes_and_granted_qos():
    c, p, _ = await online()
    t = asyncio.create_task(c.subscribe("cmd/#", qos=1))
    await until(lambda: len(p.tx) == 12)
    assert p.take() == h("82 0a 00 01 00 05") + b"cmd/#" + h("01")
    p.feed(h("90 03 00 01 01"))
    assert await t == 1
    t = asyncio.create_task(c.subscribe("a/+", qos=0))
    await until(lambda: len(p.tx) == 10)
    assert p.take() == h("82 08 00 02 00 03 61 2f 2b 00")
    p.feed(h("90 03 00 02 00"))
    assert await t == 0
    await c.disconnect()


async def test_suback_failure_reported():
    c, p, _ = await online()
    t = asyncio.create_task(c.subscribe("$SYS/#", qos=1))
    await until(lambda: len(p.tx) == 13)
    p.feed(h("90 03 00 01 80"))
    await expect_raise(t, "subscription to '$SYS/#' refused by the broker")
    assert c.connected  # a refused subscription is not a broken connection
    await c.disconnect()


async def test_suback_timeout():
    c, p, _ = await online(timeout_ms=30)
    await expect_raise(c.subscribe("x"), "no SUBACK for 'x' within 30 ms")
    await c.disconnect()


# ---- PUBLISH in (§3.3.4) ----

async def test_incoming_publish_qos0_and_retained():
    c, p, inbox = await online()
    p.feed(h("30 07 00 03 61 2f 62 68 69  31 05 00 03 61 2f 62"))
    await until(lambda: len(inbox.got) == 2)
    assert inbox.got == [(b"a/b", b"hi", False), (b"a/b", b"", True)]
    assert p.tx == b""  # QoS 0 is not acknowledged
    await c.disconnect()


async def test_incoming_publish_qos1_gets_puback():
    c, p, inbox = await online()
    p.feed(h("32 09 00 03 61 2f 62 12 34 68 69  3a 09 00 03 61 2f 62 12 34 68 69"))  # a DUP resend too
    await until(lambda: len(p.tx) == 8)
    assert inbox.got == [(b"a/b", b"hi", False)] * 2
    assert p.take() == h("40 02 12 34  40 02 12 34")
    await c.disconnect()


async def test_incoming_qos2_is_a_protocol_error():
    c, p, inbox = await online()
    p.feed(h("34 09 00 03 61 2f 62 00 01 68 69"))
    e = await c.wait_closed()
    assert "protocol error: QoS 2 PUBLISH" in str(e)
    assert p.closed and not c.connected and inbox.got == []


async def test_oversized_publish_skipped_and_stream_stays_in_step():
    c, p, inbox = await online(max_packet=32)
    big = b"x" * 40
    p.feed(h("32 2f 00 03 61 2f 62 00 09") + big)  # 47 bytes > 32, QoS 1: still acknowledged
    p.feed(h("30 2e 00 2c") + b"t" * 44)  # not even the topic fits
    p.feed(h("32 32 00 2c") + b"t" * 44 + h("00 0a 6f 6b"))  # nor here, QoS 1
    p.feed(h("30 04 00 01 74 6f"))  # a normal one after them
    await until(lambda: len(inbox.got) == 4)
    assert inbox.got == [(b"a/b", None, False), (None, None, False), (None, None, False), (b"t", b"o", False)]
    assert p.take() == h("40 02 00 09  40 02 00 0a")
    assert c.connected
    await c.disconnect()


async def test_unexpected_packets_end_the_connection():
    for rx, text in ((h("20 02 00 00"), "unexpected packet type 2"), (h("41 02 00 01"), "type 4 (flags 1"),
                     (h("90 04 00 01 00 00"), "type 9 (flags 0, 4 bytes)"), (h("d0 01 00"), "type 13"),
                     (h("e0 00"), "type 14"), (h("30 01 00"), "PUBLISH of 1 bytes"),
                     (h("30 04 00 05 61 62"), "shorter than its topic"), (h("30 ff ff ff ff 01"), "longer than 4")):
        c, p, _ = await online()
        p.feed(rx)
        e = await c.wait_closed()
        assert "protocol error" in str(e) and text in str(e), (text, str(e))
        assert p.closed
        await expect_raise(c.publish("t", "x"), text)  # later calls say why too


async def test_callback_failure_ends_the_connection():
    def bad(topic, payload, retained):
        raise ValueError("bad json")
    c = MQTTClient("CP1", bad)
    p = Peer(CONNACK)
    await c.start(p)
    p.feed(h("30 04 00 01 74 6f"))
    e = await c.wait_closed()
    assert str(e) == "message callback failed: ValueError('bad json',)", str(e)


async def test_broker_closing_is_reported():
    c, p, _ = await online()
    t = asyncio.create_task(c.publish("t", "x", qos=1))
    await until(lambda: p.tx)
    p.hang_up()
    await expect_raise(t, "connection closed by the broker")
    assert str(await c.wait_closed()) == "connection closed by the broker"
    await expect_raise(c.subscribe("t"), "connection closed by the broker")


class BrokenPipe(Peer):
    def write(self, buf):
        if self.broken:
            raise OSError(104)
        super().write(buf)


async def test_write_failure_ends_the_connection():
    c = MQTTClient("CP1", keepalive=1)
    p = BrokenPipe(CONNACK)
    p.broken = False
    await c.start(p)
    p.broken = True
    await expect_raise(c.publish("t", "x"), "connection lost: [Errno 104]")
    assert "connection lost" in str(await c.wait_closed()) and p.closed
    # the same from the keepalive task: the connection ends, the task leaves quietly
    p = BrokenPipe(CONNACK)
    p.broken = False
    await c.start(p)
    c._ka_ms = 50
    p.broken = True
    assert "connection lost: [Errno 104]" in str(await c.wait_closed())
    assert not c.connected


# ---- keepalive (§3.1.2.10, §3.12, §3.13) ----

async def test_pingreq_and_deadline():
    c, p, _ = await online(keepalive=1, timeout_ms=150)
    c._ka_ms = 200  # the wire says 1 s; the test does not wait that long
    await until(lambda: p.tx == h("c0 00"))
    p.take()
    p.feed(h("d0 00"))  # answered: stays up, pings again later
    await until(lambda: p.tx == h("c0 00"), 1000)
    assert c.connected
    t0 = time.ticks_ms()
    e = await c.wait_closed()  # this one is not answered
    assert str(e) == "no PINGRESP within 150 ms: connection dead", str(e)
    # the next ping (200 ms) plus its deadline (150 ms); the wire's 1 s keepalive would take over 1150 ms, and the
    # bound leaves a loaded host its scheduling
    assert time.ticks_diff(time.ticks_ms(), t0) < 1000
    assert p.closed
    await expect_raise(c.publish("t", "x"), "no PINGRESP")


async def test_ping_due_while_publishing_into_silence():
    # sending keeps the broker from timing us out, but a broker that says nothing for a keepalive gets a ping
    c, p, _ = await online(keepalive=1, timeout_ms=100)
    c._ka_ms = 150
    t0 = time.ticks_ms()
    while c.connected:
        try:
            await c.publish("t", "x")
        except MQTTError:
            break
        await asyncio.sleep_ms(20)
    assert b"\xc0\x00" in p.tx
    assert "no PINGRESP" in str(c.error)
    # ping due at 150 ms, dead 100 ms later; the wire's 1 s keepalive would take over 1100 ms
    assert time.ticks_diff(time.ticks_ms(), t0) < 1000


async def test_no_pings_without_keepalive():
    c, p, _ = await online(keepalive=0)
    await asyncio.sleep_ms(50)
    assert p.tx == b"" and c.connected
    await c.disconnect()


# ---- DISCONNECT (§3.14) ----

async def test_disconnect_exact_bytes_and_state():
    c, p, _ = await online()
    await c.disconnect()
    assert p.take() == h("e0 00") and p.closed
    assert not c.connected and await c.wait_closed() is None
    await expect_raise(c.publish("t", "x"), "not connected")
    await c.disconnect()  # twice is harmless
    # the same client connects again
    p = Peer(CONNACK)
    await c.start(p)
    await c.publish("t", "x")
    assert p.take()[-6:] == h("30 04 00 01 74 78")
    await c.disconnect()


# ---- heap ----

async def test_messages_do_not_grow_the_heap():
    c, p, inbox = await online()
    seen = [0]

    def count(topic, payload, retained):
        seen[0] += 1
    c._cb = count
    for _ in range(5):
        await c.publish("evse/power", "7360")
        p.feed(h("30 07 00 03 61 2f 62 68 69"))
    await until(lambda: seen[0] == 5)
    gc.collect()
    before = gc.mem_alloc()
    for _ in range(200):
        await c.publish("evse/power", "7360")
        p.feed(h("30 07 00 03 61 2f 62 68 69"))
        p.take()
    await until(lambda: seen[0] == 205)
    gc.collect()
    grown = gc.mem_alloc() - before
    assert grown < 1024, grown  # garbage per message, but nothing kept
    await c.disconnect()


tinytest.run(globals())
