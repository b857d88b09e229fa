# firmware.loadlimit: the local current limit from an external input, as table cases. Currents in 0.1 A, power
# in W, times in ms (ticks the caller passes in).
import gc
import time
import tinytest
from firmware import loadlimit
from firmware.loadlimit import LoadLimit, FIXED, LOAD, SOLAR, PAUSE_DA

S = 1000
P = PAUSE_DA

# (name, fuse_da, phases, grid L1-L3, own L1-L3, headroom)
LOAD_DA = (
    ("quiet house", 250, 3, (50, 40, 30), (0, 0, 0), 200),
    ("the busiest phase decides", 250, 3, (100, 230, 50), (0, 0, 0), 20),
    ("own draw is part of the grid current, not counted twice", 250, 3, (210, 200, 190), (160, 160, 160), 200),
    ("one-phase charger looks at L1 only", 250, 1, (100, 240, 250), (0, 0, 0), 150),
    ("one-phase charger, own draw on L1", 250, 1, (230, 0, 0), (160, 0, 0), 180),
    ("export on every phase adds headroom", 250, 3, (-80, -80, -80), (0, 0, 0), 330),
    ("export on L1, import on L2", 250, 3, (-80, 200, 0), (0, 0, 0), 50),
    ("PV covers the EV: grid 0 while charging 16 A", 250, 3, (0, 0, 0), (160, 160, 160), 410),
    ("house at the fuse exactly", 250, 3, (250, 250, 250), (0, 0, 0), 0),
    ("house over the fuse", 250, 3, (300, 200, 200), (0, 0, 0), -50),
    ("over the fuse only because of us", 250, 3, (270, 270, 270), (160, 160, 160), 140),
    ("35 A fuse", 350, 3, (120, 90, 60), (0, 0, 0), 230),
)

# (watts, volts, phases, 0.1 A per phase): rounded down, never more
WATTS = (
    (4140, 230, 3, 60),
    (4139, 230, 3, 59),
    (1380, 230, 1, 60),
    (1379, 230, 1, 59),
    (11040, 230, 3, 160),
    (7360, 230, 1, 320),
    (22080, 230, 3, 320),
    (0, 230, 3, 0),
    (-500, 230, 1, -22),
    (4000, 240, 3, 55),
)

# (grid W import +, own W, surplus W)
SURPLUS = ((-2000, 0, 2000), (500, 4000, 3500), (1000, 0, -1000), (0, 7000, 7000), (-1500, 1500, 3000))


def test_load_da_table():
    bad = []
    for name, fuse, phases, g, o, want in LOAD_DA:
        got = loadlimit.load_da(fuse, phases, g[0], g[1], g[2], o[0], o[1], o[2])
        if got != want:
            bad.append("%s: got %r, want %r" % (name, got, want))
    assert not bad, "\n".join(bad)


def test_watts_and_surplus_tables():
    for w, v, ph, want in WATTS:
        assert loadlimit.watts_to_da(w, v, ph) == want, (w, v, ph, loadlimit.watts_to_da(w, v, ph))
    for grid, own, want in SURPLUS:
        assert loadlimit.surplus_w(grid, own) == want, (grid, own)


_KW = {"stale_ms": 600 * S, "start_delay_ms": 60 * S, "stop_delay_ms": 300 * S}
_WRAP = time.ticks_add(0, -1) + 1  # the ticks period: 2**30 on an ESP32, larger on a 64-bit unix port

# (name, mode, settings, steps): a step is (now_ms, input or None, limit_da asked at now_ms after the input).
# Inputs: fixed 0.1 A; load (grid L1-L3, own L1-L3) in 0.1 A; solar surplus W.
SCENARIOS = (
    ("fixed: fallback before any input", FIXED, {"fallback_da": 100}, [(0, None, 100), (5 * S, None, 100)]),
    ("fixed: fallback 0 is a pause, not a stop", FIXED, {"fallback_da": 0}, [(0, None, P)]),
    ("fixed: the value", FIXED, {"fallback_da": 60}, [(0, 160, 160), (1, 320, 320), (2, 60, 60)]),
    ("fixed: below 6 A and 0 are pauses", FIXED, {"fallback_da": 60}, [(0, 59, P), (1, 0, P), (2, 1, P)]),
    ("fixed: stale exactly at stale_ms", FIXED, {"fallback_da": 80, "stale_ms": 10 * S},
     [(0, 160, 160), (10 * S - 1, None, 160), (10 * S, None, 80), (12 * S, 200, 200), (21 * S, None, 200),
      (22 * S, None, 80)]),
    ("fixed: ticks wrap around", FIXED, {"fallback_da": 80, "stale_ms": 10 * S},
     [(_WRAP - 3 * S, 160, 160), (5 * S, None, 160), (7 * S, None, 80)]),
    ("load: follows the headroom", LOAD, {"fallback_da": 60, "fuse_da": 250},
     [(0, (100, 100, 100, 0, 0, 0), 150), (S, (200, 220, 180, 60, 60, 60), 90),
      (2 * S, (150, 150, 150, 160, 160, 160), 260)]),
    ("load: overload pauses", LOAD, {"fallback_da": 60, "fuse_da": 250},
     [(0, (300, 250, 250, 0, 0, 0), P), (S, (200, 200, 200, 0, 0, 0), P), (2 * S, (190, 190, 190, 0, 0, 0), 60)]),
    ("load: export", LOAD, {"fallback_da": 60, "fuse_da": 250}, [(0, (-50, -50, -50, 0, 0, 0), 300)]),
    ("load: one phase", LOAD, {"fallback_da": 60, "fuse_da": 160, "phases": 1},
     [(0, (80, 160, 160, 0, 0, 0), 80), (S, (110, -300, 500, 0, 0, 0), P)]),
    ("load: stale input falls back", LOAD, {"fallback_da": 60, "fuse_da": 250, "stale_ms": 30 * S},
     [(0, None, 60), (S, (50, 50, 50, 0, 0, 0), 200), (30 * S, None, 200), (31 * S, None, 60),
      (40 * S, (50, 50, 50, 0, 0, 0), 200)]),
    ("solar: starts once the surplus held 60 s", SOLAR, dict(_KW, fallback_da=0),
     [(0, 5000, P), (30 * S, 5000, P), (60 * S - 1, None, P), (60 * S, None, 72)]),
    ("solar: a dip restarts the start delay", SOLAR, dict(_KW, fallback_da=0),
     [(0, 5000, P), (30 * S, 3000, P), (40 * S, 5000, P), (60 * S, None, P), (99 * S, None, P),
      (100 * S, None, 72)]),
    ("solar: follows the surplus", SOLAR, dict(_KW, fallback_da=0, start_delay_ms=0),
     [(0, 6000, 86), (S, 11040, 160), (2 * S, 4140, 60), (3 * S, 22080, 320)]),
    ("solar: holds 6 A through the stop delay, then stops", SOLAR, dict(_KW, fallback_da=0),
     [(0, 5000, P), (60 * S, None, 72), (100 * S, 2000, 60), (200 * S, 1000, 60), (400 * S - 1, None, 60), (400 * S, None, P),
      (410 * S, 5000, P), (469 * S, 5000, P), (470 * S, None, 72)]),
    ("solar: back above 6 A cancels the stop", SOLAR, dict(_KW, fallback_da=0, start_delay_ms=0),
     [(0, 5000, 72), (100 * S, 2000, 60), (200 * S, 5000, 72), (350 * S, 2000, 60), (600 * S, None, 60),
      (649 * S, None, 60), (650 * S, None, P)]),
    ("solar: hysteresis, start at 8 A, stop below 6 A", SOLAR,
     dict(_KW, fallback_da=0, start_da=80, start_delay_ms=10 * S, stop_delay_ms=10 * S),
     [(0, 5000, P), (60 * S, 5000, P), (70 * S, 5600, P), (80 * S, None, 81), (90 * S, 5000, 72),
      (200 * S, 4140, 60), (201 * S, 4000, 60), (211 * S, None, P), (220 * S, 5000, P), (300 * S, None, P)]),
    ("solar: exactly 6 A starts, one watt less does not (3 phases)", SOLAR, dict(_KW, fallback_da=0),
     [(0, 4139, P), (100 * S, None, P), (101 * S, 4140, P), (161 * S, None, 60)]),
    ("solar: one phase needs 1380 W", SOLAR, dict(_KW, fallback_da=0, phases=1, start_delay_ms=0),
     [(0, 1379, P), (S, 1380, 60), (2 * S, 3680, 160)]),
    ("solar: importing is no surplus", SOLAR, dict(_KW, fallback_da=0, start_delay_ms=0),
     [(0, -3000, P), (500 * S, -10, P)]),
    ("solar: stale input falls back, charging resumes when it returns", SOLAR,
     dict(_KW, fallback_da=60, start_delay_ms=0, stale_ms=120 * S),
     [(0, 5000, 72), (119 * S, None, 72), (120 * S, None, 60), (300 * S, None, 60), (310 * S, 6000, 86)]),
    ("solar: a stale gap restarts a pending start", SOLAR, dict(_KW, fallback_da=0, stale_ms=120 * S),
     [(0, 5000, P), (130 * S, 5000, P), (160 * S, None, P), (189 * S, None, P), (190 * S, None, 72)]),
    ("solar: a stale gap restarts a pending stop", SOLAR,
     dict(_KW, fallback_da=0, start_delay_ms=0, stale_ms=120 * S),
     [(0, 5000, 72), (10 * S, 1000, 60), (200 * S, None, P), (250 * S, 1000, 60), (300 * S, 1000, 60),
      (360 * S, 1000, 60), (420 * S, 1000, 60), (480 * S, 1000, 60), (540 * S, 1000, 60), (549 * S, None, 60),
      (550 * S, None, P)]),
    ("solar: fallback above 6 A while nothing was ever received", SOLAR, dict(_KW, fallback_da=100),
     [(0, None, 100), (S, 0, P)]),
)


def _feed(ll, mode, now, value):
    if mode == FIXED:
        ll.fixed(now, value)
    elif mode == LOAD:
        ll.grid(now, *value)
    else:
        ll.surplus(now, value)


def test_scenarios():
    assert len(SCENARIOS) >= 20
    bad = []
    for name, mode, kw, steps in SCENARIOS:
        ll = LoadLimit(mode, **kw)
        for now, value, want in steps:
            if value is not None:
                _feed(ll, mode, now, value)
            got = ll.limit_da(now)
            if got != want:
                bad.append("%s: at %d ms got %r, want %r" % (name, now, got, want))
                break
    assert not bad, "\n".join(bad)


def test_limit_is_never_a_hard_stop():
    # The arbiter opens the contactor at once on a 0 limit; a load manager must only pause.
    for mode, value in ((FIXED, 0), (LOAD, (400, 400, 400, 0, 0, 0)), (SOLAR, -5000)):
        ll = LoadLimit(mode, 0, start_delay_ms=0)
        assert ll.limit_da(0) == PAUSE_DA
        _feed(ll, mode, 1, value)
        assert ll.limit_da(1) == PAUSE_DA


def test_bad_settings_and_wrong_input_are_refused():
    for kw in ({"mode": 7}, {"phases": 2}, {"start_da": 50}, {"stale_ms": 0}, {"fallback_da": -1},
               {"fuse_da": 0}, {"volts": 0}):
        args = {"mode": SOLAR, "fallback_da": 0}
        args.update(kw)
        try:
            LoadLimit(**args)
        except ValueError as e:
            assert str(e), kw
        else:
            raise AssertionError("accepted %r" % (kw,))
    ll = LoadLimit(SOLAR, 0)
    e = tinytest.raises(ValueError, ll.grid, 0, 1, 2, 3, 0, 0, 0)
    assert "solar" in str(e) and "load" in str(e), str(e)
    tinytest.raises(ValueError, LoadLimit(LOAD, 0).surplus, 0, 5000)
    tinytest.raises(ValueError, LoadLimit(FIXED, 0).surplus, 0, 5000)
    assert ll.limit_da(0) == PAUSE_DA  # the refused input changed nothing


def test_updates_allocate_nothing():
    lls = (LoadLimit(FIXED, 60), LoadLimit(LOAD, 60), LoadLimit(SOLAR, 60, start_delay_ms=5 * S,
                                                                   stop_delay_ms=5 * S))
    gc.collect()
    before = gc.mem_alloc()
    now = 0
    for i in range(200):
        now += S
        lls[0].fixed(now, 100 + i)
        lls[1].grid(now, 100, 120 - i, 90, 60, 60, 60)
        lls[2].surplus(now, 3000 + (i % 20) * 200)
        for ll in lls:
            ll.limit_da(now)
    assert gc.mem_alloc() - before == 0, gc.mem_alloc() - before
    assert lls[2].charging or lls[2]._since is not None  # the solar machine did move


tinytest.run(globals())
