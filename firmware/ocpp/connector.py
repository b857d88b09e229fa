# Connector 1 as OCPP sees it: authorisation and the charge-session lifecycle (tag / plug / authorise / start /
# stop), driven by a periodic tick. It reaches the hardware only through the EVSE and meter models (DESIGN.md §1):
# it sets evse.allow / want_lock / limit_da and reads pilot, plug and energy, on the board's clock. Its parts: the
# running transaction's record and file (txqueue.Transaction), MeterValues (metering.Sampler), the status and its
# StatusNotifications (status.py); the optional profiles hook in as smart / reservations (NoProfile until loaded).
import asyncio
import gc
import time
from micropython import const

from firmware import clock, log, pilot
from firmware.ocpp import metering, rpc
from firmware.ocpp.auth import is_valid
from firmware.ocpp.session import Offline
from firmware.ocpp.status import StatusReporter
from firmware.ocpp.txqueue import START, STOP, Transaction

_TAG = "conn"
CONNECTOR = const(1)


def same_tag(a, b):
    # IdToken is a CiString20: a card read as "abc123" is the card that started as "ABC123".
    return a is not None and b is not None and a.upper() == b.upper()


class NoProfile:
    """SmartCharging and Reservations as the connector calls them, doing nothing: the connector holds one of these
    until app.py loads the profile, so it calls its hooks without asking whether the profile is there."""

    def admits(self, connector_id, tag, parent):
        return True, None  # no reservation: anyone may start

    def _nothing(self, *args):
        return None  # no reservation active, no limit

    consumed = check = active = drop_pending = tx_ended = bind_pending = limit_da = _nothing


class Connector:
    def __init__(self, session, txq, evse, meter, cfg, auth, state_dir, ms):
        self.session = session
        self.txq = txq
        self.evse = evse
        self.meter = meter
        self.cfg = cfg
        self.auth = auth
        self.ms = ms  # the board's clock (ticks in ms), as the EVSE has it
        self.smart = self.reservations = NoProfile()  # app.py puts the profiles here when it loads them
        self.tx_path = state_dir + "/tx.rec"
        self.tx = None  # the running Transaction (recover() closes one a reset cut)
        self.pending_tag = None  # authorised tag waiting for the EV (ConnectionTimeOut)
        self._pending_parent = None
        self._pending_res = None
        self._pending_until = 0
        self._pending_lock = False  # the pending start asked for the lock (released if the start is dropped)
        self.finishing = False
        self.stopping = None  # the task that sends StopTransaction after the last meter reading
        self.starting = None  # the task that writes a new transaction's record and queues its StartTransaction
        self.sampler = metering.Sampler(session, txq, meter, evse, cfg, ms)
        self.reporter = StatusReporter(self, session, evse, cfg, ms)
        self._authorizing = False
        self.beats = 0  # turns of run(), for the watchdog
        txq.on_conf = self._on_conf

    # ---- boot ----
    async def recover(self, cause="power"):
        """At boot, before the tasks start: takes the meter's first reading and closes the transaction a reset left
        open (firmware/ocpp/recovery.py: boot-only code, unloaded after)."""
        from firmware.ocpp import recovery
        await recovery.run(self, cause)

    # ---- user input ----
    def present_tag(self, tag):
        if self._authorizing:
            return
        tx = self.tx
        if tx is not None:
            if same_tag(tag, tx.tag):
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
        ok, res_id = self.reservations.admits(CONNECTOR, tag, info.get("parentIdTag"))
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
            if parent and parent.upper() == (tx.parent or "").upper():  # same group (OCTT TC_069)
                self.stop("Local", tag)
                return
        log.info(_TAG, "tag %s may not stop this transaction" % tag)

    def arm(self, tag, parent=None, reservation_id=None):
        """An authorised start waits for the EV up to ConnectionTimeOut (RemoteStart uses this too)."""
        self.pending_tag = tag
        self._pending_parent = parent
        self._pending_res = reservation_id
        self._pending_until = time.ticks_add(self.ms(), self.cfg.get("ConnectionTimeOut") * 1000)
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
        self.smart.drop_pending()  # its RemoteStart profile must not govern a later session

    # ---- transactions ----
    def _start(self):
        tag = self.pending_tag
        self.pending_tag = None
        self._pending_lock = False
        snap = metering.snapshot(self.meter, self.evse)
        wh0 = snap[0]
        tx = Transaction(self.tx_path, self.txq.new_local_id(), tag, self._pending_parent, wh0, clock.now())
        self.sampler.begin(tx, snap)
        payload = {"connectorId": CONNECTOR, "idTag": tag, "meterStart": wh0, "timestamp": clock.iso(tx.t0)}
        res = self._pending_res
        if res is not None:
            payload["reservationId"] = res
            self.reservations.consumed(res)
        self.tx = tx
        self.meter.hold = True  # a register that moves from now on is bridged, not billed (firmware/meter.py)
        self.evse.want_lock = True
        self.starting = asyncio.create_task(self._write_start(tx, payload))

    async def _write_start(self, tx, payload):
        # The start's flash writes, a loop step each after the tick's id map (docs/decisions.md, Loop stalls): the
        # record, then the message and the contactor. Until then the transaction is there but shows nothing: no
        # status, no sample, no energy (tick, _apply_allow), and a stop waits for this (_stop_after_reading).
        try:
            tx.save()  # before the message: a Start must never lack its Stop
            await asyncio.sleep_ms(0)
            self.txq.push(START, tx.lid, payload)
            log.info(_TAG, "transaction %d started for %s at %d Wh" % (tx.lid, tx.tag, tx.wh0))
        except Exception as e:  # a flash that refuses the write: the contactor stays open
            log.error(_TAG, "transaction %d not opened: %r" % (tx.lid, e))
            return
        finally:
            self.starting = None
        if self.tx is tx:
            self._apply_allow()
            self.tick()  # its status and limit from the state it is in now

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
        self.smart.tx_ended(CONNECTOR)
        self.stopping = asyncio.create_task(self._stop_after_reading(tx, reason, clock.now(), tag))
        self.tick()
        return True

    async def _stop_after_reading(self, tx, reason, when, tag):
        opening = self.starting
        if opening is not None:
            await opening  # its StartTransaction is queued before this Stop
        await self.meter.poll()  # a failed or implausible poll keeps the last trusted reading
        try:
            self.push_stop(tx, reason, self.meter.energy_wh, when, tag)
        except Exception as e:
            # A flash that refuses the Stop keeps tx.rec, which the next boot closes; a new transaction would
            # write over it, so none starts until then (stopping stays set).
            log.error(_TAG, "transaction %d: its Stop could not be queued (%r); no new transaction until a reboot"
                      % (tx.lid, e))
            return
        if self.tx is None:
            self.meter.release()
        self.stopping = None

    def push_stop(self, tx, reason, wh, when, tag):
        payload = {"transactionId": 0, "meterStop": wh, "timestamp": clock.iso(when), "reason": reason}
        if tag:
            payload["idTag"] = tag
        try:
            data = self.sampler.transaction_data(tx, wh, when)
            if data:
                payload["transactionData"] = data
            self.txq.push(STOP, tx.lid, payload)
        except MemoryError:
            # The Stop matters more than its sample history: send it without transactionData.
            payload.pop("transactionData", None)
            gc.collect()
            self.txq.push(STOP, tx.lid, payload)
        log.info(_TAG, "transaction %d stopped (%s) at %d Wh" % (tx.lid, reason, wh))
        tx.forget()

    def _on_conf(self, action, lid, conf):
        # Only a StartTransaction answer matters here; the tag of a Stop is not known, and Authorize keeps the
        # cache fresh.
        tx = self.tx
        if action != START or not conf or tx is None or tx.lid != lid:
            return
        if "transactionId" in conf:
            self.smart.bind_pending(conf["transactionId"])  # a RemoteStart TxProfile gets its id
        info = conf.get("idTagInfo")
        if info:
            self.auth.remember(tx.tag, info)
            tx.parent = info.get("parentIdTag") or tx.parent
            if is_valid(info):
                return
            log.warn(_TAG, "transaction %d not accepted: %s" % (lid, info.get("status")))
            if self.cfg.get("StopTransactionOnInvalidId"):
                self.stop("DeAuthorized")
                return
            tx.invalid = True  # keep the transaction, stop the energy (SuspendedEVSE), MaxEnergyOnInvalidId aside
            tx.save()
            self._apply_allow()

    def _apply_allow(self):
        tx = self.tx
        allow = tx is not None and self.starting is None
        if allow and tx.invalid:
            allow = self.meter.energy_wh - tx.wh0 < self.cfg.get("MaxEnergyOnInvalidId")
        if allow != self.evse.allow:
            self.evse.allow = allow
            self.evse.update()

    def transaction_id(self):
        return self.txq.tx_id(self.tx.lid) if self.tx else None

    # ---- periodic work ----
    def tick(self):
        now = self.ms()
        evse = self.evse
        tx = self.tx
        if tx is None:
            if self.pending_tag is not None and self.stopping is None:
                # not before the last transaction's Stop is queued: its file goes then, and its Stop goes first
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
            log.warn(_TAG, "lock lost during transaction %d" % tx.lid)
            self.stop("Other")
        elif self.starting is None:  # no sample before the record it is appended to is written
            if tx.invalid:
                self._apply_allow()
            self.sampler.periodic(tx, now)
        if self.starting is not None:
            return  # status, samples and limit wait for the start's writes; _write_start ticks at their end
        tx = self.tx
        self.sampler.aligned(tx)
        self.reservations.check(evse.operative, evse.fault is not None)
        volts = self.meter.voltage_v[0] if self.meter.ok and self.meter.voltage_v[0] > 50 else 230.0
        evse.limit_da = self.smart.limit_da(CONNECTOR, clock.now(), tx and tx.t0, self.transaction_id(), volts)
        self.reporter.update()  # from this tick's view

    def _plug_present(self):
        # Socket: the cable in the socket keeps the connector busy; fixed cable: the car.
        return self.evse.plugged if not self.evse.cable_variant else self.evse.ev_connected

    async def run(self):
        while True:
            self.tick()
            self.beats += 1
            await asyncio.sleep_ms(100)
