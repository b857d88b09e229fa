# Runs under the MicroPython unix port: one transfer with lib.http / lib.ftp, reported on stdout.
#   transfer_probe.py get|put|post|retr|stor URL [--ca FILE] [--file PATH] [--buf N] [--timeout-ms N]
#                     [--repeat N] [--mem]
# get/retr stream the body into SHA-256 (nothing is kept); put/post/stor upload PATH through its readinto.
# Output: OK <bytes> <sha256 hex> [<HTTP status>] per transfer | ERROR <message>, and with --mem one line
#   MEM before=<gc.mem_alloc() before, B> peak_live=<largest live growth seen during the transfers, B>
#       peak_raw=<largest growth counting uncollected garbage, B> after=<growth after each transfer, B,...>
#       largest_chunk=<B> buf=<B>
import sys
import gc
import os
import asyncio
import binascii
import hashlib
from lib import http, ftp


def options(argv):
    opts = {}
    i = 3
    while i < len(argv):
        if argv[i] == "--mem":
            opts["mem"] = True
            i += 1
        else:
            opts[argv[i][2:]] = argv[i + 1]
            i += 2
    return opts


class Meter:
    # Sink and source wrapper: hashes every chunk and samples the heap (a gc.collect() every 32 chunks)
    def __init__(self, mem):
        self.h = hashlib.sha256()
        self.n = 0
        self.chunks = 0
        self.largest = 0
        self.mem = mem
        self.before = 0
        self.peak_live = 0
        self.peak_raw = 0

    def start(self):
        # asyncio loads its stream module (and socket) at the first open_connection: a one-time cost that the
        # firmware pays already for its WebSocket, so it is loaded before the baseline
        asyncio.open_connection
        import socket
        gc.collect()
        self.before = gc.mem_alloc()

    def take(self, mv):
        self.h.update(mv)
        self.n += len(mv)
        self.largest = max(self.largest, len(mv))
        self.chunks += 1
        if self.mem:
            self.peak_raw = max(self.peak_raw, gc.mem_alloc() - self.before)
            if self.chunks % 32 == 0:
                gc.collect()
                self.peak_live = max(self.peak_live, gc.mem_alloc() - self.before)

    def reader(self, f):
        def source(mv):
            n = f.readinto(mv)
            if n:
                self.take(mv[:n])
            return n
        return source


async def main():
    op, url = sys.argv[1], sys.argv[2]
    o = options(sys.argv)
    ctx = None
    if "ca" in o:
        from lib import tls
        with open(o["ca"], "rb") as f:
            ctx = tls.context(tls.certificates(f.read())[:1])
    buf = bytearray(int(o.get("buf", "1024")))
    m = Meter("mem" in o)
    m.start()
    afters = []
    for _ in range(int(o.get("repeat", "1"))):
        m.h = hashlib.sha256()
        m.n = 0
        status = await transfer(op, url, o, buf, ctx, m)
        if status is False:
            return
        gc.collect()
        afters.append(gc.mem_alloc() - m.before)
        print("OK", m.n, binascii.hexlify(m.h.digest()).decode(), status if status is not None else "")
    if m.mem:
        print("MEM before=%d peak_live=%d peak_raw=%d after=%s largest_chunk=%d buf=%d" % (
            m.before, m.peak_live, m.peak_raw, ",".join(str(a) for a in afters), m.largest, len(buf)))


async def transfer(op, url, o, buf, ctx, m):
    # -> the HTTP status of an upload, None, or False after printing an error
    timeout = int(o.get("timeout-ms", "10000"))
    f = open(o["file"], "rb") if "file" in o else None
    try:
        if op == "get":
            await http.get(url, m.take, buf, ctx, None, timeout, timeout)
        elif op == "retr":
            await ftp.retr(url, m.take, buf, timeout, timeout)
        elif op in ("put", "post"):
            fn = http.put if op == "put" else http.post
            return await fn(url, m.reader(f), os.stat(o["file"])[6], buf, ctx, None, timeout, timeout)
        elif op == "stor":
            await ftp.stor(url, m.reader(f), os.stat(o["file"])[6], buf, timeout, timeout)
        else:
            print("ERROR unknown operation", op)
            return False
    except (http.HTTPError, ftp.FTPError) as e:
        print("ERROR", e)
        return False
    finally:
        if f:
            f.close()
    return None


asyncio.run(main())
