# Flash persistence: whole small files replaced atomically, JSON with a CRC, and an append-only journal
# (the transaction FIFO) that survives a power cut at any byte.
#
# Durability: MicroPython has no fsync. close() commits the file on both ESP32 filesystems (littlefs writes
# its metadata on close, FatFs flushes its cache), and the unix port's close() hands the data to the kernel,
# which is enough for the simulation (SIGKILL is the power cut there, not a kernel crash). So every write here
# ends with flush() + close() before a rename makes it live.
import io
import os
import json
import struct
from binascii import crc32
from micropython import const

# Flash-wear figure: every byte this module writes (files, journal records, compactions).
bytes_written = 0

_HDR = const(6)          # journal record header: <len u16><crc32 u32>, crc over the body
_BODY_MIN = const(5)     # body: <kind u8><seq u32><payload>
_BODY_MAX = const(8192)  # sanity bound: a longer length field means a torn or garbage header
_K_DATA = const(1)       # a record (a later DATA with the same seq replaces it in place)
_K_POP = const(2)        # tombstone: the record with this seq is done
_K_BASE = const(3)       # written by compaction: keeps seqs monotonic when every record was popped
_COPY = const(512)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def join(d, name):
    return name if not d else (d + name if d.endswith("/") else d + "/" + name)


def _rename(src, dst):
    # littlefs and POSIX replace the target atomically; FatFs refuses an existing target, so there the
    # window between remove and rename is covered by readers falling back to the complete ".tmp".
    try:
        os.rename(src, dst)
    except OSError:
        remove(dst)
        os.rename(src, dst)


class _Out(io.IOBase):
    # The file json.dump streams into when the heap has no block for the whole document, counting bytes and
    # the CRC on the way (the 2 KB CA certificate in config.json needs two contiguous copies otherwise).
    def __init__(self, f):
        self.f = f
        self.crc = 0

    def write(self, b):
        global bytes_written
        self.crc = crc32(b, self.crc)
        bytes_written += len(b)
        return self.f.write(b)


def write_atomic(path, data):
    _write(path, data, None)


def _write(path, data, obj):
    # data: bytes or an iterable of chunks; or, with obj, obj as CRC-framed JSON (data unused).
    global bytes_written
    tmp = path + ".tmp"
    f = open(tmp, "wb")
    try:
        if obj is None:
            for c in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
                f.write(c)
                bytes_written += len(c)
        else:
            try:
                # json.dumps runs in C; streaming costs a Python call and a file write per token
                body = memoryview(json.dumps(obj))  # len() in bytes, for non-ASCII text too
            except MemoryError:
                body = None
            if body is not None:
                f.write(b"%08x\n" % (crc32(body) & 0xFFFFFFFF))
                f.write(body)
                bytes_written += 9 + len(body)
            else:
                f.write(b"00000000\n")  # placeholder: the CRC is known once the body is out
                out = _Out(f)
                json.dump(obj, out)
                f.seek(0)
                f.write(b"%08x" % (out.crc & 0xFFFFFFFF))
                bytes_written += 9
        f.flush()
    finally:
        f.close()
    _rename(tmp, path)


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def write_json(path, obj):
    _write(path, None, obj)


def _parse_json(raw):
    # Returns (ok, obj). Format: "<crc32 hex>\n<json>"; a hand-edited file without the CRC is corrupt.
    if raw is None or len(raw) < 9 or raw[8] != 10:
        return False, None
    try:
        crc = int(raw[:8], 16)
    except ValueError:
        return False, None
    body = memoryview(raw)[9:]
    if crc32(body) & 0xFFFFFFFF != crc:
        return False, None
    try:
        return True, json.loads(body)  # straight from the buffer: no second copy
    except ValueError:
        return False, None


def read_json(path, default=None):
    raw = read(path)
    if raw is None:
        raw = read(path + ".tmp")  # FatFs rename window, see _rename; the CRC proves it complete
        if raw is None:
            return default
        ok, obj = _parse_json(raw)
        return obj if ok else default
    ok, obj = _parse_json(raw)
    if ok:
        return obj
    # Keep the evidence for diagnosis; the caller starts over from its default.
    _rename(path, path + ".bad")
    return default


class Journal:
    """Append-only file of CRC-framed records, used as a persistent FIFO.

    RAM holds only three small int lists (seq, file offset, body length) per live record; payloads stay on
    flash. A torn or corrupt record ends the scan at open: it and everything after it are dropped by an
    atomic rewrite, so a power cut mid-append loses at most the record being written.
    """

    def __init__(self, path, compact_at=4096, read_buf=None):
        self.path = path
        self.compact_at = compact_at
        self._hdr = bytearray(_HDR)
        # Records up to read_buf bytes are read into one buffer taken now, while the heap is whole: peek() then
        # returns a memoryview valid until the next read (firmware/jsonbuf.py says why).
        self._rbuf = memoryview(read_buf) if read_buf is not None else None
        self._seqs = []
        self._offs = []
        self._lens = []
        self._next = 0
        self._end = 0
        self._torn = False  # the file holds bytes past _end that must go before the next append
        if not exists(path) and exists(path + ".tmp"):
            os.rename(path + ".tmp", path)  # a compaction finished writing but FatFs lost the target
        try:
            good = self._scan()
        except OSError:
            good = None
        if good is None:
            self._torn = True  # unreadable now: repair before the next append, not blindly here
        elif good < (os.stat(path)[6] if exists(path) else 0):
            self._torn = True
            self._rewrite_quiet()

    # ---- public API -------------------------------------------------------------------------------
    def __len__(self):
        return len(self._seqs)

    def append(self, data):
        seq = self._next
        self._write_rec(_K_DATA, seq, data)
        self._next = seq + 1
        return seq

    def peek(self):
        while self._seqs:
            seq = self._seqs[0]
            data = self._read_payload(0)
            if data is not None:
                return seq, data
            self.pop(seq)  # flash went bad under a checked record: it cannot be sent, do not block the queue
        return None

    def pop(self, seq):
        i = self._index(seq)
        if i < 0:
            return False
        self._write_rec(_K_POP, seq, b"", i)
        self._maybe_compact()
        return True

    def replace(self, seq, data):
        """Patch a queued record in place: same seq, so it keeps its FIFO position. False if not queued."""
        i = self._index(seq)
        if i < 0:
            return False
        self._write_rec(_K_DATA, seq, data, i)
        self._maybe_compact()
        return True

    def records(self):
        """(seq, payload) of every queued record, oldest first (read one at a time from flash)."""
        for seq in list(self._seqs):
            i = self._index(seq)
            if i >= 0:
                data = self._read_payload(i)
                if data is not None:
                    yield seq, data

    def dead_bytes(self):
        live = 0
        for n in self._lens:
            live += _HDR + n
        return self._end - live

    def compact(self):
        self._rewrite()

    # ---- internals --------------------------------------------------------------------------------
    def _index(self, seq):
        try:
            return self._seqs.index(seq)
        except ValueError:
            return -1

    def _write_rec(self, kind, seq, data, slot=-1):
        global bytes_written
        body_len = _BODY_MIN + len(data)
        if body_len > _BODY_MAX:
            raise ValueError("journal record too long")
        if self._torn:
            data = bytes(data)  # the rewrite may read records through the buffer data points into
            self._rewrite()
        head = struct.pack("<BI", kind, seq)
        crc = crc32(data, crc32(head)) & 0xFFFFFFFF
        off = self._end
        try:
            with open(self.path, "ab") as f:
                f.write(struct.pack("<HI", body_len, crc))
                f.write(head)
                f.write(data)
                f.flush()
        except OSError:
            self._torn = True  # a half-written record must go, or later appends would sit behind it
            self._rewrite_quiet()
            raise
        bytes_written += _HDR + body_len
        self._end = off + _HDR + body_len
        if kind == _K_DATA:
            if slot < 0:
                self._seqs.append(seq)
                self._offs.append(off)
                self._lens.append(body_len)
            else:
                self._offs[slot] = off
                self._lens[slot] = body_len
        elif slot >= 0:
            self._seqs.pop(slot)
            self._offs.pop(slot)
            self._lens.pop(slot)

    def _read_payload(self, i):
        # An OSError propagates (the record may be fine); None means the record itself failed its check.
        with open(self.path, "rb") as f:
            f.seek(self._offs[i])
            body = self._read_rec(f)
        if body is None or body[0] != _K_DATA or struct.unpack_from("<I", body, 1)[0] != self._seqs[i]:
            return None
        return body[_BODY_MIN:]

    def _read_rec(self, f):
        """The next record's body, checked, or None at the end of the good part of the file."""
        hdr = self._hdr
        if f.readinto(hdr) != _HDR:
            return None
        n, crc = struct.unpack("<HI", hdr)
        if n < _BODY_MIN or n > _BODY_MAX:
            return None
        if self._rbuf is not None and n <= len(self._rbuf):
            body = self._rbuf[:n]
            got = f.readinto(body)
        else:
            body = f.read(n)
            got = len(body)
        if got != n or crc32(body) & 0xFFFFFFFF != crc:
            return None
        return body

    def _scan(self):
        """Rebuild the index from the file; returns the offset where the good records end."""
        seqs, offs, lens = self._seqs, self._offs, self._lens
        off = 0
        try:
            f = open(self.path, "rb")
        except OSError:
            return 0
        with f:
            while True:
                body = self._read_rec(f)
                if body is None:
                    break
                kind = body[0]
                seq = struct.unpack_from("<I", body, 1)[0]
                n = len(body)
                if kind == _K_DATA:
                    i = self._index(seq)
                    if i >= 0:  # a replace: newest copy wins, position unchanged
                        offs[i] = off
                        lens[i] = n
                    elif seq >= self._next:
                        seqs.append(seq)
                        offs.append(off)
                        lens.append(n)
                        self._next = seq + 1
                    # else: a replace of a record popped meanwhile; dead
                elif kind == _K_POP:
                    i = self._index(seq)
                    if i >= 0:
                        seqs.pop(i)
                        offs.pop(i)
                        lens.pop(i)
                    self._next = max(self._next, seq + 1)
                elif kind == _K_BASE:
                    self._next = max(self._next, seq)
                else:
                    break
                off += _HDR + n
        self._end = off
        return off

    def _maybe_compact(self):
        dead = self.dead_bytes()
        if dead >= self.compact_at and dead >= self._end - dead:
            self._rewrite_quiet()

    def _rewrite_quiet(self):
        try:
            self._rewrite()
        except OSError:
            pass  # the scan at the next open repairs the file

    def _rewrite(self):
        """Write the live records (in FIFO order) plus a seq floor to a new file and swap it in."""
        global bytes_written
        tmp = self.path + ".tmp"
        offs = []
        off = 0
        src = None
        if self._seqs:
            src = open(self.path, "rb")
        try:
            with open(tmp, "wb") as dst:
                for i in range(len(self._seqs)):
                    src.seek(self._offs[i])
                    n = _HDR + self._lens[i]
                    offs.append(off)
                    off += n
                    # Records were CRC-checked at scan or append, so a plain copy keeps them valid.
                    while n > 0:
                        chunk = src.read(min(n, _COPY))
                        if not chunk:
                            raise OSError("journal shrank during compaction")
                        dst.write(chunk)
                        n -= len(chunk)
                head = struct.pack("<BI", _K_BASE, self._next)
                dst.write(struct.pack("<HI", _BODY_MIN, crc32(head) & 0xFFFFFFFF))
                dst.write(head)
                off += _HDR + _BODY_MIN
                dst.flush()
        finally:
            if src:
                src.close()
        bytes_written += off
        _rename(tmp, self.path)
        self._offs = offs
        self._end = off
        self._torn = False
