# Runs on the MicroPython unix port (started by tools/sim.py --flash-code): boots the firmware from a flash
# directory the way a board boots from its flash, so that what `make deploy` installed is what runs.
#     micropython flashboot.py FLASH --board ... (the rest is main.py's command line, --state FLASH among it)
# A board runs /boot.py (slotboot picks slots/a or slots/b and puts it first on sys.path), then /main.py; if that
# returns (the firmware held for one boot by make deploy), the board waits at its REPL, and so does this. Here the
# flash is a host directory: the runner makes it the current directory, so the board's relative imports and
# files resolve in it, and hands slotboot its path as the root. (Mounting it at / with vfs.VfsPosix(FLASH) would
# be closer, but a rooted VfsPosix cannot rename files, which the firmware's atomic writes need.)
import sys
import os

flash = sys.argv[1]
os.chdir(flash)
sys.path[:] = ["", ".frozen"]  # a board's path: the flash, then frozen modules


def _run(name):
    with open(name) as f:
        src = f.read()
    exec(src, {"__name__": "__main__"})


try:
    os.stat("boot.py")
except OSError:
    pass  # a flash without boot.py (never deployed): main.py alone, as a board would
else:
    import slotboot

    _select = slotboot.select
    # boot.py calls select() with the board's root, "/"; the slot directories live under this flash
    slotboot.select = lambda root=None: _select(flash if root in (None, "/") else root)
    _run("boot.py")
_run("main.py")
# main.py returned without starting the firmware (deploy.hold): a board now sits at its REPL, so the MCU stays up
# and quiet instead of exiting, which the sim would answer with a restart.
import time  # noqa: E402

while True:
    time.sleep(3600)
