"""The firmware-update figures of `make bench` (issue 11, docs/ota.md "Measurements"): the update package of this
build, the time from UpdateFirmware to Installed through the simulated board, the signature check on the host,
and the live heap while an update runs.

    .venv/bin/python tools/otabench.py            (the same figures alone, as JSON)

- package: tools/otapack.py packs the build (tools/build.py's build/unix tree, the modules a slot holds) with a
  throw-away vendor key: its size and parts.
- timing: a flash directory laid out as `make deploy` leaves a board (version OLD in slot a, the vendor key at the
  root), booted by tools/sim.py --flash-code against this process's Central System (harness.csms.Csms); the
  package served by Python's http.server on 127.0.0.1. The stages come from the firmware's own log lines and
  their board-time stamps (ms): download (UpdateFirmware logged -> "downloaded"), check (-> "checked": signature
  and every file's SHA-256), installation (-> "installed in slot": Installing sent, the slot written), then the
  reboot into the new slot up to Installed at the Central System (wall clock).
- verification: firmware/ota/sign.py's verify() of the package's signature in the MicroPython unix port, from the
  build, many times; x200 for an ESP32 (DESIGN.md §5).
- heap: the probe task of tools/harness/probe_mcu.py (BENCHPROBE lines: the live heap after a collection every
  2 ms) runs beside the firmware. --flash-code boots the flash's own main.py, so the flash gets main.py with the
  probe's task queued in front of it (the firmware's main.py unchanged after it). Peak during the update (the old
  version's MCU, from UpdateFirmware to its reboot) against the live heap of the idle, booted charger before.
"""
import asyncio
import datetime
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build  # noqa: E402  (tools/build.py)
import otapack  # noqa: E402  (tools/otapack.py)
from harness import BUILD_UNIX, ROOT  # noqa: E402
from harness.csms import Csms  # noqa: E402
from harness.sim import PROBE_RE, PROBE_SCRIPT, AsyncSim, probe_env  # noqa: E402

MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
ESP32_SLOWDOWN = 200  # DESIGN.md §5: the unix port is 150-250x an ESP32 at 240 MHz
OLD, NEW = "bench-old", "bench-new"
CP = "CP1"
# The code runs from the slot's .mpy files, all of it in the heap (as in tests/integration/test_fw_management.py):
# 110wK holds the charger but not the update's 48 KB on top (README, "Updating a simulated charger").
HEAP = "200wK"

# MicroPython: the real verify() of the package's signature, timed; argv: key file, package, rounds
_VERIFY = r"""
import sys, time, hashlib
from firmware.ota import sign
key = sign.load_key(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    head = f.read(20)
    sig_len = int.from_bytes(head[6:8], "little")
    raw = f.read(int.from_bytes(head[8:12], "little"))
    sig = f.read(sig_len)
digest = hashlib.sha256(raw).digest()
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.ticks_us()
    ok = sign.verify(key, digest, sig)
    times.append(time.ticks_diff(time.ticks_us(), t0))
    assert ok
print("VERIFY", key.size * 8, " ".join(str(t) for t in times))
"""


def _iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_kit(d, tree):
    """Vendor key and the packages of this build: -> {"pub", "key", "old", "new" (paths), "parts"}."""
    priv, pub = otapack.keygen(os.path.join(d, "vendor"))
    key = otapack.load_private(priv)
    blobs = otapack.tree_files(tree)
    files = os.path.join(d, "files")
    os.makedirs(files)
    new = otapack.pack(key, NEW, blobs)
    with open(os.path.join(files, "new.fwpk"), "wb") as f:
        f.write(new)
    raw_len = int.from_bytes(new[8:12], "little")
    sig_len = int.from_bytes(new[6:8], "little")
    modules = sum(len(b) for _, b in blobs)
    return {"pub": pub, "files": files, "new": os.path.join(files, "new.fwpk"),
            "old": otapack.pack(key, OLD, blobs),
            "parts": {"size": len(new), "modules": modules, "files": len(blobs), "manifest": raw_len,
                      "signature": sig_len, "header": 20, "key_bits": key.key_size}}


def verify_times(pub, package, rounds=50):
    """The signature check on the host, µs per verify()."""
    env = dict(os.environ, MICROPYPATH=".frozen:" + BUILD_UNIX)
    r = subprocess.run([MICROPYTHON, "-X", "heapsize=110wK", "-c", _VERIFY, pub, package, str(rounds)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    for line in r.stdout.splitlines():
        if line.startswith("VERIFY "):
            _, bits, rest = line.split(" ", 2)
            return int(bits), [int(t) for t in rest.split()]
    raise RuntimeError("verify run failed: %s" % (r.stdout + r.stderr)[-800:])


def lay_out_flash(flash, tree, old_package, pub, probe):
    """A board's flash as make deploy leaves it (boot.py, main.py, slotboot.mpy, the key, slot a active). With
    probe, main.py first queues probe_mcu.py's task (its part before the firmware's main.py is run)."""
    os.makedirs(flash)
    for name in ("boot.py", "main.py", "slotboot.mpy"):
        shutil.copy2(os.path.join(tree, name), os.path.join(flash, name))
    shutil.copy2(pub, os.path.join(flash, otapack.PUBLIC_NAME))
    otapack.write_slot(old_package, otapack.load_public(pub)[0], os.path.join(flash, "slots", "a"), activate=True)
    if probe:
        with open(PROBE_SCRIPT) as f:
            src = f.read()
        cut = src.index("asyncio.create_task(_probe())")
        head = src[:cut] + "asyncio.create_task(_probe())\n"
        with open(os.path.join(tree, "main.py")) as f:
            main = f.read()
        with open(os.path.join(flash, "main.py"), "w") as f:
            f.write(head + "\n# ---- the board's main.py ----\n" + main)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=directory))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


def _stamp(sim, pattern, since=0):
    """The board time (ms) of the firmware's first log line matching pattern, from line index since."""
    import re

    rx = re.compile(r"^\[mcu\] (\d+) .*" + pattern)
    for line in list(sim.lines)[since:]:
        m = rx.search(line)
        if m:
            return int(m.group(1))
    return None


async def update_run(d, tree, kit, port, probe):
    """One UpdateFirmware to Installed through the sim -> the stage times, and with probe the heap figures."""
    flash = os.path.join(d, "flash-%s" % ("probe" if probe else "time"))
    lay_out_flash(flash, tree, kit["old"], kit["pub"], probe)
    csms = Csms()
    await csms.start()
    env = probe_env(True, 2, 100) if probe else None
    sim = AsyncSim(csms.url, CP, romfs=None, state_dir=flash, heap=HEAP, env=env)
    sim.argv = (lambda argv: lambda: argv() + ["--flash-code"])(sim.argv)
    await sim.start()
    try:
        await csms.wait_for("StatusNotification", CP, timeout=60, where=lambda p: p["connectorId"] == 1)
        await asyncio.sleep(0.5)  # the idle charger's live heap, a few probe reports
        t_idle = time.monotonic()
        idle = [p["live"] for p in sim.probes()] if probe else []
        mark = len(sim.lines)
        t0 = time.monotonic()
        await csms.request(CP, "UpdateFirmware", {"location": "http://127.0.0.1:%d/new.fwpk" % port,
                                                  "retrieveDate": _iso(time.time() - 60)})
        await csms.wait_for("FirmwareStatusNotification", CP, timeout=120,
                            where=lambda p: p["status"] == "Installed")
        total = time.monotonic() - t0
        t_req = _stamp(sim, r"I ota: UpdateFirmware from ", mark)
        t_dl = _stamp(sim, r"I ota: downloaded \d+ bytes", mark)
        t_chk = _stamp(sim, r"I ota: package \S+ checked", mark)
        t_ins = _stamp(sim, r"I ota: version \S+ installed in slot", mark)
        t_reboot = next(t for t, line in sim.timed() if t >= t0 and "[sim] MCU reboot" in line)
        out = {"total_ms": total * 1000, "download_ms": t_dl - t_req, "check_ms": t_chk - t_dl,
               "install_ms": t_ins - t_chk, "reboot_to_installed_ms": (t0 + total - t_reboot) * 1000}
        out["rest_ms"] = out["total_ms"] - sum(out[k] for k in ("download_ms", "check_ms", "install_ms",
                                                                 "reboot_to_installed_ms"))
        if probe:
            # the old version's MCU from the request to its reboot; each MCU process reports its own peak
            during = [p for p in sim.probes(t_idle) if p["t"] < t_reboot]
            out["heap_idle_live"] = max(idle) if idle else None
            out["heap_peak_live"] = max(p["live"] for p in during) if during else None
            out["heap_total"] = (during[-1]["live"] + during[-1]["free"]) if during else None
        crashes = [line for line in sim.crashes()]
        if crashes:
            out["crashes"] = crashes[:5]
        return out
    finally:
        await sim.stop()
        await csms.stop()


async def figures(runs=3):
    """Everything above -> a dict for bench.py's table (and JSON)."""
    tree, _ = build.build(BUILD_UNIX)
    d = tempfile.mkdtemp(prefix="otabench-")
    srv = None
    try:
        kit = await asyncio.to_thread(make_kit, d, tree)
        bits, times = await asyncio.to_thread(verify_times, kit["pub"], kit["new"])
        srv = serve(kit["files"])
        port = srv.server_address[1]
        timed = []
        for _ in range(runs):
            timed.append(await update_run(d, tree, kit, port, False))
            shutil.rmtree(os.path.join(d, "flash-time"))
        heap = await update_run(d, tree, kit, port, True)
        med = {k: statistics.median(r[k] for r in timed) for k in timed[0] if k.endswith("_ms")}
        return {"package": kit["parts"], "verify_us": {"bits": bits, "median": statistics.median(times),
                                                        "min": min(times), "max": max(times), "n": len(times)},
                "update_ms": med, "update_runs": [r["total_ms"] for r in timed], "heap": heap,
                "esp32_slowdown": ESP32_SLOWDOWN}
    finally:
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        shutil.rmtree(d, ignore_errors=True)


def rows(o, row):
    """The table rows of figures(o), through bench.py's row(section, name, value, note, ...)."""
    pk = o["package"]
    row("ota", "update package (this build)", "%d B" % pk["size"],
        "%d files %d B, manifest %d B, RSA-%d signature %d B, header %d B" % (
            pk["files"], pk["modules"], pk["manifest"], pk["key_bits"], pk["signature"], pk["header"]))
    u = o["update_ms"]
    row("ota", "UpdateFirmware -> Installed, median", "%.0f ms" % u["total_ms"],  # each stage: its median
        "%d run(s) (%s ms); sim --flash-code, HTTP on loopback, reboot into the new slot included" % (
            len(o["update_runs"]), "-".join("%.0f" % t for t in (min(o["update_runs"]), max(o["update_runs"])))))
    row("ota", "  download", "%.0f ms" % u["download_ms"], "request logged -> package on flash (board time)")
    row("ota", "  check: signature + every SHA-256", "%.0f ms" % u["check_ms"],
        "ESP32 estimate x%d: %.1f s" % (o["esp32_slowdown"], u["check_ms"] * o["esp32_slowdown"] / 1000))
    row("ota", "  install into the other slot", "%.0f ms" % u["install_ms"],
        "Installing sent, slot written; ESP32 estimate x%d: %.1f s, before its flash writes" % (
            o["esp32_slowdown"], u["install_ms"] * o["esp32_slowdown"] / 1000))
    row("ota", "  reboot -> Installed", "%.0f ms" % u["reboot_to_installed_ms"],
        "the new slot boots; BootNotification Accepted confirms the trial")
    row("ota", "  the rest", "%.0f ms" % u["rest_ms"],
        "the request, the engine's start, the reset; retrieveDate a minute ago: no wait for it")
    v = o["verify_us"]
    row("ota", "signature check (RSA-%d), host" % v["bits"], "%.2f ms" % (v["median"] / 1000),
        "median of %d (%.2f-%.2f ms), firmware/ota/sign.py in the unix port" % (v["n"], v["min"] / 1000,
                                                                                v["max"] / 1000))
    row("ota", "signature check, ESP32 estimate", "%.2f s" % (v["median"] * o["esp32_slowdown"] / 1e6),
        "x%d" % o["esp32_slowdown"])
    h = o["heap"]
    if h.get("heap_peak_live") is not None:
        row("ota", "peak live heap during an update", "%d B" % h["heap_peak_live"],
            "idle before %d B: +%d B for the update, its code imported from .mpy files included; %s heap" % (
                h["heap_idle_live"], h["heap_peak_live"] - h["heap_idle_live"], HEAP))
    else:
        row("ota", "peak live heap during an update", "-", "no probe report")


if __name__ == "__main__":
    res = asyncio.run(figures(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
    print(json.dumps(res, indent=1))
    lines = []
    rows(res, lambda *a, **k: lines.append("  ".join(str(x) for x in a)))
    print("\n".join(lines))
