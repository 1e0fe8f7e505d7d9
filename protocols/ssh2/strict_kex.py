"""Strict key exchange (OpenSSH's PROTOCOL, section 1.10): the countermeasure to the
Terrapin prefix-truncation attack (CVE-2023-48795), for Conch transports of either role.

Rules, once both sides announced the marker in their first KEXINIT's kex list (the server
``kex-strict-s-v00@openssh.com``, the client ``kex-strict-c-v00@openssh.com``):

- the peer's KEXINIT must be the first packet it sent;
- until the peer's first NEWKEYS, nothing but key-exchange messages may arrive (KEXINIT
  once, NEWKEYS, 30-49) and DISCONNECT; IGNORE, DEBUG and the rest end the connection,
  because an attacker can inject them before any MAC protects the stream;
- each direction's packet sequence number restarts at 0 right after its NEWKEYS, in every
  key exchange, so an injected-then-deleted packet no longer shifts the MAC's counter.

The markers are never chosen as a key exchange: the two names differ, so the usual
first-match negotiation cannot pick one.
"""

from __future__ import annotations

from twisted.conch.ssh import transport
from twisted.logger import Logger

from protocols.ssh2.kexinit import COOKIE_SIZE
from protocols.ssh2.wire import Reader, WireError

log = Logger()

STRICT_KEX_SERVER = b"kex-strict-s-v00@openssh.com"
STRICT_KEX_CLIENT = b"kex-strict-c-v00@openssh.com"

# What may arrive during a strict initial key exchange, besides DISCONNECT.
_KEX_MESSAGES = frozenset((transport.MSG_KEXINIT, transport.MSG_NEWKEYS, *range(30, 50)))


def peer_kex_names(payload: bytes) -> list[bytes]:
    """The key-exchange name-list of a KEXINIT payload (after the message number)."""
    reader = Reader(payload[COOKIE_SIZE:])
    return reader.string(64 * 1024).split(b",")


class StrictKexTransport:
    """Mixin for a Conch SSH transport (put it before Conch's class in the bases).

    The transport must call :meth:`packet_sent` after writing each packet through any path
    that bypasses Conch's ``sendPacket`` (an AEAD framing, say), so that the outgoing
    sequence number restarts after NEWKEYS there too.
    """

    strict_kex = False  # both sides announced the marker
    _strict_offered = False
    _strict_initial = True  # until the peer's first NEWKEYS
    _strict_kexinit_seen = False
    _strict_received = 0  # packets received during the initial key exchange

    isClient: bool
    incomingPacketSequence: int
    outgoingPacketSequence: int

    def sendKexInit(self) -> None:
        if self._strict_offered:
            super().sendKexInit()  # type: ignore[misc]
            return
        # Only the first KEXINIT carries the marker (later ones must not, per the spec).
        self._strict_offered = True
        ours = STRICT_KEX_CLIENT if self.isClient else STRICT_KEX_SERVER
        offered = self.supportedKeyExchanges  # type: ignore[has-type]
        self.supportedKeyExchanges = [*offered, ours]
        try:
            super().sendKexInit()  # type: ignore[misc]
        finally:
            self.supportedKeyExchanges = offered

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if self._strict_initial and not self._strict_check(messageNum, payload):
            return
        super().dispatchMessage(messageNum, payload)  # type: ignore[misc]
        if messageNum == transport.MSG_NEWKEYS:
            self._strict_initial = False
            if self.strict_kex:
                self.incomingPacketSequence = 0

    def _strict_check(self, messageNum: int, payload: bytes) -> bool:
        """False (after disconnecting) when this packet breaks the strict rules."""
        first = self._strict_received == 0
        self._strict_received += 1
        if messageNum == transport.MSG_KEXINIT and not self._strict_kexinit_seen:
            self._strict_kexinit_seen = True
            theirs = STRICT_KEX_SERVER if self.isClient else STRICT_KEX_CLIENT
            try:
                self.strict_kex = theirs in peer_kex_names(payload)
            except WireError:
                return True  # Conch's own parser reports the malformed KEXINIT
            if self.strict_kex and not first:
                self._strict_violation("KEXINIT was not the first packet")
                return False
            return True
        if self.strict_kex and messageNum != transport.MSG_DISCONNECT and (
            messageNum not in _KEX_MESSAGES or messageNum == transport.MSG_KEXINIT
        ):
            self._strict_violation(f"unexpected message {messageNum} during the initial key exchange")
            return False
        return True

    def _strict_violation(self, what: str) -> None:
        self.sendDisconnect(  # type: ignore[attr-defined]
            transport.DISCONNECT_PROTOCOL_ERROR, f"strict KEX violation: {what}".encode("ascii")
        )

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        sequence = self.outgoingPacketSequence
        super().sendPacket(messageType, payload)  # type: ignore[misc]
        if self.outgoingPacketSequence != sequence:  # written, not queued for after NEWKEYS
            self.packet_sent(messageType)

    def packet_sent(self, messageType: int) -> None:
        """A packet of ``messageType`` went out: after NEWKEYS, count again from 0."""
        if messageType == transport.MSG_NEWKEYS and self.strict_kex:
            self.outgoingPacketSequence = 0
