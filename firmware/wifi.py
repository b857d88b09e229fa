# The WiFi link: joins the configured network through the board's radio (hal: wifi_join, wifi_status, wifi_ip,
# wifi_leave) and keeps it joined, as one supervisor task (the pattern of mqtt_as's _keep_connected).
#
# Link is also what the charger model reads about the network: state ("off" | "joining" | "up" | "failed"), ssid,
# ip (while up), error (the last failure's reason, kept after a recovery until the next one), failures (attempts
# in a row that failed) and joins (successful joins since boot). The password is never an attribute anyone
# prints: repr() leaves it out.
#
# Nothing here blocks: the radio calls return at once, and every wait is an asyncio sleep (docs/decisions.md,
# "First boot and WiFi"). The timings are class attributes so that a test can shrink them on an instance.
import os
import asyncio
import time
from firmware import log

_TAG = "wifi"


class Link:
    poll_ms = 250             # radio status reads while joining
    watch_ms = 1000           # ... and while up: a lost link is seen within a second
    join_timeout_ms = 20000   # scan (~2 s), association, 4-way handshake and DHCP take 2-6 s on an ESP32
    backoff_min_ms = 5000     # after the first failed join; doubles per failure
    backoff_max_ms = 60000    # a router rebooting takes 1-2 min: try at least once a minute

    def __init__(self, board, ssid, password):
        self.board = board
        self.ssid = ssid or None
        self._password = password or ""
        self.state = "off"
        self.ip = None
        self.error = None
        self.failures = 0
        self.joins = 0

    def __repr__(self):
        return "<wifi %s %s ip=%s error=%s>" % (self.state, self.ssid, self.ip, self.error)

    async def join(self):
        """One attempt: True once the link is up; False (state failed, error says why) after a failure or
        join_timeout_ms. A failed attempt is abandoned (wifi_leave) so the radio stops trying on its own."""
        board = self.board
        self.state = "joining"
        self.ip = None
        board.wifi_join(self.ssid, self._password)
        start = time.ticks_ms()
        while True:
            await asyncio.sleep_ms(self.poll_ms)
            state, why = board.wifi_status()
            if state == "up":
                self.state = "up"
                self.ip = board.wifi_ip()
                self.failures = 0
                self.joins += 1
                return True
            if state == "failed" or state == "off":
                why = why or "the radio stopped joining"
                break
            if time.ticks_diff(time.ticks_ms(), start) >= self.join_timeout_ms:
                why = "not joined within %d s" % ((self.join_timeout_ms + 999) // 1000)
                break
        board.wifi_leave()
        self.state = "failed"
        self.error = why
        self.failures += 1
        return False

    def backoff_ms(self):
        """The wait after `failures` failed joins in a row: doubling from the minimum to the maximum, plus up to
        25 % random jitter so that chargers sharing an access point do not all come back at the same moment."""
        wait = min(self.backoff_min_ms << min(max(self.failures - 1, 0), 10), self.backoff_max_ms)
        return wait + (wait // 4) * os.urandom(1)[0] // 255

    async def run(self):
        """The supervisor: join, watch, rejoin at once when the link is lost, back off after failures. Returns
        only when no network is configured (state off). Outlives a bug or a MemoryError, as app.py's tasks do."""
        if not self.ssid:
            log.info(_TAG, "no WiFi network configured")
            return
        while True:
            try:
                await self._keep()
            except Exception as e:
                log.error(_TAG, "supervisor failed: %r" % (e,))
                self.state = "failed"
                self.error = "supervisor restarted after %r" % (e,)
                await asyncio.sleep_ms(1000)

    async def _keep(self):
        while True:
            if not await self.join():
                wait = self.backoff_ms()
                log.warn(_TAG, "could not join %s: %s (attempt %d; next in %d s)"
                         % (self.ssid, self.error, self.failures, wait // 1000))
                await asyncio.sleep_ms(wait)
                continue
            log.info(_TAG, "joined %s, address %s" % (self.ssid, self.ip))
            while True:
                await asyncio.sleep_ms(self.watch_ms)
                state, why = self.board.wifi_status()
                if state != "up":
                    break
            self.error = why or "link lost"
            self.ip = None
            log.warn(_TAG, "link to %s lost: %s; joining again" % (self.ssid, self.error))


def start(board, cfg):
    """The Link for the configured network, with its supervisor task started (it runs once the asyncio loop
    does). The charger model keeps the Link and reads its attributes."""
    link = Link(board, cfg.get("WifiSsid"), cfg.get("WifiPassword"))
    asyncio.create_task(link.run())
    return link
