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
