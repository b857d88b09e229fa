# The web page's authentication (docs/decisions.md, "Web page"): the password, sessions, CSRF tokens and the login
# rate limit. No HTTP here: firmware/web.py calls it, tests/mpy/test_webauth.py drives it directly.
#
# The password is stored as "s2k$<bytes>$<salt hex>$<SHA-256 hex>" in the device key WebPassword: SHA-256 over
# salt || password repeated until <bytes> bytes were hashed (OpenPGP's iterated and salted S2K, RFC 4880
# 3.7.1.3). MicroPython has SHA-256 but no HMAC, so PBKDF2 would be a Python loop of allocations; this is one
# hash object fed from one preallocated chunk, in C, and the loop yields every 16 KB so a login never stalls the
# charger's loop for long. Until a password is set the page offers nothing but setting it.
#
# Sessions live in RAM (a reboot logs everyone out): a random 128-bit token in an HttpOnly, SameSite=Strict
# cookie, with its own random CSRF token that every POST must carry. At most MAX_SESSIONS; the least recently used
# goes first.
import os
import time
import asyncio
import hashlib
from binascii import hexlify
from micropython import const

S2K_BYTES = const(262144)     # hashed per check: ~1 ms on a PC, ~0.1-0.3 s on an ESP32
_CHUNK = const(1024)
_YIELD_EVERY = const(16)      # chunks between two yields to the loop
MIN_LEN = const(8)
MAX_LEN = const(64)
MAX_SESSIONS = const(4)
IDLE_MS = const(1800000)      # a session unused for 30 minutes ends
LIFETIME_MS = const(43200000)  # and any after 12 hours
FREE_FAILS = const(5)         # failed logins in a row before the lock-out starts
LOCK_MAX_MS = const(60000)    # the longest wait between two attempts
_PREFIX = "s2k$"


def _token():
    return hexlify(os.urandom(16)).decode()


def same(a, b):
    """Compares two texts in a time that does not depend on where they differ (tokens, hashes)."""
    if not isinstance(a, str) or not isinstance(b, str) or len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= ord(a[i]) ^ ord(b[i])
    return d == 0


async def _s2k(salt, password, count):
    unit = salt + password.encode()
    chunk = unit * (_CHUNK // len(unit) + 1)
    h = hashlib.sha256()
    left = count
    n = 0
    while left > 0:
        if left < len(chunk):
            chunk = chunk[:left]
        h.update(chunk)
        left -= len(chunk)
        n += 1
        if n % _YIELD_EVERY == 0:
            await asyncio.sleep_ms(0)
    return hexlify(h.digest()).decode()


def hashed(stored):
    """True when the stored value is in the hashed form (anything else is a plaintext from provision.json)."""
    return parse(stored) is not None


def parse(stored):
    """(bytes, salt, hex digest) of a stored hash, None when the text is not one."""
    if not stored or not stored.startswith(_PREFIX):
        return None
    f = stored.split("$")
    if len(f) != 4 or not f[1].isdigit() or len(f[2]) != 32 or len(f[3]) != 64:
        return None
    try:
        from binascii import unhexlify
        return int(f[1]), unhexlify(f[2]), f[3]
    except ValueError:
        return None


async def make_hash(password, count=S2K_BYTES):
    salt = os.urandom(16)
    return "%s%d$%s$%s" % (_PREFIX, count, hexlify(salt).decode(), await _s2k(salt, password, count))


async def verify(stored, password):
    p = parse(stored)
    if p is None or not isinstance(password, str):
        return False
    return same(await _s2k(p[1], password, p[0]), p[2])


def password_rule(password):
    """None when the text may be the page's password, else why not."""
    if not isinstance(password, str):
        return "the password must be text"
    n = len(password)
    if n < MIN_LEN or n > MAX_LEN:
        return "a password has %d-%d characters, this one %d" % (MIN_LEN, MAX_LEN, n)
    return None


class Auth:
    """The password (through cfg's WebPassword), the sessions and the login rate limit."""

    def __init__(self, cfg, ticks=time.ticks_ms):
        self.cfg = cfg
        self.ticks = ticks
        self._sessions = {}   # token -> [csrf token, created ms, last used ms]
        self.fails = 0        # failed logins in a row
        self._fail_ms = 0

    # ---- the password --------------------------------------------------------------------------------
    def password_set(self):
        return bool(self.cfg.get("WebPassword"))

    async def upgrade(self):
        """A plaintext WebPassword (provision.json) is replaced by its hash: -> True when one was."""
        stored = self.cfg.get("WebPassword")
        if not stored or hashed(stored):
            return False
        if password_rule(stored):
            # Too short to keep: the page offers to set one, as if none were set.
            self.cfg.set_device("WebPassword", "")
            return True
        self.cfg.set_device("WebPassword", await make_hash(stored))
        return True

    async def set_password(self, password):
        """-> (ok, reason). Ends every session: a changed password logs everyone else out."""
        why = password_rule(password)
        if why:
            return False, why
        status, reason = self.cfg.set_device("WebPassword", await make_hash(password))
        if reason:
            return False, reason
        self._sessions.clear()
        return True, None

    # ---- logging in ----------------------------------------------------------------------------------
    def wait_ms(self):
        """How long a login must still wait (0: it may try now). After FREE_FAILS failures in a row each further
        failure doubles the wait, from 1 s up to LOCK_MAX_MS."""
        if self.fails < FREE_FAILS:
            return 0
        lock = min(1000 << min(self.fails - FREE_FAILS, 10), LOCK_MAX_MS)
        left = lock - time.ticks_diff(self.ticks(), self._fail_ms)
        return left if left > 0 else 0

    async def check(self, password):
        """-> (ok, reason): the password against the stored hash, under the rate limit."""
        wait = self.wait_ms()
        if wait:
            return False, "too many failed logins: try again in %d s" % ((wait + 999) // 1000)
        if await verify(self.cfg.get("WebPassword"), password):
            self.fails = 0
            return True, None
        self.fails += 1
        self._fail_ms = self.ticks()
        return False, "wrong password"

    async def login(self, password):
        """-> (token, csrf, None) or (None, None, reason)."""
        ok, reason = await self.check(password)
        if not ok:
            return None, None, reason
        token, csrf = self.open()
        return token, csrf, None

    def open(self):
        """A new session: (token, csrf). The least recently used one goes when all are taken."""
        self._expire()
        s = self._sessions
        if len(s) >= MAX_SESSIONS:
            oldest = None
            for t, v in s.items():
                if oldest is None or time.ticks_diff(v[2], s[oldest][2]) < 0:
                    oldest = t
            del s[oldest]
        now = self.ticks()
        token = _token()
        csrf = _token()
        s[token] = [csrf, now, now]
        return token, csrf

    def close(self, token):
        self._sessions.pop(token, None)

    def _expire(self):
        now = self.ticks()
        s = self._sessions
        for t in [t for t, v in s.items() if time.ticks_diff(now, v[2]) >= IDLE_MS
                  or time.ticks_diff(now, v[1]) >= LIFETIME_MS]:
            del s[t]

    # ---- every request -------------------------------------------------------------------------------
    def session(self, token):
        """The CSRF token of a live session (and it counts as used now), None when there is none."""
        if not token or not self.password_set():
            return None
        self._expire()
        v = self._sessions.get(token)
        if v is None:
            return None
        v[2] = self.ticks()
        return v[0]

    def csrf_ok(self, token, given):
        csrf = self.session(token)
        return csrf is not None and same(csrf, given)

    def sessions(self):
        return len(self._sessions)
