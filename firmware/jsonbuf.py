# JSON encoding into a buffer allocated once at boot. After hours of running, the heap of a 110 KB board is
# fragmented into small pieces: plenty is free, but rarely a few contiguous KB, which is what json.dumps of a
# large message (GetConfiguration, StopTransaction with transactionData) needs. Encoding into a buffer taken
# while the heap is still whole keeps those messages working (measured: tests/integration/test_core_profile).
import io
import json


class JsonBuf(io.IOBase):
    def __init__(self, size):
        self.buf = bytearray(size)
        self._mv = memoryview(self.buf)
        self._n = 0

    def write(self, piece):  # json.dump feeds the stream protocol piece by piece
        n = self._n
        end = n + len(piece)
        if end > len(self.buf):
            raise ValueError("JSON larger than its buffer")
        self._mv[n:end] = piece
        self._n = end
        return len(piece)

    def dump(self, obj):
        """obj as UTF-8 JSON in a memoryview (len() counts bytes): of a new str, or, when the heap has no block
        large enough for it, of the buffer, valid until the next dump. json.dumps runs in C; streaming through
        write() costs a Python call per token, 12x slower (1 ms for GetConfiguration on the host, 200 ms on an
        ESP32), so the buffer is only the way out of a fragmented heap. A CALLRESULT frame [3, uid, fill] whose
        payload is a function goes into the buffer, its payload written by fill(self) through write(): an
        answer too large to build as dicts and text without KBs of garbage (GetConfiguration of every key)."""
        if isinstance(obj, list) and callable(obj[-1]):
            self._n = 0
            self.write(b"[3,")
            self.write(json.dumps(obj[1]).encode())  # the uniqueId as the peer sent it, escaped
            self.write(b",")
            obj[-1](self)
            self.write(b"]")
            return self._mv[:self._n]
        try:
            return memoryview(json.dumps(obj))
        except MemoryError:
            pass
        self._n = 0
        try:
            json.dump(obj, self)
        except ValueError:
            raise MemoryError("JSON larger than its buffer and no heap block for it")
        return self._mv[:self._n]
