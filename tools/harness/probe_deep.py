# Bench-only step probe for tools/harness/probe_mcu.py (its flag 1), loaded only when asked for, so the plain
# heap probe keeps its small footprint. Everything is wrapped at run time: the firmware carries no hook for it.
# exec'd inside probe_mcu.py's globals (time, gc, asyncio are there). What it does:
# - every asyncio task's coroutine is wrapped, so each step (one coro.send between two yields) is timed and named
#   by its task (Class.method that app._supervised runs, or the coroutine's own name) and, for the OCPP reader,
#   the action served; flash writes (store.write_json, write_atomic, Journal.append/pop) inside a step are timed;
# - a probe window whose live heap went down held a garbage collection: its lag is a GC pause, not a stall, and
#   its steps are counted apart;
# - once a second it times one gc.collect() of the heap as it is (the length of a collection) and prints
#   BENCHSTEPS (the longest steps outside GC windows), BENCHTASKS (per task and action) and BENCHGC.
_TOP = 12
_ticks = time.ticks_us
_diff = time.ticks_diff
# step attribution: per task name, per label: [max us, count, sum us, flash-write us in the max step, steps in
# a GC window, the longest of those, lazy-import us and log-line us in the max step]; steps of at least _PENDING_US wait in _pending until the probe knows
# whether their window held a collection
_PENDING_US = 150
_pending = []
_stats = {}
_top = []  # [(us, task, label, store_us, import_us, log_us)] the longest steps outside GC windows, at most _TOP
_cur = [None, 0, 0, 0]  # label of the step running; flash-write, lazy-import and log-line us in it
_served = [False]  # the OCPP action's handling ended in this step: the reader's next step has no label
_gcw = [0, 0, 0]  # probe windows with a collection, their longest lag, windows without
_pause = []  # gc.collect() durations (us) timed by the probe
_names = [None]  # the name _supervised hands to the create_task that follows


class _Timed:
    """A task's coroutine, timed step by step. asyncio's loop only calls send() and throw() on it."""

    def __init__(self, coro, name):
        self.coro = coro
        self.name = name
        self.label = None  # the action being served, kept across the handler's own yields

    def send(self, v):
        _cur[0] = self.label
        _cur[1] = _cur[2] = _cur[3] = 0
        t0 = _ticks()
        try:
            return self.coro.send(v)
        finally:
            self._end(t0)

    def throw(self, *a):
        _cur[0] = self.label
        _cur[1] = _cur[2] = _cur[3] = 0
        t0 = _ticks()
        try:
            return self.coro.throw(*a)
        finally:
            self._end(t0)

    def _end(self, t0):
        _step(self.name, _diff(_ticks(), t0))
        self.label = None if _served[0] else _cur[0]
        _served[0] = False

    def close(self):
        return self.coro.close()

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)


def _step(name, us):
    if us >= _PENDING_US:
        if len(_pending) < 64:
            _pending.append((us, name, _cur[0] or "-", _cur[1], _cur[2], _cur[3]))
        return
    _count(us, name, _cur[0] or "-", _cur[1], _cur[2], _cur[3], 0)


def _count(us, name, label, store_us, import_us, log_us, in_gc):
    per = _stats.get(name)
    if per is None:
        per = _stats[name] = {}
    s = per.get(label)
    if s is None:
        s = per[label] = [0, 0, 0, 0, 0, 0, 0, 0]
    s[1] += 1
    s[2] += us
    if in_gc:
        s[4] += 1
        if us > s[5]:
            s[5] = us
        return
    if us > s[0]:
        s[0] = us
        s[3] = store_us
        s[6] = import_us
        s[7] = log_us
    if len(_top) < _TOP or us > _top[-1][0]:
        _top.append((us, name, label, store_us, import_us, log_us))
        _top.sort(key=lambda r: -r[0])
        del _top[_TOP:]


def _settle(in_gc):
    # the steps of the window that just ended, now that the probe knows whether a collection ran in it
    for r in _pending:
        _count(r[0], r[1], r[2], r[3], r[4], r[5], in_gc)
    _pending.clear()


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

    serve = session.Session._serve

    async def _serve(self, uid, action, payload):
        _cur[0] = action
        try:
            return await serve(self, uid, action, payload)
        finally:
            _served[0] = True

    session.Session._serve = _serve

    def timed(fn, slot=1):
        def w(*a, **k):
            t0 = _ticks()
            try:
                return fn(*a, **k)
            finally:
                _cur[slot] += _diff(_ticks(), t0)
        return w

    # the optional profiles' code, imported on first use (App's loaders, registered before App exists)
    for name in ("load_smart", "load_reservations", "_load_trigger", "_load_localauth", "load_fwmgmt"):
        setattr(app.App, name, timed(getattr(app.App, name), 2))

    # The flash writes: store's module functions call one another through the module's globals, so the
    # outermost ones are wrapped (no double count: _write runs inside write_json).
    store.write_json = timed(store.write_json)
    store.write_atomic = timed(store.write_atomic)
    store.Journal.append = timed(store.Journal.append)
    store.Journal.pop = timed(store.Journal.pop)
    # log lines: print() to the console (a UART at 115200 baud on a board, a pipe to the sim here)
    log.log = timed(log.log, 3)


def _report():
    print("BENCHSTEPS " + ";".join("%d %s %s %d %d %d" % r for r in _top))
    print("BENCHTASKS " + ";".join("%s %s %d %d %d %d %d %d %d %d" % (t, lb, v[0], v[1], v[2], v[3], v[4], v[5], v[6],
                                                                    v[7])
                                   for t, per in _stats.items() for lb, v in per.items()))
    p = _pause
    print("BENCHGC windows=%d gc_windows=%d gc_lag_us=%d pauses=%d pause_med_us=%d pause_max_us=%d" % (
        _gcw[2], _gcw[0], _gcw[1], len(p), p[len(p) // 2] if p else 0, p[-1] if p else 0))


_last = [time.ticks_ms()]


def _window_gc(live, d):
    # The live heap went down while the probe slept: a collection ran in that window. Its lag is a GC pause
    # (with whatever ran next to it), and its steps are counted apart.
    in_gc = gc.mem_alloc() < live
    if in_gc:
        _gcw[0] += 1
        if d > _gcw[1]:
            _gcw[1] = d
    else:
        _gcw[2] += 1
    _settle(in_gc)
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
    _pause.sort()
    _report()


_install_steps()
_window = _window_gc
_tick = _tick_gc
