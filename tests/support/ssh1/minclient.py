"""A deliberately small, test-only SSH-1 client built on the core's codec and keys, and
the keys the SSH-1 tests share (cached host, server and user keys; hand-made legacy
small keys).

It does exactly what a test tells it, including the wrong things (bad cookie, cipher
not offered, tampered packets, a CRC compensation attack), so the server's handling of
each can be checked.
"""

from __future__ import annotations

import functools
import os
import random as pyrandom

from cryptography.hazmat.primitives.asymmetric import rsa

from protocols.ssh1 import ciphers, deattack, keygen, keys
from protocols.ssh1 import messages as m
from protocols.ssh1.events import CLOSED, NEED_DATA, PAUSED, Event
from protocols.ssh1.packet import PacketDecoder, PacketEncoder
from protocols.ssh1.wire import Reader, Writer

# Examples per fuzz test; raise it for a long run: SSH1_FUZZ_EXAMPLES=5000 pytest tests/ssh1
FUZZ_EXAMPLES = int(os.environ.get("SSH1_FUZZ_EXAMPLES", "150"))


@functools.cache
def host_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@functools.cache
def server_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)


@functools.cache
def user_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)


class MiniClient:
    def __init__(self) -> None:
        self.encoder = PacketEncoder()
        self.decoder = PacketDecoder()
        self.public_key: dict = {}
        self.session_id = b""
        self.session_key = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.decoder.feed(data)
        out = []
        while (packet := self.decoder.next_packet()) is not None:
            out.append(packet)
        return out

    def packet(self, msg_type: int, payload: bytes = b"") -> bytes:
        return self.encoder.encode(msg_type, payload)

    def parse_public_key(self, payload: bytes) -> None:
        r = Reader(payload)
        cookie = r.raw(8)
        sbits, se, sn = r.uint32(), r.mpint(), r.mpint()
        hbits, he, hn = r.uint32(), r.mpint(), r.mpint()
        flags, cipher_mask, auth_mask = r.uint32(), r.uint32(), r.uint32()
        r.end()
        self.public_key = dict(
            cookie=cookie, server=(se, sn), host=(he, hn), flags=flags,
            ciphers=cipher_mask, auths=auth_mask, bits=(sbits, hbits),
        )
        self.session_id = keys.session_id(hn, sn, cookie)

    def session_key_packet(
        self,
        cipher: str = "3des",
        cookie: bytes | None = None,
        number: int | None = None,
        value: int | None = None,
        session_key: bytes | None = None,
    ) -> bytes:
        pk = self.public_key
        self.session_key = session_key or os.urandom(32)
        if value is None:
            value = keys.encrypt_session_key(
                self.session_key, self.session_id, pk["server"], pk["host"]
            )
        spec = ciphers.BY_NAME[cipher]
        payload = (
            Writer()
            .byte(spec.number if number is None else number)
            .raw(pk["cookie"] if cookie is None else cookie)
            .mpint(value)
            .uint32(0)
            .getvalue()
        )
        data = self.packet(m.SSH_CMSG_SESSION_KEY, payload)
        self.encoder.set_cipher(spec, self.session_key)
        self.decoder.set_cipher(spec, self.session_key)
        return data


def drain(conn) -> list[Event]:
    """Every event the connection can produce now."""
    events = []
    while True:
        event = conn.next_event()
        if event in (NEED_DATA, PAUSED, CLOSED):
            return events
        events.append(event)


def string(data: bytes) -> bytes:
    return Writer().string(data).getvalue()


@functools.cache
def small_key(bits: int) -> rsa.RSAPrivateKey:
    """A key of a legacy size cryptography no longer generates (384, 512, 768 bits): the
    same one for a size in every run (protocols.ssh1.keygen from a seeded source)."""
    return keygen.generate_private_key(bits, randbits=pyrandom.Random(bits).getrandbits)


def crc_attack_positions(nblocks: int) -> list[int]:
    """Block positions whose joint CRC contribution cancels (GF(2) elimination)."""

    def contribution(i):
        crc = 0
        for j in range(nblocks):
            crc = deattack._crc_step(deattack._crc_step(crc, 1 if j == i else 0), 0)
        return crc

    basis: dict[int, tuple[int, int]] = {}  # top bit -> (vector, position mask)
    for i in range(nblocks):
        vec, mask = contribution(i), 1 << i
        while vec:
            top = vec.bit_length() - 1
            if top not in basis:
                basis[top] = (vec, mask)
                break
            bvec, bmask = basis[top]
            vec, mask = vec ^ bvec, mask ^ bmask
        else:
            return [j for j in range(nblocks) if mask >> j & 1]
    raise AssertionError("no dependency found")


# ------------------------------------------------------------------ hostile devices
# A 4096-bit modulus with a 71-bit public exponent: passes every check of the protocol.
HUGE_EXPONENT_KEY = ((1 << 70) | 1, (1 << 4095) | 1)


def public_key_payload(
    server=(65537, None), host=(65537, None), cookie=b"c" * 8, mask=None, auths=0b1100,
    server_bits=None, host_bits=None, trailing=b"",
) -> bytes:
    se, sn = server
    he, hn = host
    sn = sn if sn is not None else keys.public_numbers(server_key())[1]
    hn = hn if hn is not None else keys.public_numbers(host_key())[1]
    mask = (1 << 3) | (1 << 6) if mask is None else mask
    return (
        Writer()
        .raw(cookie)
        .uint32(server_bits if server_bits is not None else sn.bit_length())
        .mpint(se)
        .mpint(sn)
        .uint32(host_bits if host_bits is not None else hn.bit_length())
        .mpint(he)
        .mpint(hn)
        .uint32(0)
        .uint32(mask)
        .uint32(auths)
        .getvalue()
        + trailing
    )
