# One check for every answer a person gives in a setup: the serial wizard (firmware/provision.py), the setup form
# of the soft access point (firmware/websetup.py) and the web page's configuration form (firmware/web.py) all call
# check(), so a value one of them refuses the others refuse too, with the same words.
#
# The configuration's own rules come first (config._parse over the key table: types, ranges, lengths, ws:// or
# wss://, the characters of a charge box id); a setup adds what a person gets wrong and the table cannot say
# (docs/decisions.md, "First boot and WiFi").
from firmware import config
from firmware import config_keys as K

_HEX = "0123456789abcdefABCDEF"


def ssid_rule(ssid):
    n = len(ssid.encode())
    return "an SSID has at most 32 bytes, this one %d" % n if n > 32 else None


def wpa_rule(pw):
    n = len(pw.encode())
    if not pw or 8 <= n <= 63:
        return None
    if n == 64:
        for c in pw:
            if c not in _HEX:
                return "64 characters must be hex digits (a raw WPA2 key); a passphrase has 8-63"
        return None
    return "a WPA2 password has 8-63 characters, this one %d (Enter alone: an open network)" % n


def url_rule(url):
    rest = url[url.find("://") + 3:]
    host = rest.split("/")[0].split("@")[-1]
    if not host or host[0] == ":":
        return "no host name after %s" % url[:url.find("://") + 3]
    for c in url:
        if c <= " ":
            return "must not contain spaces"
    return None


_RULES = {"WifiSsid": ssid_rule, "WifiPassword": wpa_rule, "CentralSystemUrl": url_rule}


def secret(name):
    """True for a key whose value is never shown (passwords)."""
    return bool(K.entry(K.find(name))[1] & K.SECRET)


def check(name, value, required=False):
    """(typed value, None) when value may be stored under the device key name, else (None, reason). value is the
    text a person typed (a secret is taken as typed, anything else without surrounding spaces; a choice in any
    letter case: "sdm630" is SDM630) or a typed value (a form's number or checkbox)."""
    i = K.find(name)
    if i < 0:
        return None, "unknown setting %s" % name
    e = K.entry(i)
    if isinstance(value, str):
        if not e[1] & K.SECRET:
            value = value.strip()
        choices = e[5] if e[1] & K.TYPE == K.STR else None
        if choices:
            for c in choices:
                if c.lower() == value.lower():
                    value = c
    v, reason = config._parse(e, value)
    if reason is None and required and (v is None or v == ""):
        reason = "an answer is needed here"
    if reason is None and v:
        rule = _RULES.get(e[0])
        if rule is not None:
            reason = rule(v)
    return (None, reason) if reason else (v, None)
