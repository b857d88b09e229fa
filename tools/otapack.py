"""Signed firmware update packages (docs/ota.md): vendor key, packing, checking, unpacking into a slot.

    .venv/bin/python tools/otapack.py keygen --out DIR [--bits 3072]
    .venv/bin/python tools/otapack.py pack --key KEY.pem --version 0.2.0 --out fw.fwpk [--build build/unix]
                                          [--platform esp32] [--built 2026-01-01T00:00:00Z] [--source TEXT]
    .venv/bin/python tools/otapack.py pack --key KEY.pem --version 0.2.0 --out fw.fwpk --image firmware.bin
                                          --platform esp32
    .venv/bin/python tools/otapack.py verify fw.fwpk --pubkey otakey.json [--mpy-abi N] [--platform NAME]
    .venv/bin/python tools/otapack.py slot fw.fwpk --pubkey otakey.json --into FLASH/slots/a [--activate]

keygen writes DIR/ota-vendor-key.pem (the private key: keep it off the build server, mode 0600) and
DIR/otakey.json (the public key as the board stores it, installed at deploy time as /otakey.json).
pack takes the .mpy tree that tools/build.py made (firmware/, hal/, lib/; boot.py, main.py and slotboot.mpy stay
out: they are the board's fixed entry points), or with --image an ESP32 app image for esp32.Partition updates.
verify checks a package as the board would (signature, manifest, every file's size and SHA-256, nothing after
the last file) and prints its manifest. slot unpacks a checked package into a slot directory, as the board's
installer writes it (for make deploy and the simulation); --activate also makes it the active slot.
"""
import argparse
import datetime
import hashlib
import json
import os
import re
import struct
import sys
import zlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build  # noqa: E402  (tools/build.py: SLOT_DIRS, the directories that make up a slot)

MAGIC = b"FWPK"
FORMAT = 1
SCHEME_RSA_PKCS1_SHA256 = 1
HEADER = struct.Struct("<4sBBHI8s")  # magic, format, scheme, signature length, manifest length, key id
MANIFEST_MAX = 8192
FILES_MAX = 128
PATH_MAX = 64
VERSION_MAX = 50
RESERVED = ("manifest.json", "manifest.sig", "slot.json")
PRIVATE_NAME = "ota-vendor-key.pem"
PUBLIC_NAME = "otakey.json"
_PATH_PART = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*\Z")
ARCHS = ("none", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
         "xtensawin", "rv32imc", "rv64imc")


class PackError(Exception):
    pass


# ---- keys ---------------------------------------------------------------------------------------------------
def key_id(n):
    size = (n.bit_length() + 7) // 8
    return hashlib.sha256(n.to_bytes(size, "big")).digest()[:8]


def public_json(public_key):
    nums = public_key.public_numbers()
    return {"alg": "RS256", "n": "%x" % nums.n, "e": nums.e, "bits": public_key.key_size,
            "kid": key_id(nums.n).hex()}


def keygen(out_dir, bits=3072):
    """Writes the vendor key pair into out_dir; returns (private PEM path, public JSON path)."""
    if bits not in (2048, 3072, 4096):
        raise PackError("key size %d: use 2048, 3072 or 4096" % bits)
    os.makedirs(out_dir, exist_ok=True)
    priv_path = os.path.join(out_dir, PRIVATE_NAME)
    pub_path = os.path.join(out_dir, PUBLIC_NAME)
    if os.path.exists(priv_path):
        raise PackError("%s exists: a new key would strand every board that trusts the old one" % priv_path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    with open(pub_path, "w") as f:
        json.dump(public_json(key.public_key()), f)
        f.write("\n")
    return priv_path, pub_path


def load_private(path):
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PackError("%s is not an RSA private key" % path)
    return key


def load_public(path):
    """The board's key file -> (cryptography public key, its JSON)."""
    with open(path) as f:
        d = json.load(f)
    if d.get("alg") != "RS256":
        raise PackError("%s: alg %r, expected RS256" % (path, d.get("alg")))
    return rsa.RSAPublicNumbers(int(d["e"]), int(d["n"], 16)).public_key(), d


# ---- manifest -----------------------------------------------------------------------------------------------
def path_ok(p):
    return (isinstance(p, str) and 0 < len(p) <= PATH_MAX and p not in RESERVED
            and all(_PATH_PART.match(part) for part in p.split("/")))


def mpy_target(blobs):
    """The target of a set of files from their .mpy headers: .mpy version, native arch and sub-version."""
    versions, natives = set(), set()
    for path, data in blobs:
        if not path.endswith(".mpy"):
            continue
        if len(data) < 4 or data[0] != ord("M"):
            raise PackError("%s is not a .mpy file" % path)
        versions.add(data[1])
        if data[2] >> 2:
            natives.add((data[2] >> 2, data[2] & 3))
    if len(versions) > 1 or len(natives) > 1:
        raise PackError("the .mpy files mix versions %s / native architectures %s: rebuild them together"
                        % (sorted(versions), sorted(natives)))
    target = {}
    if versions:
        target["mpy"] = versions.pop()
        arch, sub = natives.pop() if natives else (0, 0)
        target["arch"] = arch
        target["sub"] = sub
    return target


def tree_files(build_dir):
    """(path, bytes) of every file of a slot in a tools/build.py tree, sorted."""
    out = []
    for pkg in build.SLOT_DIRS:  # the firmware's packages, microdot and the web page's static files
        top = os.path.join(build_dir, pkg)
        for dirpath, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".tmp"):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, build_dir).replace(os.sep, "/")
                with open(full, "rb") as f:
                    out.append((rel, f.read()))
    if not out:
        raise PackError("%s holds no %s: run tools/build.py first" % (build_dir, "/".join(build.PACKAGES)))
    return out


def make_manifest(version, kind, target, blobs, built=None, source=None):
    if not (0 < len(version) <= VERSION_MAX and all(" " <= c <= "~" for c in version)):
        raise PackError("version must be 1-%d printable ASCII characters (BootNotification firmwareVersion)"
                        % VERSION_MAX)
    if len(blobs) > FILES_MAX:
        raise PackError("%d files, at most %d" % (len(blobs), FILES_MAX))
    files = []
    for path, data in blobs:
        if not path_ok(path):
            raise PackError("file path %r is not allowed in a package (docs/ota.md)" % path)
        files.append([path, len(data), hashlib.sha256(data).hexdigest()])
    m = {"format": FORMAT, "version": version, "kind": kind, "target": target,
         "built": built or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
         "files": files}
    if source:
        m["source"] = source
    raw = json.dumps(m, separators=(",", ":")).encode()
    if len(raw) > MANIFEST_MAX:
        raise PackError("manifest of %d bytes, at most %d" % (len(raw), MANIFEST_MAX))
    return raw


def sign_manifest(private_key, raw):
    return private_key.sign(raw, padding.PKCS1v15(), hashes.SHA256())


def assemble(raw, signature, kid, blobs, scheme=SCHEME_RSA_PKCS1_SHA256):
    """The package bytes: header, manifest, signature, file data in manifest order."""
    parts = [HEADER.pack(MAGIC, FORMAT, scheme, len(signature), len(raw), kid), raw, signature]
    parts += [data for _, data in blobs]
    return b"".join(parts)


def pack(private_key, version, blobs, kind="files", platform=None, built=None, source=None):
    target = mpy_target(blobs) if kind == "files" else {}
    if platform:
        target["platform"] = platform
    raw = make_manifest(version, kind, target, blobs, built, source)
    nums = private_key.public_key().public_numbers()
    return assemble(raw, sign_manifest(private_key, raw), key_id(nums.n), blobs)


# ---- reading ------------------------------------------------------------------------------------------------
def read_package(data, public_key, mpy_abi=None, platform=None):
    """Checks a package as the board does; returns (manifest dict, raw manifest, signature, [(path, bytes)])."""
    if len(data) < HEADER.size:
        raise PackError("not an update package (no FWPK header)")
    magic, fmt, scheme, siglen, mlen, kid = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PackError("not an update package (no FWPK header)")
    if fmt != FORMAT:
        raise PackError("package format %d, this tool reads %d" % (fmt, FORMAT))
    if scheme == 0 or siglen == 0:
        raise PackError("package is not signed")
    if scheme != SCHEME_RSA_PKCS1_SHA256:
        raise PackError("signature scheme %d is not supported" % scheme)
    if not 0 < mlen <= MANIFEST_MAX:
        raise PackError("manifest of %d bytes (at most %d)" % (mlen, MANIFEST_MAX))
    pos = HEADER.size
    raw, sig = data[pos:pos + mlen], data[pos + mlen:pos + mlen + siglen]
    if len(raw) != mlen or len(sig) != siglen:
        raise PackError("package truncated before the end of its signature")
    pos += mlen + siglen
    try:
        public_key.verify(sig, raw, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        mine = key_id(public_key.public_numbers().n)
        if kid != mine:
            raise PackError("signed with key %s, the given key is %s" % (kid.hex(), mine.hex()))
        raise PackError("signature does not match the manifest (tampered or corrupt package)")
    m = json.loads(raw)
    if m.get("format") != FORMAT or m.get("kind") not in ("files", "image"):
        raise PackError("manifest format/kind not understood")
    target = m.get("target", {})
    if platform and target.get("platform") not in (None, platform):
        raise PackError("package is for %s, not %s" % (target["platform"], platform))
    if mpy_abi is not None and m["kind"] == "files" and "mpy" in target:
        if target["mpy"] != mpy_abi & 0xFF:
            raise PackError("package holds .mpy version %d, the board loads %d" % (target["mpy"], mpy_abi & 0xFF))
        if target.get("arch") and (target["arch"] != mpy_abi >> 10 or target.get("sub") != (mpy_abi >> 8) & 3):
            raise PackError("package has native code for %s, the board runs %s"
                            % (ARCHS[target["arch"]], ARCHS[mpy_abi >> 10]))
    blobs = []
    for path, size, digest in m["files"]:
        if not path_ok(path):
            raise PackError("manifest path %r is not allowed" % path)
        chunk = data[pos:pos + size]
        if len(chunk) != size:
            raise PackError("package truncated in %s" % path)
        if hashlib.sha256(chunk).hexdigest() != digest:
            raise PackError("%s does not match its SHA-256 (tampered or corrupt package)" % path)
        blobs.append((path, chunk))
        pos += size
    if pos != len(data):
        raise PackError("package has bytes after its last file")
    return m, raw, sig, blobs


# ---- slots (the board's layout, slotboot.py) -------------------------------------------------------------------
def framed(obj):
    body = json.dumps(obj).encode()
    return b"%08x\n" % (zlib.crc32(body) & 0xFFFFFFFF) + body


def read_framed(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if len(raw) >= 9 and raw[8:9] == b"\n" and int(raw[:8], 16) == zlib.crc32(raw[9:]) & 0xFFFFFFFF:
            return json.loads(raw[9:])
    except (OSError, ValueError):
        pass
    return None


def read_state(slots):
    states = [read_framed(os.path.join(slots, "state.%d" % i)) for i in (0, 1)]
    states = [s for s in states if isinstance(s, dict) and isinstance(s.get("gen"), int)]
    return max(states, key=lambda s: s["gen"]) if states else None


def write_slot(data, public_key, into, activate=False):
    """Unpacks a checked package into the slot directory into (".../slots/a"); returns the manifest."""
    m, raw, sig, blobs = read_package(data, public_key)
    if m["kind"] != "files":
        raise PackError("only a files package unpacks into a slot directory")
    into = os.path.abspath(into)
    slots, name = os.path.split(into)
    if name not in ("a", "b") or os.path.basename(slots) != "slots":
        raise PackError("a slot directory is <flash>/slots/a or <flash>/slots/b, not %s" % into)
    state = read_state(slots)
    gen = state["gen"] if state else 0
    if os.path.exists(os.path.join(into, "slot.json")):
        os.remove(os.path.join(into, "slot.json"))
    for path, chunk in blobs:
        full = os.path.join(into, *path.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(chunk)
    for fname, content in (("manifest.json", raw), ("manifest.sig", sig),
                           ("slot.json", framed({"seq": gen + 1, "version": m["version"]}))):
        with open(os.path.join(into, fname + ".tmp"), "wb") as f:
            f.write(content)
        os.replace(os.path.join(into, fname + ".tmp"), os.path.join(into, fname))
    if activate:
        st = {"gen": gen + 1, "kind": "files", "active": name, "trial": None, "boots": 0, "report": None}
        with open(os.path.join(slots, "state.%d" % (st["gen"] % 2)), "wb") as f:
            f.write(framed(st))
    return m


# ---- command line -------------------------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="make the vendor key pair")
    k.add_argument("--out", required=True)
    k.add_argument("--bits", type=int, default=3072)
    pk = sub.add_parser("pack", help="build a signed package")
    pk.add_argument("--key", required=True, help="the vendor private key (PEM)")
    pk.add_argument("--version", required=True, help="firmwareVersion the board reports (1-50 characters)")
    pk.add_argument("--out", required=True)
    pk.add_argument("--build", default=os.path.join(ROOT, "build", "unix"), help="a tools/build.py output tree")
    pk.add_argument("--image", help="an ESP32 app image (whole-image update through esp32.Partition)")
    pk.add_argument("--platform", help="sys.platform the package is for (required with --image)")
    pk.add_argument("--built", help="build time to record (default: now, UTC)")
    pk.add_argument("--source", help="source revision to record (e.g. git describe)")
    v = sub.add_parser("verify", help="check a package as the board would")
    v.add_argument("package")
    v.add_argument("--pubkey", required=True, help="the board's key file (otakey.json)")
    v.add_argument("--mpy-abi", type=int, help="the board's sys.implementation._mpy")
    v.add_argument("--platform")
    s = sub.add_parser("slot", help="unpack a checked package into a slot directory")
    s.add_argument("package")
    s.add_argument("--pubkey", required=True)
    s.add_argument("--into", required=True, help="<flash>/slots/a or <flash>/slots/b")
    s.add_argument("--activate", action="store_true", help="also make it the active slot")
    args = p.parse_args(argv)
    try:
        if args.cmd == "keygen":
            priv, pub = keygen(args.out, args.bits)
            print("private key: %s (keep it secret, off the build server)\npublic key:  %s (install as /%s)"
                  % (priv, pub, PUBLIC_NAME))
        elif args.cmd == "pack":
            key = load_private(args.key)
            if args.image:
                if not args.platform:
                    raise PackError("--image needs --platform (e.g. esp32)")
                with open(args.image, "rb") as f:
                    blobs = [(os.path.basename(args.image), f.read())]
                data = pack(key, args.version, blobs, "image", args.platform, args.built, args.source)
            else:
                blobs = tree_files(args.build)
                data = pack(key, args.version, blobs, "files", args.platform, args.built, args.source)
            tmp = args.out + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, args.out)
            print("%s: %d files, %d bytes" % (args.out, len(blobs), len(data)))
        elif args.cmd == "verify":
            pub, _ = load_public(args.pubkey)
            with open(args.package, "rb") as f:
                m, _, _, _ = read_package(f.read(), pub, args.mpy_abi, args.platform)
            print(json.dumps({k: m[k] for k in m if k != "files"}))
            for path, size, digest in m["files"]:
                print("%8d %s %s" % (size, digest, path))
            print("OK")
        elif args.cmd == "slot":
            pub, _ = load_public(args.pubkey)
            with open(args.package, "rb") as f:
                m = write_slot(f.read(), pub, args.into, args.activate)
            print("%s: version %s, %d files" % (args.into, m["version"], len(m["files"])))
    except (PackError, OSError, ValueError) as e:
        print("otapack: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
