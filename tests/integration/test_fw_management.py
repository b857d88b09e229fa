"""The FirmwareManagement profile end to end: UpdateFirmware and GetDiagnostics sent by the Central System
(tools/csms.py) to the firmware on the virtual board (tools/sim.py), with real file servers on 127.0.0.1
(ota_servers.py: Python's http.server, pyftpdlib). The update tests boot the board from its flash the way a board
does (sim --flash-code: boot.py, slotboot picks slots/a or slots/b, main.py), the flash laid out as make deploy
leaves it with version OLD in slot a; an installed update really reboots the MCU into slot b, and BootNotification's
firmwareVersion says which one runs; a version that raises as it starts is given up and the old one boots again.
Each test asserts the exact FirmwareStatusNotification / DiagnosticsStatusNotification sequence the Central System
receives."""
import datetime
import os
import pathlib
import re
import time

import pytest

import build
import otapack
import pki
from conftest import ROOT, SimProc, free_port, process_pool, wait_until
from core_helpers import CP, board_until, start_charging
from ota_servers import FTPServers, HTTPServers
from ota_servers import flash, web  # noqa: F401 (fixtures shared with test_ota_update.py)

OLD, NEW, BROKEN, HANGS, SHORT = "1.0-old", "2.0-new", "2.1-broken", "2.2-hangs", "2.3-short-bound"
PAD = 3 << 20  # bytes of data in the padded package (the power cut during its installation)
BOUND_S = 5    # the short-bound version's time to reach the Central System
SECRET = "Cp-Pa55w0rd-17"
# The code runs from the slot's .mpy files, all of it in the heap (a board runs it frozen or from ROMFS, README):
# 110wK holds the charger but leaves less than the update engine asks for (firmware/ota/update.py HEAP_FREE).
FLASH_HEAP = "200wK"


class FlashSim(SimProc):
    """tools/sim.py --flash-code: the MCU boots the state directory as a board boots its flash."""

    def argv(self):
        return super().argv() + ["--flash-code"]


@pytest.fixture(scope="module")
def kit(tmp_path_factory, ota_keys):
    # One build, one vendor key and every package the tests serve, made once for the module
    d = tmp_path_factory.mktemp("fw_kit")
    tree, _ = build.build(os.path.join(ROOT, "build", "unix"))  # the session's build: nothing to compile
    (priv, pub), (other, _) = ota_keys["vendor"], ota_keys["other"]
    key = otapack.load_private(priv)
    blobs = otapack.tree_files(tree)
    files = d / "files"
    files.mkdir()
    built = "2026-01-01T00:00:00Z"
    new = otapack.pack(key, NEW, blobs, built=built)
    raw_len = int.from_bytes(new[8:12], "little")
    (files / "new.fwpk").write_bytes(new)
    (files / "tampered.fwpk").write_bytes(new[:-100] + bytes([new[-100] ^ 1]) + new[-99:])
    (files / "wrong_key.fwpk").write_bytes(otapack.pack(otapack.load_private(other), NEW, blobs, built=built))
    (files / "unsigned.fwpk").write_bytes(otapack.assemble(new[20:20 + raw_len], b"", b"\x00" * 8, blobs, scheme=0))
    # a version with a large data file: its installation lasts long enough for a power cut to fall inside it
    padded = blobs + [("pad.bin", os.urandom(PAD))]
    (files / "padded.fwpk").write_bytes(otapack.pack(key, NEW, padded, built=built))

    def variant(version, rel, source):
        # a well-signed version with one module replaced
        src = d / ("%s.py" % version)
        src.write_text(source)
        out = d / ("%s.mpy" % version)
        build._compile(str(src), rel, str(out), None)
        mpy = rel[:-3] + ".mpy"
        assert any(p == mpy for p, _ in blobs), mpy
        return otapack.pack(key, version, [(p, out.read_bytes() if p == mpy else b) for p, b in blobs], built=built)

    # an application that raises as it starts (a bug that slipped through)
    (files / "broken.fwpk").write_bytes(variant(
        BROKEN, "firmware/app.py", "raise RuntimeError('version %s is broken on purpose')\n" % BROKEN))
    # an application that arms the watchdog and hangs before it reaches the Central System. Its watchdog timeout
    # is 1 s instead of hal/unix.py's 8 s, so that the three trial boots take 3 s, not 24 s.
    (files / "hangs.fwpk").write_bytes(variant(HANGS, "firmware/app.py", (
        "def run(board):\n"
        "    print('version %s hangs on purpose')\n"
        "    board._sock.send(b'{\"wdt\":1000}\\n')\n"
        "    while True:\n"
        "        pass\n") % HANGS))
    # the unchanged firmware, but its trial bound (firmware/ota/slots.py TRIAL_DEADLINE_MS) is BOUND_S, not 10 min
    with open(os.path.join(ROOT, "firmware", "ota", "slots.py")) as f:
        slots_src = f.read()
    short = slots_src.replace("TRIAL_DEADLINE_MS = const(600000)", "TRIAL_DEADLINE_MS = const(%d)" % (BOUND_S * 1000))
    assert short != slots_src
    (files / "short_bound.fwpk").write_bytes(variant(SHORT, "firmware/ota/slots.py", short))
    # TLS: a CA, a server certificate of it for 127.0.0.1 and localhost, and one for another host name
    ca_cert, ca_key = pki.make_ca("OTA Test Root CA")
    certs = {"ca": pki._write(str(d / "ca.pem"), pki._cert_pem(ca_cert))}
    for name, hosts in (("server", ("127.0.0.1", "localhost")), ("elsewhere", ("files.example.net",))):
        cert, ckey = pki.make_server_cert(ca_cert, ca_key, hosts)
        certs[name] = (pki._write(str(d / (name + ".pem")), pki._cert_pem(cert)),
                       pki._write(str(d / (name + ".key")), pki._key_pem(ckey)))
    return {"tree": tree, "pub": pub, "old": otapack.pack(key, OLD, blobs, built=built), "files": files,
            "certs": certs, "size": len(new), "padded_size": len(padded)}


@pytest.fixture
def flash_sim(request):
    with process_pool(request) as start:
        yield lambda csms_url, state_dir, **kwargs: start(
            FlashSim(csms_url, state_dir=str(state_dir), heap=FLASH_HEAP, **kwargs))


def iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fw_statuses(csms, since=0):
    return [p["status"] for p in csms.calls("FirmwareStatusNotification", cp=CP, since=since)]


def diag_statuses(csms, since=0):
    return [p["status"] for p in csms.calls("DiagnosticsStatusNotification", cp=CP, since=since)]


def boots(csms):
    return [p["firmwareVersion"] for p in csms.calls("BootNotification", cp=CP)]


def trigger(csms, what):
    """TriggerMessage(what) -> the status of the notification it brings."""
    mark = len(csms.messages())
    assert csms.call(CP, "TriggerMessage", {"requestedMessage": what}) == {"status": "Accepted"}
    return csms.wait_for(what, cp=CP, since=mark, timeout=10)["status"]


def booted(csms_factory, flash_sim, flash):
    csms = csms_factory()
    sim = flash_sim(csms.url, flash)
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["connectorId"] == 1, timeout=60)
    assert boots(csms) == [OLD]  # the version in slot a's manifest
    return csms, sim


def slot_state(flash):
    return otapack.read_state(str(flash / "slots"))


# ---- UpdateFirmware -------------------------------------------------------------------------------------
def test_update_over_http_reboots_into_the_new_version_and_reports_installed(csms_factory, flash_sim, flash, web):
    csms, sim = booted(csms_factory, flash_sim, flash)
    srv, port = web.start()
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"  # nothing runs
    at = int(time.time()) + 4
    assert csms.call(CP, "UpdateFirmware", {"location": "http://127.0.0.1:%d/files/new.fwpk" % port,
                                            "retrieveDate": iso(at), "retries": 1, "retryInterval": 1}) == {}
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"  # waiting for retrieveDate: no 1.6 status for it
    assert srv.requests == []
    csms.wait_for("FirmwareStatusNotification", cp=CP, where=lambda p: p["status"] == "Installed", timeout=120)
    assert fw_statuses(csms) == ["Idle", "Idle", "Downloading", "Downloaded", "Installing", "Installed"]
    assert boots(csms) == [OLD, NEW]  # one reboot, into the new version
    assert [r[0] for r in srv.requests] == ["GET"] and srv.requests[0][2] >= at  # not before retrieveDate
    st = slot_state(flash)
    assert st["active"] == "b" and st["trial"] is None  # confirmed at Accepted
    assert not (flash / "update.fwpk").exists()
    # forgotten once the Central System answered the Installed (a moment after it logged it)
    wait_until(lambda: slot_state(flash)["report"] is None and not (flash / "update.json").exists(), 10,
               msg="the report cleared and update.json removed once Installed is answered")
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"  # the update is over
    # a power cut now boots the new version again: the trial was confirmed
    sim.cmd({"cmd": "power", "on": False})
    sim.cmd({"cmd": "power", "on": True})
    csms.wait_for("BootNotification", cp=CP, count=3, timeout=60)
    assert boots(csms) == [OLD, NEW, NEW] and fw_statuses(csms)[-1] == "Idle"


def test_download_404_is_download_failed_after_the_asked_retries(csms_factory, flash_sim, flash, web):
    csms, sim = booted(csms_factory, flash_sim, flash)
    srv, port = web.start()
    with pytest.raises(AssertionError, match="PropertyConstraintViolation"):  # a location no client can use
        csms.call(CP, "UpdateFirmware", {"location": "gopher://127.0.0.1/new.fwpk", "retrieveDate": iso(time.time())})
    assert csms.call(CP, "UpdateFirmware", {"location": "http://127.0.0.1:%d/files/missing.fwpk" % port,
                                            "retrieveDate": iso(time.time()), "retries": 2, "retryInterval": 1}) == {}
    csms.wait_for("FirmwareStatusNotification", cp=CP, where=lambda p: p["status"] == "DownloadFailed", timeout=60)
    assert fw_statuses(csms) == ["Downloading", "DownloadFailed"]
    times = [t for _, _, t in srv.requests]
    assert len(times) == 3 and times[2] - times[0] >= 1.9, times  # 1 + retries attempts, retryInterval apart
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"
    assert boots(csms) == [OLD] and slot_state(flash)["trial"] is None


def test_tampered_package_is_installation_failed_and_the_old_version_runs_on(csms_factory, flash_sim, flash, web):
    csms, sim = booted(csms_factory, flash_sim, flash)
    srv, port = web.start()
    state_before = slot_state(flash)
    assert csms.call(CP, "UpdateFirmware", {"location": "http://127.0.0.1:%d/files/tampered.fwpk" % port,
                                            "retrieveDate": iso(time.time())}) == {}
    csms.wait_for("FirmwareStatusNotification", cp=CP, where=lambda p: p["status"] == "InstallationFailed",
                  timeout=60)
    assert fw_statuses(csms) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
    assert len(srv.requests) == 1  # the transfer worked; the package is what is wrong
    assert slot_state(flash) == state_before and not (flash / "slots" / "b" / "slot.json").exists()
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"
    sim.cmd({"cmd": "power", "on": False})
    sim.cmd({"cmd": "power", "on": True})
    csms.wait_for("BootNotification", cp=CP, count=2, timeout=60)
    assert boots(csms) == [OLD, OLD]


def test_new_version_that_crashes_at_start_rolls_back_and_reports_installation_failed(csms_factory, flash_sim,
                                                                                     flash, web):
    csms, sim = booted(csms_factory, flash_sim, flash)
    srv, port = web.start()
    assert csms.call(CP, "UpdateFirmware", {"location": "http://127.0.0.1:%d/files/broken.fwpk" % port,
                                            "retrieveDate": iso(time.time())}) == {}
    csms.wait_for("FirmwareStatusNotification", cp=CP, where=lambda p: p["status"] == "InstallationFailed",
                  timeout=120)
    # the new slot raised before it could register; slotboot gave its trial up and the board is back on OLD
    assert fw_statuses(csms) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
    assert boots(csms) == [OLD, OLD]
    sim.wait_line(r"broken on purpose", timeout=5)
    st = slot_state(flash)
    assert st["active"] == "a" and st["trial"] is None
    wait_until(lambda: slot_state(flash)["report"] is None and not (flash / "update.json").exists(), 10,
               msg="the report cleared and the update forgotten once InstallationFailed is answered")
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"


def test_update_during_a_transaction_installs_only_after_it_ends(csms_factory, flash_sim, flash, web):
    csms, sim = booted(csms_factory, flash_sim, flash)
    srv, port = web.start()
    start, tx = start_charging(csms, sim)
    assert csms.call(CP, "UpdateFirmware", {"location": "http://127.0.0.1:%d/files/new.fwpk" % port,
                                            "retrieveDate": iso(time.time())}) == {}
    csms.wait_for("FirmwareStatusNotification", cp=CP, where=lambda p: p["status"] == "Downloaded", timeout=60)
    time.sleep(3)  # the engine looks once a second: the session must go on untouched meanwhile
    assert fw_statuses(csms) == ["Downloading", "Downloaded"]
    assert sim.status()["contactor"] and csms.calls("StopTransaction", cp=CP) == []
    assert trigger(csms, "FirmwareStatusNotification") == "Downloaded"
    mark = len(csms.messages())
    assert csms.call(CP, "RemoteStopTransaction", {"transactionId": tx}) == {"status": "Accepted"}
    csms.wait_for("FirmwareStatusNotification", cp=CP, where=lambda p: p["status"] == "Installed", timeout=120)
    assert fw_statuses(csms) == ["Downloading", "Downloaded", "Downloaded", "Installing", "Installed"]
    msgs = [m["msg"] for m in csms.messages(CP)[mark:] if m["dir"] == "in" and m["msg"] and m["msg"][0] == 2]
    order = [(m[2], m[3].get("status") or m[3].get("reason")) for m in msgs
             if m[2] in ("StopTransaction", "FirmwareStatusNotification", "BootNotification")]
    assert order[:3] == [("StopTransaction", "Remote"), ("FirmwareStatusNotification", "Installing"),
                         ("BootNotification", None)], order
    # while it installed, the idle connector was Unavailable (OCPP 1.6 §5.18); after the reboot it is back
    statuses = [p["status"] for p in csms.calls("StatusNotification", cp=CP, since=mark)
                if p["connectorId"] == 1]
    assert "Unavailable" in statuses, statuses
    csms.wait_for("StatusNotification", cp=CP, since=mark, timeout=30,
                  where=lambda p: p["connectorId"] == 1 and p["status"] in ("Available", "Preparing", "Finishing")
                  and boots(csms) == [OLD, NEW])
    assert boots(csms) == [OLD, NEW]
    board_until(sim, lambda s: not s["contactor"], msg="contactor open")


def update_to(csms, url, at=None, retries=None, interval=None):
    payload = {"location": url, "retrieveDate": iso(time.time() if at is None else at)}
    if retries is not None:
        payload["retries"] = retries
    if interval is not None:
        payload["retryInterval"] = interval
    assert csms.call(CP, "UpdateFirmware", payload) == {}


def wait_fw(csms, status, timeout=120, since=0):
    csms.wait_for("FirmwareStatusNotification", cp=CP, since=since, timeout=timeout,
                  where=lambda p: p["status"] == status)


def check_installed(csms, sim, flash, boots_seen):
    """The update's end: the new version runs, confirmed, and nothing is left owed."""
    assert boots(csms) == boots_seen
    st = slot_state(flash)
    assert st["active"] == "b" and st["trial"] is None
    wait_until(lambda: slot_state(flash)["report"] is None and not (flash / "update.json").exists(), 10,
               msg="the report cleared and update.json removed once Installed is answered")
    assert not (flash / "update.fwpk").exists()
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"


def test_update_over_https_checks_the_server_against_the_ca_and_its_name(csms_factory, flash_sim, flash, web, kit):
    csms = csms_factory()
    ca = (pathlib.Path(kit["certs"]["ca"])).read_text()
    sim = flash_sim(csms.url, flash, settings={"TransferCa": ca})
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["connectorId"] == 1, timeout=60)
    _, wrong_port = web.start(*kit["certs"]["elsewhere"])  # signed by the CA, for another host name
    srv, port = web.start(*kit["certs"]["server"])
    update_to(csms, "https://127.0.0.1:%d/files/new.fwpk" % wrong_port, retries=0, interval=1)
    wait_fw(csms, "DownloadFailed", 60)
    assert fw_statuses(csms) == ["Downloading", "DownloadFailed"]
    sim.wait_line(r"E ota: DownloadFailed: .*TLS", timeout=5)
    at = int(time.time()) + 3
    update_to(csms, "https://localhost:%d/files/new.fwpk" % port, at, retries=1, interval=1)
    wait_fw(csms, "Installed")
    assert fw_statuses(csms) == ["Downloading", "DownloadFailed", "Downloading", "Downloaded", "Installing",
                                 "Installed"]
    assert [r[0] for r in srv.requests] == ["GET"] and srv.requests[0][2] >= at  # not before retrieveDate
    check_installed(csms, sim, flash, [OLD, NEW])


def test_update_over_ftp_with_user_and_password_in_the_url(csms_factory, flash_sim, flash, kit, tmp_path):
    csms, sim = booted(csms_factory, flash_sim, flash)
    ftpd = FTPServers(kit["files"], tmp_path)
    try:
        port = ftpd.start()
        at = int(time.time()) + 3
        update_to(csms, "ftp://fw:fw-pass@127.0.0.1:%d/new.fwpk" % port, at, retries=1, interval=1)
        assert trigger(csms, "FirmwareStatusNotification") == "Idle"  # waiting for retrieveDate
        wait_fw(csms, "Installed")
        assert fw_statuses(csms) == ["Idle", "Downloading", "Downloaded", "Installing", "Installed"]
        check_installed(csms, sim, flash, [OLD, NEW])
        assert "fw-pass" not in "\n".join(sim.lines)  # the URL's password never reaches the log
        assert "ftp://fw:***@127.0.0.1" in "\n".join(sim.lines)
    finally:
        ftpd.stop()


@pytest.mark.parametrize("what", ["refused", "truncated"])
def test_download_failure_is_download_failed_after_the_asked_retries(csms_factory, flash_sim, flash, web, kit, what):
    csms, sim = booted(csms_factory, flash_sim, flash)
    srv, port = web.start()
    url = {"refused": "http://127.0.0.1:%d/files/new.fwpk" % free_port(),
           "truncated": "http://127.0.0.1:%d/truncated/new.fwpk" % port}[what]
    t0 = time.time()
    update_to(csms, url, retries=2, interval=1)
    wait_fw(csms, "DownloadFailed", 60)
    assert fw_statuses(csms) == ["Downloading", "DownloadFailed"]
    out = "\n".join(sim.lines)
    assert len(re.findall(r"W ota: download attempt \d of 3 failed", out)) == 3, out
    reason = {"refused": "connection refused",
              "truncated": "body truncated at %d of %d bytes" % (kit["size"] // 2, kit["size"])}[what]
    assert "E ota: DownloadFailed: " + reason in out
    if what == "truncated":
        times = [t for _, _, t in srv.requests]
        assert len(times) == 3 and times[2] - times[0] >= 1.9, times  # retryInterval apart
    assert time.time() - t0 >= 2
    assert not (flash / "update.fwpk").exists() and slot_state(flash)["trial"] is None
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"
    assert boots(csms) == [OLD]


@pytest.mark.parametrize("name,reason", [("wrong_key", "signed with key"), ("unsigned", "not signed")])
def test_wrongly_signed_package_is_installation_failed_and_the_old_version_runs_on(csms_factory, flash_sim, flash,
                                                                                  web, name, reason):
    csms, sim = booted(csms_factory, flash_sim, flash)
    srv, port = web.start()
    state_before = slot_state(flash)
    update_to(csms, "http://127.0.0.1:%d/files/%s.fwpk" % (port, name))
    wait_fw(csms, "InstallationFailed", 60)
    assert fw_statuses(csms) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
    sim.wait_line(r"E ota: InstallationFailed: .*%s" % reason, timeout=5)
    assert len(srv.requests) == 1  # the transfer worked; the package is what is wrong
    assert slot_state(flash) == state_before and not (flash / "slots" / "b" / "slot.json").exists()
    assert not (flash / "update.fwpk").exists()
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"
    sim.cmd({"cmd": "power", "on": False})
    sim.cmd({"cmd": "power", "on": True})
    csms.wait_for("BootNotification", cp=CP, count=2, timeout=60)
    assert boots(csms) == [OLD, OLD] and fw_statuses(csms)[-1] == "Idle"


def test_power_cut_during_the_download_boots_the_old_version_and_the_update_goes_on(csms_factory, flash_sim,
                                                                                    flash, web, kit):
    csms, sim = booted(csms_factory, flash_sim, flash)
    srv, port = web.start(delay=0.004)  # 1 KB every 4 ms
    update_to(csms, "http://127.0.0.1:%d/slow/new.fwpk" % port, retries=1, interval=1)
    wait_fw(csms, "Downloading", 60)
    wait_until(lambda: srv.sent >= 32 * 1024, 30, 0.002, msg="32 KB sent")
    sim.cmd({"cmd": "power", "on": False})  # the power cut, a quarter into the body
    assert 0 < (flash / "update.fwpk").stat().st_size < kit["size"]
    sim.cmd({"cmd": "power", "on": True})
    wait_fw(csms, "Installed")
    # the old version booted after the cut; the attempt it cut counts, the second one worked
    assert fw_statuses(csms) == ["Downloading", "Downloading", "Downloaded", "Installing", "Installed"]
    assert [r[0] for r in srv.requests] == ["GET", "GET"]
    check_installed(csms, sim, flash, [OLD, OLD, NEW])


def test_power_cut_during_the_installation_boots_the_old_version_and_installs_again(csms_factory, flash_sim,
                                                                                   flash, web, kit):
    csms, sim = booted(csms_factory, flash_sim, flash)
    srv, port = web.start()
    slot_b = flash / "slots" / "b"
    update_to(csms, "http://127.0.0.1:%d/files/padded.fwpk" % port)
    wait_fw(csms, "Installing", 60)
    # slot b being written (its manifest comes first), the power goes; its last file, 3 MB, gives the margin
    wait_until(lambda: (slot_b / "manifest.json").exists(), 30, 0.001, msg="slot b begun")
    sim.cmd({"cmd": "power", "on": False})
    assert not (slot_b / "slot.json").exists(), "the cut came after the installation"
    assert not (slot_b / "pad.bin").exists() or (slot_b / "pad.bin").stat().st_size < PAD
    assert slot_state(flash)["trial"] is None
    sim.cmd({"cmd": "power", "on": True})
    wait_fw(csms, "Installed")
    # the old version booted (slot b incomplete, no trial begun), installed again once the Central System had
    # accepted its BootNotification (so that it hears this Installing too), then rebooted into the new one
    assert fw_statuses(csms) == ["Downloading", "Downloaded", "Installing", "Installing", "Installed"]
    assert len(re.findall(r"I ota: version %s installed in slot b" % NEW, "\n".join(sim.lines))) == 1
    assert len(srv.requests) == 1  # the package on flash was kept: installed again without a download
    assert (slot_b / "pad.bin").stat().st_size == PAD
    check_installed(csms, sim, flash, [OLD, OLD, NEW])


def test_new_version_that_hangs_is_reset_by_the_watchdog_and_rolled_back(csms_factory, flash_sim, flash, web):
    csms, sim = booted(csms_factory, flash_sim, flash)
    srv, port = web.start()
    update_to(csms, "http://127.0.0.1:%d/files/hangs.fwpk" % port)
    wait_fw(csms, "InstallationFailed", 120)
    assert fw_statuses(csms) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
    assert boots(csms) == [OLD, OLD]  # the hanging version never reached the Central System
    assert "".join(sim.lines).count("hangs on purpose") == 3  # MAX_TRIAL_BOOTS boots on trial, each reset
    assert sim.status()["wdt_resets"] == 3
    sim.wait_line(r"trial of b \(%s\) given up: no BootNotification accepted in 3 boots" % re.escape(HANGS), 5)
    st = slot_state(flash)
    assert st["active"] == "a" and st["trial"] is None
    wait_until(lambda: slot_state(flash)["report"] is None and not (flash / "update.json").exists(), 10,
               msg="the report cleared and the update forgotten once InstallationFailed is answered")
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"


def test_new_version_that_cannot_reach_the_central_system_rolls_back_after_the_bound(csms_factory, flash_sim,
                                                                                    flash, web):
    csms = csms_factory(auth={CP: SECRET})
    sim = flash_sim(csms.url, flash, password=SECRET)
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["connectorId"] == 1, timeout=60)
    assert boots(csms) == [OLD]
    srv, port = web.start()
    update_to(csms, "http://127.0.0.1:%d/files/short_bound.fwpk" % port)
    wait_fw(csms, "Installing", 60)
    csms.set(auth={CP: "not-" + SECRET})  # from now on the Central System refuses the charger's password
    sim.wait_line(r"trial of b \(%s\) given up: no BootNotification accepted within %d s" % (
        re.escape(SHORT), BOUND_S), timeout=60)
    csms.set(auth={CP: SECRET})  # reachable again: the old version reports at its first connection
    wait_fw(csms, "InstallationFailed", 60)
    assert fw_statuses(csms) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
    assert boots(csms) == [OLD, OLD]  # the new version never got through
    assert any("slotboot: slot b on trial" in line for line in sim.lines)
    st = slot_state(flash)
    assert st["active"] == "a" and st["trial"] is None
    wait_until(lambda: slot_state(flash)["report"] is None and not (flash / "update.json").exists(), 10,
               msg="the report cleared and the update forgotten once InstallationFailed is answered")
    assert trigger(csms, "FirmwareStatusNotification") == "Idle"


# ---- GetDiagnostics -------------------------------------------------------------------------------------
def check_upload(text, name, boot_lines):
    assert re.match(r"diag-CP1-\d{8}T\d{6}Z\.txt$", name), name
    assert text.startswith("# Diagnostics of CP1 at "), text[:200]
    for line in ("version: 0.1.0", "slot: root", "link: online", "registered: True", "queue: 0",
                 "connector: Available"):
        assert re.search("^%s$" % re.escape(line), text, re.M), line
    assert re.search(r"^heap_free: \d+$", text, re.M) and re.search(r"^heap_largest_block: \d+$", text, re.M)
    # the ring starts at the first GetDiagnostics, and from then on at every boot
    assert bool(re.search(r"^\S+Z \d+ I ocpp: BootNotification Accepted, interval \d+$", text, re.M)) == boot_lines
    assert re.search(r"^\S+Z \d+ I diag: GetDiagnostics to \S+, 2 attempt\(s\) 1 s apart$", text, re.M), text
    assert SECRET not in text and "up-pass" not in text  # no password, neither the charger's nor the URL's


def test_get_diagnostics_to_http_and_ftp(csms_factory, sim_factory, tmp_path):
    csms = csms_factory(auth={CP: SECRET})
    sim = sim_factory(csms.url, password=SECRET)
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["connectorId"] == 1)
    assert trigger(csms, "DiagnosticsStatusNotification") == "Idle"
    web = HTTPServers(tmp_path)
    (tmp_path / "up").mkdir()
    ftpd = FTPServers(tmp_path, tmp_path / "up")
    try:
        srv, port = web.start()
        reply = csms.call(CP, "GetDiagnostics", {"location": "http://127.0.0.1:%d/upload/" % port, "retries": 1,
                                                 "retryInterval": 1})
        name = reply["fileName"]
        csms.wait_for("DiagnosticsStatusNotification", cp=CP, where=lambda p: p["status"] == "Uploaded", timeout=60)
        assert diag_statuses(csms) == ["Idle", "Uploading", "Uploaded"]
        method, ctype, body = srv.uploads["/upload/" + name]
        assert method == "PUT" and ctype == "text/plain"
        check_upload(body.decode(), name, False)
        assert trigger(csms, "DiagnosticsStatusNotification") == "Idle"

        sim.cmd({"cmd": "power", "on": False})  # the board boots again: its log ring from the first line
        sim.cmd({"cmd": "power", "on": True})
        csms.wait_for("StatusNotification", cp=CP, count=2, where=lambda p: p["connectorId"] == 1)
        fport = ftpd.start()
        mark = len(csms.messages())
        name = csms.call(CP, "GetDiagnostics", {"location": "ftp://up:up-pass@127.0.0.1:%d/" % fport,
                                                "retries": 1, "retryInterval": 1})["fileName"]
        csms.wait_for("DiagnosticsStatusNotification", cp=CP, since=mark, timeout=60,
                      where=lambda p: p["status"] == "Uploaded")
        assert diag_statuses(csms, mark) == ["Uploading", "Uploaded"]
        text = (tmp_path / "up" / name).read_text()
        check_upload(text, name, True)
        assert "GetDiagnostics to http://127.0.0.1:%d/upload/" % port in text  # the first boot's lines too
        assert "GetDiagnostics to ftp://up:***@127.0.0.1" in text  # the URL's password masked in the log
        assert trigger(csms, "DiagnosticsStatusNotification") == "Idle"
        assert trigger(csms, "FirmwareStatusNotification") == "Idle"
    finally:
        web.stop()
        ftpd.stop()


def test_get_diagnostics_upload_failed_after_the_retries(csms_factory, sim_factory, tmp_path):
    csms = csms_factory()
    sim_factory(csms.url)
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["connectorId"] == 1)
    web = HTTPServers(tmp_path)
    try:
        srv, port = web.start()
        csms.call(CP, "GetDiagnostics", {"location": "http://127.0.0.1:%d/fail/" % port, "retries": 2,
                                         "retryInterval": 1})
        csms.wait_for("DiagnosticsStatusNotification", cp=CP, where=lambda p: p["status"] == "UploadFailed",
                      timeout=60)
        assert diag_statuses(csms) == ["Uploading", "UploadFailed"]
        times = [t for _, _, t in srv.requests]
        assert len(times) == 3 and times[2] - times[0] >= 1.9, times
    finally:
        web.stop()
