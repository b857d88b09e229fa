"""make deploy (tools/deploy.py) end to end, without hardware: the MicroPython unix port behind a pseudo-terminal
(socat) plays the board for mpremote (tests/integration/fake_board.py: raw REPL, fs commands, soft and hard
reset); its flash is a temp directory. After the hard reset the board boots what was installed
(tools/sim.py --flash-code runs the flash's boot.py and main.py against the real Central System), and the deploy
tool follows the board's log on the port until BootNotification is Accepted."""
import hashlib
import json
import os
import shutil
import signal
import subprocess

import pytest

import build
import deviceconfig
import otapack
from conftest import PY, ROOT, wait_until

DEPLOY = os.path.join(ROOT, "tools", "deploy.py")
FAKE_BOARD = os.path.join(ROOT, "tests", "integration", "fake_board.py")
SOCAT = shutil.which("socat")
CP = "CPDEPLOY"
MODULE_DIRS = build.SLOT_DIRS  # what a slot holds: the firmware's packages, microdot and the page's files
SOURCE_DIRS = build.PACKAGES + (build.STATIC,)

pytestmark = pytest.mark.skipif(SOCAT is None, reason="socat is not installed: `make deps` installs it")


@pytest.fixture(scope="module")
def vendor_key(ota_keys):
    priv, pub = ota_keys["vendor"]
    return priv, json.loads(open(pub).read())


@pytest.fixture
def fake_board(tmp_path):
    """fake_board(heap="160wK") -> (port path, flash dir): a board on a pseudo-terminal; stopped at teardown."""
    procs = []

    def make(heap="160wK", name="board"):
        flash = tmp_path / (name + "-flash")
        flash.mkdir()
        port = tmp_path / (name + "-tty")
        env = dict(os.environ, FAKE_BOARD_FLASH=str(flash), FAKE_BOARD_HEAP=heap)
        proc = subprocess.Popen(
            [SOCAT, "pty,link=%s,raw,echo=0" % port, "exec:%s %s,pty,raw,echo=0,stderr" % (PY, FAKE_BOARD)],
            env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        procs.append(proc)
        wait_until(lambda: port.exists(), 10, msg="the fake board's port %s" % port)
        return str(port), flash

    try:
        yield make
    finally:
        for proc in procs:  # socat, the supervisor and what it runs share the session socat leads
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def write_config(tmp_path, **settings):
    path = tmp_path / "charger.json"
    path.write_text(json.dumps(settings, indent=1))
    return str(path)


def deploy(port, config, key, *extra, timeout=180):  # noqa
    r = subprocess.run([PY, DEPLOY, "--port", port, "--config", config, "--vendor-key", key, *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def copied(out):
    """The files the tool said it copied, as flash paths."""
    return [line.split()[1] for line in out.splitlines() if line.startswith("  copy ")]


def module_files(flash, slot="a"):
    base = flash / "slots" / slot
    return {str(p.relative_to(flash)): p for d in MODULE_DIRS for p in (base / d).rglob("*") if p.is_file()}


def test_deploy_installs_the_slot_layout_and_the_charger_reaches_the_central_system(
        tmp_path, csms_factory, fake_board, vendor_key):
    csms = csms_factory()
    port, flash = fake_board()
    config = write_config(tmp_path, CentralSystemUrl=csms.url, ChargeBoxId=CP, MeterModel="SDM120",
                          Variant="cable", MaxCurrent=16, Pins={"rfid_cs": None})
    rc, out = deploy(port, config, vendor_key[0], "--timeout", "60")
    assert rc == 0, out
    assert "BootNotification Accepted: the charger is registered" in out, out
    boot = csms.wait_for("BootNotification", cp=CP)
    assert boot["firmwareVersion"] == "0.1.0" and boot["meterType"].endswith("SDM120"), boot
    # what the board asked for and got: slot a of docs/ota.md, active, complete, every file as its manifest says
    st = otapack.read_state(str(flash / "slots"))
    assert st["active"] == "a" and st["trial"] is None and st["kind"] == "files", st
    assert otapack.read_framed(str(flash / "slots" / "a" / "slot.json"))["version"] == "0.1.0"
    manifest = json.loads((flash / "slots" / "a" / "manifest.json").read_text())
    assert manifest["target"]["mpy"] == 6  # compiled for the board's ABI
    on_flash = module_files(flash)
    assert sorted(on_flash) == sorted("slots/a/" + p for p, _, _ in manifest["files"])
    for path, size, digest in manifest["files"]:
        data = (flash / "slots" / "a" / path).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == digest, path
    for name in ("boot.py", "main.py"):
        assert (flash / name).read_bytes() == open(os.path.join(ROOT, name), "rb").read()
    assert (flash / "slotboot.mpy").read_bytes()[:2] == b"M\x06"
    assert not (flash / "firmware").exists()  # the modules live in the slot only
    assert json.loads((flash / "otakey.json").read_text()) == vendor_key[1]
    prov = json.loads((flash / "provision.json").read_text())
    given = {"CentralSystemUrl": csms.url, "ChargeBoxId": CP, "MeterModel": "SDM120", "Variant": "cable",
             "MaxCurrent": 16, "Pins": '{"rfid_cs":null}'}
    _, defaults = deviceconfig.firmware_report({})  # the firmware's own key table, read by its own code
    want = dict((name, given.get(name, default)) for name, default in defaults if name not in deviceconfig.KEPT)
    assert prov == want  # what CONFIG leaves out: the firmware's defaults (but never the page's password)
    assert prov["Password"] == "" and prov["Ventilation"] is False and prov["MeterUnit"] == 1
    # the firmware took the settings at boot (config.json holds what differs from the defaults)
    cfg = json.loads((flash / "config.json").read_text().split("\n", 1)[1])
    assert cfg["MeterModel"] == "SDM120" and cfg["Variant"] == "cable" and cfg["MaxCurrent"] == 16


def test_deploy_again_copies_only_the_changed_file(tmp_path, csms_factory, fake_board, vendor_key):
    src = tmp_path / "src"  # a copy of the sources, so that one of them can change
    for d in SOURCE_DIRS:
        shutil.copytree(os.path.join(ROOT, d), src / d, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("boot.py", "main.py", "slotboot.py"):
        shutil.copy2(os.path.join(ROOT, name), src / name)
    csms = csms_factory()
    port, flash = fake_board()
    config = write_config(tmp_path, CentralSystemUrl=csms.url, ChargeBoxId=CP)
    rc, out = deploy(port, config, vendor_key[0], "--src", str(src), "--no-reset")
    assert rc == 0, out
    first = {p: (f.stat().st_mtime_ns, f.read_bytes()) for p, f in module_files(flash).items()}
    assert len(first) > 30 and set(first) <= set(copied(out))
    root_mtimes = {n: (flash / n).stat().st_mtime_ns for n in ("boot.py", "main.py", "slotboot.mpy",
                                                                "otakey.json", "provision.json")}

    rc, out = deploy(port, config, vendor_key[0], "--src", str(src), "--no-reset")
    assert rc == 0 and "slot a: up to date" in out and copied(out) == [], out  # nothing changed: nothing copied
    # the installed main.py knows deploy.hold: the board was reset with its firmware (and watchdog) off first
    assert "reset: the firmware stays off for one boot (deploy.hold)" in out, out
    assert not (flash / "deploy.hold").exists()  # main.py took it: the next boot runs the firmware

    with open(src / "firmware" / "leds.py", "a") as f:
        f.write("\n_DEPLOY_TEST_MARK = 1  # changes the module's bytecode\n")
    rc, out = deploy(port, config, vendor_key[0], "--src", str(src), "--timeout", "60")
    assert rc == 0 and "BootNotification Accepted" in out, out
    meta = {"slots/a/manifest.json", "slots/a/manifest.sig"}
    assert set(copied(out)) - meta == {"slots/a/firmware/leds.mpy"}, out
    after = module_files(flash)
    assert set(after) == set(first)
    for p, f in after.items():
        if p == "slots/a/firmware/leds.mpy":
            assert f.read_bytes() != first[p][1] and b"_DEPLOY_TEST_MARK" in f.read_bytes()
        else:  # untouched on the flash: same bytes, not even rewritten
            assert f.stat().st_mtime_ns == first[p][0], p
    assert {n: (flash / n).stat().st_mtime_ns for n in root_mtimes} == root_mtimes
    csms.wait_for("BootNotification", cp=CP)  # the changed firmware boots


def test_deploy_refuses_a_bad_config_and_writes_nothing(tmp_path, fake_board, vendor_key):
    port, flash = fake_board()
    config = write_config(tmp_path, CentralSystemUrl="http://cs.example/ocpp", ChargeBoxId="CP 1",
                          MaxCurrent=100, Variant="tethered", MeterUnit="one", HeartbeatInterval=60)
    rc, out = deploy(port, config, vendor_key[0])
    assert rc == 2, out
    for field, reason in (("CentralSystemUrl", "must start with ws:// or wss://"),
                          ("ChargeBoxId", "must not contain spaces"),
                          ("MaxCurrent", "100 is above the maximum 80"),
                          ("Variant", "'tethered' is not one of socket|cable"),
                          ("MeterUnit", "'one' is not a base-10 integer"),
                          ("HeartbeatInterval", "not a device setting")):
        assert any(line.strip().startswith(field + ":") and reason in line for line in out.splitlines()), \
            (field, out)
    assert "nothing was written to the board" in out
    # cross-field rules of an install: a wss:// Central System needs its CA
    config = write_config(tmp_path, CentralSystemUrl="wss://cs.example/ocpp", ChargeBoxId="CP1")
    rc, out = deploy(port, config, vendor_key[0])
    assert rc == 2 and "CentralSystemCa: missing: a wss:// Central System needs the CA certificate" in out, out
    assert list(flash.iterdir()) == []


def test_deploy_refuses_a_board_whose_heap_is_too_small(tmp_path, fake_board, vendor_key):
    port, flash = fake_board(heap="64wK")
    config = write_config(tmp_path, CentralSystemUrl="ws://127.0.0.1:9/ocpp", ChargeBoxId=CP)
    rc, out = deploy(port, config, vendor_key[0])
    assert rc == 1, out
    refusal = [line for line in out.splitlines() if line.startswith("deploy: refused:")]
    assert refusal, out
    assert "the firmware needs" in refusal[0] and "KB of heap" in refusal[0]
    assert "SPIRAM build" in refusal[0] and "custom build with the firmware frozen" in refusal[0], refusal
    assert list(flash.iterdir()) == []


def test_deploy_says_why_the_charger_is_not_accepted(tmp_path, csms_factory, fake_board, vendor_key):
    csms = csms_factory(auth={CP: "the-right-password"})
    port, flash = fake_board()
    config = write_config(tmp_path, CentralSystemUrl=csms.url, ChargeBoxId=CP, Password="a-wrong-password")
    rc, out = deploy(port, config, vendor_key[0], "--timeout", "60")
    assert rc == 3, out
    assert out.rstrip().splitlines()[-1].startswith("HTTP 401: the Central System refused the charger's "
                                                    "credentials: check Password"), out
    assert (flash / "slots" / "a" / "slot.json").exists()  # installed all the same
    # the fix: the right password in CONFIG, deployed again (only provision.json changes)
    config = write_config(tmp_path, CentralSystemUrl=csms.url, ChargeBoxId=CP, Password="the-right-password")
    rc, out = deploy(port, config, vendor_key[0], "--timeout", "60")
    assert rc == 0 and "BootNotification Accepted" in out, out
    assert copied(out) == ["provision.json"], out
    csms.wait_for("BootNotification", cp=CP)
