# Firmware slot selection, run by boot.py before anything imports the firmware (docs/ota.md).
# Like a bootloader it sits at the root of the flash, outside the slots, and no update rewrites it: it must start
# every version it may meet, so it imports nothing from the firmware and its file formats never change.
#
# Flash layout under root ("/" on a board, the --state directory in the simulation):
#   slots/a/, slots/b/   a firmware tree each (firmware/, hal/, lib/), with manifest.json and manifest.sig from
#                        the package and slot.json ({"seq", "version"}, CRC-framed), written last: a slot is
#                        complete once slot.json exists
#   slots/state.0, .1    the slot state, two generations written in turn, each CRC-framed JSON:
#                        {"gen", "kind": "files"|"image", "active", "trial", "boots", "report"}
#                        the valid file with the higher gen wins, so a power cut mid-write keeps the previous one
# No slots/ directory: select() changes nothing and the firmware starts from the root as it always did.
import os
import sys
import json
from binascii import crc32
from micropython import const

MAX_TRIAL_BOOTS = const(3)  # boots a slot on trial gets to reach BootNotification Accepted
SLOTS = ("a", "b")
_MARK = "/slots/"


def slots_dir(root):
    return root.rstrip("/") + "/slots"


def slot_dir(root, name):
    return slots_dir(root) + "/" + name


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def read_framed(path):
    """The object in a CRC-framed JSON file ("<crc32 hex>\\n<json>", as firmware/store.py writes), or None."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if len(raw) < 9 or raw[8] != 10:
        return None
    try:
        crc = int(raw[:8], 16)
        body = memoryview(raw)[9:]
        if crc32(body) & 0xFFFFFFFF != crc:
            return None
        return json.loads(body)
    except ValueError:
        return None


def write_framed(path, obj):
    body = json.dumps(obj)
    with open(path, "wb") as f:
        f.write(b"%08x\n" % (crc32(body) & 0xFFFFFFFF))
        f.write(body)


def read_state(root):
    best = None
    for i in (0, 1):
        st = read_framed("%s/state.%d" % (slots_dir(root), i))
        if isinstance(st, dict) and isinstance(st.get("gen"), int) and (best is None or st["gen"] > best["gen"]):
            best = st
    return best


def write_state(root, st):
    # Overwrites the older generation only: whatever a power cut does to this write, the other file holds
    # the state before it.
    st["gen"] = st.get("gen", 0) + 1
    write_framed("%s/state.%d" % (slots_dir(root), st["gen"] % 2), st)


def slot_info(root, name):
    """slot.json of a complete slot ({"seq", "version"}), else None."""
    info = read_framed(slot_dir(root, name) + "/slot.json")
    return info if isinstance(info, dict) else None


def running():
    """(root, slot name) of the file slot this interpreter runs from (its sys.path entry), or (None, None)."""
    for p in sys.path:
        i = p.rfind(_MARK)
        if i >= 0 and p[i + len(_MARK):] in SLOTS:
            return p[:i] or "/", p[i + len(_MARK):]
    return None, None


def give_up(root, st, reason):
    """Ends the trial: the active slot runs from the next boot, and the failure waits to be reported."""
    trial = st.get("trial")
    info = slot_info(root, trial)  # whole-image slots keep their slot.json in slots/<partition label>/ too
    version = info.get("version") if info is not None else None
    print("slotboot: trial of %s (%s) given up: %s" % (trial, version, reason))
    st["trial"] = None
    st["boots"] = 0
    st["report"] = ["InstallationFailed", version, reason]
    write_state(root, st)


def select(root="/"):
    """Picks the slot to run and puts it first on sys.path; returns its name, None for the root layout."""
    try:
        name = _select(root)
    except Exception as e:  # a boot must never stop here: any complete slot beats none
        print("slotboot: %r, trying any complete slot" % (e,))
        name = None
        for s in SLOTS:
            if slot_info(root, s) is not None:
                name = s
                break
    if name in SLOTS:
        sys.path.insert(0, slot_dir(root, name))
    return name


def _select(root):
    if not _exists(slots_dir(root)):
        return None
    st = read_state(root)
    if st is None:
        st = _rebuild(root)
        if st is None:
            return None
        write_state(root, st)
    if st.get("kind") == "image":
        return _select_image(root, st)
    trial = st.get("trial")
    if trial is not None:
        if slot_info(root, trial) is None:
            give_up(root, st, "slot %s is incomplete" % trial)
        elif st.get("boots", 0) >= MAX_TRIAL_BOOTS:
            give_up(root, st, "no BootNotification accepted in %d boots" % MAX_TRIAL_BOOTS)
        else:
            st["boots"] = st.get("boots", 0) + 1
            write_state(root, st)
            print("slotboot: slot %s on trial, boot %d of %d" % (trial, st["boots"], MAX_TRIAL_BOOTS))
            return trial
    active = st.get("active")
    if active is None or slot_info(root, active) is not None:
        return active
    for other in SLOTS:  # the active slot lost its files (a wiped flash?): run the other one if it is whole
        if other != active and slot_info(root, other) is not None:
            print("slotboot: slot %s is incomplete, running %s" % (active, other))
            st["active"] = other
            write_state(root, st)
            return other
    return None


def _rebuild(root):
    # Both state generations are unreadable: trust only slots whose files all match their manifest. The older
    # of two was confirmed before the newer was installed, so it stays the fallback and the newer gets a trial.
    whole = []
    for s in SLOTS:
        info = slot_info(root, s)
        if info is not None and verify_slot(root, s):
            whole.append((info.get("seq", 0), s))
    if not whole:
        return None
    whole.sort()
    print("slotboot: slot state lost, rebuilt from the slots' manifests")
    st = {"gen": 0, "kind": "files", "active": whole[0][1], "trial": None, "boots": 0, "report": None}
    if len(whole) > 1:
        st["trial"] = whole[1][1]
    return st


def verify_slot(root, name):
    """Every file of the slot's manifest.json present with its size and SHA-256 (integrity, not authenticity:
    the signature was checked when the slot was written)."""
    import hashlib
    from binascii import hexlify

    d = slot_dir(root, name)
    try:
        with open(d + "/manifest.json") as f:
            files = json.load(f)["files"]
        buf = bytearray(512)
        for path, size, digest in files:
            h = hashlib.sha256()
            n = 0
            with open(d + "/" + path, "rb") as f:
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    h.update(memoryview(buf)[:k])
                    n += k
            if n != size or hexlify(h.digest()).decode() != digest:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _select_image(root, st):
    # Whole-image slots (esp32.Partition): the bootloader picks the partition; here we only learn what happened.
    # With the bootloader's rollback on, a trial image that resets before confirming is already gone.
    import esp32

    run = esp32.Partition(esp32.Partition.RUNNING).info()[4]
    trial = st.get("trial")
    if trial is None or run != trial:
        # Outside a trial the running image is the good one. set_boot() leaves any image pending (the way
        # back after abandon() too), and a pending image is dropped by the bootloader at the next reset.
        esp32.Partition.mark_app_valid_cancel_rollback()
        if trial is not None:
            st["active"] = run
            give_up(root, st, "the bootloader went back to %s" % run)
        elif st.get("active") != run:  # flashed over the wire meanwhile
            st["active"] = run
            write_state(root, st)
        return run
    if st.get("boots", 0) >= MAX_TRIAL_BOOTS:  # a bootloader without rollback: do its job
        esp32.Partition(st["active"]).set_boot()
        give_up(root, st, "no BootNotification accepted in %d boots" % MAX_TRIAL_BOOTS)
        _reset()
    st["boots"] = st.get("boots", 0) + 1
    write_state(root, st)
    return run


def _reset():
    import machine

    machine.reset()


def crashed(exc, root=None):
    """Called by main.py when the firmware raised out of its start: a slot on trial is given up at once and the
    board restarts into the previous one. Returns True if it gave one up (the unix port then exits)."""
    try:
        return _crashed(exc, root)
    except Exception as e:  # never hide the firmware's own exception behind one of ours
        print("slotboot: %r" % (e,))
        return False


def _crashed(exc, root):
    r, name = running()
    root = root or r or "/"
    st = read_state(root)
    if st is None or st.get("trial") is None:
        return False
    if st.get("kind") == "image":
        import esp32

        if esp32.Partition(esp32.Partition.RUNNING).info()[4] != st["trial"]:
            return False
        esp32.Partition(st["active"]).set_boot()
    elif name != st["trial"]:
        return False
    give_up(root, st, ("raised %r" % (exc,))[:120])
    if sys.platform == "esp32":
        _reset()
    return True
