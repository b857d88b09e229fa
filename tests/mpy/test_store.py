# firmware.store on the MicroPython unix port: atomic files, CRC-checked JSON, the journal FIFO.
import os
import json
import tinytest
import flashdamage
from firmware import store


_made = tinytest.made
_rmtree = tinytest.rmtree


def _fresh():
    return tinytest.tempdir("store")




def _size(p):
    return os.stat(p)[6]


def _append_raw(p, data):
    with open(p, "ab") as f:
        f.write(data)


def _truncate(p, n):
    data = store.read(p)
    with open(p, "wb") as f:
        f.write(data[:len(data) - n])


def test_write_atomic_replaces_and_leaves_no_tmp():
    d = _fresh()
    p = d + "/a.bin"
    store.write_atomic(p, b"first")
    store.write_atomic(p, b"second version")
    assert store.read(p) == b"second version"
    assert not store.exists(p + ".tmp")
    assert store.read(d + "/missing") is None
    _rmtree(d)


def test_interrupted_write_keeps_old_file_live():
    d = _fresh()
    p = d + "/a.bin"
    store.write_atomic(p, b"good")
    with open(p + ".tmp", "wb") as f:  # power cut while the next version was half written
        f.write(b"hal")
    assert store.read(p) == b"good"
    store.write_atomic(p, b"next")
    assert store.read(p) == b"next"
    _rmtree(d)


def test_bytes_written_counts():
    d = _fresh()
    before = store.bytes_written
    store.write_atomic(d + "/x", b"12345")
    assert store.bytes_written - before == 5
    j = store.Journal(d + "/j")
    before = store.bytes_written
    j.append(b"abc")
    assert store.bytes_written - before == _size(d + "/j") == 6 + 5 + 3
    _rmtree(d)


def test_append_adds_at_the_end_and_counts_bytes():
    # The transaction record's readings (firmware/ocpp/txqueue.py): one write each, nothing rewritten.
    d = _fresh()
    p = d + "/r.rec"
    store.write_atomic(p, b"head")
    before = store.bytes_written
    store.append(p, b"-one")
    store.append(p, bytearray(b"-two"))
    assert store.read(p) == b"head-one-two"
    assert store.bytes_written - before == 8
    _rmtree(d)


def test_json_roundtrip_and_missing_default():
    d = _fresh()
    p = d + "/c.json"
    assert store.read_json(p, {"x": 1}) == {"x": 1}
    store.write_json(p, {"a": 5, "b": "text", "c": [True, None]})
    assert store.read_json(p, None) == {"a": 5, "b": "text", "c": [True, None]}
    _rmtree(d)


def test_json_corruption_detected_kept_as_bad_and_restored_from_copy():
    d = _fresh()
    p = d + "/c.json"
    store.write_json(p, {"HeartbeatInterval": 300})
    assert store.read(p + ".bak") == store.read(p)  # a cold file: two copies of the same generation
    raw = bytearray(store.read(p))
    raw[-3] ^= 0x01  # one flipped bit inside the JSON body
    with open(p, "wb") as f:
        f.write(raw)
    del store.notes[:]  # bounded: the Central System gets a few, the log gets them all
    n = 0
    assert store.load(p, "dflt") == ({"HeartbeatInterval": 300}, store.RESTORED)
    assert store.read(p + ".bad") == bytes(raw)  # the evidence
    assert store.read(p) == store.read(p + ".bak")  # repaired: two good copies again
    assert store.notes[n:] == ["c.json CRC mismatch: restored from c.json.bak"]
    assert store.load(p) == ({"HeartbeatInterval": 300}, store.FOUND)
    _rmtree(d)


def test_every_corruption_mode_of_a_cold_file_recovers():
    d = _fresh()  # one directory for all modes: each tempdir name stays in the heap until the end
    for mode in ("half", "garbage", "zero", "deleted"):
        p = d + "/" + mode + ".json"
        store.write_json(p, {"operative": False})
        flashdamage.damage(p, mode)
        assert store.load(p, {}) == ({"operative": False}, store.RESTORED), mode
        assert store.load(p, {}) == ({"operative": False}, store.FOUND), mode
    _rmtree(d)


def test_a_bad_copy_is_rewritten_from_the_file():
    d = _fresh()
    for mode in ("half", "garbage", "zero", "deleted"):
        p = d + "/" + mode + ".json"
        store.write_json(p, [1, 2])
        flashdamage.damage(p + ".bak", mode)
        del store.notes[:]
        assert store.load(p) == ([1, 2], store.FOUND), mode
        assert store.read(p + ".bak") == store.read(p), mode
        assert store.notes == []  # the file itself was fine: nothing for the Central System
    _rmtree(d)


def test_file_and_copy_bad_gives_default_and_a_note():
    d = _fresh()
    p = d + "/c.json"
    store.write_json(p, {"a": 1})
    flashdamage.damage(p, "garbage")
    flashdamage.damage(p + ".bak", "zero")
    del store.notes[:]
    n = 0
    assert store.load(p, "dflt") == ("dflt", store.LOST)
    assert store.notes[n:] == ["c.json no CRC header, copy empty: lost, defaults used"]
    assert store.load(p, "dflt") == ("dflt", store.ABSENT)  # said once, not at every boot
    assert store.load(d + "/never.json", 7) == (7, store.ABSENT)  # a file never written is no loss
    _rmtree(d)


def test_json_without_crc_header_is_corrupt():
    d = _fresh()
    p = d + "/c.json"
    with open(p, "wb") as f:
        f.write(b'{"a": 1}')
    assert store.read_json(p, 0) == 0
    assert store.exists(p + ".bad")
    _rmtree(d)


def test_json_falls_back_to_complete_tmp():
    # FatFs, or a rotation cut between its renames: the target is gone, the CRC proves the .tmp complete.
    d = _fresh()
    p = d + "/c.json"
    store.write_json(p, {"v": 1})
    flashdamage.rotate(p, {"v": 2})  # c.json.bak holds v1
    os.rename(p, p + ".tmp")
    assert store.load(p, None) == ({"v": 2}, store.FOUND)  # the newest generation, renamed into place
    assert store.exists(p) and not store.exists(p + ".tmp")
    os.rename(p, p + ".tmp")
    with open(p + ".tmp", "wb") as f:
        f.write(b"0000")  # cut while the .tmp was written: the previous generation is what there is
    assert store.load(p, None) == ({"v": 1}, store.RESTORED)
    _rmtree(d)


def test_delete_removes_both_copies_copy_first():
    d = _fresh()
    p = d + "/r.json"
    store.write_json(p, [1])
    assert store.present(p)
    os.remove(p + ".bak")
    assert store.load(p) == ([1], store.FOUND)  # a cut between the deletes: the file alone is still good
    store.delete(p)
    assert not store.present(p) and store.load(p, "none") == ("none", store.ABSENT)
    store.write_json(p, [2])
    os.remove(p)
    assert store.present(p)  # only the copy is left: present, and load brings the file back
    assert store.load(p) == ([2], store.RESTORED)
    _rmtree(d)


def test_journal_fifo_and_reopen():
    d = _fresh()
    p = d + "/q"
    j = store.Journal(p)
    assert len(j) == 0 and j.peek() is None
    seqs = [j.append(b"msg%d" % i) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert len(j) == 5
    assert j.peek() == (seqs[0], b"msg0")
    assert j.pop(seqs[0])
    assert not j.pop(seqs[0])  # already done
    assert j.peek() == (seqs[1], b"msg1")
    j2 = store.Journal(p)  # power restore
    assert len(j2) == 4
    assert [r for r in j2.records()] == [(seqs[i], b"msg%d" % i) for i in range(1, 5)]
    j2.pop(seqs[1])
    j2.pop(seqs[3])  # out of order pop is allowed
    assert [s for s, _ in store.Journal(p).records()] == [seqs[2], seqs[4]]
    _rmtree(d)


def test_journal_pop_appends_tombstone_without_rewrite():
    d = _fresh()
    p = d + "/q"
    j = store.Journal(p)
    a = j.append(b"x" * 40)
    size = _size(p)
    head = store.read(p)
    j.pop(a)
    assert _size(p) > size and store.read(p)[:size] == head
    _rmtree(d)


def test_journal_torn_tail_dropped():
    d = _fresh()
    p = d + "/q"
    j = store.Journal(p)
    for i in range(4):
        j.append(b"record-%d" % i)
    _truncate(p, 3)  # the last append was cut by a power loss
    j = store.Journal(p)
    assert [data for _, data in j.records()] == [b"record-0", b"record-1", b"record-2"]
    good = _size(p)
    _append_raw(p, b"\x07\x00garbage!")  # torn header plus junk
    j = store.Journal(p)
    assert len(j) == 3
    assert _size(p) <= good
    s = j.append(b"after")  # lands after the good records, visible after the next reopen
    j = store.Journal(p)
    assert [data for _, data in j.records()][-1] == b"after"
    assert j.peek()[1] == b"record-0" and s > 2
    _rmtree(d)


def test_journal_corrupt_middle_record_drops_rest_without_raising():
    d = _fresh()
    p = d + "/q"
    j = store.Journal(p)
    for i in range(3):
        j.append(b"r%d" % i)
    raw = bytearray(store.read(p))
    raw[6 + 5 + 2 + 6 + 5] ^= 0xFF  # payload byte of the second record
    with open(p, "wb") as f:
        f.write(raw)
    j = store.Journal(p)
    assert [data for _, data in j.records()] == [b"r0"]
    _rmtree(d)


def _compact(j):
    # Rewrites the journal with its live records only, as it does by itself once enough is dead.
    j._rewrite()


def _replace(j, seq, data):
    # Patches a queued record in place: a later DATA record with the same seq replaces it, so it keeps its FIFO
    # position. The format allows it and the scan at open honours it; the firmware itself never patches.
    i = j._index(seq)
    if i < 0:
        return False
    j._write_rec(1, seq, data, i)  # store._K_DATA
    return True


def test_journal_replace_keeps_fifo_position():
    d = _fresh()
    p = d + "/q"
    j = store.Journal(p)
    a = j.append(b"start tx=-1")
    b = j.append(b"meter tx=-1")
    c = j.append(b"stop tx=-1")
    assert _replace(j, b, b"meter tx=42")
    assert not _replace(j, 999, b"nope")
    assert [r for r in j.records()] == [(a, b"start tx=-1"), (b, b"meter tx=42"), (c, b"stop tx=-1")]
    j = store.Journal(p)
    assert [r for r in j.records()] == [(a, b"start tx=-1"), (b, b"meter tx=42"), (c, b"stop tx=-1")]
    j.pop(a)
    assert j.peek() == (b, b"meter tx=42")
    _compact(j)
    assert [r for r in store.Journal(p).records()] == [(b, b"meter tx=42"), (c, b"stop tx=-1")]
    _rmtree(d)


def test_journal_compacts_automatically_and_keeps_order():
    d = _fresh()
    p = d + "/q"
    j = store.Journal(p, compact_at=300)
    live = []
    peak = 0
    for i in range(60):
        live.append((j.append(b"payload-%03d" % i), b"payload-%03d" % i))
        if i % 3:
            j.pop(live.pop(0)[0])
        peak = max(peak, _size(p))
    assert peak < 1000  # 60 records of ~25 bytes plus tombstones would be ~2.4 KB without compaction
    assert j.dead_bytes() < 300 or j.dead_bytes() < _size(p) - j.dead_bytes()
    assert [r for r in j.records()] == live
    assert [r for r in store.Journal(p).records()] == live
    _rmtree(d)


def test_journal_seq_monotonic_across_reopen_and_compaction():
    d = _fresh()
    p = d + "/q"
    j = store.Journal(p)
    s1 = j.append(b"a")
    s2 = j.append(b"b")
    j.pop(s1)
    j.pop(s2)
    _compact(j)  # everything popped: only the seq floor is left in the file
    j = store.Journal(p)
    assert len(j) == 0
    s3 = j.append(b"c")
    assert s3 > s2
    j = store.Journal(p)
    assert j.append(b"d") > s3
    _rmtree(d)


def test_journal_large_record_rejected_and_empty_payload_ok():
    d = _fresh()
    j = store.Journal(d + "/q")
    tinytest.raises(ValueError, j.append, b"x" * 9000)
    s = j.append(b"")
    assert store.Journal(d + "/q").peek() == (s, b"")
    _rmtree(d)


def test_journal_missing_dir_file_recovered_from_tmp():
    d = _fresh()
    p = d + "/q"
    j = store.Journal(p)
    j.append(b"keep")
    _compact(j)
    os.rename(p, p + ".tmp")  # FatFs window after a compaction
    assert store.Journal(p).peek()[1] == b"keep"
    _rmtree(d)


def _queue(p):
    j = store.Journal(p, mirror=True)
    seqs = [j.append(b"start", True), j.append(b"meter-1"), j.append(b"meter-2"), j.append(b"stop", True)]
    return j, seqs


def test_journal_mirror_holds_the_kept_records_only():
    d = _fresh()
    p = d + "/q"
    j, seqs = _queue(p)
    m = store.Journal(p + ".bak")
    assert [r for r in m.records()] == [(seqs[0], b"start"), (seqs[3], b"stop")]
    j.pop(seqs[0])
    j.pop(seqs[1])
    assert [r for r in store.Journal(p + ".bak").records()] == [(seqs[3], b"stop")]
    j = store.Journal(p, mirror=True)
    assert not j.damaged
    assert [r for r in j.records()] == [(seqs[2], b"meter-2"), (seqs[3], b"stop")]
    _rmtree(d)


def test_journal_damaged_in_any_mode_gets_its_kept_records_back_in_order():
    d = _fresh()
    for mode in ("half", "garbage", "zero", "deleted"):
        p = d + "/" + mode
        j, seqs = _queue(p)
        flashdamage.damage(p, mode)
        del store.notes[:]
        j = store.Journal(p, mirror=True)
        assert j.damaged, mode
        got = [r for r in j.records()]
        if mode == "half":  # the records before the damage survive, the rest come from the mirror
            assert got[0] == (seqs[0], b"start") and got[-1] == (seqs[3], b"stop"), got
        else:
            assert got == [(seqs[0], b"start"), (seqs[3], b"stop")], (mode, got)
        assert [s for s, _ in got] == sorted(s for s, _ in got)
        assert len(store.notes) == 1 and store.notes[0].startswith(mode + " "), store.notes
        assert "restored from %s.bak" % mode in store.notes[0] or mode == "half", store.notes
        s = j.append(b"next")
        assert s > seqs[3]
        j = store.Journal(p, mirror=True)  # and the repaired pair is consistent afterwards
        assert not j.damaged and [r for r in j.records()][-1] == (s, b"next")
    _rmtree(d)


def test_journal_bad_mirror_is_rebuilt_from_an_intact_file():
    d = _fresh()
    for mode in ("half", "garbage", "zero", "deleted"):
        p = d + "/" + mode
        j, seqs = _queue(p)
        flashdamage.damage(p + ".bak", mode)
        del store.notes[:]
        j = store.Journal(p, mirror=True)
        assert not j.damaged and store.notes == [], mode
        assert [r for r in store.Journal(p + ".bak").records()] == [(seqs[0], b"start"), (seqs[3], b"stop")]
    _rmtree(d)


def test_journal_cut_between_the_two_pops_does_not_bring_a_record_back():
    d = _fresh()
    p = d + "/q"
    j, seqs = _queue(p)
    plain = store.Journal(p)  # the main file popped, the mirror not (a power cut in between)
    plain.pop(seqs[0])
    j = store.Journal(p, mirror=True)
    assert not j.damaged
    assert [s for s, _ in j.records()] == seqs[1:]
    assert [s for s, _ in store.Journal(p + ".bak").records()] == [seqs[3]]
    _rmtree(d)


def test_journal_that_lost_its_pops_does_not_send_delivered_records_again():
    # A session delivered (Start, values, Stop popped: the pops are appended at the end), then the next one
    # queued; the main file loses its end, pops included. The delivered records must not come back (a Start
    # booked twice, a Stop of a closed transaction); the new kept record comes back from the mirror.
    d = _fresh()
    p = d + "/q"
    j, seqs = _queue(p)
    queued = _size(p)
    for s in seqs:
        j.pop(s)
    nxt = j.append(b"start-2", True)
    _truncate(p, _size(p) - queued - 3)  # the pops and start-2 gone, 3 bytes of the first pop left (torn)
    j = store.Journal(p, mirror=True)
    assert j.damaged
    assert [r for r in j.records()] == [(nxt, b"start-2")]
    assert [r for r in store.Journal(p + ".bak").records()] == [(nxt, b"start-2")]
    _rmtree(d)


def test_journal_seqs_stay_above_what_the_mirror_saw_when_the_file_is_lost():
    d = _fresh()
    p = d + "/q"
    j, seqs = _queue(p)
    for s in seqs:
        j.pop(s)
    os.remove(p)
    j = store.Journal(p, mirror=True)
    assert j.damaged and len(j) == 0
    assert not store.Journal(p, mirror=True).damaged  # repaired at once: reported at one boot, not at each
    j = store.Journal(p, mirror=True)
    assert j.append(b"new", True) > seqs[3]
    _rmtree(d)


def test_zz_cleanup():  # sorted last
    for d in _made:
        _rmtree(d)
    for d in _made:
        assert not store.exists(d)


def test_json_file_format_is_crc_header_then_body():
    # whichever path write_json takes (one dumps, or streaming on a fragmented heap), the file is this
    from binascii import crc32
    d = _fresh()
    p = d + "/big.json"
    obj = {"pem": "-----BEGIN CERTIFICATE-----\n" + "QUJD" * 600, "n": [1, 2.5, None, True], "t": "Grüße"}
    before = store.bytes_written
    store.write_json(p, obj)
    raw = store.read(p)
    body = json.dumps(obj).encode()
    assert raw == b"%08x\n" % (crc32(body) & 0xFFFFFFFF) + body
    assert store.read(p + ".bak") == raw
    assert store.bytes_written - before == 2 * len(raw)  # a cold file is written twice
    assert store.read_json(p) == obj and not store.exists(p + ".tmp")


def _fragment_heap():
    """Fills the heap with 512-byte blocks and frees every other one: lots free, no large block. Returns the
    kept half (the caller drops it to undo)."""
    import gc
    gc.collect()
    blocks = []
    try:
        while True:
            blocks.append(bytearray(512))
    except MemoryError:
        pass
    for i in range(1, len(blocks), 2):
        blocks[i] = None
    gc.collect()
    return blocks


def test_json_written_and_encoded_on_a_fragmented_heap():
    # The fast path (json.dumps, one block) has no room here: the streaming fallbacks must give the same bytes.
    from binascii import crc32
    from firmware.jsonbuf import JsonBuf
    d = _fresh()
    p = d + "/big.json"
    obj = {"configurationKey": [{"key": "Key%d" % i, "readonly": False, "value": "Grüße %d" % i}
                                for i in range(120)]}
    body = json.dumps(obj).encode()
    expected_file = b"%08x\n" % (crc32(body) & 0xFFFFFFFF) + body
    enc = JsonBuf(len(body) + 64)
    keep = _fragment_heap()
    try:
        try:
            json.dumps(obj)
            fragmented = False
        except MemoryError:
            fragmented = True
        out = enc.dump(obj)
        encoded = len(out) == len(body) and all(bytes(out[i:i + 256]) == body[i:i + 256]
                                                for i in range(0, len(body), 256))  # no room for a copy
        out = None
        store.write_json(p, obj)
    finally:
        keep = None
    assert fragmented, "the heap still had a block for the whole document"
    assert encoded
    assert store.read(p) == expected_file
    assert bytes(enc.dump(obj)) == body  # and the fast path, with the heap whole again
    _rmtree(d)


tinytest.run(globals())
