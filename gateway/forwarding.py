"""Jump-host forwarding: which destination an SSH-2 ``direct-tcpip`` channel may reach,
and the TCP leg that carries it.

:func:`choose_destination` owns the matching: a destination ``HOST:PORT`` names one of
the user's targets when HOST is the target's name, its ``host`` or one of its
``aliases`` (hosts compared without case, :func:`protocols.forwarding.same_host`) and
PORT is its port; else it may be one of the user's ``permit_open`` entries (the rule
SSH-1's ``permit_open`` uses). Anything else is refused (:class:`ForwardRefused`).

For an ``ssh2`` target the channel becomes a plain TCP connection to the device
(:class:`TcpForward`): the client's own SSH-2 session runs end to end through it and the
gateway sees bytes only. For an ``ssh1`` or ``telnet`` target the gateway answers inside
the channel as that target's SSH-2 server (:mod:`gateway.inner_ssh2`; the Router picks
it by the destination's ``protocol``). ``local`` is never a jump destination.

:class:`TcpForward` is the channel's :class:`ISessionTarget` (the session model of
``protocols/session.py``, so flow control works as for sessions): device bytes go to
``client.write_stdout``, the device's read side is paused while the client's window is
used up, and the channel's input is paused while the TCP send buffer is full or the
connection is not up yet. Each forward is one flow record (role ``client``, protocol
``tcp``) linked to the outer connection's record, with bytes each way and duration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from protocols.flow import C2S, S2C, FlowRecorder
from protocols.forwarding import ForwardRefused, host_port, permits, same_host
from protocols.session import ExitInfo, ISessionClient, ISessionTarget, WindowSize

log = Logger()

FORWARD_PROTOCOL = "tcp"  # the flow record's protocol of a forwarded connection
DEFAULT_CONNECT_TIMEOUT = 10.0
# Client bytes held while the TCP connection is being made. The channel's window bounds
# them already (input is paused, so no window is granted); this is the belt to it.
MAX_PENDING = 4 * 1024 * 1024


@dataclass(frozen=True)
class Destination:
    """Where a permitted forward connects: ``target`` is the target's name and
    ``protocol`` its protocol, both None for a ``permit_open`` entry."""

    host: str
    port: int
    target: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    protocol: str | None = None


def _names(config: Any) -> Iterable[str]:
    yield config.name
    if config.host:
        yield config.host
    yield from getattr(config, "aliases", ())


def choose_destination(
    username: str,
    host: str,
    port: int,
    targets: Mapping[str, Any],
    allowed: Iterable[str],
    permit_open: Iterable[str] = (),
) -> Destination:
    """Where ``username``'s forward to ``host:port`` goes; raises ForwardRefused (with the
    reason for the log) when it may not. ``targets``: TargetConfig by name; ``allowed``:
    the user's target names."""
    for name in allowed:
        config = targets.get(name)
        if config is None or config.protocol == "local":
            continue
        if port != config.port or not any(same_host(host, n) for n in _names(config)):
            continue
        return Destination(
            config.host, config.port, name, config.connect_timeout, config.protocol
        )
    if permits(permit_open, host, port):
        return Destination(host, port)
    raise ForwardRefused(f"{host_port(host, port)} is neither a target of {username} nor permitted")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:300]


@implementer(IHalfCloseableProtocol)
class _DeviceProtocol(Protocol):
    def __init__(self, forward: TcpForward) -> None:
        self.forward = forward

    def connectionMade(self) -> None:
        self.forward._connected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.forward._from_device(data)

    def readConnectionLost(self) -> None:
        self.forward._device_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.forward._device_closed(reason)


@implementer(ISessionTarget)
class TcpForward:
    """One forwarded channel's TCP connection to ``destination``. ``connect`` takes a
    protocol factory and returns a Deferred (HostnameEndpoint(...).connect by default;
    tests pass their own). ``flow_done`` writes the flow record when the forward ends."""

    def __init__(
        self,
        reactor: Any,
        username: str,
        destination: Destination,
        client: ISessionClient,
        *,
        flow_done: Callable[[FlowRecorder], None] | None = None,
        connect: Callable[[Factory], defer.Deferred] | None = None,
    ) -> None:
        self.username = username
        self.destination = destination
        self.client = client
        self.where = host_port(destination.host, destination.port)
        self._flow_done = flow_done
        self.flow: FlowRecorder | None = None
        if flow_done is not None:
            self.flow = FlowRecorder(
                "client", self.where, FORWARD_PROTOCOL, link=getattr(client, "flow_id", None)
            )
            self.flow.user = username
            self.flow.target = destination.target
            self.flow.request("direct-tcpip", "success")
            self.flow.next_stage("interaction")
        self.transport: Any = None
        self._input: Any = None  # the channel, as the producer of client bytes
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._eof_pending = False
        self._closed = False
        self._device_read_done = False
        if connect is None:
            endpoint = HostnameEndpoint(
                reactor, destination.host, destination.port, timeout=destination.connect_timeout
            )
            connect = endpoint.connect
        factory = Factory.forProtocol(lambda: _DeviceProtocol(self))
        self._connecting: defer.Deferred | None = connect(factory)
        self._connecting.addErrback(self._connect_failed)

    # -- the device side -------------------------------------------------------------------

    def _connected(self, transport: Any) -> None:
        self._connecting = None
        if self._closed:
            transport.abortConnection()
            return
        self.transport = transport
        log.info(
            "forward: {user} -> {where}{target}: connected",
            user=self.username,
            where=self.where,
            target=f" (target {self.destination.target})" if self.destination.target else "",
        )
        pending, self._pending, self._pending_size = self._pending, [], 0
        if pending:
            transport.writeSequence(pending)
        if self._eof_pending:
            self._half_close()
        # Device -> client: paused while the client's window is used up.
        self.client.registerProducer(transport, True)
        # Client -> device: paused while the TCP send buffer is full.
        if self._input is not None:
            transport.registerProducer(self._input, True)
            self._input.resumeProducing()

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self._closed:
            return
        log.info(
            "forward: {user} -> {where}: connect failed: {error}",
            user=self.username,
            where=self.where,
            error=failure.getErrorMessage(),
        )
        self._finish("connect failed: " + failure.getErrorMessage())

    def _from_device(self, data: bytes) -> None:
        if self.flow is not None:
            self.flow.packet(S2C, "data", len(data))
        self.client.write_stdout(data)

    def _device_eof(self) -> None:
        self._device_read_done = True
        self.client.send_eof()

    def _device_closed(self, reason: Failure | None) -> None:
        self.transport = None
        self._finish("device closed the connection")

    def _finish(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._input = None
        self.client.unregisterProducer()
        self.client.exited(ExitInfo(status=0))
        self._write_flow(reason)

    def _write_flow(self, reason: str) -> None:
        flow, self.flow = self.flow, None
        if flow is None or self._flow_done is None:
            return
        flow.close(reason)
        self._flow_done(flow)

    def _half_close(self) -> None:
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
        else:
            self.transport.loseConnection()

    # -- ISessionTarget: the channel side ---------------------------------------------------

    def write_stdin(self, data: bytes) -> None:
        if self._closed or not data:
            return
        if self.flow is not None:
            self.flow.packet(C2S, "data", len(data))
        if self.transport is not None:
            self.transport.write(data)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > MAX_PENDING:
            log.info("forward: {where}: too much data before connecting", where=self.where)
            self.close()

    def close_stdin(self) -> None:
        if self._closed:
            return
        if self.transport is None:
            self._eof_pending = True
        else:
            self._half_close()

    def resize(self, size: WindowSize) -> None:
        pass

    def send_signal(self, name: str) -> None:
        pass

    def close(self) -> None:
        """The channel is closed: drop the connection (or the attempt)."""
        if self._closed:
            return
        self._closed = True
        registered, self._input = self._input is not None, None
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        transport, self.transport = self.transport, None
        if transport is not None:
            if registered:
                transport.unregisterProducer()
            transport.loseConnection()
        self._write_flow("channel closed")

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._input = producer
        if self.transport is None:
            producer.pauseProducing()  # nothing granted until the device is there
        else:
            self.transport.registerProducer(producer, True)

    def unregisterProducer(self) -> None:
        self._input = None
        if self.transport is not None:
            self.transport.unregisterProducer()


__all__ = ["Destination", "ForwardRefused", "TcpForward", "choose_destination"]
