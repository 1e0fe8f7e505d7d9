"""How the gateway's version-exchange dispatcher hands a connection to a protocol.

The dispatcher owns the identification exchange (it must, to announce ``SSH-1.99``):
it sends the server's line, reads the client's, and then gives the connection to the
protocol that the client's version selects, together with both lines exactly as sent
(without CR LF) and any bytes that arrived after the client's line.
"""

from __future__ import annotations

from twisted.internet.interfaces import IProtocol
from zope.interface import Interface

from protocols.record import ConnectionRecord


class IHandoffFactory(Interface):
    def build_protocol(
        record: ConnectionRecord, server_version: bytes, client_version: bytes
    ) -> IProtocol:
        """A protocol for a connection whose version lines were already exchanged.

        The dispatcher then calls ``makeConnection(transport)`` (the protocol must not send
        a version line of its own), ``dataReceived(rest)`` with bytes already read, and
        forwards every later ``dataReceived`` and ``connectionLost``.
        """


class IDrainable(Interface):
    """What a handed-over protocol offers the gateway's shutdown drain (gateway.lifecycle):
    tell the people in its sessions, and end the connection the protocol's clean way."""

    def has_session() -> bool:
        """Whether the client has a session (shell, command, forwarding) open; a connection
        still in key exchange or login has none and is closed at once at shutdown."""

    def tell_sessions(message: str) -> None:
        """Write ``message`` (one line, no line end) on the stderr of every open session."""

    def disconnect_by_application(reason: str) -> None:
        """Send the protocol's DISCONNECT with ``reason`` and close the connection once it
        is written (SSH-2: reason code 11, by application; SSH-1: SMSG_DISCONNECT)."""
