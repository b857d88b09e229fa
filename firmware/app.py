# Wires the charger together and owns the asyncio tasks. The only firmware module that is handed the board.
import asyncio
import gc
import micropython
import sys

from firmware import config, leds, log, store, wifi
from firmware.evse import Evse
from firmware.meter import Meter
from firmware.ocpp import core
from firmware.ocpp.auth import Auth
from firmware.ocpp.connector import Connector, CONNECTOR
from firmware.ocpp.core import VENDOR_ID
from firmware.ocpp.session import Session
from firmware.ocpp.txqueue import TxQueue
from firmware.watchdog import Watchdog
from lib.modbus import RtuMaster

VERSION = "0.1.0"
VENDOR = "MicroPython-EVSE"
MODEL = "MPY-AC-1"
_TAG = "app"
_METER_POLL_MS = 1000
_GC_EVERY = 4096  # bytes allocated between automatic collections
# Factory serial settings per meter model (digest §6.2): baud, parity (None/0 even/1 odd), stop bits.
_METER_SERIAL = {"SDM630": (9600, None, 1), "SDM120": (2400, None, 1), "SDM72": (9600, None, 1),
                 "ABB_B23": (9600, 0, 1)}


class App:
    def __init__(self, board):
        self.board = board
        state = board.state_dir
        self.cfg = cfg = config.Config(state)
        self.wifi = wifi.start(board, cfg)  # the network link, joined and kept (firmware/wifi.py): .state .ip .error
        model = cfg.get("MeterModel")
        baud, parity, stop = _METER_SERIAL[model]
        self.meter = Meter(RtuMaster(board.open_uart(baud, parity, stop), baud), model, cfg.get("MeterUnit"),
                           cfg.get("MaxCurrent"))
        self.evse = Evse(board, self.meter, cfg)
        self._avail_path = state + "/availability.json"
        avail = store.read_json(self._avail_path, None) or {}
        self.evse.operative = avail.get("operative", True)
        self.session = Session(cfg, self._boot_fields())
        self.txq = TxQueue(self.session, cfg, state)
        self.auth = Auth(cfg, state)
        self.connector = Connector(self.session, self.txq, self.evse, self.meter, cfg, self.auth, state,
                                   board.ticks_ms)
        # FirmwareManagement (firmware/ocpp/fwmgmt.py): the engines while they run, the log ring once started
        self.updater = self.diag = self.ring = None
        # Optional profiles load on first use (or at boot when flash holds their data): their code is a large
        # part of the heap, and many installations never use them (DESIGN.md §5).
        self.smart = None
        self.reservations = None
        session = self.session
        session.lazy(("SetChargingProfile", "ClearChargingProfile", "GetCompositeSchedule"), self.load_smart)
        session.lazy(("ReserveNow", "CancelReservation"), self.load_reservations)
        session.lazy(("TriggerMessage",), self._load_trigger)
        session.lazy(("ClearCache", "GetLocalListVersion", "SendLocalList"), self._load_localauth)
        session.lazy(("UpdateFirmware", "GetDiagnostics"), self.load_fwmgmt)
        if store.present(state + "/profiles.json"):
            self.load_smart()
        if store.present(state + "/reservation.json"):
            self.load_reservations()
        self.scheduled_operative = None  # ChangeAvailability waiting for the transaction to end
        core.register(session, self)
        self.session.on_accepted = self._on_accepted
        self._booted = False
        self._status0_again = False   # kick_status0: connector 0's status changed since the task last sent
        self._status0_running = False
        self._reporting = False
        self.watchdog = Watchdog(board)
        self._meter_beats = 0
        self._input_beats = 0
        self._led_status = None

    def load_smart(self):
        if self.smart is None:
            from firmware.ocpp import smartcharging
            self.smart = smartcharging.SmartCharging(self.cfg, self.board.state_dir)
            self.connector.smart = self.smart
            self.smart.on_change = self.connector.tick  # a new limit reaches the PWM at once
            smartcharging.register(self.session, self)
        return self.smart

    def load_reservations(self):
        if self.reservations is None:
            from firmware.ocpp import reservation
            self.reservations = reservation.Reservations(self.cfg, self.board.state_dir, self.connector)
            self.connector.reservations = self.reservations
            reservation.register(self.session, self)

    def _load_trigger(self):
        from firmware.ocpp import trigger
        trigger.register(self.session, self)

    def _load_localauth(self):
        from firmware.ocpp import localauth
        localauth.register(self.session, self)

    def load_fwmgmt(self):
        from firmware.ocpp import fwmgmt
        fwmgmt.register(self.session, self)
        return fwmgmt

    @property
    def firmware_status(self):
        """FirmwareStatusNotification state for TriggerMessage and the front ends."""
        return self.updater.status if self.updater is not None else "Idle"

    def tx_info(self):
        """(transactionId or None, start epoch or None, volts): what SmartCharging needs of the transaction."""
        conn = self.connector
        tx = conn.tx
        return conn.transaction_id(), tx and tx.t0, self.meter.voltage_v[0]

    def _boot_fields(self):
        ident = self.cfg.get("ChargeBoxId")
        return {"chargePointVendor": VENDOR, "chargePointModel": MODEL, "chargePointSerialNumber": ident[:25],
                "firmwareVersion": VERSION, "meterType": self.meter.model_name()[:25]}

    def _on_accepted(self):
        # After a boot the Central System must see every connector's status; after a mere reconnect only a
        # status that changed while offline (OCPP 1.6 §4.9), which the status reporter notices by itself.
        if not self._booted:
            self._booted = True
            self.kick_status0()
            self.connector.reporter.resend()
        else:
            self.connector.reporter.kick()
        self.txq.kick()
        for engine in (self.updater, self.diag):  # a trial is confirmed, owed statuses go
            if engine is not None:
                engine.accepted()
        if store.notes and not self._reporting:
            self._reporting = True
            asyncio.create_task(self._report_flash())

    async def _report_flash(self):
        # What the store had to recover or lost at boot, told to the Central System as vendor DataTransfers
        # (docs/decisions.md, Flash); a note stays until one is delivered, for the next connection.
        notes = store.notes
        try:
            while notes:
                if await self.session.notify("DataTransfer", {"vendorId": VENDOR_ID, "messageId": "FlashRecovery",
                                                              "data": notes[0]}) is None:
                    break
                notes.pop(0)
        finally:
            self._reporting = False

    def kick_status0(self):
        # One task at most: a Central System toggling availability back to back must not queue a
        # StatusNotification task per toggle (a TriggerMessage flood of that kind exhausted the heap). A change
        # while the task waits for its turn to send is sent in one more round.
        self._status0_again = True
        if not self._status0_running:
            self._status0_running = True
            asyncio.create_task(self._status0_rounds())

    async def _status0_rounds(self):
        try:
            while self._status0_again:
                self._status0_again = False
                await self.status_connector0()
        finally:
            self._status0_running = False

    async def status_connector0(self):
        from firmware import clock
        status = "Available" if self.evse.operative else "Unavailable"
        await self.session.notify("StatusNotification", {"connectorId": 0, "errorCode": "NoError",
                                                         "status": status, "timestamp": clock.iso()})

    # ---- actions requested by the Central System ----
    def set_availability(self, operative):
        if self.connector.tx is not None and not operative:
            self.scheduled_operative = operative
            return "Scheduled"
        self._apply_availability(operative)
        return "Accepted"

    def _apply_availability(self, operative):
        self.scheduled_operative = None
        if self.evse.operative != operative:
            self.evse.operative = operative
            store.write_json(self._avail_path, {"operative": operative})
            self.kick_status0()
        self.connector.tick()

    async def reboot(self, kind):
        reason = "HardReset" if kind == "Hard" else "SoftReset"
        self.connector.stop(reason)
        # Soft: give the queue a chance to deliver the StopTransaction; Hard: it goes out after the boot.
        for _ in range(100 if kind == "Soft" else 10):
            if self.connector.stopping is None and not len(self.txq):
                break
            await asyncio.sleep_ms(100)
        log.info(_TAG, "%s reset" % kind)
        await asyncio.sleep_ms(200)  # let the Reset answer leave before the link goes down
        await self.session_restart()
        if self.ring:
            self.ring.flush()
        self.board.reset()

    async def session_restart(self):
        ws = self.session.ws
        if ws is not None:
            await ws.close()

    # ---- tasks ----
    async def _poll_meter(self):
        meter = self.meter
        said = None
        while True:
            await meter.poll()
            trouble = meter.trouble
            if trouble is not said:
                if trouble:
                    log.warn(_TAG, "meter: %s (%s)" % (trouble, meter.last_error))
                else:
                    log.info(_TAG, "meter back at %d Wh" % meter.energy_wh)
                said = trouble
            self._meter_beats += 1
            await asyncio.sleep_ms(_METER_POLL_MS)

    async def _poll_inputs(self):
        board = self.board
        conn = self.connector
        while True:
            tag = board.poll_tag()
            if tag:
                log.info(_TAG, "tag presented: %s" % tag)
                conn.present_tag(tag)
            line = board.poll_console()
            if line:
                asyncio.create_task(self._console(line))
            if self.scheduled_operative is not None and conn.tx is None:
                self._apply_availability(self.scheduled_operative)
            status = conn.reporter.status
            if status != self._led_status:
                self._led_status = status
                leds.show(board, status)
            self._input_beats += 1
            await asyncio.sleep_ms(100)

    async def _console(self, line):
        """Service console: `datatransfer VENDOR [MSGID [DATA]]` sends a DataTransfer to the Central System
        (OCPP 1.6 §4.3, OCTT TC_064); `heap` prints the live heap."""
        words = line.split(None, 3)
        if words[0] == "datatransfer" and len(words) >= 2:
            p = {"vendorId": words[1]}
            if len(words) > 2:
                p["messageId"] = words[2]
            if len(words) > 3:
                p["data"] = words[3]
            answer = await self.session.notify("DataTransfer", p)
            if answer is not None:
                log.info(_TAG, "DataTransfer answer: %s" % answer)
        elif words[0] == "heap":
            gc.collect()
            log.info(_TAG, "heap %d used, %d free" % (gc.mem_alloc(), gc.mem_free()))
            micropython.mem_info()  # the largest free block: fragmentation is what makes allocations fail
        else:
            log.warn(_TAG, "console: unknown command %r" % line)

    async def main(self):
        gc.collect()
        # Collect after every few KB allocated rather than when the heap is full: between collections the
        # allocator marches up the heap, so a long-lived object made late lands mid-heap and splits the free
        # space; frequent small collections keep new objects low and the free space in one piece.
        gc.threshold(_GC_EVERY)
        log.info(_TAG, "firmware %s starting, heap %d used, %d free" % (VERSION, gc.mem_alloc(), gc.mem_free()))
        await self.connector.recover(self.board.reset_cause())  # takes the meter's first reading too
        # The tasks that loop on a short period are watched; the session and the queue wait on the network for
        # as long as its timeouts say, so their progress proves nothing about a hang.
        wd = self.watchdog
        wd.watch("evse", lambda: self.evse.beats, 2000)
        wd.watch("connector", lambda: self.connector.beats, 2000)
        wd.watch("inputs", lambda: self._input_beats, 2000)
        wd.watch("meter", lambda: self._meter_beats, 10000)  # a dead bus costs its read timeouts per poll
        if self.cfg.get("WebEnabled") or self.cfg.get("MqttUrl"):
            from firmware import chargepoint  # the front ends and their charger model: only when configured
            chargepoint.start(self)
        state = self.board.state_dir
        if store.exists(store.join(state, "slots")) or store.exists(store.join(state, "diag")) \
                or store.present(store.join(state, "update.json")):
            from firmware.ota import boot  # the running slot's version, an update's work, the log ring (docs/ota.md)
            boot.start(self)
        for fn in (self.evse.run, self._poll_meter, self.session.run, self.txq.run, self.connector.run,
                   self.connector.reporter.report, self._poll_inputs, wd.run):
            asyncio.create_task(_supervised(fn))
        while True:
            await asyncio.sleep(60)
            if self.ring:
                self.ring.flush()
            gc.collect()
            log.debug(_TAG, "heap %d used, %d free" % (gc.mem_alloc(), gc.mem_free()))


async def _supervised(fn):
    # A task that dies (a MemoryError on a fragmented heap, a bug) would silently stop its job for good:
    # log it and start it again, as a watchdog would restart the whole board.
    while True:
        try:
            await fn()
        except Exception as e:
            log.error(_TAG, "task %s failed: %r" % (fn.__name__, e))
            sys.print_exception(e)
            gc.collect()
            await asyncio.sleep_ms(1000)


def run(board):
    from firmware import provision
    provision.ensure(board)  # first boot without a configuration: the setup on the console (unloads itself)
    del provision
    asyncio.run(App(board).main())
