"""The bridge between a front end's session and an upstream device session.

Every upstream target (SSH-1, SSH-2, telnet) is a *connector*: given the session request
and an :class:`UpstreamSink`, it connects, checks the host key, logs in and opens the
session, and fires its Deferred with an :class:`IUpstreamSession`. This module owns what
they all share, so each protocol module holds only its wire logic:

- the front end gets its ISessionTarget at once; until the upstream session is open, the
  client's input is held (bounded: the front end's producer is paused past a limit), and
  the latest window size, an EOF and a close are remembered;
- every failure (unreachable, refused, timed out, login refused, host key changed, reset
  mid-session, idle) ends the client's session with one line on stderr and exit status
  255, and is logged;
- flow control: a front end that cannot take more output pauses the upstream session
  (which stops reading its socket or stops granting window); an upstream that cannot take
  more input pauses the front end's producer;
- one log line per bridged session: user, target, upstream description, bytes each way,
  duration, exit status.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from gateway.targets.prompts import TerminalQuestion, shown_prompt
from gateway.upstream_errors import (
    FAILURE_KEY,
    FAILURE_STATUS,
    IDLE,
    INTERNAL,
    LOST,
    TIMEOUT,
    UpstreamFailure,
)
from gateway.weak_algorithms import report_weak_leg
from protocols.flow import FlowRecorder
from protocols.session import (
    ExitInfo,
    ISessionClient,
    ISessionTarget,
    SessionRequest,
    WindowSize,
)

log = Logger()

# Client input held while the upstream session is being opened, before the front end's
# producer is paused (so a client pasting megabytes cannot grow this without bound).
MAX_PENDING_INPUT = 256 * 1024
# A login still running after PROGRESS_AFTER seconds (old firmware: HP iLO takes up to
# 90 s) gets a line on the client's stderr, then one every PROGRESS_EVERY, so the user
# sees the gateway waiting rather than silence; connect_timeout still bounds the whole.
PROGRESS_AFTER = 5.0
PROGRESS_EVERY = 15.0
# A question the device asks at login and the user must answer (gateway.targets.prompts):
# the connect timeout stops meanwhile, and this bounds the wait for the user.
ANSWER_TIMEOUT = 120.0
# FAILURE_STATUS and UpstreamFailure (imported above from gateway.upstream_errors) are
# still importable from here: the target protocols take them with the bridge's classes.


class IUpstreamSession(Interface):
    """An open session on an upstream device, provided by a connector."""

    description = Attribute("str: protocol and negotiated algorithms, for the log line")
    # Not part of the contract (read with getattr): ``algorithms``, what the leg
    # negotiated in the flow records' names ("cipher" for SSH-1; "kex",
    # "host_key_algorithm", "cipher_c2s", ... for SSH-2), for the weak-leg audit.

    def write(data: bytes) -> None:
        """Client input for the upstream program."""

    def send_eof() -> None:
        """The client sent EOF."""

    def resize(size: WindowSize) -> None:
        """The client's terminal changed size."""

    def send_signal(name: str) -> None:
        """Pass a signal on, where the upstream protocol has a way to."""

    def close() -> None:
        """Tear the upstream connection down; no sink call may follow."""

    def pauseProducing() -> None:
        """Stop delivering upstream output (stop reading the socket / granting window)."""

    def resumeProducing() -> None:
        """Deliver upstream output again."""


class UpstreamSink:
    """What a connector reports to; every call is safe after the session ended."""

    def __init__(self, bridge: BridgeSession) -> None:
        self._bridge = bridge

    @property
    def link(self) -> str | None:
        """The flow id of the client leg this upstream leg serves (None: not recorded)."""
        return getattr(self._bridge.client, "flow_id", None)

    def stdout(self, data: bytes) -> None:
        self._bridge._output(data, stderr=False)

    def stderr(self, data: bytes) -> None:
        self._bridge._output(data, stderr=True)

    def eof(self) -> None:
        self._bridge._upstream_eof()

    def exited(self, info: ExitInfo) -> None:
        self._bridge._finish(info, None)

    def failed(self, message: str) -> None:
        bridge = self._bridge
        reason = LOST if bridge.upstream is not None else UpstreamFailure.reason
        bridge._finish(ExitInfo(status=FAILURE_STATUS), message, reason)

    def ask(self, prompt: str, echo: bool) -> defer.Deferred:
        """Put a device's login question to the user in their session (it needs a pty);
        fires with the answer (str) or fails with UpstreamFailure."""
        return self._bridge._ask(prompt, echo)

    def pause_input(self) -> None:
        self._bridge._set_input_paused("upstream", True)

    def resume_input(self) -> None:
        self._bridge._set_input_paused("upstream", False)


Connector = Callable[[SessionRequest, UpstreamSink], defer.Deferred]


@dataclass
class BridgeStats:
    bytes_to_upstream: int = 0
    bytes_from_upstream: int = 0


@implementer(ISessionTarget, IPushProducer)
class BridgeSession:
    """ISessionTarget for the front end; drives one connector's upstream session."""

    def __init__(
        self,
        clock: IReactorTime,
        client: ISessionClient,
        request: SessionRequest,
        connect: Connector,
        *,
        username: str,
        target: str,
        connect_timeout: float,
        idle_timeout: float | None = None,
        target_protocol: str = "",
    ) -> None:
        self.clock = clock
        self.target_protocol = target_protocol
        self.client = client
        self.request = request
        self.username = username
        self.target = target
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.stats = BridgeStats()
        self.started = clock.seconds()
        self.upstream: IUpstreamSession | None = None
        self.done = False
        self._pending = bytearray()
        self._pending_eof = False
        self._pending_size: WindowSize | None = None
        self._output_paused = False
        self._input_paused: set[str] = set()
        self._input_producer: Any = None
        self._eof_sent = False
        self._idle: IDelayedCall | None = None
        self._connecting: defer.Deferred | None = None
        client.registerProducer(self, True)
        self._timeout = clock.callLater(connect_timeout, self._connect_timed_out)
        self._progress: IDelayedCall | None = None
        self._question: TerminalQuestion | None = None
        self._question_timer: IDelayedCall | None = None
        self._connect_left = connect_timeout  # while a question stops the connect timer
        if connect_timeout > PROGRESS_AFTER:
            self._progress = clock.callLater(PROGRESS_AFTER, self._still_connecting)
        self._connecting = defer.maybeDeferred(connect, request, UpstreamSink(self))
        self._connecting.addCallbacks(self._opened, self._open_failed)

    # -- connection phase ---------------------------------------------------------------

    def _connect_timed_out(self) -> None:
        self._timeout = None
        if self.upstream is None and not self.done:
            connecting, self._connecting = self._connecting, None
            self._finish(
                ExitInfo(status=FAILURE_STATUS),
                f"{self.target}: no session within {self.connect_timeout:g} s",
                TIMEOUT,
            )
            if connecting is not None:
                connecting.cancel()

    def _still_connecting(self) -> None:
        self._progress = None
        if self.upstream is not None or self.done:
            return
        waited = self.clock.seconds() - self.started
        self.client.write_stderr(
            f"sshgateway: waiting for {self.target} ({waited:.0f} s; gives up after "
            f"{self.connect_timeout:g} s)\r\n".encode("utf-8", "replace")
        )
        if waited + PROGRESS_EVERY < self.connect_timeout:
            self._progress = self.clock.callLater(PROGRESS_EVERY, self._still_connecting)

    def _ask(self, prompt: str, echo: bool) -> defer.Deferred:
        if self.done:
            return defer.fail(UpstreamFailure("session closed"))
        if self.request.pty is None:
            return defer.fail(
                UpstreamFailure(
                    "the device asks a question at login that only the user can answer: "
                    "connect with a terminal (ssh -t)"
                )
            )
        if self._question is not None or self.upstream is not None:
            return defer.fail(UpstreamFailure("the device asked out of turn"))
        # The user's time is not the device's: the connect timeout waits meanwhile.
        if self._timeout is not None and self._timeout.active():
            self._connect_left = max(self._timeout.getTime() - self.clock.seconds(), 1.0)
        self._cancel(self._timeout)
        self._cancel(self._progress)
        self._timeout = self._progress = None
        question = TerminalQuestion(echo, self.client.write_stderr)
        self._question = question
        self._question_timer = self.clock.callLater(
            ANSWER_TIMEOUT, question.cancel, f"no answer within {ANSWER_TIMEOUT:g} s"
        )
        self.client.write_stderr(shown_prompt(prompt))
        question.deferred.addBoth(self._answered)
        if self._pending:  # typed ahead
            pending, self._pending = bytes(self._pending), bytearray()
            self._pending += question.feed(pending)
        return question.deferred

    def _answered(self, result: Any) -> Any:
        self._question = None
        self._cancel(self._question_timer)
        self._question_timer = None
        if not self.done and self.upstream is None:
            self._timeout = self.clock.callLater(self._connect_left, self._connect_timed_out)
        return result

    def _opened(self, upstream: IUpstreamSession) -> None:
        self._connecting = None
        self._cancel(self._timeout)
        self._cancel(self._progress)
        self._timeout = self._progress = None
        if self.done:
            upstream.close()
            return
        self.upstream = upstream
        log.info(
            "bridge {user} -> {target}: session open ({upstream})",
            user=self.username,
            target=self.target,
            upstream=upstream.description,
        )
        report_weak_leg(
            "upstream",
            self.target_protocol,
            getattr(upstream, "algorithms", None) or {},
            user=self.username,
            target=self.target,
            flow_id=getattr(self.client, "flow_id", None),
        )
        if self._pending_size is not None:
            upstream.resize(self._pending_size)
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            upstream.write(data)
        self._set_input_paused("pending", False)
        if self._pending_eof:
            upstream.send_eof()
        if self._output_paused:
            upstream.pauseProducing()
        self._touch()

    def _open_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self.done:
            return
        if failure.check(defer.CancelledError):
            return
        if failure.check(UpstreamFailure):
            message = f"{self.target}: {failure.getErrorMessage()}"
            reason = failure.value.reason
        else:
            log.failure("bridge to {target} failed unexpectedly", failure, target=self.target)
            message = f"{self.target}: internal error while connecting"
            reason = INTERNAL
        self._finish(ExitInfo(status=FAILURE_STATUS), message, reason)

    # -- ISessionTarget (from the front end) -------------------------------------------

    def write_stdin(self, data: bytes) -> None:
        if self.done:
            return
        self.stats.bytes_to_upstream += len(data)
        self._touch()
        if self.upstream is not None:
            self.upstream.write(data)
            return
        if self._question is not None:
            data = self._question.feed(data)
        self._pending += data
        if len(self._pending) > MAX_PENDING_INPUT:
            self._set_input_paused("pending", True)

    def close_stdin(self) -> None:
        if self.upstream is not None:
            self.upstream.send_eof()
        else:
            self._pending_eof = True
            if self._question is not None:
                self._question.cancel("end of input at the device's prompt")

    def resize(self, size: WindowSize) -> None:
        if self.upstream is not None:
            self.upstream.resize(size)
        else:
            self._pending_size = size

    def send_signal(self, name: str) -> None:
        if self.upstream is not None:
            self.upstream.send_signal(name)

    def close(self) -> None:
        """The client went away: tear down without telling it anything."""
        if self.done:
            return
        self.done = True
        self._stop_timers()
        self._log_end(None, "client closed the session")
        self._teardown()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._input_producer = producer
        if self._input_paused:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._input_producer = None

    # -- IPushProducer (registered with the front end for our output) ----------------

    def pauseProducing(self) -> None:
        self._output_paused = True
        if self.upstream is not None:
            self.upstream.pauseProducing()

    def resumeProducing(self) -> None:
        self._output_paused = False
        if self.upstream is not None:
            self.upstream.resumeProducing()

    def stopProducing(self) -> None:
        self.close()

    # -- from the connector (via UpstreamSink) ----------------------------------------

    def _output(self, data: bytes, stderr: bool) -> None:
        if self.done:
            return
        self.stats.bytes_from_upstream += len(data)
        self._touch()
        if stderr:
            self.client.write_stderr(data)
        else:
            self.client.write_stdout(data)

    def _upstream_eof(self) -> None:
        if not self.done and not self._eof_sent:
            self._eof_sent = True
            self.client.send_eof()

    def _set_input_paused(self, reason: str, paused: bool) -> None:
        was = bool(self._input_paused)
        if paused:
            self._input_paused.add(reason)
        else:
            self._input_paused.discard(reason)
        producer = self._input_producer
        if producer is None or was == bool(self._input_paused):
            return
        if self._input_paused:
            producer.pauseProducing()
        else:
            producer.resumeProducing()

    def _finish(self, info: ExitInfo, message: str | None, failure: str | None = None) -> None:
        """End the session with ``info``; ``message`` goes to the client's stderr and
        ``failure`` (an upstream failure's reason, gateway.upstream_errors) to the log."""
        if self.done:
            return
        self.done = True
        self._stop_timers()
        if message is not None:
            self.client.write_stderr(f"sshgateway: {message}\r\n".encode("utf-8", "replace"))
        self._log_end(info, message, failure)
        if not self._eof_sent:
            self._eof_sent = True
            self.client.send_eof()
        self.client.unregisterProducer()
        self.client.exited(info)
        self._teardown()

    # -- helpers -----------------------------------------------------------------------

    def _teardown(self) -> None:
        # Nothing will consume client input any more: let the front end read (and drop)
        # it, or a client still sending stdin could never get its exit status answered.
        if self._input_paused:
            self._input_paused.clear()
            if self._input_producer is not None:
                self._input_producer.resumeProducing()
        if self._question is not None:
            self._question.cancel("session closed")
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()
        self._pending = bytearray()

    def _touch(self) -> None:
        if not self.idle_timeout:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.idle_timeout)
        else:
            self._idle = self.clock.callLater(self.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        self._finish(
            ExitInfo(status=FAILURE_STATUS),
            f"{self.target}: idle for {self.idle_timeout:g} s, session closed",
            IDLE,
        )

    def _stop_timers(self) -> None:
        self._cancel(self._timeout)
        self._cancel(self._idle)
        self._cancel(self._progress)
        self._cancel(self._question_timer)
        self._timeout = self._idle = self._progress = self._question_timer = None

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def _log_end(
        self, info: ExitInfo | None, message: str | None, failure: str | None = None
    ) -> None:
        # A failure's reason is a field of its own, for whoever counts them (gateway.metrics).
        fields = {FAILURE_KEY: failure} if failure is not None else {}
        log.info(
            "bridged session: user={user} front=[{front}] target={target} upstream=[{upstream}] "
            "to_upstream={up} from_upstream={down} duration={duration:.3f}s "
            "exit={status} reason={reason}",
            user=self.username,
            front=getattr(self.client, "description", "-"),
            target=self.target,
            upstream=self.upstream.description if self.upstream is not None else "-",
            up=self.stats.bytes_to_upstream,
            down=self.stats.bytes_from_upstream,
            duration=self.clock.seconds() - self.started,
            status="-" if info is None else info.as_status(),
            reason=message or "-",
            **fields,
        )


def upstream_credentials(
    config: Any, username: str, gateway_password: str | None
) -> tuple[str, str | None]:
    """The login name and password to present to a device: the target's ``username``
    (else the gateway user's name) and its stored password, or, for
    ``credentials = "pass-through"``, the password the user gave the gateway."""
    login = config.username or username
    if config.credentials == "pass-through":
        return login, gateway_password
    return login, config.password


class UpstreamTarget:
    """Base of the targets whose sessions run on a device: a subclass supplies
    :meth:`connector`; every session is a :class:`BridgeSession` around it."""

    # The flow sink (gateway.flows.FlowWriter) upstream legs are written to; None: off.
    flows: Any = None

    def __init__(self, reactor: Any, config: Any) -> None:
        self.reactor = reactor
        self.config = config

    def new_flow(self, sink: Any, username: str | None = None) -> FlowRecorder | None:
        """A recorder for one upstream leg, linked to the client leg ``sink`` serves."""
        if self.flows is None:
            return None
        peer = f"{self.config.host}:{self.config.port}"
        flow = FlowRecorder(
            "client", peer, self.config.protocol, link=getattr(sink, "link", None)
        )
        flow.target = self.config.name
        flow.user = username
        return flow

    def flow_done(self, flow: FlowRecorder) -> None:
        """An upstream leg is over: write its record."""
        if self.flows is not None:
            self.flows.write_flow(flow)

    def connector(self, username: str, password: str | None) -> Connector:
        """``connect(request, sink)`` for one session, with the upstream login bound."""
        raise NotImplementedError

    def open_session(
        self,
        username: str,
        request: SessionRequest,
        client: ISessionClient,
        *,
        password: str | None = None,
    ) -> BridgeSession:
        return BridgeSession(
            self.reactor,
            client,
            request,
            self.connector(username, password),
            username=username,
            target=self.config.name,
            connect_timeout=self.config.connect_timeout,
            idle_timeout=self.config.idle_timeout or None,
            target_protocol=self.config.protocol,
        )
