"""A state file damaged the four ways the flash campaign does it (tools/torture.py --only flash), and a file
rotated as earlier firmware rotated its transaction file; shared by the store and transaction-queue tests."""
import json
import os
from binascii import crc32
from firmware import store


def rotate(p, obj):
    """Writes obj to p as that firmware did at every sample: p renamed to p.bak (the previous generation), then
    p written new, one copy, CRC-framed."""
    if store.exists(p):
        os.rename(p, p + store.BAK)
    body = json.dumps(obj).encode()
    with open(p, "wb") as f:
        f.write(b"%08x\n" % (crc32(body) & 0xFFFFFFFF))
        f.write(body)


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
