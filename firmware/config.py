# The configuration registry: OCPP keys and installer (device) settings, one table (firmware/config_keys.py).
#
# RAM: only values that differ from their default are held (a small dict keyed by the keys' canonical
# names) and only those are written to config.json. Clamps (HeartbeatInterval, MeterValueSampleInterval)
# apply on use: the value the Central System sent is stored and shown by GetConfiguration, so a Change then
# Get round trip reads back what was written; get() returns the effective, clamped value.
import json
from binascii import crc32, hexlify, unhexlify
from firmware import store
from firmware import log
from firmware import config_keys as K

ACCEPTED = "Accepted"
REJECTED = "Rejected"
REBOOT_REQUIRED = "RebootRequired"
NOT_SUPPORTED = "NotSupported"

_PROV = "_provision_crc"  # config.json entry: which provision.json was applied last
_HEX = "0123456789abcdefABCDEF"


def _is_hex(s):
    for c in s:
        if c not in _HEX:
            return False
    return True


def _key_hex(s):
    # Digest §7 Q4: 32-40 even-length hex digits are the bytes they encode (16-20 bytes).
    return 32 <= len(s) <= 40 and not len(s) % 2 and _is_hex(s)


def _ipv4(s):
    parts = s.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p.isdigit() or len(p) > 3 or int(p) > 255:
            return False
    return True


def _parse_int(text):
    s = text[1:] if text[:1] in ("-", "+") else text
    if not s or not s.isdigit():  # int() alone would take " 12", "1_0"
        return None
    return int(text)


def _item_ok(item, flags, allowed):
    if flags & K.CONN:
        dot = item.find(".")
        if dot > 0:
            n = _parse_int(item[:dot])
            if n is None or n < 0 or n > K.NUMBER_OF_CONNECTORS:
                return False
            item = item[dot + 1:]
    if allowed is None or item in allowed:
        return True
    if flags & K.PHASE:
        dot = item.rfind(".")
        return dot > 0 and item[dot + 1:] in ("L1", "L2", "L3") and item[:dot] in K.PHASED
    return False


def _check_csl(e, text):
    """(normalised text, None) or (None, reason)."""
    flags, hi, allowed = e[1], e[4], e[5]
    items = [s.strip() for s in text.split(",")] if text.strip() else []
    if len(items) > hi:
        return None, "%d items, at most %d (%sMaxLength)" % (len(items), hi, e[0])
    what = "measurand" if flags & K.PHASE else "value"
    for it in items:
        if not _item_ok(it, flags, allowed):
            return None, "unsupported %s '%s'" % (what, it)
    return ",".join(items), None


def _check_str(e, v):
    if not e[3] <= len(v) <= e[4]:
        return "length %d, must be %d-%d" % (len(v), e[3], e[4])
    if e[5] is not None and v not in e[5]:
        return "'%s' is not one of %s" % (v, "|".join(e[5]))
    name = e[0]
    if name == "CentralSystemUrl" and v and not (v.startswith("ws://") or v.startswith("wss://")):
        return "must start with ws:// or wss://"
    if name == "ChargeBoxId":
        for c in v:
            if c <= " " or c in "/?#%":  # it becomes the last URL path segment
                return "must not contain spaces or / ? # %"
    if name == "MqttUrl" and v:
        r = mqtt_url(v)
        if isinstance(r, str):
            return r
    if name == "MqttTopic":
        for c in v:
            if c < " " or c in "+#":  # wildcards belong in filters, never in a topic we publish to (MQTT 4.7)
                return "must not contain + # or control characters"
        if v[:1] in ("/", "$") or v[-1:] == "/" or "//" in v:
            return "must not start with / or $, end with /, or hold an empty level"
    if name == "WebBind" and not _ipv4(v):
        return "must be an IPv4 address: 0.0.0.0 (every interface) or one of the board's"
    if name == "Pins" and v:
        try:
            if not isinstance(json.loads(v), dict):
                return "must be a JSON object"
        except ValueError:
            return "is not valid JSON"
    return None


def mqtt_url(v):
    """mqtt://host[:port] or mqtts://host[:port] (a trailing / allowed) -> (tls, host, port), or the reason it
    is not one (a str). The MQTT front end connects with what this returns."""
    tls = v.startswith("mqtts://")
    if not (tls or v.startswith("mqtt://")):
        return "must start with mqtt:// or mqtts://"
    rest = v[8 if tls else 7:]
    if rest.endswith("/"):
        rest = rest[:-1]
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if port:
        p = _parse_int(port)
        if p is None or not 0 < p < 65536:
            return "bad port '%s'" % port
        port = p
    else:
        port = 8883 if tls else 1883
    if not host:
        return "has no host"
    for c in host:
        if c <= " " or c in "/?#@[]":
            return "host must be a name or an IPv4 address (no user, path or spaces)"
    return tls, host, port


def _parse(e, v):
    """Typed value from text (ChangeConfiguration) or a typed value (provisioning): (value, reason)."""
    t = e[1] & K.TYPE
    if t == K.INT:
        n = v if isinstance(v, int) and not isinstance(v, bool) else (
            _parse_int(v) if isinstance(v, str) else None)
        if n is None:
            return None, "'%s' is not a base-10 integer" % (v,)
        if n < e[3]:
            return None, "%d is below the minimum %d" % (n, e[3])
        if n > e[4]:
            return None, "%d is above the maximum %d" % (n, e[4])
        if n == 2 and e[0] == "LoadPhases":
            return None, "must be 1 or 3"
        return n, None
    if t == K.BOOL:
        b = v if isinstance(v, bool) else None
        if isinstance(v, str):
            t = v.lower()
            b = True if t == "true" else False if t == "false" else None
        if b is None:
            return None, "'%s' is not true or false" % (v,)
        return b, None
    if not isinstance(v, str):
        return None, "expected text"
    if t == K.CSL:
        return _check_csl(e, v)
    reason = _check_str(e, v)
    return (None, reason) if reason else (v, None)


class Config:
    def __init__(self, state_dir, keys=None):
        self._keys = keys  # None: the compact table of config_keys
        self._path = store.join(state_dir, "config.json")
        self._vals = {}
        self._got = {}  # name as asked -> effective value: get() sits on hot paths, the table is text
        self._watchers = []
        self._prov = None
        self.provision_report = []  # "Name: reason" for provision.json entries that were not applied
        self._load()
        self._provision(store.join(state_dir, "provision.json"))

    # ---- lookup -----------------------------------------------------------------------------------
    def _entry(self, name):
        """(name, flags, default, lo, hi, extra) of a key in any spelling; None when unknown."""
        keys = self._keys
        if keys is None:
            i = K.find(name)
            return K.entry(i) if i >= 0 else None
        low = name.lower()
        for e in keys:
            if len(e[0]) == len(name) and e[0].lower() == low:
                return e
        return None

    def _raw(self, e):
        return self._vals.get(e[0], e[2])

    def get(self, name):
        v = self._got.get(name)
        if v is not None:
            return v
        e = self._entry(name)
        if e is None:
            raise KeyError(name)
        v = self._raw(e)
        floor = e[5]
        if e[1] & K.TYPE == K.INT and floor and v < floor and not (v == 0 and e[1] & K.ZERO_OFF):
            v = floor
        if len(self._got) < 64:  # bounded: a caller may build names
            self._got[name] = v
        return v

    def get_list(self, name):
        """The items of a CSL key."""
        v = self.get(name)
        return v.split(",") if v else []

    def password_bytes(self):
        """The Basic-auth password as bytes (digest §7 Q4), None when none is set."""
        p = self.get("Password")
        if not p:
            return None
        if p.startswith("hex:") and _is_hex(p[4:]) and not len(p) % 2:
            return unhexlify(p[4:])  # same spelling as tools/csms.py for raw bytes of any length
        return unhexlify(p) if _key_hex(p) else p.encode()

    # ---- OCPP -------------------------------------------------------------------------------------
    def set(self, name, text):
        """ChangeConfiguration: (status, reason); reason is None when the value was taken."""
        e = self._entry(name)
        if e is None or e[1] & K.DEVICE:
            return NOT_SUPPORTED, "unknown key %s" % name
        if not e[1] & K.WRITE:
            return REJECTED, "%s is read-only" % e[0]
        if not isinstance(text, str):
            return REJECTED, "%s: value must be a string" % e[0]
        if e[1] & K.SECRET:
            return self._set_key(text)
        v, reason = _parse(e, text)
        if reason:
            return REJECTED, "%s: %s" % (e[0], reason)
        return self._commit(((e, v),))

    def _set_key(self, text):
        if not (_key_hex(text) or 16 <= len(text) <= 20):
            return REJECTED, "AuthorizationKey: expected 32-40 hex digits or 16-20 characters"
        if text.startswith("hex:"):
            text = "hex:" + hexlify(text.encode()).decode()  # plaintext that password_bytes would misread
        e = self._entry("Password")
        return self._commit(((e, text),), "AuthorizationKey")

    def ocpp_items(self, keys=None, buf=None):
        """No list: an iterator of (key, readonly, value_text) over the visible keys, in table order.
        With a list: (found, unknown); write-only keys appear in neither (digest §3.1: never reveal them).
        buf (a JsonBuf): instead, GetConfiguration's answer for every visible key, {"configurationKey": [...]},
        written as JSON by buf.write() (firmware/config_keys.py write_json: no dict per key on the heap)."""
        if buf is not None:
            buf.write(b'{"configurationKey":')
            if self._keys is None:
                K.write_json(buf, self._vals)
            else:
                import json

                buf.write(json.dumps([{"key": k, "readonly": ro, "value": v} for k, ro, v in self._iter_items()]))
            buf.write(b"}")
            return None
        if keys is None:
            return self._iter_items()
        found = []
        unknown = []
        for k in keys:
            e = self._entry(k)
            if e is None or e[1] & K.DEVICE:
                unknown.append(k)
            elif e[1] & K.READ:
                found.append(self._item(e))
        return found, unknown

    def _iter_items(self):
        if self._keys is not None:
            for e in self._keys:
                if e[1] & K.READ and not e[1] & K.DEVICE:
                    yield self._item(e)
            return
        vals = self._vals
        for name, flags, d in K.heads():
            if flags & K.READ and not flags & K.DEVICE:
                t = flags & K.TYPE
                if name in vals:
                    v = vals[name]
                    d = ("true" if v else "false") if t == K.BOOL else str(v) if t == K.INT else v
                elif t == K.BOOL:
                    d = "true" if d == "1" else "false"
                elif d == "-":
                    d = ""
                yield name, not flags & K.WRITE, d

    def _item(self, e):
        v = self._raw(e)
        t = e[1] & K.TYPE
        return e[0], not e[1] & K.WRITE, ("true" if v else "false") if t == K.BOOL else str(v) if t == K.INT else v

    # ---- device settings --------------------------------------------------------------------------
    def set_device(self, name, value):
        """Installer setting, typed or text: (status, reason) like set()."""
        e = self._entry(name)
        if e is None or not e[1] & K.DEVICE:
            return NOT_SUPPORTED, "%s is not a device setting" % name
        v, reason = _parse(e, value)
        if reason:
            return REJECTED, "%s: %s" % (e[0], reason)
        return self._commit(((e, v),))

    def watch(self, fn):
        self._watchers.append(fn)

    # ---- persistence ------------------------------------------------------------------------------
    def _commit(self, changes, notify=None):
        """Apply [(entry, value)], persist, tell the watchers. Unchanged values cost no flash write."""
        old = []
        for e, v in changes:
            was = self._raw(e)
            if was != v or type(was) is not type(v):
                old.append((e, was))
                self._put(e, v)
        if old:
            try:
                self._save()
            except OSError as ex:
                for e, was in old:
                    self._put(e, was)
                return REJECTED, "could not store the value (%s)" % ex
            for fn in self._watchers:
                for e, _ in old:
                    fn(notify or e[0])
        for e, _ in changes:
            if e[1] & K.REBOOT:
                return REBOOT_REQUIRED, None
        return ACCEPTED, None

    def _put(self, e, v):
        self._got.clear()
        if v == e[2] and type(v) is type(e[2]):
            self._vals.pop(e[0], None)
        else:
            self._vals[e[0]] = v

    def _save(self):
        obj = dict(self._vals)
        if self._prov is not None:
            obj[_PROV] = self._prov
        store.write_json(self._path, obj)

    def _load(self):
        obj = store.read_json(self._path, None)
        if not isinstance(obj, dict):
            return  # missing or corrupt (kept as config.json.bad by store): defaults
        for k, v in obj.items():
            if k == _PROV:
                self._prov = v
                continue
            e = self._entry(k)
            if e is None:
                continue  # a key an older firmware knew
            v, reason = _parse(e, v)
            if reason is None:  # bounds may have tightened since it was stored
                self._put(e, v)

    def _provision(self, path):
        # Applied once per distinct content: the simulator rewrites the same file at every power-on, and
        # re-applying it would undo an AuthorizationKey the Central System has set since.
        raw = store.read(path)
        if raw is None:
            return
        crc = crc32(raw) & 0xFFFFFFFF
        if crc == self._prov:
            return
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            self.provision_report.append("provision.json: not a JSON object")
            return
        changes = []
        for k, v in obj.items():
            e = self._entry(k)
            if e is None or not e[1] & K.DEVICE:
                self.provision_report.append("%s: not a device setting" % k)
                continue
            v, reason = _parse(e, v)
            if reason:
                self.provision_report.append("%s: %s" % (e[0], reason))
            else:
                changes.append((e, v))
        for msg in self.provision_report:
            log.warn("config", msg)
        self._prov = crc
        for e, v in changes:
            self._put(e, v)
        try:
            self._save()
        except OSError as ex:
            self.provision_report.append("provision.json: could not store (%s)" % ex)
