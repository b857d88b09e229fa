# A/B firmware slots on the unix port: slotboot.py (what boot.py runs) and firmware/ota/slots.py (the
# application's side): trial, confirm, rollback after a crash, too many boots or abandon(), a corrupt state,
# power cuts between (and inside) every write, and the whole-image path against a recording fake esp32.
import sys
import json
import hashlib
from binascii import hexlify
import tinytest
import powercut
import fake_esp32
import fake_machine

sys.modules["esp32"] = fake_esp32
sys.modules["machine"] = fake_machine
import slotboot
from firmware.ota import slots, partition

_PATH0 = list(sys.path)


def _hex(b):
    return hexlify(hashlib.sha256(b).digest()).decode()


def _files(version):
    # a module that says which version it is, in a package like the firmware's
    return [("otaprobe/__init__.py", b""), ("otaprobe/ver.py", b"V = %s\n" % repr(version).encode())]


def _manifest(version, files, kind="files"):
    return {"format": 1, "version": version, "kind": kind, "target": {},
            "files": [[p, len(b), _hex(b)] for p, b in files]}


def write_slot(s, version, files=None, kind="files"):
    """Writes a slot through s.writer() the way firmware.ota.package.install() drives it; returns its name."""
    files = files or _files(version)
    m = _manifest(version, files, kind)
    w = s.writer()
    w.begin(m, json.dumps(m), b"signature")
    for path, data in files:
        w.open(path, len(data))
        w.write(memoryview(data))
        w.close()
    w.commit(m)
    return w.name


def deploy(root, version="1.0"):
    """A board as make deploy leaves it: slot a complete and active."""
    s = slots.FileSlots(root)
    name = write_slot(s, version)
    st = s.state()
    st["active"] = name
    s._save(st)
    return s


def boot(root):
    """A reset: the interpreter starts with the plain path and boot.py selects."""
    sys.path[:] = _PATH0
    for k in ("otaprobe", "otaprobe.ver"):
        sys.modules.pop(k, None)
    return slotboot.select(root)


def running_version():
    import otaprobe.ver

    return otaprobe.ver.V


def fresh():
    return tinytest.tempdir("slots")


def test_no_slots_changes_nothing():
    root = fresh()
    assert boot(root) is None
    assert sys.path == _PATH0
    assert slots.firmware_version("0.1.0", root) == "0.1.0"
    assert not slots.FileSlots(root).confirm()


def test_deployed_slot_runs_and_reports_its_version():
    root = fresh()
    deploy(root, "1.0")
    gen = slotboot.read_state(root)["gen"]
    assert boot(root) == "a"
    assert sys.path[0] == root + "/slots/a"
    assert running_version() == "1.0"
    assert slots.firmware_version("0.1.0", root) == "1.0"
    assert slotboot.read_state(root)["gen"] == gen  # a normal boot writes nothing


def test_trial_then_confirm_makes_the_new_slot_active():
    root = fresh()
    s = deploy(root, "1.0")
    boot(root)
    name = write_slot(s, "2.0")
    assert name == "b"
    s.begin_trial(name)
    assert boot(root) == "b" and running_version() == "2.0"
    st = slotboot.read_state(root)
    assert st["trial"] == "b" and st["boots"] == 1 and st["active"] == "a"
    assert s.on_trial()
    assert s.confirm()
    st = slotboot.read_state(root)
    assert st["active"] == "b" and st["trial"] is None
    assert s.report() == ["Installed", "2.0", ""]
    assert not s.confirm()  # once only
    s.clear_report()
    assert s.report() is None
    assert boot(root) == "b" and slots.firmware_version("x", root) == "2.0"
    assert s.target() == "a"  # the next update goes to the old slot
    e = tinytest.raises(slots.SlotError, s.begin_trial, "b")
    assert "active" in str(e)


def test_boot_info_reads_the_version_and_the_work_without_the_slot_code():
    # firmware.ota.boot.info (BootNotification firmwareVersion, whether the update engine starts) agrees with
    # slots.firmware_version and ota.owed at every step of an update, from the slot files alone
    from firmware import ota, store
    from firmware.ota import boot as otaboot

    def check(version, work):
        assert otaboot.info(root, "0.1.0") == (version, work), otaboot.info(root, "0.1.0")
        assert slots.firmware_version("0.1.0", root) == version and ota.owed(root) == work

    root = fresh()
    boot(root)
    check("0.1.0", False)  # no slots: the firmware's own version
    s = deploy(root, "1.0")
    boot(root)
    check("1.0", False)
    s.begin_trial(write_slot(s, "2.0"))
    check("1.0", True)  # a trial begun: the engine has work at the next boot
    boot(root)
    check("2.0", True)  # on trial: the new version reports itself, and waits for Accepted
    s.confirm()
    check("2.0", True)  # Installed is owed
    s.clear_report()
    check("2.0", False)
    store.write_json(root + "/update.json", {"v": 1})
    check("2.0", True)
    store.delete(root + "/update.json")
    with open(root + "/slots/b/slot.json", "r+b") as f:  # a damaged slot.json: never a wrong version
        f.seek(12)
        f.write(b"X")
    assert otaboot.info(root, "0.1.0") == ("0.1.0", False)


def test_too_many_boots_without_confirm_roll_back():
    root = fresh()
    s = deploy(root, "1.0")
    boot(root)
    s.begin_trial(write_slot(s, "2.0"))
    for _ in range(slotboot.MAX_TRIAL_BOOTS):  # crashes or watchdog resets before BootNotification Accepted
        assert boot(root) == "b"
    assert boot(root) == "a" and running_version() == "1.0"
    st = slotboot.read_state(root)
    assert st["trial"] is None and st["active"] == "a"
    assert st["report"][:2] == ["InstallationFailed", "2.0"]
    assert "3 boots" in st["report"][2]
    assert not s.confirm()  # the old slot has nothing to confirm
    assert boot(root) == "a"


def test_crash_at_start_rolls_back_at_once():
    root = fresh()
    s = deploy(root, "1.0")
    boot(root)
    s.begin_trial(write_slot(s, "2.0"))
    assert boot(root) == "b"
    assert slotboot.crashed(ImportError("no module named 'firmware.app'"))
    assert s.report()[0] == "InstallationFailed" and "ImportError" in s.report()[2]
    assert boot(root) == "a"
    assert not slotboot.crashed(ValueError("later"))  # the confirmed slot crashing is not an update failure
    assert slotboot.read_state(root)["active"] == "a"


def test_abandon_when_the_central_system_is_never_reached():
    root = fresh()
    s = deploy(root, "1.0")
    boot(root)
    s.begin_trial(write_slot(s, "2.0"))
    boot(root)
    assert s.abandon("no BootNotification Accepted within 600 s")
    assert s.report() == ["InstallationFailed", "2.0", "no BootNotification Accepted within 600 s"]
    assert boot(root) == "a"
    assert not s.abandon("again")


def test_no_update_while_one_is_on_trial():
    root = fresh()
    s = deploy(root, "1.0")
    boot(root)
    s.begin_trial(write_slot(s, "2.0"))
    boot(root)
    e = tinytest.raises(slots.SlotError, s.writer)
    assert "on trial" in str(e)


def test_first_update_from_the_root_layout_falls_back_to_it():
    root = fresh()  # the firmware runs from the root (today's layout); the first update makes slot a
    s = slots.FileSlots(root)
    assert s.target() == "a"
    s.begin_trial(write_slot(s, "2.0"))
    assert boot(root) == "a"
    assert s.abandon("test")
    assert boot(root) is None and sys.path == _PATH0


def test_incomplete_slot_is_never_started():
    root = fresh()
    s = deploy(root, "1.0")
    boot(root)
    tinytest.raises(slots.SlotError, s.begin_trial, "b")  # nothing written there
    name = write_slot(s, "2.0")
    s.begin_trial(name)
    import os
    os.remove(root + "/slots/b/slot.json")  # the slot lost its marker after the flip (cannot happen in order)
    assert boot(root) == "a"
    assert "incomplete" in s.report()[2]


def _corrupt(path):
    with open(path, "r+b") as f:
        f.seek(12)
        f.write(b"#")


def test_corrupt_newest_state_falls_back_to_the_previous_generation():
    root = fresh()
    s = deploy(root, "1.0")
    boot(root)
    s.begin_trial(write_slot(s, "2.0"))
    st = slotboot.read_state(root)
    _corrupt("%s/slots/state.%d" % (root, st["gen"] % 2))  # the flip to the trial is lost
    assert slotboot.read_state(root)["gen"] == st["gen"] - 1
    assert boot(root) == "a"


def test_both_states_lost_rebuilds_from_verified_manifests():
    root = fresh()
    s = deploy(root, "1.0")
    boot(root)
    s.begin_trial(write_slot(s, "2.0"))
    boot(root)
    s.confirm()
    _corrupt(root + "/slots/state.0")
    _corrupt(root + "/slots/state.1")
    # the older slot is the fallback, the newer gets a trial again (it confirms at its next connection)
    assert boot(root) == "b"
    st = slotboot.read_state(root)
    assert st["active"] == "a" and st["trial"] == "b" and st["boots"] == 1
    assert s.confirm()
    # a slot whose files no longer match its manifest is not trusted
    _corrupt(root + "/slots/state.0")
    _corrupt(root + "/slots/state.1")
    with open(root + "/slots/b/otaprobe/ver.py", "wb") as f:
        f.write(b"V = 'evil'\n")
    assert not slotboot.verify_slot(root, "b") and slotboot.verify_slot(root, "a")
    assert boot(root) == "a"
    assert slotboot.read_state(root)["trial"] is None


def test_state_lost_and_no_complete_slot_boots_the_root():
    root = fresh()
    s = slots.FileSlots(root)
    s._save(s.state())
    _corrupt(root + "/slots/state.1")
    assert boot(root) is None


def test_selector_failure_still_boots_a_complete_slot():
    root = fresh()
    deploy(root, "1.0")
    saved = slotboot.read_state
    slotboot.read_state = None  # a bug in the selector
    try:
        assert boot(root) == "a"
    finally:
        slotboot.read_state = saved


def test_not_enough_flash_is_refused_before_writing():
    root = fresh()
    s = deploy(root, "1.0")
    boot(root)
    huge = _manifest("9.9", [("big.bin", b"")])
    huge["files"][0][1] = 1 << 40
    w = s.writer()
    e = tinytest.raises(slots.SlotError, w.begin, huge, b"{}", b"s")
    assert "not enough flash" in str(e)


def _update_steps(root):
    # The whole update as the application does it: write slot b, flip to the trial, boot it, confirm.
    s = slots.FileSlots(root)
    name = write_slot(s, "2.0")
    s.begin_trial(name)
    assert boot(root) == "b"
    assert s.confirm()


def test_power_cut_at_every_write_of_an_update_leaves_a_booting_board():
    mods = (slotboot, slots)
    n = 0
    while True:
        root = fresh()
        deploy(root, "1.0")
        boot(root)
        powercut.arm(mods, n)
        try:
            _update_steps(root)
            done = True
        except powercut.PowerCut:
            done = False
        finally:
            powercut.disarm()
        # power back: the board boots a whole slot, old or new, and a new attempt at the update succeeds
        name = boot(root)
        assert name in ("a", "b"), (n, name)
        assert slotboot.verify_slot(root, name), n
        assert running_version() == ("1.0" if name == "a" else "2.0")
        if done:
            break
        s = slots.FileSlots(root)
        if name == "b":  # cut after the flip: the trial runs and confirms on its own
            s.confirm()
            assert boot(root) == "b" and running_version() == "2.0"
        else:
            _update_steps(root)
        tinytest.rmtree(root)
        n += 1
    print("power cut at each of %d writes" % n)
    assert n > 20  # every step was cut at least once (the update takes this many writes)


# ---- whole images (esp32.Partition) ---------------------------------------------------------------------
def _image(n):
    # filled in place: bytes() of a generator grows its buffer step by step, and the copies it leaves behind
    # can take the last 10 KB block of the 110wK heap
    b = bytearray(n)
    for i in range(n):
        b[i] = (i * 7 + 3) & 0xFF
    return b


def part_board(rollback=True):
    root = fresh()
    fake_esp32.setup("ota_0", rollback=rollback)
    s = partition.PartitionSlots(root, fake_esp32)
    st = s.state()
    st["kind"] = "image"
    st["active"] = "ota_0"
    s._save(st)  # as make deploy leaves a frozen build
    return root, s


def write_image(s, version, data):
    return write_slot(s, version, [("micropython.bin", data)], kind="image")


def test_partition_update_writes_erased_blocks_and_sets_boot():
    root, s = part_board()
    data = _image(10000)
    assert slots.open_slots(root).kind == "image"
    del fake_esp32.calls[:]
    name = write_image(s, "2.0", data)
    assert name == "ota_1"
    assert data == memoryview(fake_esp32.flash["ota_1"])[:len(data)]  # no 10 KB copies: the heap is tight
    erased = [c[2] for c in fake_esp32.calls if c[0] == "erase"]
    assert erased == [0, 1, 2]  # each 4 KB block erased once, before its first write
    assert ("set_boot", "ota_1") not in fake_esp32.calls  # nothing switches before begin_trial
    s.begin_trial(name)
    assert fake_esp32.calls[-1] == ("set_boot", "ota_1")
    assert slotboot.read_state(root)["trial"] == "ota_1"


def test_partition_trial_confirm():
    root, s = part_board()
    s.begin_trial(write_image(s, "2.0", _image(5000)))
    assert fake_esp32.reboot() == "ota_1"
    assert boot(root) == "ota_1"
    assert sys.path == _PATH0  # frozen code: nothing to put on the path
    assert s.on_trial() and s.version("x") == "2.0"
    del fake_esp32.calls[:]
    assert s.confirm()
    assert ("mark_app_valid_cancel_rollback",) in fake_esp32.calls
    assert s.report() == ["Installed", "2.0", ""]
    assert fake_esp32.reboot() == "ota_1"  # confirmed: the bootloader keeps it
    assert boot(root) == "ota_1" and slotboot.read_state(root)["active"] == "ota_1"


def test_partition_bootloader_rollback_is_reported():
    root, s = part_board()
    s.begin_trial(write_image(s, "2.0", _image(5000)))
    fake_esp32.reboot()
    assert boot(root) == "ota_1"
    assert fake_esp32.reboot() == "ota_0"  # hung or crashed before confirming: the bootloader goes back
    assert boot(root) == "ota_0"
    st = slotboot.read_state(root)
    assert st["trial"] is None and st["active"] == "ota_0"
    assert st["report"] == ["InstallationFailed", "2.0", "the bootloader went back to ota_0"]


def test_partition_abandon_and_crash_set_boot_back():
    root, s = part_board()
    s.begin_trial(write_image(s, "2.0", _image(5000)))
    fake_esp32.reboot()
    boot(root)
    del fake_esp32.calls[:]
    assert s.abandon("no Central System")
    assert fake_esp32.calls[-1] == ("set_boot", "ota_0")
    assert fake_esp32.reboot() == "ota_0"
    del fake_esp32.calls[:]
    assert boot(root) == "ota_0"
    assert ("mark_app_valid_cancel_rollback",) in fake_esp32.calls  # the way back is made permanent
    assert fake_esp32.reboot() == "ota_0"
    # crash at start of a second trial
    s.clear_report()
    s.begin_trial(write_image(s, "3.0", _image(3000)))
    fake_esp32.reboot()
    boot(root)
    del fake_esp32.calls[:]
    assert slotboot.crashed(ImportError("x"), root)
    assert ("set_boot", "ota_0") in fake_esp32.calls
    assert fake_esp32.reboot() == "ota_0"
    assert boot(root) == "ota_0" and s.report()[:2] == ["InstallationFailed", "3.0"]


def test_partition_without_bootloader_rollback_counts_boots():
    root, s = part_board(rollback=False)
    s.begin_trial(write_image(s, "2.0", _image(5000)))
    for _ in range(slotboot.MAX_TRIAL_BOOTS):
        assert fake_esp32.reboot() == "ota_1"
        assert boot(root) == "ota_1"
    fake_machine.clear()
    fake_esp32.reboot()
    sys.path[:] = _PATH0
    tinytest.raises(fake_machine.ResetCalled, slotboot._select, root)  # gives up and resets itself
    assert ("set_boot", "ota_0") in fake_esp32.calls
    assert fake_esp32.reboot() == "ota_0"
    assert boot(root) == "ota_0" and s.report()[0] == "InstallationFailed"


def test_partition_refuses_wrong_kind_and_oversize():
    root, s = part_board()
    e = tinytest.raises(slots.SlotError, write_slot, s, "2.0")
    assert "whole firmware image" in str(e)
    e = tinytest.raises(slots.SlotError, write_image, s, "2.0", _image(12 * 1024 + 1))
    assert "holds" in str(e)
    fs = slots.FileSlots(fresh())
    e = tinytest.raises(slots.SlotError, write_image, fs, "2.0", _image(100))
    assert "from files" in str(e)


tinytest.run(globals())
