# firmware.ocpp.auth and firmware.ocpp.localauth on the MicroPython unix port: the Local Authorization List
# (SendLocalList / GetLocalListVersion, digest §2.5, §7 Q5) and the authorization cache (digest §2.10).
import json
import os
import tinytest
from firmware.config import Config
from firmware.ocpp.session import Session

# One Session for the handler tests, made first and reused (their handlers are registered again for each Auth):
# the firmware makes its Session once at boot, and a Session takes a 6 KB frame buffer that the heap, once every
# module is compiled from source here, may no longer have in one piece.
_SESSION = Session(Config(tinytest.tempdir("auth-session")), {})

from firmware import clock, store  # noqa: E402
from firmware import config_keys as K  # noqa: E402
from firmware.ocpp import auth as A  # noqa: E402
from firmware.ocpp import localauth, rpc  # noqa: E402
from firmware.ocpp.auth import Auth, ACCEPTED, FAILED, NOT_SUPPORTED, VERSION_MISMATCH  # noqa: E402


_made = tinytest.made
_rmtree = tinytest.rmtree


def _fresh():
    return tinytest.tempdir("auth")


_DAY = 86400


def _auth(d=None, **settings):
    d = d or _fresh()
    cfg = Config(d)
    for k in settings:
        assert cfg.set(k, settings[k])[0] == "Accepted", k
    return Auth(cfg, d), d


def _e(tag, status="Accepted", **more):
    info = {"status": status}
    info.update(more)
    return {"idTag": tag, "idTagInfo": info}


def _tags(prefix, n, status="Accepted"):
    return [_e("%s%d" % (prefix, i), status) for i in range(n)]


def _status(a, tag):
    info = a.lookup(tag)
    return info and info["status"]


# ---- GetLocalListVersion / SendLocalList ----------------------------------------------------------------
def test_empty_list_reports_version_0():
    a, d = _auth()
    assert a.list_version() == 0 and a.list_count() == 0
    assert a.lookup("TAG1") is None


def test_full_of_8_accepted_and_version_stored():
    a, d = _auth()
    assert a.send_local_list(5, "Full", _tags("T", K.SEND_LOCAL_LIST_MAX)) == ACCEPTED
    assert a.list_version() == 5 and a.list_count() == K.SEND_LOCAL_LIST_MAX
    assert a.lookup("T7") == {"status": "Accepted"}


def test_full_replaces_the_whole_list():
    a, d = _auth()
    assert a.send_local_list(1, "Full", [_e("OLD1"), _e("OLD2")]) == ACCEPTED
    assert a.send_local_list(2, "Full", [_e("NEW", "Blocked", parentIdTag="GROUP")]) == ACCEPTED
    assert a.lookup("OLD1") is None and a.lookup("OLD2") is None
    assert a.lookup("NEW") == {"status": "Blocked", "parentIdTag": "GROUP"}
    assert a.list_count() == 1


def test_full_may_lower_the_version():
    a, d = _auth()
    assert a.send_local_list(9, "Full", [_e("A")]) == ACCEPTED
    assert a.send_local_list(3, "Full", [_e("B")]) == ACCEPTED  # only Differential has version rules
    assert a.list_version() == 3


def test_full_entry_without_info_fails_whole():
    a, d = _auth()
    assert a.send_local_list(1, "Full", [_e("KEEP")]) == ACCEPTED
    assert a.send_local_list(2, "Full", [_e("X"), {"idTag": "Y"}]) == FAILED
    assert a.list_version() == 1 and _status(a, "KEEP") == "Accepted" and a.lookup("X") is None


def test_differential_adds_updates_and_deletes():
    a, d = _auth()
    assert a.send_local_list(1, "Full", [_e("A"), _e("B"), _e("C")]) == ACCEPTED
    assert a.send_local_list(2, "Differential", [_e("B", "Blocked"), {"idTag": "C"}, _e("D")]) == ACCEPTED
    assert _status(a, "A") == "Accepted" and _status(a, "B") == "Blocked"
    assert a.lookup("C") is None and _status(a, "D") == "Accepted"
    assert a.list_version() == 2 and a.list_count() == 3
    # deleting an id that is not there is no error
    assert a.send_local_list(3, "Differential", [{"idTag": "NOPE"}]) == ACCEPTED
    assert a.list_count() == 3


def test_differential_version_must_grow():
    a, d = _auth()
    assert a.send_local_list(4, "Full", [_e("A")]) == ACCEPTED
    assert a.send_local_list(4, "Differential", [_e("B")]) == VERSION_MISMATCH
    assert a.send_local_list(3, "Differential", [_e("B")]) == VERSION_MISMATCH
    assert a.lookup("B") is None and a.list_version() == 4
    assert a.send_local_list(5, "Differential", [_e("B")]) == ACCEPTED


def test_differential_on_empty_list_needs_version_above_0():
    a, d = _auth()
    assert a.send_local_list(0, "Differential", [_e("A")]) == VERSION_MISMATCH
    assert a.send_local_list(-1, "Differential", [_e("A")]) == VERSION_MISMATCH
    assert a.send_local_list(1, "Differential", [_e("A")]) == ACCEPTED
    assert a.list_version() == 1


def test_empty_list_reports_0_whatever_version_was_sent():
    # digest §7 Q5
    a, d = _auth()
    assert a.send_local_list(3, "Full", [_e("A")]) == ACCEPTED
    assert a.send_local_list(7, "Full", []) == ACCEPTED
    assert a.list_version() == 0 and a.list_count() == 0
    assert a.send_local_list(8, "Full", [_e("A")]) == ACCEPTED
    assert a.send_local_list(9, "Differential", [{"idTag": "A"}]) == ACCEPTED
    assert a.list_version() == 0
    assert a.send_local_list(10, "Full", None) == ACCEPTED and a.list_version() == 0


def test_nonempty_list_with_reserved_version_fails():
    a, d = _auth()
    assert a.send_local_list(0, "Full", [_e("A")]) == FAILED
    assert a.send_local_list(-1, "Full", [_e("A")]) == FAILED
    assert a.list_count() == 0 and a.list_version() == 0


def test_more_than_send_max_entries_fails_untouched():
    a, d = _auth()
    assert a.send_local_list(1, "Full", [_e("A")]) == ACCEPTED
    before = store.read(d + "/authlist.json")
    too_many = _tags("N", K.SEND_LOCAL_LIST_MAX + 1)
    assert a.send_local_list(2, "Full", too_many) == FAILED
    assert a.send_local_list(2, "Differential", too_many) == FAILED
    assert a.list_version() == 1 and a.list_count() == 1 and a.lookup("N0") is None
    assert store.read(d + "/authlist.json") == before


def test_overflow_refused_whole_list_and_file_unchanged():
    a, d = _auth()
    assert a.send_local_list(1, "Full", _tags("A", 8)) == ACCEPTED
    assert a.send_local_list(2, "Differential", _tags("B", 8)) == ACCEPTED
    assert a.list_count() == K.LOCAL_LIST_MAX
    before = store.read(d + "/authlist.json")
    written = store.bytes_written
    # 7 updates of present ids plus one new id: 17 > 16, nothing of it may land
    msg = [_e("A%d" % i, "Blocked") for i in range(7)] + [_e("NEW")]
    assert a.send_local_list(3, "Differential", msg) == FAILED
    assert a.list_version() == 2 and a.list_count() == K.LOCAL_LIST_MAX
    assert _status(a, "A0") == "Accepted" and a.lookup("NEW") is None
    assert store.read(d + "/authlist.json") == before and store.bytes_written == written
    # a delete in the same message makes room: accepted
    assert a.send_local_list(3, "Differential", msg[1:] + [{"idTag": "B7"}]) == ACCEPTED
    assert a.list_count() == K.LOCAL_LIST_MAX and _status(a, "A1") == "Blocked" and _status(a, "NEW") == "Accepted"
    assert a.lookup("B7") is None and a.list_version() == 3


def test_duplicate_idtag_in_one_message_fails():
    a, d = _auth()
    assert a.send_local_list(1, "Full", [_e("A"), _e("a", "Blocked")]) == FAILED
    assert a.send_local_list(1, "Full", [_e("A")]) == ACCEPTED
    assert a.send_local_list(2, "Differential", [_e("B"), {"idTag": "B"}]) == FAILED
    assert a.list_version() == 1 and a.lookup("B") is None


def test_idtags_match_case_insensitively():
    # IdToken is a CiString20
    a, d = _auth()
    assert a.send_local_list(1, "Full", [_e("04a1b2c3")]) == ACCEPTED
    assert _status(a, "04A1B2C3") == "Accepted"
    assert a.send_local_list(2, "Differential", [{"idTag": "04A1B2C3"}]) == ACCEPTED
    assert a.lookup("04a1b2c3") is None


def test_storage_error_fails_and_keeps_old_list():
    a, d = _auth()
    assert a.send_local_list(1, "Full", [_e("OLD")]) == ACCEPTED
    def full(path, mode="r"):  # the flash refuses every write: a real write error
        if mode[0] != "r" or "+" in mode:
            raise OSError(28)
        return open(path, mode)
    store.open = full
    try:
        assert a.send_local_list(2, "Full", [_e("NEW")]) == FAILED
        assert a.list_version() == 1 and _status(a, "OLD") == "Accepted" and a.lookup("NEW") is None
    finally:
        del store.open
    assert Auth(a.cfg, d).list_version() == 1
    assert a.send_local_list(2, "Full", [_e("NEW")]) == ACCEPTED


def test_list_persists_across_a_new_auth():
    a, d = _auth()
    future = clock.now() + 10 * _DAY
    assert a.send_local_list(4, "Full", [_e("A", parentIdTag="P"), _e("B", "Invalid"),
                                         _e("C", expiryDate=clock.iso(future))]) == ACCEPTED
    b = Auth(Config(d), d)
    assert b.list_version() == 4 and b.list_count() == 3
    assert b.lookup("A") == {"status": "Accepted", "parentIdTag": "P"}
    assert b.lookup("B") == {"status": "Invalid"}
    assert b.lookup("C") == {"status": "Accepted", "expiryDate": clock.iso(future)}


def _flip(p):
    raw = bytearray(store.read(p))
    raw[-3] ^= 0x20  # a flipped bit: the CRC no longer matches
    with open(p, "wb") as f:
        f.write(raw)


def test_corrupt_list_file_is_restored_from_its_copy():
    a, d = _auth()
    assert a.send_local_list(4, "Full", [_e("A")]) == ACCEPTED
    _flip(d + "/authlist.json")
    b = Auth(Config(d), d)
    assert b.list_version() == 4 and b.lookup("A") == {"status": "Accepted"}
    assert store.exists(d + "/authlist.json.bad")  # evidence kept


def test_corrupt_list_file_and_copy_give_empty_list_version_0():
    a, d = _auth()
    assert a.send_local_list(4, "Full", [_e("A")]) == ACCEPTED
    _flip(d + "/authlist.json")
    _flip(d + "/authlist.json.bak")
    b = Auth(Config(d), d)
    assert b.list_version() == 0 and b.list_count() == 0 and b.lookup("A") is None
    assert store.exists(d + "/authlist.json.bad")  # evidence kept
    assert b.send_local_list(1, "Differential", [_e("A")]) == ACCEPTED  # usable again


def test_well_formed_file_with_wrong_shape_gives_empty_list():
    d = _fresh()
    store.write_json(d + "/authlist.json", {"v": 3, "e": [["A", 99, None, None]]})
    b = Auth(Config(d), d)
    assert b.list_version() == 0 and b.list_count() == 0
    store.write_json(d + "/authcache.json", {"not": "a list"})
    assert Auth(Config(d), d).cache_count() == 0


def test_not_supported_without_the_profile():
    d = _fresh()
    keys = tuple(("SupportedFeatureProfiles", k[1], "Core,SmartCharging", k[3], k[4], k[5])
                 if k[0] == "SupportedFeatureProfiles" else k for k in K.KEYS)
    a = Auth(Config(d, keys), d)
    assert a.list_version() == -1
    assert a.send_local_list(1, "Full", [_e("A")]) == NOT_SUPPORTED
    assert a.list_count() == 0


def test_list_disabled_is_kept_but_not_used():
    a, d = _auth(LocalAuthListEnabled="false")
    assert a.send_local_list(2, "Full", [_e("A")]) == ACCEPTED  # digest §2.5 impl.: still accepted
    assert a.list_version() == 2
    assert a.lookup("A") is None
    assert a.cfg.set("LocalAuthListEnabled", "true")[0] == "Accepted"
    assert _status(a, "A") == "Accepted"


# ---- expiry and priority -------------------------------------------------------------------------------
def test_past_expiry_reports_expired():
    a, d = _auth()
    past = clock.now() - 60
    future = clock.now() + _DAY
    assert a.send_local_list(1, "Full", [_e("OLD", expiryDate=clock.iso(past)),
                                         _e("NEW", expiryDate=clock.iso(future)),
                                         _e("BLK", "Blocked", expiryDate=clock.iso(past))]) == ACCEPTED
    assert a.lookup("OLD") == {"status": "Expired", "expiryDate": clock.iso(past)}
    assert not A.is_valid(a.lookup("OLD"))
    assert _status(a, "NEW") == "Accepted" and a.is_valid(a.lookup("NEW"))
    assert _status(a, "BLK") == "Blocked"  # a stronger refusal is not softened to Expired


def test_offsets_in_expiry_are_honoured():
    a, d = _auth()
    assert a.send_local_list(1, "Full", [_e("A", expiryDate="2020-01-01T02:00:00+02:00")]) == ACCEPTED
    assert a.lookup("A")["expiryDate"] == "2020-01-01T00:00:00Z"


def test_is_valid_semantics():
    assert A.is_valid({"status": "Accepted"}) and A.is_valid({"status": "ConcurrentTx"})
    for s in ("Blocked", "Expired", "Invalid"):
        assert not A.is_valid({"status": s})
    assert not A.is_valid(None)


def test_list_wins_over_cache_and_list_tags_are_never_cached():
    a, d = _auth()
    assert a.remember("X", {"status": "Accepted"})
    assert _status(a, "X") == "Accepted" and a.cache_count() == 1
    assert a.send_local_list(1, "Full", [_e("X", "Blocked")]) == ACCEPTED
    assert _status(a, "X") == "Blocked"
    assert a.cache_count() == 0  # it left the cache when it joined the list
    assert not a.remember("x", {"status": "Accepted"})
    assert a.cache_count() == 0 and _status(a, "X") == "Blocked"
    assert a.cfg.set("LocalAuthListEnabled", "false")[0] == "Accepted"
    assert a.lookup("X") is None  # no stale cache entry shows through: the Central System decides


# ---- cache ---------------------------------------------------------------------------------------------
def test_cache_remembers_and_persists():
    a, d = _auth()
    future = clock.now() + _DAY
    assert a.remember("C1", {"status": "Accepted", "expiryDate": clock.iso(future), "parentIdTag": "P"})
    assert a.remember("C2", {"status": "Invalid"})
    b = Auth(Config(d), d)
    assert b.lookup("c1") == {"status": "Accepted", "expiryDate": clock.iso(future), "parentIdTag": "P"}
    assert b.lookup("C2") == {"status": "Invalid"}


def test_cache_ignores_malformed_info():
    a, d = _auth()
    assert not a.remember("A", {"status": "Maybe"})
    assert not a.remember("A", {"status": "Accepted", "expiryDate": "tomorrow"})
    assert not a.remember("A", None)
    assert a.cache_count() == 0


def test_cache_unchanged_info_costs_no_flash_write():
    a, d = _auth()
    assert a.remember("A", {"status": "Accepted"})
    written = store.bytes_written
    assert a.remember("A", {"status": "Accepted"})
    assert store.bytes_written == written
    assert a.remember("A", {"status": "Blocked"})
    assert store.bytes_written > written and _status(a, "A") == "Blocked"


def test_cache_eviction_invalid_first_then_oldest():
    a, d = _auth()
    n = A.CACHE_MAX
    for i in range(n):
        status = "Blocked" if i in (5, 9) else "Accepted"
        assert a.remember("T%d" % i, {"status": status})
    assert a.cache_count() == n
    a.remember("N1", {"status": "Accepted"})  # evicts the oldest invalid entry, T5
    assert a.lookup("T5") is None and _status(a, "T9") == "Blocked" and _status(a, "T0") == "Accepted"
    a.remember("N2", {"status": "Accepted"})  # then T9
    assert a.lookup("T9") is None and _status(a, "T0") == "Accepted"
    a.remember("T0", {"status": "Accepted", "parentIdTag": "G"})  # an update makes T0 the newest
    a.remember("N3", {"status": "Accepted"})  # no invalid left: the least recently updated, T1
    assert a.lookup("T1") is None and _status(a, "T0") == "Accepted"
    assert a.cache_count() == n
    b = Auth(Config(d), d)  # the order survives a reboot
    b.remember("N4", {"status": "Accepted"})
    assert b.lookup("T2") is None and b.lookup("T0") is not None and b.cache_count() == n


def test_cache_expired_entries_are_evicted_first():
    a, d = _auth()
    for i in range(A.CACHE_MAX):
        info = {"status": "Accepted"}
        if i == 7:
            info["expiryDate"] = clock.iso(clock.now() - 5)
        assert a.remember("T%d" % i, info)
    assert _status(a, "T7") == "Expired"
    a.remember("NEW", {"status": "Accepted"})
    assert a.lookup("T7") is None and _status(a, "T0") == "Accepted"


def test_cache_disabled():
    a, d = _auth()
    assert a.remember("A", {"status": "Accepted"})
    assert a.cfg.set("AuthorizationCacheEnabled", "false")[0] == "Accepted"
    assert a.lookup("A") is None
    assert not a.remember("B", {"status": "Accepted"})
    assert not a.clear_cache()  # ClearCache -> Rejected
    assert a.cfg.set("AuthorizationCacheEnabled", "true")[0] == "Accepted"
    assert _status(a, "A") == "Accepted" and a.lookup("B") is None


def test_clear_cache_empties_ram_and_flash():
    a, d = _auth()
    a.remember("A", {"status": "Accepted"})
    a.remember("B", {"status": "Blocked"})
    assert a.send_local_list(1, "Full", [_e("L")]) == ACCEPTED
    assert a.clear_cache()
    assert a.lookup("A") is None and a.cache_count() == 0
    assert _status(a, "L") == "Accepted"  # ClearCache does not touch the list
    assert Auth(Config(d), d).lookup("A") is None


def test_clear_cache_storage_error_keeps_cache():
    a, d = _auth()
    a.remember("A", {"status": "Accepted"})
    os.mkdir(d + "/authcache.json.tmp")
    try:
        assert not a.clear_cache()
        assert _status(a, "A") == "Accepted"
    finally:
        os.rmdir(d + "/authcache.json.tmp")


# ---- the handlers --------------------------------------------------------------------------------------
class _Charger:
    # What localauth.register takes from the charger: its Auth
    def __init__(self, auth):
        self.auth = auth


def _session(a):
    s = _SESSION
    localauth.register(s, _Charger(a))
    return s


async def _answer(s, action, payload):
    """The session's dispatch of a CALL frame -> the answer frame it would send."""
    reply, after = await s.dispatch(json.dumps([2, "u1", action, payload]))
    assert after is None and reply[1] == "u1", reply
    return reply


async def _serve(s, action, payload):
    reply = await _answer(s, action, payload)
    assert reply[0] == 3, reply
    return reply[2]


async def _code(s, action, payload):
    reply = await _answer(s, action, payload)
    assert reply[0] == 4, reply
    return reply[2]


async def test_handlers_round_trip():
    a, d = _auth()
    s = _session(a)
    assert await _serve(s, "GetLocalListVersion", {}) == {"listVersion": 0}
    full = {"listVersion": 3, "updateType": "Full", "localAuthorizationList": _tags("H", 8)}
    assert await _serve(s, "SendLocalList", full) == {"status": "Accepted"}
    assert await _serve(s, "GetLocalListVersion", {}) == {"listVersion": 3}
    diff = {"listVersion": 3, "updateType": "Differential", "localAuthorizationList": [_e("Z")]}
    assert await _serve(s, "SendLocalList", diff) == {"status": "VersionMismatch"}
    nine = {"listVersion": 4, "updateType": "Full", "localAuthorizationList": _tags("H", 9)}
    assert await _serve(s, "SendLocalList", nine) == {"status": "Failed"}
    assert await _serve(s, "GetLocalListVersion", {}) == {"listVersion": 3}


async def test_handler_callerror_codes():
    a, d = _auth()
    s = _session(a)

    async def send(entries, kind="Full"):
        return await _code(s, "SendLocalList", {"listVersion": 1, "updateType": kind,
                                                "localAuthorizationList": entries})

    assert await send([_e("X" * 21)]) == rpc.TYPE
    assert await send([{"idTag": 7, "idTagInfo": {"status": "Accepted"}}]) == rpc.TYPE
    assert await send(["TAG"]) == rpc.TYPE
    assert await send([{"idTag": "A", "idTagInfo": "Accepted"}]) == rpc.TYPE
    assert await send([_e("A", "Welcome")]) == rpc.PROPERTY
    assert await send([_e("A", expiryDate="2026-13-40T99:00:00Z")]) == rpc.PROPERTY
    assert await send([_e("A", parentIdTag="P" * 21)]) == rpc.TYPE
    assert await send([{"idTag": "A"}]) == rpc.OCCURENCE  # Full needs idTagInfo
    assert await send([{"idTagInfo": {"status": "Accepted"}}]) == rpc.OCCURENCE
    assert await send([{"idTag": "A", "idTagInfo": {}}]) == rpc.OCCURENCE
    assert await send([{"idTag": "A", "extra": 1}], "Differential") == rpc.FORMATION
    assert await send([{"idTag": "A", "idTagInfo": {"status": "Accepted", "x": 1}}]) == rpc.FORMATION
    assert await _code(s, "SendLocalList", {"listVersion": 1, "updateType": "Partial"}) == rpc.PROPERTY
    assert await _code(s, "SendLocalList", {"updateType": "Full"}) == rpc.OCCURENCE
    assert await _code(s, "SendLocalList", {"listVersion": "1", "updateType": "Full"}) == rpc.TYPE
    assert await _code(s, "GetLocalListVersion", {"x": 1}) == rpc.FORMATION
    assert a.list_count() == 0 and a.list_version() == 0  # nothing of the refused messages landed


async def test_clear_cache_handler():
    a, d = _auth()
    s = _session(a)
    a.remember("A", {"status": "Accepted"})
    assert await _serve(s, "ClearCache", {}) == {"status": "Accepted"}
    assert a.lookup("A") is None
    assert a.cfg.set("AuthorizationCacheEnabled", "false")[0] == "Accepted"
    assert await _serve(s, "ClearCache", {}) == {"status": "Rejected"}


def test_zz_cleanup():
    for d in _made:
        _rmtree(d)


tinytest.run(globals())
