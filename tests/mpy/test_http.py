# lib/http.py and lib/url.py on the unix port, against scripted peers (fake_net): the request bytes on the wire,
# Content-Length and chunked bodies read in pieces, truncation, header limits, redirects, uploads, timeouts.
import gc
import time
import tinytest
import fake_net
from fake_net import FakeStream
from lib import http, url
from lib.http import HTTPError

HOST = ("files.example", 80)


def ok(body, extra=b""):
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunked(*parts, trailer=b"\r\n"):
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for p in parts:
        out += b"%x\r\n%s\r\n" % (len(p), p)
    return out + b"0\r\n" + trailer


class Sink:
    def __init__(self):
        self.data = bytearray()
        self.largest = 0

    def __call__(self, mv):
        self.data.extend(mv)
        self.largest = max(self.largest, len(mv))


def pattern(n):
    return bytes((i * 7 + i // 251) & 0xFF for i in range(n))


async def fetch(rx, target="http://files.example/fw.bin", chunk=7, buf=None, **kw):
    # -> (bytes received, sink, peer)
    peer = FakeStream(rx, chunk)
    fake_net.install({HOST: peer})
    try:
        sink = Sink()
        n = await http.get(target, sink, buf=buf, **kw)
        return n, sink, peer
    finally:
        fake_net.uninstall()


async def fails(rx, target="http://files.example/fw.bin", chunk=7, **kw):
    # -> the HTTPError a GET raises
    peer = FakeStream(rx, chunk)
    fake_net.install({HOST: peer})
    try:
        await http.get(target, Sink(), **kw)
    except HTTPError as e:
        return e
    finally:
        fake_net.uninstall()
    raise AssertionError("no HTTPError")


async def araises(exc_type, aw):
    # tinytest.raises runs a coroutine with asyncio.run, which must not nest in an async test
    try:
        await aw
    except exc_type as e:
        return e
    raise AssertionError("expected %s" % exc_type.__name__)


class LongLine(FakeStream):
    """Sends head, then n filler bytes, then tail, without the filler ever being in memory."""

    def __init__(self, head, n, tail, chunk=4096):
        FakeStream.__init__(self, head, chunk)
        self.filler = n
        self.tail = tail

    async def readinto(self, buf):
        if self.pos >= len(self.rx) and self.filler:
            n = min(len(buf), self.chunk, self.filler)
            buf[:n] = b"x" * n
            self.filler -= n
            self.largest_read = max(self.largest_read, len(buf))
            if not self.filler:
                self.rx, self.pos = self.tail, 0
            return n
        return await FakeStream.readinto(self, buf)


# ---- url ----

def test_url_split():
    assert url.split("http://h/") == ("http", None, None, "h", None, "/")
    assert url.split("HTTPS://Host:8443") == ("https", None, None, "Host", 8443, "/")
    assert url.split("ftp://u:p%40ss%3a@h:21/a/b%20c;type=i") == ("ftp", b"u", b"p@ss:", "h", 21, "/a/b%20c;type=i")
    assert url.split("http://user@h/x?y=1#frag") == ("http", b"user", None, "h", None, "/x?y=1")
    assert url.split("http://a@b:c@h/") == ("http", b"a@b", b"c", "h", None, "/")  # the last '@' ends them
    assert url.split("http://[::1]:8080/p") == ("http", None, None, "::1", 8080, "/p")
    assert url.unquote("%00%ff%41") == b"\x00\xffA"


def test_url_errors():
    for bad in ("files.example/fw.bin", "http://:80/", "http://h:0/", "http://h:70000/", "http://h:x/",
                "http://h/a b", "http://h/a\r\nX: y", "http://u:%zz@h/", "http://u:%4@h/", "http://[::1/"):
        e = tinytest.raises(ValueError, url.split, bad)
        assert "URL" in str(e), (bad, e)


def test_join_redirect_targets():
    base = "http://u:p@h:81/dir/file.bin?x=1"
    assert http._join(base, "https://other/x") == "https://other/x"
    assert http._join(base, "//cdn/y") == "http://cdn/y"
    assert http._join(base, "/abs") == "http://u:p@h:81/abs"
    assert http._join(base, "rel.bin") == "http://u:p@h:81/dir/rel.bin"
    assert http._join("http://h", "rel") == "http://h/rel"


# ---- GET ----

async def test_get_request_on_the_wire():
    body = b"firmware"
    n, sink, peer = await fetch(ok(body), "http://us%65r:p%3Ass@files.example/fw%20x.bin?v=2")
    assert n == 8 and sink.data == body
    # user "user", password "p:ss" -> base64("user:p:ss")
    assert peer.tx == (b"GET /fw%20x.bin?v=2 HTTP/1.1\r\nHost: files.example\r\nConnection: close\r\n"
                       b"Accept-Encoding: identity\r\nAuthorization: Basic dXNlcjpwOnNz\r\n\r\n"), bytes(peer.tx)
    assert peer.closed


async def test_get_host_header_carries_a_non_default_port_and_extra_headers():
    peer = FakeStream(ok(b"x"))
    fake_net.install({("h", 8080): peer})
    try:
        await http.get("http://h:8080/a", Sink(), headers={"X-Serial": "CP1"})
    finally:
        fake_net.uninstall()
    assert b"\r\nHost: h:8080\r\n" in peer.tx and b"\r\nX-Serial: CP1\r\n" in peer.tx, bytes(peer.tx)
    e = await araises(HTTPError, http.get("http://h:8080/a", Sink(), None, None, {"X": "a\r\nEvil: 1"}))
    assert "bad header" in str(e)


async def test_content_length_body_streams_through_the_small_buffer():
    body = pattern(5000)
    buf = bytearray(64)
    n, sink, peer = await fetch(ok(body, b"Server: fake\r\n"), buf=buf, chunk=50)
    assert n == 5000 and sink.data == body
    assert sink.largest <= 64 and peer.largest_read <= 64


async def test_body_without_length_reads_to_the_end():
    n, sink, _ = await fetch(b"HTTP/1.0 200 OK\r\n\r\n" + pattern(300))
    assert n == 300 and sink.data == pattern(300)


async def test_truncated_body_is_an_error():
    rx = ok(pattern(100))[:-40]
    e = await fails(rx)
    assert str(e) == "body truncated at 60 of 100 bytes", e
    assert e.status == 0


async def test_status_errors_say_what():
    e = await fails(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
    assert str(e) == "HTTP 404 Not Found" and e.status == 404
    e = await fails(b"HTTP/1.1 500\r\n\r\n")
    assert str(e) == "HTTP 500 " and e.status == 500
    e = await fails(b"SSH-2.0-OpenSSH\r\n")
    assert "not an HTTP/1.x response" in str(e)
    e = await fails(b"")
    assert "connection closed before the response" in str(e)
    e = await fails(b"HTTP/1.1 200 OK\r\nContent-Len")
    assert "connection closed in the response headers" in str(e)
    e = await fails(b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n")
    assert "bad Content-Length" in str(e)
    e = await fails(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
    assert "bad Content-Length" in str(e)
    e = await fails(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert "unsupported Transfer-Encoding" in str(e)


async def test_interim_100_continue_is_skipped():
    n, sink, _ = await fetch(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"abc"))
    assert n == 3 and sink.data == b"abc"


# ---- chunked ----

async def test_chunked_body_with_extensions_trailers_and_split_reads():
    parts = (pattern(1), pattern(300), b"\r\n\r\n", pattern(4095))
    for chunk in (1, 3, 64, 5000):
        rx = chunked(*parts, trailer=b"X-Checksum: 1\r\nX-Other: 2\r\n\r\n").replace(b"12c\r\n", b"12C;name=v\r\n")
        n, sink, _ = await fetch(rx, chunk=chunk, buf=bytearray(128))
        assert sink.data == b"".join(parts) and n == len(sink.data), chunk
        assert sink.largest <= 128


async def test_chunked_last_chunk_without_final_crlf_is_complete():
    n, sink, _ = await fetch(chunked(b"hello", trailer=b""))
    assert n == 5 and sink.data == b"hello"


async def test_chunked_wins_over_content_length():
    rx = chunked(b"abc").replace(b"\r\n\r\n", b"\r\nContent-Length: 99\r\n\r\n", 1)
    n, sink, _ = await fetch(rx)
    assert n == 3 and sink.data == b"abc"


async def test_chunked_errors():
    good = chunked(b"0123456789", b"abcdef")
    e = await fails(good[:good.find(b"abc") + 2])
    assert str(e) == "body truncated at 12 bytes: in a chunk", e
    e = await fails(good[:good.find(b"\r\n0\r\n") + 2])
    assert str(e) == "body truncated at 16 bytes: no last chunk", e
    e = await fails(good[:good.find(b"6\r\n")])
    assert "no last chunk" in str(e), e
    e = await fails(good.replace(b"6\r\nabcdef", b"6\r\nabcdefXY"))
    assert "chunk longer than its size line says" in str(e), e
    for bad in (b"zz", b"-1", b"", b" ", b"123456789"):
        e = await fails(good.replace(b"6\r\nabc", bad + b"\r\nabc"))
        assert "bad chunk size line" in str(e), (bad, e)


# ---- header limits ----

async def test_overlong_header_lines_are_skipped_without_a_big_allocation():
    # a 1 MB header line: read through the 256-byte buffer and dropped
    peer = LongLine(b"HTTP/1.1 200 OK\r\nSet-Cookie: ", 1000000, b"\r\nContent-Length: 4\r\n\r\nbody")
    fake_net.install({HOST: peer})
    gc.collect()
    before = gc.mem_alloc()
    try:
        sink = Sink()
        n = await http.get("http://files.example/fw.bin", sink, bytearray(256))
    finally:
        fake_net.uninstall()
    assert n == 4 and sink.data == b"body"
    assert peer.largest_read <= 256
    gc.collect()
    assert gc.mem_alloc() - before < 2048, gc.mem_alloc() - before


async def test_too_many_headers_is_an_error():
    e = await fails(ok(b"x", b"X-A: 1\r\n" * 65))
    assert str(e) == "more than 64 response headers", e
    n, _, _ = await fetch(ok(b"x", b"X-A: 1\r\n" * 63))
    assert n == 1


async def test_endless_status_line_is_bounded():
    # the cut line still parses (its head holds the status); the rest is read through the buffer and dropped
    rx = b"HTTP/1.1 200 " + b"O" * 5000 + b"\r\nContent-Length: 2\r\n\r\nok"
    n, sink, peer = await fetch(rx, buf=bytearray(64), chunk=1000)
    assert n == 2 and sink.data == b"ok" and peer.largest_read <= 64


# ---- redirects ----

async def test_redirect_is_followed_on_the_same_host():
    a = FakeStream(b"HTTP/1.1 302 Found\r\nLocation: v2/fw.bin\r\nContent-Length: 0\r\n\r\n")
    b = FakeStream(ok(b"new"))
    net = fake_net.install({HOST: [a, b]})
    try:
        sink = Sink()
        n = await http.get("http://files.example/dir/fw.bin", sink)
    finally:
        fake_net.uninstall()
    assert n == 3 and sink.data == b"new" and net.opened == [HOST, HOST]
    assert a.tx.startswith(b"GET /dir/fw.bin ") and b.tx.startswith(b"GET /dir/v2/fw.bin "), bytes(b.tx)
    assert a.closed and b.closed


async def test_redirect_to_another_host_and_limits():
    peers = {HOST: FakeStream(b"HTTP/1.1 301 Moved\r\nLocation: http://cdn.example:8080/x\r\n\r\n"),
             ("cdn.example", 8080): FakeStream(ok(b"cdn"))}
    net = fake_net.install(peers)
    try:
        sink = Sink()
        n = await http.get("http://files.example/fw.bin", sink)
    finally:
        fake_net.uninstall()
    assert n == 3 and sink.data == b"cdn" and net.opened == [HOST, ("cdn.example", 8080)]
    assert peers[("cdn.example", 8080)].tx.startswith(b"GET /x HTTP/1.1\r\nHost: cdn.example:8080\r\n")
    e = await fails(b"HTTP/1.1 307 Temporary\r\nLocation: http://files.example/fw.bin\r\n\r\n" * 5,
                    redirects=0)
    assert str(e) == "more than 0 redirects", e
    e = await fails(b"HTTP/1.1 302 Found\r\n\r\n")
    assert str(e) == "HTTP 302 Found", e
    e = await fails(b"HTTP/1.1 302 Found\r\nLocation: /" + b"x" * 300 + b"\r\n\r\n", buf=bytearray(128))
    assert "redirect URL longer than the buffer" in str(e), e


async def test_https_never_redirects_to_http():
    peer = FakeStream(b"HTTP/1.1 302 Found\r\nLocation: http://files.example/fw.bin\r\n\r\n")
    fake_net.install({("files.example", 443): peer})
    try:
        e = await araises(HTTPError, http.get("https://files.example/fw.bin", Sink(), None, FakeTLS()))
    finally:
        fake_net.uninstall()
    assert str(e) == "refused redirect from https to http://files.example/fw.bin", e


class FakeTLS:
    # Stands in for an SSLContext: records the hostname the server's certificate would be checked against
    def __init__(self):
        self.hostnames = []

    def wrap_socket(self, sock, server_hostname=None, do_handshake_on_connect=True):
        self.hostnames.append(server_hostname)
        return sock


async def test_https_needs_a_context_and_checks_the_url_host():
    e = await araises(HTTPError, http.get("https://files.example/fw.bin", Sink()))
    assert "https needs a TLS context" in str(e), e
    peer = FakeStream(ok(b"tls"))
    fake_net.install({("files.example", 443): peer})
    ctx = FakeTLS()
    try:
        n = await http.get("https://files.example/fw.bin", Sink(), ssl=ctx)
    finally:
        fake_net.uninstall()
    assert n == 3 and ctx.hostnames == ["files.example"]
    assert b"\r\nHost: files.example\r\n" in peer.tx  # 443 is https's default port
    e = await araises(HTTPError, http.get("ftp://files.example/fw.bin", Sink()))
    assert "http:// or https://" in str(e)


# ---- network failures ----

async def test_refused_and_unresolvable():
    e = await fails(b"", "http://files.example:81/fw.bin")
    assert str(e) == "connection refused (files.example:81)", e
    e = await fails(b"", "http://unknown.invalid/fw.bin")
    assert str(e) == "cannot resolve host unknown.invalid", e


async def test_read_timeout():
    peer = FakeStream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", stall=True)
    fake_net.install({HOST: peer})
    t0 = time.ticks_ms()
    try:
        e = await araises(HTTPError, http.get("http://files.example/fw.bin", Sink(), None, None, None, 80))
    finally:
        fake_net.uninstall()
    took = time.ticks_diff(time.ticks_ms(), t0)
    assert str(e) == "connection timed out waiting for data (files.example:80)", e
    assert 70 <= took < 1000, took
    assert peer.closed


async def test_each_read_has_its_own_timeout():
    # 40 reads that each wait 30 ms: more than the 100 ms timeout in total, never for one read
    class Slow(FakeStream):
        async def readinto(self, buf):
            import asyncio
            await asyncio.sleep_ms(30)
            return await FakeStream.readinto(self, buf)
    body = pattern(40 * 7 - 38)
    peer = Slow(ok(body))
    fake_net.install({HOST: peer})
    try:
        sink = Sink()
        n = await http.get("http://files.example/fw.bin", sink, None, None, None, 100)
    finally:
        fake_net.uninstall()
    assert n == len(body) and sink.data == body


# ---- uploads ----

async def test_put_from_a_source_function_on_the_wire():
    data = pattern(1000)
    pos = [0]

    def source(mv):
        n = min(len(mv), 300, len(data) - pos[0])
        mv[:n] = data[pos[0]:pos[0] + n]
        pos[0] += n
        return n
    peer = FakeStream(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    fake_net.install({HOST: peer})
    try:
        status = await http.put("http://u:pw@files.example/diag/log.tar", source, 1000, bytearray(256))
    finally:
        fake_net.uninstall()
    assert status == 201
    head = (b"PUT /diag/log.tar HTTP/1.1\r\nHost: files.example\r\nConnection: close\r\n"
            b"Accept-Encoding: identity\r\nAuthorization: Basic dTpwdw==\r\nContent-Length: 1000\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    assert peer.tx == head + data, bytes(peer.tx[:300])


async def test_post_bytes_and_error_status():
    peer = FakeStream(b"HTTP/1.1 200 OK\r\n\r\n")
    fake_net.install({HOST: peer})
    try:
        assert await http.post("http://files.example/up", b"abc", headers={"content-type": "text/plain"}) == 200
    finally:
        fake_net.uninstall()
    assert peer.tx.startswith(b"POST /up HTTP/1.1\r\n") and peer.tx.endswith(
        b"Content-Length: 3\r\ncontent-type: text/plain\r\n\r\nabc"), bytes(peer.tx)
    assert b"octet-stream" not in peer.tx
    peer = FakeStream(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    fake_net.install({HOST: peer})
    try:
        e = await araises(HTTPError, http.put("http://files.example/up", b"abc"))
    finally:
        fake_net.uninstall()
    assert str(e) == "HTTP 403 Forbidden" and e.status == 403


async def test_upload_source_ending_early_and_server_answering_early():
    peer = FakeStream(b"HTTP/1.1 201 Created\r\n\r\n")
    fake_net.install({HOST: peer})
    try:
        e = await araises(HTTPError, http.put("http://files.example/up", lambda mv: 0, 10))
    finally:
        fake_net.uninstall()
    assert str(e) == "source ended at 0 of 10 bytes", e
    # the server refuses after the head (too large) and hangs up: its answer is the error, not the broken pipe
    peer = FakeStream(b"HTTP/1.1 413 Payload Too Large\r\n\r\n", fail_after=200)
    fake_net.install({HOST: peer})
    try:
        e = await araises(HTTPError, http.put("http://files.example/up", pattern(5000)))
    finally:
        fake_net.uninstall()
    assert str(e) == "HTTP 413 Payload Too Large" and e.status == 413, e
    peer = FakeStream(b"", fail_after=200)
    fake_net.install({HOST: peer})
    try:
        e = await araises(HTTPError, http.put("http://files.example/up", pattern(5000)))
    finally:
        fake_net.uninstall()
    assert str(e).startswith("connection lost (files.example:80): "), e


tinytest.run(globals())
