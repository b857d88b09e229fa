# Diagnostics on the unix port: the log ring on flash (firmware/diag/ring.py) fed through firmware/log.py's sink
# (rotation, size cap, flush policy, redaction, the time window) and the GetDiagnostics engine
# (firmware/diag/upload.py) with a fake transfer client, a fake clock and notify.
import os
import asyncio
import tinytest
from firmware import log, clock, transfer
from firmware.diag import ring as ringmod
from firmware.diag.ring import Ring
from firmware.diag import upload

T0 = 1767225600  # 2026-01-01T00:00:00Z


class Clock:
    def __init__(self, t=T0):
        self.ms = t * 1000

    def now(self):
        return self.ms // 1000

    async def sleep(self, ms):
        self.ms += ms
        await asyncio.sleep_ms(0)


def with_clock(clk):
    # the ring stamps lines with firmware.clock.now(): point it at the fake clock
    clock.now = clk.now


_REAL_NOW = clock.now


def tree_bytes(d):
    return sum(os.stat(d + "/" + n)[6] for n in os.listdir(d))


def read_all(r):
    r.flush()
    return [t for _, t in r.records()]


# ---- the ring -------------------------------------------------------------------------------------------
def test_ring_rotates_and_never_holds_more_than_its_files():
    root = tinytest.tempdir("diag")
    r = Ring(root, files=3, size=300, buf=128)
    for i in range(200):
        r.write(log.INFO, "%d I app: line %03d" % (i, i))
    r.flush()
    seqs = r.seqs()
    assert len(seqs) == 3 and seqs == list(range(seqs[0], seqs[0] + 3)), seqs
    assert tree_bytes(r.dir) <= 3 * 300
    lines = read_all(r)
    assert lines[-1].endswith("line 199")
    nums = [int(t[-3:]) for t in lines]
    assert nums == list(range(nums[0], 200))  # the newest, in order, none missing
    assert nums[0] > 150  # the oldest went
    # a reboot: the ring goes on where it was, in the same files
    r2 = Ring(root, files=3, size=300, buf=128)
    assert r2.seq == seqs[-1]
    r2.write(log.WARN, "after the reboot")
    assert read_all(r2)[-1] == "after the reboot" and len(r2.seqs()) <= 3
    # a smaller ring configured: the oldest files go at once
    r3 = Ring(root, files=2, size=300)
    assert len(r3.seqs()) == 2


def test_info_waits_in_ram_warnings_go_to_flash_at_once():
    root = tinytest.tempdir("diag")
    r = Ring(root, buf=256)
    r.write(log.INFO, "quiet line")
    assert r.seqs() == [] or tree_bytes(r.dir) == 0  # one line costs no flash write
    r.write(log.WARN, "something went wrong")
    assert [t for _, t in r.records()] == ["quiet line", "something went wrong"]
    for i in range(20):  # a full buffer is written too
        r.write(log.INFO, "filler %02d " % i + "x" * 20)
    assert len(list(r.records())) > 2  # some fillers went to flash before the buffer overflowed
    r.write(log.INFO, "y" * 1000)  # longer than the buffer: cut, not a bigger buffer
    assert len(r.buf) == 256
    assert read_all(r)[-1].startswith("yyy")


def test_log_module_feeds_the_ring_through_its_sink():
    root = tinytest.tempdir("diag")
    r = Ring(root)
    log.sink = r.write
    try:
        log.info("ocpp", "BootNotification accepted")
        log.debug("ocpp", "not at this level")
        log.error("evse", "contactor weld")
    finally:
        log.sink = None
    lines = read_all(r)
    assert len(lines) == 2 and lines[0].endswith("I ocpp: BootNotification accepted"), lines
    assert lines[1].endswith("E evse: contactor weld")


def test_secrets_never_reach_flash():
    root = tinytest.tempdir("diag")
    r = Ring(root)
    r.secrets = ("Sup3rSecret", "wifi-pass-123", "", "abc")  # empty and short values mask nothing
    r.write(log.INFO, "I cfg: password is Sup3rSecret (never logged, but)")
    r.write(log.INFO, "I ota: from ftp://fw:p@ss:w0rd@files.example/fw.bin and http://u:pw@h.example:8080/x y")
    r.write(log.INFO, "I key: -----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC")
    r.write(log.WARN, "W wifi: joining with wifi-pass-123 abc")
    r.flush()
    raw = b""
    for s in r.seqs():
        with open(r.path(s), "rb") as f:
            raw += f.read()
    for secret in (b"Sup3rSecret", b"p@ss:w0rd", b"pw@", b"MIIEvQ", b"wifi-pass-123"):
        assert secret not in raw, (secret, raw)
    text = raw.decode()
    assert "ftp://fw:***@files.example/fw.bin" in text and "http://u:***@h.example:8080/x y" in text
    assert "[private key removed]" in text and "abc" in text
    assert ringmod.redact("plain line, no secret", ("x",)) == "plain line, no secret"


def test_time_window_picks_the_lines():
    root = tinytest.tempdir("diag")
    clk = Clock()
    with_clock(clk)
    try:
        r = Ring(root, buf=64)
        for i in range(10):
            r.write(log.WARN, "minute %d" % i)
            clk.ms += 60000
    finally:
        clock.now = _REAL_NOW
    got = [t for _, t in r.records(T0 + 120, T0 + 300)]
    assert got == ["minute 2", "minute 3", "minute 4", "minute 5"], got
    assert len(list(r.records(None, T0 + 59))) == 1 and len(list(r.records(T0 + 540))) == 1


def test_torn_line_after_a_power_cut_is_skipped():
    root = tinytest.tempdir("diag")
    clk = Clock()
    with_clock(clk)
    try:
        r = Ring(root)
        r.write(log.WARN, "before the cut")
        with open(r.path(r.seq), "ab") as f:
            f.write(b"17672")  # half a record: the power went mid-write
        r2 = Ring(root)  # the next boot
        r2.write(log.WARN, "after the cut")
    finally:
        clock.now = _REAL_NOW
    assert list(r2.records()) == [(T0, "before the cut"), (T0, "after the cut")], list(r2.records())


def test_frozen_ring_keeps_lines_in_ram_and_counts_the_lost():
    root = tinytest.tempdir("diag")
    r = Ring(root, buf=64)
    r.write(log.WARN, "first")
    r.frozen = True
    r.write(log.WARN, "held")
    for i in range(10):
        r.write(log.WARN, "flood %d" % i)
    assert r.dropped > 0 and [t for _, t in r.records()] == ["first"]
    r.frozen = False
    r.flush()
    assert [t for _, t in r.records()][:2] == ["first", "held"]


# ---- GetDiagnostics ----------------------------------------------------------------------------------------
class Server:
    """The fake transfer client's other end: url -> what the upload got; failures: a list of Failed to raise
    on the next attempts."""

    def __init__(self, clk):
        self.clk = clk
        self.got = {}
        self.attempts = []
        self.failures = []

    def client(self, cas=(), *a):
        return _Client(self)


class _Client:
    def __init__(self, srv):
        self.srv = srv

    async def put(self, url, f, length):
        srv = self.srv
        srv.attempts.append((url, srv.clk.now()))
        await asyncio.sleep_ms(0)
        if srv.failures:
            raise srv.failures.pop(0)
        data = f.read()
        assert len(data) == length
        srv.got[url] = data
        return 201


class Cp:
    def __init__(self, root):
        self.clk = Clock()
        self.server = Server(self.clk)
        transfer.Client = self.server.client
        self.ring = Ring(root)
        self.ring.secrets = ("TopSecretPw1",)
        self.statuses = []
        self.lock = asyncio.Lock()

    async def notify(self, status):
        self.statuses.append(status)
        return True

    def snapshot(self):
        return {"version": "2.0", "slot": "b", "uptime_s": 3600, "reset_cause": "power-on", "heap_free": 61234,
                "heap_largest_block": 20480, "link": "up", "queue": 2, "faults": "none", "password": "TopSecretPw1"}

    def engine(self):
        return upload.Diagnostics(self.ring, self.notify, self.snapshot, self.lock, (), "CP 1/x", self.clk.now,
                                  self.clk.sleep)


async def test_upload_sends_the_snapshot_and_the_log_without_secrets():
    root = tinytest.tempdir("diag")
    cp = Cp(root)
    with_clock(cp.clk)
    try:
        cp.ring.write(log.INFO, "1 I app: firmware 2.0 starting")
        cp.ring.write(log.INFO, "2 W ws: password TopSecretPw1 sent over ws://")
        d = cp.engine()
        name = d.request("ftp://diag:pw@logs.example/upload/", None, None, 1, 10)
        assert name == "diag-CP_1_x-20260101T000000Z.txt", name
        await d.run()
    finally:
        clock.now = _REAL_NOW
    assert cp.statuses == ["Uploading", "Uploaded"] and d.status == "Idle"
    url = "ftp://diag:pw@logs.example/upload/" + name
    body = cp.server.got[url].decode()
    assert "# Diagnostics of CP 1/x at 2026-01-01T00:00:00Z" in body
    for line in ("version: 2.0", "slot: b", "uptime_s: 3600", "reset_cause: power-on", "heap_free: 61234",
                 "heap_largest_block: 20480", "link: up", "queue: 2", "password: ***",
                 "2026-01-01T00:00:00Z 1 I app: firmware 2.0 starting", "2 W ws: password *** sent over ws://"):
        assert line in body, (line, body)
    assert "TopSecretPw1" not in body
    assert upload.UPLOAD not in os.listdir(cp.ring.dir)  # the assembled file goes once sent


async def test_upload_window_and_retries_then_upload_failed():
    root = tinytest.tempdir("diag")
    cp = Cp(root)
    with_clock(cp.clk)
    try:
        for i in range(5):
            cp.ring.write(log.WARN, "hour %d" % i)
            cp.clk.ms += 3600 * 1000
        cp.server.failures = [transfer.Failed("HTTP 500 Internal Server Error")] * 3
        d = cp.engine()
        d.request("http://logs.example/diag", "2026-01-01T01:00:00Z", "2026-01-01T02:30:00Z", 2, 30)
        await d.run()
    finally:
        clock.now = _REAL_NOW
    times = [t for _, t in cp.server.attempts]
    assert len(times) == 3 and times[1] - times[0] >= 30 and times[2] - times[1] >= 30, times
    assert cp.statuses == ["Uploading", "UploadFailed"]
    # the same window, now the server works
    cp.server.failures = []
    d = cp.engine()
    name = d.request("http://logs.example/diag/", T0 + 3600, T0 + 9000, 0)
    await d.run()
    body = cp.server.got["http://logs.example/diag/" + name].decode()
    assert "hour 1" in body and "hour 2" in body and "hour 0" not in body and "hour 3" not in body, body
    assert "---- end, 2 line(s) ----" in body


async def test_a_final_failure_does_not_use_the_retries():
    root = tinytest.tempdir("diag")
    cp = Cp(root)
    cp.server.failures = [transfer.Failed("https needs a CA certificate", True)]
    d = cp.engine()
    d.request("https://logs.example/", None, None, 5, 1)
    await d.run()
    assert len(cp.server.attempts) == 1 and cp.statuses == ["Uploading", "UploadFailed"]


async def test_upload_waits_for_a_firmware_download_holding_the_lock():
    root = tinytest.tempdir("diag")
    cp = Cp(root)
    d = cp.engine()
    d.request("ftp://logs.example/", None, None, 0)
    await cp.lock.acquire()  # the update engine downloads
    task = asyncio.create_task(d.run())
    for _ in range(20):
        await cp.clk.sleep(1000)
    assert cp.server.attempts == [] and cp.statuses == ["Uploading"]
    cp.lock.release()
    await task
    assert len(cp.server.attempts) == 1 and cp.statuses == ["Uploading", "Uploaded"]


async def test_final_status_waits_for_the_central_system():
    root = tinytest.tempdir("diag")
    cp = Cp(root)
    online = [False]
    sent = []

    async def notify(status):
        if online[0]:
            sent.append(status)
        return online[0]

    d = upload.Diagnostics(cp.ring, notify, cp.snapshot, cp.lock, (), "CP1", cp.clk.now, cp.clk.sleep)
    d.request("ftp://logs.example/", None, None, 0)
    task = asyncio.create_task(d.run())
    for _ in range(10):
        await cp.clk.sleep(1000)
    assert not task.done() and d.status == "Idle"  # the upload is over; Uploaded is owed
    online[0] = True
    d.accepted()
    await task
    assert sent == ["Uploaded"]


def test_largest_block_is_one_the_heap_can_give():
    import gc
    n = upload.largest_block()
    assert 4096 < n <= 65536
    b = bytearray(n)  # it can be had
    del b
    gc.collect()
    assert upload.largest_block(1000) <= 1000


def test_request_checks_its_fields():
    root = tinytest.tempdir("diag")
    d = Cp(root).engine()
    tinytest.raises(ValueError, d.request, "C:", None, None)
    tinytest.raises(ValueError, d.request, "mailto:x@y", None, None)
    tinytest.raises(ValueError, d.request, "ftp://h/", "yesterday", None)
    assert upload.file_name("", T0) == "diag-cp-20260101T000000Z.txt"


tinytest.run(globals())
