# Transactions on flash (OCPP 1.6 §3.7, DESIGN.md §4): the running transaction's record (tx.rec) and the persistent
# FIFO of its messages. One module for both, as they are recovered together at boot (a module costs ~400 B of heap
# on a 32-bit board).
# - Transaction: the running transaction of connector 1, with named fields, kept from its start to the queueing of
#   its StopTransaction, so one cut by a power loss is closed at the next boot (firmware/ocpp/recovery.py reads it
#   back). The file is append-only (docs/decisions.md, Flash): a header record with every field, then one small
#   record per sample with the reading (and the sample StopTxn*Data keeps), both in store.py's journal framing
#   (<length u16><crc32 u32><body>) and appended to both copies, tx.rec and tx.rec.bak. A power cut mid-append tears
#   only the record being written. Rewritten whole (compacted) when the header changes or the file grows past
#   _COMPACT_AT; deleted once the StopTransaction is queued.
# - TxQueue: StartTransaction, StopTransaction and transaction MeterValues survive power loss and outages, go out
#   strictly in order, and obey TransactionMessageAttempts / TransactionMessageRetryInterval. Messages of a
#   transaction whose StartTransaction.conf has not arrived carry a local id; the real transactionId is filled in
#   at send time. A MeterValues is queued as its sample ([time, context, metering snapshot, measurands]) and
#   expanded into sampledValues when it is sent (metering.payload): a tenth of the bytes on flash.
import asyncio
import json
import struct
from binascii import crc32
from micropython import const

from firmware import log, store
from firmware.jsonbuf import JsonBuf
from firmware.ocpp import rpc
from firmware.ocpp.session import Offline

_TAG = "txq"
_RECORD_BUF = 4096  # the largest queued record encoded without a heap allocation
START = "StartTransaction"
STOP = "StopTransaction"
METER = "MeterValues"
_FRAME = const(6)  # <body length u16><crc32 u32>: the journal's framing (firmware/store.py)
_READING = const(9)  # a reading's body: b"R" <wh u32> <t u32>, then the kept sample's JSON if any
_R = const(82)  # b"R"; a header's body is a JSON object, b"{"
_COMPACT_AT = const(2048)  # bytes of tx.rec past which the next reading rewrites it whole (~2 h at 30 s)
_TX_DATA_MAX = const(10)  # samples kept for StopTransaction.transactionData (flash and RAM are small)
# A reading's record is framed here, for every transaction (one runs at a time): no allocation per sample, nor
# per transaction (tests/mpy/test_txqueue.py).
_buf = bytearray(_FRAME + _READING)
_mv = memoryview(_buf)[_FRAME:]


class Transaction:
    def __init__(self, path, lid, tag, parent, wh, t):
        self.path = path
        self.lid = lid  # local id: the queue's name for it until the Central System gives a transactionId
        self.tag = tag
        self.parent = parent  # parentIdTag: another card of the group may stop it
        self.wh0 = wh  # meterStart
        self.t0 = t  # start, epoch seconds
        self.wh = wh  # the last stored reading and its time: what a power cut closes it with
        self.t = t
        self.invalid = False  # the Central System refused the tag: no energy (MaxEnergyOnInvalidId aside)
        self.samples = []  # [t, context, metering snapshot] for transactionData (metering.Sampler keeps them)
        self.size = 0  # bytes in tx.rec since the last whole write

    def save(self):
        """Writes the whole record (the header with every field, the last reading and the kept samples) to both
        copies, each replaced atomically: at the start, when a field changes, and as the compaction of the
        appended readings. The keys are those of the tx.json of the firmware before the append-only record
        (recovery.py reads both)."""
        body = memoryview(json.dumps({"l": self.lid, "tag": self.tag, "parent": self.parent, "wh0": self.wh0,
                                      "t0": self.t0, "wh": self.wh, "t": self.t, "inv": self.invalid,
                                      "td": self.samples}))  # len() in bytes, for a non-ASCII tag too
        head = struct.pack("<HI", len(body), crc32(body) & 0xFFFFFFFF)
        store.write_atomic(self.path, (head, body))
        store.write_atomic(self.path + store.BAK, (head, body))
        self.size = _FRAME + len(body)

    def keep(self, item):
        """A sample for transactionData ([t, context, snapshot], or None: not kept): Transaction.Begin and the most
        recent ones are kept."""
        if item is None:
            return
        s = self.samples
        if len(s) >= _TX_DATA_MAX:
            s.pop(1)
        s.append(item)

    def note(self, wh, t, extra):
        """A sample's reading, and the sample kept for transactionData (or None): appended to both copies, the copy
        second, so a cut tears at most this record in one of them."""
        self.wh = wh
        self.t = t
        self.keep(extra)
        if self.size >= _COMPACT_AT:
            self.save()
            return
        b = self.frame(wh, t, extra)
        store.append(self.path, b)
        store.append(self.path + store.BAK, b)
        self.size += len(b)

    def frame(self, wh, t, extra):
        # Without a kept sample, in the module's buffer: the hot path allocates nothing on the unix port (a 32-bit
        # port makes a CRC above 2**30 a long int, as for every journal record). The formats are the journal's:
        # every new qstr costs heap for good. u32 fields: 4.29 GWh, and epoch seconds until 2106.
        b = _buf
        struct.pack_into("<BI", b, _FRAME, _R, wh)
        struct.pack_into("<I", b, _FRAME + 5, t)
        crc = crc32(_mv)
        if extra is None:
            struct.pack_into("<HI", b, 0, _READING, crc & 0xFFFFFFFF)
            return b
        extra = json.dumps(extra).encode()
        struct.pack_into("<HI", b, 0, _READING + len(extra), crc32(extra, crc) & 0xFFFFFFFF)
        return b + extra

    def forget(self):
        # Only once its StopTransaction is queued: a power cut before this point ends it as PowerLoss.
        store.delete(self.path)


class TxQueue:
    def __init__(self, session, cfg, state_dir):
        self.session = session
        self.cfg = cfg
        # One buffer both encodes records and reads them back: push() and the head read in run() never await
        # between filling it and using it.
        self._enc = JsonBuf(_RECORD_BUF)
        # StartTransaction and StopTransaction records are mirrored (store.Journal): billing depends on them.
        self.journal = store.Journal(state_dir + "/txqueue.jnl", read_buf=self._enc.buf, mirror=True)
        self._ids_path = state_dir + "/txids.json"
        # local id (str) -> transactionId from the Central System; "n" holds the last local id issued.
        ids, got = store.load(self._ids_path, None)
        self.ids = ids if isinstance(ids, dict) and isinstance(ids.get("n"), int) else {"n": 0}
        # The map or the queue was recovered (maybe a generation older) or lost: recover() re-checks
        # the transactions it knows against both.
        self.damaged = got >= store.RESTORED or self.journal.damaged
        self._wake = asyncio.Event()
        # Failed attempts at the head message: kept here, not in run(), so a restarted task cannot send it
        # again and again past TransactionMessageAttempts.
        self._attempts = 0
        self.on_conf = None  # fn(action, local_id, conf or None) after a message is delivered or dropped

    def new_local_id(self):
        self.ids["n"] += 1
        self._save_ids()
        return self.ids["n"]

    def note_lid(self, local_id):
        """A local id seen on flash: new ids are issued above it, even if the map that counted them was lost."""
        if local_id > self.ids["n"]:
            self.ids["n"] = local_id
            self._save_ids()

    def tx_id(self, local_id):
        return self.ids.get(str(local_id))

    def recover(self, open_lid):
        """At boot, before anything is queued: (the local ids of the transactions started here whose
        StopTransaction is not queued, whether open_lid's StartTransaction is lost). A transaction counts as
        started when its StartTransaction is queued or booked in the id map; open_lid (the transaction the
        connector's file holds, or None) counts too. Its Start is lost when the queue or the map came back
        damaged and neither holds it. Every id seen is noted, so new ids are issued above them."""
        starts = set()
        stops = set()
        for _, data in self.journal.records():
            action, lid, _ = json.loads(data)
            if action == START:
                starts.add(lid)
            elif action == STOP:
                stops.add(lid)
        lost = open_lid is not None and self.damaged and open_lid not in starts and self.tx_id(open_lid) is None
        starts.update(int(k) for k in self.ids if k != "n")
        if open_lid is not None:
            starts.add(open_lid)
        for lid in starts | stops:
            self.note_lid(lid)
        return starts - stops, lost

    def push(self, action, local_id, payload):
        # Encoded into a buffer taken at boot: a StopTransaction with transactionData can be kilobytes long,
        # and the heap is fragmented by then (firmware/jsonbuf.py). Nothing awaits between dump and append.
        self.journal.append(self._enc.dump([action, local_id, payload]), action != METER)
        self._wake.set()

    def __len__(self):
        return len(self.journal)

    def kick(self):
        self._wake.set()

    def _save_ids(self):
        store.write_json(self._ids_path, self.ids)

    async def _idle(self, ms):
        self._wake.clear()
        try:
            await asyncio.wait_for_ms(self._wake.wait(), ms)
        except asyncio.TimeoutError:
            pass

    async def run(self):
        session = self.session
        while True:
            head = self.journal.peek()
            if head is None or not session.registered or not session.online:
                await self._idle(1000)
                continue
            seq, data = head
            action, lid, payload = json.loads(data)
            if action == METER and isinstance(payload, list):  # a queued sample (older firmware queued the dict)
                from firmware.ocpp import metering
                payload = metering.payload(payload)
            key = str(lid)
            if action == START and key in self.ids:
                self.journal.pop(seq)  # delivered before a power cut interrupted the pop
                continue
            if action != START:
                real = self.ids.get(key)
                if real is None:
                    # Its StartTransaction was discarded (or this Stop was already delivered): the Central
                    # System cannot place it, so drop it (docs/decisions.md, digest §7 Q1).
                    log.warn(_TAG, "dropping %s of unknown transaction %s" % (action, key))
                    self.journal.pop(seq)
                    continue
                payload["transactionId"] = real
            try:
                conf = await session.call(action, payload)
            except Offline:
                await self._idle(500)  # being offline is not a failed attempt (digest §1.6)
                continue
            except (rpc.CallError, asyncio.TimeoutError) as e:  # a CALLERROR, a malformed answer, no answer
                self._attempts += 1
                attempts = self._attempts
                limit = self.cfg.get("TransactionMessageAttempts")
                log.warn(_TAG, "%s attempt %d/%d failed: %r" % (action, attempts, limit, e))
                if attempts < limit:
                    await asyncio.sleep(self.cfg.get("TransactionMessageRetryInterval") * attempts)
                    continue
                log.warn(_TAG, "giving up on " + action)
                conf = None
            self._attempts = 0
            self._delivered(seq, action, key, conf)

    def _delivered(self, seq, action, key, conf):
        # The id map is saved before the record is popped so a power cut in between cannot cause a resend.
        if action == START and conf is not None:
            tid = conf.get("transactionId")
            self.ids[key] = tid if isinstance(tid, int) else 0
            self._save_ids()
        elif action == STOP and key in self.ids:
            del self.ids[key]
            self._save_ids()
        self.journal.pop(seq)
        if self.on_conf:
            self.on_conf(action, int(key), conf)
