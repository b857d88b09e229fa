# The status of connector 1 (OCPP 1.6 §4.9, digest §2.8) and its StatusNotifications. It is computed at each
# connector tick from one view: the connector's (its transaction, pending start, finishing, reservation) and the
# EVSE model's (fault, operative, plug and pilot, contactor, offer), so a status always follows one consistent
# state: no Charging -> Preparing while the transaction is being stopped on an unplug (issue 9).
import asyncio
import time
from micropython import const

from firmware import clock, log

_TAG = "conn"  # the connector's log lines
_CONNECTOR = const(1)


class StatusReporter:
    def __init__(self, view, session, evse, cfg, ms):
        self.view = view  # the connector: .tx, .finishing, .pending_tag, .reservations
        self.session = session
        self.evse = evse
        self.cfg = cfg
        self.ms = ms  # the board's clock
        self.status = None  # current OCPP status
        self.reported = None  # last status the Central System acknowledged
        self._since = ms()
        self._evt = asyncio.Event()

    def compute(self):
        """The status the view shows now (the model asks it before the first tick)."""
        v = self.view
        evse = self.evse
        if evse.fault:
            return "Faulted"
        if v.tx is not None:
            if not evse.allow or evse.offer_da == 0:
                return "SuspendedEVSE"
            if evse.contactor:
                return "Charging"
            return "SuspendedEV"
        if not evse.operative:
            return "Unavailable"
        if v.finishing:
            return "Finishing"
        if v.pending_tag is not None or evse.ev_connected:
            return "Preparing"
        if v.reservations.active(_CONNECTOR):
            return "Reserved"
        return "Available"

    def update(self):
        status = self.compute()
        if status != self.status:
            log.info(_TAG, "status %s -> %s" % (self.status, status))
            self.status = status
            self._since = self.ms()
            self._evt.set()

    def error_code(self):
        return self.evse.fault or "NoError"

    async def report(self):
        """The task: a StatusNotification whenever the status differs from what the Central System last saw, once
        it has lasted MinimumStatusDuration; after a reconnect only the current status goes out."""
        session = self.session
        while True:
            await self._evt.wait()
            self._evt.clear()
            while session.registered and session.online and self.status != self.reported:
                wait = self.cfg.get("MinimumStatusDuration") * 1000 - time.ticks_diff(self.ms(), self._since)
                if wait > 0:
                    await asyncio.sleep_ms(wait)
                    continue
                if not await self.send_now():
                    await asyncio.sleep_ms(2000)

    async def send_now(self):
        """The current status, even if the Central System has it (TriggerMessage too) -> whether it was answered."""
        status = self.status  # a change while the call waits is reported after it
        evse = self.evse
        p = {"connectorId": _CONNECTOR, "errorCode": self.error_code(), "status": status, "timestamp": clock.iso()}
        if evse.fault:
            p["info"] = evse.fault_info[:50]
            p["vendorErrorCode"] = "EVSE-%d" % evse.fault_code
        if await self.session.notify("StatusNotification", p) is None:
            return False
        self.reported = status
        return True

    def kick(self):
        self._evt.set()

    def resend(self):
        """After BootNotification Accepted (or a trigger): the Central System must see the current status."""
        self.reported = None
        self._evt.set()
