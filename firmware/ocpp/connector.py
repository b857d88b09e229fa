# Connector 1 as OCPP sees it: the charge-session lifecycle (tag / plug / start / meter / stop) and the
# status machine of OCPP 1.6 §4.9 (digest §2.8). It reaches the hardware only through the EVSE and meter
# models (DESIGN.md §1): it sets evse.allow / want_lock and reads pilot, plug and energy.
import asyncio
import time

from firmware import clock, log, pilot, store
from firmware.ocpp import metering, rpc
from firmware.ocpp.session import Offline
from firmware.ocpp.txqueue import START, STOP, METER

_TAG = "conn"
CONNECTOR = 1


class Connector:
    def __init__(self, session, txq, evse, meter, cfg, state_dir):
        self.session = session
        self.txq = txq
        self.evse = evse
        self.meter = meter
        self.cfg = cfg
        self._tx_path = state_dir + "/tx.json"
        self.tx = store.read_json(self._tx_path, None)  # the running transaction, persisted for power loss
        self.pending_tag = None  # authorised tag waiting for the EV (ConnectionTimeOut)
        self._pending_parent = None
        self._pending_until = 0
        self.finishing = False
        self.stopping = None  # the task that sends StopTransaction after the last meter reading
        self.status = None  # current OCPP status
        self.reported = None  # last status the Central System acknowledged
        self._status_evt = asyncio.Event()
        self._next_sample_ms = 0
        self._authorizing = False
        txq.on_start_conf = self._on_start_conf
        if self.tx:
            self._recover_after_power_loss()

    # ---- boot ----
    def _recover_after_power_loss(self):
        # A transaction open at boot was cut by a power loss: close it with the last stored reading
        # (OCPP 1.6 §4.8 / digest §2.2 PowerLoss).
        tx = self.tx
        wh = max(tx.get("wh", tx["wh0"]), tx["wh0"])
        log.warn(_TAG, "closing transaction %d after power loss at %d Wh" % (tx["l"], wh))
        self.tx = None
        self._push_stop(tx, "PowerLoss", wh, tx.get("t", clock.now()), None)

    # ---- user input ----
    def present_tag(self, tag):
        if self._authorizing:
            return
        tx = self.tx
        if tx is not None:
            if tag == tx["tag"]:
                self.stop("Local", tag)  # the same card stops without an Authorize (OCPP 1.6 §3.5)
            else:
                asyncio.create_task(self._authorize_stop(tag))
            return
        if self.pending_tag == tag:
            self.pending_tag = None  # a second swipe cancels the pending start
            self.wake()
            return
        asyncio.create_task(self._authorize_start(tag))

    async def _authorize(self, tag):
        """idTagInfo for tag, or None when it could not be checked."""
        self._authorizing = True
        try:
            conf = await self.session.call("Authorize", {"idTag": tag})
            return conf.get("idTagInfo") or {}
        except Offline:
            if self.cfg.get("AllowOfflineTxForUnknownId"):
                return {"status": "Accepted"}
            return None
        except (rpc.CallError, asyncio.TimeoutError) as e:
            log.warn(_TAG, "Authorize failed: %r" % (e,))
            return None
        finally:
            self._authorizing = False

    async def _authorize_start(self, tag):
        if not self.evse.operative or self.evse.fault:
            log.info(_TAG, "tag %s ignored: connector not available" % tag)
            return
        info = await self._authorize(tag)
        status = info.get("status") if info else None
        if status != "Accepted":
            log.info(_TAG, "tag %s not authorised (%s)" % (tag, status))
            return
        log.info(_TAG, "tag %s authorised" % tag)
        self.pending_tag = tag
        self._pending_parent = info.get("parentIdTag")
        self._pending_until = time.ticks_add(time.ticks_ms(), self.cfg.get("ConnectionTimeOut") * 1000)
        self.wake()

    async def _authorize_stop(self, tag):
        info = await self._authorize(tag)
        tx = self.tx
        if tx and info and info.get("status") == "Accepted":
            parent = info.get("parentIdTag")
            if parent and parent == tx.get("parent"):
                self.stop("Local", tag)
                return
        log.info(_TAG, "tag %s may not stop this transaction" % tag)

    def remote_start(self, tag):
        self.pending_tag = tag
        self._pending_parent = None
        self._pending_until = time.ticks_add(time.ticks_ms(), self.cfg.get("ConnectionTimeOut") * 1000)
        self.wake()

    # ---- transactions ----
    def _start(self):
        tag = self.pending_tag
        self.pending_tag = None
        lid = self.txq.new_local_id()
        wh0 = self.meter.energy_wh
        now = clock.now()
        self.tx = {"l": lid, "tag": tag, "parent": self._pending_parent, "wh0": wh0, "wh": wh0, "t": now}
        store.write_json(self._tx_path, self.tx)
        self.txq.push(START, lid, {"connectorId": CONNECTOR, "idTag": tag, "meterStart": wh0,
                                   "timestamp": clock.iso(now)})
        log.info(_TAG, "transaction %d started for %s at %d Wh" % (lid, tag, wh0))
        self.evse.allow = True
        self.evse.want_lock = True
        self._next_sample_ms = time.ticks_add(time.ticks_ms(), self.cfg.get("MeterValueSampleInterval") * 1000)
        self.evse.update()

    def stop(self, reason, tag=None):
        """Ends the running transaction: energy stops at once, the StopTransaction follows a fresh meter
        reading taken after the contactor opened, so meterStop is the energy the EV really received."""
        tx = self.tx
        if tx is None:
            return False
        self.tx = None
        self.evse.allow = False
        self.evse.update()  # the contactor opens now, before any message goes out
        self.finishing = self.evse.ev_connected
        if reason != "EVDisconnected" or self.cfg.get("UnlockConnectorOnEVSideDisconnect"):
            self.evse.want_lock = False
        self.stopping = asyncio.create_task(self._stop_after_reading(tx, reason, clock.now(), tag))
        self.wake()
        return True

    async def _stop_after_reading(self, tx, reason, when, tag):
        await self.meter.poll()  # a failed poll keeps the last good reading
        self._push_stop(tx, reason, self.meter.energy_wh, when, tag)
        self.stopping = None

    def _push_stop(self, tx, reason, wh, when, tag):
        payload = {"transactionId": 0, "meterStop": wh, "timestamp": clock.iso(when), "reason": reason}
        if tag:
            payload["idTag"] = tag
        self.txq.push(STOP, tx["l"], payload)
        log.info(_TAG, "transaction %d stopped (%s) at %d Wh" % (tx["l"], reason, wh))
        store.remove(self._tx_path)  # only now: a power cut before this point ends it as PowerLoss

    def _on_start_conf(self, lid, conf):
        info = (conf or {}).get("idTagInfo") or {}
        tx = self.tx
        if tx is None or tx["l"] != lid or info.get("status", "Accepted") == "Accepted":
            return
        log.warn(_TAG, "transaction %d not accepted: %s" % (lid, info.get("status")))
        if self.cfg.get("StopTransactionOnInvalidId"):
            self.stop("DeAuthorized")
        else:
            self.evse.allow = False  # keep the transaction, stop the energy (SuspendedEVSE)
            self.evse.update()

    def transaction_id(self):
        return self.txq.tx_id(self.tx["l"]) if self.tx else None

    # ---- periodic work ----
    def _sample(self, now):
        interval = self.cfg.get("MeterValueSampleInterval")
        if not interval or time.ticks_diff(now, self._next_sample_ms) < 0:
            return
        self._next_sample_ms = time.ticks_add(now, interval * 1000)
        tx = self.tx
        mv = metering.meter_value(self.meter, self.evse, self.cfg.get("MeterValuesSampledData"), "Sample.Periodic")
        self.txq.push(METER, tx["l"], {"connectorId": CONNECTOR, "transactionId": 0, "meterValue": [mv]})
        tx["wh"] = self.meter.energy_wh
        tx["t"] = clock.now()
        store.write_json(self._tx_path, tx)

    def tick(self):
        now = time.ticks_ms()
        evse = self.evse
        if self.tx is None:
            if self.pending_tag is not None:
                if evse.ev_connected and evse.plugged:
                    self._start()
                elif time.ticks_diff(now, self._pending_until) >= 0:
                    log.info(_TAG, "no EV within ConnectionTimeOut, start cancelled")
                    self.pending_tag = None
            if self.finishing and not self._plug_present():
                self.finishing = False
        else:
            if not self._plug_present():
                self.stop("EVDisconnected")
            elif evse.state == pilot.A and self.cfg.get("StopTransactionOnEVSideDisconnect"):
                self.stop("EVDisconnected")
            else:
                self._sample(now)
        self._update_status()

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
        return "Available"

    def _update_status(self):
        status = self.compute_status()
        if status != self.status:
            log.info(_TAG, "status %s -> %s" % (self.status, status))
            self.status = status
            self._status_evt.set()

    def wake(self):
        self.tick()

    def error_code(self):
        return self.evse.fault or "NoError"

    async def report_status(self):
        """Sends StatusNotification whenever the status differs from what the Central System last saw;
        after a reconnect this reports only the current status (OCPP 1.6 §4.9)."""
        while True:
            await self._status_evt.wait()
            self._status_evt.clear()
            while self.session.registered and self.session.online and self.status != self.reported:
                status = self.status
                try:
                    await self.session.call("StatusNotification", {
                        "connectorId": CONNECTOR, "errorCode": self.error_code(), "status": status,
                        "timestamp": clock.iso()})
                    self.reported = status
                except Exception as e:
                    log.warn(_TAG, "StatusNotification failed: %r" % (e,))
                    await asyncio.sleep_ms(2000)

    def kick_status(self):
        self._status_evt.set()

    def resend_status(self):
        """After BootNotification Accepted: the Central System must see the current status again."""
        self.reported = None
        self._status_evt.set()

    async def run(self):
        while True:
            self.tick()
            await asyncio.sleep_ms(100)
