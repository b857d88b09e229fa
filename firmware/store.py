# Flash persistence: whole small files replaced atomically, JSON with a CRC, appends, and an append-only journal
# (the transaction FIFO) that survives a power cut at any byte.
#
# Two copies of every state file (DESIGN.md §4, docs/decisions.md "Flash"): NAME and NAME.bak. A JSON state file
# (config, ids, availability, profiles, reservation, local list, cache) is written twice, so NAME.bak holds the
# same generation (or the previous one, after a power cut between the two writes). load() takes the first good one
# of NAME, NAME.tmp (a rename cut short), NAME.bak, repairs the other copy, and logs and notes every file it had to
# recover or lost. The journal keeps its StartTransaction / StopTransaction records in a mirror journal. The
# running transaction's record (firmware/ocpp/txqueue.py) appends its readings to both copies with append().
#
# Durability: close() commits the file on both ESP32 filesystems (littlefs writes its metadata on close, FatFs
# flushes its cache); on the unix port flush() is an fsync() (~110 us on the bench host's ext4), though
# close() handing the data to the kernel would do for the simulation (SIGKILL is the power cut there). So every
# write here ends with flush() + close() before a rename makes it live or the other copy is written.
import io
import os
import json
import struct
from binascii import crc32
from micropython import const

from firmware import log

# Flash-wear figure: every byte this module writes (files, journal records, compactions).
bytes_written = 0
# Recoveries the Central System should hear of (firmware/app.py sends them as DataTransfer): "file: what".
notes = []
_NOTES_MAX = const(8)
_TAG = "store"
BAK = ".bak"
# load() outcomes
ABSENT = 0    # no file: nothing was ever saved (or it was deleted on purpose)
FOUND = 1
RESTORED = 2  # the file was bad or gone: its copy was used (same or previous generation)
LOST = 3      # the file and its copy were bad: the caller's default was used

_HDR = const(6)          # journal record header: <len u16><crc32 u32>, crc over the body
_BODY_MIN = const(5)     # body: <kind u8><seq u32><payload>
_BODY_MAX = const(8192)  # sanity bound: a longer length field means a torn or garbage header
_K_DATA = const(1)       # a record (a later DATA with the same seq replaces it in place)
_K_POP = const(2)        # tombstone: the record with this seq is done
_K_BASE = const(3)       # written by compaction: keeps seqs monotonic when every record was popped
_K_KEEP = const(4)       # a record that the mirror journal holds too (same meaning as _K_DATA otherwise)
_COPY = const(512)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def present(path):
    """A state file or one of its copies is on flash (the file itself may be damaged or gone)."""
    return exists(path) or exists(path + BAK) or exists(path + ".tmp")


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def delete(path):
    """Removes a state file and its copy: the copy first, so a cut in between never leaves a copy without its
    file (load() would take that for a lost file and bring it back)."""
    remove(path + BAK)
    remove(path)
    remove(path + ".tmp")


def join(d, name):
    return name if not d else (d + name if d.endswith("/") else d + "/" + name)


def _name(path):
    return path[path.rfind("/") + 1:]


def note(text):
    """A recovery worth the Central System's attention: logged now, reported after the next boot's
    BootNotification (firmware/app.py)."""
    log.warn(_TAG, text)
    if len(notes) < _NOTES_MAX:
        notes.append(text)


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
    _write(path, data, None, None)
    _rename(path + ".tmp", path)


def append(path, data):
    """Adds data at the end of path in one write: a cut leaves a torn tail, which the reader's CRC drops."""
    global bytes_written
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
    bytes_written += len(data)


def _write(path, data, obj, body):
    # Writes path + ".tmp": data (bytes or an iterable of chunks); or obj as CRC-framed JSON, from body (its
    # encoding) when there was heap for one, else streamed.
    global bytes_written
    f = open(path + ".tmp", "wb")
    try:
        if obj is None:
            for c in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
                f.write(c)
                bytes_written += len(c)
        elif body is not None:
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


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def write_json(path, obj):
    """Replaces a state file: written twice, to path and path.bak. (A file that changes every few seconds
    appends instead, as the transaction record does: firmware/ocpp/txqueue.py.)"""
    try:
        # json.dumps runs in C; streaming costs a Python call and a file write per token
        body = memoryview(json.dumps(obj))  # len() in bytes, for non-ASCII text too
    except MemoryError:
        body = None
    # One copy at a time, so the other one is whole whatever a cut tears; each written in place when it exists
    # (docs/decisions.md, Flash): a new file and a rename over the old one cost 4x more than the bytes.
    for p in (path, path + BAK):
        if body is None or not _overwrite(p, body):
            _write(p, None, obj, body)
            _rename(p + ".tmp", p)


def _overwrite(path, body):
    """Writes "<crc>\n" + body over path from its first byte, with JSON whitespace up to path's old length
    so that nothing of the previous generation is left behind it (the unix port has no truncate, and opening
    with "wb" is what costs). False, writing nothing, when path is missing or over twice the new length (it
    would never shrink again): the caller then replaces it. A cut leaves a CRC mismatch, never a mixed file
    that checks out."""
    global bytes_written
    try:
        f = open(path, "r+b")
    except OSError:
        return False
    try:
        n = 9 + len(body)
        pad = f.seek(0, 2) - n
        if pad > n:
            return False
        f.seek(0)
        crc = crc32(body)
        if pad > 0:
            sp = b" " * pad
            crc = crc32(sp, crc)
        f.write(b"%08x\n" % (crc & 0xFFFFFFFF))
        f.write(body)
        if pad > 0:
            f.write(sp)
            n += pad
        f.flush()
    finally:
        f.close()
    bytes_written += n
    return True


def _check(raw):
    """Why raw is not a whole "<crc32 hex>\n<json>" file, or None. A hand-edited file without the CRC is bad."""
    if raw is None:
        return "missing"
    if not raw:
        return "empty"
    if len(raw) < 9 or raw[8] != 10:
        return "no CRC header"
    try:
        crc = int(raw[:8], 16)
    except ValueError:
        return "no CRC header"
    if crc32(memoryview(raw)[9:]) & 0xFFFFFFFF != crc:
        return "CRC mismatch"
    return None


def _decode(raw):
    # Straight from the buffer: no second copy. (obj, None) or (None, why)
    try:
        return json.loads(memoryview(raw)[9:]), None
    except ValueError:
        return None, "not JSON"


def _repair(path, raw):
    try:
        write_atomic(path, raw)
    except OSError as e:
        log.error(_TAG, "%s: could not rewrite (%r)" % (_name(path), e))


def load(path, default=None):
    """(object, outcome) of a state file written by write_json; outcome is ABSENT, FOUND, RESTORED or LOST.
    A bad file is kept as path.bad for diagnosis and rewritten from its copy; a bad copy is rewritten from
    the file. Every recovery is logged, naming the file and what was used."""
    raw = read(path)
    if raw is None and _check(read(path + ".tmp")) is None:
        try:  # a write was cut between its renames: the new generation is complete
            os.rename(path + ".tmp", path)
            raw = read(path)
        except OSError:
            pass
    why = _check(raw)
    if why is None:
        obj, why = _decode(raw)
    bak = path + BAK
    braw = read(bak)
    bwhy = _check(braw)
    if why is None:
        if bwhy is not None:
            (log.warn if braw is not None else log.info)(_TAG, "%s %s: copy rewritten" % (_name(bak), bwhy))
            _repair(bak, raw)
        return obj, FOUND
    if raw is None and braw is None:
        return default, ABSENT
    if raw is not None:
        try:
            _rename(path, path + ".bad")
        except OSError:
            pass
    if bwhy is None:
        obj, bwhy = _decode(braw)
    if bwhy is None:
        _repair(path, braw)
        note("%s %s: restored from %s" % (_name(path), why, _name(bak)))
        return obj, RESTORED
    remove(bak)  # reported once: the next boot finds no file, as after a first boot
    note("%s %s, copy %s: lost, defaults used" % (_name(path), why, bwhy))
    return default, LOST


def read_json(path, default=None):
    return load(path, default)[0]


class Journal:
    """Append-only file of CRC-framed records, used as a persistent FIFO.

    RAM holds only three small int lists (seq, file offset, body length) per live record; payloads stay on
    flash. A torn or corrupt record ends the scan at open: it and everything after it are dropped by an
    atomic rewrite, so a power cut mid-append loses at most the record being written.

    With mirror=True, records appended with keep=True (the ones billing depends on) are also written to a
    second journal, path.bak, with the same seq; at open, records the main file lost are taken back from it
    in seq order, and a copy that disagrees with an intact main file is rebuilt from it. damaged is True when
    the main file had lost something (the caller then re-checks what it derives from the queue).
    """

    def __init__(self, path, compact_at=4096, read_buf=None, mirror=False):
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
        self._m = None
        self.damaged = False
        if not exists(path) and exists(path + ".tmp"):
            os.rename(path + ".tmp", path)  # a compaction finished writing but FatFs lost the target
        size = os.stat(path)[6] if exists(path) else -1
        try:
            good = self._scan()
        except OSError:
            good = None
        why = None
        if good is None:
            self._torn = True  # unreadable now: repair before the next append, not blindly here
        elif good < size:
            why = "unreadable from byte %d of %d" % (good, size)
            self._torn = True
            self._rewrite_quiet()
        elif size == 0:
            why = "empty"  # a journal file always holds a record (a cut inside the very first append aside)
            self._torn = True  # rewritten with a seq floor at the next write
        if mirror:
            bak = path + BAK
            if why is None and size < 0 and exists(bak):  # the copy outlived the file it mirrors
                why = "missing"
                self._torn = True
            had = exists(bak)
            self._m = Journal(bak, compact_at)
            if not had and size >= 0:
                log.info(_TAG, "%s missing" % _name(bak))
                self._m._torn = True  # rebuilt below, a seq floor at least, so a later loss is seen
            n = self._reconcile(why is not None)
            if n:
                why = (why or "incomplete") + ": %d transaction record(s) restored from %s" % (n, _name(bak))
        if why:
            if self._torn:
                self._rewrite_quiet()  # now, so the next boot finds a whole file and reports nothing again
            self.damaged = True
            text = "%s %s" % (_name(path), why)
            if mirror:
                note(text)
            else:
                log.warn(_TAG, text)

    # ---- public API -------------------------------------------------------------------------------
    def __len__(self):
        return len(self._seqs)

    def append(self, data, keep=False):
        """Queues data; keep=True also writes it to the mirror (what billing depends on)."""
        seq = self._next
        self._write_rec(_K_KEEP if keep else _K_DATA, seq, data)
        self._next = seq + 1
        if keep and self._m is not None:
            self._mirror(self._m._put, seq, data)
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
        if self._m is not None:
            self._mirror(self._m.pop, seq)
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

    # ---- internals --------------------------------------------------------------------------------
    def _mirror(self, fn, *args):
        # The main file holds the record: a failing copy is repaired at the next open, never fails the caller.
        try:
            fn(*args)
        except OSError as e:
            log.warn(_TAG, "%s: %r" % (_name(self._m.path), e))

    def _put(self, seq, data):
        self._write_rec(_K_KEEP, seq, data)
        self._next = max(self._next, seq + 1)

    def _kept(self):
        """Seqs of the live records written with keep=True, in FIFO order (a byte read per record)."""
        out = []
        if self._seqs:
            b = bytearray(1)
            with open(self.path, "rb") as f:
                for i in range(len(self._seqs)):
                    f.seek(self._offs[i] + _HDR)
                    if f.readinto(b) == 1 and b[0] == _K_KEEP:
                        out.append(self._seqs[i])
        return out

    def _reconcile(self, lost):
        """At open, main file and mirror: records the main file lost come back from the mirror (in seq order,
        after the survivors, which are all older); then the mirror is rebuilt if it still disagrees (a power cut
        between the two writes, or a damaged copy). Returns how many records came back.

        lost: the main file lost its end. The pops of delivered records are appended there, so a record whose pop
        went with it would come back and be sent again (a Start booked twice, a Stop for a closed transaction).
        An intact mirror saw every pop of a kept record, and the queue pops in FIFO order: every record up to the
        newest kept record the mirror saw popped was delivered, and goes."""
        m = self._m
        n = 0
        try:
            if lost and not m.damaged and not m._torn:
                done = -1
                for seq in self._kept():
                    if done < seq < m._next and m._index(seq) < 0:
                        done = seq
                if done >= 0:
                    live = [seq for seq in self._seqs if seq > done]
                    log.info(_TAG, "%s: %d delivered record(s) dropped" % (_name(self.path),
                                                                          len(self._seqs) - len(live)))
                    self._rewrite(None, live)
            for seq in list(m._seqs):
                if seq >= self._next and self._index(seq) < 0:
                    data = m._read_payload(m._index(seq))
                    if data is not None:
                        self._write_rec(_K_KEEP, seq, data)
                        self._next = seq + 1
                        n += 1
            self._next = max(self._next, m._next)  # a seq the mirror saw popped is never reused
            kept = self._kept()
            if kept != m._seqs or m._torn:
                log.info(_TAG, "%s rebuilt (%d records)" % (_name(m.path), len(kept)))
                m._rewrite(self, kept)
        except OSError as e:
            log.warn(_TAG, "%s: %r" % (_name(m.path), e))
        return n

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
        if kind != _K_POP:
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
        if body is None or body[0] not in (_K_DATA, _K_KEEP) or \
                struct.unpack_from("<I", body, 1)[0] != self._seqs[i]:
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
                if kind == _K_DATA or kind == _K_KEEP:
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

    def _rewrite(self, src=None, sel=None):
        """Write the live records (in FIFO order) plus a seq floor to a new file and swap it in. With src (a
        mirror's main journal): src's records whose seq is in sel instead."""
        global bytes_written
        src = src or self
        tmp = self.path + ".tmp"
        seqs = []
        offs = []
        lens = []
        off = 0
        f = None
        if src._seqs:
            f = open(src.path, "rb")
        try:
            with open(tmp, "wb") as dst:
                for i in range(len(src._seqs)):
                    if sel is not None and src._seqs[i] not in sel:
                        continue
                    f.seek(src._offs[i])
                    n = _HDR + src._lens[i]
                    seqs.append(src._seqs[i])
                    offs.append(off)
                    lens.append(src._lens[i])
                    off += n
                    # Records were CRC-checked at scan or append, so a plain copy keeps them valid.
                    while n > 0:
                        chunk = f.read(min(n, _COPY))
                        if not chunk:
                            raise OSError("journal shrank during compaction")
                        dst.write(chunk)
                        n -= len(chunk)
                nxt = max(self._next, src._next)
                head = struct.pack("<BI", _K_BASE, nxt)
                dst.write(struct.pack("<HI", _BODY_MIN, crc32(head) & 0xFFFFFFFF))
                dst.write(head)
                off += _HDR + _BODY_MIN
                dst.flush()
        finally:
            if f:
                f.close()
        bytes_written += off
        _rename(tmp, self.path)
        self._seqs = seqs
        self._offs = offs
        self._lens = lens
        self._next = nxt
        self._end = off
        self._torn = False
