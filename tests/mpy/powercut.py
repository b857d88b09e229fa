# Power cuts for tests on the unix port: arm(modules, n) replaces `open` and `os` in the given modules with
# stand-ins that let n flash operations through (a write call, rename, remove, mkdir, rmdir each count as one)
# and then "lose power": the next write lands half its bytes, any other operation does nothing, and PowerCut is
# raised. What reached the disk stays there, as on a flash that lost power. disarm() puts the real ones back.
import os
import builtins


class PowerCut(BaseException):  # not an Exception: no handler in the code under test may survive it
    pass


budget = [0]
ops = [0]  # operations done since arm()
_open_files = []
_patched = []


def _spend():
    if budget[0] <= 0:
        raise PowerCut()
    budget[0] -= 1
    ops[0] += 1


class _File:
    def __init__(self, f):
        self.f = f
        _open_files.append(f)

    def write(self, b):
        if isinstance(b, str):
            b = b.encode()
        if budget[0] <= 0:
            self.f.write(bytes(b)[:len(b) // 2])
            self.f.close()
            raise PowerCut()
        _spend()
        return self.f.write(b)

    def read(self, *a):
        return self.f.read(*a)

    def readinto(self, b):
        return self.f.readinto(b)

    def seek(self, *a):
        return self.f.seek(*a)

    def flush(self):
        self.f.flush()

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()


def _open(path, mode="r", *a):
    if "w" in mode or "a" in mode or "+" in mode:
        if budget[0] <= 0:
            raise PowerCut()
        return _File(builtins.open(path, mode, *a))
    return builtins.open(path, mode, *a)


class _Os:
    def __getattr__(self, name):
        return getattr(os, name)

    def rename(self, a, b):
        _spend()
        os.rename(a, b)

    def remove(self, p):
        _spend()
        os.remove(p)

    def mkdir(self, p):
        _spend()
        os.mkdir(p)

    def rmdir(self, p):
        _spend()
        os.rmdir(p)


_fake_os = _Os()


def arm(modules, n):
    budget[0] = n
    ops[0] = 0
    for m in modules:
        _patched.append(m)
        setattr(m, "open", _open)
        setattr(m, "os", _fake_os)


def disarm():
    for m in _patched:
        delattr(m, "open")
        setattr(m, "os", os)
    del _patched[:]
    for f in _open_files:
        try:
            f.close()
        except OSError:
            pass
    del _open_files[:]
