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
        """obj as UTF-8 JSON: a memoryview into the buffer, valid until the next dump, or a fresh bytes object
        when it does not fit."""
        self._n = 0
        try:
            json.dump(obj, self)
        except ValueError:
            return json.dumps(obj).encode()
        return self._mv[:self._n]
