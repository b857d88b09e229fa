# MicroPython startup of the fake board's REPL (tests/integration/fake_board.py runs
# `micropython -X heapsize=H -i fake_board_repl.py FLASH`): the unix port then answers mpremote as a board would.
# Its flash is the directory FLASH, made the current directory: a board's raw REPL starts in its flash root, and
# tools/deploy.py uses paths relative to it. (vfs.VfsPosix(FLASH) mounted at / would look more like a board, but a
# rooted VfsPosix cannot rename files.)
import sys
import os

_HARD_RESET = 66  # exit code that tells fake_board.py "machine.reset()": boot the firmware from the flash

os.chdir(sys.argv[1])
sys.path[:] = ["", ".frozen"]
sys.argv[:] = [""]


class _Machine:
    # The unix port has no machine.reset(): here it ends the process with a code the supervisor knows. import
    # finds this object in sys.modules before the built-in module; anything else comes from the real one.
    def __init__(self, real):
        self._real = real

    def reset(self):
        sys.exit(_HARD_RESET)

    def __getattr__(self, name):
        return getattr(self._real, name)


import machine  # noqa: E402

sys.modules["machine"] = _Machine(machine)
del machine, _Machine
