# Runs under the MicroPython unix port: the MQTT front end (firmware/mqttfront.py) with a FAKE charger model, for
# tests/integration/test_mqtt_front.py and tools/mqttbench.py, where a test sets the charger's state at will. (On
# the simulated charger the real model, firmware/chargepoint.py, is under it: tools/sim.py --set MqttUrl=...)
#
#   micropython tools/mqttfront_mcu.py STATE_DIR CTL_HOST CTL_PORT CTL_USER CTL_PASSWORD [--min-gap MS] [--lag]
#       [--keepalive S]
#
# STATE_DIR/provision.json holds the device settings (MqttUrl, ...), applied by firmware.config as at a board's
# boot. A second MQTT client (plain, CTL_HOST:CTL_PORT) takes JSON control messages on probe/<ChargeBoxId>/ctl:
#   {"set": {...}}        merge into the snapshot and bump the model's version (the charger changed)
#   {"free_vend": true}   the model accepts start(None)
#   {"bench": N, "gap_ms": G}  N model changes G ms apart, each stamping energy_wh with time.time_ns() // 1000
#   {"raw": N, "gap_ms": G}    N QoS 0 publishes on <base>/bench through the front end's client, payload the
#                              same microsecond stamp (lib.mqtt alone)
#   {"heap": 1}           prints HEAP <gc.mem_alloc() after a collection>
# Output lines: READY | CALL <command> <argument> | LIMIT <0.1 A or None> (the load limit as an arbiter polling it
# every 100 ms sees it) | LAG <ms> (with --lag: the longest loop stall of the last second) | HEAP <bytes> |
# BENCH DONE | the firmware's log lines.
import sys
import asyncio
import gc
import json
import time

from firmware.config import Config
from firmware import mqttfront
from lib.mqtt import MQTTClient, MQTTError

IDLE = {"status": "Available", "error_code": "NoError", "error_info": None, "pilot": "A", "plugged": False,
        "offered_a": 0.0, "current_a": [0.0, 0.0, 0.0], "power_w": 0.0, "energy_wh": 1000, "max_a": 16,
        "limit_a": None, "session": None, "link": {"online": True, "registered": True, "answer_age_s": 1},
        "wifi": {"state": "off", "ssid": "", "ip": "", "error": None},
        "firmware": {"version": "0.1.0-fake", "slot": "a", "update": "Idle"}, "available": True}


class FakeModel:
    def __init__(self):
        self.s = dict(IDLE)
        self.version = 0
        self.ev = asyncio.Event()
        self.free_vend = False
        self.limit_fn = None

    def snapshot(self):
        return dict(self.s)

    async def changed(self, seen):
        while self.version == seen:
            self.ev.clear()
            await self.ev.wait()
        return self.version

    def set(self, **changes):
        self.s.update(changes)
        self.version += 1
        self.ev.set()

    def start(self, id_tag):
        print("CALL start", id_tag)
        if id_tag is None and not self.free_vend:
            return False, "free vend is off"
        self.set(status="Preparing", session={"id_tag": id_tag or "FreeVend", "start": 0, "energy_wh": 0,
                                              "duration_s": 0, "transaction_id": None})
        return True, None

    def stop(self):
        print("CALL stop -")
        self.set(status="Finishing", session=None)
        return True, None

    def set_limit(self, amps):
        print("CALL limit", amps)
        self.set(limit_a=amps)
        return True, None

    def set_availability(self, op):
        print("CALL available", op)
        self.set(available=op, status="Available" if op else "Unavailable")
        return True, None

    def set_load_limit(self, fn):
        self.limit_fn = fn


async def arbiter(model):
    # polls the load limit as the charger's arbiter would
    shown = 0
    while True:
        fn = model.limit_fn
        v = fn(time.ticks_ms()) if fn else None
        if v != shown:
            shown = v
            print("LIMIT", v)
        await asyncio.sleep_ms(100)


async def lag_watch(report):
    worst = 0
    last = time.ticks_ms()
    t0 = last
    while True:
        await asyncio.sleep_ms(5)
        now = time.ticks_ms()
        worst = max(worst, time.ticks_diff(now, last) - 5)
        last = now
        if report and time.ticks_diff(now, t0) >= 1000:
            print("LAG", worst)
            worst = 0
            t0 = now


async def bench(model, front, n, gap, raw):
    for i in range(n):
        stamp = time.time_ns() // 1000
        if raw:
            try:
                await front.client.publish(front.base + "/bench", str(stamp))
            except (MQTTError, AttributeError) as e:
                print("BENCH ERROR", e)
        else:
            model.set(energy_wh=stamp)
        await asyncio.sleep_ms(gap)
    print("BENCH DONE")


def control(model, front):
    def on(topic, payload, retained):
        d = json.loads(bytes(payload))
        if "set" in d:
            model.set(**d["set"])
        if "free_vend" in d:
            model.free_vend = d["free_vend"]
        if "bench" in d or "raw" in d:
            asyncio.create_task(bench(model, front, d.get("bench") or d.get("raw"), d.get("gap_ms", 5), "raw" in d))
        if "heap" in d:
            gc.collect()
            print("HEAP", gc.mem_alloc())
    return on


async def control_link(host, port, user, password, ident, cb):
    c = MQTTClient("probe-ctl-" + ident, cb, user=user, password=password, timeout_ms=3000)
    while True:
        try:
            await c.connect(host, port)
            await c.subscribe("probe/%s/ctl" % ident, 1)
            print("CONTROL UP")
            await c.wait_closed()
        except MQTTError:
            pass
        await asyncio.sleep_ms(300)


async def main():
    state, host, port, user, password = sys.argv[1:6]
    if user == "-":  # an anonymous broker (tools/mqttbench.py)
        user = password = None
    opts = sys.argv[6:]
    min_gap = int(opts[opts.index("--min-gap") + 1]) if "--min-gap" in opts else 1000
    keepalive = int(opts[opts.index("--keepalive") + 1]) if "--keepalive" in opts else 60
    cfg = Config(state)
    model = FakeModel()
    front = mqttfront.start(model, cfg, state, min_gap_ms=min_gap, backoff_ms=(500, 2000), keepalive_s=keepalive)
    asyncio.create_task(arbiter(model))
    asyncio.create_task(lag_watch("--lag" in opts))
    asyncio.create_task(control_link(host, int(port), user, password, cfg.get("ChargeBoxId"),
                                     control(model, front)))
    gc.collect()
    print("READY heap=%d" % gc.mem_alloc())
    while True:
        await asyncio.sleep(60)


asyncio.run(main())
