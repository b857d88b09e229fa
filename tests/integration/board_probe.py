# A stand-in MCU program for tests of tools/sim.py and hal/unix.py (run by the sim via SIM_MCU_SCRIPT).
# It plays a crude EVSE through hal.unix.Board and reports what it sees on stdout as "PROBE ..." lines:
#   plugged (CP 3..9 V) with a cable (PP) -> PWM 16 A (267 permille), lock, green LED; CP 12 V -> PWM off, unlock
#   CP 3..6 V while offering              -> contactor closed (main thread)
#   anything else                         -> contactor opened by the start_watch thread (10 ms)
# It also prints the load-management input ("PROBE LIMIT <da|None>" on a change) and "PROBE BLOCK <ms>"
# when board.take_block_ms() hands out a loop stall (the sim's "mcu" command), which it then performs.
# Tags are commands: RESET (board.reset()), THREADRESET (reset() from a thread), EXIT<n> (sys.exit(n)),
# BUSY<ms> (spin the main thread without yielding), METER (one Modbus read via board.open_uart), ENERGY (reads the
# SDM energy register: "PROBE ENERGY <Wh>"), others are echoed.
import sys
import time
import json
import _thread
import hal.board
from hal.unix import Board

_PWM_16A = 267

board = Board()
missing = [m for m in hal.board.METHODS if not hasattr(board, m)]
print("PROBE START state=%s methods=%s" % (board.state_dir, "ok" if not missing else ",".join(missing)))


def ev_ready(hi, lo):
    return 1500 <= hi < 7500 and lo < -10000


def watch():
    hi, lo = board.read_cp()
    if not ev_ready(hi, lo) or board.rcd_tripped():
        board.set_contactor(False)


_master = None


def meter_once(addr=0x00, what="METER"):
    global _master
    try:
        import asyncio
        import struct
        import lib.modbus
    except ImportError as e:
        print("PROBE %s skip" % what, e)
        return
    if _master is None:
        _master = lib.modbus.RtuMaster(board.open_uart(9600, None, 1), 9600)
    try:
        regs = asyncio.run(_master.read(1, 4, addr, 2))
        if what == "ENERGY":
            print("PROBE ENERGY %d" % round(struct.unpack(">f", regs)[0] * 1000))
        else:
            print("PROBE METER ok", len(regs))
    except Exception as e:
        print("PROBE %s fail" % what, repr(e))


def on_tag(tag):
    print("PROBE TAG", tag)
    if tag == "RESET":
        board.reset()
    elif tag == "THREADRESET":
        _thread.start_new_thread(board.reset, ())
    elif tag.startswith("EXIT"):
        sys.exit(int(tag[4:]))
    elif tag.startswith("BUSY"):
        end = time.ticks_add(time.ticks_ms(), int(tag[4:]))
        while time.ticks_diff(end, time.ticks_ms()) > 0:
            pass
        print("PROBE BUSY done")
    elif tag == "METER":
        meter_once()
    elif tag == "ENERGY":
        meter_once(0x48, "ENERGY")  # SDM630 total import, float32 kWh


def step(inputs):
    (hi, lo), pp = inputs[0], inputs[1]
    plugged = 1500 <= hi < 10500
    offering = plugged and pp is not None
    board.set_pwm(_PWM_16A if offering else 1000)
    board.set_lock(offering)
    board.set_led("green", offering)
    if offering and ev_ready(hi, lo) and not board.rcd_tripped():
        board.set_contactor(True)


board.start_watch(10, watch)
last = None
last_limit = None
while True:
    inputs = (board.read_cp(), board.read_pp_ohms(), board.lock_feedback(), board.contactor_feedback(),
              board.rcd_tripped())
    if inputs != last:
        last = inputs
        print("PROBE IN", json.dumps({"cp": inputs[0], "pp": inputs[1], "lock_fb": inputs[2],
                                      "contactor_fb": inputs[3], "rcd": inputs[4]}))
    limit = board.local_limit_da()
    if limit != last_limit:
        last_limit = limit
        print("PROBE LIMIT", limit)
    block = board.take_block_ms()
    if block:
        print("PROBE BLOCK", block)
        time.sleep_ms(block)
    step(inputs)
    tag = board.poll_tag()
    if tag:
        on_tag(tag)
    time.sleep_ms(5)
