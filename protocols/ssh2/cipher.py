"""SSH-2 packet protection, one direction at a time: ciphers and MACs by name, from tables.

Conch knows only encrypt-and-MAC (RFC 4253: the MAC over the plaintext). This module adds
what modern peers prefer, for the gateway's server and its upstream client alike:

- ``chacha20-poly1305@openssh.com`` (OpenSSH's PROTOCOL.chacha20poly1305): the length is
  encrypted with its own key, the Poly1305 tag covers the encrypted packet;
- ``aes128-gcm@openssh.com`` / ``aes256-gcm@openssh.com`` (RFC 5647 as OpenSSH does it):
  the length in clear as associated data, a 64-bit invocation counter in the nonce;
- encrypt-then-MAC (``hmac-sha2-*-etm@openssh.com``): the length in clear, the MAC over the
  encrypted packet, checked before anything is decrypted;
- the classic encrypt-and-MAC modes, for aes-ctr, aes-cbc and 3des-cbc.

A :class:`Sealer` frames and protects outgoing packets; an :class:`Opener` learns a
packet's length from its first bytes, checks the framing (RFC 4253 section 6) before
anything is allocated for it, then authenticates and decrypts it. With an AEAD cipher the
negotiated MAC is not used (as in OpenSSH). Sequence numbers, compression and what the
payload means stay with the transports.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import poly1305
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.conch.ssh.transport import SSHCiphers

try:  # OpenSSL's HMAC, as hmac.new uses it inside its Python wrapper
    from _hashlib import hmac_new as _openssl_hmac
except ImportError:  # pragma: no cover - Python built without OpenSSL
    _openssl_hmac = hmac.new

try:  # cryptography >= 43 keeps 3DES here
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    TripleDES = algorithms.TripleDES  # type: ignore[attr-defined]


_U32 = struct.Struct(">L")


class BadMAC(Exception):
    """The packet's MAC or AEAD tag did not verify."""


class PacketError(Exception):
    """Framing the peer got wrong (length, padding); the text is the disconnect reason."""


@dataclass(frozen=True)
class CipherSpec:
    """One cipher name: key and IV sizes, the padding block, and its kind."""

    kind: str  # "none" | "stream" (ctr/cbc: encrypt-and-MAC or EtM) | "gcm" | "chacha"
    key_size: int
    iv_size: int
    block: int
    algorithm: Any = None
    mode: Any = None


CIPHERS: dict[bytes, CipherSpec] = {
    b"chacha20-poly1305@openssh.com": CipherSpec("chacha", 64, 0, 8),
    b"aes256-gcm@openssh.com": CipherSpec("gcm", 32, 12, 16),
    b"aes128-gcm@openssh.com": CipherSpec("gcm", 16, 12, 16),
    b"aes256-ctr": CipherSpec("stream", 32, 16, 16, algorithms.AES, modes.CTR),
    b"aes192-ctr": CipherSpec("stream", 24, 16, 16, algorithms.AES, modes.CTR),
    b"aes128-ctr": CipherSpec("stream", 16, 16, 16, algorithms.AES, modes.CTR),
    b"aes256-cbc": CipherSpec("stream", 32, 16, 16, algorithms.AES, modes.CBC),
    b"aes192-cbc": CipherSpec("stream", 24, 16, 16, algorithms.AES, modes.CBC),
    b"aes128-cbc": CipherSpec("stream", 16, 16, 16, algorithms.AES, modes.CBC),
    b"3des-cbc": CipherSpec("stream", 24, 8, 8, TripleDES, modes.CBC),
    b"none": CipherSpec("none", 0, 0, 8),
}


@dataclass(frozen=True)
class MacSpec:
    digest: Callable[..., Any]
    key_size: int
    size: int
    etm: bool


MACS: dict[bytes, MacSpec] = {
    b"hmac-sha2-512-etm@openssh.com": MacSpec(hashlib.sha512, 64, 64, True),
    b"hmac-sha2-256-etm@openssh.com": MacSpec(hashlib.sha256, 32, 32, True),
    b"hmac-sha2-512": MacSpec(hashlib.sha512, 64, 64, False),
    b"hmac-sha2-256": MacSpec(hashlib.sha256, 32, 32, False),
    b"hmac-sha1-etm@openssh.com": MacSpec(hashlib.sha1, 20, 20, True),
    b"hmac-sha1": MacSpec(hashlib.sha1, 20, 20, False),
    # Legacy, for the gateway's client towards old devices only (protocols.ssh2.algorithms).
    b"hmac-sha1-96": MacSpec(hashlib.sha1, 20, 12, False),
    b"hmac-md5": MacSpec(hashlib.md5, 16, 16, False),
    b"hmac-md5-96": MacSpec(hashlib.md5, 16, 12, False),
}


def is_aead(cipher: bytes) -> bool:
    spec = CIPHERS.get(cipher)
    return spec is not None and spec.kind in ("gcm", "chacha")


def shown_mac(cipher: bytes, mac: bytes) -> str:
    """The MAC to report: an AEAD cipher authenticates by itself, the MAC name goes unused."""
    return "implicit" if is_aead(cipher) else mac.decode("ascii", "replace")


def padding_for(block: int, body: int, length_in_clear: bool) -> int:
    """RFC 4253 padding (4 bytes at least) for ``body`` bytes of padding-length byte plus
    payload; the packet-length field counts towards the block unless it travels in clear."""
    covered = body + (0 if length_in_clear else 4)
    padding = block - covered % block
    return padding + block if padding < 4 else padding


# -- the pieces ------------------------------------------------------------------------------


class _Mac:
    """HMAC keyed once; each packet works on a copy of the keyed state. OpenSSL's HMAC
    object is used as it is when Python has it (``hmac.new`` wraps it in a Python class
    whose copy, update and digest are each one more Python call per packet)."""

    def __init__(self, spec: MacSpec, key: bytes) -> None:
        key = key[: spec.key_size]
        try:
            self._keyed: Any = _openssl_hmac(key, digestmod=spec.digest)
        except (TypeError, ValueError):  # no OpenSSL HMAC for this digest in this build
            self._keyed = hmac.new(key, digestmod=spec.digest)
        self.size = spec.size
        self._truncated = spec.size < self._keyed.digest_size  # the -96 forms

    def digest(self, seq: int, *parts: bytes | memoryview) -> bytes:
        mac = self._keyed.copy()
        mac.update(_U32.pack(seq))
        for part in parts:
            mac.update(part)
        return mac.digest()[: self.size] if self._truncated else mac.digest()


class _Gcm:
    """AES-GCM with OpenSSH's nonce: 4 fixed IV bytes, then a 64-bit invocation counter."""

    TAG = 16

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aes = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")

    def _nonce(self) -> bytes:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce

    def seal(self, plain: bytes | memoryview, aad: bytes) -> bytes:
        return self._aes.encrypt(self._nonce(), plain, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes) -> bytes:
        try:
            return self._aes.decrypt(self._nonce(), sealed, aad)
        except InvalidTag:
            raise BadMAC() from None


class _ChaCha:
    """chacha20-poly1305@openssh.com: K_2 (the first 32 key bytes) encrypts the packet,
    K_1 (the next 32) the length; the nonce is the sequence number, and block 0 of the
    main stream is the Poly1305 key."""

    TAG = 16

    def __init__(self, key: bytes) -> None:
        self._main = key[:32]
        self._header = key[32:64]

    @staticmethod
    def _stream(key: bytes, seq: int, counter: int) -> Any:
        nonce = counter.to_bytes(8, "little") + seq.to_bytes(8, "big")
        return Cipher(algorithms.ChaCha20(key, nonce), None).encryptor()

    def length(self, seq: int, encrypted: bytes) -> bytes:
        return self._stream(self._header, seq, 0).update(encrypted)

    def _poly_key(self, seq: int) -> bytes:
        return self._stream(self._main, seq, 0).update(bytes(32))

    def seal(self, seq: int, packet: bytes) -> bytes:
        view = memoryview(packet)
        head = self._stream(self._header, seq, 0).update(view[:4])
        body = self._stream(self._main, seq, 1).update(view[4:])
        tag = poly1305.Poly1305.generate_tag(self._poly_key(seq), head + body)
        return head + body + tag

    def open(self, seq: int, data: bytes | memoryview) -> bytes:
        end = len(data) - self.TAG
        try:
            poly1305.Poly1305.verify_tag(self._poly_key(seq), data[:end], bytes(data[end:]))
        except InvalidSignature:
            raise BadMAC() from None
        return self._stream(self._main, seq, 1).update(data[4:end])


# -- one direction ---------------------------------------------------------------------------


class _Direction:
    """The keyed pieces of one direction: a stream cipher with its MAC (encrypt-and-MAC
    or EtM), or an AEAD cipher; what is common to sealing and opening."""

    def __init__(
        self, cipher: bytes, mac: bytes, iv: bytes, key: bytes, integrity: bytes, encrypt: bool
    ) -> None:
        spec = CIPHERS[cipher]
        self.kind = spec.kind
        self.block = spec.block
        self._crypt: Any = None
        self._mac: _Mac | None = None
        self._aead: Any = None
        if spec.kind == "stream":
            keyed = Cipher(spec.algorithm(key[: spec.key_size]), spec.mode(iv[: spec.iv_size]))
            self._crypt = keyed.encryptor() if encrypt else keyed.decryptor()
            mac_spec = MACS.get(mac)
            if mac_spec is not None:
                self._mac = _Mac(mac_spec, integrity)
        elif spec.kind == "gcm":
            self._aead = _Gcm(key[: spec.key_size], iv[: spec.iv_size])
        elif spec.kind == "chacha":
            self._aead = _ChaCha(key[: spec.key_size])
        self.etm = bool(spec.kind == "stream" and mac in MACS and MACS[mac].etm)
        self.length_in_clear = self._aead is not None or self.etm
        # Bytes after the packet: the AEAD tag or the MAC.
        self.tail = self._aead.TAG if self._aead is not None else (self._mac.size if self._mac else 0)


class Sealer(_Direction):
    """Frames and protects outgoing packets of one direction."""

    def __init__(self, cipher: bytes, mac: bytes, iv: bytes, key: bytes, integrity: bytes) -> None:
        super().__init__(cipher, mac, iv, key, integrity, encrypt=True)

    def frame(self, message: int, parts: tuple[bytes, ...], payload_size: int) -> bytes:
        """The plaintext packet for ``message`` then ``parts`` (joined once);
        ``payload_size`` counts the message byte and the parts."""
        padding = padding_for(self.block, 1 + payload_size, self.length_in_clear)
        header = struct.pack("!LBB", 1 + payload_size + padding, padding, message)
        return b"".join((header, *parts, os.urandom(padding)))

    def wire_size(self, payload_size: int) -> int:
        """Bytes on the wire for a payload of ``payload_size`` (message byte included)."""
        padding = padding_for(self.block, 1 + payload_size, self.length_in_clear)
        return 4 + 1 + payload_size + padding + self.tail

    def packet(self, seq: int, message: int, parts: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """Wire bytes of one packet: ``message`` then ``parts`` as the payload."""
        return self.seal(seq, self.frame(message, parts, 1 + sum(map(len, parts))))

    def seal(self, seq: int, packet: bytes) -> tuple[bytes, ...]:
        """Wire bytes for ``packet`` (length field first), as pieces to write in order."""
        kind = self.kind
        # Slices of a memoryview: the 32 KiB body is not copied just to leave out the length.
        view = memoryview(packet)
        if kind == "stream":
            if self.etm:
                body = self._crypt.update(view[4:])
                return packet[:4], body, self._mac.digest(seq, view[:4], body)
            encrypted = self._crypt.update(packet)
            if self._mac is None:
                return (encrypted,)
            return encrypted, self._mac.digest(seq, packet)
        if kind == "gcm":
            return packet[:4], self._aead.seal(view[4:], packet[:4])
        if kind == "chacha":
            return (self._aead.seal(seq, packet),)
        return (packet,)


class Opener(_Direction):
    """Authenticates and decrypts incoming packets of one direction.

    ``head`` bytes tell the length (:meth:`length`); then :meth:`open` takes the whole
    packet, ``4 + length + tail`` bytes, and returns it from the padding-length byte on.
    :meth:`next_message` and :meth:`next_payload` do both on a receive buffer.
    """

    def __init__(self, cipher: bytes, mac: bytes, iv: bytes, key: bytes, integrity: bytes) -> None:
        super().__init__(cipher, mac, iv, key, integrity, encrypt=False)
        self._first = b""  # the decrypted first block (encrypt-and-MAC), kept for open()
        self._length: int | None = None  # of the packet being received, once known
        self.head = 4 if self.length_in_clear else self.block

    def next_message(
        self, seq: int, buf: bytes | bytearray, max_length: int
    ) -> tuple[int, bytes, int] | None:
        """The message number and the rest of the payload of the packet at the start of
        ``buf``, and its size on the wire; None until all of it is there. The payload's
        bytes are copied once, out of the decrypted packet. Raises PacketError or BadMAC."""
        found = self._next_packet(seq, buf, max_length)
        if found is None:
            return None
        first, rest, end, size = found
        return _byte_at(first, rest, 1), _joined(first, rest, 2, end), size

    def next_payload(
        self, seq: int, buf: bytes | bytearray, max_length: int
    ) -> tuple[bytes, int] | None:
        """The whole payload (message number first) of the packet at the start of ``buf``
        and its size on the wire, or None until all of it is there (for a compressed
        payload, which is inflated whole). Raises PacketError or BadMAC."""
        found = self._next_packet(seq, buf, max_length)
        if found is None:
            return None
        first, rest, end, size = found
        return _joined(first, rest, 1, end), size

    def _next_packet(
        self, seq: int, buf: bytes | bytearray, max_length: int
    ) -> tuple[bytes, bytes, int, int] | None:
        """The packet at the start of ``buf``, opened (:meth:`_open`'s two pieces), where
        its payload ends in them, and its size on the wire; None until all of it is there."""
        length = self._length
        if length is None:
            if len(buf) < self.head:
                return None
            length = self._length = self.length(seq, bytes(buf[: self.head]))
        if length > max_length:
            raise PacketError(f"bad packet length {length}")
        # Whole blocks (the length field counts unless it travels in clear), and room for
        # the padding-length byte, a message byte and 4 bytes of padding.
        aligned = length if self.length_in_clear else 4 + length
        if aligned % self.block or length < 6 or 4 + length < self.head:
            raise PacketError("bad packet padding or length")
        size = 4 + length + self.tail
        if len(buf) < size:
            return None
        with memoryview(buf) as view:
            first, rest = self._open(seq, view[:size])
        self._length = None
        padding = _byte_at(first, rest, 0)
        if padding < 4 or padding + 1 >= length:
            raise PacketError("bad packet padding or length")
        return first, rest, length - padding, size

    def length(self, seq: int, head: bytes) -> int:
        """The packet-length field, from the packet's first ``head`` bytes."""
        if self.kind == "chacha":
            return struct.unpack(">L", self._aead.length(seq, head))[0]
        if self.length_in_clear:
            return struct.unpack(">L", head)[0]
        if self._crypt is not None:
            head = self._crypt.update(head)  # the cipher moves on: keep the plaintext
        self._first = head
        return struct.unpack(">L", head[:4])[0]

    def open(self, seq: int, data: memoryview) -> bytes:
        """The packet after its length field (padding length, payload, padding)."""
        first, rest = self._open(seq, data)
        return first + rest

    def _open(self, seq: int, data: memoryview) -> tuple[bytes, bytes]:
        """:meth:`open`'s packet as two pieces to be read as one, the first short: an
        encrypt-and-MAC packet's first block is decrypted on its own (it told the length),
        and joining it to the rest would copy the whole packet."""
        length = len(data) - 4 - self.tail
        kind = self.kind
        if kind == "stream" and self.etm:
            if not hmac.compare_digest(self._mac.digest(seq, data[: 4 + length]), data[4 + length :]):
                raise BadMAC()
            return b"", self._crypt.update(data[4 : 4 + length])
        if kind == "gcm":
            return b"", self._aead.open(data[4:], bytes(data[:4]))
        if kind == "chacha":
            return b"", self._aead.open(seq, data)
        first, self._first = self._first, b""
        body = data[self.head : 4 + length]
        rest = self._crypt.update(body) if self._crypt is not None else bytes(body)
        # The MAC covers the whole plaintext packet, fed in its two pieces.
        if self._mac is not None and not hmac.compare_digest(
            self._mac.digest(seq, first, rest), data[4 + length :]
        ):
            raise BadMAC()
        return first[4:], rest


def _byte_at(first: bytes, rest: bytes, index: int) -> int:
    """Byte ``index`` of ``first + rest``."""
    return first[index] if index < len(first) else rest[index - len(first)]


def _joined(first: bytes, rest: bytes, start: int, end: int) -> bytes:
    """``(first + rest)[start:end]``, copying only those bytes."""
    split = len(first)
    if start >= split:
        return rest[start - split : end - split]
    if end <= split:
        return first[start:end]
    return first[start:] + memoryview(rest)[: end - split]


class KeyedCiphers(SSHCiphers):
    """Conch's negotiated cipher and MAC names, keyed into a :class:`Sealer` (out) and an
    :class:`Opener` (in) by ``setKeys``, which Conch calls from its key setup."""

    sealer: Sealer | None = None
    opener: Opener | None = None

    @classmethod
    def of(cls, negotiated: SSHCiphers) -> KeyedCiphers:
        return cls(
            negotiated.outCipType, negotiated.inCipType,
            negotiated.outMACType, negotiated.inMACType,
        )  # fmt: skip

    @classmethod
    def plain(cls) -> KeyedCiphers:
        """Before the first NEWKEYS: no cipher, no MAC."""
        ciphers = cls(b"none", b"none", b"none", b"none")
        ciphers.setKeys(b"", b"", b"", b"", b"", b"")
        return ciphers

    def setKeys(
        self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes,
        outInteg: bytes, inInteg: bytes,
    ) -> None:  # fmt: skip
        self.sealer = Sealer(self.outCipType, self.outMACType, outIV, outKey, outInteg)
        self.opener = Opener(self.inCipType, self.inMACType, inIV, inKey, inInteg)
        self.encBlockSize = self.sealer.block
        self.decBlockSize = self.opener.block
        self.verifyDigestSize = self.opener.tail
