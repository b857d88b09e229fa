# Per-stage timing of the CALLs the Central System sends, taken on the MicroPython unix port next to the firmware
# (tools/harness/probe_mcu.py imports this when BENCH_STAGES is set). It wraps the firmware's functions at run
# time, so the firmware holds no timing code: every stage is the time.ticks_us span of one function of the
# receive -> answer path, and a CALL's record is
#   read      frame header in -> WS.recv() returns the text (payload read, UTF-8 check)
#   parse     rpc.decode (json.loads and the OCPP-J frame checks)
#   validate  rpc.validate, every top-level call (the handler's nested ones included)
#   handle    the handler, less the validate and persist spans inside it
#   persist   firmware.store writes (state files on the flash)
#   encode    JsonBuf.dump of the answer frame
#   write     WS.send of the answer up to its last socket write (framing, mask, write; not the drain after it)
#   other     the rest of header in -> answer written (dispatch glue, task switches)
#   total     header in -> the answer's last socket write: the charger's share of the round trip
#   alloc     bytes allocated in between (what a collection freed inside a stage is missed: at least this)
#   gcs       collections that ran in between (app.py collects after every few KB allocated; a drop of the heap in
#             use by more than _GC_DROP bytes at a stage boundary), summed over the calls, not a median
# and each report also times one gc.collect() of the heap as it is then (gc_us).
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
    t_hdr = 0      # the last frame header's arrival
    a_hdr = 0      # gc.mem_alloc() then
    a_last = 0     # gc.mem_alloc() at the last stage boundary
    t_out = 0      # the last socket write of the answer being sent
    sending = False
    t_text = 0     # when recv() returned its text
    rec = None     # the record of the CALL being served (scratch, reused)
    depth = 0      # nesting of validate / persist wrappers
    action = None  # of the CALL being served
    kept = None    # the action the buffer holds
    n = 0          # records in the buffer
    scratch = [0] * _FIELDS
    buf = None     # record i, field f at [f * _N + i], us (bytes for alloc), clipped to 65535


_s = _St()


def _mark(r):
    # at a stage boundary: a heap use below the last one means a collection ran in between
    a = gc.mem_alloc()
    if a < _s.a_last - _GC_DROP:
        r[_GCS] += 1
    elif a > _s.a_last:
        r[_ALLOC] += a - _s.a_last
    _s.a_last = a


def _add(i, t0):
    r = _s.rec
    if r is not None:
        r[i] += _D(_T(), t0)
        _mark(r)


def _wrap_read_header():
    orig = _wf.read_header

    async def read_header(stream, hdr):
        v = await orig(stream, hdr)
        _s.t_hdr = _T()
        _s.a_hdr = gc.mem_alloc()
        return v
    _wf.read_header = read_header
    _ws.read_header = read_header


def _wrap_recv():
    orig = _ws.WS.recv

    async def recv(self):
        v = await orig(self)
        _s.t_text = _T()
        return v
    _ws.WS.recv = recv


def _wrap_decode():
    orig = _rpc.decode

    def decode(text):
        t0 = _T()
        v = orig(text)
        t1 = _T()
        if v is not None and v[0] == _rpc.CALL:
            r = _s.scratch
            for i in range(_FIELDS):
                r[i] = 0
            r[_READ] = _D(_s.t_text, _s.t_hdr)
            r[_PARSE] = _D(t1, t0)
            _s.a_last = _s.a_hdr
            _mark(r)
            _s.rec = r
            _s.action = v[2]
        return v
    _rpc.decode = decode


def _nested(i, orig):
    # a wrapper that times only the outermost call (validate recurses into nested objects)
    def fn(*a, **kw):
        if _s.depth:
            return orig(*a, **kw)
        _s.depth = 1
        t0 = _T()
        try:
            return orig(*a, **kw)
        finally:
            _add(i, t0)
            _s.depth = 0
    return fn


def _wrap_handle():
    orig = _session.Session.handle

    def handle(self, action, spec, fn):
        def timed(p):
            r = _s.rec
            before = (r[_VALIDATE] + r[_PERSIST]) if r is not None else 0
            t0 = _T()
            try:
                return fn(p)
            finally:
                if r is not None:
                    r[_HANDLE] += _D(_T(), t0) - (r[_VALIDATE] + r[_PERSIST] - before)
                    _mark(r)
        orig(self, action, spec, timed)
    _session.Session.handle = handle


def _wrap_dump():
    orig = _jb.JsonBuf.dump

    def dump(self, obj):
        t0 = _T()
        v = orig(self, obj)
        _add(_ENCODE, t0)
        return v
    _jb.JsonBuf.dump = dump


def _wrap_send():
    orig = _ws.WS.send

    async def send(self, msg, text=False):
        r = _s.rec
        if r is None:
            return await orig(self, msg, text)
        t0 = _T()
        _s.sending = True
        try:
            await orig(self, msg, text)
        finally:
            _s.sending = False
        r[_WRITE] += _D(_s.t_out, t0)
    _ws.WS.send = send
    stream = _asyncio.StreamWriter
    write = stream.write

    def sock_write(self, buf):
        v = write(self, buf)
        if _s.sending:
            _s.t_out = _T()
            r = _s.rec
            if r is not None:
                _mark(r)
        return v
    stream.write = sock_write


def _wrap_on_frame():
    orig = _session.Session._on_frame

    async def on_frame(self, ws, text):
        await orig(self, ws, text)
        r = _s.rec
        _s.rec = None
        if r is None:
            return
        r[_TOTAL] = _D(_s.t_out, _s.t_hdr)
        other = r[_TOTAL]
        for i in range(_OTHER):
            other -= r[i]
        r[_OTHER] = other
        action = _s.action
        if action == "BenchStages":
            _report()
            return
        if _s.kept is None:
            _s.kept = action
        if action != _s.kept or _s.n >= _N:
            return
        b = _s.buf
        for i in range(_FIELDS):
            v = r[i]
            b[i * _N + _s.n] = 0 if v < 0 else v if v < 65535 else 65535
        _s.n += 1
    _session.Session._on_frame = on_frame


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
        for i in range(_GCS):
            _sort(b, i * _N, n)
            cells.append("%s=%d" % (NAMES[i], b[i * _N + n // 2]))
        gcs = 0
        for i in range(n):
            gcs += b[_GCS * _N + i]
        t0 = _T()
        gc.collect()
        t1 = _T()
        print("BENCHSTAGE action=%s n=%d %s gcs=%d total_p99=%d gc_us=%d live=%d" % (
            _s.kept, n, " ".join(cells), gcs, b[_TOTAL * _N + min(n - 1, n * 99 // 100)], _D(t1, t0),
            gc.mem_alloc()))
    print("BENCHSTAGE end")
    _s.kept = None
    _s.n = 0


def install():
    _s.buf = array("H", bytearray(2 * _FIELDS * _N))
    _wrap_read_header()
    _wrap_recv()
    _wrap_decode()
    _rpc.validate = _nested(_VALIDATE, _rpc.validate)
    _store.write_json = _nested(_PERSIST, _store.write_json)
    _store.write_atomic = _nested(_PERSIST, _store.write_atomic)
    _wrap_handle()
    _wrap_dump()
    _wrap_send()
    _wrap_on_frame()
