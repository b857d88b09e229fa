# Whole-image A/B slots for boards running a custom frozen build: the ESP32 app partitions (ota_0/ota_1) through
# esp32.Partition, behind the interface of firmware/ota/slots.py's FileSlots. The bootloader switches images and,
# with its rollback on, drops an image that resets before confirm(); slotboot.py reports what happened.
from micropython import const
import slotboot
from firmware.ota.slots import FileSlots, SlotError, _Writer

_ERASE = const(6)  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE
_BLOCK = const(4096)  # esp32.Partition's native block: the erase unit


class PartitionSlots(FileSlots):
    """Whole-image slots: the ESP32 app partitions (ota_0/ota_1); the bootloader switches and rolls back.
    slots/<partition label>/ on the file system keeps each image's manifest and slot.json (its version)."""
    kind = "image"

    def __init__(self, root="/", esp32=None):
        FileSlots.__init__(self, root)
        if esp32 is None:
            import esp32
        self.esp32 = esp32

    def _running_part(self):
        return self.esp32.Partition(self.esp32.Partition.RUNNING)

    def running(self):
        return self._running_part().info()[4]

    def target(self):
        self._check_no_trial(self.state())
        return self._running_part().get_next_update().info()[4]

    def writer(self):
        self._check_no_trial(self.state())
        return _PartitionWriter(self, self._running_part().get_next_update())

    def begin_trial(self, name):
        if slotboot.slot_info(self.root, name) is None:
            raise SlotError("image %s is not complete" % name)
        st = self.state()
        self._check_no_trial(st)
        st["kind"] = self.kind
        st["active"] = self.running()
        st["trial"] = name
        st["boots"] = 0
        st["report"] = None
        # The state first: a power cut before set_boot() then looks like a rollback and is reported as one.
        self._save(st)
        try:
            self.esp32.Partition(name).set_boot()
        except OSError as e:  # the bootloader's own image check failed
            st["trial"] = None
            self._save(st)
            raise SlotError("partition %s refused as boot image: %s" % (name, e))

    def _confirmed(self):
        # Before the state: a power cut between the two leaves a valid image still on trial (confirmed again at
        # the next boot), never a state that trusts an image the bootloader will roll back.
        self.esp32.Partition.mark_app_valid_cancel_rollback()

    def _abandoned(self, st):
        self.esp32.Partition(st["active"]).set_boot()


class _PartitionWriter(_Writer):
    def __init__(self, slots, part):
        _Writer.__init__(self, slots, part.info()[4])
        self.part = part
        self.off = 0

    def begin(self, m, raw, sig):
        if m["kind"] != "image":
            raise SlotError("this board runs a whole firmware image; the package holds files")
        size = m["files"][0][1]
        cap = self.part.info()[3]
        if size > cap:
            raise SlotError("image of %d bytes, partition %s holds %d" % (size, self.name, cap))
        self._meta(raw, sig)

    def open(self, path, size):
        self.off = 0

    def write(self, mv):
        # Erase each 4 KB block when the write reaches it, then write in place: small chunks, no 4 KB buffer.
        off = self.off
        i = 0
        n = len(mv)
        while i < n:
            block = off // _BLOCK
            inner = off % _BLOCK
            if inner == 0:
                self.part.ioctl(_ERASE, block)
            k = min(n - i, _BLOCK - inner)
            self.part.writeblocks(block, mv[i:i + k], inner)
            i += k
            off += k
        self.off = off

    def close(self):
        pass
