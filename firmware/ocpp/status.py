# The status of connector 1 (OCPP 1.6 §4.9, digest §2.8) and its StatusNotifications. The connector hands in
# one view per tick (its transaction, pending start, finishing, reservation) and the EVSE model gives the rest
# (fault, operative, plug and pilot, contactor, offer), so a status always follows one consistent state: no
# Charging -> Preparing while the transaction is being stopped on an unplug (issue 9).
import asyncio
import time
from micropython import const

from firmware import clock, log

_TAG = "conn"  # the connector's log lines
_CONNECTOR = const(1)


class StatusReporter:
    def __init__(self, session, evse, cfg, ms):
        self.session = session
        self.evse = evse
        self.cfg = cfg
        self.ms = ms  # the board's clock
        self.status = None  # current OCPP status
        self.reported = None  # last status the Central System acknowledged
        self._since = ms()
        self._evt = asyncio.Event()

    def update(self, tx, finishing, pending, reserved):
        """The status for a transaction open (tx), the cable still in after one (finishing), an authorised start
        waiting (pending) and a reservation (reserved), with what the EVSE sees now."""
        evse = self.evse
        if evse.fault:
            status = "Faulted"
        elif tx:
            if not evse.allow or evse.offer_da == 0:
                status = "SuspendedEVSE"
            elif evse.contactor:
                status = "Charging"
            else:
                status = "SuspendedEV"
        elif not evse.operative:
            status = "Unavailable"
        elif finishing:
            status = "Finishing"
        elif pending or evse.ev_connected:
            status = "Preparing"
        elif reserved:
            status = "Reserved"
        else:
            status = "Available"
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
