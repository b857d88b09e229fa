# Runs under the MicroPython unix port: connects with lib.ws and reports what happened, one line per event.
#   ws_probe.py URL [--ca FILE] [--user ID] [--password-hex HEX] [--protocol P] [--send TEXT]
#               [--send-size N] [--recv N] [--max-frame N] [--timeout-ms N]
# Output: CONNECTED | RECV <text|binary> <length> <sha256 hex> | MSG <text> | NOROOM <length> |
#         CLOSED <code> <reason> |
#         CLOSED-BY-US | ERROR <WSError text>
import sys
import asyncio
import binascii
import hashlib
import lib.ws as ws


def options(argv):
    opts = {}
    i = 2
    while i < len(argv):
        opts[argv[i][2:]] = argv[i + 1]
        i += 2
    return opts


def pattern(n):
    # Deterministic non-repeating-looking text so a masking slip anywhere in the message shows.
    out = bytearray(n)
    for i in range(n):
        out[i] = 33 + (i * 7 + i // 94) % 94
    return str(out, "ascii")


def report(msg):
    data = msg.encode() if isinstance(msg, str) else msg
    kind = "text" if isinstance(msg, str) else "binary"
    print("RECV", kind, len(data), binascii.hexlify(hashlib.sha256(data).digest()).decode())
    if len(data) <= 200:
        print("MSG", msg)


async def session(c, o):
    if "send" in o:
        await c.send(o["send"])
    if "send-size" in o:
        await c.send(pattern(int(o["send-size"])))
    for _ in range(int(o.get("recv", "0"))):
        try:
            report(await c.recv())
        except ws.WSNoRoom as e:
            print("NOROOM", e.size)
    await c.close()
    print("CLOSED-BY-US")


async def main():
    url = sys.argv[1]
    o = options(sys.argv)
    ctx = None
    if "ca" in o:
        from lib import tls
        with open(o["ca"], "rb") as f:
            ctx = tls.context(tls.certificates(f.read())[:1])
    password = binascii.unhexlify(o["password-hex"]) if "password-hex" in o else None
    try:
        c = await ws.connect(url, protocol=o.get("protocol", "ocpp1.6"), user=o.get("user"), password=password,
                             ssl=ctx, timeout_ms=int(o.get("timeout-ms", "10000")),
                             max_frame=int(o.get("max-frame", "16384")))
    except ws.WSError as e:
        print("ERROR", e)
        return
    print("CONNECTED")
    try:
        await session(c, o)
    except ws.WSClosed as e:
        print("CLOSED", e.code, e.reason)
    except ws.WSError as e:
        print("ERROR", e)


asyncio.run(main())
