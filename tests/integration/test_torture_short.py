"""Short versions of `make torture` (tools/torture.py): the figures that must be zero, asserted."""
import asyncio

import pytest

import torture


def run(coro):
    return asyncio.run(coro)


@pytest.mark.long
def test_power_cuts_lose_nothing():
    res = run(torture.power_cuts(5, seed=11, log=lambda *_: None))
    assert res["sessions"] == 5
    assert (res["lost"], res["dup_start"], res["dup_stop"], res["unclosed"]) == (0, 0, 0, 0), res


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
