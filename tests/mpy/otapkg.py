# Update packages made inside MicroPython for the engine's unit tests (the format of docs/ota.md, as
# tools/otapack.py writes it), signed with the throw-away keys of ota_testkeys.py, and boards laid out for them.
import json
import struct
import hashlib
from binascii import hexlify
import ota_testkeys

_INFO = b"\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20"
_sigs = {}


def _key(k):
    return [int(part, 16) for part in k]


VENDOR = _key(ota_testkeys.VENDOR)
OTHER = _key(ota_testkeys.OTHER)


def key_json(key=VENDOR):
    return json.dumps({"alg": "RS256", "n": "%x" % key[0], "e": 65537})


def _size(n):
    return (len(hex(n)) - 1) // 2


def kid(key):
    n = key[0]
    return hashlib.sha256(n.to_bytes(_size(n), "big")).digest()[:8]


def sign(key, data):
    n, p, q, dp, dq, qinv = key
    cache = (n, data)
    if cache in _sigs:
        return _sigs[cache]
    k = _size(n)
    digest = hashlib.sha256(data).digest()
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(_INFO) - 32) + b"\x00" + _INFO + digest
    m = int.from_bytes(em, "big")
    m1 = pow(m % p, dp, p)
    m2 = pow(m % q, dq, q)
    s = m2 + q * ((qinv * (m1 - m2)) % p)
    sig = s.to_bytes(k, "big")
    _sigs[cache] = sig
    return sig


def files_for(version, extra=0):
    """A tiny firmware: a module that says its version (and `extra` bytes of padding to make it larger)."""
    body = b"V = %s\n" % repr(version).encode()
    if extra:
        body += b"#" + b"x" * extra + b"\n"
    return [("otaprobe/__init__.py", b""), ("otaprobe/ver.py", body)]


def make(version, files=None, key=VENDOR, signed=True):
    files = files or files_for(version)
    m = {"format": 1, "version": version, "kind": "files", "target": {},
         "files": [[p, len(b), hexlify(hashlib.sha256(b).digest()).decode()] for p, b in files]}
    raw = json.dumps(m).encode()
    sig = sign(key, raw) if signed else b""
    hdr = struct.pack("<4sBBHI", b"FWPK", 1, 1 if signed else 0, len(sig), len(raw)) + kid(key)
    return hdr + raw + sig + b"".join(b for _, b in files)


def board(root, version="1.0"):
    """A board as make deploy leaves it: the vendor key at the root, slot a complete and active."""
    import sys
    from firmware.ota import slots

    with open(root + "/otakey.json", "w") as f:
        f.write(key_json())
    s = slots.FileSlots(root)
    w = s.writer()
    m = {"format": 1, "version": version, "kind": "files", "target": {},
         "files": [[p, len(b), hexlify(hashlib.sha256(b).digest()).decode()] for p, b in files_for(version)]}
    w.begin(m, json.dumps(m), b"sig")
    for p, b in files_for(version):
        w.open(p, len(b))
        w.write(memoryview(b))
        w.close()
    w.commit(m)
    st = s.state()
    st["active"] = w.name
    s._save(st)
    return s
