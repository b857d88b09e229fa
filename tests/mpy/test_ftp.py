# lib/ftp.py on the unix port against scripted control and data peers (fake_net): the commands on the wire,
# multi-line replies, PASV/EPSV parsing, truncation through SIZE, error replies, uploads.
import tinytest
import fake_net
from fake_net import FakeStream
from lib import ftp
from lib.ftp import FTPError

CTL = ("ftp.example", 21)
DATA = ("ftp.example", 50000)  # 195 * 256 + 80

WELCOME = b"220 ready\r\n"
LOGIN = b"331 password please\r\n230 logged in\r\n200 binary\r\n"
EPSV = b"229 Entering Extended Passive Mode (|||50000|)\r\n"
DONE = b"226 Transfer complete.\r\n221 Bye.\r\n"


class Sink:
    def __init__(self):
        self.data = bytearray()
        self.largest = 0

    def __call__(self, mv):
        self.data.extend(mv)
        self.largest = max(self.largest, len(mv))


def pattern(n):
    return bytes((i * 13 + i // 251) & 0xFF for i in range(n))


async def araises(exc_type, aw):
    try:
        await aw
    except exc_type as e:
        return e
    raise AssertionError("expected %s" % exc_type.__name__)


async def run(ctl_rx, data_rx=b"", url="ftp://fw:s3cret@ftp.example/images/fw.bin", buf=None, data_peer=None,
              peers=None, chunk=5):
    # -> (bytes, sink, control peer, data peer, fake net); raises what retr raises
    ctl = FakeStream(ctl_rx, chunk)
    data = data_peer or FakeStream(data_rx, 333)
    net = fake_net.install(peers or {CTL: ctl, DATA: data})
    try:
        sink = Sink()
        n = await ftp.retr(url, sink, buf)
        return n, sink, ctl, data, net
    finally:
        fake_net.uninstall()


async def fails(*args, **kw):
    try:
        await run(*args, **kw)
    except FTPError as e:
        return e
    raise AssertionError("no FTPError")


def sent(peer):
    return bytes(peer.tx).split(b"\r\n")[:-1]


# ---- reply parsing ----

def test_pasv_port_parsing():
    assert ftp.pasv_port("Entering Passive Mode (127,0,0,1,195,80).") == 50000
    assert ftp.pasv_port("=10,1,2,3,0,21") == 21  # RFC 1123: scan for the numbers, brackets optional
    assert ftp.pasv_port("Entering Passive Mode (127, 0, 0, 1, 4, 1)") == 1025
    for bad in ("Entering Passive Mode", "(127,0,0,1,4)", "(127,0,0,1,4,256)", "(1,2,3,4,5,6,7)"):
        e = tinytest.raises(FTPError, ftp.pasv_port, bad)
        assert "bad PASV reply" in str(e), bad


def test_epsv_port_parsing():
    assert ftp.epsv_port("Entering Extended Passive Mode (|||6446|)") == 6446
    assert ftp.epsv_port("Extended Passive (!!!1025!)") == 1025
    for bad in ("Entering Extended Passive Mode", "(|||0|)", "(|||70000|)", "(|||x|)", "(", "(|"):
        e = tinytest.raises(FTPError, ftp.epsv_port, bad)
        assert "bad EPSV reply" in str(e), bad


# ---- RETR ----

async def test_retr_dialog_on_the_wire():
    body = pattern(3000)
    ctl_rx = WELCOME + LOGIN + b"213 3000\r\n" + EPSV + b"150 Opening BINARY\r\n" + DONE
    n, sink, ctl, data, net = await run(ctl_rx, body, "ftp://fw:s%3Acr%40t@ftp.example/images/fw%20v2.bin",
                                        bytearray(256))
    assert n == 3000 and sink.data == body and sink.largest <= 256
    assert sent(ctl) == [b"USER fw", b"PASS s:cr@t", b"TYPE I", b"SIZE images/fw v2.bin", b"EPSV",
                         b"RETR images/fw v2.bin", b"QUIT"], sent(ctl)
    assert net.opened == [CTL, DATA] and ctl.closed and data.closed


async def test_anonymous_login_absolute_path_and_type_suffix():
    ctl_rx = WELCOME + b"230 welcome, guest\r\n200 binary\r\n550 no SIZE here\r\n" + EPSV + b"125 go\r\n" + DONE
    n, sink, ctl, _, _ = await run(ctl_rx, b"abc", "ftp://ftp.example:21/%2Fpub/fw.bin;type=i")
    assert n == 3 and sink.data == b"abc"
    assert sent(ctl)[:4] == [b"USER anonymous", b"TYPE I", b"SIZE /pub/fw.bin", b"EPSV"], sent(ctl)


async def test_multi_line_replies_are_read_to_their_end():
    banner = (b"220-Welcome\r\n220-second line\r\n230 not the end (another code)\r\n   indented\r\n"
              b"220-" + b"x" * 600 + b"\r\n220 the end\r\n")
    login = b"331-Password\r\n331 please\r\n230-Logged in\r\n230-\r\n230 ok\r\n200 binary\r\n"
    ctl_rx = banner + login + b"213 3\r\n" + EPSV + b"150 go\r\n" + b"226-done\r\n226 really\r\n221 bye\r\n"
    n, sink, ctl, _, _ = await run(ctl_rx, b"abc")
    assert n == 3 and sent(ctl)[:3] == [b"USER fw", b"PASS s3cret", b"TYPE I"], sent(ctl)


async def test_pasv_fallback_connects_to_the_control_host():
    # The 227 names a private address: the data connection still goes to the control connection's host
    ctl_rx = (WELCOME + LOGIN + b"213 2\r\n500 EPSV not understood\r\n"
              b"227 Entering Passive Mode (10,9,8,7,195,80).\r\n150 go\r\n" + DONE)
    n, sink, ctl, _, net = await run(ctl_rx, b"ok")
    assert n == 2 and net.opened == [CTL, DATA] and b"PASV" in sent(ctl)


async def test_error_replies_say_what():
    e = await fails(WELCOME + b"331 password please\r\n530 Login incorrect.\r\n")
    assert str(e) == "FTP 530 Login incorrect." and e.code == 530, e
    e = await fails(WELCOME + LOGIN + b"550 No such file.\r\n" + EPSV + b"550 No such file.\r\n")
    assert str(e) == "FTP 550 No such file." and e.code == 550, e
    e = await fails(b"421 Too many users\r\n")
    assert str(e) == "FTP 421 Too many users", e
    e = await fails(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert str(e) == "not an FTP reply: SSH-2.0-OpenSSH_9.2", e
    e = await fails(WELCOME + b"331 password please\r\n")
    assert str(e) == "control connection closed (ftp.example:21)", e
    e = await fails(WELCOME + LOGIN + b"213 3\r\n500 no\r\n502 no PASV either\r\n")
    assert str(e) == "FTP 502 no PASV either", e
    e = await fails(WELCOME + b"220-" + b"banner\r\n" * 300)
    assert str(e) == "FTP reply longer than 200 lines", e


async def test_truncated_and_aborted_transfers():
    ctl_rx = WELCOME + LOGIN + b"213 3000\r\n" + EPSV + b"150 go\r\n" + DONE
    e = await fails(ctl_rx, pattern(1000))
    assert str(e) == "file truncated at 1000 of 3000 bytes", e
    e = await fails(ctl_rx.replace(b"213 3000", b"213 10"), pattern(11))
    assert str(e) == "got 11 bytes, SIZE said 10", e
    e = await fails(ctl_rx.replace(b"226 Transfer complete.", b"426 Connection closed; transfer aborted."), b"ab")
    assert str(e) == "FTP 426 Connection closed; transfer aborted." and e.code == 426, e


async def test_data_connection_refused_and_timeouts():
    ctl_rx = WELCOME + LOGIN + b"213 3\r\n" + EPSV
    e = await fails(ctl_rx, peers={CTL: FakeStream(ctl_rx)})
    assert str(e) == "data connection refused (ftp.example:50000)", e
    e = await fails(b"", url="ftp://ftp.example:2121/x")
    assert str(e) == "control connection refused (ftp.example:2121)", e
    ctl = FakeStream(WELCOME + LOGIN + b"213 3\r\n" + EPSV + b"150 go\r\n", stall=True)
    net = fake_net.install({CTL: ctl, DATA: FakeStream(b"a", stall=True)})
    try:
        e = await araises(FTPError, ftp.retr("ftp://ftp.example/x", Sink(), None, 60))
    finally:
        fake_net.uninstall()
    assert str(e) == "data connection timed out waiting for data (ftp.example:50000)", e
    ctl = FakeStream(WELCOME, stall=True)
    fake_net.install({CTL: ctl})
    try:
        e = await araises(FTPError, ftp.retr("ftp://ftp.example/x", Sink(), None, 60))
    finally:
        fake_net.uninstall()
    assert str(e) == "control connection timed out waiting for data (ftp.example:21)", e
    assert ctl.closed


async def test_bad_urls_fail_before_connecting():
    for url, msg in (("ftp://ftp.example/", "no file name in URL"),
                     ("ftp://u:p%0D%0ADELE%20x@ftp.example/a", "control character in the URL's password"),
                     ("ftp://ftp.example/a%0Ab", "control character in the URL's path"),
                     ("http://ftp.example/a", "URL must start with ftp://")):
        net = fake_net.install({})
        try:
            e = await araises(FTPError, ftp.retr(url, Sink()))
        finally:
            fake_net.uninstall()
        assert msg in str(e), (url, e)
        assert net.opened == [], url


# ---- STOR ----

async def test_stor_from_a_source_function():
    body = pattern(2500)
    pos = [0]

    def source(mv):
        n = min(len(mv), 700, len(body) - pos[0])
        mv[:n] = body[pos[0]:pos[0] + n]
        pos[0] += n
        return n
    ctl = FakeStream(WELCOME + LOGIN + EPSV + b"150 Ok to send data.\r\n" + DONE)
    data = FakeStream()
    fake_net.install({CTL: ctl, DATA: data})
    try:
        n = await ftp.stor("ftp://fw:pw@ftp.example/diag/cp1.log", source, 2500, bytearray(512))
    finally:
        fake_net.uninstall()
    assert n == 2500 and data.tx == body and data.closed
    assert sent(ctl) == [b"USER fw", b"PASS pw", b"TYPE I", b"EPSV", b"STOR diag/cp1.log", b"QUIT"], sent(ctl)


async def test_stor_bytes_and_failures():
    ctl = FakeStream(WELCOME + LOGIN + EPSV + b"150 go\r\n" + DONE)
    data = FakeStream()
    fake_net.install({CTL: ctl, DATA: data})
    try:
        assert await ftp.stor("ftp://ftp.example/a.txt", b"hello") == 5
    finally:
        fake_net.uninstall()
    assert data.tx == b"hello"
    ctl = FakeStream(WELCOME + LOGIN + EPSV + b"553 Could not create file.\r\n")
    fake_net.install({CTL: ctl, DATA: FakeStream()})
    try:
        e = await araises(FTPError, ftp.stor("ftp://ftp.example/a.txt", b"hello"))
    finally:
        fake_net.uninstall()
    assert str(e) == "FTP 553 Could not create file." and e.code == 553, e
    ctl = FakeStream(WELCOME + LOGIN + EPSV + b"150 go\r\n" + DONE)
    fake_net.install({CTL: ctl, DATA: FakeStream()})
    try:
        e = await araises(FTPError, ftp.stor("ftp://ftp.example/a.txt", lambda mv: 0, 10))
    finally:
        fake_net.uninstall()
    assert str(e) == "source ended at 0 of 10 bytes", e


tinytest.run(globals())
