# Runs inside MicroPython: opens the tty with hal.unix_uart, polls the meter with lib.modbus + firmware.meter
# once per "poll" line on stdin and answers with one JSON line. While a poll runs, a ticker task measures
# the longest stall of the asyncio loop (a blocking read would show up there).
#   micropython meter_probe.py PATH MODEL [BAUD] [TIMEOUT_MS] [RETRIES]
import sys
import json
import time
import asyncio
from hal.unix_uart import open_tty
from lib.modbus import RtuMaster
from firmware.meter import Meter


async def _ticker(stats):
    last = time.ticks_ms()
    while True:
        await asyncio.sleep_ms(2)
        now = time.ticks_ms()
        stats[0] = max(stats[0], time.ticks_diff(now, last))
        stats[1] += 1
        last = now


async def poll_once(meter, master):
    stats = [0, 0]
    t = asyncio.create_task(_ticker(stats))
    t0 = time.ticks_ms()
    ok = await meter.poll()
    took = time.ticks_diff(time.ticks_ms(), t0)
    t.cancel()
    return {
        "ok": ok, "meter_ok": meter.ok, "energy_wh": meter.energy_wh, "power_w": meter.power_w,
        "voltage_v": meter.voltage_v, "current_a": meter.current_a, "errors": meter.errors,
        "last_error": meter.last_error, "took_ms": took, "max_stall_ms": stats[0], "ticks": stats[1],
        "discarded": master.discarded, "gap_ms": master.gap_ms,
    }


async def main():
    a = sys.argv
    baud = int(a[3]) if len(a) > 3 else 9600
    master = RtuMaster(open_tty(a[1], baud), baud,
                       timeout_ms=int(a[4]) if len(a) > 4 else 300, retries=int(a[5]) if len(a) > 5 else 2)
    # The tests move the virtual meter through simulated hours in a fraction of a second of wall time: a charger
    # with a connector of a billion amperes may see that. The plausibility bound itself is tested in
    # test_meter_plausibility.py; here only the register maps and the bus are.
    meter = Meter(master, a[2], max_a=10 ** 9)
    print(json.dumps({"ready": True, "model_name": meter.model_name()}))
    while True:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            break
        print(json.dumps(await poll_once(meter, master)))


asyncio.run(main())
