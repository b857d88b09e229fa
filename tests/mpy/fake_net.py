# Fake peers for lib/tcp.py's connections on the unix port: install(peers) makes asyncio.open_connection, as
# lib.tcp sees it, connect to peers[(host, port)] (a FakeStream, or a list of them: one per connect) instead of
# the network. A missing peer refuses
# the connection as a real socket does. The socket still goes through the ssl argument's wrap_socket(), so the
# code that keeps it for closing is exercised too.
import asyncio
import errno
from lib import tcp


class FakeStream:
    """A peer that sends rx in pieces of `chunk` bytes and records what the client writes. After rx it closes
    (readinto returns 0), or with stall=True never answers again. fail_after: writes past this many bytes raise
    EPIPE, as a server that hung up."""

    def __init__(self, rx=b"", chunk=7, stall=False, fail_after=None):
        self.rx = bytes(rx)
        self.pos = 0
        self.chunk = chunk
        self.stall = stall
        self.fail_after = fail_after
        self.tx = bytearray()
        self.closed = False
        self.reads = 0
        self.largest_read = 0  # the largest buffer the client read into

    async def readinto(self, buf):
        self.reads += 1
        self.largest_read = max(self.largest_read, len(buf))
        if self.pos >= len(self.rx) and self.stall:
            await asyncio.Event().wait()  # never set: only a cancel gets the reader out
        n = min(len(buf), self.chunk, len(self.rx) - self.pos)
        buf[:n] = self.rx[self.pos:self.pos + n]
        self.pos += n
        return n

    def write(self, buf):
        assert not self.closed, "write after close"
        if self.fail_after is not None and len(self.tx) + len(buf) > self.fail_after:
            raise OSError(32)  # EPIPE (not in MicroPython's errno)
        self.tx.extend(buf)

    async def drain(self):
        await asyncio.sleep_ms(0)

    def close(self):
        self.closed = True


class _Net:
    def __init__(self, peers):
        self.peers = peers
        self.opened = []  # (host, port) in connect order

    def __getattr__(self, name):
        return getattr(asyncio, name)

    async def open_connection(self, host, port, ssl=None, server_hostname=None):
        self.opened.append((host, port))
        if host == "unknown.invalid":
            raise OSError("[addrinfo error -2]")
        peer = self.peers.get((host, port))
        if isinstance(peer, list):  # one peer per connect, in order
            peer = peer.pop(0) if peer else None
        if peer is None:
            raise OSError(errno.ECONNREFUSED)
        s = ssl.wrap_socket(peer, server_hostname=server_hostname) if ssl else peer
        return s, s


def install(peers):
    """-> the fake network (its .opened lists the connects); uninstall() puts the real one back."""
    net = _Net(peers)
    tcp.asyncio = net
    return net


def uninstall():
    tcp.asyncio = asyncio
