# firmware/ota/sign.py and package.py against signatures and packages made on CPython (tools/otapack.py and the
# `cryptography` package) by tests/test_ota.py, which passes their directory in OTA_VECTORS and the firmware
# build they were packed from in OTA_TREE. Not a test_* file: it cannot run without them.
import os
import sys
import gc
import json
import time
import asyncio
from binascii import unhexlify
import tinytest
import fake_esp32

sys.modules["esp32"] = fake_esp32
import slotboot
from firmware.ota import sign, package, slots, partition

V = os.getenv("OTA_VECTORS")
TREE = os.getenv("OTA_TREE")
KEY = sign.load_key(sign.key_path(V + "/vendor/"))  # otapack keygen named it as the board expects
_PATH0 = list(sys.path)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _install(name, writer=None, **kw):
    with open("%s/%s.fwpk" % (V, name), "rb") as f:
        return asyncio.run(package.install(f, KEY, writer, **kw))


def _boot(root):
    sys.path[:] = _PATH0
    return slotboot.select(root)


def _refused(name, reason, writer=None, **kw):
    e = tinytest.raises(package.PackageError, lambda: _install(name, writer, **kw))
    assert reason in str(e), (name, str(e))
    return str(e)


# ---- signatures ----------------------------------------------------------------------------------------------
SIG = json.loads(_read(V + "/sign.json"))
DIGEST = unhexlify(SIG["digest"])


def test_good_signature_verifies():
    assert sign.verify(KEY, DIGEST, unhexlify(SIG["good"]))


def test_other_digest_or_flipped_bit_fails():
    good = bytearray(unhexlify(SIG["good"]))
    assert not sign.verify(KEY, bytes(32), good)
    good[100] ^= 1
    assert not sign.verify(KEY, DIGEST, good)


def test_out_of_range_and_wrong_length_fail():
    n = KEY.n.to_bytes(KEY.size, "big")
    assert not sign.verify(KEY, DIGEST, n)  # s = n
    assert not sign.verify(KEY, DIGEST, unhexlify(SIG["good"])[1:])
    assert not sign.verify(KEY, DIGEST, b"")
    assert not sign.verify(KEY, DIGEST[:31], unhexlify(SIG["good"]))


def test_forged_encodings_fail():
    # each decrypts to a block a loose parser (find 00 01 ff.. 00, read the DigestInfo, take the hash) accepts
    for name, sig in SIG["forged"].items():
        assert not sign.verify(KEY, DIGEST, unhexlify(sig)), name


def test_key_files():
    assert KEY.size == 384 and KEY.e == 65537
    assert KEY.id_hex() == json.loads(_read(V + "/vendor/otakey.json"))["kid"]
    e = tinytest.raises(sign.BadKey, sign.load_key, V + "/small_key.json")
    assert "1024 bits" in str(e)
    assert "no update key" in str(tinytest.raises(sign.BadKey, sign.load_key, V + "/missing.json"))
    assert "not JSON" in str(tinytest.raises(sign.BadKey, sign.load_key, V + "/good.fwpk"))
    assert "RS256" in str(tinytest.raises(sign.BadKey, sign.load_key, V + "/sign.json"))


# ---- packages ------------------------------------------------------------------------------------------------
def test_check_only_reads_the_whole_package():
    m = _install("good")
    assert m["version"] == "9.9.9-test" and m["kind"] == "files" and len(m["files"]) > 20


def _same_file(a, b):
    # compared in small pieces: a whole file needs one contiguous block, which a fragmented 110wK heap may lack
    buf_a, buf_b = bytearray(512), bytearray(512)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            na, nb = fa.readinto(buf_a), fb.readinto(buf_b)
            if na != nb or buf_a[:na] != buf_b[:nb]:
                return False
            if not na:
                return True


def _compare_tree(slot_dir, m):
    for path, size, _ in m["files"]:
        assert _same_file(slot_dir + "/" + path, TREE + "/" + path), path


def test_install_writes_the_inactive_slot_and_it_boots():
    root = tinytest.tempdir("ota")
    s = slots.FileSlots(root)
    w = s.writer()
    m = _install("good", w)
    assert w.name == "a"
    _compare_tree(root + "/slots/a", m)
    assert slotboot.slot_info(root, "a")["version"] == "9.9.9-test"
    assert slotboot.verify_slot(root, "a")
    s.begin_trial(w.name)
    assert _boot(root) == "a" and sys.path[0] == root + "/slots/a"
    assert s.confirm() and s.version("x") == "9.9.9-test"
    assert slots.firmware_version("0.1.0", root) == "9.9.9-test"


def _deployed():
    # a board running slot a (the good package), confirmed
    root = tinytest.tempdir("ota")
    s = slots.FileSlots(root)
    w = s.writer()
    _install("good", w)
    s.begin_trial(w.name)
    _boot(root)
    s.confirm()
    s.clear_report()
    return root, s


def _bad_package_changes_nothing(name, reason, **kw):
    root, s = _deployed()
    gen = slotboot.read_state(root)["gen"]
    w = s.writer()
    assert w.name == "b"
    msg = _refused(name, reason, w, **kw)
    assert slotboot.read_state(root)["gen"] == gen  # no flip
    assert slotboot.slot_info(root, "b") is None  # b is not complete, so never selected
    tinytest.raises(slots.SlotError, s.begin_trial, "b")
    assert slotboot.verify_slot(root, "a")
    assert _boot(root) == "a"
    return msg


def test_tampered_manifest_is_refused():
    _bad_package_changes_nothing("tampered_manifest", "signature does not match the manifest")


def test_tampered_file_is_refused_after_writing_part_of_the_slot():
    msg = _bad_package_changes_nothing("tampered_file", "does not match its SHA-256")
    print("  ", msg)


def test_truncated_packages_are_refused():
    for name, reason in (("truncated_header", "no FWPK header"),
                         ("truncated_manifest", "truncated before the end of its signature"),
                         ("truncated_signature", "truncated before the end of its signature"),
                         ("truncated_file", "package truncated in"),
                         ("truncated_last_byte", "package truncated in")):
        _bad_package_changes_nothing(name, reason)


def test_unsigned_and_wrongly_signed_are_refused():
    _bad_package_changes_nothing("unsigned", "not signed")
    _bad_package_changes_nothing("zero_signature", "signature does not match")
    msg = _bad_package_changes_nothing("wrong_key", "signed with key")
    assert KEY.id_hex() in msg
    _bad_package_changes_nothing("not_a_package", "no FWPK header")
    _bad_package_changes_nothing("trailing", "bytes after its last file")


def test_wrong_abi_is_refused():
    # native code for the ESP32 on this x64 port; and a board whose MicroPython loads another .mpy version
    _bad_package_changes_nothing("native", "native code for xtensawin")
    _bad_package_changes_nothing("good", ".mpy version 6, this board loads version 5", abi=5 | 2 << 10)
    assert _install("native", abi=6 | 3 << 8 | 10 << 10)["version"] == "9.9.9-xtensa"  # an ESP32 takes it


def test_image_package_goes_to_the_next_partition():
    fake_esp32.setup("ota_0", size=12 * 1024)
    root = tinytest.tempdir("ota")
    s = partition.PartitionSlots(root, fake_esp32)
    _refused("image", "package is for esp32, this board is linux", s.writer())
    w = s.writer()
    m = _install("image", w, platform="esp32")
    assert w.name == "ota_1" and m["kind"] == "image"
    image = _read(V + "/image.bin")
    assert bytes(fake_esp32.flash["ota_1"][:len(image)]) == image
    s.begin_trial("ota_1")
    assert ("set_boot", "ota_1") in fake_esp32.calls
    # a files package is refused by a whole-image board before anything is written
    del fake_esp32.calls[:]
    root2 = tinytest.tempdir("ota")
    s2 = partition.PartitionSlots(root2, fake_esp32)
    e = tinytest.raises(slots.SlotError, lambda: _install("good", s2.writer()))
    assert "whole firmware image" in str(e)
    assert not [c for c in fake_esp32.calls if c[0] in ("erase", "writeblocks", "set_boot")]


def test_deployed_flash_from_otapack_slot_boots():
    root = V + "/flash"
    assert _boot(root) == "a"
    assert slotboot.verify_slot(root, "a")
    assert slots.firmware_version("0.1.0", root) == "9.9.9-test"


# ---- measurements (printed for docs/decisions.md; not asserted: the machine is shared) -------------------------
def test_measure_verify_and_install():
    import hashlib

    raw = b"x" * 3000
    digest = hashlib.sha256(raw).digest()
    runs = []
    gc.collect()
    before = gc.mem_alloc()
    for _ in range(20):
        t = time.ticks_us()
        sign.verify(KEY, DIGEST, unhexlify(SIG["good"]))
        runs.append(time.ticks_diff(time.ticks_us(), t))
    runs.sort()
    gc.collect()
    print("   verify RSA-3072: median %d us, min %d us (x200: %d ms); heap kept %d B" % (
        runs[10], runs[0], runs[10] * 200 // 1000, gc.mem_alloc() - before))
    root = tinytest.tempdir("ota")
    s = slots.FileSlots(root)
    gc.collect()
    base = gc.mem_alloc()
    t = time.ticks_ms()
    m = _install("good", s.writer())
    dt = time.ticks_diff(time.ticks_ms(), t)
    gc.collect()
    size = os.stat(V + "/good.fwpk")[6]
    print("   install %d B package (%d files): %d ms; heap after %d B" % (size, len(m["files"]), dt,
                                                                     gc.mem_alloc() - base))


tinytest.run(globals())
