"""The SSH-2 receive buffer both transports share (SSH2TransportBase.take_message), in
memory: packets split at every byte boundary, and several packets in one read, come out
whole, in order and once each, for the gateway's server transport and its client
transport (the client also with the device's version line in the same read as its first
packets). The packets are made by our Sealer (which the peer tests hold to OpenSSH and
PuTTY) for every kind of packet protection, and by Conch's own encoder for the plain and
the encrypt-and-MAC forms. Against real peers the same code carries the bulk transfers
of test_cipher_peers.py and test_target_ssh2_openssh.py.
"""

from __future__ import annotations

import os
import struct
from unittest import mock

import pytest
from twisted.conch.ssh import common, transport
from twisted.conch.ssh.transport import SSHCiphers
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport

from protocols.session import SessionRequest
from protocols.ssh2.cipher import KeyedCiphers, Opener, Sealer
from protocols.ssh2.client import SSH2ClientTransport
from protocols.ssh2.client_state import ClientAttempt, SSH2ClientOptions
from tests.support.ssh2.harness import fresh_transport

IV, KEY, INTEGRITY = os.urandom(16), os.urandom(64), os.urandom(64)
# Bodies of IGNORE messages: a 1-byte payload and ones around block and MAC sizes.
BODIES = [b"", b"a", b"x" * 11, b"y" * 16, b"z" * 300]
PROTECTIONS = [
    (b"none", b"none"),
    (b"aes128-ctr", b"hmac-sha2-256"),  # encrypt-and-MAC: the first block apart
    (b"aes256-ctr", b"hmac-sha2-512-etm@openssh.com"),
    (b"aes128-cbc", b"hmac-sha1"),  # legacy devices
    (b"3des-cbc", b"hmac-md5-96"),
    (b"aes256-gcm@openssh.com", b"none"),
    (b"chacha20-poly1305@openssh.com", b"none"),
]


def payloads(rounds: int) -> list[bytes]:
    return [bytes([transport.MSG_IGNORE]) + common.NS(body) for _ in range(rounds) for body in BODIES]


def sealed(cipher: bytes, mac: bytes, messages: list[bytes]) -> list[bytes]:
    """Each payload as a packet on the wire, sequence numbers from 0, by our Sealer."""
    if cipher == b"none":
        sealer = KeyedCiphers.plain().sealer
    else:
        sealer = Sealer(cipher, mac, IV, KEY, INTEGRITY)
    return [b"".join(sealer.packet(seq, m[0], (m[1:],))) for seq, m in enumerate(messages)]


def conch_sealed(cipher: bytes, mac: bytes, messages: list[bytes]) -> list[bytes]:
    """The same by Conch's own encoder (its SSHTransportBase.sendPacket, without the
    transport): encrypt-and-MAC only, as Conch knows no other form."""
    ciphers = SSHCiphers(cipher, cipher, mac, mac)
    ciphers.setKeys(IV, KEY, IV, KEY, INTEGRITY, INTEGRITY)
    out = []
    for seq, payload in enumerate(messages):
        block = ciphers.encBlockSize
        total = 5 + len(payload)
        padding = block - total % block
        if padding < 4:
            padding += block
        packet = struct.pack("!LB", total + padding - 4, padding) + payload + os.urandom(padding)
        out.append(ciphers.encrypt(packet) + ciphers.makeMAC(seq, packet))
    return out


def keyed(proto, cipher: bytes, mac: bytes) -> None:
    """Both directions under the test's keys, as after a NEWKEYS."""
    if cipher == b"none":
        proto.currentEncryptions = KeyedCiphers.plain()
        return
    enc = KeyedCiphers(cipher, cipher, mac, mac)
    enc.setKeys(IV, KEY, IV, KEY, INTEGRITY, INTEGRITY)
    proto.currentEncryptions = enc


def recording_ignores(proto) -> list[bytes]:
    """What the transport dispatches as IGNORE (the body, after the message number)."""
    seen: list[bytes] = []
    proto.ssh_IGNORE = seen.append
    return seen


def server(cipher: bytes, mac: bytes):
    _, proto, t = fresh_transport()
    keyed(proto, cipher, mac)
    proto.incomingPacketSequence = 0
    return proto, t


def client(cipher: bytes | None = None, mac: bytes = b"none"):
    """The gateway's client transport, connected; its device's version line already read
    unless ``cipher`` is None."""
    options = SSH2ClientOptions(
        host="device", port=22, username="u",
        verify_host_key=lambda key: defer.succeed(lambda: None),
        kex=(b"curve25519-sha256",), host_key_algorithms=(b"ssh-ed25519",),
        ciphers=(b"aes128-ctr",), macs=(b"hmac-sha2-256",),
    )  # fmt: skip
    attempt = ClientAttempt(options, SessionRequest(), mock.Mock(), MemoryReactorClock())
    proto = SSH2ClientTransport(attempt)
    t = StringTransport()
    proto.makeConnection(t)
    if cipher is not None:
        proto.dataReceived(b"SSH-2.0-device\r\n")
        keyed(proto, cipher, mac)
        proto.incomingPacketSequence = 0
    return proto, t


def feed_split_everywhere(proto, packets: list[bytes], group: int) -> None:
    """Feed ``packets`` in runs of ``group`` packets; run number r is split in two at byte
    r (modulo its length), so that together the runs are cut at every byte boundary, and
    the second part of each cut holds several packets."""
    runs = [b"".join(packets[i : i + group]) for i in range(0, len(packets), group)]
    for r, run in enumerate(runs):
        cut = r % len(run)
        proto.dataReceived(run[:cut])
        proto.dataReceived(run[cut:])


def rounds_for(packets_per_round: list[bytes]) -> int:
    """Enough rounds of the bodies that a cut falls at every byte of one round's wire."""
    return len(b"".join(packets_per_round)) + 1


@pytest.mark.parametrize("cipher, mac", PROTECTIONS)
@pytest.mark.parametrize("side", ["server", "client"])
def test_every_split_and_several_packets_per_read(side, cipher, mac):
    one_round = sealed(cipher, mac, payloads(1))
    messages = payloads(rounds_for(one_round))
    packets = sealed(cipher, mac, messages)
    proto, t = server(cipher, mac) if side == "server" else client(cipher, mac)
    seen = recording_ignores(proto)
    feed_split_everywhere(proto, packets, len(BODIES))
    assert seen == [m[1:] for m in messages]
    assert proto.incomingPacketSequence == len(messages)
    assert not t.disconnecting
    assert len(proto._inbuf) == 0


@pytest.mark.parametrize("cipher, mac", PROTECTIONS)
@pytest.mark.parametrize("side", ["server", "client"])
def test_one_byte_at_a_time_then_all_in_one_read(side, cipher, mac):
    messages = payloads(2)
    packets = sealed(cipher, mac, messages)
    half = len(packets) // 2
    proto, t = server(cipher, mac) if side == "server" else client(cipher, mac)
    seen = recording_ignores(proto)
    stream = b"".join(packets[:half])
    for i in range(len(stream)):
        proto.dataReceived(stream[i : i + 1])
    assert seen == [m[1:] for m in messages[:half]]
    proto.dataReceived(b"".join(packets[half:]))
    assert seen == [m[1:] for m in messages]
    assert not t.disconnecting


@pytest.mark.parametrize("cipher, mac", [(b"none", b"none"), (b"aes128-ctr", b"hmac-sha2-256"),
                                         (b"aes256-cbc", b"hmac-sha2-512")])
@pytest.mark.parametrize("side", ["server", "client"])
def test_conchs_own_packets_split_everywhere(side, cipher, mac):
    one_round = conch_sealed(cipher, mac, payloads(1))
    messages = payloads(rounds_for(one_round))
    packets = conch_sealed(cipher, mac, messages)
    proto, t = server(cipher, mac) if side == "server" else client(cipher, mac)
    seen = recording_ignores(proto)
    feed_split_everywhere(proto, packets, len(BODIES))
    assert seen == [m[1:] for m in messages]
    assert not t.disconnecting


def test_client_reads_the_packets_that_came_with_the_version_line_at_every_split():
    messages = payloads(1)
    stream = b"SSH-2.0-device\r\n" + b"".join(sealed(b"none", b"none", messages))
    for cut in range(len(stream) + 1):
        proto, t = client()
        seen = recording_ignores(proto)
        proto.dataReceived(stream[:cut])
        proto.dataReceived(stream[cut:])
        assert proto.otherVersionString == b"SSH-2.0-device"
        assert seen == [m[1:] for m in messages], cut
        assert not t.disconnecting


@pytest.mark.parametrize("side", ["server", "client"])
def test_bulk_packets_of_32_kib_in_64_kib_reads(side):
    cipher, mac = b"aes128-ctr", b"hmac-sha2-256"
    bodies = [os.urandom(32768) for _ in range(9)]
    messages = [bytes([transport.MSG_IGNORE]) + common.NS(body) for body in bodies]
    stream = b"".join(sealed(cipher, mac, messages))
    proto, t = server(cipher, mac) if side == "server" else client(cipher, mac)
    seen = recording_ignores(proto)
    for i in range(0, len(stream), 65536):
        proto.dataReceived(stream[i : i + 65536])
    assert seen == [common.NS(body) for body in bodies]
    assert len(proto._inbuf) == 0 and not t.disconnecting


@pytest.mark.parametrize("side", ["server", "client"])
def test_a_bad_mac_after_good_packets_in_the_same_read_disconnects(side):
    cipher, mac = b"aes128-ctr", b"hmac-sha2-256"
    messages = payloads(1)
    packets = sealed(cipher, mac, messages)
    packets[2] = packets[2][:-1] + bytes([packets[2][-1] ^ 1])
    proto, t = server(cipher, mac) if side == "server" else client(cipher, mac)
    seen = recording_ignores(proto)
    written, seq = len(t.value()), proto.outgoingPacketSequence
    proto.dataReceived(b"".join(packets))
    assert seen == [m[1:] for m in messages[:2]]  # nothing after the bad packet
    assert t.disconnecting
    # What went out since: our DISCONNECT, sealed under the same keys.
    opener = Opener(cipher, mac, IV, KEY, INTEGRITY)
    payload, _ = opener.next_payload(seq, t.value()[written:], 1 << 20)
    assert payload[0] == transport.MSG_DISCONNECT
    assert struct.unpack(">L", payload[1:5])[0] == transport.DISCONNECT_MAC_ERROR
    assert common.getNS(payload[5:])[0] == b"bad MAC"
