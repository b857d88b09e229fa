"""Quick checks that the pieces of `make bench` (tools/bench.py, tools/refcp.py) produce sane numbers."""
import asyncio
import os
import time

import pytest

import bench
import benchloop
from harness.csms import Csms
from harness.sim import AsyncSim, probe_env
from harness.steps import boot_charger


def test_footprint_counts_every_module():
    fp = bench.footprint()
    sources = [s for s in bench.build.sources()]
    assert len(fp["files"]) == len(sources)
    for pkg in bench.PACKAGES:
        assert fp[pkg] == sum(v for k, v in fp["files"].items() if k.startswith(pkg + os.sep))
        assert fp[pkg] > 0
    assert fp["total"] == sum(fp["files"].values())
    text = bench.table({"footprint": fp})  # the table shows what was measured
    assert "total .mpy" in text and str(fp["total"]) in text


def test_code_heap_on_the_64_bit_and_the_32_bit_port():
    code = bench.code_heap()
    u, w = code["unix64"], code["wasm32"]
    assert w is not None, code.get("wasm32_error")
    # the same .mpy files (less the virtual board's): pointers halve on the 32-bit build, bytecode does not
    assert 0.9 * u["mpy"] < w["mpy"] < u["mpy"]
    assert 0.5 * u["imports"] < w["imports"] < u["imports"]
    assert 0 < w["lazy"] and w["app_objects"] > 10000  # the boot buffers alone are 10 KB
    assert w["after_boot"] >= w["imports"] + w["app_objects"]
    text = bench.table({"code": code})
    assert "from .mpy files, 32-bit" in text and str(w["imports"]) in text


@pytest.mark.long
def test_romfs_image_runs_the_scenario_in_a_heap_too_small_for_the_files():
    # Run in place from a ROMFS image, as on a board with a ROMFS partition, the scenario passes at 84wK; from
    # .mpy files the code itself lands in the heap: at 84wK the firmware cannot even boot, and it needs about
    # 124wK (`make bench`, "smallest heap ... from .mpy files"; README "On a real ESP32"), so 160wK measures it.
    image = bench.build.romfs(bench.BUILD_UNIX)[1]
    ok, why, lines, marks, _ = asyncio.run(bench.run_scenario(heap="84wK", romfs=True, step_timeout=20))
    assert ok, why + "\n" + "\n".join(l for _, l in lines[-15:])
    assert [name for name, _ in marks][-1] == "reconnect"
    romfs_used = bench.heap_line(lines)[0] - image
    ok, why, lines, _, _ = asyncio.run(bench.run_scenario(heap="84wK", step_timeout=20, romfs=False))
    assert not ok and "MemoryError" in "\n".join(l for _, l in lines), why
    ok, why, lines, _, _ = asyncio.run(bench.run_scenario(heap="160wK", step_timeout=20, romfs=False))
    assert ok, why
    assert romfs_used < bench.heap_line(lines)[0] - 40000


def test_latency_run_of_50_calls():
    res = asyncio.run(bench.latency(count=50, batch=25))
    labels = [label for label, _ in bench.latency_calls()]
    assert sorted(k for k in res if not k.startswith("_")) == sorted(labels)
    for label in labels:
        for side in ("mpy", "ref"):
            row = res[label][side]
            assert row["n"] == 50
            assert sum(row["answers"].values()) == 50
            assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert not any(k.startswith("CALLERROR") for k in res[label]["mpy"]["answers"]), res[label]
    assert res["_rss"]["mpy_kb"] > 0 and res["_rss"]["ref_kb"] > 0


def test_probe_reports_heap_and_sees_an_injected_stall():
    async def go():
        csms = await Csms().start()
        sim = AsyncSim(csms.url, env=probe_env(gc_each=False, period_ms=2, report_ms=100))
        try:
            await sim.start()
            await boot_charger(csms, sim)
            first = await sim.wait_probe(time.monotonic())
            t = time.monotonic()
            await sim.block_loop(60)
            await sim.wait_line("loop unblocked", 10)
            await asyncio.sleep(0.5)
            return first, sim.probes(t)[-1]
        finally:
            await sim.close()
            await csms.stop()

    first, after = asyncio.run(go())
    assert 0 < first["live"] < first["live"] + first["free"]
    # the probe sleeps 2 ms, so a stall that begins mid-sleep shows up to 2 ms shorter, and a little more with the
    # timers' rounding (57.99 ms seen)
    assert after["lag_us"] >= (60 - 3) * 1000


def test_boot_leaves_the_free_heap_in_one_piece():
    # With the collector held back until App.main, the boot's garbage spread over the heap (here the largest free
    # block was 22 KB of 81 KB free; 71 KB now), and a qstr pool made later (15 KB in one piece) failed a lazy
    # profile's CALL with MemoryError. The collector now runs from the boot on (firmware/app.py run();
    # docs/decisions.md, Memory).
    async def go():
        csms = await Csms().start()
        sim = AsyncSim(csms.url, env=probe_env(gc_each=False, period_ms=20, report_ms=500, pieces=True))
        try:
            await sim.start()
            await boot_charger(csms, sim)
            return await sim.wait_line(r"BENCHHEAP largest=(\d+) free=(\d+)", 10)
        finally:
            await sim.close()
            await csms.stop()

    m = asyncio.run(go())
    largest, free = int(m.group(1)), int(m.group(2))
    assert free > 50000 and largest >= free * 2 // 3, (largest, free)


def test_step_probe_names_the_step_that_stalled():
    # The sim's "mcu" hook stalls the loop inside Evse.run (firmware/evse.py): the step probe must put that
    # step at the top under its task's name, and time a collection.
    async def go():
        csms = await Csms().start()
        sim = AsyncSim(csms.url, heap=benchloop.PROBE_HEAP,
                       env=probe_env(gc_each=False, period_ms=2, report_ms=1000, steps=True))
        try:
            await sim.start()
            await boot_charger(csms, sim)
            await sim.block_loop(60)
            await sim.wait_line("loop unblocked", 10)
            await sim.wait_line("BENCHGC", 10, since=len(sim.lines))  # the next report, stall included
            return benchloop.parse(sim.timed())
        finally:
            await sim.close()
            await csms.stop()

    v = asyncio.run(go())
    top = v["top"][0]
    # the hook busy-waits 60 ms of wall time: what the host's scheduler took of them is shown apart, not lost
    assert top["task"] == "Evse.run" and top["us"] + top["preempted_us"] >= 60000 - 1000, v["top"][:3]
    assert top["us"] > 30000, v["top"][:3]
    assert v["gc"]["timed"] >= 1 and v["gc"]["pause_med_us"] > 0
    assert any(r["task"] == "Session.run" for r in v["tasks"]), v["tasks"]


def test_boot_and_safety_figures_are_sane():
    boot = asyncio.run(bench.boot_times(2))
    assert boot["cycles"] == 2
    assert 0 < boot["to_boot_median_ms"] <= boot["to_accepted_median_ms"]
    safety = asyncio.run(bench.safety(3))
    assert safety["events"] == 3 and not safety["missing"]
    assert 0 <= safety["median_ms"] <= safety["worst_ms"]
    # one MCU-side time per reaction, inside the board time of that reaction
    split = safety["split"]
    assert len(split["mcu_ms"]) == 3 and not split["unmatched"], split
    for parts in split["per_kind"].values():
        assert all(0 <= m <= 1000 for m in parts["mcu"]), parts


def test_stage_breakdown_of_the_latency_calls():
    # the probe's per-stage figures come back for every call kind, add up, and show the work where it is
    import latstages

    res = asyncio.run(latstages.stages(bench.latency_calls(), 20))
    assert not res.get("_crashes"), res.get("_crashes")
    labels = [label for label, _ in bench.latency_calls()]
    assert sorted(k for k in res if not k.startswith("_")) == sorted(labels)
    for label in labels:
        v = res[label]
        assert v["n"] == 20, (label, v)
        assert 0 < v["total"] <= v["total_p99"] and 0 < v["rtt_us"] and v["gc_us"] > 0
        assert v["parse"] > 0 and v["write"] > 0 and v["alloc"] >= 0 and 0 <= v["gcs"] <= v["n"]
    persisted = [label for label in labels if res[label]["persist"] > 0]
    assert sorted(persisted) == ["SendLocalList (8 tags)", "SetChargingProfile (3 periods)"], persisted
    assert res["GetConfiguration (all)"]["encode"] > res["RemoteStartTransaction"]["encode"]
    assert sorted(res["_ram"]) == sorted(persisted)  # the calls that write flash, again on a RAM disk
    assert 0 < res["_floor"]["p50_us"] <= res["_floor"]["p99_us"] and res["_floor"]["n"] == 20
    text = bench.table({"stages": res})
    assert "floor: a charge point doing nothing" in text and "persist" in text


def test_mqtt_figures_for_the_bench(mosquitto_factory):
    # tools/mqttbench.py starts its own broker; mosquitto_factory only checks that one is installed
    import mqttbench
    lat = mqttbench.latency(count=50, gap_ms=10)
    for kind in ("raw", "change"):
        v = lat[kind]
        assert v["n"] >= 25 and 0 < v["p50_ms"] <= v["p99_ms"] <= v["max_ms"] < 1000, (kind, v)
    assert lat["raw"]["n"] == 50
    text = bench.table({"mqtt": {"heap": {"total": 1, "import lib.mqtt": 1, "import firmware.mqttfront": 1,
                                          "import firmware.mqttha": 1, "objects": 1},
                                 "mpy": {"lib/mqtt.mpy": 1}, "latency": lat}})
    assert "model change -> state received p50 / p99" in text


def test_web_figures_for_the_bench(tmp_path):
    # the page served by the unix port, loaded by headless chromium; flash from an ESP32 build
    import webbench
    res = webbench.measure(loads=3, heap=False, march="xtensawin")
    f, c = res["flash"], res["chromium"]
    assert f["www_gz"] < f["www_raw"], f  # the static files are stored compressed
    assert f["total"] == f["www_gz"] + f["microdot_mpy"] + f["firmware_mpy"] and f["firmware_mpy"] > 0, f
    assert c["loads"] == 3 and 0 < c["dom_content_loaded_ms"] <= c["load_ms"] < 5000, c
    # a logged-in browser costs the server heap (session, SSE stream), and not unboundedly much
    assert 0 < c["browser_heap_unix64"] < 64 * 1024, c
    text = bench.table({"web": res})
    assert "page load in Chromium, median" in text and "flash (xtensawin)" in text, text


def test_targets_and_the_readme_block(tmp_path):
    # a figure over its target is marked and listed with its fix; the README block is replaced, the rest kept
    res = {"safety": {"median_ms": 9, "worst_ms": 50, "events": 100, "per_kind": {}, "flood_answers": 1,
                      "flood_errors": {}},
           "wear": {"per_hour_firmware": 30000.0, "firmware_bytes": 2000, "seconds": 240, "per_hour_outside": 1.0,
                    "file_writes_seen": 1, "meter_values": 8}}
    text = bench.table(res)
    worst = next(x for x in text.splitlines() if "contactor open, worst" in x)
    wear = next(x for x in text.splitlines() if x.startswith("wear ") and "bytes written" in x)
    assert "x2.00 MISS" in worst and "MISS" not in wear and "x0.46" in wear, text
    assert "- safety pilot/fault -> contactor open, worst (50 ms, target <= 25 ms): " in text, text
    readme = tmp_path / "README.md"
    readme.write_text("intro\n%s\nold table\n%s\nafter\n" % (bench.README_BEGIN, bench.README_END))
    bench.write_readme(text, {"date": "2026-12-06T05:00:00", "host": "vm", "cpus": 2, "seconds": 12.0,
                              "commit": "abc1234", "python": "3.11.7"}, str(readme))
    doc = readme.read_text()
    assert doc.startswith("intro\n") and doc.endswith("after\n") and "old table" not in doc, doc
    assert "2026-12-06 05:00, commit abc1234, on vm (2 cores" in doc and worst in doc, doc


def test_ota_figures_for_the_bench():
    # One update through the simulated board (tools/otabench.py): the stages add up and the rows render
    import otabench
    o = asyncio.run(otabench.figures(runs=1))
    pk = o["package"]
    assert pk["size"] == pk["header"] + pk["manifest"] + pk["signature"] + pk["modules"] and pk["files"] > 50
    u = o["update_ms"]
    assert 0 < u["download_ms"] and 0 < u["check_ms"] and 0 < u["install_ms"] and 0 < u["reboot_to_installed_ms"]
    assert u["download_ms"] + u["check_ms"] + u["install_ms"] + u["reboot_to_installed_ms"] < u["total_ms"] < 30000
    v = o["verify_us"]
    # no bound on the times: on a loaded host one took 104 ms, and the median of 50 reached 120 ms
    assert v["bits"] == 3072 and 0 < v["min"] <= v["median"] <= v["max"] and v["n"] == 50
    h = o["heap"]
    assert 0 < h["heap_idle_live"] < h["heap_peak_live"] < h["heap_total"] and not h.get("crashes"), h
    text = bench.table({"ota": o})
    for label in ("update package (this build)", "UpdateFirmware -> Installed, median", "  check: signature",
                  "signature check, ESP32 estimate", "peak live heap during an update"):
        assert label in text, text
    assert "%d B" % pk["size"] in text
