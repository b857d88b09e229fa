"""Runs every tests/mpy/test_*.py inside the real MicroPython unix port with an ESP32-sized heap, importing the
firmware as a board does: the .mpy files of its build (tools/build.py, with the packages it compiles from PyPI such
as microdot). Compiling the sources instead would cost the test a heap that the board never spends."""
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

BUILD = ROOT / "build" / "unix"


def run_micropython(script, *args, heap="110wK", timeout=300):
    build.build(str(BUILD))  # incremental: nothing to do when the session's build is current
    env = dict(os.environ, MICROPYPATH=".frozen:%s:%s" % (BUILD, ROOT / "tests" / "mpy"))
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
