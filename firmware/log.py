# One-line log records on the console (UART on the board, stdout in the simulation, where tools/sim.py
# forwards them). A level filter keeps the hot paths quiet.
import time

DEBUG = 10
INFO = 20
WARN = 30
ERROR = 40
level = INFO


def log(lvl, tag, msg):
    if lvl >= level:
        print("%d %s %s: %s" % (time.ticks_ms() % 10000000, "DIWE"[lvl // 10 - 1], tag, msg))


def info(tag, msg):
    log(INFO, tag, msg)


def warn(tag, msg):
    log(WARN, tag, msg)


def error(tag, msg):
    log(ERROR, tag, msg)


def debug(tag, msg):
    if level <= DEBUG:
        log(DEBUG, tag, msg)
