# Connector 1 as OCPP sees it: the charge-session lifecycle (tag / plug / authorise / start / meter / stop) and
# the status machine of OCPP 1.6 §4.9 (digest §2.8). It reaches the hardware only through the EVSE and meter
# models (DESIGN.md §1): it sets evse.allow / want_lock / limit_da and reads pilot, plug and energy.
import asyncio
import gc
import json
import time
from micropython import const

from firmware import clock, log, pilot, store
from firmware.ocpp import metering, rpc
from firmware.ocpp.auth import is_valid
from firmware.ocpp.metering import BEGIN, PERIODIC, CLOCK, END
from firmware.ocpp.session import Offline
from firmware.ocpp.txqueue import START, STOP, METER

_TAG = "conn"
CONNECTOR = const(1)
_TX_DATA_MAX = const(10)  # samples kept for StopTransaction.transactionData (flash and RAM are small)
_SAMPLE_SLACK_S = const(8)  # a sample may come this much after its time: the meter grace (5 s) and a late poll


def same_tag(a, b):
    # IdToken is a CiString20: a card read as "abc123" is the card that started as "ABC123".
    return a is not None and b is not None and a.upper() == b.upper()


class Connector:
    def __init__(self, session, txq, evse, meter, cfg, auth, state_dir):
        self.session = session
        self.txq = txq
        self.evse = evse
        self.meter = meter
        self.cfg = cfg
        self.auth = auth
        self.smart = None  # SmartCharging, when installed: feeds evse.limit_da
        self.reservations = None  # Reservations, when installed
        self._tx_path = state_dir + "/tx.json"
        # The running transaction, persisted so a power cut can be closed at the next boot:
        # l local id, tag, parent, wh0 meterStart, t0 start epoch, wh/t last stored reading, inv (not accepted
        # by the Central System), res reservation id, td samples for transactionData.
        self.tx = store.read_json(self._tx_path, None)
        if self.tx is not None:
            self._anchor_meter(self.tx)
        self.pending_tag = None  # authorised tag waiting for the EV (ConnectionTimeOut)
        self._pending_parent = None
        self._pending_res = None
        self._pending_until = 0
        self._pending_lock = False  # the pending start asked for the lock (released if the start is dropped)
        self.finishing = False
        self.stopping = None  # the task that sends StopTransaction after the last meter reading
        self.status = None  # current OCPP status
        self._status_since = time.ticks_ms()
        self.reported = None  # last status the Central System acknowledged
        self._status_evt = asyncio.Event()
        self._next_sample_ms = 0
        self._sample_s = 0  # the MeterValueSampleInterval _next_sample_ms was planned with
        self._next_aligned = 0
        self._authorizing = False
        self.beats = 0  # turns of run(), for the watchdog
        txq.on_conf = self._on_conf

    # ---- boot ----
    def recover(self, cause="power"):
        """A transaction still open at boot was cut by a power loss (or by a watchdog restart: reason Reboot):
        close it with the meter's reading (the contactor dropped with the MCU, so the register has not moved
        since), else the last stored one. Every transaction the flash still knows of gets exactly one Stop,
        also when a state file was lost (docs/decisions.md, Flash)."""
        tx = self.tx
        txq = self.txq
        reason = "Reboot" if cause == "watchdog" else "PowerLoss"
        starts, stops = self._queued()
        started = starts | set(int(k) for k in txq.ids if k != "n")
        if tx is not None:
            self.tx = None
            lid = tx["l"]
            started.add(lid)
            if txq.damaged and lid not in starts and txq.tx_id(lid) is None:
                self._start_again(tx)
            if lid in stops:
                store.delete(self._tx_path)  # cut between queueing its Stop and deleting the file
            else:
                wh = max(tx["wh"], self.meter.energy_wh) if self.meter.ok else tx["wh"]
                log.warn(_TAG, "closing transaction %d after %s at %d Wh" % (lid, reason, wh))
                self._push_stop(tx, reason, wh, tx["t"], None)
                stops.add(lid)
        for lid in started | stops:
            txq.note_lid(lid)
            if lid not in stops:
                # Its state file was lost (corrupt flash): the Central System still gets exactly one Stop.
                store.note("transaction %d: tx.json lost, stopped with the meter's reading now" % lid)
                self._push_stop({"l": lid, "td": []}, "PowerLoss", self.meter.energy_wh, clock.now(), None)

    def _anchor_meter(self, tx):
        # The first reading after the boot is checked against the reading stored with the transaction (issue 9):
        # energy flowed at most while the contactor could be closed after it, which is until the next sample
        # was due (while the meter reads true the samples keep coming; without true readings the contactor opens
        # after the grace), and never longer than the wall clock says. A clock that runs behind the stored time
        # (no RTC after a power loss) and no sampling leave only the margin: the stored reading is then billed.
        interval = self.cfg.get("MeterValueSampleInterval")
        window = interval + _SAMPLE_SLACK_S if interval else -1
        elapsed = clock.now() - tx["t"] + 1  # + 1: both times are whole seconds
        if elapsed > 0 and (window < 0 or elapsed < window):
            window = elapsed
        self.meter.anchor(tx["wh"], self.meter.max_w * window // 3600 if window > 0 else 0)

    def _start_again(self, tx):
        # The queue and the id map both lost this transaction's StartTransaction: rebuilt from tx.json, identical
        # to the first (a Central System that booked it recognises the resend and answers the same id).
        store.note("transaction %d: StartTransaction lost, sent again from tx.json" % tx["l"])
        self.txq.push(START, tx["l"], {"connectorId": CONNECTOR, "idTag": tx["tag"], "meterStart": tx["wh0"],
                                       "timestamp": clock.iso(tx["t0"])})

    def _queued(self):
        """(local ids with a StartTransaction queued, local ids with a StopTransaction queued)."""
        starts = set()
        stops = set()
        for _, data in self.txq.journal.records():
            action, lid, _ = json.loads(data)
            if action == START:
                starts.add(lid)
            elif action == STOP:
                stops.add(lid)
        return starts, stops

    # ---- user input ----
    def present_tag(self, tag):
        if self._authorizing:
            return
        tx = self.tx
        if tx is not None:
            if same_tag(tag, tx["tag"]):
                self.stop("Local", tag)  # the same card stops without an Authorize (OCPP 1.6 §3.5)
            else:
                asyncio.create_task(self._authorize_stop(tag))
            return
        if same_tag(tag, self.pending_tag):
            self._drop_pending("cancelled by the same card")  # a second swipe cancels the pending start
            self.tick()
            return
        asyncio.create_task(self.authorize_start(tag))

    async def _authorize(self, tag):
        """idTagInfo for tag in the order list -> cache -> Central System (digest §2.10); None when it cannot
        be decided (offline and not allowed locally)."""
        cfg = self.cfg
        auth = self.auth
        local = auth.lookup(tag)
        session = self.session
        if local is not None and session.registered and session.online and cfg.get("LocalPreAuthorize") \
                and is_valid(local):
            return local
        if session.registered and session.online:
            self._authorizing = True
            try:
                conf = await session.call("Authorize", {"idTag": tag})
                info = conf.get("idTagInfo") or {"status": "Invalid"}
                auth.remember(tag, info)
                return info
            except (Offline, rpc.CallError, asyncio.TimeoutError) as e:
                log.warn(_TAG, "Authorize failed (%r): deciding offline" % (e,))
            finally:
                self._authorizing = False
        if local is not None:
            return local if cfg.get("LocalAuthorizeOffline") else None
        if cfg.get("AllowOfflineTxForUnknownId"):
            return {"status": "Accepted"}
        return None

    async def authorize_start(self, tag):
        evse = self.evse
        if not evse.operative or evse.fault:
            log.info(_TAG, "tag %s ignored: connector not available" % tag)
            return False
        info = await self._authorize(tag)
        if not info or not is_valid(info):
            log.info(_TAG, "tag %s not authorised (%s)" % (tag, info and info.get("status")))
            return False
        res = self.reservations
        res_id = None
        if res is not None:
            ok, res_id = res.admits(CONNECTOR, tag, info.get("parentIdTag"))
            if not ok:
                log.info(_TAG, "tag %s refused: connector reserved for another id" % tag)
                return False
        log.info(_TAG, "tag %s authorised" % tag)
        self.arm(tag, info.get("parentIdTag"), res_id)
        return True

    async def _authorize_stop(self, tag):
        info = await self._authorize(tag)
        tx = self.tx
        if tx and info and is_valid(info):
            parent = info.get("parentIdTag")
            if parent and parent.upper() == (tx.get("parent") or "").upper():  # same group (OCTT TC_069)
                self.stop("Local", tag)
                return
        log.info(_TAG, "tag %s may not stop this transaction" % tag)

    def arm(self, tag, parent=None, reservation_id=None):
        """An authorised start waits for the EV up to ConnectionTimeOut (RemoteStart uses this too)."""
        self.pending_tag = tag
        self._pending_parent = parent
        self._pending_res = reservation_id
        self._pending_until = time.ticks_add(time.ticks_ms(), self.cfg.get("ConnectionTimeOut") * 1000)
        self.tick()

    def _await_ev(self, now):
        """An authorised start waits for the EV, then for the lock: a socket's cable is locked, and the lock's
        feedback confirms it, before StartTransaction goes out, so no transaction opens on a connector that
        cannot hold the cable (issue 9). A fault (a lock that does not engage reports ConnectorLockFailure)
        keeps the start waiting; ConnectionTimeOut drops it."""
        evse = self.evse
        if evse.ev_connected and evse.plugged:
            if not evse.want_lock:
                evse.want_lock = True
                self._pending_lock = True
            if not evse.fault and (evse.cable_variant or evse.locked) and self.meter.fresh(now):
                self._start()  # meterStart must be a true reading
                return
        if time.ticks_diff(now, self._pending_until) >= 0:
            self._drop_pending("connector not locked" if evse.ev_connected and evse.plugged else "no EV")

    def _drop_pending(self, why):
        log.info(_TAG, "start for %s cancelled: %s" % (self.pending_tag, why))
        self.pending_tag = None
        if self._pending_lock:
            self._pending_lock = False
            self.evse.want_lock = False
        if self.smart is not None:
            self.smart.drop_pending()  # its RemoteStart profile must not govern a later session

    # ---- transactions ----
    def _start(self):
        tag = self.pending_tag
        self.pending_tag = None
        self._pending_lock = False
        lid = self.txq.new_local_id()
        now = clock.now()
        snap = metering.snapshot(self.meter, self.evse)
        wh0 = snap[0]
        tx = {"l": lid, "tag": tag, "parent": self._pending_parent, "wh0": wh0, "t0": now, "wh": wh0, "t": now,
              "inv": False, "td": []}
        self._keep_sample(tx, now, BEGIN, snap)
        payload = {"connectorId": CONNECTOR, "idTag": tag, "meterStart": wh0, "timestamp": clock.iso(now)}
        if self._pending_res is not None:
            payload["reservationId"] = self._pending_res
            self.reservations.consumed(self._pending_res)
        self.tx = tx
        self.meter.hold = True  # a register that moves from now on is bridged, not billed (firmware/meter.py)
        store.write_json(self._tx_path, tx)  # before the message: a Start must never lack its Stop
        self.txq.push(START, lid, payload)
        log.info(_TAG, "transaction %d started for %s at %d Wh" % (lid, tag, wh0))
        self.evse.want_lock = True
        self._sample_s = self.cfg.get("MeterValueSampleInterval")
        self._next_sample_ms = time.ticks_add(time.ticks_ms(), self._sample_s * 1000)
        self._apply_allow()

    def stop(self, reason, tag=None):
        """Ends the running transaction: energy stops at once, the StopTransaction follows a fresh meter
        reading taken after the contactor opened, so meterStop is the energy the EV really received."""
        tx = self.tx
        if tx is None:
            return False
        self.tx = None
        self.evse.allow = False
        self.evse.update()  # the contactor opens now, before any message goes out
        self.finishing = self._plug_present()
        if reason != "EVDisconnected" or self.cfg.get("UnlockConnectorOnEVSideDisconnect"):
            self.evse.want_lock = False
        if self.smart is not None:
            self.smart.tx_ended(CONNECTOR)
        self.stopping = asyncio.create_task(self._stop_after_reading(tx, reason, clock.now(), tag))
        self.tick()
        return True

    async def _stop_after_reading(self, tx, reason, when, tag):
        await self.meter.poll()  # a failed or implausible poll keeps the last trusted reading
        self._push_stop(tx, reason, self.meter.energy_wh, when, tag)
        if self.tx is None:
            self.meter.release()
        self.stopping = None

    def _push_stop(self, tx, reason, wh, when, tag):
        payload = {"transactionId": 0, "meterStop": wh, "timestamp": clock.iso(when), "reason": reason}
        if tag:
            payload["idTag"] = tag
        try:
            data = self._transaction_data(tx, wh, when)
            if data:
                payload["transactionData"] = data
            self.txq.push(STOP, tx["l"], payload)
        except MemoryError:
            # The Stop matters more than its sample history: send it without transactionData.
            payload.pop("transactionData", None)
            gc.collect()
            self.txq.push(STOP, tx["l"], payload)
        log.info(_TAG, "transaction %d stopped (%s) at %d Wh" % (tx["l"], reason, wh))
        store.delete(self._tx_path)  # only now: a power cut before this point ends it as PowerLoss

    def _transaction_data(self, tx, wh, when):
        sampled = self.cfg.get("StopTxnSampledData")
        aligned = self.cfg.get("StopTxnAlignedData")
        if not sampled and not aligned:
            return None
        end = metering.snapshot(self.meter, self.evse)
        end[0] = wh
        self._keep_sample(tx, when, END, end)
        out = []
        for t, ctx, snap in tx["td"]:
            keys = aligned if ctx == CLOCK else sampled
            if keys:
                out.append({"timestamp": clock.iso(t), "sampledValue": metering.values_from(snap, keys, ctx)})
        return out

    def _keep_sample(self, tx, t, ctx, snap):
        keys = self.cfg.get("StopTxnAlignedData" if ctx == CLOCK else "StopTxnSampledData")
        if not keys:
            return
        td = tx["td"]
        if len(td) >= _TX_DATA_MAX:
            td.pop(1)  # keep Transaction.Begin and the most recent samples
        td.append([t, ctx, snap])

    def _on_conf(self, action, lid, conf):
        info = (conf or {}).get("idTagInfo")
        tx = self.tx
        if action == START:
            if conf and tx and tx["l"] == lid and self.smart is not None and "transactionId" in conf:
                self.smart.bind_pending(conf["transactionId"])  # a RemoteStart TxProfile gets its id
            if info and tx and tx["l"] == lid:
                self.auth.remember(tx["tag"], info)
                tx["parent"] = info.get("parentIdTag") or tx.get("parent")
                if not is_valid(info):
                    self._deauthorized(tx, info)
        elif action == STOP and info:
            pass  # the tag of a Stop is not known here; Authorize keeps the cache fresh

    def _deauthorized(self, tx, info):
        log.warn(_TAG, "transaction %d not accepted: %s" % (tx["l"], info.get("status")))
        if self.cfg.get("StopTransactionOnInvalidId"):
            self.stop("DeAuthorized")
            return
        tx["inv"] = True  # keep the transaction, stop the energy (SuspendedEVSE), MaxEnergyOnInvalidId aside
        store.write_json(self._tx_path, tx)
        self._apply_allow()

    def _apply_allow(self):
        tx = self.tx
        allow = tx is not None
        if allow and tx["inv"]:
            allow = self.meter.energy_wh - tx["wh0"] < self.cfg.get("MaxEnergyOnInvalidId")
        if allow != self.evse.allow:
            self.evse.allow = allow
            self.evse.update()

    def transaction_id(self):
        return self.txq.tx_id(self.tx["l"]) if self.tx else None

    # ---- meter values ----
    def _sample(self, now_ms):
        interval = self.cfg.get("MeterValueSampleInterval")
        if interval != self._sample_s:
            # A changed interval applies at once, counted from the change, not after the old timer (issue 9).
            self._sample_s = interval
            self._next_sample_ms = time.ticks_add(now_ms, interval * 1000)
            return
        if not interval or time.ticks_diff(now_ms, self._next_sample_ms) < 0:
            return
        if not self.meter.fresh(now_ms):
            return  # never the last reading as a new one: the sample goes out once the meter reads true again
        self._next_sample_ms = time.ticks_add(now_ms, interval * 1000)
        self._send_values(PERIODIC, self.cfg.get("MeterValuesSampledData"), clock.now())

    def _aligned(self):
        # Clock-aligned data (OCPP 1.6 §4.7): at every multiple of ClockAlignedDataInterval after midnight UTC.
        interval = self.cfg.get("ClockAlignedDataInterval")
        if not interval or not clock.synced:
            return
        now = clock.now()
        if self._next_aligned == 0 or self._next_aligned > now + interval:
            self._next_aligned = (now // interval + 1) * interval
        if now < self._next_aligned:
            return
        slot = self._next_aligned
        self._next_aligned = (now // interval + 1) * interval
        if not self.meter.fresh(time.ticks_ms()):
            log.warn(_TAG, "clock-aligned sample skipped: no fresh meter reading")  # its time is gone
            return
        self._send_values(CLOCK, self.cfg.get("MeterValuesAlignedData"), slot)

    def _send_values(self, ctx, keys, t):
        snap = metering.snapshot(self.meter, self.evse)
        tx = self.tx
        mv = {"timestamp": clock.iso(t), "sampledValue": metering.values_from(snap, keys, ctx)}
        if tx is not None:
            self.txq.push(METER, tx["l"], {"connectorId": CONNECTOR, "transactionId": 0, "meterValue": [mv]})
            tx["wh"] = snap[0]
            tx["t"] = t
            self._keep_sample(tx, t, ctx, snap)
            store.write_json(self._tx_path, tx, True)  # hot: rotated, the previous generation kept as .bak
        elif mv["sampledValue"] and self.session.registered and self.session.online:
            # Not transaction-related: volatile, and skipped while offline.
            asyncio.create_task(self._send_volatile({"connectorId": CONNECTOR, "meterValue": [mv]}))

    async def _send_volatile(self, payload):
        try:
            await self.session.call("MeterValues", payload)
        except Exception as e:
            log.warn(_TAG, "MeterValues failed: %r" % (e,))

    async def send_triggered_values(self):
        """TriggerMessage(MeterValues): the latest values of MeterValuesSampledData, context Trigger; nothing
        while the meter has no fresh reading (a stale one would be taken as current)."""
        if not self.meter.fresh(time.ticks_ms()):
            log.warn(_TAG, "triggered MeterValues not sent: no fresh meter reading")
            return
        snap = metering.snapshot(self.meter, self.evse)
        payload = {"connectorId": CONNECTOR, "meterValue": [{"timestamp": clock.iso(), "sampledValue":
                   metering.values_from(snap, self.cfg.get("MeterValuesSampledData"), metering.TRIGGER)}]}
        tid = self.transaction_id()
        if tid is not None:
            payload["transactionId"] = tid
        await self._send_volatile(payload)

    # ---- periodic work ----
    def tick(self):
        now = time.ticks_ms()
        evse = self.evse
        if self.tx is None:
            if self.pending_tag is not None:
                self._await_ev(now)
            elif self.cfg.get("FreeVendEnabled") and evse.ev_connected and evse.plugged and not self.finishing \
                    and evse.operative and not evse.fault:
                self.arm(self.cfg.get("FreeVendIdTag"))  # free vend: every plug-in charges (digest §2.8 A3)
                return
            if self.finishing and not self._plug_present():
                self.finishing = False
                if self.tx is None and self.pending_tag is None:
                    evse.want_lock = False  # a lock kept after an EV-side disconnect ends with the cable
        elif not evse.cable_variant and not evse.plugged:
            self.stop("EVDisconnected")  # the cable left the socket
        elif evse.state == pilot.A and self.cfg.get("StopTransactionOnEVSideDisconnect"):
            # The cable left the EV (for a tethered cable, "unplugged" is exactly this). With the key false the
            # transaction stays, SuspendedEV with the contactor open, and resumes when the EV is back (TC_005_3).
            self.stop("EVDisconnected")
        elif evse.lock_failed:
            # The lock let go during the session: the connector cannot hold the cable, so the session ends
            # (issue 9); the EVSE has already opened the contactor, and reports ConnectorLockFailure.
            log.warn(_TAG, "lock lost during transaction %d" % self.tx["l"])
            self.stop("Other")
        else:
            if self.tx["inv"]:
                self._apply_allow()
            self._sample(now)
        self._aligned()
        if self.reservations is not None:
            self.reservations.check(evse.operative, evse.fault is not None)
        if self.smart is not None:
            evse.limit_da = self.smart_limit()
        self._update_status()

    def smart_limit(self):
        tx = self.tx
        volts = self.meter.voltage_v[0] if self.meter.ok and self.meter.voltage_v[0] > 50 else 230.0
        return self.smart.limit_da(CONNECTOR, clock.now(), tx and tx["t0"], self.transaction_id(), volts)

    def _plug_present(self):
        # Socket: the cable in the socket keeps the connector busy; fixed cable: the car.
        return self.evse.plugged if not self.evse.cable_variant else self.evse.ev_connected

    # ---- status (OCPP 1.6 §4.9) ----
    def compute_status(self):
        evse = self.evse
        if evse.fault:
            return "Faulted"
        if self.tx is not None:
            if not evse.allow or evse.offer_da == 0:
                return "SuspendedEVSE"
            if evse.contactor:
                return "Charging"
            return "SuspendedEV"
        if not evse.operative:
            return "Unavailable"
        if self.finishing:
            return "Finishing"
        if self.pending_tag is not None or evse.ev_connected:
            return "Preparing"
        if self.reservations is not None and self.reservations.active(CONNECTOR):
            return "Reserved"
        return "Available"

    def _update_status(self):
        status = self.compute_status()
        if status != self.status:
            log.info(_TAG, "status %s -> %s" % (self.status, status))
            self.status = status
            self._status_since = time.ticks_ms()
            self._status_evt.set()

    def error_code(self):
        return self.evse.fault or "NoError"

    def status_payload(self):
        p = {"connectorId": CONNECTOR, "errorCode": self.error_code(), "status": self.status,
             "timestamp": clock.iso()}
        evse = self.evse
        if evse.fault:
            p["info"] = evse.fault_info[:50]
            p["vendorErrorCode"] = "EVSE-%d" % evse.fault_code
        return p

    async def report_status(self):
        """Sends StatusNotification whenever the status differs from what the Central System last saw, once it
        has lasted MinimumStatusDuration; after a reconnect only the current status goes out (OCPP 1.6 §4.9)."""
        session = self.session
        while True:
            await self._status_evt.wait()
            self._status_evt.clear()
            while session.registered and session.online and self.status != self.reported:
                wait = self.cfg.get("MinimumStatusDuration") * 1000 - time.ticks_diff(time.ticks_ms(),
                                                                                      self._status_since)
                if wait > 0:
                    await asyncio.sleep_ms(wait)
                    continue
                status = self.status
                try:
                    await session.call("StatusNotification", self.status_payload())
                    self.reported = status
                except Exception as e:
                    log.warn(_TAG, "StatusNotification failed: %r" % (e,))
                    await asyncio.sleep_ms(2000)

    async def send_status_now(self):
        """TriggerMessage(StatusNotification): the current status, even if the Central System has it."""
        try:
            await self.session.call("StatusNotification", self.status_payload())
            self.reported = self.status
        except Exception as e:
            log.warn(_TAG, "StatusNotification failed: %r" % (e,))

    def kick_status(self):
        self._status_evt.set()

    def resend_status(self):
        """After BootNotification Accepted (or a trigger): the Central System must see the current status."""
        self.reported = None
        self._status_evt.set()

    async def run(self):
        while True:
            self.tick()
            self.beats += 1
            await asyncio.sleep_ms(100)
