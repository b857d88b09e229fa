# The service console (the board's maintenance UART; `console` in tools/sim.py): one line, one command. App imports
# this module when a line arrives and it unloads itself after, so its code costs no heap while nobody types (as
# firmware/ocpp/recovery.py does at boot).
import gc
import micropython

from firmware import log, unload

_TAG = "app"  # the charger's own lines, as before the console had its module


async def run(app, line):
    """`datatransfer VENDOR [MSGID [DATA]]` sends a DataTransfer to the Central System (OCPP 1.6 §4.3, OCTT
    TC_064); `heap` prints the live heap."""
    try:
        await _command(app, line)
    finally:
        unload(__name__)


async def _command(app, line):
    words = line.split(None, 3)
    if words[0] == "datatransfer" and len(words) >= 2:
        p = {"vendorId": words[1]}
        if len(words) > 2:
            p["messageId"] = words[2]
        if len(words) > 3:
            p["data"] = words[3]
        answer = await app.session.notify("DataTransfer", p)
        if answer is not None:
            log.info(_TAG, "DataTransfer answer: %s" % answer)
    elif words[0] == "heap":
        gc.collect()
        log.info(_TAG, "heap %d used, %d free" % (gc.mem_alloc(), gc.mem_free()))
        micropython.mem_info()  # the largest free block: fragmentation is what makes allocations fail
    else:
        log.warn(_TAG, "console: unknown command %r" % line)
