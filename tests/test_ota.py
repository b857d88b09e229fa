"""Signed update packages: tools/otapack.py on CPython, and the board's side (firmware/ota/) in MicroPython
against packages and signatures that otapack and the `cryptography` package made.

The MicroPython half is tests/mpy/ota_vectors.py (not a test_* file: it needs the vectors built here, whose
directory it reads from the OTA_VECTORS environment variable)."""
import json
import os
import re
import shutil
import struct
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import build
import otapack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
PY = os.path.join(ROOT, ".venv", "bin", "python")
SHA256_INFO = bytes.fromhex("3031300d060960864801650304020105000420")  # RFC 8017 §9.2 note 1


def run_otapack(*args):
    r = subprocess.run([PY, os.path.join(ROOT, "tools", "otapack.py"), *args], capture_output=True, text=True,
                       timeout=120)
    return r.returncode, r.stdout + r.stderr


def raw_sign(priv, em):
    """RSA with the private exponent on an encoded message of our choosing (what a forger would need)."""
    nums = priv.private_numbers()
    n = nums.public_numbers.n
    k = (n.bit_length() + 7) // 8
    return pow(int.from_bytes(em, "big"), nums.d, n).to_bytes(k, "big")


def em_for(k, digest, pad=None, info=SHA256_INFO, tail=b"", bt=b"\x01"):
    body = b"\x00" + info + digest + tail
    pad = k - 2 - len(body) if pad is None else pad
    em = b"\x00" + bt + b"\xff" * pad + body
    return em + b"\x00" * (k - len(em)) if len(em) < k else em


def flip(data, pos):
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory, ota_keys):
    d = tmp_path_factory.mktemp("ota_vectors")
    # a copy of the session's build (conftest builds it before the workers start): compiling a tree of its own
    # in every worker that runs one of these tests cost half a minute each; the tests may write into the copy
    shared, _ = build.build(os.path.join(ROOT, "build", "unix"))
    tree = str(d / "build")
    shutil.copytree(shared, tree, symlinks=True)
    for name in ("vendor", "other"):  # the run's keys (conftest), where the board-side vectors look for them
        shutil.copytree(os.path.dirname(ota_keys[name][0]), str(d / name))
    priv_path, pub_path = (str(d / "vendor" / os.path.basename(p)) for p in ota_keys["vendor"])
    other_priv = str(d / "other" / otapack.PRIVATE_NAME)
    key, other = otapack.load_private(priv_path), otapack.load_private(other_priv)
    blobs = otapack.tree_files(tree)
    good = otapack.pack(key, "9.9.9-test", blobs, built="2026-01-01T00:00:00Z")
    raw_len = struct.unpack_from("<I", good, 8)[0]
    siglen = key.key_size // 8
    data_at = 20 + raw_len + siglen
    files = {
        "good": good,
        "tampered_manifest": good.replace(b'"version":"9.9.9-test"', b'"version":"9.9.9-evil"'),
        "tampered_file": flip(good, len(good) - 100),  # a byte of the last file
        "truncated_header": good[:10],
        "truncated_manifest": good[:20 + raw_len // 2],
        "truncated_signature": good[:20 + raw_len + 10],
        "truncated_file": good[:data_at + (len(good) - data_at) // 2],
        "truncated_last_byte": good[:-1],
        "trailing": good + b"\x00",
        "unsigned": struct.pack("<4sBBHI8s", b"FWPK", 1, 0, 0, raw_len, b"\x00" * 8) + good[20:20 + raw_len]
        + good[data_at:],
        "zero_signature": good[:20 + raw_len] + b"\x00" * siglen + good[data_at:],
        "wrong_key": otapack.pack(other, "9.9.9-test", blobs, built="2026-01-01T00:00:00Z"),
        "not_a_package": b"\x7fELF" + b"\x00" * 100,
    }
    # a module with native code for the ESP32: the unix port (x64) must refuse it
    src = d / "native.py"
    src.write_text("import micropython\n@micropython.native\ndef f(x):\n    return x + 1\n")
    subprocess.run([build.mpy_cross(), "-march=xtensawin", "-o", str(d / "native.mpy"), str(src)], check=True)
    files["native"] = otapack.pack(key, "9.9.9-xtensa", [("lib/native.mpy", (d / "native.mpy").read_bytes())])
    image = bytes((i * 7 + 3) & 0xFF for i in range(10000))
    files["image"] = otapack.pack(key, "3.0-image", [("micropython.bin", image)], "image", "esp32")
    (d / "image.bin").write_bytes(image)
    for name, data in files.items():
        (d / (name + ".fwpk")).write_bytes(data)
    # signatures: a good one, and forgeries that a loose PKCS#1 v1.5 parser would take
    import hashlib
    digest = hashlib.sha256(b"manifest").digest()
    k = siglen
    sig = {"digest": digest.hex(), "good": raw_sign(key, em_for(k, digest)).hex(), "forged": {
        "garbage_after_hash": raw_sign(key, em_for(k, digest, pad=8, tail=b"\x42" * 200)).hex(),
        "short_padding": raw_sign(key, em_for(k, digest, pad=7, tail=b"\x00" * (k - 2 - 7 - 52))).hex(),
        "no_null_params": raw_sign(key, em_for(k, digest, info=bytes.fromhex(
            "302f300b0609608648016503040201") + b"\x04\x20")).hex(),
        "block_type_2": raw_sign(key, em_for(k, digest, bt=b"\x02")).hex(),
        "other_hash": raw_sign(key, em_for(k, hashlib.sha256(b"other").digest())).hex(),
    }}
    (d / "sign.json").write_text(json.dumps(sig))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (d / "small_key.json").write_text(json.dumps(otapack.public_json(small.public_key())))
    # a flash as `otapack slot --activate` (make deploy) leaves it
    rc, out = run_otapack("slot", str(d / "good.fwpk"), "--pubkey", pub_path, "--into",
                          str(d / "flash" / "slots" / "a"), "--activate")
    assert rc == 0, out
    return {"dir": d, "tree": tree, "pub": pub_path, "key": key, "good": good, "blobs": blobs}


def run_vectors(vectors, only=None):
    env = dict(os.environ, OTA_VECTORS=str(vectors["dir"]), OTA_TREE=vectors["tree"],
               MICROPYPATH=".frozen:%s:%s" % (ROOT, os.path.join(ROOT, "tests", "mpy")))
    args = [MICROPYTHON, "-X", "heapsize=110wK", os.path.join(ROOT, "tests", "mpy", "ota_vectors.py")]
    r = subprocess.run(args + ([only] if only else []), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    return r.returncode, r.stdout + r.stderr


def test_board_side_against_the_vectors(vectors):
    rc, out = run_vectors(vectors)
    print(out)
    summary = re.search(r"^(\d+) passed, (\d+) failed$", out, re.M)
    assert rc == 0 and summary and summary.group(2) == "0", out
    assert int(summary.group(1)) >= 15


# ---- tools/otapack.py ---------------------------------------------------------------------------------------
def test_verify_accepts_the_package_and_lists_every_file(vectors):
    rc, out = run_otapack("verify", str(vectors["dir"] / "good.fwpk"), "--pubkey", vectors["pub"])
    assert rc == 0, out
    assert '"version": "9.9.9-test"' in out and out.rstrip().endswith("OK")
    for path, data in vectors["blobs"]:
        assert path in out
    assert not any(p.startswith(("main.py", "boot.py", "slotboot")) for p, _ in vectors["blobs"])
    assert {p.split("/")[0] for p, _ in vectors["blobs"]} == set(build.SLOT_DIRS)


@pytest.mark.parametrize("name,reason", [
    ("tampered_manifest", "signature does not match the manifest"),
    ("tampered_file", "does not match its SHA-256"),
    ("truncated_header", "no FWPK header"),
    ("truncated_signature", "truncated before the end of its signature"),
    ("truncated_file", "truncated in"),
    ("trailing", "bytes after its last file"),
    ("unsigned", "not signed"),
    ("zero_signature", "signature does not match"),
    ("wrong_key", "signed with key"),
])
def test_verify_refuses_with_the_reason(vectors, name, reason):
    rc, out = run_otapack("verify", str(vectors["dir"] / (name + ".fwpk")), "--pubkey", vectors["pub"])
    assert rc == 1 and reason in out, out


def test_verify_checks_the_boards_abi(vectors):
    native = str(vectors["dir"] / "native.fwpk")
    x64_abi = 6 | 3 << 8 | 2 << 10   # sys.implementation._mpy of this unix port
    esp32_abi = 6 | 3 << 8 | 10 << 10
    rc, out = run_otapack("verify", native, "--pubkey", vectors["pub"], "--mpy-abi", str(x64_abi))
    assert rc == 1 and "native code for xtensawin" in out, out
    rc, out = run_otapack("verify", native, "--pubkey", vectors["pub"], "--mpy-abi", str(esp32_abi))
    assert rc == 0, out
    rc, out = run_otapack("verify", str(vectors["dir"] / "good.fwpk"), "--pubkey", vectors["pub"],
                          "--mpy-abi", str(5 | 2 << 10))
    assert rc == 1 and ".mpy version 6" in out, out


def test_pack_cli_and_reproducible_manifest(vectors, tmp_path):
    key = str(vectors["dir"] / "vendor" / otapack.PRIVATE_NAME)
    outs = []
    for i in range(2):
        out = tmp_path / ("p%d.fwpk" % i)
        rc, text = run_otapack("pack", "--key", key, "--version", "1.2.3", "--build", vectors["tree"],
                               "--out", str(out), "--built", "2026-01-01T00:00:00Z", "--source", "abc123")
        assert rc == 0 and "files" in text, text
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]  # PKCS#1 v1.5 is deterministic: the same tree and key give the same package
    m, _, _, _ = otapack.read_package(outs[0], otapack.load_public(vectors["pub"])[0])
    assert m["version"] == "1.2.3" and m["source"] == "abc123" and m["kind"] == "files"
    assert m["target"] == {"mpy": 6, "arch": 0, "sub": 0}


def test_pack_refuses_bad_input(vectors, tmp_path):
    key = vectors["key"]
    with pytest.raises(otapack.PackError, match="version"):
        otapack.pack(key, "x" * 51, vectors["blobs"])
    with pytest.raises(otapack.PackError, match="not allowed"):
        otapack.pack(key, "1", [("../evil.mpy", b"M\x06\x00\x1f")])
    with pytest.raises(otapack.PackError, match="not allowed"):
        otapack.pack(key, "1", [("slot.json", b"{}")])
    with pytest.raises(otapack.PackError, match="mix"):
        otapack.pack(key, "1", [("a.mpy", b"M\x06\x00\x1f"), ("b.mpy", b"M\x05\x00\x1f")])
    with pytest.raises(otapack.PackError, match="tools/build.py"):
        otapack.tree_files(str(tmp_path))
    rc, out = run_otapack("keygen", "--out", str(vectors["dir"] / "vendor"))
    assert rc == 1 and "exists" in out  # never overwrites the key boards trust
    rc, out = run_otapack("pack", "--key", str(vectors["dir"] / "vendor" / otapack.PRIVATE_NAME), "--version",
                          "1", "--out", str(tmp_path / "i.fwpk"), "--image", str(vectors["dir"] / "image.bin"))
    assert rc == 1 and "--platform" in out


def test_keygen_writes_a_private_key_only_its_owner_reads(ota_keys):
    priv_path, pub_path = ota_keys["vendor"]  # as otapack.keygen wrote them (conftest)
    assert os.stat(priv_path).st_mode & 0o077 == 0
    with open(pub_path) as f:
        text = f.read()
    pub = json.loads(text)
    assert pub["alg"] == "RS256" and pub["e"] == 65537 and pub["bits"] == 3072 and len(pub["kid"]) == 16
    assert "PRIVATE" not in text


def test_slot_command_writes_the_boards_layout(vectors):
    slot = vectors["dir"] / "flash" / "slots" / "a"
    for path, data in vectors["blobs"]:
        assert (slot / path).read_bytes() == data
    assert otapack.read_framed(str(slot / "slot.json"))["version"] == "9.9.9-test"
    st = otapack.read_state(str(slot.parent))
    assert st["active"] == "a" and st["trial"] is None
    bad = vectors["dir"] / "flash2" / "slots" / "b"
    rc, out = run_otapack("slot", str(vectors["dir"] / "tampered_file.fwpk"), "--pubkey", vectors["pub"],
                          "--into", str(bad))
    assert rc == 1 and not bad.exists()
    shutil.rmtree(vectors["dir"] / "flash2", ignore_errors=True)


# ---- boot.py and main.py on the unix port ----------------------------------------------------------------------
def run_mcu(tree, code):
    env = dict(os.environ, MICROPYPATH=".frozen:%s" % tree)
    r = subprocess.run([MICROPYTHON, "-X", "heapsize=110wK", "-c", code], cwd=tree, env=env, capture_output=True,
                       text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_boot_py_without_slots_changes_nothing(vectors):
    tree = vectors["tree"]
    rc, out = run_mcu(tree, "import sys\np = list(sys.path)\nexec(open('boot.py').read())\n"
                            "print('same path', sys.path == p, 'resident', 'slotboot' in sys.modules)")
    assert rc == 0 and "same path True resident False" in out, out


def test_main_py_without_slots_fails_as_before(vectors):
    # no --board: hal.unix refuses, and the exception leaves main.py unchanged (the sim restarts the MCU)
    rc, out = run_mcu(vectors["tree"], "exec(open('main.py').read())")
    assert rc == 1 and "ValueError: hal.unix needs --board" in out, out


def test_main_py_crash_on_trial_rolls_back(vectors, tmp_path):
    # slot a confirmed, slot b (the same package) on trial; the firmware in b raises at start (no --board here)
    flash = tmp_path / "flash"
    for name in ("a", "b"):
        rc, out = run_otapack("slot", str(vectors["dir"] / "good.fwpk"), "--pubkey", vectors["pub"],
                              "--into", str(flash / "slots" / name), *(["--activate"] if name == "a" else []))
        assert rc == 0, out
    st = otapack.read_state(str(flash / "slots"))
    st.update(gen=st["gen"] + 1, trial="b", boots=0)
    (flash / "slots" / ("state.%d" % (st["gen"] % 2))).write_bytes(otapack.framed(st))
    boot = "import slotboot\nprint('slot', slotboot.select(%r))\n" % str(flash)
    rc, out = run_mcu(vectors["tree"], boot + "exec(open('main.py').read())")
    assert rc == 1 and "slot b" in out and "ValueError: hal.unix needs --board" in out, out
    st = otapack.read_state(str(flash / "slots"))
    assert st["trial"] is None and st["active"] == "a"
    assert st["report"][:2] == ["InstallationFailed", "9.9.9-test"] and "ValueError" in st["report"][2]
    rc, out = run_mcu(vectors["tree"], boot)
    assert rc == 0 and "slot a" in out, out
