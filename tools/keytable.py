"""Prints the README's configuration-key table from the firmware's own key registry (defaults on a fresh
flash), so the documentation cannot drift from the code:  .venv/bin/python tools/keytable.py"""
import os
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import sys
from firmware.config import Config
for key, readonly, value in Config(sys.argv[1]).ocpp_items():
    print("%s\\t%s\\t%s" % (key, "R" if readonly else "RW", value))
"""


def rows():
    with tempfile.TemporaryDirectory() as state:
        out = subprocess.run([os.path.join(ROOT, ".venv", "bin", "micropython"), "-c", SCRIPT, state],
                             cwd=ROOT, env=dict(os.environ, MICROPYPATH=".frozen:" + ROOT), check=True,
                             capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.count("\t") == 2]


def main():
    print("| Key | Access | Default |")
    print("|---|---|---|")
    for key, access, value in rows():
        print("| %s | %s | %s |" % (key, access, value.replace(",", ", ") if value else "(empty)"))
    print("| AuthorizationKey | W | (write-only: sets the Basic-auth password, never shown) |")


if __name__ == "__main__":
    main()
