"""What the gateway's SSH-2 server transport and its client transport share on top of
Conch: packet framing through protocols.ssh2.cipher's Opener/Sealer (with its errors
mapped to DISCONNECTs), sending with RFC 4253 section 7.1's hold during a key exchange,
message names for the flow record, the ephemeral Diffie-Hellman key made directly, and
the Conch key-exchange facts both ask (through the wrappers here: this module and the
client are where Conch's private API is used).

Mixed in before Conch's SSHServerTransport / SSHClientTransport, after StrictKexTransport
and RekeyingTransport.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib
from typing import Any

from twisted.conch.ssh import _kex, transport
from twisted.conch.ssh.common import MP
from zope.interface import implementer

from protocols.flow import SSH2_NAMES, FlowRecorder, ssh2_name
from protocols.ssh2.cipher import BadMAC, KeyedCiphers, PacketError
from protocols.ssh2.rekey import RekeyingTransport
from protocols.ssh2.strict_kex import StrictKexTransport

# Private DH exponent size: 2 x 256 bits of strength (aes256, sha512; RFC 4419 sec. 6.2).
DH_EXPONENT_BITS = 512


@implementer(_kex._IFixedGroupKexAlgorithm)
class _DHGroup1SHA1:
    """diffie-hellman-group1-sha1 (RFC 4253 section 8.1): Oakley group 2 (RFC 2409
    section 6.2), 1024 bits. Weak; only for devices that offer nothing else (the client
    registry's legacy row)."""

    preference = 99
    hashProcessor = hashlib.sha1
    generator = 2
    prime = int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22"
        "514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6"
        "F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381"
        "FFFFFFFFFFFFFFFF",
        16,
    )


_kex._kexAlgorithms.setdefault(b"diffie-hellman-group1-sha1", _DHGroup1SHA1())


def supported_key_exchanges() -> set[bytes]:
    """The key exchanges Conch and cryptography can run in this build (ML-KEM needs
    cryptography >= 48), group1-sha1 included."""
    return set(_kex.getSupportedKeyExchanges())


def is_group_exchange(kex: bytes) -> bool:
    """diffie-hellman-group-exchange-*: the server chooses the group (RFC 4419)."""
    return _kex.isDynamicPrimesGroup(kex)


class SSH2TransportBase(StrictKexTransport, RekeyingTransport):
    """Framing, sending and ephemeral DH for both ends. Subclasses say which way their
    packets go in the flow record (``flow_out``), how large a packet they accept
    (``max_packet``), and may refine :meth:`_check_dh_group` / :meth:`_dh_value_refused`."""

    flow_out: str  # protocols.flow.C2S or S2C: the direction of the packets we send
    max_packet: int
    dh_peer = "peer"  # who sent a bad DH value, for the exception text
    _disconnecting = False  # the server stops sending once its DISCONNECT is out
    _in_size = 0  # wire bytes of the packet taken last
    _inbuf: bytearray  # received, not yet taken (take_message)

    def flow_recorder(self) -> FlowRecorder | None:
        raise NotImplementedError

    # -- packets in ----------------------------------------------------------------------

    def _ciphers(self) -> KeyedCiphers:
        enc = self.currentEncryptions
        if not isinstance(enc, KeyedCiphers):  # Conch's initial plain state
            enc = self.currentEncryptions = KeyedCiphers.plain()
        return enc

    def take_message(self) -> tuple[int, bytes] | None:
        """The next whole packet in the receive buffer as (message number, the rest of
        the payload), taken out of it and counted; None for "need more" or after a
        DISCONNECT for a bad MAC or length.

        The buffer (``_inbuf``) is a bytearray the transport appends what it receives to
        and consumed from the front, which only moves its start: each byte received is
        copied into it once, and not the whole buffer again per packet or per read as
        with Conch's ``buf + data`` and ``buf[size:]``."""
        found = self._take(self._ciphers().opener.next_message)
        return None if found is None else found[:2]

    def take_payload(self) -> bytes | None:
        """As :meth:`take_message`, the payload whole (a compressed one is inflated so)."""
        found = self._take(self._ciphers().opener.next_payload)
        return None if found is None else found[0]

    def _take(self, opener_next: Any) -> Any:
        seq = self.incomingPacketSequence
        try:
            found = opener_next(seq, self._inbuf, self.max_packet)
        except BadMAC:
            self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")
            return None
        except PacketError as e:
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR, str(e).encode("ascii", "replace")
            )
            return None
        if found is None:
            return None
        size = found[-1]
        del self._inbuf[:size]
        self.incomingPacketSequence = (seq + 1) & 0xFFFFFFFF
        self._in_size = size
        self.count_for_rekey(size)
        return found

    def flow_name(self, number: int) -> str:
        """The name of message ``number`` for the flow record (30-49 and 60-79 depend on
        the key exchange and the auth method in progress)."""
        name = SSH2_NAMES.get(number)
        if name is not None:
            return name
        flow = self.flow_recorder()
        kex = (getattr(self, "kexAlg", None) or b"").decode("ascii", "replace")
        return ssh2_name(number, kex, flow.auth_method if flow is not None else "")

    # -- packets out ---------------------------------------------------------------------

    def key_exchange_in_progress(self) -> bool:
        return self._keyExchangeState != self._KEY_EXCHANGE_NONE

    def _newKeys(self) -> None:
        super()._newKeys()
        self.keys_changed()

    def keys_changed(self) -> None:
        """NEWKEYS has put the new keys and compression in use (both directions)."""

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        self.send_parts(messageType, (payload,))

    def send_parts(self, messageType: int, parts: tuple[bytes, ...]) -> None:
        """Send one packet whose payload is ``parts`` joined, with a single join: channel
        data is passed as (header, data) so it is copied once into the packet."""
        if self._disconnecting or self.transport is None:
            return
        if self.key_exchange_in_progress() and not (
            self._allowedKeyExchangeMessageType(messageType)
        ):
            # RFC 4253 section 7.1: held back until NEWKEYS; Conch's _newKeys sends them.
            self._blockedByKeyExchange.append((messageType, b"".join(parts)))
            return
        first = messageType
        if self.outgoingCompression is not None:
            # The whole payload, message number included, is compressed.
            compressor = self.outgoingCompression
            data = bytes((messageType,)) + b"".join(parts)
            data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            first, parts = data[0], (data[1:],)
        seq = self.outgoingPacketSequence
        wire = self._ciphers().sealer.packet(seq, first, parts)
        self.transport.writeSequence(wire)
        self.outgoingPacketSequence = (seq + 1) & 0xFFFFFFFF
        self.packet_sent(messageType)
        size = sum(map(len, wire))
        flow = self.flow_recorder()
        if flow is not None:
            flow.packet(self.flow_out, self.flow_name(messageType), size)
        self.count_for_rekey(size)

    # -- ephemeral Diffie-Hellman ----------------------------------------------------------

    def start_ephemeral_dh(self) -> None:
        """Our DH key pair for the group in (self.g, self.p)."""
        self._startEphemeralDH()

    def _check_dh_group(self) -> None:
        """Raise if the group (self.g, self.p) must not be used; the server's own groups
        are known-good."""

    def _dh_value_refused(self) -> None:
        """The peer's DH value or the shared secret was degenerate (before the raise)."""

    def _startEphemeralDH(self) -> None:
        # cryptography validates arbitrary DH parameters (primality of p and (p-1)/2) on
        # every key generation: 0.7 s for a 2048-bit group from /etc/ssh/moduli, seconds
        # for 3072 and minutes for 8192 (only the RFC 3526 groups are exempt). The key is
        # made directly, once the group passed _check_dh_group.
        self._check_dh_group()
        self.dhSecretKey = secrets.randbits(DH_EXPONENT_BITS) | (1 << (DH_EXPONENT_BITS - 1))
        self.dhSecretKeyPublicMP = MP(pow(self.g, self.dhSecretKey, self.p))

    def _finishEphemeralDH(self, remoteDHpublicKey: int) -> bytes:
        if not 1 < remoteDHpublicKey < self.p - 1:
            self._dh_value_refused()
            raise ValueError(f"{self.dh_peer} DH public value out of range")
        secret = pow(remoteDHpublicKey, self.dhSecretKey, self.p)
        del self.dhSecretKey
        if secret in (1, self.p - 1):
            self._dh_value_refused()
            raise ValueError("degenerate DH shared secret")
        return MP(secret)


