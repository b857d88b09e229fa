"""The UpdateFirmware engine (firmware/ota/update.py) in the MicroPython unix port (110wK heap) against real
servers on 127.0.0.1: a signed package (tools/otapack.py pack of tools/build.py's build) served over HTTP,
HTTPS (tools/pki.py certificates, verified) and FTP (pyftpdlib) is downloaded, checked and installed into the
inactive slot of a flash directory laid out as make deploy leaves a board. The probe (ota_probe.py) boots that
flash as boot.py does, so the engine runs from the slot's .mpy files; its reboot() exits the process, and the
test boots it again, as the board would."""
import hashlib
import os
import random
import re
import signal
import subprocess
import time

import pytest

import build
import otapack
import pki
from ota_servers import (MICROPYTHON, FTPServers, booted, lay_out_flash, probe_cmd, probe_env, run_probe,
                         statuses)
from ota_servers import flash, web  # noqa: F401 (fixtures shared with test_fw_management.py)

OLD, NEW = "1.0-old", "2.0-new"


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def kit(tmp_path_factory, ota_keys):
    d = tmp_path_factory.mktemp("ota_kit")
    tree, _ = build.build(os.path.join(build.ROOT, "build", "unix"))  # the session's build: nothing to compile
    (priv, pub), (other, _) = ota_keys["vendor"], ota_keys["other"]
    key, other_key = otapack.load_private(priv), otapack.load_private(other)
    blobs = otapack.tree_files(tree)
    files = d / "files"
    files.mkdir()
    new = otapack.pack(key, NEW, blobs, built="2026-01-01T00:00:00Z")
    raw_len = int.from_bytes(new[8:12], "little")
    data_at = 20 + raw_len + key.key_size // 8
    packages = {
        "new.fwpk": new,
        "tampered.fwpk": new[:-100] + bytes([new[-100] ^ 1]) + new[-99:],
        "wrong_key.fwpk": otapack.pack(other_key, NEW, blobs, built="2026-01-01T00:00:00Z"),
        "unsigned.fwpk": otapack.assemble(new[20:20 + raw_len], b"", b"\x00" * 8, blobs, scheme=0),
    }
    assert packages["unsigned.fwpk"][20 + raw_len:] == new[data_at:]
    for name, data in packages.items():
        (files / name).write_bytes(data)
    certs = pki.make_pki(str(d / "pki"))
    return {"dir": d, "tree": tree, "pub": pub, "old": otapack.pack(key, OLD, blobs, built="2026-01-01T00:00:00Z"),
            "files": files, "certs": certs, "size": len(new)}


@pytest.fixture
def ftpd(kit, tmp_path):
    s = FTPServers(kit["files"], tmp_path)
    try:
        yield s
    finally:
        s.stop()


def tree_digest(path):
    h = hashlib.sha256()
    for dirpath, dirs, names in sorted(os.walk(path)):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(dirpath, n)
            h.update(p[len(str(path)):].encode() + b"\0" + open(p, "rb").read())
    return h.hexdigest()


def slot_state(flash):
    return otapack.read_state(str(flash / "slots"))


def update(flash, url, at=None, retries=0, interval=1, *extra, timeout=180):
    at = int(time.time()) if at is None else at
    return run_probe(flash, "update", "--url", url, "--at", at, "--retries", retries, "--interval", interval, *extra,
                     timeout=timeout)


def boot_and_confirm(flash):
    """The reboot into the new slot and BootNotification Accepted: -> the probe's output."""
    rc, out = run_probe(flash, "update")
    assert rc == 0 and "Traceback" not in out, out
    return out


def check_boots(flash):
    """What slotboot picks now is a whole slot (its files match its manifest) -> (slot, version)."""
    rc, out = run_probe(flash, "boot")
    assert rc == 0 and "Traceback" not in out, out
    slot, version = booted(out)
    assert slot in ("a", "b"), out
    script = ("import slotboot\nprint('WHOLE', slotboot.verify_slot(%r, %r))\n" % (str(flash), slot))
    r = subprocess.run([str(MICROPYTHON), "-c", script],
                       cwd=str(flash), env=probe_env(flash), capture_output=True, text=True, timeout=60)
    assert "WHOLE True" in r.stdout, r.stdout + r.stderr
    return slot, version


# ---- the whole way, over each transport -----------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["http", "https", "ftp"])
def test_update_installs_reboots_and_reports_installed(kit, flash, web, ftpd, scheme):
    if scheme == "ftp":
        url = "ftp://fw:fw-pass@127.0.0.1:%d/new.fwpk" % ftpd.start()
        extra = ()
    else:
        srv, port = web.start(*((kit["certs"]["server_cert"], kit["certs"]["server_key"]) if scheme == "https"
                                else ()))
        url = "%s://localhost:%d/files/new.fwpk" % (scheme, port)
        extra = ("--ca", kit["certs"]["ca"]) if scheme == "https" else ()
    at = int(time.time()) + 3
    rc, out = update(flash, url, at, 0, 1, *extra)
    assert rc == 3 and out.rstrip().endswith("REBOOT"), out  # the board resets into the new slot
    assert booted(out) == ("a", OLD)
    assert statuses(out) == ["Downloading", "Downloaded", "Installing"], out
    assert "HOLD 1" in out and "fw-pass" not in out  # the URL's password never reaches the log
    if scheme != "ftp":
        assert srv.requests[0][2] >= at  # not before retrieveDate
    assert not (flash / "update.fwpk").exists()
    st = slot_state(flash)
    assert st["active"] == "a" and st["trial"] == "b"
    out = boot_and_confirm(flash)
    assert booted(out) == ("b", NEW)
    assert statuses(out) == ["Installed"], out
    st = slot_state(flash)
    assert st["active"] == "b" and st["trial"] is None and st["report"] is None
    assert not (flash / "update.json").exists() and not (flash / "update.json.bak").exists()
    assert check_boots(flash) == ("b", NEW)
    rc, out = run_probe(flash, "update")  # nothing owed any more: the engine is not even loaded
    assert rc == 0 and statuses(out) == [] and "IDLE" in out


def test_https_with_the_wrong_ca_is_download_failed(kit, flash, web):
    srv, port = web.start(kit["certs"]["server_cert"], kit["certs"]["server_key"])
    rc, out = update(flash, "https://127.0.0.1:%d/files/new.fwpk" % port, None, 1, 1, "--ca", kit["certs"]["other_ca"])
    assert rc == 0 and statuses(out) == ["Downloading", "DownloadFailed"], out
    assert "TLS verification failed" in out and srv.requests == []
    rc, out = update(flash, "https://127.0.0.1:%d/files/new.fwpk" % port, None, 3, 1)  # no CA at all
    assert statuses(out) == ["Downloading", "DownloadFailed"] and "needs a CA certificate" in out, out
    assert out.count("download attempt") == 1  # a configuration error: retrying cannot help


# ---- download failures ---------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["404", "refused", "truncated"])
def test_download_failed_after_the_asked_retries(kit, flash, web, what):
    srv, port = web.start()
    url = {"404": "http://127.0.0.1:%d/files/missing.fwpk" % port,
           "refused": "http://127.0.0.1:%d/files/new.fwpk" % free_port(),
           "truncated": "http://127.0.0.1:%d/truncated/new.fwpk" % port}[what]
    before = tree_digest(flash / "slots" / "a")
    t0 = time.time()
    rc, out = update(flash, url, None, 2, 1)
    assert rc == 0 and statuses(out) == ["Downloading", "DownloadFailed"], out
    assert len(re.findall(r"download attempt \d of 3 failed", out)) == 3, out
    reason = {"404": "HTTP 404 Not Found", "refused": "connection refused",
              "truncated": "body truncated at %d of %d bytes" % (kit["size"] // 2, kit["size"])}[what]
    assert "DownloadFailed: " + reason in out, out
    if what != "refused":
        times = [t for _, _, t in srv.requests]
        assert len(times) == 3 and times[2] - times[0] >= 1.9, times  # retryInterval 1 s between attempts
    assert time.time() - t0 >= 2
    assert tree_digest(flash / "slots" / "a") == before and slot_state(flash)["trial"] is None
    assert not (flash / "update.fwpk").exists() and not (flash / "update.json").exists()


# ---- bad packages ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,reason", [("tampered", "does not match its SHA-256"),
                                         ("wrong_key", "signed with key"), ("unsigned", "not signed")])
def test_bad_package_is_installation_failed_and_the_board_keeps_its_version(kit, flash, web, name, reason):
    srv, port = web.start()
    before, state_before = tree_digest(flash / "slots" / "a"), slot_state(flash)
    rc, out = update(flash, "http://127.0.0.1:%d/files/%s.fwpk" % (port, name), None, 2, 1)
    assert rc == 0 and statuses(out) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"], out
    assert "InstallationFailed: " in out and reason in out, out
    assert len(srv.requests) == 1  # the transfer worked; the package is what is wrong
    assert "HOLD" not in out and "REBOOT" not in out
    assert tree_digest(flash / "slots" / "a") == before and slot_state(flash) == state_before
    assert not (flash / "slots" / "b" / "slot.json").exists()
    assert check_boots(flash) == ("a", OLD)


# ---- installation waits for the transaction ---------------------------------------------------------------
def test_installation_waits_while_a_transaction_runs(kit, flash, web, tmp_path):
    srv, port = web.start()
    busy = tmp_path / "tx-running"
    busy.write_text("1")
    p = subprocess.Popen(probe_cmd(flash, "update", "--url", "http://127.0.0.1:%d/files/new.fwpk" % port, "--at",
                                   int(time.time()), "--busy-file", busy), cwd=str(flash), env=probe_env(flash),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in p.stdout:
            lines.append(line)
            if "installation waits for the transaction to end" in line:
                break
        time.sleep(2)  # the session goes on: nothing is installed meanwhile
        assert p.poll() is None and not (flash / "slots" / "b" / "slot.json").exists()
        assert statuses("".join(lines)) == ["Downloading", "Downloaded"] and "HOLD 1" in "".join(lines)
        busy.unlink()  # the transaction ends
        rest, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    out = "".join(lines) + rest
    assert p.returncode == 3 and statuses(out) == ["Downloading", "Downloaded", "Installing"], out


# ---- power cuts -----------------------------------------------------------------------------------------
def kill_when(flash, args, marker, delay):
    """Starts the probe, waits for a line containing marker, then `delay` s more, and kills it (SIGKILL: a
    power cut). -> its output so far."""
    p = subprocess.Popen(probe_cmd(flash, "update", *args), cwd=str(flash), env=probe_env(flash),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if marker in line:
                break
        time.sleep(delay)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        lines.append(p.stdout.read())
    return "".join(lines)


def resume_to_installed(flash):
    """Power back after a cut: the board boots and the engine carries on until Installed. -> statuses seen."""
    seen = []
    for _ in range(4):
        rc, out = run_probe(flash, "update")
        assert "Traceback" not in out, out
        seen += statuses(out)
        if rc == 0:
            break
        assert rc == 3, out
    return seen


@pytest.mark.parametrize("phase", ["download", "installation"])
def test_power_cut_during_the_update_leaves_a_board_that_boots(kit, flash, web, phase):
    srv, port = web.start(delay=0.003)
    rnd = random.Random(int(os.environ.get("OTA_SEED", "0")) or None)
    for i in range(3):
        if i:
            flash = lay_out_flash(flash.parent / ("flash%d" % i), kit["old"], kit["pub"], kit["tree"])
        if phase == "download":  # ~100 KB at 1 KB per 3 ms: a cut somewhere in the body
            args = ("--url", "http://127.0.0.1:%d/slow/new.fwpk" % port, "--at", int(time.time()), "--retries", 2,
                    "--interval", 1)
            out = kill_when(flash, args, "STATUS Downloading", rnd.uniform(0.02, 0.3))
        else:  # the slot writer slowed to 2 ms a chunk: a cut somewhere in the installation
            args = ("--url", "http://127.0.0.1:%d/files/new.fwpk" % port, "--at", int(time.time()),
                    "--slow-install", 2)
            out = kill_when(flash, args, "STATUS Installing", rnd.uniform(0.0, 0.25))
        assert "Traceback" not in out, out
        slot, version = check_boots(flash)  # the old or the new version, never neither
        assert (slot, version) in (("a", OLD), ("b", NEW)), out
        seen = resume_to_installed(flash)
        assert seen[-1] == "Installed", (seen, out)
        assert check_boots(flash) == ("b", NEW)
        print("%s cut %d: booted %s after the cut, then %s" % (phase, i, version, seen))


# ---- heap -----------------------------------------------------------------------------------------------
def test_heap_during_an_update(kit, flash, web):
    # The live heap above the engine's start (firmware.ota.update imported, idle), sampled every 2 ms with a
    # collection before each sample, over the download, the package check and the installation
    srv, port = web.start()
    rc, out = update(flash, "http://127.0.0.1:%d/files/new.fwpk" % port, None, 0, 1, "--mem")
    assert rc == 3 and statuses(out) == ["Downloading", "Downloaded", "Installing"], out
    base, peak = map(int, re.search(r"^MEM base=(\d+) peak=(\d+)$", out, re.M).groups())
    print("heap during an update of %d bytes: peak %d B live above the idle engine (base %d B)" % (
        kit["size"], peak, base))
    assert peak < 60000, out
