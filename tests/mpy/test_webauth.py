# firmware.webauth on the MicroPython unix port: the page password (salted, iterated SHA-256 in WebPassword of a
# real firmware.config on a temporary flash), sessions and CSRF tokens, and the login rate limit, with a clock
# the test moves.
import hashlib
from binascii import hexlify, unhexlify
import tinytest
from firmware import config, webauth

PW = "charge-at-home-42"


class Clock:
    def __init__(self):
        self.now = 1000

    def __call__(self):
        return self.now


def _auth(pw=None):
    cfg = config.Config(tinytest.tempdir("webauth"))
    clock = Clock()
    a = webauth.Auth(cfg, clock)
    return cfg, clock, a


async def _with_password(pw=PW):
    cfg, clock, a = _auth()
    ok, why = await a.set_password(pw)
    assert ok and why is None, why
    return cfg, clock, a


async def test_the_hash_is_sha256_over_salt_and_password_repeated_to_the_byte_count():
    stored = await webauth.make_hash(PW, 5000)
    count, salt, digest = webauth.parse(stored)
    assert count == 5000 and len(salt) == 16
    unit = salt + PW.encode()
    data = (unit * (5000 // len(unit) + 1))[:5000]
    assert digest == hexlify(hashlib.sha256(data).digest()).decode()
    assert stored.startswith("s2k$5000$") and PW not in stored
    assert await webauth.verify(stored, PW)
    assert not await webauth.verify(stored, PW + "x")
    assert not await webauth.verify(stored, None)
    assert not await webauth.verify("", PW) and not await webauth.verify(PW, PW)  # a plaintext is no hash


async def test_two_hashes_of_one_password_differ_by_their_salt():
    a = await webauth.make_hash(PW, 1024)
    b = await webauth.make_hash(PW, 1024)
    assert a != b and await webauth.verify(a, PW) and await webauth.verify(b, PW)


async def test_no_password_no_session_until_one_is_set_and_then_only_the_hash_is_stored():
    cfg, clock, a = _auth()
    assert not a.password_set()
    tok, csrf = a.open()
    assert a.session(tok) is None  # nothing counts as logged in without a password
    ok, why = await a.set_password(PW)
    assert ok, why
    stored = cfg.get("WebPassword")
    assert webauth.hashed(stored) and PW not in stored
    # what the next boot reads from flash
    again = config.Config(cfg._path[:-len("/config.json")])
    assert again.get("WebPassword") == stored
    with open(cfg._path) as f:
        assert PW not in f.read()


async def test_a_short_or_long_password_is_refused_and_nothing_changes():
    cfg, clock, a = await _with_password()
    before = cfg.get("WebPassword")
    ok, why = await a.set_password("short")
    assert not ok and "8-64 characters, this one 5" in why, why
    ok, why = await a.set_password("x" * 65)
    assert not ok and "this one 65" in why
    ok, why = await a.set_password(None)
    assert not ok
    assert cfg.get("WebPassword") == before


async def test_a_plaintext_from_provision_json_is_hashed_when_the_page_starts():
    cfg, clock, a = _auth()
    cfg.set_device("WebPassword", PW)  # as provision.json leaves it
    assert await a.upgrade()
    assert webauth.hashed(cfg.get("WebPassword"))
    ok, _ = await a.check(PW)
    assert ok
    assert not await a.upgrade()  # already hashed: nothing to do


async def test_a_too_short_plaintext_is_dropped_so_the_page_asks_for_a_password():
    cfg, clock, a = _auth()
    cfg.set_device("WebPassword", "1234")
    assert await a.upgrade()
    assert cfg.get("WebPassword") == "" and not a.password_set()


async def test_login_gives_a_session_whose_csrf_token_is_checked():
    cfg, clock, a = await _with_password()
    tok, csrf, why = await a.login("wrong password")
    assert tok is None and why == "wrong password"
    tok, csrf, why = await a.login(PW)
    assert tok and csrf and why is None and tok != csrf and len(tok) == 32
    assert a.session(tok) == csrf
    assert a.csrf_ok(tok, csrf)
    assert not a.csrf_ok(tok, None) and not a.csrf_ok(tok, "") and not a.csrf_ok(tok, csrf[:-1] + "0"
                                                                                 if csrf[-1] != "0" else "1")
    assert not a.csrf_ok("f" * 32, csrf)  # a token of no session
    tok2, csrf2, _ = await a.login(PW)
    assert not a.csrf_ok(tok2, csrf) and a.csrf_ok(tok2, csrf2)  # one token per session
    a.close(tok)
    assert a.session(tok) is None and a.session(tok2) == csrf2


async def test_sessions_end_after_30_idle_minutes_and_12_hours_whatever_their_use():
    cfg, clock, a = await _with_password()
    tok, csrf, _ = await a.login(PW)
    clock.now += webauth.IDLE_MS - 1
    assert a.session(tok) == csrf  # used: the idle time starts again
    clock.now += webauth.IDLE_MS - 1
    assert a.session(tok) == csrf
    clock.now += webauth.IDLE_MS
    assert a.session(tok) is None
    tok, csrf, _ = await a.login(PW)
    for _ in range(webauth.LIFETIME_MS // (webauth.IDLE_MS // 2)):
        clock.now += webauth.IDLE_MS // 2
        a.session(tok)
    assert a.session(tok) is None


async def test_the_least_recently_used_session_gives_way_to_a_fifth():
    cfg, clock, a = await _with_password()
    toks = []
    for i in range(webauth.MAX_SESSIONS):
        clock.now += 10
        toks.append(a.open()[0])
    clock.now += 10
    a.session(toks[0])  # the first is used again: the second is now the oldest
    clock.now += 10
    a.open()
    assert a.sessions() == webauth.MAX_SESSIONS
    assert a.session(toks[0]) is not None and a.session(toks[1]) is None


async def test_a_new_password_ends_every_session():
    cfg, clock, a = await _with_password()
    tok, csrf, _ = await a.login(PW)
    ok, _ = await a.set_password("another-password")
    assert ok and a.session(tok) is None
    assert not (await a.check(PW))[0] and (await a.check("another-password"))[0]


async def test_five_failures_in_a_row_lock_logins_for_a_doubling_time_up_to_a_minute():
    cfg, clock, a = await _with_password()
    for i in range(webauth.FREE_FAILS - 1):
        ok, why = await a.check("guess%d" % i)
        assert not ok and why == "wrong password" and a.wait_ms() == 0
    ok, why = await a.check("guess")
    assert not ok and a.wait_ms() == 1000
    # while locked, even the right password is not checked
    ok, why = await a.check(PW)
    assert not ok and why == "too many failed logins: try again in 1 s", why
    clock.now += 1000
    ok, why = await a.check("guess again")
    assert not ok and a.wait_ms() == 2000
    for _ in range(10):
        clock.now += a.wait_ms()
        await a.check("and again")
    assert a.wait_ms() == webauth.LOCK_MAX_MS
    clock.now += webauth.LOCK_MAX_MS
    ok, why = await a.check(PW)
    assert ok and a.fails == 0 and a.wait_ms() == 0


def test_same_compares_whole_texts():
    assert webauth.same("abc", "abc")
    assert not webauth.same("abc", "abd") and not webauth.same("abc", "ab") and not webauth.same("abc", None)
    assert not webauth.same(None, None)


tinytest.run(globals())
