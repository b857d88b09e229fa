# The charger's authorization data: the Local Authorization List (OCPP 1.6 §3.5.3, changed only by
# SendLocalList) and the authorization cache (§3.5.2, fed by the Central System's idTagInfo answers).
# Both are small (named capacities), held in RAM as compact (status, expiry, parent) entries and saved as
# whole CRC-checked files, so a power cut leaves the old or the new version on flash, never a mix.
#
# IdToken is a CiString20 (case-insensitive), so tags are keyed in upper case: a reader that reports
# "04A1B2" matches a list entry sent as "04a1b2".
from micropython import const

from firmware import clock, log, store

_TAG = "auth"
CACHE_MAX = const(16)  # cache entries; ~70 bytes of RAM each (digest §2.10: bounded, evict when full)
ID_MAX = const(20)     # IdToken = CiString20 (digest §2.1)

STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")
_ACCEPTED = const(0)
_EXPIRED = const(2)
_CONCURRENT = const(4)

# SendLocalList.conf statuses
ACCEPTED = "Accepted"
FAILED = "Failed"
NOT_SUPPORTED = "NotSupported"
VERSION_MISMATCH = "VersionMismatch"

_PROFILE = "LocalAuthListManagement"


def is_valid(info):
    # Digest §2.5: Accepted and ConcurrentTx both mean a valid id (ConcurrentTx matters only at a start).
    return info is not None and info.get("status") in ("Accepted", "ConcurrentTx")


def pack(info):
    """Wire idTagInfo -> (status index, expiry epoch or None, parentIdTag or None); None when malformed."""
    if not isinstance(info, dict):
        return None
    st = info.get("status")
    if not isinstance(st, str) or st not in STATUSES:
        return None
    exp = info.get("expiryDate")
    if exp is not None:
        exp = clock.parse_iso(exp) if isinstance(exp, str) else None
        if exp is None:
            return None
    parent = info.get("parentIdTag")
    if parent is not None and (not isinstance(parent, str) or len(parent) > ID_MAX):
        return None
    return STATUSES.index(st), exp, parent


def _valid_now(st, exp, now):
    return (st == _ACCEPTED or st == _CONCURRENT) and (exp is None or exp > now)


def _info(st, exp, parent, now):
    # A valid entry whose expiryDate has passed reports Expired (digest §2.10); Blocked/Invalid stay as they are.
    if exp is not None and exp <= now and (st == _ACCEPTED or st == _CONCURRENT):
        st = _EXPIRED
    info = {"status": STATUSES[st]}
    if exp is not None:
        info["expiryDate"] = clock.iso(exp)
    if parent is not None:
        info["parentIdTag"] = parent
    return info


def _row_ok(r):
    # One saved entry: [TAG, status index, expiry or null, parent or null].
    return (isinstance(r, list) and len(r) == 4 and isinstance(r[0], str) and len(r[0]) <= ID_MAX
            and isinstance(r[1], int) and 0 <= r[1] < len(STATUSES)
            and (r[2] is None or isinstance(r[2], int)) and (r[3] is None or isinstance(r[3], str)))


def _load(path, ok):
    """The saved object when ok(obj) accepts it, else None; a file that exists but does not check out is
    logged (store keeps a .bad when its CRC fails)."""
    had = store.exists(path)
    obj = store.read_json(path)
    if obj is not None and ok(obj):
        return obj
    if had:
        log.warn(_TAG, "%s corrupt or malformed, starting empty" % path)
    return None


def _list_ok(obj):
    rows = obj.get("e") if isinstance(obj, dict) else None
    v = obj.get("v") if isinstance(obj, dict) else None
    return isinstance(rows, list) and isinstance(v, int) and v >= 0 and all(_row_ok(r) for r in rows)


def _cache_ok(rows):
    return isinstance(rows, list) and all(_row_ok(r) for r in rows)


class Auth:
    def __init__(self, cfg, state_dir):
        self.cfg = cfg
        self._list_path = store.join(state_dir, "authlist.json")
        self._cache_path = store.join(state_dir, "authcache.json")
        self._list = {}     # TAG -> (status index, expiry, parent)
        self._version = 0   # 0 whenever the list is empty (digest §7 Q5)
        self._cache = []    # [TAG, status index, expiry, parent], least recently updated first
        obj = _load(self._list_path, _list_ok)
        if obj:
            for r in obj["e"]:
                self._list[r[0]] = (r[1], r[2], r[3])
            self._version = obj["v"] if self._list else 0
        rows = _load(self._cache_path, _cache_ok)
        if rows:
            self._cache = rows[-CACHE_MAX:]

    # ---- Local Authorization List -----------------------------------------------------------------------
    def supported(self):
        """The LocalAuthListManagement profile is offered (SupportedFeatureProfiles)."""
        return _PROFILE in self.cfg.get_list("SupportedFeatureProfiles")

    def list_version(self):
        # -1 only when the profile is not offered; LocalAuthListEnabled=false keeps the list maintained and
        # its version reported, only unused for authorization (digest §2.5 impl.).
        return self._version if self.supported() else -1

    def list_count(self):
        return len(self._list)

    def send_local_list(self, version, update_type, entries):
        """SendLocalList.req -> status. The new list is built aside, checked, saved, and only then made live:
        a refused or failed request leaves the list and its file as they were."""
        if not self.supported():
            return NOT_SUPPORTED
        full = update_type == "Full"
        if not full and version <= self._version:
            return VERSION_MISMATCH
        entries = entries or ()
        if len(entries) > self.cfg.get("SendLocalListMaxLength"):
            return self._failed("%d entries in one message, at most %d (SendLocalListMaxLength)"
                                % (len(entries), self.cfg.get("SendLocalListMaxLength")))
        new = {} if full else dict(self._list)
        why = self._apply(new, entries, full)
        if why:
            return self._failed(why)
        if len(new) > self.cfg.get("LocalAuthListMaxLength"):
            return self._failed("the list would hold %d ids, at most %d (LocalAuthListMaxLength)"
                                % (len(new), self.cfg.get("LocalAuthListMaxLength")))
        if not new:
            version = 0  # digest §7 Q5: an empty list is version 0
        elif version < 1:
            return self._failed("listVersion %d: 0 and -1 are reserved for empty / unsupported" % version)
        try:
            store.write_json(self._list_path, {"v": version, "e": [[k, e[0], e[1], e[2]] for k, e in new.items()]})
        except OSError as e:
            return self._failed("storage error %r" % (e,))
        self._list = new
        self._version = version
        self._forget(new)
        log.info(_TAG, "local list version %d, %d ids (%s)" % (version, len(new), update_type))
        return ACCEPTED

    def _apply(self, new, entries, full):
        """Applies entries to the dict new; returns why the request must fail, or None."""
        seen = []
        for e in entries:
            tag = e.get("idTag") if isinstance(e, dict) else None
            if not isinstance(tag, str) or len(tag) > ID_MAX:
                return "malformed entry %r" % (e,)
            key = tag.upper()
            if key in seen:
                # Schema-valid but ambiguous: which entry did the Central System mean? Refuse it whole.
                return "idTag %s appears twice" % tag
            seen.append(key)
            info = e.get("idTagInfo")
            if info is None:
                if full:
                    return "idTag %s has no idTagInfo in a Full update" % tag
                new.pop(key, None)
                continue
            packed = pack(info)
            if packed is None:
                return "malformed idTagInfo for %s" % tag
            new[key] = packed
        return None

    def _failed(self, why):
        log.warn(_TAG, "SendLocalList failed: " + why)
        return FAILED

    # ---- authorization cache ----------------------------------------------------------------------------
    def cache_count(self):
        return len(self._cache)

    def _find(self, key):
        c = self._cache
        for i in range(len(c)):
            if c[i][0] == key:
                return i
        return -1

    def remember(self, tag, info):
        """Keeps the Central System's latest idTagInfo for tag (Authorize/Start/StopTransaction.conf).
        Returns True when the cache holds it. Flash is written only when the content changes."""
        if not isinstance(tag, str) or not self.cfg.get("AuthorizationCacheEnabled"):
            return False
        key = tag.upper()
        if key in self._list:
            return False  # digest §2.5: ids in the list are never cached
        p = pack(info)
        if p is None:
            return False
        c = self._cache
        i = self._find(key)
        if i >= 0:
            old = c.pop(i)
            if old[1] == p[0] and old[2] == p[1] and old[3] == p[2]:
                c.append(old)  # newest again in RAM; the saved order may lag, which only shifts eviction
                return True
        elif len(c) >= CACHE_MAX:
            self._evict()
        c.append([key, p[0], p[1], p[2]])
        self._save_cache()
        return True

    def _evict(self):
        # Digest §2.10: invalid (or expired) entries go first, then the least recently updated valid one.
        c = self._cache
        now = clock.now()
        for i in range(len(c)):
            if not _valid_now(c[i][1], c[i][2], now):
                c.pop(i)
                return
        c.pop(0)

    def _forget(self, listed):
        # A tag that joined the list leaves the cache, so the cache never shadows it when the list is off.
        c = self._cache
        n = len(c)
        c[:] = [r for r in c if r[0] not in listed]
        if len(c) != n:
            self._save_cache()

    def _save_cache(self):
        try:
            store.write_json(self._cache_path, self._cache)
        except OSError as e:
            # The cache is a convenience: RAM stays right until the next boot.
            log.warn(_TAG, "cache not saved: %r" % (e,))

    def clear_cache(self):
        """ClearCache.req: True when the cache is empty on flash and in RAM."""
        if not self.cfg.get("AuthorizationCacheEnabled"):
            return False
        try:
            store.write_json(self._cache_path, [])
        except OSError as e:
            log.warn(_TAG, "ClearCache failed: %r" % (e,))
            return False
        self._cache = []
        return True

    # ---- lookup -----------------------------------------------------------------------------------------
    def lookup(self, tag):
        """idTagInfo (OCPP field names, expiry applied) from the list, else the cache; None when unknown
        locally, and the caller asks the Central System."""
        key = tag.upper()
        now = clock.now()
        if self.cfg.get("LocalAuthListEnabled"):
            e = self._list.get(key)
            if e is not None:
                return _info(e[0], e[1], e[2], now)
        if self.cfg.get("AuthorizationCacheEnabled"):
            i = self._find(key)
            if i >= 0:
                r = self._cache[i]
                return _info(r[1], r[2], r[3], now)
        return None

    is_valid = staticmethod(is_valid)
