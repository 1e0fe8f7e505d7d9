"""The SSH-1 server on Twisted: feeds the sans-I/O core, logs in through the shared
LoginFlow, drives the session model, relays local port forwards, applies back-pressure.

SSH-1 has no windows, so flow control is TCP's alone:
- the target's output producer (and every forwarded socket) is paused while the client's
  TCP buffer is full (one gate registered with the peer transport fans the pause out);
- reading from the client is paused while the target pauses our stdin producer or a
  forwarded socket's buffer is full; while paused no event is pulled from the core.
"""

from __future__ import annotations

import hmac
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, threads
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IProtocol, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from protocols.auth import (
    METHOD_PASSWORD,
    METHOD_PUBLICKEY,
    AuthLimits,
    LoginContext,
    LoginFlow,
    PartialAuthentication,
    PolicyRefused,
    SSH1RSAChallenge,
    TooManyAttempts,
)
from protocols.flow import C2S, S2C, FlowRecorder
from protocols.forwarding import permits
from protocols.handoff import IDrainable, IHandoffFactory
from protocols.record import ConnectionRecord
from protocols.session import (
    AGENT_FORWARDING,
    PORT_FORWARDING,
    PTY,
    UNRESTRICTED,
    X11_FORWARDING,
    ExitInfo,
    IGatewayUser,
    ISessionClient,
    ISessionTarget,
    PtyRequest,
    SessionRequest,
    addresses_of,
)
from protocols.ssh1 import events as ev
from protocols.ssh1 import keygen, keys
from protocols.ssh1.messages import Awaiting, Phase
from protocols.ssh1.pump import CorePump
from protocols.ssh1.server_connection import ServerConnection
from protocols.ssh1.settings import SSH1Settings

EXIT_CONFIRMATION_TIMEOUT = 30.0  # seconds we wait for the client's EXIT_CONFIRMATION
MAX_FORWARDS = 64  # simultaneous forwarded connections per SSH-1 connection
X11_AUTH_PROTOCOL = b"MIT-MAGIC-COOKIE-1"
X11_FIRST_DISPLAY = 10  # as sshd's X11DisplayOffset
X11_DISPLAYS = 1000
log = Logger(namespace="sshgateway.ssh1")


def _is_hex_cookie(cookie: bytes) -> bool:
    return 0 < len(cookie) <= 512 and len(cookie) % 2 == 0 and all(
        c in b"0123456789abcdefABCDEF" for c in cookie
    )


def _xauth_entry(family: int, address: bytes, number: bytes, name: bytes, data: bytes) -> bytes:
    """One Xauthority record: big-endian family, then four length-prefixed fields."""
    out = struct.pack(">H", family)
    for field in (address, number, name, data):
        out += struct.pack(">H", len(field)) + field
    return out


def generate_server_key(bits: int) -> rsa.RSAPrivateKey:
    """A new server key of ``bits`` (512-1023 bits included, which cryptography no
    longer makes). Meant to run in a thread: below 1024 bits it hands the interpreter lock
    on after each primality test (``time.sleep(0)`` releases it), so that the reactor
    never waits for more than one of them; cryptography's own generator releases it."""
    return keygen.generate_private_key(bits, between_tests=lambda: time.sleep(0))


# Runs a function off the reactor and fires with its result (in the reactor thread).
OffReactor = Callable[..., defer.Deferred]


@implementer(IHandoffFactory)
class SSH1ServerFactory:
    """Shared by every SSH-1 connection: portal, host key, the in-memory server key.

    The first server key is made at construction (before the gateway listens), or is
    given (``server_key``: a reload keeps the running one when its size did not change),
    or, with ``first_key_off_reactor`` (a reload that needs a new one), is made in a
    thread like every later one: :attr:`ready` fires once the factory has a key, and
    nobody may hand it a connection before. Each later key is made in a thread too
    (``off_reactor``, Twisted's thread pool unless a test runs it at once), taking 8-89 ms
    at 1024-2048 bits and seconds at 4096, during which connections of both protocols go
    on. The new key replaces the old one in one assignment when it is ready; a connection
    that was already sent the old public key holds that key object (its
    ServerConnection) and decrypts its session key with it.
    """

    def __init__(
        self,
        portal: Any,
        host_key: rsa.RSAPrivateKey,
        settings: SSH1Settings,
        limits: AuthLimits,
        clock: IReactorTime,
        key_generator: Callable[[int], rsa.RSAPrivateKey] = generate_server_key,
        off_reactor: OffReactor = threads.deferToThread,
        *,
        server_key: rsa.RSAPrivateKey | None = None,
        first_key_off_reactor: bool = False,
    ) -> None:
        settings.check_host_key_bits(host_key.key_size)
        self.portal = portal
        self.host_key = host_key
        self.settings = settings
        self.limits = limits
        self.clock = clock
        self._generate = key_generator
        self._off_reactor = off_reactor
        self._server_key: rsa.RSAPrivateKey | None = server_key
        # A key taken over may have protected logins already: the next rotation renews it.
        self._server_key_used = server_key is not None
        self._regenerating = False
        self.server_key_generations = 1
        self.ready: defer.Deferred = defer.succeed(self)
        if server_key is None and first_key_off_reactor:
            self._regenerating = True
            started = self.clock.seconds()
            making = self._off_reactor(self._generate, settings.server_key_bits)
            self.ready = making.addCallback(self._first_key, started)
        elif server_key is None:
            self._server_key = key_generator(settings.server_key_bits)
        self._rotation: IDelayedCall | None = clock.callLater(
            settings.server_key_lifetime, self._rotate
        )

    def _first_key(self, key: rsa.RSAPrivateKey, started: float) -> SSH1ServerFactory:
        self._regenerating = False
        self._server_key = key
        log.debug(
            "ssh1: server key made ({bits} bits, {seconds:.3f} s)",
            bits=key.key_size,
            seconds=self.clock.seconds() - started,
        )
        return self

    @property
    def current_server_key(self) -> rsa.RSAPrivateKey | None:
        """The key new connections get now (None until :attr:`ready`), not marked used."""
        return self._server_key

    def server_key(self) -> rsa.RSAPrivateKey:
        key = self._server_key
        assert key is not None, "an SSH-1 connection before the server key was made"
        self._server_key_used = True
        return key

    def _rotate(self) -> None:
        self._rotation = self.clock.callLater(self.settings.server_key_lifetime, self._rotate)
        # An unused key has protected nothing yet: regenerating it would only cost CPU.
        if not self._server_key_used or self._regenerating:
            return
        self._regenerating = True
        started = self.clock.seconds()
        bits = self.settings.server_key_bits
        generating = self._off_reactor(self._generate, bits)
        generating.addCallbacks(partial(self._install, started), self._generation_failed)

    def _install(self, started: float, key: rsa.RSAPrivateKey) -> None:
        self._regenerating = False
        if self._rotation is None:  # stopped meanwhile: nobody will use it
            return
        self._server_key = key
        self._server_key_used = False
        self.server_key_generations += 1
        log.debug(
            "ssh1: server key regenerated ({bits} bits, {seconds:.3f} s)",
            bits=key.key_size,
            seconds=self.clock.seconds() - started,
        )

    def _generation_failed(self, failure: Failure) -> None:
        self._regenerating = False  # the old key stays, and the next rotation tries again
        log.failure("ssh1: server key regeneration failed; keeping the old key", failure)

    def stop(self) -> None:
        if self._rotation is not None and self._rotation.active():
            self._rotation.cancel()
        self._rotation = None

    def build_protocol(
        self, record: ConnectionRecord, server_version: bytes, client_version: bytes
    ) -> IProtocol:
        return SSH1ServerProtocol(self, record, client_version)


@implementer(IPushProducer)
class _OutputGate:
    """Registered once with the client's transport; passes its pause/resume on to every
    source that writes to the client (the session's output, forwarded sockets), and to
    our own reading from the client: a client that does not read what we send must not
    make us queue answers (to IGNOREd-in-bulk requests, refused forwards) without end."""

    def __init__(self, on_pause: Callable[[], None], on_resume: Callable[[], None]) -> None:
        self.paused = False
        self.sources: list[Any] = []
        self._on_pause = on_pause
        self._on_resume = on_resume

    def add(self, source: Any) -> None:
        self.sources.append(source)
        if self.paused:
            source.pauseProducing()

    def remove(self, source: Any) -> None:
        if source in self.sources:
            self.sources.remove(source)
            if self.paused:
                source.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        for source in list(self.sources):
            source.pauseProducing()
        self._on_pause()

    def resumeProducing(self) -> None:
        self.paused = False
        for source in list(self.sources):
            source.resumeProducing()
        self._on_resume()

    def stopProducing(self) -> None:
        self.sources.clear()


@implementer(IPushProducer)
class _InputValve:
    """Given to a consumer of client data (the target's stdin, a forwarded socket):
    its pause stops reading from the client."""

    def __init__(self, protocol: SSH1ServerProtocol, name: str) -> None:
        self.protocol = protocol
        self.name = name

    def pauseProducing(self) -> None:
        self.protocol._pause_input(self.name)

    def resumeProducing(self) -> None:
        self.protocol._resume_input(self.name)

    def stopProducing(self) -> None:
        self.protocol._resume_input(self.name)


@implementer(ISessionClient)
class _SessionClient:
    """The client's side of the one SSH-1 session, as the target sees it."""

    def __init__(self, protocol: SSH1ServerProtocol) -> None:
        self.protocol = protocol
        self.producer: Any = None

    @property
    def description(self) -> str:
        return self.protocol.record.describe()

    @property
    def flow_id(self) -> str | None:
        """The id of this connection's flow record (upstream legs link to it)."""
        flow = self.protocol.record.flow
        return flow.id if flow is not None else None

    def write_stdout(self, data: bytes) -> None:
        self.protocol._session_output(data, stderr=False)

    def write_stderr(self, data: bytes) -> None:
        self.protocol._session_output(data, stderr=True)

    def send_eof(self) -> None:
        pass  # SSH-1 has no end-of-output message; EXITSTATUS says it all

    def exited(self, info: ExitInfo) -> None:
        self.protocol._session_exited(info)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.unregisterProducer()
        self.producer = producer
        self.protocol._gate.add(producer)

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            self.protocol._gate.remove(self.producer)
            self.producer = None


class _Forward(Protocol):
    """One relayed connection. ``kind`` "local": a client -L forward to an allowed
    destination; "agent" / "x11": a program's connection to the forwarded agent socket or
    X display, which we announce to the client (SMSG_AGENT_OPEN / SMSG_X11_OPEN) and whose
    client-side channel is only known once the client confirms; "refused": a client's
    forward we refused by confirming and closing it at once (no socket)."""

    def __init__(
        self, owner: SSH1ServerProtocol, channel: int, peer_channel: int | None, kind: str
    ) -> None:
        self.owner = owner
        self.channel = channel
        self.peer_channel = peer_channel
        self.kind = kind
        self.opened_by_us = kind in ("agent", "x11")
        self.socket_closed = False
        self.client_closed = False  # the client sent CHANNEL_CLOSE
        self.we_closed = False  # we sent CHANNEL_CLOSE
        self.valve = _InputValve(owner, f"forward-{channel}")

    def connectionMade(self) -> None:
        self.owner._forward_connected(self)
        self.transport.registerProducer(self.valve, True)

    def dataReceived(self, data: bytes) -> None:
        self.owner._forward_data(self, data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.owner._forward_lost(self)


# Auth methods in flow records as SSH-1 names them (SSH_AUTH_RSA is a challenge, not a
# signature as in SSH-2's "publickey").
_FLOW_METHOD = {METHOD_PUBLICKEY: "rsa", METHOD_PASSWORD: "password"}

_REFUSED_TWO_STEP = (
    "SSH-1 cannot do two-step authentication; this user's policy needs more than one method"
)


@implementer(IDrainable)
class SSH1ServerProtocol(CorePump):
    core: ServerConnection | None
    # Clients send small packets (plink: 512 bytes); the program gets one write per batch
    # of stdin packets instead of one per packet.
    batched_event = ev.StdinData

    def __init__(
        self, factory: SSH1ServerFactory, record: ConnectionRecord, client_version: bytes
    ) -> None:
        super().__init__()
        self.factory = factory
        self.record = record
        self.client_version = client_version
        self.flow: LoginFlow | None = None
        self.username = b""
        self.avatar: Any = None
        self._logout: Callable[[], None] | None = None
        self._pty: PtyRequest | None = None
        self.target: ISessionTarget | None = None
        self._client = _SessionClient(self)
        self._gate = _OutputGate(
            lambda: self._pause_input("output"), lambda: self._resume_input("output")
        )
        self._rsa_answer: tuple[defer.Deferred, bytes] | None = None
        self._exit_timer: IDelayedCall | None = None
        self._channels: dict[int, _Forward] = {}
        self._agent: tuple[Any, str, str] | None = None  # (listening port, directory, path)
        # (listening port, directory, DISPLAY, XAUTHORITY file)
        self._x11: tuple[Any, str, str, str] | None = None
        self._next_channel = 0
        # PuTTY crashes on CHANNEL_OPEN_FAILURE: see _refuse_port_open.
        self._refuse_by_closing = b"PuTTY" in client_version
        self._handlers = {
            ev.SessionKeyAccepted: self._on_session_key,
            ev.UserRequested: self._on_user,
            ev.PasswordAuth: self._on_password,
            ev.RSAAuth: self._on_rsa,
            ev.RSAResponse: self._on_rsa_response,
            ev.UnsupportedAuth: self._on_unsupported_auth,
            ev.CompressionRequested: self._on_compression,
            ev.PtyRequested: self._on_pty,
            ev.X11ForwardingRequested: self._on_x11_request,
            ev.AgentForwardingRequested: self._on_agent_request,
            ev.RemoteForwardRequested: self._on_refused_request,
            ev.MaxPacketSizeRequested: self._on_max_packet,
            ev.ExecShell: self._on_exec,
            ev.ExecCommand: self._on_exec,
            ev.StdinEOF: self._on_eof,
            ev.WindowChanged: self._on_window,
            ev.ExitConfirmed: self._on_exit_confirmed,
            ev.PortOpen: self._on_port_open,
            ev.ChannelData: self._on_channel_data,
            ev.ChannelClosed: self._on_channel_close,
            ev.ChannelCloseConfirmed: self._on_channel_close_confirmed,
            ev.ChannelOpenConfirmed: self._on_channel_open_confirmed,
            ev.ChannelOpenFailed: self._on_channel_open_failed,
            ev.DebugMessage: self._on_debug,
            ev.PeerDisconnected: self._on_peer_disconnected,
            ev.ConnectionFailed: self._on_failed,
        }

    # ------------------------------------------------------------ plumbing
    def connectionMade(self) -> None:
        f = self.factory
        server_key = f.server_key()
        self.core = ServerConnection(f.host_key, server_key, f.settings.ciphers)
        self.record.protocol = "ssh1"
        self.record.algorithms.update(
            {
                "compression": "none",
                "host_key_bits": str(f.host_key.key_size),
                "server_key_bits": str(server_key.key_size),
            }
        )
        version = self.record.client_version or self.client_version.decode("ascii", "replace")
        context = LoginContext(protocol="ssh1", peer=self.record.peer, client_version=version)
        self.flow = LoginFlow(f.portal, f.limits, context, f.clock, self._grace_expired)
        self.transport.registerProducer(self._gate, True)
        recorder = self.record.flow
        if recorder is not None:
            self._start_recording(recorder, server_key)
        self._flush()

    def _start_recording(self, recorder: FlowRecorder, server_key: Any) -> None:
        """Feed the flow recorder every packet from now on (names and sizes only)."""
        core = self.core
        assert core is not None
        # The constructor queued SMSG_PUBLIC_KEY before anyone could observe it.
        public_key = core.data_to_send()
        recorder.packet(S2C, "SSH_SMSG_PUBLIC_KEY", len(public_key))
        if public_key:
            self.transport.write(public_key)
        core.on_packet_in = partial(recorder.packet, C2S)
        core.on_packet_out = partial(recorder.packet, S2C)
        host_e, host_n = keys.public_numbers(self.factory.host_key)
        recorder.negotiated.update(
            {
                "host_key_type": "rsa1",
                "host_key_bits": host_n.bit_length(),
                "host_key_fingerprint": "MD5:" + keys.ssh1_fingerprint(host_e, host_n),
                "server_key_bits": server_key.key_size,
                "ciphers_offered": list(self.factory.settings.ciphers),
                "compression": "none",
            }
        )

    def _flow_auth(self, method: str, result: str) -> None:
        if self.record.flow is not None:
            self.record.flow.auth(method, result)

    def _flow_request(self, name: str, ok: bool) -> None:
        if self.record.flow is not None:
            self.record.flow.request(name, "success" if ok else "failure")

    def _deliver_batch(self, data: bytes) -> None:
        if self.target is not None and not self.done:
            self.target.write_stdin(data)

    def _core_closed(self, reason: str) -> None:
        self.done = True
        if not self.record.close_reason:
            self.record.close_reason = reason
        self.transport.loseConnection()

    def _disconnect(self, reason: str) -> None:
        """Our own decision to end the connection: DISCONNECT with the reason, log, close."""
        if self.core is None or self.done:
            return
        log.info("ssh1 {peer}: disconnecting: {reason}", peer=self.record.peer, reason=reason)
        self.core.send_disconnect(reason)
        self._flush()

    # ------------------------------------------------------------ IDrainable (shutdown)
    def has_session(self) -> bool:
        return self.target is not None and not self.done

    def tell_sessions(self, message: str) -> None:
        # SSH-1 has one session per connection; CR LF reads right with and without a pty.
        self._session_output(message.encode("utf-8", "replace") + b"\r\n", stderr=True)

    def disconnect_by_application(self, reason: str) -> None:
        if not self.record.close_reason:
            self.record.close_reason = reason
        self._disconnect(reason)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done = True
        if not self.record.close_reason:
            self.record.close_reason = (
                reason.getErrorMessage() if reason is not None else "connection lost"
            )
        if self._rsa_answer is not None:
            d, _ = self._rsa_answer
            self._rsa_answer = None
            d.callback(False)
        if self.flow is not None:
            self.flow.cancel()  # after the answer above, so that its failure delay goes too
        if self._exit_timer is not None and self._exit_timer.active():
            self._exit_timer.cancel()
        self._exit_timer = None
        target, self.target = self.target, None
        if target is not None:
            target.close()
        for forward in list(self._channels.values()):
            if forward.transport is not None:
                forward.transport.loseConnection()
        self._channels.clear()
        self._stop_agent_forwarding()
        self._stop_x11_forwarding()
        self._gate.stopProducing()
        logout, self._logout = self._logout, None
        if logout is not None:
            logout()

    def _reply(self, ok: bool) -> None:
        """Answer the client's pending request, unless the connection went away meanwhile."""
        core = self.core
        if core is None or self.done or core.closed or core.pending is None:
            return
        core.send_success() if ok else core.send_failure()
        self._flush()
        self._pump()

    # ------------------------------------------------------------ key exchange, auth
    def _on_session_key(self, event: ev.SessionKeyAccepted) -> None:
        self.record.algorithms["cipher"] = event.cipher
        if self.record.flow is not None:
            self.record.flow.negotiated["cipher"] = event.cipher
            self.record.flow.negotiated["client_flags"] = event.client_flags
        log.debug(
            "ssh1 {peer}: session key accepted, cipher {cipher}",
            peer=self.record.peer,
            cipher=event.cipher,
        )

    def _on_user(self, event: ev.UserRequested) -> None:
        self.username = event.username
        self.record.user = event.username.decode("utf-8", "replace")
        if self.record.flow is not None:
            self.record.flow.user = self.record.user
        # Every user must authenticate, so the answer is FAILURE, known or not.
        self._flow_auth("none", "failure")
        self._reply(False)

    def _username(self) -> str:
        return self.username.decode("utf-8", "replace")

    def _attempt(self, method: str, credentials: Any) -> None:
        assert self.flow is not None
        self.record.auth_method = method
        d = self.flow.attempt(self._username(), method, credentials)
        d.addCallbacks(self._auth_succeeded, self._auth_failed)
        d.addErrback(self._internal_error)

    def _on_password(self, event: ev.PasswordAuth) -> None:
        self._attempt(METHOD_PASSWORD, UsernamePassword(self.username, event.password))

    def _on_rsa(self, event: ev.RSAAuth) -> None:
        credentials = SSH1RSAChallenge(self.username, event.modulus, self._challenge)
        self._attempt(METHOD_PUBLICKEY, credentials)

    def _challenge(self, e: int, n: int) -> defer.Deferred:
        core = self.core
        if core is None or self.done or core.pending is not Awaiting.RSA:
            return defer.succeed(False)
        value, expected = core.make_rsa_challenge(e, n)
        core.send_rsa_challenge(value)
        self._flush()
        d: defer.Deferred = defer.Deferred()
        self._rsa_answer = (d, expected)
        self._pump()  # the response may already be buffered
        return d

    def _on_rsa_response(self, event: ev.RSAResponse) -> None:
        if self._rsa_answer is None:
            self._reply(False)
            return
        d, expected = self._rsa_answer
        self._rsa_answer = None
        d.callback(hmac.compare_digest(event.response, expected))

    def _auth_succeeded(self, result: tuple) -> None:
        _interface, avatar, logout = result
        if self.done:
            logout()
            return
        self.avatar = IGatewayUser(avatar, avatar)
        self._logout = logout
        self.record.auth_result = "success"
        self.record.user = getattr(avatar, "username", self._username())
        if self.record.flow is not None:
            self.record.flow.user = self.record.user
        self._flow_auth(_FLOW_METHOD.get(self.record.auth_method, self.record.auth_method), "success")
        log.info(
            "ssh1 {peer}: user {user!r} logged in with {method}",
            peer=self.record.peer,
            user=self.record.user,
            method=self.record.auth_method,
        )
        self._reply(True)

    def _auth_failed(self, failure: Failure) -> None:
        self.record.auth_result = "failure"
        self._flow_auth(_FLOW_METHOD.get(self.record.auth_method, self.record.auth_method), "failure")
        if failure.check(TooManyAttempts):
            self._disconnect("too many authentication failures")
            return
        if failure.check(PolicyRefused, PartialAuthentication):
            log.info(
                "ssh1 {peer}: user {user!r} refused: {why}",
                peer=self.record.peer,
                user=self._username(),
                why=_REFUSED_TWO_STEP,
            )
        else:
            log.info(
                "ssh1 {peer}: {method} authentication failed for {user!r}",
                peer=self.record.peer,
                method=self.record.auth_method,
                user=self._username(),
            )
        self._reply(False)

    def _internal_error(self, failure: Failure) -> None:
        log.failure("ssh1 {peer}: internal error", failure, peer=self.record.peer)
        self._disconnect("internal error")

    def _on_unsupported_auth(self, event: ev.UnsupportedAuth) -> None:
        log.info(
            "ssh1 {peer}: refused {method} authentication (trusts the client's host)",
            peer=self.record.peer,
            method=event.method,
        )
        self._flow_auth(event.method, "failure")
        self._reply(False)

    def _grace_expired(self) -> None:
        self._disconnect("login grace time exceeded")

    # ------------------------------------------------------------ preparatory phase
    def _on_compression(self, event: ev.CompressionRequested) -> None:
        assert self.core is not None
        if not self.core.valid_compression_level():
            self._flow_request("compression", False)
            self._reply(False)
            return
        self._flow_request("compression", True)
        self._reply(True)
        self.record.algorithms["compression"] = f"zlib-{event.level}"
        if self.record.flow is not None:
            self.record.flow.negotiated["compression"] = f"zlib-{event.level}"

    def _restricted(self, feature: str) -> str | None:
        """Why the login's restrictions (its key's options) refuse ``feature``, or None."""
        restrictions = self.avatar.restrictions if self.avatar is not None else UNRESTRICTED
        return restrictions.refusal(feature)

    def _on_pty(self, event: ev.PtyRequested) -> None:
        why = self._restricted(PTY)
        if why is not None:
            # FAILURE: plink -1 and ssh1 say so and go on without a pty, as with sshd.
            log.info("ssh1 {peer}: refused pty: {why}", peer=self.record.peer, why=why)
            self._flow_request("pty", False)
            self._reply(False)
            return
        self._pty = event.pty
        self._flow_request("pty", True)
        self._reply(True)

    def _on_agent_request(self, event: ev.AgentForwardingRequested) -> None:
        restricted = self._restricted(AGENT_FORWARDING)
        if restricted is not None:
            why = restricted
        elif not self.factory.settings.allow_agent_forwarding:
            why = "not allowed"
        elif self.client_version.startswith((b"SSH-1.3-", b"SSH-1.4-")):
            why = "not offered to protocol 1.3 clients"
        elif self._agent is not None:
            why = "already forwarded"
        elif not self._start_agent_forwarding():
            why = "could not create the socket"
        else:
            log.info("ssh1 {peer}: agent forwarding granted", peer=self.record.peer)
            self._flow_request("agent", True)
            self._reply(True)
            return
        log.info("ssh1 {peer}: refused agent forwarding ({why})", peer=self.record.peer, why=why)
        self._flow_request("agent", False)
        self._reply(False)

    def _on_x11_request(self, event: ev.X11ForwardingRequested) -> None:
        restricted = self._restricted(X11_FORWARDING)
        if restricted is not None:
            why = restricted
        elif not self.factory.settings.allow_x11_forwarding:
            why = "not allowed"
        elif self._x11 is not None:
            why = "already forwarded"
        elif event.protocol != X11_AUTH_PROTOCOL or not _is_hex_cookie(event.cookie):
            why = "only MIT-MAGIC-COOKIE-1 with a hex cookie is supported"
        elif not self._start_x11_forwarding(event):
            why = "no display could be set up"
        else:
            assert self._x11 is not None
            log.info(
                "ssh1 {peer}: X11 forwarding granted on {display}",
                peer=self.record.peer,
                display=self._x11[2],
            )
            self._flow_request("x11", True)
            self._reply(True)
            return
        log.info("ssh1 {peer}: refused X11 forwarding ({why})", peer=self.record.peer, why=why)
        self._flow_request("x11", False)
        self._reply(False)

    def _on_refused_request(self, event: ev.Event) -> None:
        # Remote forwarding (client -R) would open listening ports on the gateway host.
        why = self._restricted(PORT_FORWARDING) or "not offered"
        log.info("ssh1 {peer}: refused remote port forwarding ({why})", peer=self.record.peer, why=why)
        self._flow_request("port-forward", False)
        self._reply(False)

    def _on_max_packet(self, event: ev.MaxPacketSizeRequested) -> None:
        assert self.core is not None
        ok = self.core.valid_max_packet_size()
        self._flow_request("max-packet-size", ok)
        self._reply(ok)

    def _on_exec(self, event: ev.ExecShell | ev.ExecCommand) -> None:
        command = event.command if isinstance(event, ev.ExecCommand) else None
        self._flow_request("exec_shell" if command is None else "exec_cmd", True)
        request = SessionRequest(
            command=command,
            pty=self._pty,
            addresses=addresses_of(self.transport),  # for SSH_CLIENT and SSH_CONNECTION
        )
        if self._agent is not None:
            request.env["SSH_AUTH_SOCK"] = self._agent[2]
        if self._x11 is not None:
            request.env["DISPLAY"] = self._x11[2]
            request.env["XAUTHORITY"] = self._x11[3]
        try:
            self.target = self.avatar.open_session(request, self._client)
        except Exception:
            log.failure("ssh1 {peer}: opening the session failed", peer=self.record.peer)
            self._session_output(b"sshgateway: could not start the session\r\n", stderr=True)
            self._session_exited(ExitInfo(status=255))
            return
        if self.target is not None and not self.done:
            self.target.registerProducer(_InputValve(self, "stdin"), True)

    # ------------------------------------------------------------ interactive phase
    def _on_eof(self, event: ev.StdinEOF) -> None:
        if self.target is not None:
            self.target.close_stdin()

    def _on_window(self, event: ev.WindowChanged) -> None:
        if self.target is not None:
            self.target.resize(event.size)

    def _session_output(self, data: bytes, stderr: bool) -> None:
        core = self.core
        if core is None or self.done or core.closed or not data:
            return
        (core.send_stderr if stderr else core.send_stdout)(data)
        self._flush()

    def _session_exited(self, info: ExitInfo) -> None:
        core = self.core
        # The program is gone: nothing will resume our input for it any more.
        self._resume_input("stdin")
        if core is None or self.done or core.closed:
            return
        status = info.as_status()
        if self.record.flow is not None:
            self.record.flow.exit(status, info.signal)
        core.send_exit_status(status)
        self._flush()
        self._exit_timer = self.factory.clock.callLater(
            EXIT_CONFIRMATION_TIMEOUT, self._exit_not_confirmed
        )

    def _exit_not_confirmed(self) -> None:
        self._exit_timer = None
        self._disconnect("client did not confirm the exit status")

    def _on_exit_confirmed(self, event: ev.ExitConfirmed) -> None:
        if self._exit_timer is not None and self._exit_timer.active():
            self._exit_timer.cancel()
        self._exit_timer = None
        # core.closed is now set: _flush closes the transport with "session finished".

    def _on_debug(self, event: ev.DebugMessage) -> None:
        log.debug("ssh1 {peer}: client debug message", peer=self.record.peer)

    def _on_peer_disconnected(self, event: ev.PeerDisconnected) -> None:
        log.info(
            "ssh1 {peer}: client disconnected: {reason}",
            peer=self.record.peer,
            reason=event.reason,
        )

    def _on_failed(self, event: ev.ConnectionFailed) -> None:
        log.info(
            "ssh1 {peer}: protocol error, disconnecting: {reason}",
            peer=self.record.peer,
            reason=event.reason,
        )

    # ------------------------------------------------------------ local port forwarding
    def _on_port_open(self, event: ev.PortOpen) -> None:
        assert self.core is not None
        host = event.host.decode("ascii", "replace")
        destination = f"{host}:{event.port}"
        if self.core.phase is Phase.PREPARATORY:
            # plink -1 -N: forwards without a session, which SSH-1 does not have (PuTTY
            # calls -N "SSH-2 only"). Refused, a permitted destination too; the connection
            # and a later session live on.
            log.info(
                "ssh1 {peer}: refused port forward to {destination}: no shell or command"
                " started yet (SSH-1 forwards only within a session; plink -N is SSH-2 only)",
                peer=self.record.peer,
                destination=destination,
            )
            self._refuse_port_open(event.channel)
            return
        restricted = self._restricted(PORT_FORWARDING)
        if restricted is not None:
            log.info(
                "ssh1 {peer}: refused port forward to {destination}: {why}",
                peer=self.record.peer,
                destination=destination,
                why=restricted,
            )
            self._refuse_port_open(event.channel)
            return
        if len(self._channels) >= MAX_FORWARDS:
            log.info(
                "ssh1 {peer}: refused port forward: {n} already open",
                peer=self.record.peer,
                n=len(self._channels),
            )
            self._refuse_port_open(event.channel)
            return
        if not permits(self.factory.settings.permit_open, host, event.port):
            log.info(
                "ssh1 {peer}: refused port forward to {destination}",
                peer=self.record.peer,
                destination=destination,
            )
            self._refuse_port_open(event.channel)
            return
        from twisted.internet.endpoints import HostnameEndpoint

        channel = self._next_channel
        self._next_channel += 1
        forward = _Forward(self, channel, event.channel, "local")
        self._channels[channel] = forward
        endpoint = HostnameEndpoint(self.factory.clock, host, event.port, timeout=10)
        d = endpoint.connect(_OneShot(forward))

        def failed(failure: Failure) -> None:
            log.info(
                "ssh1 {peer}: port forward to {destination} failed: {error}",
                peer=self.record.peer,
                destination=destination,
                error=failure.getErrorMessage(),
            )
            core = self.core
            if core is not None and not self.done and not core.closed:
                self._refuse_port_open(event.channel, channel)
                self._flush()
            else:
                self._channels.pop(channel, None)

        d.addErrback(failed)

    def _refuse_port_open(self, peer_channel: int, channel: int | None = None) -> None:
        """Refuse the client's MSG_PORT_OPEN for ``peer_channel`` (``channel``: the number
        we gave it, if any). The protocol's answer is CHANNEL_OPEN_FAILURE, but PuTTY
        (since its 0.71 rewrite, 0.78 included) frees the channel twice on it and aborts
        ("double free detected"), taking the session with it. A PuTTY client therefore
        gets the channel confirmed and at once closed: its local connection closes
        without data, as refused, and the session lives on. The refused channel counts
        against MAX_FORWARDS until the client has closed it too."""
        assert self.core is not None
        if not self._refuse_by_closing or (channel is None and len(self._channels) >= MAX_FORWARDS):
            if channel is not None:
                self._channels.pop(channel, None)
            self.core.send_channel_open_failure(peer_channel)
            return
        if channel is None:
            channel = self._next_channel
            self._next_channel += 1
        refused = _Forward(self, channel, peer_channel, "refused")
        refused.socket_closed = refused.we_closed = True  # no socket; our CLOSE follows
        self._channels[channel] = refused
        self.core.send_channel_open_confirmation(peer_channel, channel)
        self.core.send_channel_close(peer_channel)

    def _forward_connected(self, forward: _Forward) -> None:
        core = self.core
        if core is None or self.done or core.closed:
            forward.transport.loseConnection()
            return
        if forward.opened_by_us:
            # Nothing is read from the program until the client has a channel for it.
            forward.transport.pauseProducing()
            if forward.kind == "x11":
                core.send_x11_open(forward.channel)
            else:
                core.send_agent_open(forward.channel)
        else:
            assert forward.peer_channel is not None
            self._gate.add(forward.transport)
            core.send_channel_open_confirmation(forward.peer_channel, forward.channel)
        self._flush()

    def _forward_data(self, forward: _Forward, data: bytes) -> None:
        core = self.core
        if core is None or self.done or core.closed or forward.we_closed:
            return
        if forward.peer_channel is None:
            return  # cannot happen: reading is paused until the channel is confirmed
        core.send_channel_data(forward.peer_channel, data)
        self._flush()

    def _forward_lost(self, forward: _Forward) -> None:
        forward.socket_closed = True
        self._gate.remove(forward.transport)
        self._resume_input(forward.valve.name)
        core = self.core
        if forward.client_closed:
            self._channels.pop(forward.channel, None)
            return
        if forward.peer_channel is None:
            return  # a channel not confirmed yet: closed when the answer comes
        if core is None or self.done or core.closed or forward.we_closed:
            return
        forward.we_closed = True
        core.send_channel_close(forward.peer_channel)
        self._flush()

    def _on_channel_open_confirmed(self, event: ev.ChannelOpenConfirmed) -> None:
        assert self.core is not None
        forward = self._channels.get(event.channel)
        if forward is None or not forward.opened_by_us or forward.peer_channel is not None:
            self._disconnect(f"unexpected open confirmation for channel {event.channel}")
            return
        forward.peer_channel = event.peer_channel
        if forward.socket_closed:
            forward.we_closed = True
            self.core.send_channel_close(forward.peer_channel)
            return
        forward.transport.resumeProducing()
        self._gate.add(forward.transport)

    def _on_channel_open_failed(self, event: ev.ChannelOpenFailed) -> None:
        forward = self._channels.get(event.channel)
        if forward is None or not forward.opened_by_us or forward.peer_channel is not None:
            self._disconnect(f"unexpected open failure for channel {event.channel}")
            return
        self._channels.pop(event.channel, None)
        forward.client_closed = True
        if not forward.socket_closed:
            forward.transport.loseConnection()

    # ------------------------------------------------------------ X11 forwarding
    def _start_x11_forwarding(self, event: ev.X11ForwardingRequested) -> bool:
        """Listen on the first free display from X11_FIRST_DISPLAY on loopback, and write a
        private Xauthority with the client's (fake) cookie, as sshd does; the client
        checks that cookie and substitutes the real one when a program connects."""
        port = None
        for display in range(X11_FIRST_DISPLAY, X11_FIRST_DISPLAY + X11_DISPLAYS):
            try:
                port = self.factory.clock.listenTCP(
                    6000 + display, _ChannelListener(self, "x11"), interface="127.0.0.1"
                )
                break
            except CannotListenError:
                continue
        if port is None:
            return False
        directory = tempfile.mkdtemp(prefix="sshgateway-x11-")
        xauthority = os.path.join(directory, "Xauthority")
        number = str(display).encode()
        cookie = bytes.fromhex(event.cookie.decode("ascii"))
        entries = [
            _xauth_entry(256, socket.gethostname().encode(), number, event.protocol, cookie),
            _xauth_entry(0, bytes((127, 0, 0, 1)), number, event.protocol, cookie),
        ]
        fd = os.open(xauthority, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(b"".join(entries))
        self._x11 = (port, directory, f"localhost:{display}.{event.screen or 0}", xauthority)
        return True

    def _stop_x11_forwarding(self) -> None:
        if self._x11 is None:
            return
        port, directory, _display, _file = self._x11
        self._x11 = None
        port.stopListening()
        shutil.rmtree(directory, ignore_errors=True)

    # ------------------------------------------------------------ agent forwarding
    def _start_agent_forwarding(self) -> bool:
        try:
            directory = tempfile.mkdtemp(prefix="sshgateway-agent-")
            path = os.path.join(directory, "agent")
            port = self.factory.clock.listenUNIX(path, _ChannelListener(self, "agent"), mode=0o600)
        except Exception as exc:
            log.info(
                "ssh1 {peer}: agent forwarding failed: {error}", peer=self.record.peer, error=exc
            )
            return False
        self._agent = (port, directory, path)
        return True

    def _incoming_channel(self, kind: str) -> Protocol | None:
        core = self.core
        if core is None or self.done or core.closed or len(self._channels) >= MAX_FORWARDS:
            return None
        channel = self._next_channel
        self._next_channel += 1
        forward = _Forward(self, channel, None, kind)
        self._channels[channel] = forward
        return forward

    def _stop_agent_forwarding(self) -> None:
        if self._agent is None:
            return
        port, directory, _path = self._agent
        self._agent = None
        # The port unlinks its socket file when it has stopped, a reactor turn later; the
        # directory goes after that, or the unlink fails on a missing file.
        stopped = defer.maybeDeferred(port.stopListening)
        stopped.addBoth(lambda _: shutil.rmtree(directory, ignore_errors=True))

    def _known_channel(self, number: int, what: str) -> _Forward | None:
        """The open forward with this number; None for one already closed (messages
        cross on the wire, and numbers are never reused) or, after a disconnect, for one
        that never existed."""
        forward = self._channels.get(number)
        if forward is None and number >= self._next_channel:
            self._disconnect(f"{what} for unknown channel {number}")
        return forward

    def _on_channel_data(self, event: ev.ChannelData) -> None:
        forward = self._known_channel(event.channel, "data")
        if forward is None:
            return
        if forward.transport is not None and not forward.client_closed:
            forward.transport.write(event.data)

    def _on_channel_close(self, event: ev.ChannelClosed) -> None:
        assert self.core is not None
        forward = self._known_channel(event.channel, "close")
        if forward is None:
            return
        if forward.peer_channel is None:
            self._disconnect(f"close for channel {event.channel} before confirming it")
            return
        forward.client_closed = True
        self.core.send_channel_close_confirmation(forward.peer_channel)
        if forward.we_closed:
            self._channels.pop(event.channel, None)
        elif forward.transport is not None:
            forward.we_closed = True  # the socket's own close needs no CLOSE from us now
            forward.transport.loseConnection()

    def _on_channel_close_confirmed(self, event: ev.ChannelCloseConfirmed) -> None:
        forward = self._channels.get(event.channel)
        if forward is None:
            return
        if forward.transport is not None:
            forward.transport.loseConnection()
        if forward.client_closed or forward.we_closed:
            self._channels.pop(event.channel, None)



class _ChannelListener(Factory):
    """Accepts the program's connections to the forwarded agent socket or X display."""

    noisy = False

    def __init__(self, owner: SSH1ServerProtocol, kind: str) -> None:
        self.owner = owner
        self.kind = kind

    def buildProtocol(self, addr: object) -> Protocol | None:
        return self.owner._incoming_channel(self.kind)


class _OneShot(Factory):
    noisy = False  # one per forwarded connection: no "Starting factory" log lines

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self._protocol
