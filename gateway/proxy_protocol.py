"""The PROXY protocol header (v1 and v2) on ``haproxy:`` endpoints.

A load balancer that speaks the PROXY protocol (HAProxy's ``send-proxy`` and
``send-proxy-v2``) opens every connection with a header that names the client's address.
This module owns that header: it reads and checks it before the gateway says anything, and
only then builds and starts the protocol behind it (the version dispatcher), asking its
factory with the client's address and answering ``getPeer()``/``getHost()`` with the
addresses from the header. So everything downstream — the connection record, the flow
record, the SSH-1 and SSH-2 transports, the login context used by authentication and
password fairness, per-source limits — sees the client, not the load balancer, and no
banner is sent before the header is parsed.

Twisted's own ``haproxy:`` wrapper starts the wrapped protocol as soon as the load balancer
connects, before the header: the dispatcher read the load balancer's address and sent its
banner first. Its parsers also let some malformed headers through as tracebacks (a port
that is not a number). :func:`server_endpoint` builds ``haproxy:`` endpoint strings with
this module's wrapper instead; every other endpoint string is Twisted's as before.

The formats are HAProxy's ``proxy-protocol.txt`` (sections 2.1 and 2.2).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from gateway.dispatch import DispatcherFactory

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # bytes, CR LF included (section 2.1)
# The v2 length field allows 64 KiB of address block and TLVs; HAProxy sends a few hundred
# bytes at most, and a connection that has not proven it comes from the load balancer
# should not make the gateway hold more.
V2_MAX_BODY = 4096

_V2_ADDRESS_LENGTH = {1: 12, 2: 36, 3: 216}  # INET, INET6, UNIX (section 2.2)


class ProxyHeaderError(Exception):
    """Bytes that are not a valid PROXY header; the message says what is wrong."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header. ``source`` and ``destination`` are None when the header carries
    no addresses (v2 LOCAL, as in health checks; v1 UNKNOWN; v2 UNSPEC): the connection's
    own addresses stand then, as the specification asks."""

    version: int
    source: IAddress | None
    destination: IAddress | None
    # v2 LOCAL: the proxy's own connection, not one it relays (HAProxy's health checks).
    local: bool = False


class ProxyHeaderParser:
    """Sans-I/O: fed the first bytes of a connection, returns the header and the bytes
    after it once the header is complete, None while more is needed, and raises
    :class:`ProxyHeaderError` as soon as the bytes cannot begin a valid header."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        self.buffer += data
        buffer = self.buffer
        if buffer[:12] == V2_SIGNATURE[: len(buffer)]:
            return self._feed_v2()
        if buffer[:6] == V1_PREFIX[: len(buffer)]:
            return self._feed_v1()
        raise ProxyHeaderError("no PROXY header (the connection did not come through the proxy)")

    def _feed_v1(self) -> tuple[ProxyHeader, bytes] | None:
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) >= V1_MAX:
                raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX} bytes")
            return None
        if end + 1 > V1_MAX:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX} bytes")
        if self.buffer[end - 1 : end] != b"\r":
            raise ProxyHeaderError("PROXY v1 header not ended by CR LF")
        line, rest = self.buffer[: end - 1], self.buffer[end + 1 :]
        self.buffer = b""
        return parse_v1(line), rest

    def _feed_v2(self) -> tuple[ProxyHeader, bytes] | None:
        buffer = self.buffer
        if len(buffer) < 16:
            return None
        if buffer[12] >> 4 != 2:
            raise ProxyHeaderError(f"PROXY v2 header of unknown version {buffer[12] >> 4}")
        length = int.from_bytes(buffer[14:16], "big")
        if length > V2_MAX_BODY:
            raise ProxyHeaderError(f"PROXY v2 header of {length} bytes (at most {V2_MAX_BODY})")
        if len(buffer) < 16 + length:
            return None
        header, rest = buffer[: 16 + length], buffer[16 + length :]
        self.buffer = b""
        return parse_v2(header), rest


def parse_v1(line: bytes) -> ProxyHeader:
    """``PROXY TCP4|TCP6 SRC DST SPORT DPORT`` or ``PROXY UNKNOWN …``, without CR LF."""
    fields = line.split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return ProxyHeader(1, None, None)
    if len(fields) != 6 or fields[0] != b"PROXY" or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 header")
    version = 4 if fields[1] == b"TCP4" else 6
    source = _ip_address(fields[2], version)
    destination = _ip_address(fields[3], version)
    source_port, destination_port = _port(fields[4]), _port(fields[5])
    return ProxyHeader(
        1, tcp_address(source, source_port), tcp_address(destination, destination_port)
    )


def tcp_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> IAddress:
    """Twisted's address for ``ip``; an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, from
    a load balancer listening on IPv6) becomes the IPv4 one, so that a client has one
    address for logs and per-source limits whichever way the load balancer saw it."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return IPv4Address("TCP", str(ip), port)
    return IPv6Address("TCP", str(ip), port)


def _ip_address(text: bytes, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        parsed = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("PROXY v1 header with a malformed address") from None
    if parsed.version != version:
        raise ProxyHeaderError(f"PROXY v1 header with a non-IPv{version} address for TCP{version}")
    return parsed


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError("PROXY v1 header with a malformed port")
    return int(text)


def parse_v2(header: bytes) -> ProxyHeader:
    """A whole v2 header: signature, version and command, family and transport, length,
    then the address block (and TLVs, which the gateway does not use)."""
    command = header[12] & 0x0F
    if command == 0:  # LOCAL: the proxy's own connection (health checks)
        return ProxyHeader(2, None, None, local=True)
    if command != 1:
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    family, transport = header[13] >> 4, header[13] & 0x0F
    if family == 0 or transport == 0:  # UNSPEC: no address to report
        return ProxyHeader(2, None, None)
    if transport != 1:
        raise ProxyHeaderError("PROXY v2 header for a datagram connection")
    needed = _V2_ADDRESS_LENGTH.get(family)
    if needed is None:
        raise ProxyHeaderError(f"PROXY v2 header with unknown address family {family}")
    block = header[16:]
    if len(block) < needed:
        raise ProxyHeaderError("PROXY v2 header shorter than its address block")
    if family == 3:
        return ProxyHeader(
            2, UNIXAddress(block[:108].rstrip(b"\0")), UNIXAddress(block[108:216].rstrip(b"\0"))
        )
    size = 4 if family == 1 else 16
    source = ipaddress.ip_address(block[:size])
    destination = ipaddress.ip_address(block[size : 2 * size])
    ports = block[2 * size : 2 * size + 4]
    return ProxyHeader(
        2,
        tcp_address(source, int.from_bytes(ports[:2], "big")),
        tcp_address(destination, int.from_bytes(ports[2:], "big")),
    )


def describe(address: IAddress) -> str:
    """``host:port`` as the connection record writes a peer."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class ProxyHeaderProtocol(policies.ProtocolWrapper):
    """One connection from the load balancer: reads the header under the version timeout,
    then builds the real protocol for the client's address and stands between it and the
    socket as its transport."""

    log = Logger()
    factory: ProxyHeaderFactory

    def __init__(self, factory: ProxyHeaderFactory, proxy_address: IAddress) -> None:
        # No wrapped protocol yet: it is built for the client's address, once known.
        super().__init__(factory, None)  # type: ignore[arg-type]
        self.proxy_address = proxy_address
        self.header: ProxyHeader | None = None
        self.parser = ProxyHeaderParser()
        self.timer: IDelayedCall | None = None
        self.closing = False  # refused or timed out: what still arrives is dropped

    def logPrefix(self) -> str:
        return "ProxyHeaderProtocol"

    def makeConnection(self, transport: object) -> None:
        # ProtocolWrapper.makeConnection without starting the wrapped protocol.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        dispatcher = self.factory.wrappedFactory
        self.timer = dispatcher.clock.callLater(dispatcher.version_timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.closing:
            return
        try:
            parsed = self.parser.feed(data)
        except ProxyHeaderError as e:
            self._refuse(str(e))
            return
        if parsed is None:
            return
        self._cancel_timer()
        self.header, rest = parsed
        inner = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if inner is None:  # the factory refused this client (it says why itself)
            self.closing = True
            self.transport.loseConnection()
            return
        self.wrappedProtocol = inner
        inner.makeConnection(self)
        if rest:
            inner.dataReceived(rest)

    @property
    def health_check(self) -> bool:
        """The load balancer's own connection (a v2 LOCAL header): a health check, unless
        it goes on to speak SSH."""
        return self.header is not None and self.header.local

    def getPeer(self) -> IAddress:
        if self.header is not None and self.header.source is not None:
            return self.header.source
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        if self.header is not None and self.header.destination is not None:
            return self.header.destination
        return self.transport.getHost()

    def _refuse(self, reason: str) -> None:
        self.log.info(
            "refusing {proxy} (PROXY listener): {reason}",
            proxy=describe(self.proxy_address),
            reason=reason,
        )
        self._cancel_timer()
        self.closing = True
        self.transport.loseConnection()

    def _timed_out(self) -> None:
        self.timer = None
        self.closing = True
        self.log.info(
            "{proxy} (PROXY listener): no complete PROXY header within the version timeout",
            proxy=describe(self.proxy_address),
        )
        self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_timer()
        self.factory.unregisterProtocol(self)
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)
            self.wrappedProtocol = None  # type: ignore[assignment]
        elif not self.closing and self.parser.buffer:
            self.log.info(
                "{proxy} (PROXY listener): closed in the middle of its PROXY header",
                proxy=describe(self.proxy_address),
            )


class ProxyHeaderFactory(policies.WrappingFactory):
    """Wraps the version dispatcher's factory on a ``haproxy:`` listener; the header gets
    the dispatcher's version timeout, on its clock."""

    protocol = ProxyHeaderProtocol  # type: ignore[assignment]
    noisy = False
    wrappedFactory: DispatcherFactory

    def buildProtocol(self, addr: IAddress) -> ProxyHeaderProtocol:
        return ProxyHeaderProtocol(self, addr)


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """A server endpoint whose connections start with a PROXY header."""

    def __init__(self, wrapped: IStreamServerEndpoint) -> None:
        self.wrapped = wrapped

    def listen(self, factory: DispatcherFactory) -> Deferred[IListeningPort]:
        return self.wrapped.listen(ProxyHeaderFactory(factory))


def server_endpoint(reactor: object, description: str) -> IStreamServerEndpoint:
    """Twisted's ``serverFromString``, except that ``haproxy:ENDPOINT`` (Twisted's prefix,
    matched without regard to case as Twisted does) puts this module's header reader in
    front of ENDPOINT."""
    prefix, colon, rest = description.partition(":")
    if colon and prefix.lower() == "haproxy":
        return ProxyHeaderEndpoint(serverFromString(reactor, rest))
    return serverFromString(reactor, description)
