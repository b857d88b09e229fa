# Minimal test runner for tests that run inside MicroPython (no unittest on the board).
# A test module defines test_* functions (plain or async) and ends with `tinytest.run(globals())`.
# Prints one line per test and a closing "N passed, M failed" line; exits 1 on any failure.
import sys
import asyncio


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
        try:
            _call(namespace[name])
            passed += 1
            print("PASS", name)
        except Exception as e:
            failed += 1
            print("FAIL", name)
            sys.print_exception(e)
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
