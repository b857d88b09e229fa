# Minimal test runner for tests that run inside MicroPython (no unittest on the board).
# A test module defines test_* functions (plain or async) and ends with `tinytest.run(globals())`.
# Prints one line per test and a closing "N passed, M failed" line; exits 1 on any failure.
import gc
import os
import sys
import asyncio

made = []  # temporary directories of this test file, removed at the end of run()


def _call(fn):
    result = fn()
    if type(result).__name__ == "generator":  # async def: a coroutine is a generator here
        asyncio.run(result)


def run(namespace):
    names = sorted(k for k in namespace if k.startswith("test_"))
    only = sys.argv[1] if len(sys.argv) > 1 else None
    passed = failed = 0
    for name in names:
        if only and only not in name:
            continue
        gc.collect()  # the garbage of the tests before goes first, as the firmware's gc.threshold() would have it
        try:
            _call(namespace[name])
            passed += 1
            print("PASS", name)
        except Exception as e:
            failed += 1
            print("FAIL", name)
            sys.print_exception(e)
    for d in made:
        rmtree(d)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


def raises(exc_type, fn, *args):
    try:
        r = fn(*args)
        if type(r).__name__ == "generator":
            asyncio.run(r)
    except exc_type as e:
        return e
    raise AssertionError("expected %s" % exc_type.__name__)


def rmtree(d):
    try:
        for name in os.listdir(d):
            p = d + "/" + name
            try:
                os.remove(p)
            except OSError:
                rmtree(p)
        os.rmdir(d)
    except OSError:
        pass


def tempdir(name):
    """A fresh empty directory under /tmp (a stand-in for the board's flash), removed when run() ends."""
    d = "/tmp/mpy_test_%s_%d_%d" % (name, len(made), int.from_bytes(os.urandom(3), "big"))
    rmtree(d)
    os.mkdir(d)
    made.append(d)
    return d
