"""Installs the firmware on a board over its serial port with mpremote (`make deploy`), then watches it boot.

    .venv/bin/python tools/deploy.py --port /dev/ttyUSB0 --config charger.json
            [--vendor-key keys/ota-vendor-key.pem] [--version 0.1.0] [--timeout 90] [--no-reset] [--ignore-heap]
    .venv/bin/python tools/deploy.py --port /dev/ttyUSB0 --probe           # what the board is, nothing written
    .venv/bin/python tools/deploy.py --port /dev/ttyUSB0 --follow          # reset and watch the log only
    .venv/bin/python tools/deploy.py --check-config charger.json           # validate the config only

Its parts: boardcheck.py (what the board is, whether the firmware fits), deviceconfig.py (CONFIG, checked by the
firmware's own code), bootlog.py (what the board's log says after the reset); this file builds, copies and drives.

What a deploy does, in this order; anything refused stops it before the board's flash is touched:
 1. Validates CONFIG (the device settings, provision.json's keys) with the firmware's own code: firmware/config.py
    applies it in the MicroPython unix port on this host exactly as the board applies provision.json at boot, so
    every field is checked by the rules the board uses; the tool adds what only makes sense at install time (a
    Central System URL and charge box id are required, wss:// needs a CA certificate, which must parse and not be
    expired). CentralSystemCa may name a PEM file (relative to CONFIG); Pins may be a JSON object. Settings CONFIG
    leaves out are written with the firmware's defaults, so the board's settings are CONFIG's, not a mix with an
    earlier deploy's.
 2. Asks the board what it is (a small script in its raw REPL, after a soft reset: sys.implementation and its
    .mpy ABI, sys.platform, the machine name, the heap, PSRAM, a frozen firmware) and refuses with a sentence
    when the firmware's .mpy files cannot load there or the board's heap is smaller than boardcheck.heap_need()
    (--ignore-heap installs anyway).
 3. If the board's main.py knows deploy.hold (one installed by make deploy), restarts the board with its firmware
    held for that one boot: a firmware stopped with Ctrl-C leaves its watchdog armed, and an ESP32's cannot be
    stopped. Then compiles the firmware for the board's architecture (tools/build.py --march), packs it as a
    signed update package with the vendor key (tools/otapack.py) and checks the package against the board's ABI.
 4. Lists the board's files with their SHA-256 (a script run on the board) and copies only what differs into the
    slot layout of docs/ota.md: the running slot (slots/a on a first deploy), whose slot.json is removed first and
    written last; files the new firmware no longer has are removed; then the slot state (that slot active, no
    trial), slotboot.mpy, main.py, boot.py, otakey.json (the vendor public key) and provision.json. A board with
    the firmware frozen in (boards/EVSE_ESP32, docs/custom-build.md) gets no code, only those root files.
 5. Resets the board and follows its log until BootNotification is Accepted, or says why not (WiFi, DNS, TLS
    verification, HTTP 401, no answer...) from the firmware's log lines; --timeout bounds the wait.
Paths on the board are relative to its current directory, which is the flash root after a reset.
Exit status: 0 done (Accepted), 1 refused or failed, 2 bad config or arguments, 3 installed but not Accepted.
"""
import argparse
import datetime
import hashlib
import json
import os
import re
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import build  # noqa: E402
import otapack  # noqa: E402
from boardcheck import (Refused, arch_of, check_board, check_heap, describe, heap_need,  # noqa: E402
                        mpy_cross_version, word_bytes, PROBE)
from bootlog import SerialLines, follow  # noqa: E402
from deviceconfig import ConfigError, load_config, provision_bytes  # noqa: E402

DEFAULT_KEY = os.path.join(ROOT, "keys", otapack.PRIVATE_NAME)
ROOT_FILES = ("slotboot.mpy", "main.py", "boot.py", otapack.PUBLIC_NAME, "provision.json")  # in write order


# ---- the firmware package ----------------------------------------------------------------------------------
def firmware_version(src):
    with open(os.path.join(src, "firmware", "app.py")) as f:
        m = re.search(r'^VERSION = "([^"]+)"', f.read(), re.M)
    return m.group(1) if m else "0.0.0"


def build_package(src, march, private_key, version=None):
    """Compiles the firmware under src for march and packs it: (build dir, manifest dict, raw manifest,
    signature, [(path, bytes)]). The build time recorded is the newest source's, so an unchanged tree gives
    the same manifest and a deploy without changes copies nothing."""
    out = os.path.join(src, "build", "deploy-" + march)
    build.build(out, march, root=src)
    blobs = otapack.tree_files(out)
    newest = max(os.path.getmtime(os.path.join(src, rel)) for rel in build.sources(src))
    built = datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = otapack.pack(private_key, version or firmware_version(src), blobs, "files", built=built)
    m, raw, sig, blobs = otapack.read_package(data, private_key.public_key())
    return out, m, raw, sig, blobs


# ---- the board ---------------------------------------------------------------------------------------------
_LIST = r"""
import os, hashlib, binascii
_b = bytearray(1024)
def _h(p):
    d = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            n = f.readinto(_b)
            if not n:
                break
            d.update(memoryview(_b)[:n])
    return binascii.hexlify(d.digest()).decode()
def _walk(d):
    try:
        it = list(os.ilistdir(d))
    except OSError:
        return
    print("D", d)
    for e in it:
        p = d + "/" + e[0]
        if e[1] & 0x4000:
            _walk(p)
        else:
            print("F", _h(p), p)
for _p in %r:
    try:
        print("F", _h(_p), _p)
    except OSError:
        pass
for _d in %r:
    _walk(_d)
"""


class Board:
    """The board's raw REPL through mpremote's serial transport."""

    def __init__(self, port, baud=115200):
        from mpremote.transport_serial import SerialTransport
        self.port = port
        self.t = SerialTransport(port, baudrate=baud)

    def enter(self):
        # Ctrl-C stops a running firmware, Ctrl-D soft-resets: the heap is measured clean, with boot.py run
        self.t.enter_raw_repl(soft_reset=True)

    def run(self, code, timeout=30):
        from mpremote.transport import TransportExecError
        out, err = self.t.exec_raw(code, timeout=timeout)
        if err:
            raise TransportExecError(out, err.decode(errors="replace"))
        return out.decode(errors="replace")

    def probe(self):
        out = self.run(PROBE)
        for line in out.splitlines():
            if line.startswith("PROBE"):
                return json.loads(line[5:])
        raise Refused("the board did not answer the probe: %r" % out[-300:])

    def listing(self, files, dirs):
        """({path: sha256 hex} of the given files and everything under dirs, {directories that exist})."""
        found, seen = {}, set()
        for line in self.run(_LIST % (tuple(files), tuple(dirs)), timeout=120).splitlines():
            parts = line.split(" ", 2)
            if parts[0] == "F" and len(parts) == 3:
                found[parts[2]] = parts[1]
            elif parts[0] == "D" and len(parts) == 2:
                seen.add(parts[1])
        return found, seen

    def read(self, path):
        try:
            return bytes(self.t.fs_readfile(path))
        except OSError:
            return None

    def write(self, path, data):
        self.t.fs_writefile(path, data, chunk_size=512)

    def mkdirs(self, paths):
        """Makes each directory that does not exist yet (parents first: give them in that order)."""
        for path in sorted(paths, key=lambda p: (p.count("/"), p)):
            try:
                self.t.fs_mkdir(path)
            except FileExistsError:
                pass

    def remove(self, path):
        self.t.fs_rmfile(path)

    def rmdir(self, path):
        self.t.fs_rmdir(path)

    def reset(self):
        """A hard reset (machine.reset()); the port stays open for the log."""
        self.t.exec_raw_no_follow("import machine\nmachine.reset()")
        self.t.in_raw_repl = False

    def close(self):
        try:
            self.t.close()
        except OSError:
            pass


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _dirs_of(paths):
    out = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def slot_state(board, slots="slots"):
    """The board's slot state (slotboot.read_state's choice of the two generations), or None."""
    states = []
    for i in (0, 1):
        raw = board.read("%s/state.%d" % (slots, i))
        if raw and len(raw) >= 9 and raw[8:9] == b"\n":
            try:
                if int(raw[:8], 16) == zlib.crc32(raw[9:]) & 0xFFFFFFFF:
                    st = json.loads(raw[9:])
                    if isinstance(st, dict) and isinstance(st.get("gen"), int):
                        states.append(st)
            except ValueError:
                pass
    return max(states, key=lambda s: s["gen"]) if states else None


def install(board, info, root_files, slot_blobs=None, raw=None, sig=None, version=None, say=print):
    """Copies what differs onto the board. slot_blobs None: a frozen build, root files only. Returns the list of
    paths written."""
    state = slot_state(board)
    written = []
    if slot_blobs is not None:
        target = "a"
        if state and state.get("kind", "files") == "files" and state.get("active") in ("a", "b"):
            target = state["active"]
        sdir = "slots/" + target
        local = {"%s/%s" % (sdir, p): d for p, d in slot_blobs}
        local["%s/manifest.json" % sdir] = raw
        local["%s/manifest.sig" % sdir] = sig
        remote, dirs = board.listing(list(root_files), [sdir])
        changed = [p for p, d in local.items() if remote.get(p) != _sha(d)]
        stale = sorted(p for p in remote if p.startswith(sdir + "/") and p not in local
                       and p != sdir + "/slot.json")
        slot_json = sdir + "/slot.json"
        if changed or stale or slot_json not in remote:
            say("slot %s: %d file%s to copy, %d to remove" % (target, len(changed), "" if len(changed) == 1 else "s",
                                                              len(stale)))
            if slot_json in remote:
                board.remove(slot_json)  # the slot is incomplete until slot.json is written again, last
            board.mkdirs(sorted(d for d in _dirs_of(local) | {sdir} if d not in dirs))
            for p in sorted(changed, key=lambda p: p.endswith(("manifest.json", "manifest.sig"))):
                say("  copy %s (%d B)" % (p, len(local[p])))
                board.write(p, local[p])
                written.append(p)
            for p in stale:
                say("  remove %s" % p)
                board.remove(p)
            for d in sorted((d for d in dirs if d.startswith(sdir + "/") and d not in _dirs_of(local)),
                            key=lambda p: -p.count("/")):
                board.rmdir(d)
            seq = (state or {}).get("gen", 0) + 1
            board.write(slot_json, otapack.framed({"seq": seq, "version": version}))
            written.append(slot_json)
        else:
            say("slot %s: up to date (%d files)" % (target, len(local)))
        want = {"kind": "files", "active": target, "trial": None, "boots": 0, "report": None}
    else:
        remote, dirs = board.listing(list(root_files), [])
        want = {"kind": "image", "active": info.get("partition"), "trial": None, "boots": 0, "report": None}
        board.mkdirs(["slots"])
    if state is None or any(state.get(k) != v for k, v in want.items()):
        st = dict(want, gen=(state or {}).get("gen", 0) + 1)
        path = "slots/state.%d" % (st["gen"] % 2)  # the older generation: the other one stays intact
        say("  slot state: %s active%s" % (st["active"], ", trial ended" if state and state.get("trial") else ""))
        board.write(path, otapack.framed(st))
        written.append(path)
    for name in ROOT_FILES:
        data = root_files.get(name)
        if data is not None and remote.get(name) != _sha(data):
            say("  copy %s (%d B)" % (name, len(data)))
            board.write(name, data)
            written.append(name)
    return written


def root_files_for(build_dir, private_key, settings, frozen):
    files = {}
    for name in ("slotboot.mpy", "main.py", "boot.py"):
        if frozen and name == "slotboot.mpy":
            continue  # frozen in: a file would shadow it ("" comes before ".frozen" on sys.path)
        with open(os.path.join(build_dir, name), "rb") as f:
            files[name] = f.read()
    files[otapack.PUBLIC_NAME] = (json.dumps(otapack.public_json(private_key.public_key())) + "\n").encode()
    files["provision.json"] = provision_bytes(settings)
    return files


# ---- command line ------------------------------------------------------------------------------------------
def load_vendor_key(path):
    if not os.path.exists(path):
        raise Refused("no vendor key at %s: the firmware is installed as a signed package, and the board keeps the "
                      "public key for later updates. Make the key pair once with `.venv/bin/python tools/otapack.py "
                      "keygen --out %s` and keep %s secret (docs/ota.md)" % (path, os.path.dirname(path) or ".",
                                                                          otapack.PRIVATE_NAME))
    return otapack.load_private(path)


def connect(args, say):
    board = Board(args.port, args.baud)
    board.enter()
    info = board.probe()
    say("board: " + describe(info))
    return board, info


def do_deploy(args, say=print):
    settings, defaulted = load_config(args.config, args.src)
    say("config: %s: %d settings checked by the firmware's own rules%s" % (
        args.config, len(settings) - len(defaulted),
        "; at their defaults: " + ", ".join(defaulted) if defaulted else ""))
    if settings.get("Password") and settings.get("CentralSystemUrl", "").startswith("ws://"):
        say("warning: the Password goes over unencrypted ws://, readable on the network path; use wss://")
    key = load_vendor_key(args.vendor_key)
    cross = mpy_cross_version()
    board, info = connect(args, say)
    try:
        check_board(info, cross)
        frozen = bool(info.get("frozen"))
        need, how = heap_need(word_bytes(info), frozen)
        try:
            offered = check_heap(info, need, how)
            say("heap: the board offers %d KB, the firmware needs %d KB (%s)" % (offered // 1024, need // 1024,
                                                                                how))
        except Refused as e:
            if not args.ignore_heap:
                raise
            say("warning: %s (--ignore-heap: installing anyway)" % e)
        if info.get("hold"):
            hold_firmware(board, args, say)
        elif info.get("hold") is False:
            say("note: the board's main.py predates deploy.hold: if a running firmware armed its watchdog, the board "
                "may reset during the install; run make deploy again then")
        march = arch_of(info)
        out, m, raw, sig, blobs = build_package(args.src, march, key, args.version)
        try:
            otapack.read_package(otapack.assemble(raw, sig, otapack.key_id(key.public_key().public_numbers().n),
                                                  blobs), key.public_key(), mpy_abi=info["mpy"])
        except otapack.PackError as e:
            raise Refused("the firmware cannot load on this board: %s" % e)
        say("firmware %s: %d files compiled for %s (.mpy v%d, %s)" % (
            m["version"], len(blobs), march, m["target"].get("mpy", 0),
            "native code for " + otapack.ARCHS[m["target"]["arch"]] if m["target"].get("arch") else "bytecode only"))
        files = root_files_for(out, key, settings, frozen)
        if frozen:
            say("the firmware is frozen into this board's MicroPython: only the root files are installed")
            install(board, info, files, version=m["version"], say=say)
        else:
            install(board, info, files, blobs, raw, sig, m["version"], say=say)
        if args.no_reset:
            say("installed; not reset (--no-reset)")
            return 0
        return reset_and_follow(board, args, say)
    finally:
        board.close()


def reset_and_follow(board, args, say=print):
    say("reset: following the board's log for up to %d s" % args.timeout)
    board.reset()
    ok, text = follow(SerialLines(args.port, args.baud, board.t.serial), args.timeout, say)
    say(text)
    return 0 if ok else 3


HOLD_TIMEOUT = 30  # s for a board to reset and come up with its firmware held


def hold_firmware(board, args, say=print):
    """Restarts the board with its firmware held for one boot (main.py's deploy.hold), then takes its REPL again.
    A firmware stopped with Ctrl-C leaves its watchdog armed (an ESP32's cannot be stopped), which would reset the
    board in the middle of the copy; after this reset nothing has armed it."""
    say("reset: the firmware stays off for one boot (deploy.hold), so that its watchdog cannot cut the install")
    board.write("deploy.hold", b"")
    board.reset()
    lines = SerialLines(args.port, args.baud, board.t.serial)
    deadline = time.monotonic() + HOLD_TIMEOUT
    for line in lines:
        if line is not None and "deploy.hold" in line:
            break
        if time.monotonic() > deadline:
            raise Refused("the board did not come back from its reset within %d s (no 'deploy.hold' line from "
                          "main.py on %s)" % (HOLD_TIMEOUT, args.port))
    board.t.serial = lines.ser  # the same port, or the one reopened after a USB re-enumeration
    board.enter()


def main(argv=None, say=print):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", help="the board's serial port (/dev/ttyUSB0)")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--config", help="the device settings to install (JSON, provision.json's keys)")
    p.add_argument("--vendor-key", default=DEFAULT_KEY, help="the OTA vendor private key (tools/otapack.py keygen)")
    p.add_argument("--version", help="firmwareVersion to install (default: firmware/app.py VERSION)")
    p.add_argument("--timeout", type=float, default=90, help="seconds to wait for BootNotification Accepted")
    p.add_argument("--no-reset", action="store_true", help="install, but do not reset the board")
    p.add_argument("--ignore-heap", action="store_true",
                   help="install even when the board's heap looks too small (to measure on the board itself)")
    p.add_argument("--src", default=ROOT, help=argparse.SUPPRESS)  # the source tree to deploy (tests)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--probe", action="store_true", help="say what the board is and whether the firmware fits")
    mode.add_argument("--follow", action="store_true", help="reset the board and follow its log, install nothing")
    mode.add_argument("--check-config", metavar="CONFIG", help="validate a config file only (no board)")
    args = p.parse_args(argv)
    try:
        if args.check_config:
            settings, defaulted = load_config(args.check_config, args.src)
            say("%s: OK (%s%s)" % (args.check_config, ", ".join(k for k in settings if k not in defaulted),
                                   "; at their defaults: " + ", ".join(defaulted) if defaulted else ""))
            return 0
        if not args.port:
            p.error("--port is required")
        if args.probe or args.follow:
            board, info = connect(args, say)
            try:
                if args.follow:
                    return reset_and_follow(board, args, say)
                check_board(info)
                need, how = heap_need(word_bytes(info), bool(info.get("frozen")))
                offered = check_heap(info, need, how)
                say("fits: the board offers %d KB of heap, the firmware needs %d KB" % (offered // 1024,
                                                                                        need // 1024))
                return 0
            finally:
                board.close()
        if not args.config:
            p.error("--config is required (the device settings: CentralSystemUrl, ChargeBoxId, ...)")
        return do_deploy(args, say)
    except ConfigError as e:
        say("deploy: %s has %d problem%s%s:" % (e.path, len(e.errors), "s" if len(e.errors) > 1 else "",
                                               "" if args.check_config else "; nothing was written to the board"))
        for err in e.errors:
            say("  " + err)
        return 2
    except Refused as e:
        say("deploy: refused: %s" % e)
        return 1
    except Exception as e:  # noqa: BLE001 - mpremote's transport errors and the like: one readable line
        if "failed to access" in str(e):
            say("deploy: cannot open the serial port %s: is the board plugged in, is it the right port, and is no "
                "other program (a terminal, mpremote) holding it?" % args.port)
            return 1
        if type(e).__name__ in ("TransportError", "TransportExecError", "SerialException"):
            say("deploy: the board did not answer as expected (%s: %s)" % (type(e).__name__, e))
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
