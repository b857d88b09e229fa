# firmware/ocpp/txqueue.py: the running transaction's append-only record (Transaction, read back at boot by
# firmware/ocpp/recovery.py, which also takes over the tx.json of the firmware before it) and TxQueue.recover,
# which tells the boot which transactions still need a Stop, on the real store (files in a temporary directory
# standing in for the flash).
import os
import micropython
import tinytest
import flashdamage
from firmware import store
from firmware.config import Config
from firmware.ocpp import recovery
from firmware.ocpp.session import Offline
from firmware.ocpp.txqueue import TxQueue, Transaction, START, STOP, METER


class Session:
    registered = False
    online = False

    async def call(self, action, payload, timeout_ms=None):
        raise Offline()


def _garble(p):
    raw = store.read(p)
    with open(p, "wb") as f:
        f.write(bytes((i * 151 + 7) & 0xFF for i in range(len(raw))))


def _tx(d, lid=7):
    tx = Transaction(d + "/tx.rec", lid, "TAG1", "GROUP", 1000, 1700000000)
    tx.samples.append([1700000000, 0, [1000, 0.0, 0.0, 0.0, 0.0, 230.0, 230.0, 230.0, 160, 3]])
    return tx


def _queue(d):
    return TxQueue(Session(), Config(d), d)


def _size(p):
    return os.stat(p)[6]


def _notes():
    del store.notes[:]  # the store keeps 8 for the Central System: the count starts again
    return 0


def _cut(p, n):
    """The file as a power cut n bytes into its last write leaves it."""
    raw = store.read(p)
    with open(p, "wb") as f:
        f.write(raw[:n])


def _readings(tx, whs, t=1700000000):
    for i, wh in enumerate(whs):
        tx.note(wh, t + 30 * (i + 1), None)


# ---- the transaction record ----
def test_a_saved_transaction_is_read_back_field_by_field():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.wh = 1500
    tx.t = 1700000600
    tx.invalid = True
    tx.save()
    back = recovery.load(d + "/tx.rec")
    assert (back.lid, back.tag, back.parent, back.wh0, back.t0, back.wh, back.t, back.invalid) == \
        (7, "TAG1", "GROUP", 1000, 1700000000, 1500, 1700000600, True)
    assert back.samples == tx.samples and back.path == d + "/tx.rec"


def test_a_reading_appends_a_few_bytes_to_both_copies():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.save()
    p = d + "/tx.rec"
    size = _size(p)
    before = store.bytes_written
    tx.note(1100, 1700000030, None)
    assert _size(p) == _size(p + ".bak") == size + 15  # framing 6, b"R", two 4-byte integers
    assert store.bytes_written - before == 30  # not a rewrite of the file
    tx.note(1200, 1700000060, [1700000060, 1, [1200, 1.0, 0.0, 0.0, 0.0, 230.0, 230.0, 230.0, 160, 3]])
    back = recovery.load(p)
    assert (back.wh, back.t) == (1200, 1700000060)
    assert back.samples == tx.samples and len(back.samples) == 2  # the kept sample travels with its reading


def test_a_reading_is_framed_without_allocating():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.frame(1, 2, None)  # warm: nothing in the hot path is created on first use
    micropython.heap_lock()
    try:
        rec = tx.frame(123456789, 1700000030, None)
    finally:
        micropython.heap_unlock()
    assert len(rec) == 15 and rec[6] == ord("R")


def test_samples_kept_on_flash_follow_the_rule_in_ram():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.save()
    for i in range(14):  # more than transactionData keeps: Transaction.Begin and the newest stay
        t = 1700000030 + 30 * i
        tx.note(1000 + i, t, [t, 1, [1000 + i, 0.0, 0.0, 0.0, 0.0, 230.0, 230.0, 230.0, 160, 3]])
    assert len(tx.samples) == 10 and tx.samples[0][1] == 0
    assert recovery.load(d + "/tx.rec").samples == tx.samples


def test_a_long_transaction_is_compacted_and_reads_back_the_same():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.save()
    p = d + "/tx.rec"
    _readings(tx, range(1001, 1201))  # 200 readings: 3 KB appended without compaction
    assert _size(p) < 2400 and _size(p + ".bak") == _size(p)
    back = recovery.load(p)
    assert (back.wh, back.t, back.samples) == (1200, 1700000000 + 30 * 200, tx.samples)


def test_a_cut_inside_an_append_loses_only_that_reading_and_is_reported():
    d = tinytest.tempdir("txrec")
    p = d + "/tx.rec"
    for cut_at in range(1, 15):  # every byte of the record being written
        tx = _tx(d)
        tx.save()
        _readings(tx, (1100, 1200))
        whole = _size(p)
        rec = tx.frame(1300, 1700000090, None)
        store.append(p, rec)  # the copy's append never started
        _cut(p, whole + cut_at)
        notes = _notes()
        back = recovery.load(p)
        assert back is not None and (back.lid, back.wh, back.t) == (7, 1200, 1700000060), (cut_at, back and back.wh)
        assert len(store.notes) == notes + 1 and "tx.rec torn" in store.notes[-1], store.notes[-1:]
        assert _size(p) == _size(p + ".bak")  # both rewritten whole
        assert recovery.load(p).wh == 1200 and len(store.notes) == notes + 1  # reported once
        tx.forget()


def test_a_cut_between_the_two_appends_keeps_the_reading():
    d = tinytest.tempdir("txrec")
    p = d + "/tx.rec"
    tx = _tx(d)
    tx.save()
    _readings(tx, (1100,))
    store.append(p, tx.frame(1200, 1700000060, None))  # the file has it, the copy not yet
    notes = _notes()
    back = recovery.load(p)
    assert back.wh == 1200 and len(store.notes) == notes  # the copy is caught up, nothing to report
    assert _size(p + ".bak") == _size(p)


def test_a_damaged_copy_is_restored_from_the_other_in_every_mode():
    for target in ("tx.rec", "tx.rec.bak"):
        for mode in ("half", "garbage", "zero", "deleted"):
            d = tinytest.tempdir("txrec")
            tx = _tx(d)
            tx.save()
            _readings(tx, (1100, 1200, 1300))
            flashdamage.damage(d + "/" + target, mode)
            back = recovery.load(d + "/tx.rec")
            assert back is not None and (back.lid, back.wh) == (7, 1300), (target, mode, back and back.wh)
            assert store.read(d + "/tx.rec") == store.read(d + "/tx.rec.bak")
            tx.forget()


def test_both_copies_lost_reads_as_no_transaction():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.save()
    _garble(d + "/tx.rec")
    _garble(d + "/tx.rec.bak")
    notes = _notes()
    assert recovery.load(d + "/tx.rec") is None  # the queue still knows it: TxQueue.recover
    assert len(store.notes) == notes + 1 and "lost" in store.notes[-1]
    assert recovery.load(d + "/tx.rec") is None and len(store.notes) == notes + 1  # said once


def test_not_a_transaction_reads_as_none():
    d = tinytest.tempdir("txrec")
    store.write_json(d + "/tx.json", [1, 2, 3])  # a whole file of the old format, but not a transaction
    assert recovery.load(d + "/tx.rec") is None
    store.write_json(d + "/tx.json", {"l": 1})
    assert recovery.load(d + "/tx.rec") is None
    assert not store.present(d + "/tx.json")


def test_forget_removes_the_file_and_its_copy():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.save()
    assert store.present(d + "/tx.rec")
    tx.forget()
    assert not store.present(d + "/tx.rec") and recovery.load(d + "/tx.rec") is None


# ---- migration: tx.json of the firmware before the append-only record ----
def _old(d, fields, generations=1):
    # As that firmware wrote it: a CRC line and the JSON, rewritten hot at every sample (the previous generation
    # rotated to tx.json.bak).
    store.write_json(d + "/tx.json", fields)
    for i in range(1, generations):
        flashdamage.rotate(d + "/tx.json", dict(fields, wh=fields["wh"] + 100 * i))


_OLD = {"l": 3, "tag": "OLD", "parent": None, "wh0": 10, "t0": 5, "wh": 20, "t": 9, "inv": False, "td": []}


def test_the_format_of_the_firmware_before_the_record_still_loads():
    # tx.json as the firmware that rewrote it at every sample left it: a transaction open across the update is
    # closed all the same, and from then on kept as tx.rec.
    d = tinytest.tempdir("txrec")
    _old(d, _OLD, generations=2)
    back = recovery.load(d + "/tx.rec")
    assert (back.lid, back.tag, back.wh0, back.t0, back.wh, back.t, back.invalid) == (3, "OLD", 10, 5, 120, 9, False)
    assert not store.present(d + "/tx.json") and store.exists(d + "/tx.rec") and store.exists(d + "/tx.rec.bak")
    assert recovery.load(d + "/tx.rec").wh == 120  # the new record holds it now
    back.note(130, 12, None)
    assert recovery.load(d + "/tx.rec").wh == 130


def test_an_old_file_torn_by_the_cut_falls_back_to_its_previous_generation():
    d = tinytest.tempdir("txrec")
    _old(d, _OLD, generations=2)
    _garble(d + "/tx.json")
    notes = _notes()
    back = recovery.load(d + "/tx.rec")
    assert back is not None and back.lid == 3 and back.wh == 20  # one sample older, as before the update
    assert len(store.notes) == notes + 1


def test_an_old_file_left_by_a_cut_during_the_take_over_is_not_read_again():
    d = tinytest.tempdir("txrec")
    _old(d, _OLD)
    tx = recovery.load(d + "/tx.rec")
    tx.forget()  # closed and done
    _old(d, _OLD)  # as if the cut came between writing tx.rec and removing tx.json: tx.rec is the newer
    tx.save()
    assert recovery.load(d + "/tx.rec").lid == 3 and not store.present(d + "/tx.json")
    tx.forget()
    assert recovery.load(d + "/tx.rec") is None  # the old file does not bring a finished transaction back


# ---- TxQueue.recover ----
def test_recover_names_the_started_transactions_without_a_stop():
    d = tinytest.tempdir("txq")
    q = _queue(d)
    for _ in range(4):
        q.new_local_id()
    q.push(START, 1, {"idTag": "A"})
    q.push(STOP, 1, {"reason": "Local"})
    q.push(START, 2, {"idTag": "B"})
    q.push(METER, 2, {})
    q.ids["3"] = 33  # delivered, its Stop not queued yet
    q._save_ids()
    q2 = _queue(d)  # the boot after a power cut
    unclosed, lost = q2.recover(None)
    assert unclosed == {2, 3} and not lost, (unclosed, lost)
    unclosed, lost = q2.recover(4)  # the connector's file holds transaction 4, which the queue has not seen
    assert unclosed == {2, 3, 4} and not lost  # a sound queue: its Start was delivered and answered earlier
    unclosed, lost = q2.recover(1)
    assert 1 not in unclosed  # its Stop is queued: the file was left by a cut before it was deleted


def test_recover_notes_every_id_so_new_ones_are_issued_above():
    d = tinytest.tempdir("txq")
    q = _queue(d)
    for _ in range(9):
        q.new_local_id()
    q.push(START, 9, {"idTag": "A"})
    store.delete(d + "/txids.json")  # the map that counted the ids is gone, and its copy
    q2 = _queue(d)
    q2.recover(12)
    assert q2.new_local_id() == 13


def test_recover_says_when_the_start_of_the_open_transaction_is_lost():
    d = tinytest.tempdir("txq")
    q = _queue(d)
    q.new_local_id()
    q.ids["5"] = 55
    q._save_ids()
    _garble(d + "/txids.json")  # the map comes back damaged (its copy is one generation older or gone too)
    _garble(d + "/txids.json.bak")
    q2 = _queue(d)
    assert q2.damaged
    unclosed, lost = q2.recover(5)
    assert unclosed == {5} and lost  # neither the queue nor the map holds its Start: it must be sent again
    q2.push(START, 5, {"idTag": "A"})
    assert q2.recover(5) == ({5}, False)  # queued now


tinytest.run(globals())
