"""SSH-1 data types on the wire: byte, uint16/uint32, string, SSH-1 mpint.

Owns bounded decoding: every length is checked against what is left *and* an explicit
maximum before anything is sliced, and truncation raises :class:`TruncatedField` with a
reason. No Twisted, no gateway imports.
"""

from __future__ import annotations

import struct

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")

# No SSH-1 string we accept legitimately comes near this; packets are <= 256 KiB anyway.
DEFAULT_MAX_STRING = 256 * 1024
# SSH-1 RSA keys in the wild are <= 4096 bits; be generous but bounded.
DEFAULT_MAX_MPINT_BITS = 16384


class ProtocolError(Exception):
    """The peer broke the protocol. ``reason`` is safe to send back and to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TruncatedField(ProtocolError):
    """A field ran past the end of its packet."""


class MalformedField(ProtocolError):
    """A field is present but its value is not acceptable (too long, trailing bytes...)."""


class Reader:
    """Reads fields from one packet payload, never past its end."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str = "packet") -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int, field: str) -> bytes:
        if n > len(self._data) - self._pos:
            raise TruncatedField(f"{self._what}: truncated {field}")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def byte(self, field: str = "byte") -> int:
        return self._take(1, field)[0]

    def uint16(self, field: str = "uint16") -> int:
        return _U16.unpack(self._take(2, field))[0]

    def uint32(self, field: str = "uint32") -> int:
        return _U32.unpack(self._take(4, field))[0]

    def raw(self, n: int, field: str = "bytes") -> bytes:
        return self._take(n, field)

    def string(self, field: str = "string", max_len: int = DEFAULT_MAX_STRING) -> bytes:
        n = self.uint32(field + " length")
        if n > max_len:
            raise MalformedField(f"{self._what}: {field} of {n} bytes exceeds {max_len}")
        return self._take(n, field)

    def mpint(self, field: str = "mpint", max_bits: int = DEFAULT_MAX_MPINT_BITS) -> int:
        bits = self.uint16(field + " bit count")
        if bits > max_bits:
            raise MalformedField(f"{self._what}: {field} of {bits} bits exceeds {max_bits}")
        return int.from_bytes(self._take((bits + 7) // 8, field), "big")

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def end(self) -> None:
        """The payload must be fully consumed: trailing bytes are a malformed packet."""
        if self._pos != len(self._data):
            raise MalformedField(f"{self._what}: {self.remaining} unexpected trailing bytes")


class Writer:
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def byte(self, value: int) -> Writer:
        self._parts.append(bytes((value,)))
        return self

    def uint16(self, value: int) -> Writer:
        self._parts.append(_U16.pack(value))
        return self

    def uint32(self, value: int) -> Writer:
        self._parts.append(_U32.pack(value))
        return self

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def string(self, data: bytes) -> Writer:
        self._parts.append(_U32.pack(len(data)))
        self._parts.append(bytes(data))
        return self

    def mpint(self, value: int) -> Writer:
        self._parts.append(encode_mpint(value))
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def encode_mpint(value: int) -> bytes:
    if value < 0:
        raise ValueError("SSH-1 mpints are unsigned")
    bits = value.bit_length()
    if bits > 0xFFFF:
        raise ValueError("mpint too large for SSH-1")
    return _U16.pack(bits) + value.to_bytes((bits + 7) // 8, "big")


def int_to_bytes(value: int, length: int | None = None) -> bytes:
    """Big-endian magnitude; minimal when ``length`` is None, else left-padded to it."""
    if length is None:
        length = (value.bit_length() + 7) // 8
    return value.to_bytes(length, "big")
