"""protocols.ssh2.cipher in memory: every cipher and MAC seals what it opens, a flipped
bit anywhere is refused, and the framing follows RFC 4253's padding rules. (Interop with
OpenSSH and PuTTY, which proves the formats, is in test_cipher_peers.py.)"""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.ssh2.cipher import CIPHERS, MACS, BadMAC, Opener, PacketError, Sealer, is_aead

KEYS = dict(iv=os.urandom(64), key=os.urandom(64), integrity=os.urandom(64))
NAMES = [c for c in CIPHERS if c != b"none"]
PAIRS = [(c, m) for c, m in itertools.product(NAMES, MACS) if not is_aead(c) or m == b"hmac-sha2-256"]


def pair(cipher: bytes, mac: bytes) -> tuple[Sealer, Opener]:
    return (
        Sealer(cipher, mac, KEYS["iv"], KEYS["key"], KEYS["integrity"]),
        Opener(cipher, mac, KEYS["iv"], KEYS["key"], KEYS["integrity"]),
    )


def send(sealer: Sealer, seq: int, message: int, body: bytes) -> bytes:
    return b"".join(sealer.seal(seq, sealer.frame(message, (body,), 1 + len(body))))


def receive(opener: Opener, seq: int, wire: bytes) -> tuple[int, bytes]:
    length = opener.length(seq, wire[: opener.head])
    assert len(wire) == 4 + length + opener.tail
    packet = opener.open(seq, memoryview(wire))
    padding = packet[0]
    return packet[1], packet[2 : length - padding]


@pytest.mark.parametrize("cipher, mac", PAIRS)
def test_round_trip_over_many_packets_and_sizes(cipher, mac):
    sealer, opener = pair(cipher, mac)
    for seq, size in enumerate((0, 1, 15, 16, 17, 255, 4096, 32768)):
        body = os.urandom(size)
        wire = send(sealer, seq, 94, body)
        assert len(wire) == sealer.wire_size(1 + size)
        assert receive(opener, seq, wire) == (94, body)


@pytest.mark.parametrize("cipher, mac", PAIRS)
def test_padding_rules(cipher, mac):
    sealer, _ = pair(cipher, mac)
    for size in range(1, 40):
        packet = sealer.frame(94, (b"x" * (size - 1),), size)
        padding = packet[4]
        assert padding >= 4
        covered = len(packet) - (4 if sealer.length_in_clear else 0)
        assert covered % sealer.block == 0


@pytest.mark.parametrize("cipher, mac", [p for p in PAIRS if p[0] != b"3des-cbc"])
def test_a_flipped_bit_anywhere_is_refused(cipher, mac):
    sealer, _ = pair(cipher, mac)
    wire = send(sealer, 7, 94, b"attack at dawn" * 3)
    for position in range(0, len(wire), 5):
        _, opener = pair(cipher, mac)
        bad = bytearray(wire)
        bad[position] ^= 0x01
        try:
            length = opener.length(7, bytes(bad[: opener.head]))
        except Exception:
            continue
        if length != len(wire) - 4 - opener.tail:
            continue  # the transport refuses a length that does not fit
        with pytest.raises(BadMAC):
            opener.open(7, memoryview(bytes(bad)))


# AES-GCM is left out: it counts invocations itself instead of using the sequence number.
@pytest.mark.parametrize("cipher", [c for c in NAMES if c.startswith(b"chacha") or b"ctr" in c])
def test_the_sequence_number_is_authenticated(cipher):
    mac = b"hmac-sha2-256-etm@openssh.com"
    sealer, opener = pair(cipher, mac)
    wire = send(sealer, 3, 94, b"data")
    with pytest.raises(BadMAC):
        length = opener.length(4, wire[: opener.head])
        opener.open(4, memoryview(wire[: 4 + length + opener.tail]))


@pytest.mark.parametrize("cipher, mac", [(b"none", b"none"), *PAIRS[::3]])
@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=600), cut=st.integers(min_value=0, max_value=600))
def test_hostile_bytes_end_in_a_reason_never_a_crash(cipher, mac, data, cut):
    """Whatever arrives, in whatever pieces: a payload, "need more", or PacketError/BadMAC."""
    _, opener = pair(cipher, mac)
    buf = bytearray()
    for piece in (data[:cut], data[cut:]):
        buf += piece
        try:
            found = opener.next_payload(0, buf, 256 * 1024)
        except (PacketError, BadMAC):
            return
        if found is not None:
            payload, size = found
            assert size <= len(buf) and len(payload) < size
            return


def test_a_length_beyond_the_limit_is_refused_before_buffering():
    _, opener = pair(b"aes256-gcm@openssh.com", b"")
    with pytest.raises(PacketError, match="bad packet length"):
        opener.next_payload(0, (1 << 30).to_bytes(4, "big"), 256 * 1024)
