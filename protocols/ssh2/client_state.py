"""What one upstream SSH-2 connection of the gateway's client is: the options it is given
(:class:`SSH2ClientOptions`), the one error it reports (:class:`SSH2ClientError`), where
the session's output goes (:class:`SessionSink`) and the state shared by its transport,
userauth and channel (:class:`ClientAttempt`), from TCP connect to the end of the session.

Nothing here knows the gateway: the caller turns its config into options, checks host
keys through ``verify_host_key`` and maps SSH2ClientError to its own failure type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.conch.ssh import keys
from twisted.internet import defer
from twisted.logger import Logger

from protocols.flow import FlowRecorder
from protocols.session import ExitInfo, SessionRequest

if TYPE_CHECKING:
    from protocols.ssh2.client import SSH2ClientTransport
    from protocols.ssh2.client_channel import SessionChannel, UpstreamSession

log = Logger(namespace="gateway.targets.ssh2")

MAX_TEXT = 200  # upstream-provided text (disconnect reasons) shown to the user


class SSH2ClientError(Exception):
    """Why the upstream SSH-2 session failed; ``str()`` is one line for the user, without
    secrets."""


class SessionSink(TypingProtocol):
    """Where the session's output and end go (the bridge's UpstreamSink fits)."""

    def stdout(self, data: bytes) -> None: ...
    def stderr(self, data: bytes) -> None: ...
    def eof(self) -> None: ...
    def exited(self, info: ExitInfo) -> None: ...
    def failed(self, message: str) -> None: ...
    def pause_input(self) -> None: ...
    def resume_input(self) -> None: ...


# Called with the device's host key once the key exchange presents it; fires with None or
# with a callable run once the device has proved it holds the key (the moment to pin a new
# key), or fails with SSH2ClientError to refuse the key.
HostKeyVerifier = Callable[[keys.Key], defer.Deferred]


@dataclass(frozen=True)
class SSH2ClientOptions:
    host: str
    port: int
    username: str
    verify_host_key: HostKeyVerifier = field(compare=False)
    password: str | None = None
    key: keys.Key | None = None
    # Our KEXINIT lists, best first (protocols.ssh2.algorithms.client_offer).
    kex: tuple[bytes, ...] = ()
    host_key_algorithms: tuple[bytes, ...] = ()
    ciphers: tuple[bytes, ...] = ()
    macs: tuple[bytes, ...] = ()
    # ssh-rsa (SHA-1) signatures allowed for an RSA user key: first with a server that
    # sends no server-sig-algs, last otherwise (protocols.ssh2.client_auth).
    sha1_user_signatures: bool = False
    # False: never start a key exchange towards the device (one it starts is answered).
    rekey: bool = True
    # Keyboard-interactive prompts the client cannot answer itself go to the user:
    # ``ask(prompt, echo)`` fires with the answer or fails (its str() is shown). None:
    # echoed prompts get the login name, hidden ones the password.
    ask: Callable[[str, bool], defer.Deferred] | None = field(default=None, compare=False)
    connect_timeout: float = 30.0
    name: str = "upstream"  # how failures after the session opened name the device
    # Flow recording of this upstream leg: the recorder, and who takes it when the
    # connection is gone.
    flow: FlowRecorder | None = field(default=None, compare=False)
    flow_done: Callable[[FlowRecorder], None] | None = field(default=None, compare=False)

    def __repr__(self) -> str:  # no password in any log line
        return f"SSH2ClientOptions(username={self.username!r}, host={self.host!r}, port={self.port})"


def short(text: bytes | str) -> str:
    """Upstream-provided text made safe to show: printable, bounded, never empty."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text[:MAX_TEXT]).strip()
    return text or "no reason given"


class ClientAttempt:
    """The state of one upstream connection, from TCP connect to the end of the session.

    ``deferred`` fires once: with the UpstreamSession when exec/shell is accepted, or
    with an SSH2ClientError. After that, the sink hears about output and the end."""

    def __init__(
        self, options: SSH2ClientOptions, request: SessionRequest, sink: SessionSink, clock: Any
    ) -> None:
        self.options = options
        self.request = request
        self.sink = sink
        self.clock = clock
        self.login = options.username
        self.password = options.password
        self.key = options.key
        self.phase = "connect"  # connect, key exchange, login, session set-up, open
        self.failure: SSH2ClientError | None = None
        self.finished = False  # no sink calls after this
        self.connector: Any = None
        self.transport: SSH2ClientTransport | None = None
        self.channel: SessionChannel | None = None
        self.upstream: UpstreamSession | None = None
        self.deferred: defer.Deferred = defer.Deferred(self._cancel)
        self.flow: FlowRecorder | None = options.flow

    @property
    def name(self) -> str:
        return f"{self.options.host}:{self.options.port}"

    def fail(self, failure: SSH2ClientError) -> None:
        """Remember the first reason; it is reported when the connection is gone."""
        if self.failure is None:
            self.failure = failure

    def opened(self, upstream: UpstreamSession) -> None:
        self.phase = "open"
        self.upstream = upstream
        if not self.deferred.called:
            self.deferred.callback(upstream)

    def connection_lost(self) -> None:
        if self.phase == "open":
            if not self.finished:
                self.finished = True
                message = str(self.failure) if self.failure else "connection reset mid-session"
                log.info("ssh2 upstream {name}: {message}", name=self.name, message=message)
                # The bridge prefixes only connect-phase failures with the target name.
                self.sink.failed(f"{self.options.name}: {message}")
            return
        if self.deferred.called:
            return
        failure = self.failure or SSH2ClientError(
            f"connection closed by upstream during {self.phase}"
        )
        log.info("ssh2 upstream {name}: {message}", name=self.name, message=str(failure))
        self.deferred.errback(failure)

    def flow_closed(self) -> None:
        """Hand the flow record over once the connection is gone."""
        flow, self.flow = self.flow, None
        if flow is None:
            return
        if self.failure is not None:
            flow.close(str(self.failure))
        elif flow.exit_status is not None or flow.exit_signal is not None:
            flow.close("session finished")
        else:
            flow.close("connection closed")
        if self.options.flow_done is not None:
            self.options.flow_done(flow)

    def _cancel(self, d: defer.Deferred) -> None:
        self.finished = True
        self.drop()

    def drop(self) -> None:
        if self.transport is not None and self.transport.transport is not None:
            self.transport.hang_up()
        elif self.connector is not None:
            self.connector.disconnect()
