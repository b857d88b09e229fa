"""A virtual energy meter: a real Modbus RTU slave (pymodbus) behind a pseudo-terminal.

The MCU (MicroPython unix port) opens `mcu_path` like a serial port; pymodbus opens the slave end of a
second pty; the two pty masters are bridged here, which is where faults are injected. Registers are
encoded per model exactly as the device does (digest §6.2): Eastron SDM input registers as float32 ABCD
in V/A/W/kWh, ABB B23 holding registers as scaled big-endian integers. Undefined addresses answer with
exception 02, as a strict device does, so a read that strays over a gap in the map is caught.

    vm = VirtualMeter("SDM630")
    path = await vm.start()          # inside a running asyncio loop
    vm.set_load((230, 230, 230), (16, 16, 16)); vm.advance(60)
    vm.shift_energy(-500)            # a glitch: the register jumps (tests of the firmware's plausibility check)
    ...; await vm.stop()
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import struct
import tty

from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

MODELS = ("SDM630", "SDM120", "SDM72", "ABB_B23")

# Register layout per model: (function code, phases, {name: address}, defined register ranges).
_SDM3_ADDR = {"v": (0x00, 0x02, 0x04), "i": (0x06, 0x08, 0x0A), "p": (0x0C, 0x0E, 0x10),
              "ptot": 0x34, "f": 0x46, "imp": 0x48, "exp": 0x4A, "tot": 0x156}
_SDM3_RANGES = ((0x00, 0x12), (0x34, 2), (0x46, 6), (0x156, 2))
_SDM1_ADDR = {"v": (0x00,), "i": (0x06,), "p": (0x0C,), "ptot": None, "f": 0x46, "imp": 0x48,
              "exp": 0x4A, "tot": 0x156}
_SDM1_RANGES = ((0x00, 2), (0x06, 2), (0x0C, 2), (0x46, 6), (0x156, 2))
_ABB_RANGES = ((0x5000, 8), (0x5B00, 0x1C), (0x5B2C, 1))
_SPEC = {
    "SDM630": (4, 3, _SDM3_ADDR, _SDM3_RANGES),
    "SDM72": (4, 3, _SDM3_ADDR, _SDM3_RANGES),
    "SDM120": (4, 1, _SDM1_ADDR, _SDM1_RANGES),
    "ABB_B23": (3, 3, None, _ABB_RANGES),
}


def _words(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]


class VirtualMeter:
    def __init__(self, model: str = "SDM630", unit: int = 1, energy_wh: float = 1234567.0,
                 baud: int = 9600):
        if model not in _SPEC:
            raise ValueError(f"unknown model {model!r}, expected one of {', '.join(MODELS)}")
        self.model = model
        self.unit = unit
        self.baud = baud
        self._fc, self._phases, self._addr, self._ranges = _SPEC[model]
        self._energy_wh = float(energy_wh)
        self.voltage_v = [230.0] * 3
        self.current_a = [0.0] * 3
        self.frequency_hz = 50.0
        self.fault = False
        self.rx_bytes = 0  # bytes the MCU sent (dropped or not): counts requests incl. retries
        self.mcu_path: str | None = None
        self._fds: list[int] = []
        self._server: ModbusSerialServer | None = None
        self._task: asyncio.Task | None = None
        self._image: dict[int, int] = {}
        self._update()

    # -- the electrical side -------------------------------------------------------------------------
    @property
    def energy_wh(self) -> float:
        return self._energy_wh

    @property
    def power_w(self) -> float:
        return sum(self.voltage_v[k] * self.current_a[k] for k in range(self._phases))

    def set_load(self, voltage_v, current_a) -> None:
        self.voltage_v = [float(x) for x in voltage_v]
        self.current_a = [float(x) for x in current_a]
        self._update()

    def advance(self, dt_s: float) -> None:
        # Import register only counts imported energy, so it never goes down.
        self._energy_wh += max(self.power_w, 0.0) * dt_s / 3600.0
        self._update()

    def shift_energy(self, wh: float) -> float:
        """Moves the energy register by wh (negative allowed) without any energy flowing: a glitch, a meter
        swapped or reset. Returns the new register value in Wh."""
        return self.set_energy(self._energy_wh + wh)

    def set_energy(self, wh: float) -> float:
        if wh < 0:
            raise ValueError("the energy register cannot go below 0 Wh (asked %s)" % wh)
        self._energy_wh = float(wh)
        self._update()
        return self._energy_wh

    def reported_energy_wh(self) -> float:
        """The energy the registers hold right now, in Wh (after the device's own resolution)."""
        if self._fc == 3:
            return (int(self._energy_wh) // 10) * 10.0
        kwh = struct.unpack(">f", struct.pack(">f", self._energy_wh / 1000.0))[0]
        return kwh * 1000.0

    # -- register encoding ---------------------------------------------------------------------------
    def _update(self) -> None:
        img: dict[int, int] = {}

        def put(addr, raw):
            for k, w in enumerate(_words(raw)):
                img[addr + k] = w

        if self._fc == 4:
            self._encode_sdm(put)
        else:
            self._encode_abb(put)
        self._image = img

    def _encode_sdm(self, put) -> None:
        a = self._addr
        f = lambda x: struct.pack(">f", x)  # noqa: E731
        for k in range(self._phases):
            put(a["v"][k], f(self.voltage_v[k]))
            put(a["i"][k], f(self.current_a[k]))
            put(a["p"][k], f(self.voltage_v[k] * self.current_a[k]))
        if a["ptot"] is not None:
            put(a["ptot"], f(self.power_w))
        put(a["f"], f(self.frequency_hz))
        put(a["imp"], f(self._energy_wh / 1000.0))
        put(a["exp"], f(0.0))
        put(a["tot"], f(self._energy_wh / 1000.0))

    def _encode_abb(self, put) -> None:
        v, i = self.voltage_v, self.current_a
        for k in range(3):
            put(0x5B00 + 2 * k, struct.pack(">I", round(v[k] * 10)))
            # line-to-line voltage, assuming 120 degrees between phases
            vll = math.sqrt(v[k] ** 2 + v[(k + 1) % 3] ** 2 + v[k] * v[(k + 1) % 3])
            put(0x5B06 + 2 * k, struct.pack(">I", round(vll * 10)))
            put(0x5B0C + 2 * k, struct.pack(">I", round(i[k] * 100)))
            put(0x5B16 + 2 * k, struct.pack(">i", round(v[k] * i[k] * 100)))
        put(0x5B12, struct.pack(">I", 0))  # neutral current: not modelled
        put(0x5B14, struct.pack(">i", round(self.power_w * 100)))
        put(0x5B2C, struct.pack(">H", round(self.frequency_hz * 100)))
        put(0x5000, struct.pack(">Q", int(self._energy_wh) // 10))
        put(0x5004, struct.pack(">Q", 0))

    async def _action(self, fc, start, _address, _count, registers, _values):
        if fc == self._fc:
            for addr, w in self._image.items():
                off = addr - start
                if 0 <= off < len(registers):
                    registers[off] = w
        return None

    def _device(self) -> SimDevice:
        regs = [SimData(a, count=n, values=0, datatype=DataType.REGISTERS) for a, n in self._ranges]
        # The other register table gets one register holding the slave address (Eastron keeps its
        # settings in holding registers); everything else there is undefined.
        other = [SimData(0x14, values=self.unit, datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        hr, ir = (regs, other) if self._fc == 3 else (other, regs)
        return SimDevice(self.unit, simdata=(bits, list(bits), hr, ir), action=self._action)

    # -- the wire ------------------------------------------------------------------------------------
    async def start(self) -> str:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        ma, sa = os.openpty()
        mb, sb = os.openpty()
        # Raw on both slave ends: an echoing line discipline would bounce every frame back. The slave fds
        # stay open so the settings (and the pty) outlive the openers.
        tty.setraw(sa)
        tty.setraw(sb)
        self._fds = [ma, sa, mb, sb]
        self._ma, self._mb = ma, mb
        self.mcu_path = os.ttyname(sa)
        loop = asyncio.get_running_loop()
        loop.add_reader(ma, self._from_mcu)
        loop.add_reader(mb, self._from_meter)
        self._server = ModbusSerialServer(self._device(), framer=FramerType.RTU, port=os.ttyname(sb),
                                          baudrate=self.baud, reconnect_delay=0,
                                          ignore_missing_devices=True)
        await self._server.serve_forever(background=True)
        return self.mcu_path

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        for fd in self._fds[::2]:
            loop.remove_reader(fd)
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def set_fault(self, on: bool) -> None:
        """A dead meter or a cut bus: every byte either way is dropped."""
        self.fault = bool(on)

    def inject_garbage(self, n: int) -> None:
        """Line noise towards the MCU."""
        os.write(self._ma, os.urandom(n))

    def _from_mcu(self) -> None:
        data = self._read(self._ma)
        self.rx_bytes += len(data)
        if data and not self.fault:
            os.write(self._mb, data)

    def _from_meter(self) -> None:
        data = self._read(self._mb)
        # A real slave keeps quiet when another address is polled; pymodbus' SimCore answers those with
        # exception 04 instead (it writes each reply in one piece, so the first byte is the address).
        if data and not self.fault and data[0] == self.unit:
            os.write(self._ma, data)

    @staticmethod
    def _read(fd: int) -> bytes:
        try:
            return os.read(fd, 1024)
        except OSError:  # EIO while nobody holds the other end open
            return b""
