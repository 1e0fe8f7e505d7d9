"""The gateway's own SSH-2 server inside a jump channel, for SSH-1 and telnet targets.

A ``direct-tcpip`` channel (``ssh -J alice@gw admin@dev1``) to a target that speaks no
SSH-2 cannot carry the client's session to the device. The gateway answers inside the
channel itself: the channel's bytes are the transport of an SSH-2 server connection
(the front end's :class:`protocols.ssh2.factory.SSH2ServerFactory`, same algorithm
settings and limits), whose sessions go to the target through the Router exactly as
``alice+dev1``'s would.

This module owns:

- :class:`ChannelTransport`, the ITransport the inner connection writes to: its bytes
  go out as channel data, its producer is paused while the client's channel window (or
  the outer TCP buffer) is used up, ``loseConnection`` ends the channel;
- :class:`InnerConnection`, the channel's ISessionTarget: it exchanges version lines
  (``SSH-2.0-sshgateway_…``) and then feeds the channel's bytes to the inner transport;
- :func:`bound_portal`, the cred portal of one inner connection: ``none`` succeeds for
  whatever name the client sends (``ProxyJump`` sends the local or the device's name)
  and yields the outer user routed to the target; the name is logged;
- :class:`InnerServers`, one factory per target with that target's own host key
  (``gateway.hostkeys``: made at first use under the state directory).

Each inner connection is one flow record (role ``server``, protocol ``ssh2``) linked to
the outer connection's; its sessions' device legs link to it in turn.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.conch.ssh.keys import Key
from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import IRealm, Portal
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.dispatch import MAJOR_DIFFERS, MAX_LINE, classify, server_version_line
from gateway.hostkeys import HostKeyError, load_or_create_target_key
from protocols.auth import AuthLimits, LoginContext
from protocols.flow import C2S, S2C, FlowRecorder
from protocols.forwarding import ForwardRefused
from protocols.record import ConnectionRecord
from protocols.session import ExitInfo, IGatewayUser, ISessionClient, ISessionTarget, WindowSize

log = Logger()

# Targets whose jump channels the gateway answers itself (an ssh2 target gets the bytes).
INNER_PROTOCOLS = frozenset({"ssh1", "telnet"})
# How long the client has to send its version line inside the channel (the login grace
# time runs from then on, as on the front end).
VERSION_TIMEOUT = 30.0
SERVER_VERSION = server_version_line(frozenset({"ssh2"}))


@implementer(IRealm)
class _BoundRealm:
    """Yields the one avatar the outer connection's user has for this target."""

    def __init__(self, avatar: Any, target: str) -> None:
        self.avatar = avatar
        self.target = target

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple:
        if IGatewayUser not in interfaces:
            raise NotImplementedError("the gateway only provides IGatewayUser avatars")
        inner_name = mind.username if isinstance(mind, LoginContext) else "?"
        log.info(
            "jump: {user} -> {target}: inner SSH-2 login as {name!r} (bound to {user}'s "
            "connection)",
            user=self.avatar.username,
            target=self.target,
            name=inner_name,
        )
        return IGatewayUser, self.avatar, lambda: None


def bound_portal(avatar: Any, target: str) -> Portal:
    """The portal of one inner connection: anonymous (SSH-2 ``none``) credentials only,
    which always succeed and yield ``avatar`` (the outer user routed to ``target``)."""
    return Portal(_BoundRealm(avatar, target), [AllowAnonymousAccess()])


@implementer(ITransport, IConsumer)
class ChannelTransport:
    """The inner SSH-2 connection's transport: a jump channel (an ISessionClient).

    Writes go out as channel data; a producer registered here (the inner transport) is
    the channel's output producer, paused while the channel cannot send; closing ends
    the channel (EOF, then close once its buffered output is out)."""

    disconnecting = False

    def __init__(
        self, client: ISessionClient, record: ConnectionRecord, addresses: Any = None
    ) -> None:
        self.client = client
        self.record = record
        self._addresses = addresses
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.record.bytes_out += len(data)
        self.client.write_stdout(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        if self.closed:
            return
        self.closed = self.disconnecting = True
        self.client.unregisterProducer()
        self.client.send_eof()
        self.client.exited(ExitInfo(status=0))

    abortConnection = loseConnection

    def getPeer(self) -> Any:
        return self._addresses[0] if self._addresses else IPv4Address("TCP", "0.0.0.0", 0)

    def getHost(self) -> Any:
        return self._addresses[1] if self._addresses else IPv4Address("TCP", "0.0.0.0", 0)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if not self.closed:
            self.client.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if not self.closed:
            self.client.unregisterProducer()


@implementer(ISessionTarget)
class InnerConnection:
    """One jump channel answered by the gateway's SSH-2 server for ``target``.

    ``factory`` is the target's SSH2ServerFactory with this connection's bound portal;
    ``flow_done`` (when flows are recorded) gets the inner connection's flow record."""

    def __init__(
        self,
        factory: Any,
        client: ISessionClient,
        *,
        username: str,
        target: str,
        clock: IReactorTime,
        flow_done: Callable[[FlowRecorder], None] | None = None,
        version_timeout: float = VERSION_TIMEOUT,
    ) -> None:
        self.factory = factory
        self.client = client
        self.username = username
        self.target = target
        self.clock = clock
        self._flow_done = flow_done
        self._version_timeout = version_timeout
        self.record: ConnectionRecord | None = None
        self.transport: ChannelTransport | None = None
        self.protocol: Any = None
        self._line = b""
        self._closed = False
        self._timer: IDelayedCall | None = None
        # The channel is confirmed after this object is returned: start on the next turn.
        self._start_call: IDelayedCall | None = clock.callLater(0, self._start)

    # -- start: our version line, theirs ---------------------------------------------------

    def _start(self) -> None:
        self._start_call = None
        if self._closed:
            return
        peer = f"{getattr(self.client, 'peer', '-')} jump:{self.target}"
        record = self.record = ConnectionRecord(peer=peer, protocol="ssh2")
        record.server_version = SERVER_VERSION.decode("ascii")
        if self._flow_done is not None:
            flow = record.flow = FlowRecorder(
                "server",
                peer,
                "ssh2",
                link=getattr(self.client, "flow_id", None),
                clock=self.clock.seconds,
            )
            flow.target = self.target
            flow.version(S2C, record.server_version)
        outer = getattr(self.client, "outer_addresses", None)
        self.transport = ChannelTransport(self.client, record, outer() if outer else None)
        self.transport.write(SERVER_VERSION + b"\r\n")
        self._timer = self.clock.callLater(self._version_timeout, self._version_timed_out)

    def _version_timed_out(self) -> None:
        self._timer = None
        self._refuse("no identification line within the version timeout")

    def _refuse(self, reason: str) -> None:
        assert self.record is not None and self.transport is not None
        self.record.close_reason = reason
        log.info("jump: {peer}: {reason}", peer=self.record.peer, reason=reason)
        self.transport.write(MAJOR_DIFFERS)
        self.transport.loseConnection()

    def _version_input(self, data: bytes) -> None:
        assert self.record is not None and self.transport is not None
        self._line += data
        end = self._line.find(b"\n")
        if end < 0 or end + 1 > MAX_LINE:
            if len(self._line) >= MAX_LINE:
                self._refuse("identification line longer than 255 bytes")
            return
        line, rest = self._line[:end], self._line[end + 1 :]
        self._line = b""
        if self.record.flow is not None:
            self.record.flow.version(C2S, line.rstrip(b"\r").decode("ascii", "replace"), end + 1)
        line = line.removesuffix(b"\r")
        if classify(line) != "ssh2":
            self._refuse("the client inside the jump channel does not speak SSH-2")
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.record.client_version = line.decode("ascii")
        self.protocol = self.factory.build_protocol(self.record, SERVER_VERSION, line)
        self.protocol.makeConnection(self.transport)
        if rest:
            self.protocol.dataReceived(rest)

    # -- ISessionTarget: the channel ---------------------------------------------------------

    def write_stdin(self, data: bytes) -> None:
        if self._closed or self.transport is None or self.transport.closed:
            return
        assert self.record is not None
        self.record.bytes_in += len(data)
        if self.protocol is None:
            self._version_input(data)
        else:
            self.protocol.dataReceived(data)

    def close_stdin(self) -> None:
        # The client will send nothing more: the inner connection is over.
        if self.transport is not None:
            if self.record is not None and not self.record.close_reason:
                self.record.close_reason = "client sent EOF"
            self.transport.loseConnection()

    def resize(self, size: WindowSize) -> None:
        pass  # a direct-tcpip channel has no terminal; the inner sessions do

    def send_signal(self, name: str) -> None:
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # The channel's input: never paused here, since the inner connection's own channel
        # windows bound what the client may send.
        pass

    def unregisterProducer(self) -> None:
        pass

    def close(self) -> None:
        """The channel is closed (client, outer connection or we): end the inner
        connection and write its record."""
        if self._closed:
            return
        self._closed = True
        for call in (self._start_call, self._timer):
            if call is not None and call.active():
                call.cancel()
        self._start_call = self._timer = None
        if self.transport is not None:
            self.transport.closed = True
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            try:
                protocol.connectionLost(Failure(ConnectionDone("jump channel closed")))
            except Exception:
                log.failure("jump: error ending an inner connection")
        self._write_record()

    def _write_record(self) -> None:
        record = self.record
        if record is None:
            return
        if not record.close_reason:
            record.close_reason = "channel closed"
        log.info("jump: inner connection closed: {summary}", summary=record.summary())
        flow = record.flow
        if flow is None or self._flow_done is None:
            return
        flow.user = self.username  # the gateway user; the inner name is in the log
        flow.bytes = {C2S: record.bytes_in, S2C: record.bytes_out}
        flow.close(record.close_reason)
        self._flow_done(flow)


class InnerServers:
    """The inner SSH-2 servers of one config: a factory per target (its own host key,
    the front end's SSH-2 settings and login limits), made at first use."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        settings: Any,
        limits: AuthLimits,
        clock: IReactorTime,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.settings = settings
        self.limits = limits
        self.clock = clock
        self._factories: dict[str, Any] = {}

    def host_key(self, target: str) -> Key:
        return load_or_create_target_key(self.state_dir, target)

    def _factory(self, target: str) -> Any:
        factory = self._factories.get(target)
        if factory is None:
            from protocols.ssh2.factory import SSH2ServerFactory
            from protocols.ssh2.transport import NoAlgorithms

            try:
                key = self.host_key(target)
                factory = SSH2ServerFactory(
                    None, {b"ssh-ed25519": key}, self.settings, self.limits, self.clock
                )
            except (HostKeyError, NoAlgorithms) as e:
                log.error("jump: no SSH-2 server for target {target}: {why}", target=target, why=e)
                raise ForwardRefused(f"no SSH-2 server for target {target}: {e}") from e
            self._factories[target] = factory
        return factory

    def open(
        self,
        target: str,
        avatar: Any,
        client: ISessionClient,
        flow_done: Callable[[FlowRecorder], None] | None = None,
    ) -> InnerConnection:
        """Answer ``client`` (a jump channel) as the SSH-2 server of ``target`` for
        ``avatar`` (the outer user routed to ``target``). Raises ForwardRefused."""
        factory = self._factory(target).with_portal(bound_portal(avatar, target))
        log.info(
            "jump: {user} -> {target}: the gateway answers as its SSH-2 server",
            user=avatar.username,
            target=target,
        )
        return InnerConnection(
            factory,
            client,
            username=avatar.username,
            target=target,
            clock=self.clock,
            flow_done=flow_done,
        )


__all__ = [
    "INNER_PROTOCOLS",
    "ChannelTransport",
    "InnerConnection",
    "InnerServers",
    "bound_portal",
]
