# The UpdateFirmware engine (OCPP 1.6 §5.18 / §4.5; docs/ota.md "The update engine"). Imported only when an
# UpdateFirmware arrives or firmware.ota.owed() says a stored update has work at boot; dropped (unload()) once
# nothing is left to do or to report.
#
#   wait for retrieveDate -> download into PACKAGE on flash, attempt after attempt (retries, retryInterval)
#   -> check the whole package (signature, every file's SHA-256) -> Downloaded -> wait until no transaction runs
#   -> Installing: firmware/ota/package.py writes the inactive slot -> begin the slot's trial -> reboot
#   -> (the new version) BootNotification Accepted: the trial is confirmed -> Installed
# A rollback (slotboot.py: a crash, a hang, 3 boots without Accepted; or no Central System within
# slots.TRIAL_DEADLINE_MS) comes back as InstallationFailed from the slot state.
#
# The state lives in STATE (firmware/store.py: CRC-framed, two copies), written at every step, so a reset or a
# power cut anywhere resumes: a download cut short counts as a failed attempt and starts again, an installation
# cut short is tried once more, a trial begun is followed to its end. The final status (DownloadFailed,
# InstallationFailed, Installed) stays owed, on flash, until the Central System has it; the others are sent once.
# A reset at any point leaves a bootable board: the running slot is never written (slots.py, slotboot.py).
import gc
import os
from micropython import const
from firmware import clock, log, store, transfer

STATE = "update.json"     # at the flash root, beside config.json
PACKAGE = "update.fwpk"   # the downloaded package, removed once installed or refused
_TAG = "ota"
_FORMAT = const(1)
RETRIES = const(2)        # without retries in the request: 3 attempts in all
INTERVAL = const(60)      # s between attempts without retryInterval
_RETRIES_MAX = const(100)
_INTERVAL_MAX = const(86400)
_INSTALL_TRIES = const(2)  # an installation cut by a reset is tried once more, then given up
_PATIENCE_MS = const(30000)  # an engine started offline waits this long in all for BootNotification Accepted
# Heap an update needs on top of the charger and the idle engine: the transfer client during the download, the
# slot writer, the package checker and their work (a 1 KB buffer, the signature arithmetic, and the manifest in
# one piece: 5.2 KB for today's 53 files, at most 8 KB). Measured: 33 KB live at the peak on the 64-bit host
# (docs/ota.md, Measurements), less on a 32-bit board; the rest is margin for a heap the charger keeps using.
HEAP_FREE = const(48 * 1024)
HEAP_BLOCK = const(6 * 1024)
_FLASH_MARGIN = const(16 * 1024)
_SIZE_GUESS = const(160 * 1024)  # package size when the running firmware has no slot to measure

# phases of the stored state
WAIT = "wait"              # for retrieveDate
DOWNLOAD = "download"      # attempts under way
DOWNLOADED = "downloaded"  # a checked package on flash, waiting for no transaction
INSTALL = "install"        # writing the inactive slot
TRIAL = "trial"            # slot written, trial begun (or about to be): the outcome comes from the slot state
DONE = "done"              # only a final status is owed


def unload():
    """Drops the engine's modules (and the transfer clients unless diagnostics run) from the heap."""
    transfer.drop(("firmware.ota.update", "firmware.ota.package", "firmware.ota.sign", "firmware.ota.slots",
                   "firmware.ota.partition", "slotboot"), "firmware.diag.upload")


def _fs_free(root):
    # bytes free on the file system holding root; None when the port cannot say
    try:
        v = os.statvfs(root or "/")
    except (OSError, AttributeError):
        return None
    return v[0] * v[4]


def _heap():
    # (free bytes, whether one block of HEAP_BLOCK can be had) after a collection. gc.mem_free() counts every
    # free piece (on an ESP32 it also adds the largest free IDF block), so the contiguous block is tried for
    # real: a fragmented heap has plenty free and no room for the manifest.
    gc.collect()
    free = gc.mem_free()
    try:
        probe = bytearray(HEAP_BLOCK)
        del probe
        block = True
    except MemoryError:
        block = False
    return free, block


class Updater(transfer.Engine):
    """One UpdateFirmware at a time, from the request to the status after the reboot.

    root: the flash root (board.state_dir). notify(status): async, sends FirmwareStatusNotification and returns
    True when the Central System answered (a CALLERROR counts: it was heard), False or raises when offline.
    busy(): True while a transaction runs (installation and reboot wait). reboot(): async, the orderly reset
    (never returns on a board). lock: an asyncio.Lock shared with the diagnostics upload (one transfer at a
    time). cas: CA texts trusted for https (PEM, several certificates each allowed). hold(on): optional; True
    when the installation is ready and only waits for the transaction to end (make the idle connector
    Unavailable, never stop a session), False when it failed. accepted() (transfer.Engine): BootNotification
    Accepted, after every boot and reconnect: a trial is confirmed, owed statuses go."""

    _TAG = _TAG
    _WHAT = "FirmwareStatusNotification"

    def __init__(self, root, notify, busy, reboot, lock, cas=(), hold=None, now=None, sleep_ms=None):
        import asyncio

        self.root = root
        self.path = store.join(root, STATE)
        self.pkg = store.join(root, PACKAGE)
        self.notify = notify
        self.busy = busy
        self.reboot = reboot
        self.lock = lock
        self.cas = cas
        self.hold = hold
        self.now = now or clock.now
        self._sleep = sleep_ms or asyncio.sleep_ms
        st = store.read_json(self.path, None)
        self.st = st if isinstance(st, dict) and st.get("v") == _FORMAT else None
        self.status = _status_of(self.st)
        self._gen = 0
        self._online = False
        self._patience = _PATIENCE_MS

    # ---- the caller's side ----------------------------------------------------------------------------
    def request(self, location, retrieve_date, retries=None, retry_interval=None):
        """UpdateFirmware: stores the request and returns at once (the handler answers {}). retrieve_date: ISO
        8601 text or epoch seconds. Raises ValueError for a location the clients cannot use (answer a CALLERROR
        then). Returns False when an installation is under way: the request is logged and dropped."""
        transfer.check_url(location)
        at = clock.parse_iso(retrieve_date) if isinstance(retrieve_date, str) else retrieve_date
        if not isinstance(at, int):
            raise ValueError("retrieveDate is not a date-time")
        st = self.st
        if st is not None and st["phase"] in (INSTALL, TRIAL):
            log.warn(_TAG, "UpdateFirmware %s ignored: version %s is being installed" % (
                transfer.safe_url(location), st.get("ver")))
            return False
        if st is not None and st["phase"] != DONE:
            log.info(_TAG, "update from %s replaced" % transfer.safe_url(st["loc"]))
            if st["phase"] == DOWNLOADED and self.hold:
                self.hold(False)
        retries = RETRIES if retries is None else max(0, min(retries, _RETRIES_MAX))
        interval = INTERVAL if retry_interval is None else max(0, min(retry_interval, _INTERVAL_MAX))
        self.st = {"v": _FORMAT, "loc": location, "at": at, "tries": retries + 1, "used": 0, "every": interval,
                   "next": 0, "phase": WAIT, "ins": 0, "owed": None}
        self._save()
        self._gen += 1
        self.status = "Idle"
        log.info(_TAG, "UpdateFirmware from %s at %s, %d attempt(s) %d s apart" % (
            transfer.safe_url(location), clock.iso(at), retries + 1, interval))
        return True

    async def run(self):
        """The engine's task. Returns when nothing is left to do or to report (then drop the engine and call
        unload()); after a reboot() that returned (tests) it returns too, with the state on flash."""
        try:
            if not await self._settle_slots():
                return
            while self.st is not None:
                gen = self._gen
                try:
                    if not await self._step(gen):
                        return
                except transfer.Replaced:
                    pass
        finally:
            self.status = _status_of(self.st)

    # ---- steps ---------------------------------------------------------------------------------------
    async def _step(self, gen):
        # One phase of the stored state; False after a reboot() that returned
        st = self.st
        phase = st["phase"]
        if phase == WAIT:
            await self._until(st["at"], gen)
            self._phase(DOWNLOAD)
        elif phase == DOWNLOAD:
            await self._download_all(gen)
        elif phase in (DOWNLOADED, INSTALL):
            return await self._install(gen)
        elif phase == TRIAL:
            self._forget()  # _settle_slots() found nothing to follow: the outcome was reported before
        else:
            await self._deliver(st["owed"], gen)
            self._forget()
        return True

    async def _download_all(self, gen):
        st = self.st
        reason = ""
        said = False
        while st["used"] < st["tries"]:
            await self._until(st["next"], gen)
            self.status = "Downloading"
            if not said:  # once per request (and once again after a reboot)
                await self._say("Downloading")
                said = True
            self._check(gen)
            async with self.lock:  # never beside a diagnostics upload
                self._check(gen)
                st["used"] += 1
                # now() counts whole seconds: +1 so that the next attempt is never less than the interval away
                st["next"] = self.now() + st["every"] + 1  # a reset during the attempt waits the interval too
                st["why"] = "the download was cut short by a reset"
                self._save()
                try:
                    size = await self._download(gen)
                    log.info(_TAG, "downloaded %d bytes (attempt %d of %d)" % (size, st["used"], st["tries"]))
                    break
                except transfer.Failed as e:
                    reason = str(e)
                    log.warn(_TAG, "download attempt %d of %d failed: %s" % (st["used"], st["tries"], reason))
                    if e.final:
                        st["used"] = st["tries"]
                    st["next"] = self.now() + st["every"] + 1
                    self._save()
                finally:
                    self.client = None
                    transfer.drop_clients("firmware.diag.upload")  # their code makes room for the installer
                    gc.collect()
        else:
            return self._fail("DownloadFailed", reason or st.get("why") or "no attempt left")
        why = await self._check_package()
        await self._say("Downloaded")
        if why:
            await self._say("Installing")
            return self._fail("InstallationFailed", why)
        self._phase(DOWNLOADED)

    async def _download(self, gen):
        # One attempt -> the bytes written to PACKAGE. Raises transfer.Failed (final for a full flash).
        root = self.root
        free, block = _heap()
        if free < HEAP_FREE:
            raise transfer.Failed("not enough heap: %d KB free, an update needs %d KB" % (free >> 10, HEAP_FREE >> 10))
        if not block:
            raise transfer.Failed("heap too fragmented: no free block of %d KB (%d KB free in pieces)" % (
                HEAP_BLOCK >> 10, free >> 10))
        _remove(self.pkg)
        have = _fs_free(root)
        need, reclaim = self._sizes()
        need += _FLASH_MARGIN - reclaim
        if have is not None and have < need:
            raise transfer.Failed("not enough flash: the update needs about %d KB, %d KB are free" % (
                need >> 10, have >> 10), True)
        room = have - _FLASH_MARGIN if have is not None else None
        self.client = client = transfer.Client(self.cas)
        f = open(self.pkg, "wb")
        got = [0]

        def sink(mv):
            if self._gen != gen:
                raise transfer.Replaced()
            got[0] += len(mv)
            if room is not None and got[0] > room:
                raise transfer.Failed("not enough flash: the package passed %d KB with %d KB free" % (
                    got[0] >> 10, have >> 10), True)
            f.write(mv)

        try:
            await client.get(self.st["loc"], sink)
        finally:
            f.close()
        if not got[0]:
            raise transfer.Failed("the server sent an empty file")
        return got[0]

    def _sizes(self):
        # (flash the download and the new slot will take, flash the installation frees). The running slot's
        # files are what a new version of them takes; the inactive slot's files are removed before the new ones
        # are written. A whole image (esp32.Partition) is downloaded to the file system too, up to the size of
        # its partition: on the EVSE_ESP32 layout that does not fit, and the update is refused at once.
        from firmware.ota import slots

        s = slots.open_slots(self.root)
        block = 4096
        try:
            if s.kind == "image":
                return s._running_part().get_next_update().info()[3], 0
            est = _SIZE_GUESS
            name = s.running()
            if name is not None:
                est = max(slots._usage(slots.slotboot.slot_dir(self.root, name), block), 16384)
            reclaim = slots._usage(slots.slotboot.slot_dir(self.root, s.target()), block)
            return 2 * est, reclaim
        except Exception:  # a trial under way (target() refuses): the installation will say so
            return 2 * _SIZE_GUESS, 0

    async def _check_package(self):
        # The whole package checked before it is called Downloaded: signature, manifest, every file's hash
        # -> None, or why it cannot be installed
        from firmware.ota import package, sign

        try:
            key = sign.load_key(sign.key_path(self.root))
            with open(self.pkg, "rb") as f:
                m = await package.install(f, key, None)
            self.st["ver"] = m["version"]
            log.info(_TAG, "package %s checked: signature and %d files good" % (m["version"], len(m["files"])))
            return None
        except (package.PackageError, sign.BadKey, OSError) as e:
            return str(e)
        except MemoryError:
            return _no_heap()

    async def _install(self, gen):
        st = self.st
        if st["phase"] == INSTALL and st["ins"] >= _INSTALL_TRIES:
            return self._fail("InstallationFailed", "installation cut short by a reset %d times" % st["ins"])
        if self.hold:
            self.hold(True)
        self.status = "Downloaded"
        await self._idle(gen)
        st["ins"] += 1
        self._phase(INSTALL)
        await self._say("Installing")
        from firmware.ota import package, sign, slots

        try:
            key = sign.load_key(sign.key_path(self.root))
            s = slots.open_slots(self.root)
            w = s.writer()
            with open(self.pkg, "rb") as f:
                m = await package.install(f, key, w)
        except (package.PackageError, slots.SlotError, sign.BadKey, OSError, MemoryError) as e:
            if self.hold:
                self.hold(False)
            return self._fail("InstallationFailed", _no_heap() if isinstance(e, MemoryError) else str(e))
        st["slot"] = w.name
        st["ver"] = m["version"]
        self._phase(TRIAL)  # before the flip: a reset between the two is noticed (_settle_slots)
        _remove(self.pkg)
        await self._idle(gen)  # hold() keeps new sessions off; without it one may have started meanwhile
        s.begin_trial(w.name)
        log.info(_TAG, "version %s installed in slot %s: rebooting into it on trial" % (m["version"], w.name))
        await self.reboot()
        return False

    async def _settle_slots(self):
        # Every start of the engine: a slot on trial is confirmed at BootNotification Accepted (or given up after
        # the deadline), and the slot state's report (Installed, or InstallationFailed after a rollback) is sent.
        # -> False after a reboot() that returned.
        from firmware.ota import slots

        s = slots.open_slots(self.root)
        if s.on_trial():
            self.status = "Installing"
            while not self._online:
                if self.slept_ms >= slots.TRIAL_DEADLINE_MS:
                    s.abandon("no BootNotification accepted within %d s" % (slots.TRIAL_DEADLINE_MS // 1000))
                    await self.reboot()
                    return False
                await self._nap(100)  # Installed follows Accepted at once, not a tick later
            s.confirm()
        rep = s.report()
        st = self.st
        if rep:
            self.status = rep[0]
            (log.info if rep[0] == "Installed" else log.error)(_TAG, "%s: version %s%s" % (
                rep[0], rep[1], (", " + rep[2]) if rep[2] else ""))
            await self._deliver(rep[0], None)
            if st is not None and st["phase"] == TRIAL:
                self._forget()  # first: a cut before clear_report() repeats the status, never the trial
            s.clear_report()
        elif st is not None and st["phase"] == TRIAL and s.running() != st.get("slot"):
            # The installation finished but the flip did not happen (a reset between the state and the flip)
            try:
                s.begin_trial(st["slot"])
            except slots.SlotError as e:
                self._fail("InstallationFailed", str(e))
                return True
            log.info(_TAG, "slot %s installed before a reset: rebooting into it on trial" % st["slot"])
            await self.reboot()
            return False
        return True

    # ---- helpers -------------------------------------------------------------------------------------
    def _fail(self, status, reason):
        log.error(_TAG, "%s: %s" % (status, reason))
        _remove(self.pkg)
        self.st["owed"] = status
        self.st["why"] = reason[:200]
        self._phase(DONE)
        return True

    def _phase(self, phase):
        self.st["phase"] = phase
        self._save()
        self.status = _status_of(self.st)

    def _save(self):
        store.write_json(self.path, self.st)

    def _forget(self):
        store.delete(self.path)
        self.st = None
        self.status = "Idle"

    async def _until(self, epoch, gen):
        # Waits for a wall-clock time, re-reading the clock every second: a clock set meanwhile (the first
        # BootNotification after a power cut) takes effect at once
        while self.now() < epoch:
            await self._nap()
            self._check(gen)

    async def _idle(self, gen):
        said = False
        while self.busy():
            if not said:
                log.info(_TAG, "installation waits for the transaction to end")
                said = True
            await self._nap()
            self._check(gen)


def _status_of(st):
    # FirmwareStatusNotification status for TriggerMessage (Idle when no update is in progress)
    if st is None:
        return "Idle"
    return {WAIT: "Idle", DOWNLOAD: "Downloading", DOWNLOADED: "Downloaded", INSTALL: "Installing",
            TRIAL: "Installing"}.get(st["phase"]) or st.get("owed") or "Idle"


def _no_heap():
    gc.collect()
    return "out of heap while installing (%d KB free)" % (gc.mem_free() >> 10)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass
