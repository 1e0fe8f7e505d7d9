"""Strict SSH-2 wire reading: every length is checked against a bound and the data left.

Conch's ``getNS`` silently returns a short string when a length runs past the end of the
packet; the parsers we own use :class:`Reader` instead, so that a truncated or oversized
field is a :class:`WireError` (a protocol error) and never an allocation the peer chose.
"""

from __future__ import annotations

import struct

_U32 = struct.Struct(">L")


class WireError(ValueError):
    """Malformed or oversized field in a packet."""


class Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def uint32(self) -> int:
        if self.remaining() < 4:
            raise WireError("truncated uint32")
        (value,) = _U32.unpack_from(self._data, self._pos)
        self._pos += 4
        return value

    def byte(self) -> int:
        if self.remaining() < 1:
            raise WireError("truncated byte")
        value = self._data[self._pos]
        self._pos += 1
        return value

    def boolean(self) -> bool:
        return self.byte() != 0

    def string(self, limit: int) -> bytes:
        length = self.uint32()
        if length > limit:
            raise WireError(f"string of {length} bytes exceeds the limit of {limit}")
        if length > self.remaining():
            raise WireError("truncated string")
        start = self._pos
        self._pos += length
        return self._data[start : self._pos]

    def text(self, limit: int) -> str:
        """A string that must be printable UTF-8 (names, terminal types, signals)."""
        raw = self.string(limit)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise WireError("string is not UTF-8") from e
        if not value.isprintable():
            raise WireError("string has control characters")
        return value

    def rest(self) -> bytes:
        value = self._data[self._pos :]
        self._pos = len(self._data)
        return value

    def end(self) -> None:
        if self.remaining():
            raise WireError(f"{self.remaining()} unexpected trailing bytes")


def u32(value: int) -> bytes:
    return _U32.pack(value)


def string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value
