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
import zlib
from collections import deque
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
    """Bytes in, ``(type, payload)`` out; raises ProtocolError subclasses.

    Once encrypted, every whole packet in the buffer is deciphered in one cipher call (the
    CBC stream runs on across packets, and the lengths between them are in clear), after
    one attack-detector pass over them all: clients send small packets (plink: 512 bytes
    of data), and a call per packet cost more than the cipher itself. The packets are
    then handed out one by one, each checked (CRC, decompression) only when asked for,
    so an error comes after every good packet before it, as it would packet by packet;
    a run of session-data packets can be taken in one call (:meth:`take_data_run`).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of unread data in _buf (compacted lazily: no memmove per packet)
        self._cipher: CipherSpec = BY_NAME["none"]
        self._stream: Stream | None = None
        self._iv: bytes | None = None
        self._decompressor: Decompressor | None = None
        # Deciphered packets not handed out yet: their bodies joined in _plain, and per
        # packet (offset of its body, body size, padding, wire size).
        self._plain = b""
        self._ready: deque[tuple[int, int, int, int]] = deque()
        self._ready_bytes = 0  # their wire size
        self.last_size = 0  # wire bytes of the packet next_packet returned last

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as packets."""
        return len(self._buf) - self._pos + self._ready_bytes

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
        if not self._ready:
            if self._stream is None:
                return self._next_clear()
            if not self._decipher_whole_packets():
                return None
        entry = self._ready.popleft()
        self._ready_bytes -= entry[3]
        return self._open(*entry)

    def next_type(self) -> int | None:
        """The message type of the next packet if it is deciphered already and not
        compressed (so known without taking it), else None."""
        if not self._ready or self._decompressor is not None:
            return None
        offset, _size, pad, _wire = self._ready[0]
        return self._plain[offset + pad]

    def take_data_run(self, msg_type: int) -> tuple[bytes, int, int]:
        """Session data in bulk: the deciphered packets at the head of the queue that are
        ``msg_type`` messages holding exactly one string, CRC checked, taken in one loop:
        (their strings joined, how many packets, their wire bytes). Stops at the first
        packet that is anything else (another type, not one string, a bad CRC) and leaves
        it for :meth:`next_packet`, which raises its error or returns it as usual.
        Compressed streams take the usual path (nothing is taken here)."""
        ready = self._ready
        if self._decompressor is not None or not ready:
            return b"", 0, 0
        plain = self._plain
        view = memoryview(plain)
        unpack, crc32 = _U32.unpack_from, zlib.crc32
        parts: list[memoryview] = []
        wire_bytes = 0
        while ready:
            offset, size, pad, wire = ready[0]
            start = offset + pad  # the type byte, then the string's length
            end = offset + size - 4  # the CRC
            if plain[start] != msg_type or unpack(plain, start + 1)[0] != end - start - 5:
                break
            # ssh1_crc32 inline (this loop runs per packet): zlib's CRC with both of its
            # inversions cancelled.
            if crc32(view[offset:end], 0xFFFFFFFF) ^ 0xFFFFFFFF != unpack(plain, end)[0]:
                break
            parts.append(view[start + 5 : end])
            ready.popleft()
            wire_bytes += wire
        if not parts:
            return b"", 0, 0
        self._ready_bytes -= wire_bytes
        return b"".join(parts), len(parts), wire_bytes

    def _spans(self, limit: int | None) -> list[tuple[int, int, int]]:
        """(start, wire size, length field) of the whole packets at the head of the
        buffer, at most ``limit``; a bad length raises only when it heads the buffer."""
        buf, pos, end = self._buf, self._pos, len(self._buf)
        spans: list[tuple[int, int, int]] = []
        while end - pos >= 4 and (limit is None or len(spans) < limit):
            length = _U32.unpack_from(buf, pos)[0]
            if length < MIN_LENGTH or length > MAX_LENGTH:
                if spans:
                    break
                raise BadLength(f"packet length {length} outside {MIN_LENGTH}..{MAX_LENGTH}")
            need = 4 + padding_length(length) + length
            if end - pos < need:
                break
            spans.append((pos, need, length))
            pos += need
        return spans

    def _consume(self, upto: int) -> None:
        self._pos = upto
        if upto == len(self._buf):
            self._buf.clear()
            self._pos = 0

    def _next_clear(self) -> tuple[int, bytes] | None:
        spans = self._spans(1)
        if not spans:
            return None
        start, need, length = spans[0]
        self._plain = bytes(self._buf[start + 4 : start + need])
        self._consume(start + need)
        return self._open(0, need - 4, padding_length(length), need)

    def _decipher_whole_packets(self) -> bool:
        """One pass over the clear lengths finds the whole packets at the head of the
        buffer; their bodies are joined, checked by the attack detector and deciphered
        in one call each. A bad length raises only when it heads the buffer."""
        buf, pos, end = self._buf, self._pos, len(self._buf)
        unpack = _U32.unpack_from
        entries: list[tuple[int, int, int, int]] = []  # as in _ready
        sizes: list[int] = []
        offset = 0
        with memoryview(buf) as view:
            bodies = []
            while end - pos >= 4:
                length = unpack(buf, pos)[0]
                if length < MIN_LENGTH or length > MAX_LENGTH:
                    if entries:
                        break
                    raise BadLength(f"packet length {length} outside {MIN_LENGTH}..{MAX_LENGTH}")
                pad = 8 - (length & 7)  # padding_length, inline: this loop runs per packet
                size = pad + length
                if end - pos - 4 < size:
                    break
                bodies.append(view[pos + 4 : pos + 4 + size])
                entries.append((offset, size, pad, size + 4))
                sizes.append(size)
                offset += size
                pos += 4 + size
            if not entries:
                return False
            ciphertext = bytes(bodies[0]) if len(bodies) == 1 else b"".join(bodies)
            bodies.clear()  # no slice of the buffer may outlive the view
        self._consume(pos)
        assert self._stream is not None
        try:
            deattack.check_run(ciphertext, self._iv, sizes)
        except deattack.AttackDetected as exc:
            raise AttackDetected(str(exc)) from None
        self._iv = ciphertext[-BLOCK_SIZE:]
        self._plain = self._stream.update(ciphertext)
        self._ready.extend(entries)
        self._ready_bytes = offset + 4 * len(entries)
        return True

    def _open(self, offset: int, size: int, pad: int, wire: int) -> tuple[int, bytes]:
        """Check and unpack one deciphered body of ``_plain``."""
        plain = self._plain
        end = offset + size - 4
        (crc,) = _U32.unpack_from(plain, end)
        with memoryview(plain) as view:
            if ssh1_crc32(view[offset:end]) != crc:
                raise BadCRC("packet CRC mismatch (corrupt data or wrong session key)")
        self.last_size = wire
        if self._decompressor is None:
            return plain[offset + pad], plain[offset + pad + 1 : end]
        content = self._decompressor.decompress(plain[offset + pad : end])
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
