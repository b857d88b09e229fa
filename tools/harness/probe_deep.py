# Bench-only step probe for tools/harness/probe_mcu.py (its flag 1), loaded only when asked for, so the plain
# heap probe keeps its small footprint. Everything is wrapped at run time: the firmware carries no hook for it.
# exec'd inside probe_mcu.py's globals (time, gc, asyncio are there). What it does:
# - every asyncio task's coroutine is wrapped, so each step (one coro.send between two yields) is timed and named
#   by its task (Class.method that app._supervised runs, or the coroutine's own name) and, for the OCPP reader,
#   the action served; flash writes (store.write_json, write_atomic, Journal.append/pop) inside a step are timed;
# - the heap's use is read before and after each step: a step in which it went down by 1 KB or more, or in which
#   the bytes allocated since the last collection reached gc.threshold(), held a garbage collection (an
#   estimate, see _collected): its length counts less one timed collection (the GC pause is not a stall), and a
#   probe window with one in it counts apart;
# - the time the host's scheduler kept the process waiting for a CPU during a step (/proc/self/schedstat's
#   run-queue wait) is taken out of it too: a board's MCU runs the loop alone, and on a busy 2-core host a step
#   can wait there for milliseconds;
# - once a second it times one gc.collect() of the heap as it is (the length of a collection) and prints
#   BENCHSTEPS (the longest steps without a collection), BENCHTASKS (per task and action) and BENCHGC.
_TOP = 12
_ticks = time.ticks_us
_diff = time.ticks_diff
# step attribution: per task name, per label: [max us (less a collection's pause when one ran in the step, and
# less the host's preemption), count, sum us, flash-write us in the max step, steps with a collection in them, the
# longest of those as they were, lazy-import us, log-line us and preempted us in the max step]
_stats = {}
_top = []  # [(us, task, label, store_us, import_us, log_us, in_gc, preempted_us)] the longest steps (less a
# collection's pause when one ran in them, and less the host's preemption), _TOP of them
_cur = [None, 0, 0, 0]  # label of the step running; flash-write, lazy-import and log-line us in it
_served = [False]  # the OCPP action's handling ended in this step: the reader's next step has no label
_gcw = [0, 0, 0]  # probe windows with a collection, their longest lag, windows without
_alloc = gc.mem_alloc  # 20 us a call on the host: twice a step, a few hundred steps a second
_FREED = 1024
_t0 = time.ticks_ms()
_acc = [gc.mem_alloc(), 0, 0, 0]  # heap use at the last look, bytes allocated since the last collection,
# collections seen, collections seen by the last probe window
_pause = []  # gc.collect() durations (us) timed by the probe
_names = [None]  # the name _supervised hands to the create_task that follows
try:
    _sched = open("/proc/self/schedstat", "rb")  # "<ns on a CPU> <ns waiting for one> <slices>"
except OSError:
    _sched = None
_sbuf = bytearray(64)


def _waited_us():
    # The process's run-queue wait so far, read into a buffer taken once: allocates nothing (the steps' heap
    # figures stay the firmware's), ~6 us on the host
    if _sched is None:
        return 0
    _sched.seek(0)
    n = _sched.readinto(_sbuf)
    b = _sbuf
    i = 0
    while i < n and b[i] != 32:
        i += 1
    v = 0
    i += 1
    while i < n and 48 <= b[i] <= 57:
        v = v * 10 + b[i] - 48
        i += 1
    return v // 1000


class _Timed:
    """A task's coroutine, timed step by step. asyncio's loop only calls send() and throw() on it."""

    def __init__(self, coro, name):
        self.coro = coro
        self.name = name
        self.label = None  # the action being served, kept across the handler's own yields

    def send(self, v):
        a0 = _begin(self.label)
        w0 = _waited_us()
        t0 = _ticks()
        try:
            return self.coro.send(v)
        finally:
            self._end(t0, a0, w0)

    def throw(self, *a):
        a0 = _begin(self.label)
        w0 = _waited_us()
        t0 = _ticks()
        try:
            return self.coro.throw(*a)
        finally:
            self._end(t0, a0, w0)

    def _end(self, t0, a0, w0):
        us = _diff(_ticks(), t0)
        pre = min(_waited_us() - w0, us)
        a1 = _alloc()
        _count(us - pre, self.name, _cur[0] or "-", _cur[1], _cur[2], _cur[3], _collected(a1 - a0), pre)
        _acc[0] = a1
        self.label = None if _served[0] else _cur[0]
        _served[0] = False

    def close(self):
        return self.coro.close()

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)


def _begin(label):
    _cur[0] = label
    _cur[1] = _cur[2] = _cur[3] = 0
    a0 = _alloc()
    _collected(a0 - _acc[0])  # what ran between two steps (the loop, the probe) allocated too
    return a0


def _collected(d):
    # Did a garbage collection run while the heap's use changed by d bytes? A collection frees the garbage of
    # the few KB allocated since the last one, so the use drops by _FREED or more; MicroPython's own frees (a
    # buffer given back when it grows or shrinks) are smaller and are not taken for one. A step that allocated
    # more after the collection than it freed hides it; the bytes allocated since the last one reaching
    # gc.threshold() (where the firmware's collection runs) catch most of those.
    th = gc.threshold()
    if d <= -_FREED or (th > 0 and _acc[1] + d >= th):
        _acc[1] = 0
        _acc[2] += 1
        return 1
    if d > 0:
        _acc[1] += d
    return 0


def _count(us, name, label, store_us, import_us, log_us, in_gc, pre):
    per = _stats.get(name)
    if per is None:
        per = _stats[name] = {}
    s = per.get(label)
    if s is None:
        s = per[label] = [0, 0, 0, 0, 0, 0, 0, 0, 0]
    s[1] += 1
    s[2] += us
    if in_gc:
        # the step's own work: less one collection as long as the probe's timed ones take (a step that
        # allocated many KB may have held two: then it still counts one too many)
        s[4] += 1
        if us > s[5]:
            s[5] = us
        us -= _pause[len(_pause) // 2] if _pause else 0
    if us > s[0]:
        s[0] = us
        s[3] = store_us
        s[6] = import_us
        s[7] = log_us
        s[8] = pre
    if len(_top) < _TOP or us > _top[-1][0]:
        _top.append((us, name, label, store_us, import_us, log_us, in_gc, pre))
        _top.sort(key=lambda r: -r[0])
        del _top[_TOP:]


def _install_steps():
    orig_create = asyncio.create_task
    import asyncio.core as core

    def create_task(coro):
        name = _names[0]
        _names[0] = None
        if name is None:
            r = repr(coro)  # <generator object 'NAME' at 0x...>
            i = r.find("'")
            name = r[i + 1:r.find("'", i + 1)] if i >= 0 else r
        return orig_create(_Timed(coro, name))

    asyncio.create_task = create_task
    core.create_task = create_task

    from firmware import app, log, store
    from firmware.ocpp import session

    sup = app._supervised

    def supervised(fn):
        r = repr(fn)  # <bound_method ID <Evse object at ID>.<function run at ID>>: "Evse.run"
        i = r.find("<", 1)
        _names[0] = r[i + 1:r.find(" ", i)] + "." + fn.__name__ if i > 0 else fn.__name__
        return sup(fn)

    app._supervised = supervised

    serve = getattr(session.Session, "_serve", None)  # (uid, action, payload, big): the action names the step

    async def _serve(self, uid, action, payload, big=False):
        _cur[0] = action
        try:
            return await serve(self, uid, action, payload, big)
        finally:
            _served[0] = True

    if serve is not None:
        session.Session._serve = _serve

    depth = [0, 0, 0, 0]

    def timed(fn, slot=1):
        def w(*a, **k):
            depth[slot] += 1
            t0 = _ticks()
            try:
                return fn(*a, **k)
            finally:
                depth[slot] -= 1
                if not depth[slot]:  # the outermost call counts: wrapped functions call one another
                    _cur[slot] += _diff(_ticks(), t0)
        return w

    # the optional profiles' code, imported on first use (App's loaders, registered before App exists)
    for name in ("load_smart", "_smart_ahead", "load_reservations", "_load_trigger", "_load_localauth",
                 "load_fwmgmt"):
        if hasattr(app.App, name):
            setattr(app.App, name, timed(getattr(app.App, name), 2))

    # The flash writes: store's functions and its classes' methods that write (by name: write*, append*, pop,
    # compact*, save*, rewrite*), whatever shape the store has; only the outermost of nested calls counts.
    def writes(name):
        return name.startswith(("write", "append", "_write", "_rewrite", "compact", "save", "_append")) or name == "pop"

    for name in dir(store):
        obj = getattr(store, name)
        if type(obj) is type:
            for m in dir(obj):
                if writes(m) and callable(getattr(obj, m)):
                    setattr(obj, m, timed(getattr(obj, m)))
        elif writes(name) and callable(obj):
            setattr(store, name, timed(obj))
    # log lines: print() to the console (a UART at 115200 baud on a board, a pipe to the sim here)
    log.log = timed(log.log, 3)


def _report():
    print("BENCHSTEPS " + ";".join("%d %s %s %d %d %d %d %d" % r for r in _top))
    print("BENCHTASKS " + ";".join("%s %s %d %d %d %d %d %d %d %d %d" % (t, lb, v[0], v[1], v[2], v[3], v[4], v[5],
                                                                       v[6], v[7], v[8])
                                   for t, per in _stats.items() for lb, v in per.items()))
    p = _pause
    print("BENCHGC windows=%d gc_windows=%d gc_lag_us=%d pauses=%d pause_med_us=%d pause_max_us=%d seen=%d s=%d" % (
        _gcw[2], _gcw[0], _gcw[1], len(p), p[len(p) // 2] if p else 0, p[-1] if p else 0, _acc[2],
        _diff(time.ticks_ms(), _t0)))


_last = [time.ticks_ms()]


def _window_gc(live, d):
    # A window in which a step or the loop between steps collected: its lag is a GC pause (with whatever ran
    # next to it), not a stall.
    _collected(_alloc() - _acc[0])
    _acc[0] = _alloc()
    in_gc = _acc[2] != _acc[3]
    _acc[3] = _acc[2]
    if in_gc:
        _gcw[0] += 1
        if d > _gcw[1]:
            _gcw[1] = d
    else:
        _gcw[2] += 1
    return in_gc


def _tick_gc():
    # Once a second: how long one collection of the heap as it is takes (the pause an automatic one makes),
    # then the report.
    now = time.ticks_ms()
    if time.ticks_diff(now, _last[0]) < 1000:
        return
    _last[0] = now
    t = _ticks()
    gc.collect()
    _pause.append(_diff(_ticks(), t))
    _acc[0] = _alloc()  # the probe's own collection: not the firmware's
    _acc[1] = 0
    _pause.sort()
    _report()


_install_steps()
_window = _window_gc
_tick = _tick_gc
