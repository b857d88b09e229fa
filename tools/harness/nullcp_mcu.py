# A charge point that does nothing, for the bench's latency floor (tools/latstages.py): runs on the MicroPython
# unix port with the firmware's lib/ws.py, connects to the Central System and answers every CALL at once with
# {"status": "Accepted"} under its uniqueId (no JSON parsing, no validation, no handler, no flash). Its round
# trip is what the Central System side, the loopback and MicroPython's asyncio and WebSocket cost on their own.
#     micropython tools/harness/nullcp_mcu.py URL   (from the project root; prints "NULLCP READY")
import sys

sys.path.insert(0, "build/unix")
import asyncio  # noqa: E402

from lib import ws  # noqa: E402


async def main(url):
    c = await ws.connect(url, protocol="ocpp1.6")
    print("NULLCP READY")
    while True:
        t = await c.recv()
        if t[1] == "2":
            i = t.index('"')
            j = t.index('"', i + 1)
            await c.send('[3,%s,{"status":"Accepted"}]' % t[i:j + 1])


asyncio.run(main(sys.argv[1]))
