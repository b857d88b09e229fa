"""Heap cost of the firmware, module by module, on an ESP32-sized MicroPython heap.

    .venv/bin/python tools/memreport.py [--heap 110wK] [--json]

Builds the .mpy files with tools/build.py, then runs one MicroPython script in the unix port that imports the
project modules in dependency order (the standard library first, as a baseline) and records
gc.collect(); gc.mem_alloc() before and after each import. It then builds the application objects the way
firmware/app.py does (a stub board stands in for the hardware) and records what each one keeps. measure()
returns the figures as a dict for `make bench`; main() prints them as a table.

The figures are for the build's word size. On this 64-bit host a pointer costs twice what it costs on the ESP32,
but bytecode and qstr text do not, so code costs about as much as on a 32-bit board while `-X heapsize=110wK`
doubles the heap: the unix figures flatter the code. --wasm32 runs the same script on MicroPython's WebAssembly
port (a 32-bit build, from the npm registry, through node and tools/mpwasm.mjs), whose objects are laid out as on
the ESP32: that is the code's cost on a board that loads .mpy files from its file system.

    .venv/bin/python tools/memreport.py --wasm32

Modules the firmware imports only when a feature is configured (OPTIONAL: the charger model the front ends sit on,
the MQTT client...) are measured after
the boot figure, with the objects they keep, so "after boot" stays what a board without the feature pays. Packages
installed from PyPI and compiled into the build (tools/build.py INSTALLED: microdot, the web page's server) are
measured with the lazy modules, first, each alone (their qstrs then stay interned for the modules after them).
"""
import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import build  # noqa: E402  (tools/build.py)

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
OUT = "build/unix"
# Board modules for other ports: they import hardware modules the unix port lacks.
SKIP = ("hal.esp32",)
# The WebAssembly port has no sockets, threads or terminals: the virtual board's modules stay out there too.
SKIP_WASM = ("hal.unix", "hal.unix_uart")
# Imported only when a feature is enabled: measured after the boot figure, not in it, with the objects it keeps.
OPTIONAL = ("firmware.chargepoint", "lib.mqtt", "firmware.mqttfront", "firmware.mqttha")
# What a board imports at boot: its HAL and the application, with everything they import at module level.
BOOT_ROOTS = ("firmware.app", "hal.unix")
NODE_RUNNER = os.path.join(ROOT, "tools", "mpwasm.mjs")
# Loaded before the first project module, so a module's figure is its own cost only.
STDLIB = ("gc", "sys", "micropython", "time", "os", "json", "struct", "binascii", "hashlib", "errno", "array",
          "socket", "select", "termios", "_thread", "asyncio")

# Runs inside MicroPython. Prints one JSON object per line so the CPython side can parse it.
_SCRIPT = r"""
import gc, sys, micropython
gc.collect()
_base = gc.mem_alloc()
import asyncio

async def _m():
    # The live heap. The WebAssembly port's gc.collect() frees nothing while Python code is on its stack (it
    # cannot scan the wasm VM's stack): it collects at an await of a JS timer, the stack unwound. Measured
    # without these awaits, its figures were every byte allocated so far, garbage included.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gc.collect()
    return gc.mem_alloc()

async def _imports():
    for _n in %(stdlib)r:
        try:
            __import__(_n)
        except ImportError:
            pass
    _b = await _m()
    print('{"kind":"base","name":"stdlib","bytes":%%d}' %% (_b - _base))
    micropython.qstr_info()
    for _n in %(modules)r:
        _a = await _m()
        __import__(_n)
        _b = await _m()
        print('{"kind":"mod","name":"%%s","bytes":%%d}' %% (_n, _b - _a))
        micropython.qstr_info()  # parsed by the CPython side: qstrs interned so far

class _Stream:
    # What board.open_uart returns, as far as a constructor looks at it.
    def write(self, b): pass
    async def drain(self): pass
    async def read(self, n): return b""

class _Board:
    state_dir = %(state)r
    def open_uart(self, baud, parity, stop): return _Stream()
    def ticks_ms(self):
        import time
        return time.ticks_ms()
    def read_cp(self): return 12000, 12000
    def read_pp_ohms(self): return None
    def take_block_ms(self): return 0
    def local_limit_da(self): return None
    def poll_tag(self): return None
    def __getattr__(self, name):
        return lambda *a: None

_objs = []
async def _kept(name, fn, kind="opt"):
    # the heap that fn's result holds, kept alive in _objs (the App first: the later steps build on its parts)
    _a = await _m()
    try:
        _objs.append(fn())
    except Exception as e:
        print('{"kind":"err","name":"%%s","error":"%%s"}' %% (name, repr(e).replace('"', "'")))
        return
    print('{"kind":"%%s","name":"%%s","bytes":%%d}' %% (kind, name, (await _m()) - _a))

import os as _os

async def _boot():
    if not hasattr(_os, "urandom"):  # the WebAssembly port lacks it; zeros are as good for a size
        class _OsShim:
            def __getattr__(self, name):
                return getattr(_os, name)
            def urandom(self, n):
                return bytes(n)
        for _mn in ("firmware.ocpp.session", "lib.ws"):
            sys.modules[_mn].os = _OsShim()
    try:
        from firmware.app import App
        await _kept("App(board)", lambda: App(_Board()), "obj")
    except ImportError as e:
        print('{"kind":"err","name":"App","error":"%%s"}' %% e)
    _b = await _m()
    print('{"kind":"total","name":"after boot","bytes":%%d,"free":%%d}' %% (_b - _base, gc.mem_free()))

async def _later():
    # Loaded on first use (an optional profile's first CALL, an update, a reader on the ESP32 only...): each
    # measured alone on top of the boot state, with whatever lazy modules it needs itself, then dropped again.
    for _n in %(lazy)r:
        _was = set(sys.modules)
        _a = await _m()
        try:
            __import__(_n)
            print('{"kind":"lazy","name":"%%s","bytes":%%d}' %% (_n, (await _m()) - _a))
        except Exception as e:
            print('{"kind":"err","name":"import %%s","error":"%%s"}' %% (_n, repr(e).replace('"', "'")))
        for _k in [k for k in sys.modules if k not in _was]:
            del sys.modules[_k]
        _pkg, _, _leaf = _n.rpartition(".")
        if _pkg in sys.modules and _leaf in sys.modules[_pkg].__dict__:
            delattr(sys.modules[_pkg], _leaf)
    for _n in %(optional)r:
        await _kept("import " + _n, lambda: __import__(_n))

async def _model():
    if "firmware.chargepoint" not in sys.modules or not _objs:
        return
    # the charger model as App.model() makes it when a front end is configured
    from firmware.chargepoint import ChargePoint
    _app = _objs[0]
    await _kept("ChargePoint(App's parts)", lambda: ChargePoint(_app.evse, _app.meter, _app.connector, _app.session,
                                                         _app.cfg, _app.wifi, _app))
    del _app

class _Broker:
    # A stand-in stream: a broker that accepted the connection (CONNACK) and then says nothing.
    def __init__(self):
        self.rx = b"\x20\x02\x00\x00"
    async def readinto(self, buf):
        n = min(len(buf), len(self.rx))
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n
    def write(self, b): pass
    async def drain(self): pass
    def close(self): pass
    async def wait_closed(self): pass

def _connected(c, stream):
    co = c.start(stream)  # completes without waiting: the stand-in answers at once
    try:
        co.send(None)
    except StopIteration:
        pass
    return c

async def _mqtt():
    if "lib.mqtt" not in sys.modules:
        return
    from lib.mqtt import MQTTClient
    await _kept("MQTTClient(max_packet=1024)", lambda: MQTTClient("evse-0123456789ab", max_packet=1024))
    _c = MQTTClient("evse-0123456789ab", max_packet=1024)
    _s = _Broker()
    # The WebAssembly port's asyncio is its own JS-timer variant, whose tasks cost more than on the ESP32's.
    await _kept("+ connected (2 tasks, no socket)", lambda: _connected(_c, _s))
    del _c, _s

class _Model:
    # the charger model's interface (firmware/mqttfront.py ModelPort) with a snapshot of the usual size
    version = 0
    def snapshot(self):
        return {"status": "Charging", "error_code": "NoError", "error_info": None, "pilot": "C", "plugged": True,
                "offered_a": 16.0, "current_a": [15.9, 16.0, 15.8], "power_w": 11000.0, "energy_wh": 123456,
                "max_a": 32, "limit_a": None, "session": {"id_tag": "TAG1", "start": 0, "energy_wh": 1000,
                "duration_s": 60, "transaction_id": 7}, "link": {"online": True, "registered": True,
                "answer_age_s": 1}, "firmware": {"version": "0.1.0"}, "available": True}
    def set_load_limit(self, fn):
        self.fn = fn

async def _front():
    if "firmware.mqttfront" not in sys.modules or not _objs:
        return
    from firmware.mqttfront import MqttFront
    _cfg = _objs[0].cfg
    _cfg.set_device("MqttUrl", "mqtt://192.168.1.10")
    _cfg.set_device("LoadMode", "load")
    def _make():
        f = MqttFront(_Model(), _cfg, %(state)r)
        f._settings()  # what the supervisor builds at its start: the client, the load limit
        return f
    await _kept("MqttFront + its MQTTClient + LoadLimit", _make)

async def _main():
    await _imports()
    await _boot()
    await _later()
    await _model()
    await _mqtt()
    await _front()
"""


def _imports(path, modname):
    """Project modules that a source file imports at module level (not inside functions: those are lazy)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
            out += ["%s.%s" % (node.module, a.name) for a in node.names]
    return out


def modules():
    """(boot, lazy, paths): the project modules that main.py's board and firmware.app import at load time, in
    dependency order (each after everything it imports), and the others, which the firmware imports only when
    a feature is first used, also in dependency order."""
    found = {}
    for rel in build.sources():
        name = rel[:-3].replace(os.sep, ".")
        if name.endswith(".__init__"):
            name = name[:-9]
        if name not in SKIP and name not in OPTIONAL:
            found[name] = os.path.join(ROOT, rel)
    order = []

    def visit(name, stack=()):
        if name in order or name not in found or name in stack:
            return
        parts = name.split(".")
        for i in range(1, len(parts)):  # a package's __init__ loads before its modules
            visit(".".join(parts[:i]), stack + (name,))
        for dep in _imports(found[name], name):
            visit(dep, stack + (name,))
        order.append(name)

    for name in sorted(found):
        visit(name)
    boot = set()

    def reach(name):
        if name in boot or name not in found:
            return
        boot.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):
            reach(".".join(parts[:i]))
        for dep in _imports(found[name], name):
            reach(dep)

    for root in BOOT_ROOTS:
        reach(root)
    # Packages from PyPI compiled into the build (microdot, for the web page): lazy, measured alone first.
    installed = list(build.INSTALLED)
    return [m for m in order if m in boot], installed + [m for m in order if m not in boot], found


def _mpy_size(name):
    base = os.path.join(ROOT, OUT, *name.split("."))
    for p in (base + ".mpy", os.path.join(base, "__init__.mpy")):
        if os.path.exists(p):
            return os.path.getsize(p)
    return 0


def measure(heap="110wK", wasm32=False):
    """{"stdlib": bytes, "modules": [(name, heap bytes, mpy bytes, new qstrs, qstr pool bytes)], "imports": total
    heap bytes of the project modules, "mpy": total .mpy bytes, "qstrs", "qstr_bytes": their totals,
    "objects": [(name, bytes)], "after_boot": bytes, "free": bytes, "lazy": [(name, bytes)] (modules loaded on first
    use, each measured alone after the boot figure), "optional": [(name, bytes)] (OPTIONAL modules
    and their objects, not in the other figures)}. The qstr pool bytes are included in the heap bytes; they grow in
    doubling chunks, so one module can pay for the next ones' qstrs."""
    build.build(OUT)
    order, lazy, _ = modules()
    if wasm32:
        order = [m for m in order if m not in SKIP_WASM]
        lazy = [m for m in lazy if m not in SKIP_WASM]
        heap = "wasm32"
    with tempfile.TemporaryDirectory(prefix="memreport") as state:
        script = os.path.join(state, "memreport_mpy.py")
        with open(script, "w") as f:
            f.write(_SCRIPT % {"stdlib": STDLIB, "modules": tuple(order), "state": "/tmp" if wasm32 else state,
                               "optional": OPTIONAL, "lazy": tuple(lazy)})
            # tools/mpwasm.mjs runs the script as a coroutine's body (a top-level await); the unix port has no
            # such thing
            f.write("await _main()\n" if wasm32 else "asyncio.run(_main())\n")
        if wasm32:
            cmd, env = ["node", NODE_RUNNER, script, os.path.join(ROOT, OUT)], None
        else:
            cmd = [MICROPYTHON, "-X", "heapsize=" + heap, script]
            env = dict(os.environ, MICROPYPATH=".frozen:" + os.path.join(ROOT, OUT))
        r = subprocess.run(cmd, cwd=state, env=env, capture_output=True, text=True, timeout=120)
    res = {"heap": heap, "stdlib": 0, "modules": [], "objects": [], "errors": [], "after_boot": None, "free": None,
           "optional": [], "lazy": []}
    qstrs = None
    for line in r.stdout.splitlines():
        m = re.match(r"qstr pool: n_pool=\d+, n_qstr=(\d+), n_str_data_bytes=(\d+), n_total_bytes=(\d+)", line)
        if m:
            q = tuple(int(x) for x in m.groups())
            if qstrs is not None and res["modules"]:
                name, b, mpy = res["modules"][-1][:3]
                res["modules"][-1] = (name, b, mpy, q[0] - qstrs[0], q[2] - qstrs[2])
            qstrs = q
            continue
        if not line.startswith("{"):
            continue  # firmware log lines
        d = json.loads(line)
        if d["kind"] == "base":
            res["stdlib"] = d["bytes"]
        elif d["kind"] == "mod":
            res["modules"].append((d["name"], d["bytes"], _mpy_size(d["name"]), 0, 0))
        elif d["kind"] == "obj":
            res["objects"].append((d["name"], d["bytes"]))
        elif d["kind"] == "err":
            res["errors"].append((d["name"], d["error"]))
        elif d["kind"] == "lazy":
            res["lazy"].append((d["name"], d["bytes"]))
        elif d["kind"] == "opt":
            res["optional"].append((d["name"], d["bytes"]))
        elif d["kind"] == "total":
            res["after_boot"], res["free"] = d["bytes"], d["free"]
    if r.returncode != 0 or not res["modules"]:
        raise RuntimeError("memreport script failed:\n" + r.stdout + r.stderr)
    res["imports"] = sum(m[1] for m in res["modules"])
    res["mpy"] = sum(m[2] for m in res["modules"])
    res["qstrs"] = sum(m[3] for m in res["modules"])
    res["qstr_bytes"] = sum(m[4] for m in res["modules"])
    return res


def table(res):
    lines = ["%-32s %9s %9s %7s %9s" % ("module", "heap B", ".mpy B", "+qstrs", "qstr B")]
    lines.append("%-32s %9d %9s" % ("(stdlib baseline)", res["stdlib"], ""))
    for name, heap, mpy, nq, qb in res["modules"]:
        lines.append("%-32s %9d %9d %7d %9d" % (name, heap, mpy, nq, qb))
    lines.append("%-32s %9d %9d %7d %9d" % ("TOTAL project imports", res["imports"], res["mpy"], res["qstrs"],
                                            res["qstr_bytes"]))
    for name, b in res["objects"]:
        lines.append("%-32s %9d" % ("+ " + name, b))
    for name, err in res["errors"]:
        lines.append("! %s: %s" % (name, err))
    if res["after_boot"] is not None and res["heap"] == "wasm32":
        lines.append("%-32s %9d   (32-bit WebAssembly port; its heap grows, so no free figure)" % (
            "after boot, total", res["after_boot"]))
    elif res["after_boot"] is not None:
        lines.append("%-32s %9d   (%d free, heap %s)" % ("after boot, total", res["after_boot"], res["free"],
                                                         res["heap"]))
    if res["lazy"]:
        lines.append("loaded on first use, each alone (not in the figures above):")
    for name, b in res["lazy"]:
        lines.append("%-32s %9d" % ("  " + name, b))
    if res["optional"]:
        lines.append("optional features (not in the figures above):")
    for name, b in res["optional"]:
        lines.append("%-32s %9d" % ("  " + name, b))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heap", default="110wK")
    p.add_argument("--wasm32", action="store_true", help="on the 32-bit WebAssembly port instead (needs node)")
    p.add_argument("--json", action="store_true", help="print the measure() dict as JSON")
    args = p.parse_args()
    res = measure(args.heap, args.wasm32)
    print(json.dumps(res, indent=1) if args.json else table(res))


if __name__ == "__main__":
    main()
