"""The hardware watchdog (issue 10): the firmware feeds it only while its loop and its periodic tasks live; a hung
loop gets the energy switched off by the safety watch and the MCU reset by the watchdog, and the transaction the
hang cut is closed with reason Reboot. The LEDs follow the connector status."""
import pytest

from conftest import wait_until
from core_helpers import CP, boot, start_charging

WDT_MS = 8000  # hal/unix.py and hal/esp32.py
LOOP_DEAD_MS = 4000  # firmware/evse.py


def _events(sim, since=0):
    return sim.cmd({"cmd": "events", "since": since})["events"]


@pytest.mark.long
def test_a_hung_loop_is_reset_by_the_watchdog_with_the_contactor_open(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)
    wait_until(lambda: sim.status()["wdt_ms"] == WDT_MS, 10, msg="watchdog armed by the firmware")
    start, tid = start_charging(csms, sim)
    mark = sim.cmd({"cmd": "events", "since": 1 << 60})["next"]
    assert sim.cmd({"cmd": "mcu", "block_ms": 30000})["delivered"]  # a loop that never comes back by itself
    reset = wait_until(lambda: [e for e in _events(sim, mark) if e["kind"] == "wdt" and e["state"] == "reset"],
                       WDT_MS / 1000 + 10, msg="watchdog reset")[0]
    evs = _events(sim, mark)
    block = next(e for e in evs if e["kind"] == "block")
    opened = [e for e in evs if e["kind"] == "contactor" and not e["on"] and e["t"] < reset["t"]]
    assert opened, "the watch must take the energy away before the reset"
    # The last slow-path turn came just before the stall began (its 50 ms period at most).
    assert LOOP_DEAD_MS - 100 <= opened[0]["t"] - block["t"] <= LOOP_DEAD_MS + 500, (block, opened[0])
    # The last feed came at most one feeding period (1 s) before the hang began.
    assert WDT_MS - 1500 <= reset["t"] - block["t"] <= WDT_MS + 1500, (block, reset)
    stop = csms.wait_for("StopTransaction", cp=CP, timeout=30)
    assert stop["transactionId"] == tid and stop["reason"] == "Reboot"
    assert not [e for e in _events(sim, mark) if e["kind"] == "contactor" and e["on"]], "closed again"
    assert sim.status()["wdt_resets"] == 1
    assert len(csms.calls("BootNotification", cp=CP)) == 2
    wait_until(lambda: sim.status()["wdt_ms"] == WDT_MS, 15, msg="the rebooted firmware feeds it again")


def test_leds_follow_the_connector_status(csms_factory, sim_factory):
    csms, sim = boot(csms_factory, sim_factory)

    def leds(want):
        return wait_until(lambda: (lambda s: s if s["leds"] == want else None)(sim.status()), 10,
                          msg="leds %r" % want)

    leds({"green": True, "blue": False, "red": False})  # Available
    start_charging(csms, sim)
    leds({"green": True, "blue": True, "red": False})  # Charging
    sim.cmd({"cmd": "fault", "kind": "rcd", "on": True})
    leds({"green": False, "blue": False, "red": True})  # Faulted
