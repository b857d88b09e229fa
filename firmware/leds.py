# The front LEDs follow the connector's OCPP status, so a driver sees at the socket what the Central System
# sees (docs/decisions.md, LEDs). Colours as most wallboxes use them: green = free, blue = a session is
# being set up or runs, both = energy flows, red = out of order.
from micropython import const

_GREEN = const(1)
_BLUE = const(2)
_RED = const(4)

_BY_STATUS = {
    "Available": _GREEN,
    "Preparing": _BLUE,
    "Charging": _GREEN | _BLUE,
    "SuspendedEV": _BLUE,
    "SuspendedEVSE": _BLUE,
    "Finishing": _BLUE,
    "Reserved": _BLUE,
    "Unavailable": _RED,
    "Faulted": _RED,
}


def show(board, status):
    bits = _BY_STATUS.get(status, 0)
    board.set_led("green", bits & _GREEN)
    board.set_led("blue", bits & _BLUE)
    board.set_led("red", bits & _RED)
