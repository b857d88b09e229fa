"""MQTT figures for `make bench`: the front end's heap cost on 32 bits and its publish-to-receive latency.

    .venv/bin/python tools/mqttbench.py [--count 300] [--gap-ms 10] [--json]

latency() starts Debian's mosquitto on a free loopback port (anonymous, no TLS), the front end with a fake charger
model in the MicroPython unix port (tools/mqttfront_mcu.py, heap 110wK) and a paho-mqtt subscriber, then measures
two paths, each `count` messages `gap_ms` apart, stamped with the host's clock (time.time_ns, shared by both
processes):
  raw     lib.mqtt's publish (QoS 0) in MicroPython -> paho's on_message: the client library alone
  change  the charger model changes -> the front end publishes <base>/state -> paho receives it (the stamp rides
          in the fake model's energy_wh): the path Home Assistant sees
heap() is tools/memreport.py --wasm32's optional-feature figures for the MQTT modules and objects.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
MCU = os.path.join(ROOT, "tools", "mqttfront_mcu.py")
MOSQUITTO = shutil.which("mosquitto", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
IDENT = "BENCH"
BASE = "evse/" + IDENT


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values, q):
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(q * len(s) + 0.5)) - 1))]


def _figures(lat_us):
    ms = [v / 1000.0 for v in lat_us]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 3), "p99_ms": round(_pct(ms, 0.99), 3),
            "max_ms": round(max(ms), 3)}


class _Proc:
    def __init__(self, argv, env=None, cwd=ROOT):
        self.lines = []
        self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, text, timeout=30):
        t = time.monotonic() + timeout
        while time.monotonic() < t:
            if any(text in line for line in self.lines):
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError("no %r from %s:\n%s" % (text, self.p.args[0], "\n".join(self.lines[-20:])))

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def latency(count=300, gap_ms=10, timeout=60):
    """{"raw": figures, "change": figures}; figures: n, p50_ms, p99_ms, max_ms."""
    import paho.mqtt.client as paho

    if not MOSQUITTO:
        raise RuntimeError("mosquitto is not installed (make deps)")
    tmp = tempfile.mkdtemp(prefix="mqttbench-")
    port = _free_port()
    procs = []
    got = {"raw": [], "change": []}
    lock = threading.Lock()
    try:
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("per_listener_settings false\nallow_anonymous true\npersistence false\nuser root\n"
                    "log_dest stderr\nlog_type error\nlog_type notice\nlog_type information\n"
                    "listener %d 127.0.0.1\n" % port)
        broker = _Proc([MOSQUITTO, "-c", conf])
        procs.append(broker)
        broker.wait("running")
        state = os.path.join(tmp, "state")
        os.makedirs(state)
        with open(os.path.join(state, "provision.json"), "w") as f:
            json.dump({"ChargeBoxId": IDENT, "MqttUrl": "mqtt://127.0.0.1:%d" % port, "MqttDiscovery": False,
                       "MqttInterval": 0}, f)

        def on_message(client, userdata, m):
            now = time.time_ns() // 1000
            try:
                if m.topic == BASE + "/bench":
                    with lock:
                        got["raw"].append(now - int(m.payload))
                elif m.topic == BASE + "/state":
                    stamp = json.loads(m.payload)["energy_wh"]
                    if stamp > 10 ** 15:  # a stamp, not the fake model's idle register
                        with lock:
                            got["change"].append(now - stamp)
            except ValueError:
                pass

        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="mqttbench", protocol=paho.MQTTv311)
        sub.on_message = on_message
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        sub.subscribe(BASE + "/#", 0)
        mcu = _Proc([MICROPYTHON, "-X", "heapsize=110wK", MCU, state, "127.0.0.1", str(port), "-", "-",
                     "--min-gap", "0"], env=dict(os.environ, MICROPYPATH=".frozen:" + ROOT))
        procs.append(mcu)
        mcu.wait("CONTROL UP")
        mcu.wait("I mqtt: connected")
        out = {}
        for kind, key in (("raw", "raw"), ("change", "bench")):
            sub.publish("probe/%s/ctl" % IDENT, json.dumps({key: count, "gap_ms": gap_ms}), qos=1).wait_for_publish(5)
            t = time.monotonic() + timeout
            while len(got[kind]) < count and time.monotonic() < t:
                if kind == "change" and any("BENCH DONE" in l for l in mcu.lines[-3:]) and len(got[kind]):
                    time.sleep(0.3)  # changes closer than a publication coalesce: take what came
                    break
                time.sleep(0.05)
            with lock:
                out[kind] = _figures(got[kind])
            del mcu.lines[:]
        sub.loop_stop()
        sub.disconnect()
        return out
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def heap():
    """The MQTT rows of tools/memreport.py --wasm32: {name: bytes} of the optional imports and objects, and
    "total": what a board pays with MQTT on (the modules imported from .mpy files and the front end's objects)."""
    import memreport

    res = memreport.measure(wasm32=True)
    opt = dict(res["optional"])
    parts = ("import lib.mqtt", "import firmware.mqttfront", "import firmware.mqttha",
             "MqttFront + its MQTTClient + LoadLimit", "+ connected (2 tasks, no socket)")
    out = {k: opt.get(k) for k in parts}
    out["total"] = sum(v for v in out.values() if v)
    out["objects"] = sum(opt.get(k) or 0 for k in parts[3:])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--gap-ms", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-heap", action="store_true")
    a = p.parse_args()
    res = {"latency": latency(a.count, a.gap_ms)}
    if not a.no_heap:
        res["heap"] = heap()
    if a.json:
        print(json.dumps(res, indent=1))
        return
    for kind, v in res["latency"].items():
        print("MQTT %-6s publish -> paho receive  p50 %.2f ms  p99 %.2f ms  max %.2f ms  n=%d" % (
            kind, v["p50_ms"], v["p99_ms"], v["max_ms"], v["n"]))
    for k, v in res.get("heap", {}).items():
        print("heap 32-bit %-40s %s B" % (k, v))


if __name__ == "__main__":
    main()
