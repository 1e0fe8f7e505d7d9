"""The SSH-1 binary packet codec, one :class:`PacketDecoder` and one
:class:`PacketEncoder` per direction.

    uint32 length   (type + data + crc; padding not counted; sent in clear)
    padding         8 - length % 8 bytes (1..8): zeros in clear, random once encrypted
    byte   type
    data
    uint32 crc      SSH-1 CRC-32 over padding + type + data

The decoder checks the length (5 .. 256 KiB) as soon as its 4 bytes are in, before it
buffers the rest, so a hostile length never costs memory. Every incoming encrypted packet
passes the compensation-attack detector before it is decrypted.

Padding has no check of its own: its length follows from ``length``, and its content is
random even in clear from some clients (PuTTY), so it cannot be required to be zero;
it is covered by the CRC, which is where a tampered padding shows.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from protocols.ssh1 import deattack
from protocols.ssh1.ciphers import BLOCK_SIZE, BY_NAME, CipherSpec, Stream
from protocols.ssh1.compression import Compressor, Decompressor
from protocols.ssh1.crc import ssh1_crc32
from protocols.ssh1.wire import ProtocolError

MIN_LENGTH = 5  # type byte + crc
MAX_LENGTH = 256 * 1024
_U32 = struct.Struct(">I")


class BadLength(ProtocolError):
    pass


class BadCRC(ProtocolError):
    pass


class AttackDetected(ProtocolError):
    pass


def padding_length(length: int) -> int:
    return 8 - (length % 8)


class PacketDecoder:
    """Bytes in, ``(type, payload)`` out; raises ProtocolError subclasses."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of unread data in _buf (compacted lazily: no memmove per packet)
        self._cipher: CipherSpec = BY_NAME["none"]
        self._stream: Stream | None = None
        self._iv: bytes | None = None
        self._decompressor: Decompressor | None = None
        self._need: int | None = None  # total bytes of the packet being assembled
        self.last_size = 0  # wire bytes of the packet next_packet returned last

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def set_cipher(self, spec: CipherSpec, session_key: bytes) -> None:
        self._cipher = spec
        self._stream = spec.decryptor(session_key) if spec.encrypts else None
        self._iv = None

    def start_decompression(self, max_size: int = MAX_LENGTH) -> None:
        self._decompressor = Decompressor(max_size)

    def next_packet(self) -> tuple[int, bytes] | None:
        """The next whole packet, or None until more bytes arrive."""
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if self._need is None:
            if available < 4:
                return None
            length = _U32.unpack_from(buf, pos)[0]
            if length < MIN_LENGTH or length > MAX_LENGTH:
                raise BadLength(f"packet length {length} outside {MIN_LENGTH}..{MAX_LENGTH}")
            self._need = 4 + padding_length(length) + length
        need = self._need
        if available < need:
            return None
        length = _U32.unpack_from(buf, pos)[0]
        body = bytes(buf[pos + 4 : pos + need])
        self._pos = pos + need
        if self._pos == len(buf):
            buf.clear()
            self._pos = 0
        self._need = None
        self.last_size = need
        pad = padding_length(length)
        if self._stream is not None:
            try:
                deattack.check(body, self._iv)
            except deattack.AttackDetected as exc:
                raise AttackDetected(str(exc)) from None
            self._iv = body[-BLOCK_SIZE:]
            body = self._stream.update(body)
        (crc,) = _U32.unpack_from(body, len(body) - 4)
        if ssh1_crc32(body[:-4]) != crc:
            raise BadCRC("packet CRC mismatch (corrupt data or wrong session key)")
        content = body[pad:-4]
        if self._decompressor is not None:
            content = self._decompressor.decompress(content)
            if not content:
                raise ProtocolError("empty packet after decompression")
        return content[0], content[1:]


class PacketEncoder:
    """``(type, payload)`` in, wire bytes out."""

    def __init__(self, random: Callable[[int], bytes] = os.urandom) -> None:
        self._cipher: CipherSpec = BY_NAME["none"]
        self._stream: Stream | None = None
        self._compressor: Compressor | None = None
        self._random = random

    def set_cipher(self, spec: CipherSpec, session_key: bytes) -> None:
        self._cipher = spec
        self._stream = spec.encryptor(session_key) if spec.encrypts else None

    def start_compression(self, level: int) -> None:
        self._compressor = Compressor(level)

    def encode(self, msg_type: int, payload: bytes = b"") -> bytes:
        content = bytes((msg_type,)) + payload
        if self._compressor is not None:
            content = self._compressor.compress(content)
        length = len(content) + 4
        if length > MAX_LENGTH:
            raise ValueError(f"packet of {length} bytes exceeds {MAX_LENGTH}")
        pad = padding_length(length)
        padding = self._random(pad) if self._stream is not None else bytes(pad)
        body = padding + content
        body += _U32.pack(ssh1_crc32(body))
        if self._stream is not None:
            body = self._stream.update(body)
        return _U32.pack(length) + body
