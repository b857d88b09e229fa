# firmware/watchdog.py: the hardware watchdog is fed only while every watched task makes progress.
import asyncio

import tinytest
from firmware.watchdog import Watchdog


class Board:
    def __init__(self):
        self.feeds = 0

    def wdt_feed(self):
        self.feeds += 1


class Task:
    def __init__(self):
        self.beats = 0


def rig():
    b = Board()
    w = Watchdog(b)
    fast, slow = Task(), Task()
    w.watch("fast", lambda: fast.beats, 2000)
    w.watch("slow", lambda: slow.beats, 10000)
    return b, w, fast, slow


def test_live_tasks_pass_and_a_stalled_one_is_named_after_its_bound():
    b, w, fast, slow = rig()
    assert w.check(0) is None
    for t in range(500, 6000, 500):
        fast.beats += 1  # the slow task stays silent, within its 10 s
        assert w.check(t) is None, t
    assert w.check(7500) is None  # fast last moved at 5500: 2000 ms is its bound
    assert w.check(7501) == "fast"
    fast.beats += 1
    assert w.check(7600) is None  # progress again: alive
    fast.beats += 1
    assert w.check(10001) == "slow"  # silent since the first check at 0


def test_any_change_of_the_counter_counts_as_progress():
    b, w, fast, slow = rig()
    fast.beats = 1 << 40
    w.check(0)
    fast.beats = 0
    assert w.check(1000) is None and w.check(2500) is None
    assert w.check(3001) == "fast"


def test_feeds_only_while_everything_lives():
    async def main():
        b, w, fast, slow = rig()
        w._quiet[0] = 30  # ms: the bound of the fast task, shrunk so the test runs in ms
        w._quiet[1] = 30

        async def beat():
            while True:
                fast.beats += 1
                slow.beats += 1
                await asyncio.sleep_ms(5)

        w.period_ms = 10
        beating = asyncio.create_task(beat())
        feeder = asyncio.create_task(w.run())
        await asyncio.sleep_ms(100)
        fed = b.feeds
        assert fed >= 1, fed
        beating.cancel()  # the tasks stop making progress: the feeding stops
        await asyncio.sleep_ms(50)
        stopped_at = b.feeds
        await asyncio.sleep_ms(100)
        assert b.feeds == stopped_at, (stopped_at, b.feeds)
        assert w.stuck == "fast"
        feeder.cancel()

    asyncio.run(main())


tinytest.run(globals())
