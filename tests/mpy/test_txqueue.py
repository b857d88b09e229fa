# firmware/ocpp/txqueue.py: the running transaction's record and file (Transaction, read back at boot by
# firmware/ocpp/recovery.py) and TxQueue.recover, which tells the boot which transactions still need a Stop, on the
# real store (files in a temporary directory standing in for the flash).
import tinytest
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
    tx = Transaction(d + "/tx.json", lid, "TAG1", "GROUP", 1000, 1700000000)
    tx.samples.append([1700000000, 0, [1000, 0.0, 0.0, 0.0, 0.0, 230.0, 230.0, 230.0, 160, 3]])
    return tx


def _queue(d):
    return TxQueue(Session(), Config(d), d)


# ---- the transaction record ----
def test_a_saved_transaction_is_read_back_field_by_field():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.wh = 1500
    tx.t = 1700000600
    tx.invalid = True
    tx.save()
    back = recovery.load(d + "/tx.json")
    assert (back.lid, back.tag, back.parent, back.wh0, back.t0, back.wh, back.t, back.invalid) == \
        (7, "TAG1", "GROUP", 1000, 1700000000, 1500, 1700000600, True)
    assert back.samples == tx.samples and back.path == d + "/tx.json"


def test_the_format_of_the_firmware_before_the_record_still_loads():
    # tx.json as the firmware that kept the transaction as a dict wrote it: a transaction it left open across an
    # update is closed all the same.
    d = tinytest.tempdir("txrec")
    store.write_json(d + "/tx.json", {"l": 3, "tag": "OLD", "parent": None, "wh0": 10, "t0": 5, "wh": 20, "t": 9,
                                      "inv": False, "td": []}, True)
    back = recovery.load(d + "/tx.json")
    assert (back.lid, back.tag, back.wh0, back.t0, back.wh, back.t, back.invalid) == (3, "OLD", 10, 5, 20, 9, False)


def test_a_torn_file_falls_back_to_the_previous_sample():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.save()
    for wh in (1100, 1200):  # two samples: hot writes rotate the file, the previous generation stays as .bak
        tx.wh = wh
        tx.save(True)
    _garble(d + "/tx.json")
    notes = len(store.notes)
    back = recovery.load(d + "/tx.json")
    assert back is not None and back.lid == 7 and back.wh == 1100, back and back.wh  # one sample older
    assert len(store.notes) == notes + 1  # the Central System hears of it


def test_both_copies_lost_reads_as_no_transaction():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.save()
    _garble(d + "/tx.json")
    _garble(d + "/tx.json.bak")
    assert recovery.load(d + "/tx.json") is None  # the queue still knows it: TxQueue.recover


def test_not_a_transaction_reads_as_none():
    d = tinytest.tempdir("txrec")
    store.write_json(d + "/tx.json", [1, 2, 3])  # a whole file, but not a transaction
    assert recovery.load(d + "/tx.json") is None
    store.write_json(d + "/tx.json", {"l": 1})
    assert recovery.load(d + "/tx.json") is None


def test_forget_removes_the_file_and_its_copy():
    d = tinytest.tempdir("txrec")
    tx = _tx(d)
    tx.save()
    assert store.present(d + "/tx.json")
    tx.forget()
    assert not store.present(d + "/tx.json") and recovery.load(d + "/tx.json") is None


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
