"""Short versions of `make torture` (tools/torture.py): the figures that must be zero, asserted."""
import asyncio

import pytest

import torture
from harness.csms import Csms


def run(coro):
    return asyncio.run(coro)


def test_calls_in_starts_at_since_t():
    # wait_call polls calls_in 50 times a second over a run's thousands of frames: it bisects to since_t, so the
    # answer must stay the plain filter's, at and between the frames' times
    csms = Csms()
    for i in range(40):
        action = ("BootNotification", "Heartbeat")[i % 2]
        csms.frames.append((10.0 + i // 2, "CP%d" % (i % 3), "in", [2, str(i), action, {}], ""))
        csms.frames.append((10.0 + i // 2, "CP1", "out", [3, str(i), {}], ""))
    for since in (0.0, 9.0, 10.0, 10.5, 19.0, 29.0, 30.0):
        plain = [(t, f) for t, c, d, f, _ in csms.frames if d == "in" and t >= since and c == "CP1"
                 and f[2] == "Heartbeat"]
        assert csms.calls_in("CP1", "Heartbeat", since) == plain
        assert len(csms.calls_in(None, None, since)) == sum(1 for e in csms.frames if e[2] == "in" and e[0] >= since)
    assert csms.calls_in("CP1", "Heartbeat", 16.0) and not csms.calls_in(since_t=30.0)


@pytest.mark.long
def test_power_cuts_lose_nothing():
    res = run(torture.power_cuts(5, seed=11, log=lambda *_: None))
    assert res["sessions"] == 5
    assert (res["lost"], res["dup_start"], res["dup_stop"], res["unclosed"]) == (0, 0, 0, 0), res
    assert not res["stuck"], res["stuck"]  # each boot sent its Stop (or dropped it) and Available within 20 s


@pytest.mark.long
def test_outage_delivers_every_transaction_message_once_in_order():
    res = run(torture.outages(1, seed=12, log=lambda *_: None))
    assert res["transactions"] >= 1
    assert (res["dup_start"], res["dup_stop"], res["dup_meter_values"], res["unclosed"], res["out_of_order"]) \
        == (0, 0, 0, 0, 0), res


def test_bad_frames_do_not_crash_or_authorise(tmp_path):
    res = run(torture.fuzz(500, seed=13, save_dir=str(tmp_path), log=lambda *_: None))
    assert res["frames"] == 500
    assert res["crashes"] == {}, res["crashes"]
    assert res["alive_after"]
    assert res["unauthorised_closes"] == 0


@pytest.mark.long
def test_soak_has_no_crash():
    res = run(torture.soak(1000, log=lambda *_: None))
    assert res["exchanges"] >= 1000
    assert res["crashes"] == {}, res["crashes"]
    assert res["live_start"] > 0 and res["live_end"] > 0


@pytest.mark.long
def test_meter_glitches_are_never_billed_and_never_leave_it_faulted():
    # One scenario of each kind: transient, up, down, across a power cut, idle.
    res = run(torture.glitches(5, seed=15, log=lambda *_: None))
    assert sum(res["shifts"].values()) >= 4 and res["transactions"] >= 4
    assert res["values_checked"] > 10
    assert (res["implausible"], len(res["stuck"]), res["unclosed"]) == (0, 0, 0), res
    assert res["crashes"] == {}, res["crashes"]


@pytest.mark.long
def test_damaged_flash_loses_no_transaction_setting_or_secret():
    res = run(torture.flash(quick=True, log=lambda *_: None))
    assert res["runs"] == res["planned"] == len(torture.FLASH_QUICK) and res["damaged"] == res["runs"], res
    bad = {k: v for k, v in torture.must_be_zero({"flash": res}) if v}
    assert bad == {}, (bad, res["failures"])
    assert res["reports"] >= res["runs"]  # each recovery also told to the Central System
