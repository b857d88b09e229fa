# The running transaction of connector 1: a record with named fields, kept on flash (tx.json) from its start to
# the queueing of its StopTransaction, so one cut by a power loss is closed at the next boot (Connector.recover).
# The file is rewritten at every sample: hot, so firmware/store.py rotates it and its previous generation
# survives a write torn by the power cut.
from micropython import const

from firmware import store

_DATA_MAX = const(10)  # samples kept for StopTransaction.transactionData (flash and RAM are small)


class Transaction:
    def __init__(self, path, lid, tag=None, parent=None, wh=0, t=0):
        self.path = path
        self.lid = lid  # local id: the queue's name for it until the Central System gives a transactionId
        self.tag = tag
        self.parent = parent  # parentIdTag: another card of the group may stop it
        self.wh0 = wh  # meterStart
        self.t0 = t  # start, epoch seconds
        self.wh = wh  # the last stored reading and its time: what a power cut closes it with
        self.t = t
        self.invalid = False  # the Central System refused the tag: no energy (MaxEnergyOnInvalidId aside)
        self.samples = []  # [t, context, metering snapshot]: Transaction.Begin and the latest, for transactionData

    def keep(self, t, ctx, snap):
        s = self.samples
        if len(s) >= _DATA_MAX:
            s.pop(1)  # keep Transaction.Begin and the most recent samples
        s.append([t, ctx, snap])

    def save(self, hot=False):
        # The keys of the firmware that kept the transaction as a dict: a transaction it left open across an
        # update of the firmware is closed all the same.
        store.write_json(self.path, {"l": self.lid, "tag": self.tag, "parent": self.parent, "wh0": self.wh0,
                                     "t0": self.t0, "wh": self.wh, "t": self.t, "inv": self.invalid,
                                     "td": self.samples}, hot)

    def forget(self):
        # Only once its StopTransaction is queued: a power cut before this point ends it as PowerLoss.
        store.delete(self.path)


def load(path):
    """The transaction a reset left open, or None: none was open, or the file and its copy were both lost (the
    queue still knows it: Connector.recover closes it from there)."""
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
