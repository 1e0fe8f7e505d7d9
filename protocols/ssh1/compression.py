"""SSH-1 compression: one zlib stream per direction for the rest of the connection,
each packet's ``type + data`` flushed with Z_PARTIAL_FLUSH.

Decompression is bounded: a packet that inflates past ``max_size`` is hostile input
(a decompression bomb) and raises :class:`~protocols.ssh1.wire.ProtocolError`.
"""

from __future__ import annotations

import zlib

from protocols.ssh1.wire import ProtocolError

MIN_LEVEL = 1
MAX_LEVEL = 9


class Compressor:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        if not MIN_LEVEL <= level <= MAX_LEVEL:
            raise ValueError(f"compression level {level} outside {MIN_LEVEL}..{MAX_LEVEL}")
        self._z = zlib.compressobj(level)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_PARTIAL_FLUSH)


class Decompressor:
    __slots__ = ("_z", "max_size")

    def __init__(self, max_size: int) -> None:
        self._z = zlib.decompressobj()
        self.max_size = max_size

    def decompress(self, data: bytes) -> bytes:
        try:
            out = self._z.decompress(data, self.max_size + 1)
        except zlib.error as exc:
            raise ProtocolError(f"corrupt compressed data ({exc})") from None
        if len(out) > self.max_size or self._z.unconsumed_tail:
            raise ProtocolError(f"packet decompresses past {self.max_size} bytes")
        if self._z.eof:
            raise ProtocolError("peer ended its compression stream")
        return out
