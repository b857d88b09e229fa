# Feeds the hardware watchdog only while the firmware is alive: the asyncio loop turns (the feeder is a task on
# it) and every watched task has made progress within its own bound. A task stuck in a loop that never yields,
# or waiting forever on something that will not come, stops the feeding, and the board resets (reset cause
# "watchdog"; a transaction cut by it is closed with reason Reboot). Meanwhile the safety watch has opened the
# contactor (evse.LOOP_DEAD_MS) if the loop itself stopped.
#
# A watched task proves progress by incrementing an int it owns (e.g. Evse.beats): no callback, no allocation
# per turn, and the task's module knows nothing of the watchdog.
import asyncio
import time
from micropython import const

from firmware import log

_TAG = "wdt"
FEED_MS = const(1000)  # well inside the board's watchdog timeout (8 s on both boards)


class Watchdog:
    def __init__(self, board):
        self._board = board
        self._names = []
        self._beats = []  # fn() -> the task's progress counter
        self._quiet = []  # ms a task may go without progress
        self._last = []   # counter value last seen
        self._seen = []   # ticks_ms when the counter last moved
        self.stuck = None  # name of the task that stopped the feeding, once logged
        self.period_ms = FEED_MS

    def watch(self, name, beats, quiet_ms):
        self._names.append(name)
        self._beats.append(beats)
        self._quiet.append(quiet_ms)
        self._last.append(beats())
        self._seen.append(None)  # the first check starts the clock

    def check(self, now):
        """The name of the first task without progress within its bound, or None when all live."""
        for i in range(len(self._names)):
            v = self._beats[i]()
            if v != self._last[i] or self._seen[i] is None:
                self._last[i] = v
                self._seen[i] = now
            elif time.ticks_diff(now, self._seen[i]) > self._quiet[i]:
                return self._names[i]
        return None

    async def run(self):
        board = self._board
        while True:
            stuck = self.check(time.ticks_ms())
            if stuck is None:
                board.wdt_feed()
            elif stuck != self.stuck:
                log.error(_TAG, "task %s made no progress: no more feeding, the watchdog will reset" % stuck)
            self.stuck = stuck
            await asyncio.sleep_ms(self.period_ms)
