# FTP client on asyncio (RFC 959 subset, passive mode only): retr() streams a file into a sink through one
# buffer, never the whole file in RAM; stor() uploads from a source. ftp://[user[:password]@]host[:port]/path,
# anonymous when the URL has no user. Binary mode (TYPE I); EPSV (RFC 2428), PASV when the server lacks it.
from micropython import const
from lib import tcp
from lib import url as _url

_BUF = const(1024)  # default data buffer
_CTRL_BUF = const(256)  # control replies: longer lines are cut (only their first 128 bytes are read)
_MAX_REPLY_LINES = const(200)  # a multi-line reply (a welcome banner) longer than this is refused
_ANONYMOUS = (b"anonymous", b"anonymous@")  # RFC 1635


class FTPError(Exception):
    """Every failure. code: the FTP reply code for an error reply, 0 when there was none."""

    def __init__(self, msg, code=0):
        super().__init__(msg)
        self.code = code


def _text(b):
    # bytes from the server -> printable ASCII str for a message
    return "".join(chr(c) if 32 <= c < 127 else "?" for c in b)


def _code(line):
    # "123 text" / "123-text" -> 123, or -1 when the line does not start a reply
    if len(line) < 3 or not bytes(line[:3]).isdigit() or len(line) > 3 and line[3] not in (32, 45):
        return -1
    return int(bytes(line[:3]))


def pasv_port(text):
    """Data port from a 227 reply's text, "Entering Passive Mode (h1,h2,h3,h4,p1,p2)". The numbers are scanned
    for, not their brackets (RFC 1123 §4.1.2.6). The address is not used: data goes to the control host."""
    i = 0
    while i < len(text) and not text[i].isdigit():
        i += 1
    j = i
    while j < len(text) and (text[j].isdigit() or text[j] in ", "):
        j += 1
    parts = text[i:j].replace(" ", "").split(",")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = ()
    if len(nums) != 6 or max(nums) > 255:
        raise FTPError("bad PASV reply: %s" % text)
    return nums[4] * 256 + nums[5]


def epsv_port(text):
    """Data port from a 229 reply's text, "Entering Extended Passive Mode (|||port|)" (RFC 2428 §3)."""
    i = text.find("(")
    fields = text[i + 2:].split(text[i + 1:i + 2]) if 0 <= i < len(text) - 2 else ()
    try:
        port = int(fields[2])
    except (ValueError, IndexError):
        port = 0
    if not 0 < port < 65536:
        raise FTPError("bad EPSV reply: %s" % text)
    return port


def _checked(name, b):
    # A CR or LF would end our command and start another on the control connection
    for c in b:
        if c < 32 or c == 127:
            raise FTPError("control character in the URL's %s" % name)
    return b


class _Session:
    def __init__(self, buf, timeout_ms, connect_ms):
        self.ctl = tcp.Conn(FTPError, bytearray(_CTRL_BUF), "control connection")
        self.buf = buf
        self.host = ""
        self.timeout_ms = timeout_ms
        self.connect_ms = connect_ms
        self.data = None

    async def reply(self):
        """-> (code, text of the first line). Multi-line replies ("123-" ... "123 ") are read to their end."""
        ctl = self.ctl
        line = await ctl.line()
        if line is None:
            raise FTPError("control connection closed (%s)" % ctl.where)
        code = _code(line)
        if code < 0:
            raise FTPError("not an FTP reply: %s" % _text(line[:40]))
        text = _text(line[4:])
        if len(line) > 3 and line[3] == 45:  # '-'
            for _ in range(_MAX_REPLY_LINES):
                line = await ctl.line()
                if line is None:
                    raise FTPError("control connection closed (%s)" % ctl.where)
                if _code(line) == code and len(line) > 3 and line[3] == 32:
                    break
            else:
                raise FTPError("FTP reply longer than %d lines" % _MAX_REPLY_LINES)
        return code, text

    async def send(self, cmd):
        """Sends one command (bytes without CR LF) -> (code, text)."""
        await self.ctl.write(cmd + b"\r\n")
        return await self.reply()

    async def cmd(self, cmd, ok):
        code, text = await self.send(cmd)
        if code not in ok:
            raise FTPError("FTP %d %s" % (code, text), code)
        return code, text

    async def login(self, url):
        """Connects and logs in -> the file's path to use in RETR/STOR."""
        try:
            scheme, user, password, host, port, path = _url.split(url)
            if scheme != "ftp":
                raise ValueError("URL must start with ftp:// (%s)" % url)
            # RFC 1738 §3.2.2: the path is relative to the login directory (%2F makes it absolute); ;type=
            # is dropped: we always transfer binary
            path = _url.unquote(path[1:].split("?")[0].split(";type=")[0])
        except ValueError as e:
            raise FTPError(str(e))
        if not path:
            raise FTPError("no file name in URL (%s)" % url)
        if user is None:
            user, password = _ANONYMOUS
        _checked("path", path)
        _checked("user", user)
        _checked("password", password or b"")
        self.host = host
        await self.ctl.open(host, port or 21, None, self.connect_ms, self.timeout_ms)
        code, text = await self.reply()
        for _ in range(3):  # 120: ready in a few minutes, another reply follows
            if code != 120:
                break
            code, text = await self.reply()
        if code != 220:
            raise FTPError("FTP %d %s" % (code, text), code)
        code, _ = await self.cmd(b"USER " + user, (230, 331))
        if code == 331:
            await self.cmd(b"PASS " + (password or b""), (202, 230))
        await self.cmd(b"TYPE I", (200,))
        return path

    async def passive(self):
        """Opens the data connection."""
        code, text = await self.send(b"EPSV")
        if code == 229:
            port = epsv_port(text)
        else:  # 500/502: not implemented; any other refusal: PASV may still work
            port = pasv_port((await self.cmd(b"PASV", (227,)))[1])
        # The data goes to the control connection's host, whatever address a PASV reply names: it is often a
        # private one behind NAT, and following it would let a server point us at a third host.
        self.data = tcp.Conn(FTPError, self.buf, "data connection")
        await self.data.open(self.host, port, None, self.connect_ms, self.timeout_ms)
        return self.data

    async def finish(self):
        """After the data connection closed: the transfer's final reply must be 226/250."""
        code, text = await self.reply()
        if code not in (226, 250):
            raise FTPError("FTP %d %s" % (code, text), code)
        try:
            await self.send(b"QUIT")
        except FTPError:
            pass  # the transfer is complete; a server that hangs up instead of answering QUIT changes nothing

    def close(self):
        if self.data is not None:
            self.data.close()
        self.ctl.close()


async def retr(url, sink, buf=None, timeout_ms=10000, connect_timeout_ms=10000):
    """Streams the file at url into sink(chunk) -> the number of bytes. chunk is a memoryview into buf (default:
    a new 1 KB bytearray), valid only during the call; sink may raise to abort. When the server answers SIZE,
    a file shorter than that is an error. timeout_ms bounds every read; connect_timeout_ms each connect.
    Raises FTPError for an error reply ("FTP 550 ...") and every network failure."""
    s = _Session(buf if buf is not None else bytearray(_BUF), timeout_ms, connect_timeout_ms)
    try:
        path = await s.login(url)
        size = None
        code, text = await s.send(b"SIZE " + path)  # RFC 3659; not every server has it
        if code == 213 and text.strip().isdigit():
            size = int(text.strip())
        data = await s.passive()
        await s.cmd(b"RETR " + path, (125, 150))
        got = 0
        while True:
            mv = await data.chunk(len(s.buf))
            if not mv:
                break
            sink(mv)
            got += len(mv)
        data.close()
        await s.finish()
        if size is not None and got != size:
            raise FTPError("file truncated at %d of %d bytes" % (got, size) if got < size else
                           "got %d bytes, SIZE said %d" % (got, size))
        return got
    finally:
        s.close()


async def stor(url, source, length=None, buf=None, timeout_ms=10000, connect_timeout_ms=10000):
    """Uploads to the file at url -> the number of bytes sent. source: bytes-like, or a function source(mv) ->
    bytes it put into mv (0 at the end, as a file's readinto); with length given, a source that ends early is
    an error (the server may keep the part it got: FTP cannot take an upload back). Raises FTPError as retr()."""
    s = _Session(buf if buf is not None else bytearray(_BUF), timeout_ms, connect_timeout_ms)
    try:
        path = await s.login(url)
        data = await s.passive()
        await s.cmd(b"STOR " + path, (125, 150))
        if callable(source):
            sent = 0
            mv = data.mv
            while length is None or sent < length:
                n = source(mv if length is None else mv[:min(len(mv), length - sent)])
                if not n:
                    break
                await data.write(mv[:n])
                sent += n
            if length is not None and sent < length:
                raise FTPError("source ended at %d of %d bytes" % (sent, length))
        else:
            await data.write(source)
            sent = len(source)
        data.close()  # end of file for the server (stream mode)
        await s.finish()
        return sent
    finally:
        s.close()
