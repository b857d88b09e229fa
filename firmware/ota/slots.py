# A/B firmware slots, the application's side (the boot side, and the state file's format, are slotboot.py's).
# One interface, two kinds of board:
#   FileSlots       the firmware as .mpy files in slots/a/ and slots/b/ on the flash file system (stock MicroPython)
#   PartitionSlots  whole images in the ESP32 app partitions (esp32.Partition), for custom frozen builds
#                   (firmware/ota/partition.py)
# The update code gets a writer for the inactive slot from writer(), hands it to firmware.ota.package.install(),
# then begin_trial() and a reset. The new slot is on trial until confirm() (BootNotification Accepted); slotboot
# rolls it back after a crash at start, MAX_TRIAL_BOOTS boots without confirm (hangs: watchdog resets), and
# abandon() (no Central System within TRIAL_DEADLINE_MS) makes the application give up itself.
# report() holds ["Installed" | "InstallationFailed", version, reason] until clear_report(): the
# FirmwareStatusNotification owed to the Central System, across reboots.
import os
from micropython import const
import slotboot

TRIAL_DEADLINE_MS = const(600000)  # a new version that has not reached the Central System in 10 min gives up


class SlotError(Exception):
    pass


def open_slots(root="/", kind=None):
    """The slots of this board: kind "image" (a frozen build: PartitionSlots) or "files"; None = as the slot
    state says, "files" without one."""
    if kind is None:
        st = slotboot.read_state(root)
        kind = st.get("kind") if st is not None else "files"
    if kind == "image":
        from firmware.ota.partition import PartitionSlots  # only frozen builds load the partition code

        return PartitionSlots(root)
    return FileSlots(root)


def firmware_version(default, root="/"):
    """firmwareVersion for BootNotification: the running slot's manifest version, default without slots."""
    try:
        return open_slots(root).version(default)
    except Exception:  # the version must never stop a boot
        return default


def _mkdirs(path):
    # makes every directory of path that does not exist yet ("/a/b" -> "/a", "/a/b")
    i = 0
    while True:
        i = path.find("/", i + 1)
        try:
            os.mkdir(path if i < 0 else path[:i])
        except OSError:
            pass
        if i < 0:
            return


def _remove_tree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for e in entries:
        p = path + "/" + e[0]
        if e[1] == 0x4000:
            _remove_tree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def _usage(path, block):
    # bytes the tree at path takes, each file rounded up to whole blocks
    n = 0
    try:
        for e in os.ilistdir(path):
            p = path + "/" + e[0]
            if e[1] == 0x4000:
                n += _usage(p, block)
            else:
                n += (os.stat(p)[6] + block - 1) // block * block
    except OSError:
        pass
    return n


def _write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


class FileSlots:
    kind = "files"

    def __init__(self, root="/"):
        self.root = root

    # ---- state --------------------------------------------------------------------------------------
    def state(self):
        st = slotboot.read_state(self.root)
        if st is None:  # no slots yet: the firmware runs from the root, which is the fallback of a first trial
            st = {"gen": 0, "kind": self.kind, "active": None, "trial": None, "boots": 0, "report": None}
        return st

    def _save(self, st):
        _mkdirs(slotboot.slots_dir(self.root))
        slotboot.write_state(self.root, st)

    def running(self):
        r, name = slotboot.running()
        return name if r is not None and r.rstrip("/") == self.root.rstrip("/") else None

    def version(self, default=None):
        name = self.running()
        info = slotboot.slot_info(self.root, name) if name is not None else None
        if info is None or not info.get("version"):
            return default
        return info["version"]

    def on_trial(self):
        st = self.state()
        return st.get("trial") is not None and st.get("trial") == self.running()

    def report(self):
        return self.state().get("report")

    def clear_report(self):
        st = self.state()
        if st.get("report") is not None:
            st["report"] = None
            self._save(st)

    # ---- update -------------------------------------------------------------------------------------
    def _check_no_trial(self, st):
        if st.get("trial") is not None:
            # its fallback is the only other slot: writing there would leave nothing to roll back to
            raise SlotError("the update to slot %s is still on trial" % st["trial"])

    def target(self):
        st = self.state()
        self._check_no_trial(st)
        return "b" if (st.get("active") or self.running()) == "a" else "a"

    def writer(self):
        return _FileWriter(self, self.target())

    def begin_trial(self, name):
        """The next boot runs slot name (complete, written by writer()) on trial."""
        if slotboot.slot_info(self.root, name) is None:
            raise SlotError("slot %s is not complete" % name)
        st = self.state()
        self._check_no_trial(st)
        if st.get("active") is None:
            st["active"] = self.running()
        if name == st["active"]:
            raise SlotError("slot %s is the active one" % name)
        st["kind"] = self.kind
        st["trial"] = name
        st["boots"] = 0
        st["report"] = None
        self._save(st)

    def confirm(self):
        """BootNotification Accepted: a slot on trial becomes the active one. True if that happened now."""
        st = self.state()
        trial = st.get("trial")
        if trial is None or trial != self.running():
            return False
        self._confirmed()
        info = slotboot.slot_info(self.root, trial)
        st["active"] = trial
        st["trial"] = None
        st["boots"] = 0
        st["report"] = ["Installed", info.get("version") if info else None, ""]
        self._save(st)
        return True

    def abandon(self, reason):
        """Gives up the running trial (the caller resets the board next). True if there was one."""
        st = self.state()
        if st.get("trial") is None or st.get("trial") != self.running():
            return False
        self._abandoned(st)
        slotboot.give_up(self.root, st, reason)
        return True

    def _confirmed(self):
        pass

    def _abandoned(self, st):
        pass

    def _next_seq(self):
        return self.state().get("gen", 0) + 1  # later than every slot written before (docs/ota.md)


class _Writer:
    # What firmware.ota.package.install() drives: begin(m, raw, sig), then open/write/close per file, then
    # commit(m); abort() after a failure. Writes slot.json last: until then the slot is incomplete.
    def __init__(self, slots, name):
        self.slots = slots
        self.name = name
        self.dir = slotboot.slot_dir(slots.root, name)

    def _meta(self, raw, sig):
        try:
            os.remove(self.dir + "/slot.json")  # first: from here on the slot is incomplete
        except OSError:
            pass
        _mkdirs(self.dir)
        _write_file(self.dir + "/manifest.json", raw)
        _write_file(self.dir + "/manifest.sig", sig)

    def commit(self, m):
        tmp = self.dir + "/slot.json.tmp"
        slotboot.write_framed(tmp, {"seq": self.slots._next_seq(), "version": m["version"]})
        os.rename(tmp, self.dir + "/slot.json")

    def abort(self):
        pass


class _FileWriter(_Writer):
    def __init__(self, slots, name):
        _Writer.__init__(self, slots, name)
        self.f = None

    def begin(self, m, raw, sig):
        if m["kind"] != "files":
            raise SlotError("this board runs its firmware from files; the package is a whole image")
        self._check_space(m, len(raw) + len(sig))
        try:
            os.remove(self.dir + "/slot.json")
        except OSError:
            pass
        _remove_tree(self.dir)  # the previous version's files must not linger next to the new ones
        self._meta(raw, sig)

    def _check_space(self, m, meta):
        try:
            vfs = os.statvfs(self.slots.root)
        except (OSError, AttributeError):
            return
        block = vfs[0] or 4096
        need = meta + 4 * block
        for e in m["files"]:
            need += (e[1] + block - 1) // block * block
        have = vfs[4] * block + _usage(self.dir, block)
        if need > have:
            raise SlotError("not enough flash: the update needs %d KB, %d KB are free" % (need // 1024, have // 1024))

    def open(self, path, size):
        full = self.dir + "/" + path
        i = full.rfind("/")
        _mkdirs(full[:i])
        self.f = open(full, "wb")

    def write(self, mv):
        self.f.write(mv)

    def close(self):
        f = self.f
        self.f = None
        f.close()

    def abort(self):
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None
