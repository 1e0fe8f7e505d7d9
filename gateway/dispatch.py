"""The version-exchange dispatcher: the first protocol on every accepted connection.

It owns the identification exchange so that one port can serve both protocols:
it sends the server's line (``SSH-1.99-…`` with both protocols enabled), reads the
client's line under strict limits, and hands the connection to the SSH-2 or SSH-1
implementation with both lines exactly as sent. A connection that never completes its
line is cut off by a timer; anything that is not a usable version gets a reply the client
can read — a plain text line, because neither side has agreed on a packet format yet.

Each connection is handed to the :class:`Generation` (the protocol implementations of
one loaded config) that was current when it was accepted; a reload swaps in a new one
for later connections. The factory knows every open connection, and each offers what
the shutdown drain (gateway.lifecycle) needs: has it a session, tell its sessions, close
it cleanly.

It is also where every connection is seen first, so the limits on unauthenticated
connections (:mod:`gateway.limits`: penalties, ``per_source_max_startups``,
``max_startups``) are applied here, at accept, before the version line is sent: a refused
connection costs no key exchange work. Its source is the address in the connection
record's peer (the PROXY header's, behind haproxy).

Rules for the client's line (RFC 4253 section 4.2, draft-ylonen-ssh-protocol-00):
- it is the first thing the client sends, ends in LF (CR LF accepted), is at most
  255 bytes including the line end, and holds only printable US-ASCII (space allowed);
- ``SSH-2.0-…`` and ``SSH-1.99-…`` go to SSH-2; ``SSH-1.5-…`` and ``SSH-1.3-…``
  (and 1.4) to SSH-1; any other ``1.x`` is too old; any other major version is refused
  with ``Protocol major versions differ.``
"""

from __future__ import annotations

import re
import resource
from collections.abc import Callable, Mapping
from typing import Protocol as Protocol_

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from gateway import __version__
from gateway.limits import ConnectionLimits, Refused, Startup
from gateway.penalties import GRACE_EXCEEDED, MALFORMED
from protocols.flow import C2S, S2C, FlowRecorder
from protocols.handoff import IDrainable, IHandoffFactory
from protocols.record import ConnectionRecord

MAX_LINE = 255  # bytes, including CR LF (RFC 4253 section 4.2)
MAJOR_DIFFERS = b"Protocol major versions differ.\n"

# RFC 4253 forbids "-" in the software version, but real clients send it
# ("SSH-2.0-OpenSSH-keyscan"), and OpenSSH's server accepts it: so do we.
_VERSION_RE = re.compile(rb"^SSH-(\d+)\.(\d+)-([\x21-\x7e]+)(?: [\x20-\x7e]*)?$")
_PRINTABLE_RE = re.compile(rb"^[\x20-\x7e]*$")


def server_version_line(protocols: frozenset[str]) -> bytes:
    """The identification line the gateway announces for the enabled protocols."""
    if protocols >= {"ssh1", "ssh2"}:
        proto = b"1.99"
    elif protocols == {"ssh2"}:
        proto = b"2.0"
    elif protocols == {"ssh1"}:
        proto = b"1.5"
    else:
        raise ValueError("at least one protocol must be enabled")
    return b"SSH-" + proto + b"-sshgateway_" + __version__.encode("ascii")


def classify(line: bytes) -> str | None:
    """Which implementation a client line selects: "ssh2", "ssh1", "too-old", or None for a
    line that is not a valid identification or names another major version."""
    match = _VERSION_RE.match(line)
    if match is None:
        return None
    major, minor = int(match.group(1)), int(match.group(2))
    if major == 2 and minor == 0 or major == 1 and minor == 99:
        return "ssh2"
    if major == 1:
        return "ssh1" if 3 <= minor <= 5 else "too-old"
    return None


class _CountingTransport:
    """Passes everything to the real transport, counting the bytes written."""

    def __init__(self, transport: object, record: ConnectionRecord) -> None:
        self._transport = transport
        self._record = record
        directlyProvides(self, providedBy(transport))

    def write(self, data: bytes) -> None:
        self._record.bytes_out += len(data)
        self._transport.write(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        self._record.bytes_out += sum(map(len, seq))
        self._transport.writeSequence(seq)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class VersionDispatcher(Protocol):
    log = Logger()

    def __init__(self, factory: DispatcherFactory, generation: Generation | None = None) -> None:
        self.factory = factory
        # The config generation this connection was accepted under: it keeps it for its
        # whole life, whatever a reload swaps in for later connections.
        self.generation = generation if generation is not None else factory.generation
        self.buffer = b""
        self.inner: Protocol | None = None
        self.timer: IDelayedCall | None = None
        self.record: ConnectionRecord | None = None
        self.counting: _CountingTransport | None = None
        self.refused = False  # we answered and are closing: what still arrives is dropped
        self.startup: Startup | None = None  # counted by the factory's limits until login
        self.refused_at_accept = False
        self.penalty: str | None = None  # what our own refusal says the source did

    def connectionMade(self) -> None:
        generation = self.generation
        self.factory.connection_opened(self)
        peer = self.transport.getPeer()
        host, port = getattr(peer, "host", str(peer)), getattr(peer, "port", "")
        self.record = ConnectionRecord(peer=f"{host}:{port}" if port != "" else str(host))
        if self.factory.limits is not None:
            try:
                self.startup = self.factory.limits.admit(self.record)
            except Refused as refusal:
                self._refuse_at_accept(refusal)
                return
        self.record.server_version = generation.server_version.decode("ascii")
        if generation.flows is not None:
            self.record.flow = FlowRecorder("server", self.record.peer, clock=self.factory.clock.seconds)
            self.record.flow.version(S2C, self.record.server_version)
        self.counting = _CountingTransport(self.transport, self.record)
        self.counting.write(generation.server_version + b"\r\n")
        self.timer = self.factory.clock.callLater(generation.version_timeout, self._timed_out)

    def _refuse_at_accept(self, refusal: Refused) -> None:
        """Too many unauthenticated connections, or a penalised source: one plain line (no
        version line, so no key exchange) and close."""
        assert self.record is not None
        self.refused = self.refused_at_accept = True
        self.record.close_reason = refusal.reason
        self.log.info(
            "refusing {peer} at accept: {reason}",
            peer=self.record.peer,
            reason=refusal.reason,
            record=self.record,  # as at every close: the metrics count it (refused)
            refused=True,
        )
        self.transport.write(refusal.line)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        assert self.record is not None
        self.record.bytes_in += len(data)
        if self.startup is not None and self.record.auth_result == "success":
            # Logged in: no longer an unauthenticated connection (noticed at its next bytes;
            # the limits look again themselves before a decision at the limit).
            assert self.factory.limits is not None
            self.factory.limits.authenticated(self.startup)
            self.startup = None
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if self.refused:
            return
        self.buffer += data
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) >= MAX_LINE:
                self._refuse("identification line longer than 255 bytes", malformed=True)
            return
        if end + 1 > MAX_LINE:
            self._refuse("identification line longer than 255 bytes", malformed=True)
            return
        line, rest = self.buffer[:end], self.buffer[end + 1 :]
        self.buffer = b""
        if self.record.flow is not None:
            self.record.flow.version(C2S, line.rstrip(b"\r").decode("ascii", "replace"), end + 1)
        if line.endswith(b"\r"):
            line = line[:-1]
        self._dispatch(line, rest)

    def _dispatch(self, line: bytes, rest: bytes) -> None:
        assert self.record is not None
        if not _PRINTABLE_RE.match(line):
            self._refuse("identification line holds non-printable bytes", malformed=True)
            return
        self.record.client_version = line.decode("ascii")
        kind = classify(line)
        if kind is None:
            # A line that is not "SSH-x.y-..." at all is not a client we can talk to either.
            self._refuse("client protocol version not supported", malformed=True)
            return
        if kind == "too-old":
            self._refuse("client speaks an SSH-1 version older than 1.3")
            return
        handoff = self.generation.handoffs.get(kind)
        if handoff is None:
            self._refuse(f"{kind} is not enabled on this gateway")
            return
        self._cancel_timer()
        self.record.protocol = kind
        if self.record.flow is not None:
            self.record.flow.protocol = kind
        self.inner = handoff.build_protocol(self.record, self.generation.server_version, line)
        self.inner.makeConnection(self.counting)
        if rest:
            self.inner.dataReceived(rest)

    def _refuse(self, reason: str, malformed: bool = False) -> None:
        """Every refusal answers the same plain line, the one every SSH implementation
        understands and shows its user (an overlong or garbled line included: a silent
        hang-up would leave the client guessing); the reason goes to our log only.
        ``malformed``: the line was no SSH identification at all, which the source's
        penalty counts as such (a client of a version we do not serve is not)."""
        assert self.record is not None and self.counting is not None
        self.record.close_reason = reason
        if malformed:
            self.penalty = MALFORMED
        self.log.info(
            "refusing {peer} during version exchange: {reason}",
            peer=self.record.peer,
            reason=reason,
        )
        self._cancel_timer()
        self.refused = True
        self.counting.write(MAJOR_DIFFERS)
        self.transport.loseConnection()
        self.buffer = b""

    def _timed_out(self) -> None:
        self.timer = None
        assert self.record is not None
        self.record.close_reason = "no identification line within the version timeout"
        self.penalty = GRACE_EXCEEDED
        self.log.info("{peer}: {reason}", peer=self.record.peer, reason=self.record.close_reason)
        self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    # -- shutdown drain (gateway.lifecycle) ------------------------------------------------

    def _health_check(self) -> bool:
        """The connection is a load balancer's health check (it said so in its PROXY
        header); only the ``haproxy:`` listener's transport knows."""
        return getattr(self.transport, "health_check", False) is True

    def _drainable(self) -> IDrainable | None:
        return IDrainable(self.inner, None) if self.inner is not None else None

    def has_session(self) -> bool:
        """Whether the client has a session open (a connection still exchanging versions,
        keys or credentials has none)."""
        inner = self._drainable()
        return inner is not None and inner.has_session()

    def tell_sessions(self, message: str) -> None:
        inner = self._drainable()
        if inner is not None:
            inner.tell_sessions(message)

    def close_for_shutdown(self, reason: str) -> None:
        """End the connection cleanly: the protocol's DISCONNECT once handed over; before
        that there is no packet format yet, so the socket is just closed."""
        if self.record is not None and not self.record.close_reason:
            self.record.close_reason = reason
        inner = self._drainable()
        if inner is not None:
            inner.disconnect_by_application(reason)
            return
        self._cancel_timer()
        self.refused = True
        self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection now (a second SIGTERM, or a peer that never reads)."""
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_timer()
        if self.inner is not None:
            self.inner.connectionLost(reason)
        record = self.record
        if record is None:
            self.factory.connection_forgotten(self)
            return
        if self.startup is not None:
            assert self.factory.limits is not None
            self.factory.limits.closed(self.startup, self.penalty)
            self.startup = None
        if self.refused_at_accept:
            return  # logged when refused; a flood of these writes no flow records
        if self.inner is None and not record.client_version and self._health_check():
            # A load balancer's check, every few hundred ms per instance: no log line, no
            # flow record, not counted as a connection (HAProxy reports failed checks).
            self.factory.connection_forgotten(self)
            return
        if not record.close_reason and reason is not None:
            record.close_reason = reason.getErrorMessage()
        self.log.info("connection closed: {summary}", summary=record.summary(), record=record)
        flow = record.flow
        if flow is not None:
            if not flow.protocol:
                flow.protocol = record.protocol
            if flow.user is None and record.user:
                flow.user = record.user
            # The dispatcher sees every byte (a packet cut short by the close included).
            flow.bytes = {C2S: record.bytes_in, S2C: record.bytes_out}
            flow.close(record.close_reason)
        self.factory.connection_closed(record, self)


class FlowSink(Protocol_):
    """Where finished flows go (gateway.flows.FlowWriter)."""

    def write_flow(self, flow: FlowRecorder) -> None: ...


class Generation:
    """What new connections are handed to, as one loaded config made it: the protocol
    implementations, the flow sink, the version timeout (and ``targets``, the router its
    sessions use, for whoever closes them at shutdown). A reload builds a new one and
    swaps it in whole; connections keep the one they were accepted under, which is
    retired (``retire``) once the last of them has closed."""

    def __init__(
        self,
        handoffs: Mapping[str, IHandoffFactory],
        version_timeout: float = 30.0,
        flows: FlowSink | None = None,
        targets: object = None,
    ) -> None:
        self.handoffs = dict(handoffs)
        self.flows = flows  # None: no flow recording at all
        self.version_timeout = version_timeout
        self.targets = targets
        self.server_version = server_version_line(frozenset(self.handoffs))
        self.connections: set[VersionDispatcher] = set()

    def retire(self) -> None:
        """No connection uses this generation any more: stop its timers."""
        for handoff in self.handoffs.values():
            stop = getattr(handoff, "stop", None)
            if stop is not None:
                stop()


class DispatcherFactory(Factory):
    """Accepts connections on every listener and hands each to the current
    :class:`Generation` (``handoffs`` maps "ssh1"/"ssh2" to the protocol implementations
    that are enabled). It knows every open connection, for the shutdown drain."""

    protocol = VersionDispatcher  # type: ignore[assignment]
    noisy = False  # one line per connection is logged at close; no per-port chatter

    def __init__(
        self,
        handoffs: Mapping[str, IHandoffFactory],
        clock: IReactorTime,
        version_timeout: float = 30.0,
        flows: FlowSink | None = None,
        targets: object = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.limits = limits  # None: no limits on unauthenticated connections
        self.clock = clock
        self.generation = Generation(handoffs, version_timeout, flows, targets)
        self._track()

    @classmethod
    def serving(
        cls, generation: Generation, clock: IReactorTime, limits: ConnectionLimits | None = None
    ) -> DispatcherFactory:
        """A factory that hands new connections to ``generation``."""
        factory = cls.__new__(cls)
        factory.clock = clock
        factory.limits = limits
        factory.generation = generation
        factory._track()
        return factory

    def _track(self) -> None:
        self.retired: list[Generation] = []  # swapped out, some connection still on them
        self.connections: set[VersionDispatcher] = set()
        # Called with the factory after every close (the drain waits on these).
        self.close_watchers: list[Callable[[DispatcherFactory], None]] = []

    # The current generation's parts, as the rest of the gateway (and tests) read them.
    @property
    def handoffs(self) -> dict[str, IHandoffFactory]:
        return self.generation.handoffs

    @property
    def flows(self) -> FlowSink | None:
        return self.generation.flows

    @flows.setter
    def flows(self, sink: FlowSink | None) -> None:
        self.generation.flows = sink

    @property
    def version_timeout(self) -> float:
        return self.generation.version_timeout

    @property
    def server_version(self) -> bytes:
        return self.generation.server_version

    def generations(self) -> list[Generation]:
        """Every generation some connection (or the next one) may still use."""
        return [self.generation, *self.retired]

    def swap(self, generation: Generation) -> Generation:
        """New connections go to ``generation`` from now on; returns the old one, which
        connections already open keep using until they close."""
        old, self.generation = self.generation, generation
        if old.connections:
            self.retired.append(old)
        else:
            old.retire()
        return old

    def buildProtocol(self, addr: object) -> VersionDispatcher:
        return VersionDispatcher(self, self.generation)

    def startFactory(self) -> None:
        # When the first listener opens: after start-up has raised the descriptor limit.
        if self.limits is not None:
            self.limits.fit_descriptors(resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    def connection_opened(self, connection: VersionDispatcher) -> None:
        self.connections.add(connection)
        connection.generation.connections.add(connection)

    def connection_forgotten(self, connection: VersionDispatcher) -> None:
        """A connection is gone: stop tracking it, retire a generation it was the last
        user of, and tell the watchers."""
        self.connections.discard(connection)
        generation = connection.generation
        generation.connections.discard(connection)
        if generation in self.retired and not generation.connections:
            self.retired.remove(generation)
            generation.retire()
        for watcher in list(self.close_watchers):
            watcher(self)

    def connection_closed(self, record: ConnectionRecord, connection: VersionDispatcher | None = None) -> None:
        """A connection is over: its flow record goes to its generation's flow sink."""
        flows = connection.generation.flows if connection is not None else self.flows
        if flows is not None and record.flow is not None:
            flows.write_flow(record.flow)
        if connection is not None:
            self.connection_forgotten(connection)
