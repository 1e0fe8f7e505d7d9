"""The SSH-1 client on Twisted: version exchange, then it feeds the sans-I/O client core,
verifies the host key through the caller, logs in, opens one session and relays it.

It is written for a gateway relaying a session, not for a person at a terminal: the
caller supplies the login (:class:`SSH1ClientOptions`) and a *sink* that takes the
session's output and end, and gets back this protocol, which accepts stdin, EOF, window
changes and flow control once :attr:`SSH1ClientProtocol.opened` has fired.

Failures before the session is open errback ``opened`` (with :class:`SSH1ClientError`,
or whatever the host-key verifier raised); later ones go to ``sink.failed``. Either way
the message is one line for the user, without secrets.

Flow control (SSH-1 has no windows): while the sink's consumer pauses us we stop reading
the device's socket; while the device's socket cannot take more we pause the sink's input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol as TypingProtocol

from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer, error
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from protocols.flow import C2S, S2C, FlowRecorder
from protocols.session import ExitInfo, SessionRequest, WindowSize
from protocols.ssh1 import events as ev
from protocols.ssh1 import keys
from protocols.ssh1 import messages as m
from protocols.ssh1.client_connection import (
    DEFAULT_CIPHERS,
    DEFAULT_MIN_KEY_BITS,
    ClientConnection,
)
from protocols.ssh1.connection import printable
from protocols.ssh1.identification import (
    IdentificationError,
    IdentificationReader,
    parse_version,
)
from protocols.ssh1.pump import CorePump

log = Logger(namespace="sshgateway.ssh1.client")


class SSH1ClientError(Exception):
    """Why the upstream SSH-1 session could not be opened; ``str()`` is one line."""


class SessionSink(TypingProtocol):
    """Where the session's output and end go (the bridge's UpstreamSink fits)."""

    def stdout(self, data: bytes) -> None: ...
    def stderr(self, data: bytes) -> None: ...
    def exited(self, info: ExitInfo) -> None: ...
    def failed(self, message: str) -> None: ...
    def pause_input(self) -> None: ...
    def resume_input(self) -> None: ...


@dataclass(frozen=True)
class SSH1ClientOptions:
    username: str
    # (e, n) of the device's host key; raise to refuse it (the exception reaches the
    # caller of ``opened`` unchanged, so its message can be the user's warning). It may
    # return a callable, called once the device has proved it holds the key (its SUCCESS
    # to our session key, which only the host key's owner can decrypt): the moment to pin
    # a new key. What that raises fails the session like a refusal.
    verify_host_key: Callable[[int, int], Callable[[], None] | None]
    password: str | None = None
    rsa_key: rsa.RSAPrivateKey | None = None
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    compression: int = 0  # 0 = off, else zlib level 1..9
    # The smallest host or server key this device may have; smaller ones end the login
    # before the host key is checked. Above it, keys PuTTY accepts are accepted (warned).
    min_key_bits: int = DEFAULT_MIN_KEY_BITS
    software_version: str = "0"
    peer: str = "upstream"  # "host:port", for log lines and messages
    # Flow recording of this upstream leg: the recorder, and who takes it when the
    # connection is gone (the target's flow writer).
    flow: FlowRecorder | None = field(default=None, compare=False)
    flow_done: Callable[[FlowRecorder], None] | None = field(default=None, compare=False)

    def __repr__(self) -> str:  # no password in any log line
        return f"SSH1ClientOptions(username={self.username!r}, peer={self.peer!r})"


@implementer(IPushProducer)
class _TransportGate:
    """Registered with the device's transport: its buffer full pauses the client's input."""

    def __init__(self, protocol: SSH1ClientProtocol) -> None:
        self.protocol = protocol
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        if self.protocol.is_open:
            self.protocol.sink.pause_input()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.protocol.is_open:
            self.protocol.sink.resume_input()

    def stopProducing(self) -> None:
        pass


class SSH1ClientProtocol(CorePump):
    core: ClientConnection | None
    # Devices send small packets too: the sink gets one write per run of stdout packets.
    batched_event = ev.StdoutData

    def __init__(self, options: SSH1ClientOptions, request: SessionRequest, sink: SessionSink) -> None:
        super().__init__()
        self.options = options
        self.request = request
        self.sink = sink
        self.opened: defer.Deferred = defer.Deferred()
        self.server_version = b""
        self.is_open = False  # the session has started (opened fired)
        self.pty_granted = False
        self._identification = IdentificationReader()
        self._methods: list[str] = []
        self._tried: list[str] = []
        self._eof_sent = False
        self._prepare_steps: list[str] = []
        self._pty_asked = False
        self._fail_reason = ""
        self._host_key_proven: Callable[[], None] | None = None
        self._flow = options.flow
        self._gate = _TransportGate(self)
        self._handlers = {
            ev.PublicKeyReceived: self._on_public_key,
            ev.RequestAnswered: self._on_answer,
            ev.RSAChallengeReceived: self._on_challenge,
            ev.StderrData: lambda e: self.sink.stderr(e.data),
            ev.ExitStatus: self._on_exit_status,
            ev.ForwardRefused: self._on_forward_refused,
            ev.DebugMessage: self._on_debug,
            ev.PeerDisconnected: lambda e: self._fail(f"device disconnected: {e.reason}"),
            ev.ConnectionFailed: lambda e: self._fail(f"SSH-1 protocol error: {e.reason}"),
        }

    # ------------------------------------------------------------ description
    @property
    def description(self) -> str:
        core = self.core
        if core is None or core.public_key is None:
            return f"ssh1 {self.options.peer}"
        pk = core.public_key
        return (
            f"ssh1 {self.options.peer} cipher={core.cipher} "
            f"compression={core.compression_level or 'none'} "
            f"host_key_bits={pk.host_n.bit_length()} server_key_bits={pk.server_n.bit_length()}"
        )

    # ------------------------------------------------------------ connection
    def connectionMade(self) -> None:
        self.transport.registerProducer(self._gate, True)

    def dataReceived(self, data: bytes) -> None:
        if self.core is None and not self.done:
            self._read_identification(data)
            return
        super().dataReceived(data)

    def _read_identification(self, data: bytes) -> None:
        try:
            found = self._identification.feed(data)
        except IdentificationError as exc:
            self._fail(f"device sent {exc.reason}")
            return
        if found is None:
            return
        self._start(*found)
        if self.core is not None:
            rest = self._identification.rest()
            if rest:
                super().dataReceived(rest)

    def _start(self, line: bytes, line_size: int) -> None:
        shown = printable(line, 80)
        version_numbers = parse_version(line)
        if version_numbers is None:
            self._fail(f"device sent a malformed identification line: {shown}")
            return
        major, minor = version_numbers
        if major == 2:
            self._fail(f"device speaks only SSH-2 ({shown}); use protocol = \"ssh2\"")
            return
        if major != 1 or minor < 3:
            self._fail(f"device speaks an unsupported SSH version ({shown})")
            return
        self.server_version = line
        ours = "1.3" if minor in (3, 4) else "1.5"
        version = f"SSH-{ours}-sshgateway_{self.options.software_version}"
        self.transport.write(f"{version}\n".encode())
        self.core = ClientConnection(self.options.ciphers)
        flow = self._flow
        if flow is not None:
            flow.version(S2C, line.decode("ascii", "replace"), line_size)
            flow.version(C2S, version, len(version) + 1)
            self.core.on_packet_in = partial(flow.packet, S2C)
            self.core.on_packet_out = partial(flow.packet, C2S)
        log.debug("ssh1 client {peer}: server is {version}", peer=self.options.peer, version=shown)

    def connectionLost(self, reason: Failure | None = None) -> None:
        flow, self._flow = self._flow, None
        if flow is not None:
            if not self.done:
                self._fail_reason = "connection lost"
            flow.close(self._fail_reason or "connection closed")
            if self.options.flow_done is not None:
                self.options.flow_done(flow)
        if self.done:
            return
        if self.core is None:
            self._fail("connection closed by the device before the SSH-1 identification")
        elif self.core.closed and self.core.close_reason:
            self._fail(f"connection to the device lost ({self.core.close_reason})")
        elif reason is None or reason.check(error.ConnectionDone):
            self._fail("connection to the device lost: closed before an exit status")
        else:
            self._fail(f"connection to the device lost: {reason.getErrorMessage()}")

    def _core_closed(self, reason: str) -> None:
        self._fail(f"SSH-1 connection closed: {reason}")

    def _deliver_batch(self, data: bytes) -> None:
        if not self.done:
            self.sink.stdout(data)

    def _fail(self, message: str, exc: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self._fail_reason = message
        log.info("ssh1 client {peer}: {message}", peer=self.options.peer, message=message)
        self._drop(message)
        if self.is_open:  # the bridge names the target only for failures before this
            self.sink.failed(f"{self.options.peer}: {message}")
        elif not self.opened.called:
            self.opened.errback(exc if exc is not None else SSH1ClientError(message))

    def abort(self) -> None:
        """Drop the connection at once (connect timeout): nothing reaches the sink."""
        self.done = True
        if self.transport is not None:
            self.transport.abortConnection()

    # ------------------------------------------------------------ key exchange and login
    def _on_public_key(self, event: ev.PublicKeyReceived) -> None:
        floor = self.options.min_key_bits
        small = [
            (what, n.bit_length())
            for what, n in (("server key", event.server_n), ("host key", event.host_n))
            if n.bit_length() < floor
        ]
        if small:  # policy, before the host key is even looked at
            shown = " and its ".join(
                f"{what} {bits} bits" if i else f"{what} has {bits} bits"
                for i, (what, bits) in enumerate(small)
            )
            self._fail(f"the device's {shown}, under this target's min_key_bits ({floor})")
            return
        for warning in event.warnings:
            log.warn(
                "ssh1 client {peer}: {warning} (accepted for a legacy device)",
                peer=self.options.peer,
                warning=warning,
            )
        try:
            self._host_key_proven = self.options.verify_host_key(event.host_e, event.host_n)
        except Exception as exc:  # the verifier's refusal, with the user's warning
            self._fail(str(exc) or "host key refused", exc)
            return
        assert self.core is not None
        flow = self._flow
        if flow is not None:
            flow.negotiated.update(
                {
                    "host_key_type": "rsa1",
                    "host_key_bits": event.host_n.bit_length(),
                    "host_key_fingerprint": "MD5:" + keys.ssh1_fingerprint(event.host_e, event.host_n),
                    "server_key_bits": event.server_n.bit_length(),
                    "ciphers_offered": list(event.ciphers),
                    "cipher": event.cipher,
                    "compression": "none",
                    "protocol_flags": event.protocol_flags,
                    "auth_mask": event.auth_mask,
                }
            )
            if event.warnings:  # weak keys accepted for a legacy device: the audit mark
                flow.negotiated["warnings"] = list(event.warnings)
        self.core.send_session_key()
        names = {m.SSH_AUTH_RSA: "rsa", m.SSH_AUTH_PASSWORD: "password"}
        if self.options.rsa_key is not None and event.auth_mask & (1 << m.SSH_AUTH_RSA):
            self._methods.append(names[m.SSH_AUTH_RSA])
        if self.options.password is not None and event.auth_mask & (1 << m.SSH_AUTH_PASSWORD):
            self._methods.append(names[m.SSH_AUTH_PASSWORD])

    def _on_answer(self, event: ev.RequestAnswered) -> None:
        core = self.core
        assert core is not None
        request, ok = event.request, event.ok
        flow = self._flow
        if flow is not None:
            self._record_answer(flow, request, ok)
        if request == "session-key":
            log.debug(
                "ssh1 client {peer}: session key accepted, cipher {cipher}",
                peer=self.options.peer,
                cipher=core.cipher,
            )
            proven, self._host_key_proven = self._host_key_proven, None
            if proven is not None:
                try:
                    proven()
                except Exception as exc:  # e.g. another session pinned a different key
                    self._fail(str(exc) or "host key refused", exc)
                    return
            core.send_user(self.options.username.encode("utf-8"))
        elif request in ("user", "password", "rsa-response"):
            if ok:
                self._logged_in(request)
            else:
                self._next_method()
        elif request == "rsa":  # FAILURE: the key is not authorised there
            self._next_method()
        elif request == "compression":
            if not ok:
                log.info("ssh1 client {peer}: device refused compression", peer=self.options.peer)
            self._prepare()
        elif request == "pty":
            self.pty_granted = ok
            if not ok:
                log.info("ssh1 client {peer}: device refused a pty", peer=self.options.peer)
            self._exec()

    def _record_answer(self, flow: FlowRecorder, request: str, ok: bool) -> None:
        result = "success" if ok else "failure"
        method = {"user": "none", "password": "password", "rsa": "rsa", "rsa-response": "rsa"}
        if request in method and (request != "rsa" or not ok):  # rsa OK = a challenge follows
            flow.auth(method[request], result)
        elif request in ("compression", "pty"):
            flow.request(request, result)
            if request == "compression" and ok:
                flow.negotiated["compression"] = f"zlib-{self.options.compression}"

    def _next_method(self) -> None:
        core = self.core
        assert core is not None
        if not self._methods:
            tried = ", ".join(self._tried) or "nothing: no usable credentials for what it offers"
            self._fail(f"login as {self.options.username!r} refused by the device (tried {tried})")
            return
        method = self._methods.pop(0)
        self._tried.append(method)
        if method == "rsa":
            assert self.options.rsa_key is not None
            core.send_rsa(self.options.rsa_key.public_key().public_numbers().n)
        else:
            assert self.options.password is not None
            core.send_password(self.options.password.encode("utf-8"))

    def _on_challenge(self, event: ev.RSAChallengeReceived) -> None:
        assert self.core is not None and self.options.rsa_key is not None
        self.core.answer_rsa_challenge(self.options.rsa_key, event.value)

    def _logged_in(self, request: str) -> None:
        method = {"user": "none", "password": "password", "rsa-response": "rsa"}[request]
        log.info(
            "ssh1 client {peer}: logged in as {user!r} ({method})",
            peer=self.options.peer,
            user=self.options.username,
            method=method,
        )
        self._prepare_steps = ["compression"] if self.options.compression else []
        self._prepare()

    def _prepare(self) -> None:
        core = self.core
        assert core is not None
        if self._prepare_steps:
            self._prepare_steps.pop(0)
            core.request_compression(self.options.compression)
        elif self.request.pty is not None and core.awaiting is None and not self._pty_asked:
            self._pty_asked = True
            core.request_pty(self.request.pty)
        else:
            self._exec()

    def _exec(self) -> None:
        core = self.core
        assert core is not None
        if self.request.command is None:
            core.exec_shell()
        else:
            core.exec_command(self.request.command)
        if self._flow is not None:
            self._flow.request("exec_shell" if self.request.command is None else "exec_cmd", "success")
        self.is_open = True
        if self._gate.paused:
            self.sink.pause_input()
        self.opened.callback(self)

    # ------------------------------------------------------------ interactive
    def _on_exit_status(self, event: ev.ExitStatus) -> None:
        if self._flow is not None:
            self._flow.exit(event.status)
            self._fail_reason = "session finished"
        self.done = True
        self._drop()  # sends the EXIT_CONFIRMATION the core queued, then closes
        self.sink.exited(ExitInfo(status=event.status))

    def _on_forward_refused(self, event: ev.ForwardRefused) -> None:
        log.info(
            "ssh1 client {peer}: refused a {kind} channel the device opened unasked",
            peer=self.options.peer,
            kind=event.kind,
        )

    def _on_debug(self, event: ev.DebugMessage) -> None:
        log.debug(
            "ssh1 client {peer}: device debug: {text}",
            peer=self.options.peer,
            text=printable(event.message),
        )

    def _interactive(self) -> ClientConnection | None:
        core = self.core
        if self.done or core is None or core.phase is not m.Phase.INTERACTIVE:
            return None
        return core

    # IUpstreamSession, once opened
    def write(self, data: bytes) -> None:
        core = self._interactive()
        if core is not None and data and not self._eof_sent:
            core.send_stdin(data)
            self._send_queued()

    def send_eof(self) -> None:
        core = self._interactive()
        if core is not None and not self._eof_sent:
            self._eof_sent = True
            core.send_eof()
            self._send_queued()

    def resize(self, size: WindowSize) -> None:
        core = self._interactive()
        if core is not None and self.pty_granted:
            core.send_window_size(size)
            self._send_queued()

    def send_signal(self, name: str) -> None:
        log.debug(
            "ssh1 client {peer}: SSH-1 cannot pass signal {name} on", peer=self.options.peer, name=name
        )

    def close(self) -> None:
        """The gateway's client went away: disconnect politely; nothing reaches the sink."""
        if self.done:
            return
        self.done = True
        self._drop("session closed by the gateway's client")

    def _drop(self, goodbye: str | None = None) -> None:
        """Close the connection, with a DISCONNECT saying ``goodbye`` first if given."""
        core = self.core
        if goodbye is not None and core is not None and not core.closed:
            core.send_disconnect(goodbye)
        self._send_queued()
        if self.transport is None:
            return
        # A device that stopped reading would keep a lost connection open forever while
        # we wait to flush; then the goodbye is not worth waiting for.
        if self._gate.paused:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self._pause_input("sink")

    def resumeProducing(self) -> None:
        self._resume_input("sink")

    def stopProducing(self) -> None:
        self.close()
