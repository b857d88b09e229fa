# Update packages (format: docs/ota.md), installed as a stream in small fixed chunks: the image never sits in RAM.
#   header (20 bytes, little-endian): b"FWPK", format u8 = 1, scheme u8 = 1 (RSA PKCS#1 v1.5 SHA-256),
#       signature length u16, manifest length u32, key id (8 bytes: names the signing key in error messages)
#   manifest (JSON), signature over its SHA-256, then every file's bytes in manifest order, nothing after.
# The signature is checked before a byte of the manifest is parsed; every file is hashed while it is written and
# the slot is marked complete (writer.commit) only after the last one matched. On any failure PackageError says
# why, and the running slot was never touched.
import sys
import json
import struct
import hashlib
import asyncio
from binascii import hexlify, unhexlify
from micropython import const
from firmware.ota import sign

MAGIC = b"FWPK"
FORMAT = const(1)
SCHEME_RSA_PKCS1_SHA256 = const(1)
_HDR = const(20)
_MANIFEST_MAX = const(8192)
_FILES_MAX = const(128)
_PATH_MAX = const(64)
_FILE_MAX = const(4 * 1024 * 1024)
_VERSION_MAX = const(50)  # BootNotification firmwareVersion is CiString50
CHUNK = 1024
RESERVED = ("manifest.json", "manifest.sig", "slot.json")  # the slot's own files
# .mpy architecture numbers (py/persistentcode.h), for messages only
_ARCH = ("none", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
         "xtensawin", "rv32imc", "rv64imc")


class PackageError(Exception):
    pass


def _read(src, mv):
    got = 0
    n = len(mv)
    while got < n:
        k = src.readinto(mv[got:])
        if not k:
            break
        got += k
    return got


def _arch(n):
    return _ARCH[n] if 0 <= n < len(_ARCH) else "arch %d" % n


def check_target(kind, target, abi=None, platform=None):
    """Raises PackageError unless this board can run the package (abi: sys.implementation._mpy)."""
    if not isinstance(target, dict):
        raise PackageError("manifest has no target")
    platform = platform or sys.platform
    want = target.get("platform")
    if want is not None and want != platform:
        raise PackageError("package is for %s, this board is %s" % (want, platform))
    if kind != "files":
        return
    mpy, arch, sub = target.get("mpy"), target.get("arch", 0), target.get("sub", 0)
    if mpy is None:
        return  # source files only
    abi = abi if abi is not None else getattr(sys.implementation, "_mpy", None)
    if abi is None:
        raise PackageError("this MicroPython cannot import .mpy files")
    if mpy != abi & 0xFF:
        raise PackageError("package holds .mpy version %r, this board loads version %d" % (mpy, abi & 0xFF))
    if arch and (arch != abi >> 10 or sub != (abi >> 8) & 3):
        raise PackageError("package has native code for %s (.mpy %d.%d), this board runs %s (.mpy %d.%d)" % (
            _arch(arch), mpy, sub, _arch(abi >> 10), abi & 0xFF, (abi >> 8) & 3))


def path_ok(p):
    if not isinstance(p, str) or not 0 < len(p) <= _PATH_MAX or p in RESERVED:
        return False
    for part in p.split("/"):
        if not part or part[0] == ".":  # no empty, ".", ".." or hidden component
            return False
        for c in part:
            if not (c.isalpha() or c.isdigit() or c in "_-."):
                return False
    return True


def check_manifest(m, abi=None, platform=None):
    """The manifest's file list, after checking every field (raises PackageError)."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise PackageError("manifest format %r, this firmware reads %d" % (
            m.get("format") if isinstance(m, dict) else None, FORMAT))
    v = m.get("version")
    if not isinstance(v, str) or not 0 < len(v) <= _VERSION_MAX or not all(" " <= c <= "~" for c in v):
        raise PackageError("manifest version must be 1-50 printable ASCII characters")
    kind = m.get("kind")
    if kind not in ("files", "image"):
        raise PackageError("manifest kind %r, expected files or image" % (kind,))
    check_target(kind, m.get("target"), abi, platform)
    files = m.get("files")
    if not isinstance(files, list) or not 0 < len(files) <= _FILES_MAX or (kind == "image" and len(files) != 1):
        raise PackageError("manifest lists no files, too many, or more than one image")
    seen = set()
    for e in files:
        if not isinstance(e, list) or len(e) != 3:
            raise PackageError("manifest file entries are [path, size, sha256]")
        path, size, digest = e
        if not path_ok(path) or path in seen:
            raise PackageError("manifest path %r is not allowed or repeated" % (path,))
        if not isinstance(size, int) or not 0 <= size <= _FILE_MAX:
            raise PackageError("%s: size %r out of range" % (path, size))
        try:
            ok = isinstance(digest, str) and len(digest) == 64 and hexlify(unhexlify(digest)).decode() == digest
        except ValueError:
            ok = False
        if not ok:
            raise PackageError("%s: the SHA-256 must be 64 lower-case hex digits" % path)
        seen.add(path)
    return files


async def install(src, key, writer=None, abi=None, platform=None):
    """Reads a package from src (anything with readinto, e.g. the downloaded file opened "rb") and writes its
    files through writer (firmware/ota/slots.py; None only checks). Returns the manifest; raises PackageError.
    Yields to the asyncio loop after every chunk."""
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    if _read(src, mv[:_HDR]) != _HDR or buf[:4] != MAGIC:
        raise PackageError("not an update package (no FWPK header)")
    fmt, scheme, siglen, mlen = struct.unpack_from("<BBHI", buf, 4)
    kid = bytes(buf[12:_HDR])
    if fmt != FORMAT:
        raise PackageError("package format %d, this firmware reads format %d" % (fmt, FORMAT))
    if scheme == 0 or siglen == 0:
        raise PackageError("package is not signed")
    if scheme != SCHEME_RSA_PKCS1_SHA256:
        raise PackageError("signature scheme %d is not supported" % scheme)
    if siglen != key.size:
        raise PackageError("signature of %d bytes, the board's key (id %s) makes %d: signed with another key %s" % (
            siglen, key.id_hex(), key.size, hexlify(kid).decode()))
    if not 0 < mlen <= _MANIFEST_MAX:
        raise PackageError("manifest of %d bytes (at most %d)" % (mlen, _MANIFEST_MAX))
    raw = bytearray(mlen)
    sig = bytearray(siglen)
    if _read(src, memoryview(raw)) != mlen or _read(src, memoryview(sig)) != siglen:
        raise PackageError("package truncated before the end of its signature")
    if not sign.verify(key, hashlib.sha256(raw).digest(), sig):
        if kid != key.id:
            raise PackageError("signed with key %s, this board trusts key %s" % (
                hexlify(kid).decode(), key.id_hex()))
        raise PackageError("signature does not match the manifest (tampered or corrupt package)")
    try:
        m = json.loads(raw)
    except ValueError:
        raise PackageError("manifest is not JSON")  # signed but broken: a packing tool bug
    files = check_manifest(m, abi, platform)
    try:
        if writer:
            writer.begin(m, raw, sig)
        raw = sig = None
        for path, size, digest in files:
            if writer:
                writer.open(path, size)
            h = hashlib.sha256()
            left = size
            while left:
                n = src.readinto(mv[:min(left, CHUNK)])
                if not n:
                    raise PackageError("package truncated in %s" % path)
                h.update(mv[:n])
                if writer:
                    writer.write(mv[:n])
                left -= n
                await asyncio.sleep_ms(0)
            if writer:
                writer.close()
            if hexlify(h.digest()).decode() != digest:
                raise PackageError("%s does not match its SHA-256 (tampered or corrupt package)" % path)
        if src.readinto(mv[:1]):
            raise PackageError("package has bytes after its last file")
        if writer:
            writer.commit(m)
    except OSError as e:
        if writer:
            writer.abort()
        raise PackageError("flash error while installing: %s" % (e,))
    except Exception:
        if writer:
            writer.abort()
        raise
    return m
