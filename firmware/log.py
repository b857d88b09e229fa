# One-line log records on the console (UART on the board, stdout in the simulation, where tools/sim.py
# forwards them). A level filter keeps the hot paths quiet.
import time

DEBUG = 10
INFO = 20
WARN = 30
ERROR = 40
level = INFO
# Called with every record printed (its text without the line end) when set: the web page keeps the recent ones
# in a small RAM ring (firmware/web.py). One hook, no list: a board without the page pays nothing.
hook = None
# Set at boot: sink(lvl, line) also gets every record that passes the filter (the diagnostics ring on flash,
# firmware/diag/ring.py). It must not raise and must not log.
sink = None


def log(lvl, tag, msg):
    if lvl >= level:
        line = "%d %s %s: %s" % (time.ticks_ms() % 10000000, "DIWE"[lvl // 10 - 1], tag, msg)
        print(line)
        if hook is not None:
            hook(line)
        if sink is not None:
            sink(lvl, line)


def info(tag, msg):
    log(INFO, tag, msg)


def warn(tag, msg):
    log(WARN, tag, msg)


def error(tag, msg):
    log(ERROR, tag, msg)


def debug(tag, msg):
    if level <= DEBUG:
        log(DEBUG, tag, msg)
