# Byte-exact tests of lib/ws.py and its frame codec lib/wsframe.py on the unix port: RFC 6455 examples,
# handshake, and recv() on a fake stream.
import asyncio
import tinytest
import lib.ws as ws
import lib.wsframe as wf

KEY = bytes.fromhex("37fa213d")  # RFC 6455 §5.7 masking key


def h(text):
    return bytes.fromhex(text.replace(" ", ""))


class FixedOs:
    # Makes the "random" mask key the RFC example's so client frames can be compared byte for byte.
    @staticmethod
    def urandom(n):
        return (KEY * 4)[:n]


class FakeStream:
    # A peer that sends `rx` a few bytes at a time (to exercise partial reads) and records what we write.
    def __init__(self, rx=b"", chunk=3):
        self.rx = bytes(rx)
        self.pos = 0
        self.chunk = chunk
        self.tx = bytearray()
        self.closed = False

    async def readinto(self, buf):
        n = min(len(buf), self.chunk, len(self.rx) - self.pos)
        buf[:n] = self.rx[self.pos:self.pos + n]
        self.pos += n
        return n

    async def readexactly(self, n):
        if self.pos + n > len(self.rx):
            self.pos = len(self.rx)
            raise EOFError
        self.pos += n
        return self.rx[self.pos - n:self.pos]

    async def readline(self):
        i = self.rx.find(b"\n", self.pos)
        end = len(self.rx) if i < 0 else i + 1
        line = self.rx[self.pos:end]
        self.pos = end
        return line

    def write(self, buf):
        assert not self.closed
        self.tx.extend(buf)

    async def drain(self):
        pass

    def close(self):
        pass

    async def wait_closed(self):
        self.closed = True


def fixed_key():
    ws.os = FixedOs


def real_key():
    import os
    ws.os = os


def encode_frame(opcode, payload, mask_key=None, fin=True):
    """Whole frame as a bytearray; masked when mask_key (4 bytes) is given, as client frames must be. The
    server's side of these tests: the firmware never builds a frame in one piece."""
    hdr = bytearray(14)
    n = wf.put_header(hdr, opcode, len(payload), mask_key, fin)
    frame = bytearray(n + len(payload))
    frame[:n] = memoryview(hdr)[:n]
    frame[n:] = payload
    if mask_key:
        wf.apply_mask(memoryview(frame)[n:], mask_key)
    return frame


def client_frames(data):
    # Splits what the client wrote into (fin, opcode, unmasked payload); checks every frame is masked.
    out = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b1 & 0x80, "client frame not masked"
        n = b1 & 0x7F
        i += 2
        if n == 126:
            n = (data[i] << 8) | data[i + 1]
            i += 2
        key = bytes(data[i:i + 4])
        body = bytearray(data[i + 4:i + 4 + n])
        wf.apply_mask(body, key)
        out.append((b0 >> 7, b0 & 0x0F, bytes(body)))
        i += 4 + n
    return out


# ---- framing, RFC 6455 §5.7 ----

def test_masked_hello_frame():
    assert encode_frame(1, b"Hello", KEY) == h("81 85 37 fa 21 3d 7f 9f 4d 51 58")


def test_unmasked_hello_frame():
    assert encode_frame(1, b"Hello") == h("81 05 48 65 6c 6c 6f")


def test_fragmented_hello_frames():
    assert encode_frame(1, b"Hel", fin=False) == h("01 03 48 65 6c")
    assert encode_frame(0, b"lo") == h("80 02 6c 6f")


def test_ping_pong_frames():
    assert encode_frame(9, b"Hello") == h("89 05 48 65 6c 6c 6f")
    assert encode_frame(10, b"Hello", KEY) == h("8a 85 37 fa 21 3d 7f 9f 4d 51 58")


def test_length_encodings():
    f = encode_frame(2, bytes(256))
    assert f[:4] == h("82 7e 01 00") and len(f) == 4 + 256
    f = encode_frame(2, bytes(125), KEY)
    assert f[:2] == h("82 fd") and f[2:6] == KEY
    f = encode_frame(2, bytes(126), KEY)
    assert f[:4] == h("82 fe 00 7e")
    # a 64 KB payload does not fit an ESP32-sized heap twice over, so the 64-bit form is checked on the header
    hdr = bytearray(14)
    assert wf.put_header(hdr, 2, 65536, None, True) == 10
    assert hdr[:10] == h("82 7f 00 00 00 00 00 01 00 00")
    assert wf.put_header(hdr, 1, 65535, KEY, False) == 8
    assert hdr[:8] == h("01 fe ff ff 37 fa 21 3d")


def test_mask_fallback_matches_fast_path():
    data = bytearray(bytes(range(256)) * 3)
    a = bytearray(data)
    b = bytearray(data)
    wf.apply_mask(a, b"\x01\x80\xff\x5a")
    wf._mask_py(b, b"\x01\x80\xff\x5a")
    assert a == b and a != data
    wf.apply_mask(a, b"\x01\x80\xff\x5a")
    assert a == data


async def test_read_frame_lengths():
    # a final binary frame comes back from recv() as bytes; text as str
    for n in (0, 5, 125, 126, 256, 20000):
        s = FakeStream(encode_frame(2, bytes([n & 0xFF]) * n), chunk=1000)
        payload = await ws.WS(s, max_frame=65535).recv()
        assert (type(payload), len(payload)) == (bytes, n)
        assert s.pos == len(s.rx)
    for n, head in ((65536, "82 7f 00 00 00 00 00 01 00 00"), (2 ** 40, "82 7f 00 00 01 00 00 00 00 00")):
        s = FakeStream(h(head))
        e = await expect_raise(ws.WS(s, max_frame=65535).recv())
        assert str(e) == "frame too large (%d > 65535)" % n and client_frames(s.tx) == [(1, 8, b"\x03\xf1")]


async def test_frames_split_anywhere_and_queued_back_to_back():
    # every chunking of a stream of frames (a header cut at the receive buffer's end, a payload larger than
    # the buffer, several frames in one read) gives the same messages
    texts = ["a" * n for n in (0, 1, 125, 126, 300, 509, 510, 511, 512, 513, 1500)]
    rx = b"".join(encode_frame(1, t.encode()) for t in texts) + encode_frame(9, b"p")
    for chunk in (1, 2, 3, 7, 13, 100, 511, 512, 513, 4096):
        s = FakeStream(rx + encode_frame(1, b"end"), chunk=chunk)
        c = ws.WS(s)
        got = []
        for _ in texts:
            got.append(await c.recv())
        assert got == texts, chunk
        assert await c.recv() == "end"
        assert s.pos == len(s.rx)


async def expect_raise(coro):
    try:
        await coro
    except Exception as e:
        return e
    raise AssertionError("no exception")


# ---- handshake pieces ----

def test_accept_key_rfc_example():
    # RFC 6455 §1.3 gives this key/accept pair
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_basic_auth():
    assert ws.basic_auth("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="  # RFC 7617
    pw = bytes([0, 1, 0x3A, 0x7F, 0x80, 0xFF, 0x0A, 0x0D])
    assert ws.basic_auth("CP001", pw) == "Basic Q1AwMDE6AAE6f4D/Cg0="
    tinytest.raises(ws.WSError, ws.basic_auth, "a:b", b"x")


def test_parse_url():
    assert ws.parse_url("ws://10.0.0.5/ocpp/CP1") == (False, "10.0.0.5", 80, "/ocpp/CP1")
    assert ws.parse_url("wss://cs.example.com/ocpp/CP%201") == (True, "cs.example.com", 443, "/ocpp/CP%201")
    assert ws.parse_url("WS://host:8180") == (False, "host", 8180, "/")
    assert ws.parse_url("wss://host:9443?x=1") == (True, "host", 9443, "/?x=1")
    for bad in ("http://h/", "ws://", "ws://h:0/", "ws://h:x/", "ws://u:p@h/", "h/x"):
        tinytest.raises(ws.WSError, ws.parse_url, bad)


def response(key, protocol="ocpp1.6", status="101 Switching Protocols", accept=None):
    r = "HTTP/1.1 %s\r\nupgrade: WebSocket\r\nCONNECTION: upgrade\r\n" % status
    r += "Sec-WebSocket-Accept: %s\r\n" % (accept or ws.accept_key(key))
    if protocol:
        r += "sec-websocket-protocol: %s\r\n" % protocol
    return (r + "Server: x\r\n\r\n").encode()


async def test_handshake_request_bytes():
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    s = FakeStream(response(key) + encode_frame(1, b"hi"))
    await ws.handshake(s, "cs:8180", "/ocpp/CP1", "ocpp1.6", "Basic QQ==", key)
    assert s.tx == (b"GET /ocpp/CP1 HTTP/1.1\r\nHost: cs:8180\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Protocol: ocpp1.6\r\nAuthorization: Basic QQ==\r\n\r\n")
    # the handshake must not read past the headers: the first frame is still there
    assert await ws.WS(s).recv() == "hi"


async def test_handshake_failures():
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    cases = (
        (response(key, protocol=None), "server did not accept subprotocol ocpp1.6"),
        (response(key, protocol="ocpp2.0"), "server did not accept subprotocol ocpp1.6"),
        (response(key, accept="AAAA"), "bad Sec-WebSocket-Accept"),
        (b"HTTP/1.1 401 Unauthorized\r\n\r\n", "HTTP 401 Unauthorized"),
        (b"HTTP/1.0 404 No Such Charger Here\r\n\r\n", "HTTP 404 No Such Charger Here"),
        (b"", "connection closed during handshake"),
        (b"SSH-2.0-OpenSSH\r\n", "not an HTTP response"),
        (b"\x16\x03\x03\x00\xff\xfe\n", "handshake response is not text"),
    )
    for rx, want in cases:
        s = FakeStream(rx)
        try:
            await ws.handshake(s, "h", "/", "ocpp1.6", None, key)
        except ws.WSError as e:
            assert want in str(e), (want, str(e))
        else:
            raise AssertionError("accepted: %r" % rx)
        assert b"Authorization" not in s.tx


class EndlessStream(FakeStream):
    # A server whose handshake answer never ends: `head`, then `fill` bytes for ever (issue 9 item 15).
    def __init__(self, head, fill=b"a"):
        super().__init__(head, chunk=4096)
        self.fill = fill * 512
        self.served = 0

    async def readinto(self, buf):
        if self.pos < len(self.rx):
            return await super().readinto(buf)
        n = min(len(buf), len(self.fill))
        buf[:n] = self.fill[:n]
        self.served += n
        return n

    async def readline(self):
        # as asyncio's Stream.readline: joins reads until a newline
        line = b""
        while not line.endswith(b"\n"):
            chunk = bytearray(1024)
            n = await self.readinto(chunk)
            line += chunk[:n]
        return line


async def test_endless_header_line_is_refused_within_the_bound():
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    for head, fill in ((b"HTTP/1.1 101 Switching Protocols\r\nX-Junk: ", b"a"),   # one endless line
                       (b"HTTP/1.1 101 Switching Protocols\r\n", b"X: 1\r\n"),   # endless short lines
                       (b"HTTP/1.1 200 OK", b"a")):                               # endless status line
        s = EndlessStream(head, fill)
        e = await expect_raise(ws.handshake(s, "h", "/", "ocpp1.6", None, key))
        assert isinstance(e, ws.WSError), repr(e)
        assert "longer than 8192 bytes" in str(e) or "too many HTTP headers" in str(e), str(e)
        assert s.pos + s.served <= 8192 + 64, s.served  # it stopped reading at the bound


async def test_long_headers_we_ignore_are_skipped_long_ones_we_check_refused():
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    cookie = b"Set-Cookie: AWSALB=" + b"x" * 2000 + b"; Path=/\r\n"
    good = response(key)
    s = FakeStream(good[:good.index(b"\r\n") + 2] + cookie + good[good.index(b"\r\n") + 2:]
                   + encode_frame(1, b"hi"))
    await ws.handshake(s, "h", "/", "ocpp1.6", None, key)
    assert await ws.WS(s).recv() == "hi"
    s = FakeStream(response(key, protocol="ocpp1.6" + " " * 300))
    e = await expect_raise(ws.handshake(s, "h", "/", "ocpp1.6", None, key))
    assert "header sec-websocket-protocol longer than 256 bytes" in str(e), str(e)


# ---- recv() behaviour ----

async def test_recv_text_binary_and_reassembly():
    rx = (encode_frame(1, "Grüße".encode()) + encode_frame(2, b"\x00\xff")
          + encode_frame(1, b"Hel", fin=False) + encode_frame(9, b"mid") + encode_frame(0, b"l", fin=False)
          + encode_frame(0, b"o"))
    fixed_key()
    try:
        s = FakeStream(rx)
        c = ws.WS(s)
        got = [await c.recv(), await c.recv(), await c.recv()]
        assert got == ["Grüße", b"\x00\xff", "Hello"], got
        assert client_frames(s.tx) == [(1, 10, b"mid")], client_frames(s.tx)  # the ping between fragments was answered
    finally:
        real_key()


async def test_ping_answered_with_exact_pong():
    fixed_key()
    try:
        s = FakeStream(encode_frame(9, b"Hello") + encode_frame(1, b"x"))
        assert await ws.WS(s).recv() == "x"
        assert s.tx == h("8a 85 37 fa 21 3d 7f 9f 4d 51 58")
    finally:
        real_key()


async def test_send_and_ping_exact_bytes():
    fixed_key()
    try:
        s = FakeStream()
        c = ws.WS(s)
        await c.send("Hello")
        await c.ping(b"Hello")
        assert s.tx == h("81 85 37 fa 21 3d 7f 9f 4d 51 58 89 85 37 fa 21 3d 7f 9f 4d 51 58")
    finally:
        real_key()


async def test_unsolicited_pong_updates_last_rx():
    import time
    s = FakeStream(encode_frame(10, b"") + encode_frame(1, b"x"))
    c = ws.WS(s)
    c.last_rx_ms = time.ticks_add(time.ticks_ms(), -60000)
    assert await c.recv() == "x"
    assert abs(time.ticks_diff(time.ticks_ms(), c.last_rx_ms)) < 60000
    assert s.tx == b""


async def expect_failure(rx, want_text, want_code, max_frame=16384):
    s = FakeStream(rx)
    c = ws.WS(s, max_frame=max_frame)
    try:
        await c.recv()
    except ws.WSClosed:
        raise AssertionError("WSClosed instead of a protocol error")
    except ws.WSError as e:
        assert want_text in str(e), str(e)
    else:
        raise AssertionError("no error")
    frames = client_frames(s.tx)
    assert frames == [(1, 8, bytes([want_code >> 8, want_code & 0xFF]))], frames
    assert s.closed
    tinytest.raises(ws.WSClosed, c.recv)
    tinytest.raises(ws.WSClosed, c.send, "late")


async def test_oversized_frame_rejected_1009():
    await expect_failure(encode_frame(1, bytes(101)), "frame too large (101 > 100)", 1009, 100)


async def test_oversized_fragmented_message_rejected_1009():
    rx = encode_frame(1, bytes(60), fin=False) + encode_frame(0, bytes(60))
    await expect_failure(rx, "too large (120 > 100)", 1009, 100)


async def test_failure_reads_up_to_the_server_close():
    # so closing our socket sends a FIN, not a RST that could destroy our close frame at the server
    rx = encode_frame(1, bytes(3000)) + encode_frame(1, bytes(300)) + encode_frame(8, b"\x03\xf1")
    s = FakeStream(rx, chunk=700)
    c = ws.WS(s, max_frame=1000)
    e = await expect_raise(c.recv())
    assert str(e) == "frame too large (3000 > 1000)"
    assert s.pos == len(rx) and s.closed
    assert client_frames(s.tx) == [(1, 8, b"\x03\xf1")]


async def test_masked_server_frame_rejected_1002():
    await expect_failure(encode_frame(1, b"Hello", KEY), "masked", 1002)


async def test_unknown_opcode_rejected_1002():
    await expect_failure(encode_frame(3, b"?"), "unknown opcode 3", 1002)


async def test_stray_continuation_rejected_1002():
    await expect_failure(encode_frame(0, b"lo"), "continuation", 1002)


async def test_invalid_utf8_rejected_1007():
    await expect_failure(encode_frame(1, b"\xff\xfe"), "UTF-8", 1007)


async def test_close_frame_answered_and_raised():
    s = FakeStream(encode_frame(8, b"\x03\xe9going away") + encode_frame(1, b"never"))
    c = ws.WS(s)
    e = await expect_closed(c)
    assert (e.code, e.reason) == (1001, "going away")
    assert client_frames(s.tx) == [(1, 8, b"\x03\xe9")]
    assert s.closed
    e = await expect_closed(c)  # stays closed
    assert e.code == 1001


async def test_invalid_close_codes_answered_1002_not_echoed():
    # RFC 6455 §7.4: 1004 reserved, 1005/1006/1015 never on the wire, 1016-2999 unassigned, 5000+ undefined
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
        s = FakeStream(encode_frame(8, bytes((code >> 8, code & 0xFF)) + b"bye") + encode_frame(1, b"x"))
        c = ws.WS(s)
        e = await expect_raise(c.recv())
        assert type(e) is ws.WSError and "invalid close code %d" % code in str(e), (code, repr(e))
        assert client_frames(s.tx) == [(1, 8, b"\x03\xea")], (code, client_frames(s.tx))
        assert s.closed
        assert isinstance(await expect_raise(c.recv()), ws.WSClosed)
    s = FakeStream(encode_frame(8, b"\x03"))  # a 1-byte payload cannot hold a code
    e = await expect_raise(ws.WS(s).recv())
    assert "1-byte" in str(e) and client_frames(s.tx) == [(1, 8, b"\x03\xea")]
    s = FakeStream(encode_frame(8, b"\x03\xe8\xff\xfe"))  # a reason that is not UTF-8
    e = await expect_raise(ws.WS(s).recv())
    assert "not UTF-8" in str(e) and client_frames(s.tx) == [(1, 8, b"\x03\xef")]


async def test_valid_close_codes_echoed():
    for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999):
        payload = bytes((code >> 8, code & 0xFF))
        s = FakeStream(encode_frame(8, payload + b"ok"))
        e = await expect_closed(ws.WS(s))
        assert (e.code, e.reason) == (code, "ok")
        assert client_frames(s.tx) == [(1, 8, payload)], code


async def test_empty_close_answered_empty():
    s = FakeStream(encode_frame(8, b""))
    e = await expect_closed(ws.WS(s))
    assert e.code == 1005
    assert client_frames(s.tx) == [(1, 8, b"")]


async def test_eof_is_abnormal_close():
    s = FakeStream(encode_frame(1, b"Hello")[:4])
    e = await expect_closed(ws.WS(s))
    assert e.code == 1006 and s.closed and s.tx == b""


async def expect_closed(c):
    try:
        await c.recv()
    except ws.WSClosed as e:
        return e
    raise AssertionError("no WSClosed")


async def test_close_sends_and_waits_for_answer():
    s = FakeStream(encode_frame(1, b"in flight") + encode_frame(8, b"\x03\xe8"))
    c = ws.WS(s)
    await c.close()
    assert client_frames(s.tx) == [(1, 8, b"\x03\xe8")]
    assert s.pos == len(s.rx)  # it read up to the server's close frame
    assert s.closed
    tinytest.raises(ws.WSClosed, c.send, "x")


class SlowStream(FakeStream):
    # A peer that sends only what the test feeds it, when it feeds it.
    def __init__(self):
        super().__init__()
        self.ev = asyncio.Event()

    def feed(self, data):
        self.rx += data
        self.ev.set()

    async def readinto(self, buf):
        while self.pos >= len(self.rx):
            self.ev.clear()
            await self.ev.wait()
        return await super().readinto(buf)

    async def readexactly(self, n):
        while self.pos + n > len(self.rx):
            self.ev.clear()
            await self.ev.wait()
        return await super().readexactly(n)


async def test_close_while_another_task_is_in_recv():
    s = SlowStream()
    c = ws.WS(s)
    reader = asyncio.create_task(c.recv())
    await asyncio.sleep_ms(10)
    closer = asyncio.create_task(c.close(1001))
    await asyncio.sleep_ms(10)
    assert client_frames(s.tx) == [(1, 8, b"\x03\xe9")]
    assert not s.closed
    s.feed(encode_frame(8, b"\x03\xe9"))
    done, e = await asyncio.gather(closer, reader, return_exceptions=True)
    assert isinstance(e, ws.WSClosed) and e.code == 1001
    assert client_frames(s.tx) == [(1, 8, b"\x03\xe9")]  # the answer is not answered again
    assert s.closed


async def test_recv_waits_for_data_then_pings_between():
    fixed_key()
    try:
        s = SlowStream()
        c = ws.WS(s)
        reader = asyncio.create_task(c.recv())
        s.feed(encode_frame(9, b"Hello"))
        await asyncio.sleep_ms(10)
        assert s.tx == h("8a 85 37 fa 21 3d 7f 9f 4d 51 58")
        await c.send("Hello")  # a send while recv() waits
        s.feed(encode_frame(1, b"done"))
        assert await reader == "done"
        assert s.tx == h("8a 85 37 fa 21 3d 7f 9f 4d 51 58 81 85 37 fa 21 3d 7f 9f 4d 51 58")
    finally:
        real_key()


async def test_connect_rejects_unverified_wss():
    e = tinytest.raises(ws.WSError, ws.connect, "wss://127.0.0.1:1/ocpp/CP1")
    assert "wss needs a CA certificate" in str(e)


async def test_long_send_is_masked_in_chunks_byte_exact():
    # send() masks through a small buffer instead of copying the message: the wire bytes must not change.
    fixed_key()
    try:
        s = FakeStream()
        c = ws.WS(s)
        text = "".join("%04d " % i for i in range(600)) + "Grüße"  # > 3 KB, not a multiple of the chunk
        await c.send(text)
        await c.send(b"\x00\x01" * 700)
        want = encode_frame(1, text.encode(), KEY) + encode_frame(2, b"\x00\x01" * 700, KEY)
        assert bytes(s.tx) == bytes(want)
        assert client_frames(s.tx) == [(1, 1, text.encode()), (1, 2, b"\x00\x01" * 700)]
    finally:
        real_key()



tinytest.run(globals())
