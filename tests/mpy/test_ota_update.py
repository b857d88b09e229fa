# The UpdateFirmware engine (firmware/ota/update.py) on the unix port with fakes around it: a clock that jumps,
# notify, the busy predicate, reboot and the transfer client; the packages, slots and flash are real (signed in
# MicroPython with throw-away keys, written to a temporary directory). Reboots are simulated as in
# test_ota_slots.py: the interpreter's path reset and slotboot.select() run again, then a new engine starts.
import sys
import os
import asyncio
import tinytest
import powercut
import otapkg
import slotboot
from firmware import transfer, store, log
from firmware import ota
from firmware.ota import update, slots

_PATH0 = list(sys.path)
# The engine's heap probe is real in the integration tests (tests/integration/test_ota_update.py, on .mpy code);
# here the whole firmware is compiled from source into the same 110wK heap as the tests, which leaves it too
# fragmented for a 5 KB block after a few tests: the probe is faked but for the tests about it.
_REAL_HEAP = update._heap
update._heap = lambda: (10 ** 6, True)
URL = "http://files.example/fw.fwpk"


class Clock:
    def __init__(self):
        self.ms = 1767225600 * 1000  # 2026-01-01

    def now(self):
        return self.ms // 1000

    async def sleep(self, ms):
        self.ms += ms
        await asyncio.sleep_ms(0)


class Server:
    """The fake transfer client's other end: url -> bytes (served in 1 KB pieces), a tuple of pieces, an
    Exception to raise, or a list of those (one per attempt, the last one repeated)."""

    def __init__(self, clk):
        self.clk = clk
        self.files = {}
        self.fetches = []  # (url, time)

    def client(self, cas=(), *a):
        return _Client(self)


class _Client:
    def __init__(self, server):
        self.server = server

    async def get(self, url, sink):
        srv = self.server
        srv.fetches.append((url, srv.clk.now()))
        r = srv.files.get(url)
        if isinstance(r, list):
            r = r[min(len(srv.fetches), len(r)) - 1]
        if r is None:
            raise transfer.Failed("HTTP 404 Not Found")
        if isinstance(r, BaseException):
            raise r
        if isinstance(r, tuple):  # a body of many pieces, never in one block
            for piece in r:
                sink(memoryview(piece))
                await asyncio.sleep_ms(0)
            return sum(len(p) for p in r)
        mv = memoryview(r)
        for i in range(0, len(r), 1024):
            sink(mv[i:i + 1024])
            await asyncio.sleep_ms(0)
        return len(r)


class Board:
    """What the application gives the engine: notify (records, online or not), busy, reboot, hold."""

    def __init__(self, root, clk=None):
        self.root = root
        self.clk = clk or Clock()
        self.server = Server(self.clk)
        transfer.Client = self.server.client
        self.statuses = []
        self.online = True
        self.tx = False
        self.reboots = 0
        self.holds = []
        self.lock = asyncio.Lock()
        self.lines = []
        log.sink = lambda lvl, line: self.lines.append(line)

    def log_text(self):
        return "\n".join(self.lines)

    async def notify(self, status):
        if not self.online:
            return False
        self.statuses.append(status)
        await asyncio.sleep_ms(0)
        return True

    def busy(self):
        return self.tx

    async def reboot(self):
        self.reboots += 1

    def hold(self, on):
        self.holds.append(on)

    def engine(self):
        return update.Updater(self.root, self.notify, self.busy, self.reboot, self.lock, (), self.hold,
                              self.clk.now, self.clk.sleep)


async def bounded(coro, ms=60000):
    """Awaits coro, failing instead of hanging when an engine never ends (the fake clock makes every real wait
    short, so a minute of real time means a loop that goes nowhere)."""
    return await asyncio.wait_for_ms(coro, ms)


def boot(root):
    """A reset: the interpreter starts with the plain path and boot.py selects the slot."""
    sys.path[:] = _PATH0
    for k in ("otaprobe", "otaprobe.ver"):
        sys.modules.pop(k, None)
    return slotboot.select(root)


def running_version():
    import otaprobe.ver

    return otaprobe.ver.V


def fresh(version="1.0"):
    root = tinytest.tempdir("upd")
    otapkg.board(root, version)
    assert boot(root) == "a"
    return root


def files_of(root, slot):
    out = {}
    d = root + "/slots/" + slot
    for dirpath in (d, d + "/otaprobe"):
        for name in os.listdir(dirpath):
            p = dirpath + "/" + name
            if os.stat(p)[0] & 0x4000 == 0:
                with open(p, "rb") as f:
                    out[p] = f.read()
    return out


def state(root):
    return store.read_json(root + "/" + update.STATE, None)


async def reboot_and_confirm(b, expect_slot="b"):
    """The reboot into the new slot, then BootNotification Accepted: the engine confirms and reports."""
    assert boot(b.root) == expect_slot
    assert ota.owed(b.root)
    u = b.engine()
    u.accepted()
    await bounded(u.run())
    return u


# ---- the whole way ----------------------------------------------------------------------------------
async def test_retrieve_date_in_the_future_then_download_install_reboot_installed():
    root = fresh()
    b = Board(root)
    b.server.files[URL] = otapkg.make("2.0")
    u = b.engine()
    u.accepted()  # the request came from the Central System: the charger is registered
    start = b.clk.now()
    assert u.request(URL, start + 3600, 1, 10)
    assert u.status == "Idle" and state(root)["phase"] == update.WAIT
    await bounded(u.run())
    assert b.server.fetches == [(URL, start + 3600)]  # not a second earlier
    assert b.statuses == ["Downloading", "Downloaded", "Installing"]
    assert b.reboots == 1 and b.holds == [True]
    assert not store.exists(root + "/" + update.PACKAGE)  # the package went once installed
    assert slots.FileSlots(root).state()["trial"] == "b"
    assert slots.firmware_version("x", root) == "1.0"  # still running the old version until the reboot
    u = await reboot_and_confirm(b)
    assert running_version() == "2.0" and slots.firmware_version("x", root) == "2.0"
    assert b.statuses[3:] == ["Installed"] and u.status == "Idle"
    st = slotboot.read_state(root)
    assert st["active"] == "b" and st["trial"] is None and st["report"] is None
    assert state(root) is None and not ota.owed(root)
    # the next update goes to the other slot again
    b.server.files[URL] = otapkg.make("3.0")
    u = b.engine()
    u.request(URL, 0)
    await bounded(u.run())
    u = await reboot_and_confirm(b, "a")
    assert running_version() == "3.0" and b.statuses[-1] == "Installed"


async def test_installed_is_owed_until_the_central_system_has_it():
    root = fresh()
    b = Board(root)
    b.server.files[URL] = otapkg.make("2.0")
    u = b.engine()
    u.request(URL, 0)
    await bounded(u.run())
    assert boot(root) == "b"
    b.online = False  # accepted, then the link drops before the status goes out
    u = b.engine()
    u.accepted()
    task = asyncio.create_task(u.run())
    for _ in range(5):
        await asyncio.sleep_ms(0)
    assert u.status == "Installed" and not task.done()
    assert slotboot.read_state(root)["report"][0] == "Installed"
    task.cancel()  # a power cut meanwhile: the next boot still owes it
    await asyncio.sleep_ms(0)
    assert boot(root) == "b" and ota.owed(root)
    b.online = True
    u = b.engine()
    u.accepted()
    await bounded(u.run())
    assert b.statuses[-1] == "Installed" and not ota.owed(root)


# ---- download failures --------------------------------------------------------------------------------
async def test_download_failed_after_the_asked_retries_with_the_interval_between():
    root = fresh()
    b = Board(root)
    u = b.engine()
    t0 = b.clk.now()
    u.request(URL, t0, 2, 30)  # 404 every time
    await bounded(u.run())
    times = [t for _, t in b.server.fetches]
    assert len(times) == 3, times  # the first attempt and 2 retries
    assert times[1] - times[0] >= 30 and times[2] - times[1] >= 30, times
    assert b.statuses == ["Downloading", "DownloadFailed"]
    assert state(root) is None and b.reboots == 0 and b.holds == []
    assert slotboot.read_state(root)["active"] == "a" and slotboot.read_state(root)["trial"] is None


async def test_a_later_attempt_may_succeed():
    root = fresh()
    b = Board(root)
    b.server.files[URL] = [transfer.Failed("connection refused (files.example:80)"),
                           transfer.Failed("body truncated at 100 of 2000 bytes"), otapkg.make("2.0")]
    u = b.engine()
    u.request(URL, 0, 3, 5)
    await bounded(u.run())
    assert len(b.server.fetches) == 3
    assert b.statuses == ["Downloading", "Downloaded", "Installing"] and b.reboots == 1


async def test_retries_zero_is_one_attempt_and_defaults_apply():
    root = fresh()
    b = Board(root)
    u = b.engine()
    u.request(URL, 0, 0)
    await bounded(u.run())
    assert len(b.server.fetches) == 1 and b.statuses == ["Downloading", "DownloadFailed"]
    u = b.engine()
    u.request(URL, 0)  # no retries asked: the charger's own policy
    await bounded(u.run())
    assert len(b.server.fetches) == 1 + update.RETRIES + 1


async def test_flash_too_small_refuses_at_once_without_retrying():
    root = fresh()
    b = Board(root)
    b.server.files[URL] = otapkg.make("2.0")
    real = update._fs_free
    update._fs_free = lambda r: 20000
    try:
        u = b.engine()
        u.request(URL, 0, 5, 1)
        await bounded(u.run())
    finally:
        update._fs_free = real
    assert b.server.fetches == []  # refused before a byte was asked for
    assert b.statuses == ["Downloading", "DownloadFailed"]
    assert slotboot.read_state(root)["trial"] is None


async def test_flash_filling_up_during_the_download_stops_it():
    root = fresh()
    b = Board(root)
    piece = b"x" * 1024
    b.server.files[URL] = (piece,) * 12  # 12 KB of body
    real, real_sizes = update._fs_free, update.Updater._sizes
    update._fs_free = lambda r: 8000 + 16384
    update.Updater._sizes = lambda self: (2000, 0)  # a small running firmware: the estimate lets it start
    try:
        u = b.engine()
        u.request(URL, 0, 5, 1)
        await bounded(u.run())
    finally:
        update._fs_free, update.Updater._sizes = real, real_sizes
    assert len(b.server.fetches) == 1 and b.statuses == ["Downloading", "DownloadFailed"]
    assert not store.exists(root + "/" + update.PACKAGE)


async def test_whole_image_board_is_refused_when_its_file_system_cannot_hold_the_image():
    # A custom frozen build (esp32.Partition slots): the image is downloaded to the file system first, and on the
    # EVSE_ESP32 layout (704 KB vfs, 1.6 MB app partitions) it does not fit: refused at once, clearly
    import fake_esp32

    sys.modules["esp32"] = fake_esp32
    fake_esp32.setup("ota_0", size=1024)  # small: the test heap is fragmented by now
    root = tinytest.tempdir("upd")
    s = slots.FileSlots(root)
    st = s.state()
    st["kind"] = "image"
    st["active"] = "ota_0"
    s._save(st)
    b = Board(root)
    b.server.files[URL] = otapkg.make("2.0")
    real = update._fs_free
    update._fs_free = lambda r: 8 * 1024
    try:
        u = b.engine()
        u.request(URL, 0, 3, 1)
        await bounded(u.run())
    finally:
        update._fs_free = real
        del sys.modules["esp32"]
    assert b.server.fetches == [] and b.statuses == ["Downloading", "DownloadFailed"]
    assert "not enough flash: the update needs about 17 KB, 8 KB are free" in b.log_text(), b.log_text()


async def test_heap_short_or_fragmented_fails_the_attempts():
    root = fresh()
    for heap in ((update.HEAP_FREE - 1, True), (10 ** 6, False)):
        b = Board(root)
        b.server.files[URL] = otapkg.make("2.0")
        real = update._heap
        update._heap = lambda: heap
        try:
            u = b.engine()
            u.request(URL, 0, 1, 1)
            await bounded(u.run())
        finally:
            update._heap = real
        assert b.server.fetches == [] and b.statuses == ["Downloading", "DownloadFailed"], heap
        assert ("not enough heap" if heap[1] else "heap too fragmented") in b.log_text()
    free, block = _REAL_HEAP()  # the probe itself: a collection, the free figure, one block tried
    assert 0 < free < 400000 and block in (True, False)


# ---- installation -------------------------------------------------------------------------------------
async def test_installation_waits_for_the_transaction_to_end():
    root = fresh()
    b = Board(root)
    b.tx = True  # a session runs: the download may go on, the installation may not
    b.server.files[URL] = otapkg.make("2.0")
    u = b.engine()
    u.request(URL, 0)
    task = asyncio.create_task(u.run())
    for _ in range(1000):
        if u.status == "Downloaded" or task.done():
            break
        await b.clk.sleep(100)
    for _ in range(50):
        await b.clk.sleep(1000)
    assert b.statuses == ["Downloading", "Downloaded"] and b.holds == [True]
    assert slotboot.slot_info(root, "b") is None  # nothing written yet
    assert state(root)["phase"] == update.DOWNLOADED and u.status == "Downloaded"
    b.tx = False
    await bounded(task)
    assert b.statuses == ["Downloading", "Downloaded", "Installing"] and b.reboots == 1


async def test_bad_packages_are_installation_failed_and_change_nothing():
    good = otapkg.make("2.0")
    cases = {
        "tampered": good[:-3] + bytes([good[-3] ^ 1]) + good[-2:],
        "wrong key": otapkg.make("2.0", key=otapkg.OTHER),
        "unsigned": otapkg.make("2.0", signed=False),
        "truncated": good[:-10],
        "not a package": b"<html>Not here</html>",
    }
    reasons = {"tampered": "SHA-256", "wrong key": "signed with key", "unsigned": "not signed",
               "truncated": "truncated", "not a package": "FWPK"}
    for name in cases:
        root = fresh()
        before = files_of(root, "a")
        st_before = slotboot.read_state(root)
        b = Board(root)
        b.server.files[URL] = cases[name]
        u = b.engine()
        u.request(URL, 0, 3, 1)
        await bounded(u.run())
        assert len(b.server.fetches) == 1, name  # the transfer worked: no retry
        assert b.statuses == ["Downloading", "Downloaded", "Installing", "InstallationFailed"], (name, b.statuses)
        assert b.reboots == 0 and b.holds == [], name
        assert files_of(root, "a") == before and slotboot.read_state(root) == st_before, name
        assert slotboot.slot_info(root, "b") is None, name
        assert boot(root) == "a" and running_version() == "1.0"
        assert state(root) is None and not store.exists(root + "/" + update.PACKAGE)
        assert reasons[name] in b.log_text(), (name, b.log_text())


async def test_no_update_key_on_the_board_is_installation_failed():
    root = fresh()
    os.remove(root + "/otakey.json")
    b = Board(root)
    b.server.files[URL] = otapkg.make("2.0")
    u = b.engine()
    u.request(URL, 0)
    await bounded(u.run())
    assert b.statuses[-1] == "InstallationFailed" and b.reboots == 0


# ---- rollback -----------------------------------------------------------------------------------------
async def installed_and_rebooted(root, b):
    b.server.files[URL] = otapkg.make("2.0")
    u = b.engine()
    u.request(URL, 0)
    await bounded(u.run())
    assert b.reboots == 1


async def test_crashing_new_version_rolls_back_and_reports_installation_failed():
    root = fresh()
    b = Board(root)
    await installed_and_rebooted(root, b)
    for _ in range(slotboot.MAX_TRIAL_BOOTS):  # it never reaches BootNotification Accepted
        assert boot(root) == "b"
    assert boot(root) == "a" and running_version() == "1.0"
    assert ota.owed(root)
    u = b.engine()
    u.accepted()
    await bounded(u.run())
    assert b.statuses[-1] == "InstallationFailed" and u.status == "Idle"
    assert not ota.owed(root) and slotboot.read_state(root)["active"] == "a"


async def test_no_central_system_within_the_deadline_gives_the_trial_up():
    root = fresh()
    b = Board(root)
    await installed_and_rebooted(root, b)
    assert boot(root) == "b"
    u = b.engine()  # never accepted()
    t0 = b.clk.now()
    await bounded(u.run())
    assert b.reboots == 2 and b.clk.now() - t0 >= 600
    assert slotboot.read_state(root)["report"][0] == "InstallationFailed"
    assert boot(root) == "a"
    u = b.engine()
    u.accepted()
    await bounded(u.run())
    assert b.statuses[-1] == "InstallationFailed" and not ota.owed(root)


async def test_power_cut_while_reporting_a_rollback_never_retries_the_failed_version():
    # After a rollback the engine reports InstallationFailed and forgets the update; a cut at any flash operation
    # of that may repeat the report but must never put the failed version on trial again
    n = 0
    while True:
        root = fresh()
        b = Board(root)
        await installed_and_rebooted(root, b)
        for _ in range(slotboot.MAX_TRIAL_BOOTS + 1):  # the new version never comes up: rolled back
            boot(root)
        assert running_version() == "1.0"
        u = b.engine()
        u.accepted()
        powercut.arm((update, slots, slotboot, store), n)
        try:
            await u.run()
            cut = False
        except powercut.PowerCut:
            cut = True
        finally:
            powercut.disarm()
        for _ in range(3):  # power back, a few boots
            assert boot(root) == "a" and running_version() == "1.0", n
            u = b.engine()
            u.accepted()
            await bounded(u.run())
            assert b.reboots == 1, (n, b.statuses)  # no second trial
        assert b.statuses[-1] == "InstallationFailed" and not ota.owed(root), (n, b.statuses)
        assert slotboot.read_state(root)["trial"] is None
        tinytest.rmtree(root)
        if not cut:
            break
        n += 1
        assert n < 100
    assert n >= 3


# ---- persisted state ----------------------------------------------------------------------------------
async def test_reboot_while_waiting_for_the_retrieve_date_keeps_the_request():
    root = fresh()
    b = Board(root)
    b.server.files[URL] = otapkg.make("2.0")
    u = b.engine()
    u.request(URL, b.clk.now() + 7200)
    task = asyncio.create_task(u.run())
    for _ in range(10):
        await b.clk.sleep(1000)
    task.cancel()  # power cut
    await asyncio.sleep_ms(0)
    assert boot(root) == "a" and ota.owed(root)
    u = b.engine()
    assert u.status == "Idle"
    await bounded(u.run())
    assert b.server.fetches[0][1] >= b.clk.now() - 1 >= 0 and len(b.server.fetches) == 1
    assert b.reboots == 1


async def test_reset_during_a_download_counts_as_an_attempt_and_starts_again():
    root = fresh()
    b = Board(root)
    b.server.files[URL] = [powercut.PowerCut(), otapkg.make("2.0")]
    u = b.engine()
    u.request(URL, 0, 1, 20)
    try:
        await u.run()
        assert False, "the power cut did not happen"
    except powercut.PowerCut:
        pass
    st = state(root)
    assert st["phase"] == update.DOWNLOAD and st["used"] == 1
    assert boot(root) == "a"
    t = b.clk.now()
    u = b.engine()
    await u.run()
    assert b.server.fetches[1][1] >= t + 19  # the interval after the interrupted attempt
    assert b.reboots == 1 and b.statuses == ["Downloading", "Downloading", "Downloaded", "Installing"]


async def test_an_engine_resumed_at_boot_reports_its_steps_once_the_central_system_accepts():
    # A download cut by a reset resumes at the next boot, before BootNotification is accepted: its steps wait
    # for the Central System (or it would never hear Downloading, Downloaded, Installing of the resumed
    # update), 30 s at most in all; offline for good, the update goes on without it.
    for accept in (True, False):
        root = fresh()
        b = Board(root)
        b.server.files[URL] = [powercut.PowerCut(), otapkg.make("2.0")]
        u = b.engine()
        u.accepted()
        u.request(URL, 0, 1, 0)
        try:
            await u.run()
            assert False, "the power cut did not happen"
        except powercut.PowerCut:
            pass
        assert boot(root) == "a"
        u = b.engine()  # not registered yet
        t = b.clk.now()
        task = asyncio.create_task(u.run())
        while b.clk.now() < t + 10:
            await asyncio.sleep_ms(0)
        assert len(b.server.fetches) == 1 and b.statuses == ["Downloading"]  # nothing went on meanwhile
        if accept:
            u.accepted()
        await bounded(task)
        assert b.reboots == 1 and b.statuses == ["Downloading", "Downloading", "Downloaded", "Installing"]
        assert 30 <= b.clk.now() - t < 32 if not accept else b.clk.now() - t < 12, b.clk.now() - t
        tinytest.rmtree(root)


async def test_reset_during_the_last_attempt_is_download_failed():
    root = fresh()
    b = Board(root)
    b.server.files[URL] = [powercut.PowerCut()]
    u = b.engine()
    u.request(URL, 0, 0)
    try:
        await u.run()
    except powercut.PowerCut:
        pass
    u = b.engine()
    await u.run()
    assert b.statuses == ["Downloading", "DownloadFailed"] and state(root) is None


async def test_power_cut_at_every_flash_write_of_an_update_leaves_a_board_that_boots():
    # The update from the request to Installed, cut at its 1st, 2nd, ... flash operation (a write call, a
    # rename, a remove: tests/mpy/powercut.py); after each cut the board boots a whole slot, and the update,
    # resumed by the next engine, ends with the new version running and Installed reported.
    n = 0
    mods = (update, slots, slotboot, store)
    while True:
        root = fresh()
        b = Board(root)
        b.server.files[URL] = otapkg.make("2.0")
        u = b.engine()
        u.request(URL, 0, 3, 1)
        powercut.arm(mods, n)
        try:
            await u.run()
            cut = False
        except powercut.PowerCut:
            cut = True
        finally:
            powercut.disarm()
        name = boot(root)
        assert name in ("a", "b"), (n, name)
        assert slotboot.verify_slot(root, name), n
        assert running_version() == ("1.0" if name == "a" else "2.0"), n
        for _ in range(4):  # power back: the engine carries on (at most: install, reboot, confirm)
            if not ota.owed(root):
                break
            u = b.engine()
            u.accepted()
            reboots = b.reboots
            await u.run()
            if b.reboots > reboots:
                boot(root)
        assert not ota.owed(root), (n, state(root), slotboot.read_state(root))
        assert boot(root) == "b" and running_version() == "2.0", n
        assert b.statuses[-1] == "Installed", (n, b.statuses)
        tinytest.rmtree(root)
        if not cut:
            break
        n += 1
        assert n < 500, "the update never ran to its end without a cut"
    print("power cut at each of %d flash operations" % n)
    assert n > 25


# ---- requests -----------------------------------------------------------------------------------------
async def test_a_new_request_replaces_one_that_waits():
    root = fresh()
    b = Board(root)
    other = "ftp://u:secret@files.example/fw2.fwpk"
    b.server.files[other] = otapkg.make("2.5")
    u = b.engine()
    u.request(URL, b.clk.now() + 86400)
    task = asyncio.create_task(u.run())
    await b.clk.sleep(5000)
    assert u.request(other, 0)
    await bounded(task)
    assert [f[0] for f in b.server.fetches] == [other] and b.reboots == 1
    assert boot(root) == "b" and running_version() == "2.5"


async def test_request_refuses_locations_the_clients_cannot_use():
    root = fresh()
    u = Board(root).engine()
    for bad in ("file:///fw.bin", "tftp://h/fw", "http://", "http://h:99999/x", "fw.bin", "http://h/a b"):
        tinytest.raises(ValueError, u.request, bad, 0)
    tinytest.raises(ValueError, u.request, URL, "tomorrow")
    assert state(root) is None


async def test_status_answers_trigger_message_at_each_step():
    root = fresh()
    b = Board(root)
    b.server.files[URL] = [transfer.Failed("HTTP 503 Service Unavailable"), otapkg.make("2.0")]
    b.tx = True
    u = b.engine()
    assert u.status == "Idle"
    u.request(URL, b.clk.now() + 60, 1, 30)
    seen = []
    task = asyncio.create_task(u.run())
    for _ in range(1000):
        if u.status == "Downloaded" or task.done():
            break
        if not seen or seen[-1] != u.status:
            seen.append(u.status)
        await b.clk.sleep(500)
    b.tx = False
    await bounded(task)
    assert seen == ["Idle", "Downloading"], seen  # waiting for the date is not an update in progress yet
    assert u.status == "Installing"


def test_owed_only_with_work_at_boot():
    root = fresh()
    assert not ota.owed(root)
    assert "slotboot" in sys.modules  # loaded by this test: left in place
    s = slots.FileSlots(root)
    st = s.state()
    st["report"] = ["InstallationFailed", "2.0", "x"]
    s._save(st)
    assert ota.owed(root)
    s.clear_report()
    store.write_json(root + "/" + update.STATE, {"v": 1})
    assert ota.owed(root)


def test_urls_in_the_log_hide_their_password():
    assert transfer.safe_url("ftp://fw:p@ss@h.example/a") == "ftp://fw:***@h.example/a"
    assert transfer.safe_url("https://h.example/a@b") == "https://h.example/a@b"
    assert transfer.safe_url("ftp://anon@h.example/x") == "ftp://anon@h.example/x"
    assert transfer.safe_url("http://h.example/x") == "http://h.example/x"


def test_ca_texts_give_every_certificate():
    # the certificates of a CA text: tests/mpy/test_tls.py (lib/tls.py, which transfer.tls_context uses)
    e = tinytest.raises(transfer.Failed, transfer.tls_context, ("", None))
    assert e.final and "TransferCa" in str(e)


tinytest.run(globals())
