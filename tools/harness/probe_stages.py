# Per-stage timing of the CALLs the Central System sends, taken on the MicroPython unix port next to the firmware
# (tools/harness/probe_mcu.py imports this when BENCH_STAGES is set). It wraps the firmware's functions at run
# time, so the firmware holds no timing code: every stage is the time.ticks_us span of one function of the
# receive -> answer path, and a CALL's record is
#   read      frame header parsed -> rpc.decode called (payload read, UTF-8 check, the reader's glue)
#   parse     rpc.decode (json.loads and the OCPP-J frame checks)
#   validate  rpc.validate, every top-level call (the handler's nested ones included)
#   handle    the handler, less the validate and persist spans inside it
#   persist   firmware.store writes (state files on the flash)
#   encode    JsonBuf.dump of the answer frame (with an answer that writes its own JSON, its work is here)
#   write     WS.send of the answer up to its last socket write (framing, mask, write; not the drain after it)
#   other     the rest of header parsed -> answer written (dispatch glue, and collections: see gcs)
#   total     header parsed -> the answer's last socket write: the charger's share of the round trip
#   alloc     bytes allocated in between (gc.mem_alloc() at both ends; the median over the calls without a
#             collection)
#   gcs       calls with a collection in between (app.py collects after every few KB allocated: the heap in use
#             dropped by more than _GC_DROP bytes), counted over the calls, not a median
# and each report also times one gc.collect() of the heap as it is then (gc_us). Every wrapper is a plain
# function that allocates nothing, so alloc and gcs are the firmware's own (an async wrapper would add a
# coroutine object per call), and gc.mem_alloc() is read only outside the timed spans: it walks the whole
# allocation table (~40 us here), which at every stage boundary doubled the time of a 17-validate CALL.
# A record is closed when the next CALL's decode starts.
# A CALL of the unknown action "BenchStages" prints a BENCHSTAGE line for the action timed since the last one
# (medians in us) and starts over; the firmware answers it NotImplemented, as it would any unknown action. One
# action at a time: the records go into one buffer allocated at start, while the heap is whole (a growing list
# of them ran the 110wK heap out), and CALLs of another action before the report are not recorded.
import asyncio as _asyncio
import gc
import time
from array import array

from lib import ws as _ws
from lib import wsframe as _wf
from firmware import jsonbuf as _jb
from firmware import store as _store
from firmware.ocpp import rpc as _rpc
from firmware.ocpp import session as _session

_T = time.ticks_us
_D = time.ticks_diff
NAMES = ("read", "parse", "validate", "handle", "persist", "encode", "write", "other", "total", "alloc", "gcs")
_READ, _PARSE, _VALIDATE, _HANDLE, _PERSIST, _ENCODE, _WRITE, _OTHER, _TOTAL, _ALLOC, _GCS = range(11)
_N = 300  # records kept per action (the bench sends at most 300)
_GC_DROP = 1024  # a shrinking realloc (json.dumps trims its text) frees less than this; a collection frees KBs
_FIELDS = 11


class _St:
    t_hdr = 0      # the last frame header's parse
    a_hdr = 0      # gc.mem_alloc() then
    a_last = 0     # gc.mem_alloc() at the last stage boundary
    t_rec = 0      # t_hdr of the CALL being recorded
    t_send = 0     # WS.send of its answer called
    t_out = 0      # its answer's last socket write so far
    sending = False  # its answer's bytes are being written
    left = 0       # bytes of the answer's frame not written yet
    rec = None     # the record of the CALL being served (scratch, reused)
    depth = 0      # nesting of validate / persist wrappers
    action = None  # of the CALL being served
    kept = None    # the action the buffer holds
    n = 0          # records in the buffer
    scratch = [0] * _FIELDS
    buf = None     # record i, field f at [f * _N + i], us (bytes for alloc), clipped to 65535


_s = _St()


def _mark(r):
    # the answer is out: a heap use below the one at the header means a collection ran in between
    a = gc.mem_alloc()
    if a < _s.a_last - _GC_DROP:
        r[_GCS] = 1
    elif a > _s.a_last:
        r[_ALLOC] = a - _s.a_last


def _add(i, t0):
    r = _s.rec
    if r is not None and not _s.t_out:  # the answer is not out yet: work for this CALL
        r[i] += _D(_T(), t0)


def _close():
    # the CALL recorded so far is done: its answer went out at t_out (nothing after that is its time)
    r = _s.rec
    _s.rec = None
    _s.sending = False
    if r is None or not _s.t_out:
        return
    r[_WRITE] = _D(_s.t_out, _s.t_send)
    r[_TOTAL] = _D(_s.t_out, _s.t_rec)
    other = r[_TOTAL]
    for i in range(_OTHER):
        other -= r[i]
    r[_OTHER] = other
    if _s.kept is None:
        _s.kept = _s.action
    if _s.action != _s.kept or _s.n >= _N:
        return
    b = _s.buf
    for i in range(_FIELDS):
        v = r[i]
        b[i * _N + _s.n] = 0 if v < 0 else v if v < 65535 else 65535
    _s.n += 1


def _wrap_parse_header():
    # The frame's header is in lib/ws.py's receive buffer, parsed (wsframe.read_header).
    parse = _wf.read_header

    def read_header(buf, start, end):
        v = parse(buf, start, end)
        if v is not None:
            _s.a_hdr = gc.mem_alloc()  # before the clock: its own time is not the CALL's
            _s.t_hdr = _T()
        return v
    _ws.read_header = read_header


def _wrap_decode(threshold):
    orig = _rpc.decode

    def decode(text):
        if threshold:  # an experiment: app.py's gc.threshold() replaced at the first frame after the boot
            gc.threshold(threshold)
        _close()
        t0 = _T()
        v = orig(text)
        t1 = _T()
        if v is not None and v[0] == _rpc.CALL:
            r = _s.scratch
            for i in range(_FIELDS):
                r[i] = 0
            _s.t_rec = _s.t_hdr
            _s.t_out = 0
            _s.depth = 0  # a validate that raised left it set
            r[_READ] = _D(t0, _s.t_hdr)
            r[_PARSE] = _D(t1, t0)
            _s.a_last = _s.a_hdr
            _s.rec = r
            _s.action = v[2]
            if v[2] == "BenchStages":
                _s.rec = None
                _report()
        return v
    _rpc.decode = decode


def _wrap_validate():
    # times only the outermost call (validate recurses into nested objects). No try/finally in the wrappers: it
    # would make their frames large enough to come from the heap, and that counts toward the next collection
    # (docs/decisions.md, Call latency); a CALL that raises is answered with a CALLERROR and not kept anyway.
    orig = _rpc.validate

    def validate(payload, spec, extra_ok=False):
        if _s.depth:
            return orig(payload, spec, extra_ok)
        _s.depth = 1
        t0 = _T()
        orig(payload, spec, extra_ok)
        _add(_VALIDATE, t0)
        _s.depth = 0
    _rpc.validate = validate


def _wrap_persist():
    orig = _store.write_json

    def write_json(path, obj):
        t0 = _T()
        orig(path, obj)
        _add(_PERSIST, t0)
    _store.write_json = write_json


def _wrap_handle():
    orig = _session.Session.handle

    def handle(self, action, spec, fn):
        def timed(p):
            r = _s.rec
            if r is None:
                return fn(p)
            before = r[_VALIDATE] + r[_PERSIST]
            t0 = _T()
            v = fn(p)
            r[_HANDLE] += _D(_T(), t0) - (r[_VALIDATE] + r[_PERSIST] - before)
            return v
        orig(self, action, spec, timed)
    _session.Session.handle = handle


def _wrap_encode():
    orig = _jb.JsonBuf.dump

    def dump(self, obj):
        t0 = _T()
        v = orig(self, obj)
        _add(_ENCODE, t0)
        return v
    _jb.JsonBuf.dump = dump


def _wrap_send():
    orig = _ws.WS.send

    def send(self, msg, text=False):
        if _s.rec is not None and not _s.sending and not _s.t_out:
            n = len(msg)
            _s.left = n + (6 if n < 126 else 8 if n < 65536 else 14)  # the frame's bytes: masked header + payload
            _s.sending = True  # the answer: the socket writes of its bytes are its own
            _s.t_send = _T()
        return orig(self, msg, text)
    _ws.WS.send = send
    stream = _asyncio.StreamWriter
    write = stream.write

    def sock_write(self, buf):
        v = write(self, buf)
        if _s.sending:
            _s.t_out = _T()
            _s.left -= len(buf)
            if _s.left <= 0:
                _s.sending = False
                r = _s.rec
                if r is not None:
                    _mark(r)
        return v
    stream.write = sock_write


def _sort(b, lo, n):
    # insertion sort of b[lo:lo + n] in place: no list of the samples on the heap
    for i in range(lo + 1, lo + n):
        v = b[i]
        j = i - 1
        while j >= lo and b[j] > v:
            b[j + 1] = b[j]
            j -= 1
        b[j + 1] = v


def _report():
    n = _s.n
    if n:
        b = _s.buf
        cells = []
        # alloc: the calls without a collection, moved to the front of its row
        gcs = 0
        k = 0
        for i in range(n):
            if b[_GCS * _N + i]:
                gcs += 1
            else:
                b[_ALLOC * _N + k] = b[_ALLOC * _N + i]
                k += 1
        for i in range(_GCS):
            m = k if i == _ALLOC else n
            _sort(b, i * _N, m)
            cells.append("%s=%d" % (NAMES[i], b[i * _N + m // 2] if m else 0))
        t0 = _T()
        gc.collect()
        t1 = _T()
        print("BENCHSTAGE action=%s n=%d %s gcs=%d total_p99=%d gc_us=%d live=%d" % (
            _s.kept, n, " ".join(cells), gcs, b[_TOTAL * _N + min(n - 1, n * 99 // 100)], _D(t1, t0),
            gc.mem_alloc()))
    print("BENCHSTAGE end")
    _s.kept = None
    _s.n = 0


def install(threshold=0):
    """threshold: a gc.threshold() to run with instead of the app's (0: the app's), for tools/latstages.py's
    --gc-threshold experiment."""
    _s.buf = array("H", bytearray(2 * _FIELDS * _N))
    _wrap_parse_header()
    _wrap_decode(threshold)
    _wrap_validate()
    _wrap_persist()
    _wrap_handle()
    _wrap_encode()
    _wrap_send()
