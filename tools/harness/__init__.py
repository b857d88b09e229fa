"""The test harness shared by the tests (tests/conftest.py), `make bench` (tools/bench.py) and `make torture`
(tools/torture.py): one driver per part, each in a blocking form for pytest and an asyncio form for the tools.

    proc.py   ChildProcess: a tool run as a child process, its output captured line by line with arrival times
    sim.py    Sim / AsyncSim: tools/sim.py (the virtual board running the firmware) and its control socket,
              with verbs: plug(32), unplug(), tag("X"), ev("C", 16), fault("rcd", True), status(), wait_status()
    csms.py   CsmsProc: tools/csms.py (the demo Central System) driven over its control socket (the tests);
              Csms: a Central System in this process that books transactions, for measurements and campaigns
    steps.py  scenario steps written once for both forms: boot_charger, change_config, start_charging
    probe_mcu.py  a MicroPython script that runs the firmware unchanged next to a heap and loop-lag probe

The public contract of tools/sim.py and tools/csms.py (command lines, control sockets) is what this package
drives; it adds nothing to them.
"""
import os

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TOOLS)
PY = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PY):
    import sys
    PY = sys.executable
BUILD_UNIX = os.path.join(ROOT, "build", "unix")
