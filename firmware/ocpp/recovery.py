# Boot only: the transaction a reset left open is taken back and closed (docs/decisions.md, Flash). Connector.recover
# loads this module once, before the tasks start, and unloads it after, so its code costs no heap while the charger
# runs (as firmware/provision.py does).
import json
import struct
from binascii import crc32
from micropython import const

from firmware import clock, log, store, unload
from firmware.ocpp.txqueue import START, Transaction

_TAG = "conn"  # the connector's log lines
_CONNECTOR = const(1)
# A sample may come this much after its time: the meter grace (5 s) and a late poll.
_SAMPLE_SLACK_S = const(8)


async def run(conn, cause):
    """Connector.recover: the meter's first reading, then the transactions a reset left open closed; the module
    unloads itself after."""
    try:
        await _close(conn, cause)
    finally:
        unload(__name__)


async def _close(conn, cause):
    # Closes a transaction still open at boot: cut by a power loss, or by a watchdog restart (reason Reboot), with
    # the meter's reading (the contactor dropped with the MCU, so the register has not moved since), else the last
    # stored one. Every transaction the flash still knows of gets exactly one Stop, also when a state file was lost.
    meter = conn.meter
    txq = conn.txq
    tx = load(conn.tx_path)
    if tx is not None:
        _anchor(conn, tx)
    await meter.poll()  # after the anchor: this first reading is checked against the stored one
    unclosed, start_lost = txq.recover(tx and tx.lid)
    if tx is not None:
        lid = tx.lid
        if start_lost:
            # The queue and the id map both lost its StartTransaction: rebuilt from tx.rec, identical to the first
            # (a Central System that booked it recognises the resend and answers the same id).
            store.note("transaction %d: StartTransaction lost, sent again from tx.rec" % lid)
            txq.push(START, lid, {"connectorId": _CONNECTOR, "idTag": tx.tag, "meterStart": tx.wh0,
                                   "timestamp": clock.iso(tx.t0)})
        if lid in unclosed:
            unclosed.discard(lid)
            reason = "Reboot" if cause == "watchdog" else "PowerLoss"
            wh = max(tx.wh, meter.energy_wh) if meter.ok else tx.wh
            log.warn(_TAG, "closing transaction %d after %s at %d Wh" % (lid, reason, wh))
            conn.push_stop(tx, reason, wh, tx.t, None)
        else:
            tx.forget()  # cut between queueing its Stop and deleting the file
    for lid in unclosed:
        # Its state file was lost (corrupt flash): the Central System still gets exactly one Stop.
        store.note("transaction %d: tx.rec lost, stopped with the meter's reading now" % lid)
        lost = Transaction(conn.tx_path, lid, None, None, 0, 0)
        conn.push_stop(lost, "PowerLoss", meter.energy_wh, clock.now(), None)


def _anchor(conn, tx):
    # The first reading after the boot is checked against the reading stored with the transaction (issue 9):
    # energy flowed at most while the contactor could be closed after it, which is until the next sample was due
    # (while the meter reads true the samples keep coming; without true readings the contactor opens after the
    # grace), and never longer than the wall clock says. A clock that runs behind the stored time (no RTC after a
    # power loss) and no sampling leave only the margin: the stored reading is then billed.
    interval = conn.cfg.get("MeterValueSampleInterval")
    window = interval + _SAMPLE_SLACK_S if interval else -1
    elapsed = clock.now() - tx.t + 1  # + 1: both times are whole seconds
    if elapsed > 0 and (window < 0 or elapsed < window):
        window = elapsed
    conn.meter.anchor(tx.wh, conn.meter.max_w * window // 3600 if window > 0 else 0)


def load(path):
    """The transaction a reset left open (as Transaction.save and .note wrote it), or None: none was open, or the
    file and its copy were both lost (the queue still knows it: TxQueue.recover). A torn or damaged copy is
    recovered from the other one (the newer reading wins), reported, and both are rewritten whole. Without tx.rec,
    the tx.json of the firmware before the append-only record is taken over (an update with a transaction open)."""
    # Recoveries are logged as the store's lines ("store"), whichever module finds them.
    bak = path + store.BAK
    if not store.exists(path) and _scan(path + ".tmp")[1] is None:
        store._rename(path + ".tmp", path)  # FatFs: a whole write cut between removing the file and the rename
    old = path[:-3] + "json"  # tx.json: the name of the firmware before the record (no new qstr)
    if store.present(old):
        if not store.present(path):
            # Its tx.json (a CRC line and the JSON of the same fields, rotated with tx.json.bak at every sample) is
            # written again as tx.rec before it goes, so a cut in between keeps one.
            tx = _decode(path, store.read_json(old, None))
            if tx is not None:
                log.info("store", "tx.json: transaction %d taken over as tx.rec" % tx.lid)
                tx.save()
            store.delete(old)
            return tx
        store.delete(old)  # taken over before a cut: tx.rec is the newer
    tx, why = _scan(path)
    btx, bwhy = _scan(bak)
    name = store._name(path)
    if why is None and btx is not None and _last(btx) > _last(tx):
        why = "behind its copy"  # cut short at a record's end: whole records lost
    if why is None:
        if bwhy is not None or _last(btx) != _last(tx) or btx.invalid != tx.invalid or btx.parent != tx.parent:
            # a cut between the two writes of a reading leaves the copy one behind: not worth a report
            (log.info if bwhy in (None, "missing") else log.warn)("store", "%s %s: copy rewritten" % (
                name + store.BAK, bwhy or "behind its file"))
            tx.save()
        return tx
    if tx is None and btx is None:
        if why == "missing" and bwhy == "missing":
            return None
        store.delete(path)  # reported once: the next boot finds no file, as after a first boot
        store.note("%s %s, copy %s: lost" % (name, why, bwhy))
        return None
    if btx is not None and (tx is None or _last(btx) >= _last(tx)):
        tx = btx
        store.note("%s %s: restored from %s" % (name, why, name + store.BAK))
    else:
        store.note("%s %s: its last whole record used" % (name, why))  # torn on both, the copy older
    tx.path = path
    tx.save()
    return tx


def _last(tx):
    # The newer of two copies: the later reading (energy only grows), or the one with more samples kept
    return tx.wh, tx.t, len(tx.samples)



def _scan(path):
    """(transaction, None) for a whole file; (transaction from its good records, why) for a torn or damaged one;
    (None, why) when not even the header is good."""
    raw = store.read(path)
    if raw is None:
        return None, "missing"
    if not raw:
        return None, "empty"
    tx = None
    off = 0
    n = len(raw)
    mv = memoryview(raw)
    while off + 6 <= n:
        size, crc = struct.unpack_from("<HI", raw, off)
        body = mv[off + 6:off + 6 + size]
        if not size or len(body) != size or crc32(body) & 0xFFFFFFFF != crc:
            break
        if tx is None:
            try:
                tx = _decode(path, json.loads(body))
            except ValueError:
                pass
            if tx is None:
                break
        elif body[0] == 82 and size >= 9:  # b"R" <wh u32> <t u32>: a reading, then the sample kept with it
            tx.wh = struct.unpack_from("<I", body, 1)[0]
            tx.t = struct.unpack_from("<I", body, 5)[0]
            if size > 9:
                tx.keep(json.loads(body[9:]))
        else:
            break
        off += 6 + size
    if tx is None:
        return None, "CRC mismatch" if off + 6 <= n else "no whole header"
    return tx, None if off == n else "torn at byte %d of %d" % (off, n)


def _decode(path, d):
    try:
        tx = Transaction(path, d["l"], d["tag"], d["parent"], d["wh0"], d["t0"])
        tx.wh = d["wh"]
        tx.t = d["t"]
        tx.invalid = d["inv"]
        tx.samples = d["td"]
    except (KeyError, TypeError):
        return None
    return tx
