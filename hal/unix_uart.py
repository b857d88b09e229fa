# A serial line for the unix port: a tty (the simulator's pseudo-terminal, or a real USB RS-485 adapter)
# as an asyncio stream. asyncio polls the file through its fileno(), so reads never block the loop.
import asyncio
import termios
from micropython import const

# Linux termios numbers (asm-generic/termbits.h); this port's termios module only exports a few.
_BAUD = {
    1200: 0o11,
    2400: 0o13,
    4800: 0o14,
    9600: 0o15,
    19200: 0o16,
    38400: 0o17,
    57600: 0o10001,
    115200: 0o10002,
}
_CFLAG = const(2)
_ISPEED = const(4)
_OSPEED = const(5)
_CC = const(6)
_VTIME = const(5)
_VMIN = const(6)
_CSTOPB = const(0o100)
_PARENB = const(0o400)
_PARODD = const(0o1000)


def open_tty(path, baud, parity=None, stop=1):
    # parity: None, "E"/"O", or machine.UART's 0 (even) / 1 (odd). Meters mostly run 8N1 or 8E1.
    # A Linux pty ignores parity; a real USB RS-485 adapter honours it.
    if baud not in _BAUD:
        raise ValueError("unsupported baud rate %d" % baud)
    f = open(path, "r+b")
    fd = f.fileno()
    termios.setraw(fd)
    a = termios.tcgetattr(fd)
    a[_ISPEED] = a[_OSPEED] = _BAUD[baud]
    c = a[_CFLAG] & ~(_CSTOPB | _PARENB | _PARODD)
    if parity == "E" or parity == 0:
        c |= _PARENB
    elif parity == "O" or parity == 1:
        c |= _PARENB | _PARODD
    if stop == 2:
        c |= _CSTOPB
    a[_CFLAG] = c
    # VMIN=0, VTIME=0: read(n) returns what is buffered instead of waiting for n bytes. asyncio only
    # reads after poll() said data is there, so the stream never blocks and never sees a false EOF.
    a[_CC][_VMIN] = 0
    a[_CC][_VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, a)
    return asyncio.StreamReader(f)
