# Boot only: the transaction a reset left open is taken back and closed (docs/decisions.md, Flash). Connector.recover
# loads this module once, before the tasks start, and unloads it after, so its code costs no heap while the charger
# runs (as firmware/provision.py does).
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
            # The queue and the id map both lost its StartTransaction: rebuilt from tx.json, identical to the first
            # (a Central System that booked it recognises the resend and answers the same id).
            store.note("transaction %d: StartTransaction lost, sent again from tx.json" % lid)
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
        store.note("transaction %d: tx.json lost, stopped with the meter's reading now" % lid)
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
    """The transaction a reset left open (as Transaction.save wrote it), or None: none was open, or the file and
    its copy were both lost (the queue still knows it: TxQueue.recover)."""
    d = store.read_json(path, None)
    try:
        tx = Transaction(path, d["l"], d["tag"], d["parent"], d["wh0"], d["t0"])
        tx.wh = d["wh"]
        tx.t = d["t"]
        tx.invalid = d["inv"]
        tx.samples = d["td"]
    except (KeyError, TypeError):
        return None
    return tx

