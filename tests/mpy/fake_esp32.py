# A fake `esp32` module for testing whole-image OTA (firmware/ota/partition.py, slotboot.py) on the
# unix port: two app partitions held in bytearrays, every call recorded in `calls`, and reboot() playing the
# ESP-IDF bootloader with rollback enabled (an image booted after set_boot() is pending until
# mark_app_valid_cancel_rollback(); a reset while it is pending boots the previous one again).
# Install with sys.modules["esp32"] = fake_esp32, then call setup().

import gc

calls = []
flash = {}       # label -> bytearray (the partition's bytes; erased = 0xff)
_boot = None     # label set_boot() chose
_running = None
_pending = False  # the running image came from set_boot() and is not confirmed yet
_previous = None
rollback_enabled = True
_SIZE = 12 * 1024  # small partitions (3 blocks): room for the test images, little heap


def setup(running="ota_0", size=_SIZE, rollback=True):
    global _boot, _running, _pending, _previous, rollback_enabled
    del calls[:]
    flash.clear()
    gc.collect()
    for label in ("ota_0", "ota_1"):
        flash[label] = bytearray(size)
        flash[label][:] = b"\xff" * size
    _boot = _running = running
    _pending = False
    _previous = None
    rollback_enabled = rollback


def reboot():
    """A reset: the bootloader's choice, then the new image's start."""
    global _running, _pending, _previous, _boot
    calls.append(("reboot",))
    if _pending and rollback_enabled and _boot == _running:  # never confirmed: the bootloader goes back
        _boot = _previous
        _running = _previous
        _pending = False
        return _running
    if _boot != _running:  # set_boot() makes any image pending, the way back to an old one too
        _previous = _running
        _running = _boot
        _pending = True
    return _running


def running():
    return _running


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, which):
        if which == Partition.RUNNING:
            label = _running
        elif which == Partition.BOOT:
            label = _boot
        else:
            label = which
        if label not in flash:
            raise OSError(2)  # ENOENT, as the real constructor
        self.label = label
        calls.append(("Partition", which))

    def info(self):
        return (0, 16 + int(self.label[-1]), 0x10000, len(flash[self.label]), self.label, False)

    def get_next_update(self):
        calls.append(("get_next_update", self.label))
        other = "ota_1" if self.label == "ota_0" else "ota_0"
        return Partition(other)

    def ioctl(self, cmd, arg):
        if cmd == 6:  # BLOCK_ERASE
            calls.append(("erase", self.label, arg))
            data = flash[self.label]
            data[arg * 4096:(arg + 1) * 4096] = b"\xff" * 4096
            return 0
        if cmd == 4:
            return len(flash[self.label]) // 4096
        if cmd == 5:
            return 4096
        return None

    def writeblocks(self, block, buf, offset=None):
        if offset is None:
            raise AssertionError("the writer must erase itself and use the offset form")
        start = block * 4096 + offset
        data = flash[self.label]
        for i in range(len(buf)):
            if data[start + i] != 0xFF:
                raise AssertionError("write to flash that was not erased at %d" % (start + i))
        data[start:start + len(buf)] = buf
        calls.append(("writeblocks", self.label, block, offset, len(buf)))

    def readblocks(self, block, buf, offset=0):
        start = block * 4096 + offset
        buf[:] = flash[self.label][start:start + len(buf)]

    def set_boot(self):
        global _boot
        calls.append(("set_boot", self.label))
        _boot = self.label

    @staticmethod
    def mark_app_valid_cancel_rollback():
        global _pending
        calls.append(("mark_app_valid_cancel_rollback",))
        _pending = False
