# Update signatures: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 §8.2.2), the vendor key held by the board.
# Verification needs only pow(s, e, n): MicroPython has it on big ints (mpz, MICROPY_PY_BUILTINS_POW3) on the
# unix port and in every ESP32 build. docs/decisions.md (OTA) has the choice and its measurements.
#
# The check rebuilds the whole expected encoded message and compares every byte. Parsing the padding and
# digging the hash out of it instead is what let Bleichenbacher's 2006 forgery through (e = 3 keys, garbage
# after the hash); here nothing of the decrypted block is interpreted.
import json
import hashlib
from binascii import hexlify

# RFC 8017 §9.2 note 1: the DER DigestInfo prefix for SHA-256 (with the NULL parameters).
_SHA256_INFO = b"\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20"
KEY_FILE = "otakey.json"  # at the flash root, installed with the firmware; no update or OCPP message changes it
MIN_BYTES = 256  # RSA-2048 at least
MAX_BYTES = 512  # RSA-4096 at most: bounds the verification time


def key_path(root):
    return root.rstrip("/") + "/" + KEY_FILE


class BadKey(ValueError):
    pass


class Key:
    """An RSA public key: n, e, its size in bytes and its id (the first 8 bytes of SHA-256 of n)."""

    def __init__(self, n, e):
        if n <= 0 or not n & 1 or e < 3 or not e & 1:
            raise BadKey("not an RSA public key (modulus or exponent out of range)")
        size = (len(hex(n)) - 1) // 2  # "0x" + digits, two per byte
        if size < MIN_BYTES or size > MAX_BYTES:
            raise BadKey("RSA key of %d bits: 2048 to 4096 are accepted" % (size * 8))
        self.n = n
        self.e = e
        self.size = size
        self.id = hashlib.sha256(n.to_bytes(size, "big")).digest()[:8]

    def id_hex(self):
        return hexlify(self.id).decode()


def load_key(path):
    """The device key file written by `tools/otapack.py keygen`: {"alg": "RS256", "n": hex, "e": int, ...}."""
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError:
        raise BadKey("no update key at %s (installed with the firmware, docs/ota.md)" % path)
    except ValueError:
        raise BadKey("%s is not JSON" % path)
    try:
        if d["alg"] != "RS256":
            raise ValueError
        n = int(d["n"], 16)
        e = int(d["e"])
    except (KeyError, TypeError, ValueError):
        raise BadKey("%s is not an RS256 update key file" % path)
    return Key(n, e)


def verify(key, digest, sig):
    """True if sig is the key's PKCS#1 v1.5 signature of the 32-byte SHA-256 digest."""
    k = key.size
    if len(digest) != 32 or len(sig) != k:
        return False
    s = int.from_bytes(sig, "big")
    if s >= key.n:  # RFC 8017 §5.2.2: a representative out of range is no signature
        return False
    em = pow(s, key.e, key.n).to_bytes(k, "big")
    pad = k - 3 - len(_SHA256_INFO) - 32  # >= 8 bytes of 0xff for any accepted key size (§9.2 step 5)
    expected = b"\x00\x01" + b"\xff" * pad + b"\x00" + _SHA256_INFO + bytes(digest)
    return em == expected  # public data: a comparison that stops early leaks nothing
