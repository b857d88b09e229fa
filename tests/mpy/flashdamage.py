"""A state file damaged the four ways the flash campaign does it (tools/torture.py --only flash); shared by the
store and transaction-queue tests."""
import os
from firmware import store


def damage(p, mode):
    """mode: "half" (truncated), "garbage", "zero" (emptied) or "deleted"."""
    raw = store.read(p)
    if mode == "deleted":
        os.remove(p)
        return
    with open(p, "wb") as f:
        if mode == "half":
            f.write(raw[:len(raw) // 2])
        elif mode == "garbage":
            f.write(bytes((i * 151 + 7) & 0xFF for i in range(len(raw))))
        # "zero": nothing
