# Runs under the MicroPython unix port: drives lib.mqtt against a real broker and reports, one line per event.
#   mqtt_probe.py HOST PORT [--id ID] [--user U] [--password P] [--ca DERFILE] [--hostname NAME]
#       [--keepalive S] [--timeout-ms N] [--max-packet N] [--will TOPIC=PAYLOAD] [--sub FILTER=QOS]...
#       [--pub TOPIC=QOS,RETAIN,PAYLOAD]... [--recv N] [--hold]
# Steps: connect, subscribe each --sub, publish each --pub, print each message until --recv N arrived, then
# DISCONNECT; with --hold, wait for the connection to end instead.
# Output: CONNECTED session=<0|1> | SUBSCRIBED <filter> <qos> | PUBLISHED <topic> | READY | HOLDING |
#         MSG <topic> <retained 0|1> <payload> | SKIPPED <topic|-> | ERROR <MQTTError text> |
#         CLOSED <why> | DISCONNECTED
import sys
import asyncio
from lib.mqtt import MQTTClient, MQTTError


def options(argv):
    opts = {"sub": [], "pub": []}
    i = 3
    while i < len(argv):
        name = argv[i][2:]
        if name == "hold":
            opts[name] = True
            i += 1
            continue
        if name in ("sub", "pub"):
            opts[name].append(argv[i + 1])
        else:
            opts[name] = argv[i + 1]
        i += 2
    return opts


got = [0]
arrived = asyncio.Event()


def on_message(topic, payload, retained):
    if payload is None:
        print("SKIPPED", "-" if topic is None else str(topic, "utf-8"))
    else:
        print("MSG", str(topic, "utf-8"), 1 if retained else 0, str(payload, "utf-8"))
    got[0] += 1
    arrived.set()


def tls_context(path):
    from lib import tls
    with open(path, "rb") as f:
        return tls.context(tls.certificates(f.read()))


async def steps(c, o):
    for spec in o["sub"]:
        topic, qos = spec.rsplit("=", 1)
        print("SUBSCRIBED", topic, await c.subscribe(topic, int(qos)))
    for spec in o["pub"]:
        topic, rest = spec.split("=", 1)
        qos, retain, payload = rest.split(",", 2)
        await c.publish(topic, payload, int(qos), retain == "1")
        print("PUBLISHED", topic)
    print("READY")
    want = int(o.get("recv", "0"))
    while got[0] < want:
        arrived.clear()
        await arrived.wait()


async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    o = options(sys.argv)
    c = MQTTClient(o.get("id", "probe"), on_message, user=o.get("user"), password=o.get("password"),
                   keepalive=int(o.get("keepalive", "60")), timeout_ms=int(o.get("timeout-ms", "5000")),
                   max_packet=int(o.get("max-packet", "1024")))
    if "will" in o:
        topic, payload = o["will"].split("=", 1)
        c.set_last_will(topic, payload, qos=1, retain=True)
    ctx = tls_context(o["ca"]) if "ca" in o else None
    try:
        session = await c.connect(host, port, ssl=ctx, server_hostname=o.get("hostname"))
    except MQTTError as e:
        print("ERROR", e)
        return
    print("CONNECTED session=%d" % session)
    try:
        await steps(c, o)
    except MQTTError as e:
        print("ERROR", e)
    if o.get("hold"):
        print("HOLDING")
        print("CLOSED", await c.wait_closed())
    else:
        await c.disconnect()
        print("DISCONNECTED")


asyncio.run(main())
