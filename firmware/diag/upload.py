# The GetDiagnostics engine (OCPP 1.6 §5.8 / §4.4; docs/decisions.md, Diagnostics). Imported only when a
# GetDiagnostics arrives and dropped (unload()) once its last status is delivered.
#
#   request(): the file name, at once -> the file is assembled on flash: a snapshot of the charger's state (the
#   caller's snapshot() dict) and the log lines of the ring (firmware/diag/ring.py) inside the time window, every
#   line masked again -> Uploading -> FTP STOR or HTTP PUT (POST when PUT is refused) to location/fileName,
#   attempt after attempt (retries, retryInterval) -> Uploaded | UploadFailed.
# Never beside a firmware download: both hold the caller's transfer lock. A request is not kept across a reboot
# (the Central System asks again); its final status is sent again at each connection until delivered.
import gc
import os
from micropython import const
from firmware import clock, log, transfer
from firmware.diag import ring as _ring

_TAG = "diag"
RETRIES = const(2)        # without retries in the request: 3 attempts in all
INTERVAL = const(60)      # s between attempts without retryInterval
_RETRIES_MAX = const(100)
_INTERVAL_MAX = const(86400)
_TICK_MS = const(1000)
UPLOAD = "upload.txt"     # in the ring's directory, removed once the upload ends
_NAME_MAX = const(255)    # GetDiagnostics.conf fileName is a CiString255


def unload():
    """Drops the engine's modules (and the transfer clients unless an update runs) from the heap."""
    transfer.drop(("firmware.diag.upload",), "firmware.ota.update")


def file_name(box_id, epoch):
    """diag-<charge box id>-<UTC time>.txt, with only characters every server takes."""
    safe = "".join(c if c.isalpha() or c.isdigit() or c in "-_." else "_" for c in box_id or "cp")
    return ("diag-%s-%s.txt" % (safe, clock.iso(epoch).replace("-", "").replace(":", "")))[:_NAME_MAX]


def largest_block(limit=65536):
    """The largest block the heap can give now, in bytes (to 256 B), found by trying: gc.mem_free() counts free
    space in pieces, and on an ESP32 adds the largest free IDF block. For the snapshot."""
    gc.collect()
    lo, hi = 0, limit
    while hi - lo > 256:
        mid = (lo + hi) // 2
        try:
            b = bytearray(mid)
            del b
            lo = mid
        except MemoryError:
            hi = mid
    return lo


class Diagnostics(transfer.Engine):
    """One GetDiagnostics at a time. ring: the Ring that firmware.log feeds. notify(status): async, sends
    DiagnosticsStatusNotification, True when the Central System answered (as for firmware/ota/update.py).
    snapshot(): a dict of what to report about the charger (version, slot, uptime, reset cause, heap, largest
    free block, link state, queue length, last faults...). lock: the asyncio.Lock shared with the update
    engine. cas: CA texts trusted for https. box_id: the charge box id, for the file name. accepted()
    (transfer.Engine): BootNotification Accepted or a reconnect, an undelivered final status goes again."""

    _TAG = _TAG
    _WHAT = "DiagnosticsStatusNotification"

    def __init__(self, ring, notify, snapshot, lock, cas=(), box_id="", now=None, sleep_ms=None):
        import asyncio

        self.ring = ring
        self.notify = notify
        self.snapshot = snapshot
        self.lock = lock
        self.cas = cas
        self.box_id = box_id
        self.now = now or clock.now
        self._sleep = sleep_ms or asyncio.sleep_ms
        self.path = ring.dir + "/" + UPLOAD
        self.req = None
        self.status = "Idle"
        self._gen = 0
        self._online = False

    def request(self, location, start=None, stop=None, retries=None, retry_interval=None):
        """GetDiagnostics -> the fileName to answer with. location: the directory URL (ftp, http, https) the
        file goes into; start, stop: ISO 8601 text or epoch seconds, None for an open end. Raises ValueError for
        a location or time the engine cannot use (answer a CALLERROR then). A request still running is
        replaced."""
        transfer.check_url(location)
        start, stop = _epoch(start, "startTime"), _epoch(stop, "stopTime")
        name = file_name(self.box_id, self.now())
        retries = RETRIES if retries is None else max(0, min(retries, _RETRIES_MAX))
        interval = INTERVAL if retry_interval is None else max(0, min(retry_interval, _INTERVAL_MAX))
        if self.req is not None:
            log.info(_TAG, "upload of %s replaced" % self.req["name"])
        self.req = {"url": location.rstrip("/") + "/" + name, "name": name, "start": start, "stop": stop,
                    "tries": retries + 1, "every": interval}
        self._gen += 1
        log.info(_TAG, "GetDiagnostics to %s, %d attempt(s) %d s apart" % (
            transfer.safe_url(self.req["url"]), retries + 1, interval))
        return name

    async def run(self):
        """The engine's task; returns when the last request's final status is delivered (then drop the engine
        and call unload())."""
        try:
            while self.req is not None:
                try:
                    await self._one(self._gen)
                except transfer.Replaced:
                    pass
        finally:
            self._remove()
            self.status = "Idle"

    async def _one(self, gen):
        req = self.req
        final = "UploadFailed"
        try:
            size = self._assemble(req)
            reason = ""
        except OSError as e:  # a full flash: nothing to send
            size = 0
            reason = "could not write the file to flash: %s" % (e,)
        self.status = "Uploading"
        await self._say("Uploading")
        for attempt in range(1, req["tries"] + 1 if size else 1):
            if attempt > 1:
                await self._wait(req["every"] * 1000, gen)
            async with self.lock:  # never beside a firmware download
                self._check(gen)
                try:
                    with open(self.path, "rb") as f:
                        await transfer.Client(self.cas).put(req["url"], f, size)
                    log.info(_TAG, "%s uploaded: %d bytes (attempt %d of %d)" % (
                        req["name"], size, attempt, req["tries"]))
                    final = "Uploaded"
                    break
                except (transfer.Failed, OSError) as e:
                    reason = str(e)
                    log.warn(_TAG, "upload attempt %d of %d failed: %s" % (attempt, req["tries"], reason))
                    if isinstance(e, transfer.Failed) and e.final:
                        break
                finally:
                    gc.collect()
        self._check(gen)
        if final != "Uploaded":
            log.error(_TAG, "UploadFailed: %s" % reason)
        self._remove()
        self.status = "Idle"  # the upload is over: a TriggerMessage now gets Idle
        await self._deliver(final, gen)
        self.req = None

    def _assemble(self, req):
        # The file to upload, written to flash (the log may hold 32 KB: never in RAM) -> its size
        ring = self.ring
        ring.flush()
        ring.frozen = True  # no rotation while its files are read; new lines wait in the ring's buffer
        secrets = ring.secrets
        try:
            with open(self.path, "w") as f:
                now = self.now()
                f.write("# Diagnostics of %s at %s\n" % (self.box_id, clock.iso(now)))
                f.write("# log lines from %s to %s (UTC)\n" % (
                    clock.iso(req["start"]) if req["start"] is not None else "the oldest kept",
                    clock.iso(req["stop"]) if req["stop"] is not None else "now"))
                try:
                    snap = self.snapshot() or {}
                except Exception as e:  # the snapshot must not cost the log
                    snap = {"snapshot": "failed: %r" % (e,)}
                for k in sorted(snap):
                    f.write(_ring.redact("%s: %s\n" % (k, snap[k]), secrets))
                f.write("---- log, oldest first ----\n")
                n = 0
                for t, text in ring.records(req["start"], req["stop"]):
                    f.write("%s %s\n" % (clock.iso(t), _ring.redact(text, secrets)))
                    n += 1
                f.write("---- end, %d line(s) ----\n" % n)
        finally:
            ring.frozen = False
        ring.flush()
        return os.stat(self.path)[6]

    # ---- helpers -------------------------------------------------------------------------------------
    async def _wait(self, ms, gen):
        while ms > 0:
            await self._sleep(_TICK_MS)
            ms -= _TICK_MS
            self._check(gen)

    def _remove(self):
        try:
            os.remove(self.path)
        except OSError:
            pass


def _epoch(t, what):
    if t is None or isinstance(t, int):
        return t
    e = clock.parse_iso(t) if isinstance(t, str) else None
    if e is None:
        raise ValueError("%s is not a date-time" % what)
    return e
