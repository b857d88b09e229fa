# Wires the charger together and owns the asyncio tasks. The only firmware module that is handed the board.
import asyncio
import gc
import sys

from firmware import config, leds, log, store, wifi
from firmware.evse import Evse
from firmware.meter import Meter
from firmware.ocpp import core
from firmware.ocpp.auth import Auth
from firmware.ocpp.connector import Connector, CONNECTOR
from firmware.ocpp.session import Session
from firmware.ocpp.txqueue import TxQueue
from firmware.watchdog import Watchdog
from lib.modbus import RtuMaster

VERSION = "0.1.0"
VENDOR = "MicroPython-EVSE"
MODEL = "MPY-AC-1"
_TAG = "app"
_METER_POLL_MS = 1000
_GC_EVERY = 16384  # bytes allocated between automatic collections (docs/decisions.md, Memory and Call latency)
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
        session.lazy(("SetChargingProfile", "ClearChargingProfile", "GetCompositeSchedule"), self.load_smart,
                     self._smart_ahead)
        session.lazy(("ReserveNow", "CancelReservation"), self.load_reservations)
        session.lazy(("TriggerMessage",), self._load_trigger)
        session.lazy(("ClearCache", "GetLocalListVersion", "SendLocalList"), self._load_localauth)
        session.lazy(("UpdateFirmware", "GetDiagnostics"), self.load_fwmgmt)
        if store.present(state + "/profiles.json"):
            self.load_smart()
        if store.present(state + "/reservation.json"):
            self.load_reservations()
        # Core: the profile's handlers and what it asks of the charger (availability, connector 0, reset)
        self.core = core.register(session, self)
        session.on_accepted = self.core.accepted
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

    def _smart_ahead(self):
        from firmware.ocpp import schedule  # noqa: F401  the profile's schedule maths, a loop step before the rest

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
        core = self.core
        while True:
            tag = board.poll_tag()
            if tag:
                log.info(_TAG, "tag presented: %s" % tag)
                conn.present_tag(tag)
            line = board.poll_console()
            if line:
                from firmware import console  # the service console: loaded per line, it unloads itself after
                asyncio.create_task(console.run(self, line))
                del console
            core.apply_scheduled()
            status = conn.reporter.status
            if status != self._led_status:
                self._led_status = status
                leds.show(board, status)
            self._input_beats += 1
            await asyncio.sleep_ms(100)

    async def main(self):
        gc.collect()
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
    # Collect after every few KB allocated rather than when the heap is full, from the boot on: between
    # collections the allocator marches up the heap, so a long-lived object made late lands mid-heap and splits
    # the free space; frequent small collections keep new objects low and the free space in one piece. Set only
    # in App.main, the boot's garbage left the largest free block at 31 KB of 99 KB free (sim, 110wK); from here,
    # 84 KB.
    gc.threshold(_GC_EVERY)
    from firmware import provision
    provision.ensure(board)  # first boot without a configuration: the setup on the console (unloads itself)
    del provision
    asyncio.run(App(board).main())
