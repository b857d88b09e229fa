"""First boot without a configuration (issue 12 item 3): the virtual board starts with an empty flash
(tools/sim.py --no-provision), the firmware asks its setup questions on the service console, the test answers
them through the sim's "console" command (wrong answers included), and the charger then boots against the
demo Central System. The sim's --wifi-ap makes the board's simulated radio refuse a wrong WiFi password as an
ESP32 would."""
import re

import pytest

import conftest
from conftest import SimProc, wait_until

CP = "CP1"
AP = "SimNet"
WIFI_PW = "correct-horse-battery"


class FactoryFreshSim(SimProc):
    """tools/sim.py with no provision.json and one WiFi access point in range."""

    def argv(self):
        return super().argv() + ["--no-provision", "--wifi-ap", "%s:%s" % (AP, WIFI_PW)]


@pytest.fixture
def fresh_sim(request, tmp_path):
    procs = []

    def make(csms_url):
        proc = FactoryFreshSim(csms_url, state_dir=str(tmp_path / "state"))
        procs.append(proc)
        conftest._register(request, proc)
        return proc.start()

    try:
        yield make
    finally:
        conftest._stop_all(procs)


class Console:
    """Waits for a line of the MCU's output, then types an answer on its console."""

    def __init__(self, sim):
        self.sim = sim
        self.pos = 0

    def expect(self, regex, timeout=30):
        pattern = re.compile(r"\[mcu\] " + regex)

        def find():
            for i in range(self.pos, len(self.sim.lines)):
                if pattern.search(self.sim.lines[i]):
                    return (i,)
            return None

        self.pos = wait_until(find, timeout, 0.05, "/%s/ in the sim output" % regex)[0] + 1
        return self.sim.lines[self.pos - 1]

    def answer(self, question, line):
        self.expect(re.escape("? " + question))
        assert self.sim.cmd({"cmd": "console", "line": line})["delivered"]


def test_first_boot_setup_on_the_console_then_boot_accepted(csms_factory, fresh_sim):
    csms = csms_factory()
    sim = fresh_sim(csms.url)
    con = Console(sim)
    con.expect(r"  This charger has no configuration yet")
    # WiFi: the virtual board needs none (its host is on the network), but takes one; a wrong password is
    # refused with the radio's reason and the question comes again
    con.answer("WiFi network name (SSID; Enter alone: none", AP)
    con.answer("WiFi password (Enter alone: an open network):", "not-the-password")
    con.expect(re.escape("! could not join SimNet: wrong password"))
    con.answer("Keep these WiFi settings anyway", "n")
    con.answer("WiFi network name (SSID; Enter alone: none, this board is on a network already) [SimNet]:", "")
    con.answer("WiFi password", WIFI_PW)
    con.expect(re.escape("  WiFi up: SimNet, address 127.0.0.1"))
    # the Central System: each refusal says why, then asks again
    con.answer("Central System URL", "http://127.0.0.1/ocpp")
    con.expect(re.escape("! must start with ws:// or wss://"))
    con.answer("Central System URL", csms.url)
    con.answer("Charge box id", "CP 1")
    con.expect(re.escape("! must not contain spaces or / ? # %"))
    con.answer("Charge box id", CP)
    con.answer("Central System password (Enter alone: none):", "")
    # the sim's meter and socket are the defaults: Enter takes them
    con.answer("Energy meter model (SDM630|SDM120|SDM72|ABB_B23) [SDM630]:", "")
    con.answer("Connector: a socket or a fixed cable (socket|cable) [socket]:", "")
    con.answer("Maximum current of the installation in A (6-80) [32]:", "sixteen")
    con.expect(re.escape("! 'sixteen' is not a base-10 integer"))
    con.answer("Maximum current of the installation in A (6-80) [32]:", "16")
    con.expect(re.escape("  WiFi: SimNet (password set)"))
    con.expect(re.escape("  Central System: %s as CP1 (no password)" % csms.url))
    con.answer("Save this and start the charger? (Y/n):", "y")

    boot = csms.wait_for("BootNotification", cp=CP)
    assert boot["chargePointSerialNumber"] == CP

    def accepted():
        for m in csms.messages(CP):
            if m["dir"] == "out" and m["msg"] and m["msg"][0] == 3 and m["msg"][2].get("status") == "Accepted":
                return True
        return False

    wait_until(accepted, 15, msg="BootNotification answered Accepted")
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    con.expect(r"\d+ I wifi: joined SimNet, address 127\.0\.0\.1")  # the charger keeps its own link
    output = "\n".join(sim.lines)
    assert WIFI_PW not in output and "not-the-password" not in output  # never echoed, never logged

    # The setup is stored: after a power cut the charger boots straight away, without a question.
    mark = len(sim.lines)
    sim.cmd({"cmd": "power", "on": False})
    sim.cmd({"cmd": "power", "on": True})
    csms.wait_for("BootNotification", cp=CP, count=2)
    assert not [line for line in sim.lines[mark:] if "[mcu] ? " in line or "no configuration" in line]


def test_without_no_provision_there_is_no_setup(csms_factory, sim_factory):
    # The default sim writes provision.json: the charger boots at once, as before.
    csms = csms_factory()
    sim = sim_factory(csms.url)
    csms.wait_for("BootNotification", cp=CP)
    assert not [line for line in sim.lines if "[mcu] ? " in line]
    assert [line for line in sim.lines if "I wifi: no WiFi network configured" in line]
