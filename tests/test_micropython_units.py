"""Runs every tests/mpy/test_*.py inside the real MicroPython unix port with an ESP32-sized heap."""
import os
import pathlib
import re
import subprocess

import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
UNIT_TESTS = sorted((ROOT / "tests" / "mpy").glob("test_*.py"))
sys.path.insert(0, str(ROOT / "tools"))
import build  # noqa: E402  (tools/build.py)

# Packages installed from PyPI for the firmware (microdot), compiled as the build does, beside the sources.
VENDOR = ROOT / "build" / "vendor"


def run_micropython(script, *args, heap="110wK", timeout=300):
    build.vendor(str(VENDOR))
    env = dict(os.environ, MICROPYPATH=".frozen:%s:%s:%s" % (ROOT, ROOT / "tests" / "mpy", VENDOR))
    return subprocess.run([str(MICROPYTHON), "-X", "heapsize=" + heap, str(script), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", UNIT_TESTS, ids=lambda p: p.stem)
def test_micropython_unit(script):
    result = run_micropython(script)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = re.search(r"^(\d+) passed, (\d+) failed$", result.stdout, re.M)
    assert summary and summary.group(2) == "0", output
    assert int(summary.group(1)) > 0, "no test ran:\n" + output
