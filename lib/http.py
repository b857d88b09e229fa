# HTTP/1.1 client on asyncio for large transfers on a small heap (RFC 9110/9112 subset). GET streams the body
# into a sink through one buffer, never the whole body in RAM; PUT and POST stream an upload from a source with a
# Content-Length. One request per connection (Connection: close). http:// and https:// (the caller's TLS
# context verifies the server; the URL's host is checked against its certificate); user:password in the URL is
# sent as Basic auth.
import binascii
from micropython import const
from lib import tcp
from lib import url as _url

_BUF = const(1024)  # default buffer: header lines up to this, body chunks of this size
_MAX_HEADERS = const(64)  # per response; a hostile server cannot keep us reading headers forever
_MAX_INTERIM = const(8)  # 1xx responses skipped before the real one
_REDIRECTS = (301, 302, 303, 307, 308)


class HTTPError(Exception):
    """Every failure. status: the HTTP status for an error response, 0 when there was none."""

    def __init__(self, msg, status=0):
        super().__init__(msg)
        self.status = status


def _text(b):
    # bytes from the server -> printable ASCII str for a message (MicroPython's decode has no errors="replace")
    return "".join(chr(c) if 32 <= c < 127 else "?" for c in b)


def _target(url, ssl):
    # -> (host, port, path, auth header value or None, tls context or None)
    try:
        scheme, user, password, host, port, path = _url.split(url)
    except ValueError as e:
        raise HTTPError(str(e))
    if scheme == "https":
        if ssl is None:
            raise HTTPError("https needs a TLS context (ssl=...): %s" % url)
    elif scheme == "http":
        ssl = None
    else:
        raise HTTPError("URL must start with http:// or https:// (%s)" % url)
    auth = None
    if user is not None:
        if b":" in user:
            raise HTTPError("user name must not contain ':' (RFC 7617)")
        auth = "Basic " + binascii.b2a_base64(user + b":" + (password or b""), newline=False).decode()
    return host, port or (443 if ssl else 80), path, auth, ssl


def _head(method, host, port, path, auth, headers, length, tls):
    # The request line and headers, as bytes
    if ":" in host:  # IPv6 literal
        host = "[%s]" % host
    if port != (443 if tls else 80):
        host = "%s:%d" % (host, port)
    req = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nAccept-Encoding: identity\r\n" % (method, path, host)
    if auth:
        req += "Authorization: %s\r\n" % auth
    if length is not None:
        req += "Content-Length: %d\r\n" % length
    if headers:
        for name in headers:
            value = str(headers[name])
            if "\r" in name + value or "\n" in name + value or ":" in name:
                raise HTTPError("bad header %r" % name)
            req += "%s: %s\r\n" % (name, value)
    return (req + "\r\n").encode()


async def _response(conn):
    # Reads the status line and headers -> (status, reason, length or None, chunked, location or None)
    for _ in range(_MAX_INTERIM):
        line = await conn.line()
        if line is None:
            raise HTTPError("connection closed before the response (%s)" % conn.where)
        parts = bytes(line).split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise HTTPError("not an HTTP/1.x response: %r" % _text(line[:40]))
        status = int(parts[1])
        reason = _text(parts[2]) if len(parts) > 2 else ""
        length = None
        chunked = False
        location = None
        for _ in range(_MAX_HEADERS + 1):
            line = await conn.line()
            if line is None:
                raise HTTPError("connection closed in the response headers (%s)" % conn.where)
            if not line:
                break
            text = bytes(line)
            c = text.find(b":")
            if c <= 0:
                continue  # not a header (an obsolete folded line): nothing we read
            name = text[:c].strip().lower()
            value = text[c + 1:].strip()
            if name == b"content-length":
                if not value.isdigit() or conn.cut or length is not None and int(value) != length:
                    raise HTTPError("bad Content-Length: %s" % _text(value[:40]))
                length = int(value)
            elif name == b"transfer-encoding":
                # RFC 9112 §6.1: chunked must come last; nothing else can be decoded here (we asked for identity)
                if not value.lower().endswith(b"chunked"):
                    raise HTTPError("unsupported Transfer-Encoding: %s" % _text(value[:40]))
                chunked = True
            elif name == b"location" and status in _REDIRECTS:
                if conn.cut:
                    raise HTTPError("redirect URL longer than the buffer (%d bytes)" % len(conn.buf))
                location = _text(value)
        else:
            raise HTTPError("more than %d response headers" % _MAX_HEADERS)
        if status >= 200:
            return status, reason, None if chunked else length, chunked, location
    raise HTTPError("more than %d interim responses" % _MAX_INTERIM)


async def _body(conn, sink, length):
    # Content-Length body (or, with length None, up to the end of the connection) -> bytes passed to sink
    got = 0
    while length is None or got < length:
        mv = await conn.chunk(len(conn.buf) if length is None else length - got)
        if not mv:
            if length is None:
                return got
            raise HTTPError("body truncated at %d of %d bytes" % (got, length))
        sink(mv)
        got += len(mv)
    return got


def _chunk_size(line, conn):
    # RFC 9112 §7.1: hex size, optional ";extensions"
    if line is None:
        return -1
    text = bytes(line).split(b";")[0].strip()
    if conn.cut or not text or len(text) > 8 or not all(c in b"0123456789abcdefABCDEF" for c in text):
        raise HTTPError("bad chunk size line: %r" % _text(line[:40]))
    return int(text, 16)


async def _chunked(conn, sink):
    got = 0
    while True:
        size = _chunk_size(await conn.line(), conn)
        if size < 0:
            raise HTTPError("body truncated at %d bytes: no last chunk" % got)
        if size == 0:
            break
        while size:
            mv = await conn.chunk(size)
            if not mv:
                raise HTTPError("body truncated at %d bytes: in a chunk" % got)
            sink(mv)
            got += len(mv)
            size -= len(mv)
        line = await conn.line()
        if line is None:
            raise HTTPError("body truncated at %d bytes: no last chunk" % got)
        if len(line):
            raise HTTPError("chunk longer than its size line says")
    for _ in range(_MAX_HEADERS + 1):  # trailer fields, ignored; the end of the connection may stand for the last
        line = await conn.line()
        if not line:
            return got
    raise HTTPError("more than %d trailer lines" % _MAX_HEADERS)


def _join(base, loc):
    # Resolves a Location against the URL that answered with it (RFC 3986 §5.2, the common cases)
    if "://" in loc:
        return loc
    i = base.find("://") + 3
    j = i
    while j < len(base) and base[j] not in "/?#":
        j += 1
    if loc.startswith("//"):
        return base[:i - 2] + loc
    if loc.startswith("/"):
        return base[:j] + loc
    path = base[j:].split("?")[0].split("#")[0]
    return base[:j] + path[:path.rfind("/") + 1] + loc if path else base[:j] + "/" + loc


async def _open(method, url, buf, ssl, headers, length, connect_ms, io_ms):
    # Connects and sends the request head -> (conn, path) with conn open
    host, port, path, auth, tls = _target(url, ssl)
    head = _head(method, host, port, path, auth, headers, length, tls)
    conn = tcp.Conn(HTTPError, buf)
    await conn.open(host, port, tls, connect_ms, io_ms)
    try:
        await conn.write(head)
    except BaseException:
        conn.close()
        raise
    return conn


def _fail(status, reason):
    return HTTPError("HTTP %d %s" % (status, reason), status)


async def get(url, sink, buf=None, ssl=None, headers=None, timeout_ms=10000, connect_timeout_ms=10000,
              redirects=3):
    """Streams the body of url into sink(chunk) -> the number of body bytes. chunk is a memoryview into buf
    (default: a new 1 KB bytearray), valid only during the call; sink may raise to abort. Follows up to
    `redirects` redirects (never from https to http). ssl: an SSLContext, needed for https. timeout_ms bounds
    every read; connect_timeout_ms the connect and TLS handshake. Raises HTTPError for a non-2xx status, a body
    cut short of its Content-Length or last chunk, and every network failure."""
    if buf is None:
        buf = bytearray(_BUF)
    for _ in range(redirects + 1):
        conn = await _open("GET", url, buf, ssl, headers, None, connect_timeout_ms, timeout_ms)
        try:
            status, reason, length, chunked, location = await _response(conn)
            if status in _REDIRECTS and location:
                nxt = _join(url, location)
                if url[:6].lower() == "https:" and nxt[:6].lower() != "https:":
                    raise HTTPError("refused redirect from https to %s" % nxt)
                url = nxt
                continue
            if not 200 <= status < 300:
                raise _fail(status, reason)
            if chunked:
                return await _chunked(conn, sink)
            return await _body(conn, sink, length)
        finally:
            conn.close()
    raise HTTPError("more than %d redirects" % redirects)


async def _upload(method, url, source, length, buf, ssl, headers, timeout_ms, connect_timeout_ms):
    if not callable(source):
        source = memoryview(source)
        length = len(source)
    elif length is None:
        raise HTTPError("length is needed with a source function")
    if buf is None:
        buf = bytearray(_BUF)
    if not headers or not any(k.lower() == "content-type" for k in headers):
        headers = dict(headers or {})
        headers["Content-Type"] = "application/octet-stream"
    conn = await _open(method, url, buf, ssl, headers, length, connect_timeout_ms, timeout_ms)
    try:
        try:
            sent = await _send(conn, source, length)
        except HTTPError as e:
            # A server may answer early (401, 413) and close: its answer says more than the broken pipe
            if not e.status:
                try:
                    status, reason = (await _response(conn))[:2]
                except HTTPError:
                    raise e
                if not 200 <= status < 300:
                    raise _fail(status, reason)
            raise
        if sent < length:
            raise HTTPError("source ended at %d of %d bytes" % (sent, length))
        status, reason = (await _response(conn))[:2]
        if not 200 <= status < 300:
            raise _fail(status, reason)
        return status
    finally:
        conn.close()


async def _send(conn, source, length):
    if not callable(source):
        await conn.write(source)
        return length
    sent = 0
    mv = conn.mv
    while sent < length:
        n = source(mv[:min(len(mv), length - sent)])
        if not n:
            break
        await conn.write(mv[:n])
        sent += n
    return sent


async def put(url, source, length=None, buf=None, ssl=None, headers=None, timeout_ms=10000,
              connect_timeout_ms=10000):
    """Uploads with PUT -> the 2xx status. source: bytes-like, or a function source(mv) -> bytes it put into
    mv (0 at the end, as a file's readinto) with length, the byte count (sent as Content-Length). Redirects
    are not followed (the source cannot be read twice). Raises HTTPError as get() does."""
    return await _upload("PUT", url, source, length, buf, ssl, headers, timeout_ms, connect_timeout_ms)


async def post(url, source, length=None, buf=None, ssl=None, headers=None, timeout_ms=10000,
               connect_timeout_ms=10000):
    """As put(), with POST."""
    return await _upload("POST", url, source, length, buf, ssl, headers, timeout_ms, connect_timeout_ms)
