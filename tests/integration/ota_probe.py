# Runs under the MicroPython unix port as a board's firmware would around the update and diagnostics engines:
# it boots the flash directory like boot.py (slotboot.select puts the running slot first on sys.path, so the
# engines come from the slot's .mpy files), then drives one engine with stand-ins for the OCPP side.
#
#   ota_probe.py FLASH update [--url URL --at EPOCH --retries N --interval S] [--ca FILE] [--busy-file PATH]
#                             [--slow-install MS] [--mem] [--offline]
#   ota_probe.py FLASH diag --url DIR_URL [--retries N --interval S] [--ca FILE] [--start EPOCH --stop EPOCH]
#                           [--secret TEXT] [--lines N]
#   ota_probe.py FLASH boot
# Output (stdout): "BOOT <slot|root> <version>" first; then the firmware's log lines, "STATUS <status>" for each
# FirmwareStatusNotification / DiagnosticsStatusNotification, "HOLD 1|0", "FILE <name>" (diag), "IDLE" when the
# engine is done, "MEM base=<B> peak=<B>" with --mem. reboot() prints "REBOOT" and exits with status 3, as
# hal/unix.py's board.reset() does. update without --url resumes what the flash holds (ota.owed()).
import sys
import gc
import os
import time
import asyncio

ROOT = sys.argv[1]
OP = sys.argv[2]


def options():
    o = {}
    i = 3
    while i < len(sys.argv):
        if sys.argv[i] in ("--mem", "--offline"):
            o[sys.argv[i][2:]] = True
            i += 1
        else:
            o[sys.argv[i][2:]] = sys.argv[i + 1]
            i += 2
    return o


O = options()
import slotboot  # noqa: E402  (from the flash root, as boot.py imports it)

SLOT = slotboot.select(ROOT)
del sys.modules["slotboot"]
gc.collect()
from firmware.ota import slots  # noqa: E402

print("BOOT %s %s" % (SLOT or "root", slots.firmware_version("none", ROOT)))
del sys.modules["firmware.ota.slots"]


class Peak:
    # live heap sampled by a task every few ms (a collection before each sample): garbage does not count
    def __init__(self):
        gc.collect()
        self.base = gc.mem_alloc()
        self.peak = 0
        self.on = True

    async def run(self):
        while self.on:
            gc.collect()
            self.peak = max(self.peak, gc.mem_alloc() - self.base)
            await asyncio.sleep_ms(2)


def cas():
    if "ca" not in O:
        return ()
    with open(O["ca"]) as f:
        return (f.read(),)


async def notify(status):
    print("STATUS", status)
    return "offline" not in O


PEAK = []


def report_peak():
    for peak in PEAK:
        peak.on = False
        print("MEM base=%d peak=%d" % (peak.base, peak.peak))


async def reboot():
    report_peak()
    print("REBOOT")
    sys.exit(3)


def busy():
    try:
        os.stat(O["busy-file"])
        return True
    except (KeyError, OSError):
        return False


def hold(on):
    print("HOLD", 1 if on else 0)


def slow_install(ms):
    # stretches the slot writer so that a kill lands inside the installation (what a slow flash would do)
    from firmware.ota import slots as s

    real = s._FileWriter.write

    def write(self, mv):
        time.sleep_ms(ms)
        real(self, mv)

    s._FileWriter.write = write


async def update():
    from firmware import ota

    if "url" not in O and not ota.owed(ROOT):
        print("IDLE")
        return
    from firmware.ota import update as upd

    if "mem" in O:
        PEAK.append(Peak())
        asyncio.create_task(PEAK[0].run())
    if "slow-install" in O:
        slow_install(int(O["slow-install"]))
    u = upd.Updater(ROOT, notify, busy, reboot, asyncio.Lock(), cas(), hold)
    if "url" in O:
        u.request(O["url"], int(O["at"]), int(O.get("retries", "0")), int(O.get("interval", "1")))
    u.accepted()
    await u.run()
    report_peak()
    upd.unload()
    print("IDLE")


def snapshot():
    gc.collect()
    return {"version": "probe", "slot": SLOT, "uptime_s": time.ticks_ms() // 1000, "reset_cause": "power-on",
            "heap_free": gc.mem_free(), "link": "up", "queue": 0, "faults": "none"}


async def diag():
    from firmware import log
    from firmware.diag.ring import Ring

    ring = Ring(ROOT)
    secret = O.get("secret")
    ring.secrets = (secret,) if secret else ()
    log.sink = ring.write
    for i in range(int(O.get("lines", "20"))):
        log.info("probe", "line %d of the log" % i)
    if secret:
        log.warn("probe", "a careless line with the password %s in it" % secret)
    ring.flush()
    from firmware.diag import upload

    d = upload.Diagnostics(ring, notify, snapshot, asyncio.Lock(), cas(), "CP-PROBE")
    start = int(O["start"]) if "start" in O else None
    stop = int(O["stop"]) if "stop" in O else None
    print("FILE", d.request(O["url"], start, stop, int(O.get("retries", "0")), int(O.get("interval", "1"))))
    d.accepted()
    await d.run()
    upload.unload()
    print("IDLE")


if OP == "update":
    asyncio.run(update())
elif OP == "diag":
    asyncio.run(diag())
