# RFC 6455 frame codec: the frame header, masking, and reading one frame from a stream. No connection state:
# the client (lib/ws.py) keeps that. Knows nothing of what the messages carry.
from micropython import const

# RFC 6455 §5.2 opcodes, §7.4.1 status codes (lib/ws.py has its own private copies: a private const costs no RAM)
_BINARY = const(2)
_CLOSE = const(8)
_PONG = const(10)
_PROTOCOL_ERROR = const(1002)
_TOO_BIG = const(1009)


class WSNoRoom(Exception):
    # A message the heap has no block for. It was read past, so the link stays usable; .size is its length.
    def __init__(self, size):
        super().__init__("message of %d bytes does not fit in memory" % size)
        self.size = size


class Fail(Exception):
    # A protocol violation: fail the connection with this close code (RFC 6455 §7.1.7).
    def __init__(self, code, msg, unread=0):
        super().__init__(msg)
        self.code = code
        self.unread = unread  # payload bytes still in the stream


def _mask_py(buf, key):
    mv = memoryview(buf)
    for i in range(len(mv)):
        mv[i] ^= key[i & 3]


# viper needs an -march for mpy-cross and a native emitter at run time, so it is compiled from a string
# and the plain loop stays as the fallback.
_mask_fast = None
try:
    exec("""
@micropython.viper
def _mask_v(buf: ptr8, n: int, key: ptr8):
    i = 0
    while i < n:
        buf[i] ^= key[i & 3]
        i += 1
_mask_fast = _mask_v
""")
except Exception:
    pass


def apply_mask(buf, key):
    # In place, on a bytearray or a writable memoryview; XOR is its own inverse.
    if _mask_fast is not None:
        _mask_fast(buf, len(buf), key)
    else:
        _mask_py(buf, key)


def put_header(hdr, opcode, n, key, fin):
    # Writes the frame header into hdr (>= 14 bytes); returns its length.
    hdr[0] = (0x80 if fin else 0) | opcode
    m = 0x80 if key else 0
    if n < 126:
        hdr[1] = m | n
        i = 2
    elif n < 0x10000:
        hdr[1] = m | 126
        hdr[2] = n >> 8
        hdr[3] = n & 0xFF
        i = 4
    else:
        hdr[1] = m | 127
        for j in range(8):
            hdr[2 + j] = (n >> (56 - 8 * j)) & 0xFF
        i = 10
    if key:
        hdr[i:i + 4] = key
        i += 4
    return i


def read_header(buf, start, end):
    """The server frame header at buf[start:end] (a receive buffer) -> (first byte, opcode, payload length, header
    length), or None while fewer bytes than the header are there. Raises Fail on a protocol violation."""
    if end - start < 2:
        return None
    b0 = buf[start]
    b1 = buf[start + 1]
    op = b0 & 0x0F
    if b0 & 0x70:
        raise Fail(_PROTOCOL_ERROR, "reserved bits set (no extension negotiated)")
    if b1 & 0x80:
        raise Fail(_PROTOCOL_ERROR, "server sent a masked frame")
    if op > _BINARY and op < _CLOSE or op > _PONG:
        raise Fail(_PROTOCOL_ERROR, "unknown opcode %d" % op)
    n = b1 & 0x7F
    k = 2
    if n == 126:
        k = 4
        if end - start < k:
            return None
        n = (buf[start + 2] << 8) | buf[start + 3]
    elif n == 127:
        k = 10
        if end - start < k:
            return None
        n = 0
        i = start + 2
        while i < start + 10:
            n = (n << 8) | buf[i]
            i += 1
    if op >= _CLOSE and (n > 125 or not b0 & 0x80):
        raise Fail(_PROTOCOL_ERROR, "bad control frame")  # RFC 6455 §5.5
    return b0, op, n, k


def close_code_ok(code):
    """True for a status code a peer may send in a close frame (RFC 6455 §7.4.1, §7.4.2, IANA registry):
    1004 is reserved, 1005/1006/1015 must never be on the wire, 1016-2999 are unassigned, 5000+ undefined."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
