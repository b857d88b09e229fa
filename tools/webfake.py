# Runs under the MicroPython unix port: the web page (firmware/web.py, from the .mpy build with microdot and the
# gzipped static files, as flashed) over a FAKE charger model (tests/mpy/fake_model.py), with a JSON-lines
# control socket for the test or tool on the other side: the browser tests that need the charger in a given state,
# and tools/webbench.py. (The real charger model, firmware/chargepoint.py, serves the page on the simulated charger:
# tools/sim.py --set WebEnabled=true.)
#
#   MICROPYPATH=.frozen:build/unix:tests/mpy micropython -X heapsize=110wK tools/webfake.py \
#       --port P --control C --state DIR [--bind 127.0.0.1]
#
# Control (one JSON object per line, one answer each):
#   {"cmd":"change","fields":{...}}    edit the model's snapshot (a change the page must show)
#   {"cmd":"calls"}                     -> {"calls": [[name, arg], ...]} the commands the page sent the model
#   {"cmd":"refuse","reason":R|null}    the model refuses the next commands with R
#   {"cmd":"config","name":N,"value":V} set a device key as an installer would (secrets for the leak checks)
#   {"cmd":"get","name":N}              -> {"value": V}
#   {"cmd":"log","text":T}              a firmware log record
#   {"cmd":"heap"}                      -> {"alloc": gc.mem_alloc(), "free": gc.mem_free()} after a collection
# Prints "WEBFAKE READY http=P control=C" once both listen.
import sys
import gc
import json
import asyncio
from firmware import config, log, web
from fake_model import FakeModel


def _arg(name, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


async def _control(model, cfg, reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            req = json.loads(line)
            cmd = req["cmd"]
            out = {"ok": True}
            if cmd == "change":
                model.change(**req["fields"])
            elif cmd == "calls":
                out["calls"] = [list(c) for c in model.calls]
            elif cmd == "refuse":
                model.refuse = req["reason"]
            elif cmd == "config":
                status, reason = cfg.set_device(req["name"], req["value"])
                out["status"] = status
                out["reason"] = reason
            elif cmd == "get":
                out["value"] = cfg.get(req["name"])
            elif cmd == "log":
                log.info("fake", req["text"])
            elif cmd == "heap":
                gc.collect()
                out["alloc"] = gc.mem_alloc()
                out["free"] = gc.mem_free()
            else:
                out = {"ok": False, "error": "unknown command %s" % cmd}
        except Exception as e:
            out = {"ok": False, "error": repr(e)}
        writer.write(json.dumps(out).encode() + b"\n")
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def main():
    port = int(_arg("--port"))
    control = int(_arg("--control"))
    bind = _arg("--bind", "127.0.0.1")
    cfg = config.Config(_arg("--state"))
    if not cfg.get("ChargeBoxId"):
        cfg.set_device("CentralSystemUrl", "ws://127.0.0.1:9/ocpp")
        cfg.set_device("ChargeBoxId", "WEB-DEMO")
    model = FakeModel()
    page = web.Web(model, cfg)
    asyncio.create_task(page.run(bind, port))
    await asyncio.start_server(lambda r, w: _control(model, cfg, r, w), "127.0.0.1", control)
    print("WEBFAKE READY http=%d control=%d" % (port, control))
    while True:
        await asyncio.sleep(3600)


asyncio.run(main())
