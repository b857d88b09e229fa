# The local current limit from an external input (a house energy manager, Home Assistant over MQTT): load
# management to keep the house main fuse, or charging from solar surplus only. What it returns goes to the
# arbiter as Evse.local_da, in 0.1 A like every current there.
#
# Integers only (0.1 A, W, V, ms), no allocation per update, and time is passed in (ticks_ms of the caller), so
# the arithmetic is table-tested on the unix port. Nothing here imports hardware or the network: a front end
# feeds it (fixed / grid / surplus) and the arbiter asks limit_da(now).
#
# Below the 6 A the pilot can signal, the answer is PAUSE_DA, never 0: the arbiter treats 0 as a stop that opens
# the contactor at once, under load; a load manager only asks the EV to pause (X1, the EV opens S2 itself, the
# contactor opens within 6 s at the latest: docs/decisions.md "Stop versus pause").
import time
from micropython import const

FIXED = const(0)
LOAD = const(1)
SOLAR = const(2)
MODES = ("fixed", "load", "solar")
MIN_DA = const(60)    # IEC 61851-1: the smallest current the pilot can offer
PAUSE_DA = const(1)   # any local limit 1-59 is a pause for the arbiter


def load_da(fuse_da, phases, g1, g2, g3, o1, o2, o3):
    """Headroom under the main fuse: per phase fuse - (grid - own), the smallest over the phases the charger
    draws on (L1 alone, or L1-L3). g1-g3: current through the house connection, import positive, export
    negative; o1-o3: what this charger draws on the same phase (part of g1-g3). Plain ints: no allocation."""
    room = fuse_da - (g1 - o1)
    if phases == 3:
        room = min(room, fuse_da - (g2 - o2), fuse_da - (g3 - o3))
    return room


def watts_to_da(watts, volts, phases):
    """Current per phase in 0.1 A for a power spread over phases, rounded down (never offer more)."""
    return watts * 10 // (volts * phases)


def surplus_w(grid_w, own_w):
    """Power the EV may use when the house meter gives net grid power (import positive): what we draw now plus
    what goes out to the grid."""
    return own_w - grid_w


class LoadLimit:
    """fallback_da: the limit while the input is missing or older than stale_ms (a safe value chosen by the
    installer). fuse_da: the main fuse per phase (mode load). phases: phases the charger draws on (1 or 3).
    volts: nominal phase voltage (mode solar). start_da >= MIN_DA: surplus to start charging; start_delay_ms /
    stop_delay_ms: how long the surplus must hold above start_da to start, below MIN_DA to stop."""

    def __init__(self, mode, fallback_da, stale_ms=60000, fuse_da=250, phases=3, volts=230, start_da=MIN_DA,
                 start_delay_ms=60000, stop_delay_ms=300000):
        if mode not in (FIXED, LOAD, SOLAR):
            raise ValueError("mode must be FIXED, LOAD or SOLAR (got %r)" % (mode,))
        if phases not in (1, 3):
            raise ValueError("phases must be 1 or 3 (got %r)" % (phases,))
        if start_da < MIN_DA:
            raise ValueError("start_da must be at least %d (got %d)" % (MIN_DA, start_da))
        if fallback_da < 0 or stale_ms <= 0 or fuse_da <= 0 or volts <= 0:
            raise ValueError("fallback_da >= 0, stale_ms, fuse_da and volts > 0 needed")
        self.mode = mode
        self.fallback_da = fallback_da
        self.stale_ms = stale_ms
        self.fuse_da = fuse_da
        self.phases = phases
        self.volts = volts
        self.start_da = start_da
        self.start_delay_ms = start_delay_ms
        self.stop_delay_ms = stop_delay_ms
        self.value_da = 0       # fixed value, load headroom or surplus, from the last input
        self.at_ms = None       # ticks of the last input; None = none yet
        self.charging = False   # solar: surplus has held long enough to start
        self._since = None      # solar: ticks since which the input asks to switch (start when off, stop when on)

    def _fed(self, now_ms, mode, da):
        if self.mode != mode:
            raise ValueError("mode is %s: this input is for mode %s" % (MODES[self.mode], MODES[mode]))
        if self.at_ms is not None and time.ticks_diff(now_ms, self.at_ms) >= self.stale_ms:
            self._since = None  # a condition must hold over fresh samples, not across a gap
        self.at_ms = now_ms
        self.value_da = da
        if mode == SOLAR:
            wants = da < MIN_DA if self.charging else da >= self.start_da
            if not wants:
                self._since = None
            elif self._since is None:
                self._since = now_ms

    def fixed(self, now_ms, da):
        self._fed(now_ms, FIXED, da)

    def grid(self, now_ms, g1, g2, g3, o1, o2, o3):
        """Grid current per phase (import +, export -) and this charger's own current per phase, 0.1 A."""
        self._fed(now_ms, LOAD, load_da(self.fuse_da, self.phases, g1, g2, g3, o1, o2, o3))

    def surplus(self, now_ms, watts):
        """Power available for charging (W, all phases together)."""
        self._fed(now_ms, SOLAR, watts_to_da(watts, self.volts, self.phases))

    def stale(self, now_ms):
        return self.at_ms is None or time.ticks_diff(now_ms, self.at_ms) >= self.stale_ms

    def limit_da(self, now_ms):
        """The local limit for the arbiter, 0.1 A: PAUSE_DA below 6 A."""
        if self.stale(now_ms):
            da = self.fallback_da
        elif self.mode == SOLAR:
            da = self._solar(now_ms)
        else:
            da = self.value_da
        return da if da >= MIN_DA else PAUSE_DA

    def _solar(self, now_ms):
        since = self._since
        if since is not None:
            delay = self.stop_delay_ms if self.charging else self.start_delay_ms
            if time.ticks_diff(now_ms, since) >= delay:
                self.charging = not self.charging
                self._since = None
        if not self.charging:
            return 0
        # Follow the surplus; during the stop delay hold the minimum (a passing cloud does not stop the EV).
        return self.value_da if self.value_da >= MIN_DA else MIN_DA
