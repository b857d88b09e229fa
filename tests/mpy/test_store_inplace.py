# firmware.store's cold state files written in place (docs/decisions.md, Flash): the padding, the shrink, and a
# power cut at every write. Apart from tests/mpy/test_store.py, whose fragmented-heap test needs the room.
import os
import json
import tinytest
import powercut
from firmware import store


def _size(p):
    return os.stat(p)[6]


def _fresh():
    return tinytest.tempdir("storeinplace")


_rmtree = tinytest.rmtree


def test_cold_file_is_rewritten_in_place_and_padded_to_its_old_length():
    # No .tmp and no rename when both copies exist (docs/decisions.md, Flash): each copy is overwritten from its
    # first byte; a shorter generation is followed by JSON whitespace up to the old length, under the CRC.
    d = _fresh()
    p = d + "/l.json"
    store.write_json(p, {"v": 1, "e": ["AAAAAAAA", "BBBBBBBB"]})
    size = _size(p)
    before = store.bytes_written
    store.write_json(p, {"v": 2, "e": ["CCCCCCCC"]})
    assert store.bytes_written - before == 2 * size  # both copies, each its old length
    raw = store.read(p)
    assert len(raw) == size and raw.endswith(b" ") and store.read(p + ".bak") == raw
    assert store.load(p) == ({"v": 2, "e": ["CCCCCCCC"]}, store.FOUND)
    store.write_json(p, {"v": 3, "e": ["D" * 100]})  # longer: the file grows, nothing to pad
    assert store.load(p) == ({"v": 3, "e": ["D" * 100]}, store.FOUND) and not store.exists(p + ".tmp")
    store.write_json(p, {"v": 4})  # over twice shorter: replaced, so that it shrinks
    assert store.read(p) == store.read(p + ".bak") and len(store.read(p)) == 9 + len(json.dumps({"v": 4}))
    assert store.load(p) == ({"v": 4}, store.FOUND)
    _rmtree(d)


def test_a_cut_anywhere_in_a_cold_write_leaves_one_generation_or_the_other():
    d = _fresh()
    old = {"v": 1, "e": ["AAAAAAAA", "BBBBBBBB"]}
    new = {"v": 2, "e": ["CCCCCCCC"]}
    p = d + "/l.json"
    n = 0
    while True:
        store.write_json(p, old)
        powercut.arm((store,), n)
        try:
            store.write_json(p, new)
            done = True
        except powercut.PowerCut:
            done = False
        finally:
            powercut.disarm()
        got = store.load(p)[0]
        assert got == new if done else got in (old, new), (n, got)
        assert store.load(p) == (got, store.FOUND), n  # a torn copy was repaired at the first load
        if done:
            break
        n += 1
    assert n >= 6  # header, body and padding of each copy
    _rmtree(d)


tinytest.run(globals())
