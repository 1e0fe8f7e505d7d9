"""Session taps: the one place where every session's bytes and lifetime can be watched.

Whatever watches sessions (recordings, the audit trail's session events, the live-session
registry, metrics) registers an :class:`ISessionTap` on the Router. When a session opens
(either front end, any target, jump-host inner sessions too: they all pass
``Router.open_target``), :func:`tap_session` builds a :class:`LiveSession` and asks each
tap for an :class:`ISessionObserver`; the session then runs behind a
:class:`TappedClient`/:class:`TappedTarget` pair that shows each observer:

- ``output``: what the client was sent (stdout, or stderr with ``stderr=True``);
- ``input``: what the client sent to the program;
- ``resized``: a window change;
- ``ended``: once, when the program exited (its ExitInfo) or the client went away first
  (None).

Rules for observers, because they run in the reactor thread on the data path:
- never block and never buffer without a bound (drop and say so instead);
- an observer that raises is logged once and detached; the session goes on untouched;
- an observer that wants only the session's end subclasses :class:`EndObserver`
  (``wants_data = False``): it is then never called per packet, so it costs the data path
  nothing.

:meth:`LiveSession.terminate` is how an operator ends a session: the client gets a one-line
message on stderr and a clean close (exit status 255), and the target is closed (the
program stopped, the device leg hung up).

With no tap registered, sessions are not wrapped at all.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger
from zope.interface import Interface, implementer

from protocols.flow import open_flow
from protocols.session import (
    ExitInfo,
    ISessionClient,
    ISessionTarget,
    PtyRequest,
    SessionRequest,
    WindowSize,
)

log = Logger()

# The exit status a client sees when an operator ended its session (as for a refusal).
TERMINATED_STATUS = 255


@dataclass
class SessionInfo:
    """What is known of one session when it opens."""

    session_id: str  # unique in this process's lifetime; see new_session_id
    username: str  # the gateway login (without +target)
    target: str  # the target's name in the config ("local" included)
    target_protocol: str  # "local", "ssh1", "ssh2" or "telnet"
    front_protocol: str  # the client leg's protocol ("ssh1", "ssh2"), "" when unknown
    source: str  # the client's address, as the flow record has it ("host:port")
    flow_id: str | None  # the client leg's flow record id
    command: bytes | None  # the exec command line; None for a shell or a subsystem
    subsystem: str | None  # e.g. "sftp"
    pty: PtyRequest | None  # None: no terminal
    env: dict[str, str] = field(default_factory=dict)  # what reached the program
    started: float = 0.0  # wall-clock time.time()
    # A jump-host forward (SSH-2 direct-tcpip) carries the client's own encrypted session
    # to "host:port": no terminal, no command, bytes only.
    forward: str | None = None

    @property
    def command_text(self) -> str | None:
        """The command line for display and records (undecodable bytes escaped)."""
        if self.command is None:
            return None
        return self.command.decode("utf-8", "backslashreplace")


class ISessionObserver(Interface):
    """Watches one session; every call is in the reactor thread and must not block."""

    def output(data: bytes, stderr: bool) -> None:
        """``data`` was passed to the client (stderr: as its error stream)."""

    def input(data: bytes) -> None:
        """The client sent ``data`` to the program."""

    def resized(size: WindowSize) -> None:
        """The client's window changed size."""

    def ended(info: ExitInfo | None) -> None:
        """The session is over: the program's exit, or None when the client left first.
        Called once; nothing follows."""


@implementer(ISessionObserver)
class EndObserver:
    """An observer that only wants the session's end (subclasses implement ``ended``). The
    tapped client leaves it out of the per-packet calls (``wants_data = False``); the data
    methods are here only to keep the interface whole."""

    wants_data = False

    def output(self, data: bytes, stderr: bool) -> None:
        pass

    def input(self, data: bytes) -> None:
        pass

    def resized(self, size: WindowSize) -> None:
        pass

    def ended(self, info: ExitInfo | None) -> None:
        raise NotImplementedError


class ISessionTap(Interface):
    """Something that wants to watch sessions (registered on the Router)."""

    def session_started(session: LiveSession) -> ISessionObserver | None:
        """A session opened: return its observer, or None to leave it alone."""


_counter = itertools.count(1)


def new_session_id() -> str:
    """A session id: unique among this process's sessions, and across processes and
    restarts in practice (pid and start time in it)."""
    return f"{int(time.time()):x}-{os.getpid():x}-{next(_counter):x}"


class LiveSession:
    """One open session: its info, byte counts, and the handle to end it."""

    def __init__(self, info: SessionInfo) -> None:
        self.info = info
        self.bytes_to_client = 0
        self.bytes_from_client = 0
        self.exit: ExitInfo | None = None
        self.ended = False
        self.terminated_by: str | None = None
        # The recording's file, set by the recorder's tap (taps run in order: the recorder
        # comes before the taps that report it, such as the audit trail's).
        self.recording: str | None = None
        self._client: TappedClient | None = None
        self._target: ISessionTarget | None = None

    def terminate(self, message: str, by: str = "") -> bool:
        """End the session: ``message`` on the client's stderr, a clean close, the target
        closed. ``by`` names who ended it (for observers, e.g. the audit trail). False when
        the session had already ended."""
        if self.ended or self._client is None:
            return False
        self.terminated_by = by or "operator"
        client = self._client
        if self.info.forward is None:
            # (A forward's channel carries the client's own SSH stream: no text in it.)
            client.write_stderr(f"\r\nsshgateway: {message}\r\n".encode("utf-8", "replace"))
        target = self._target
        if target is not None:
            try:
                target.close()
            except Exception:
                log.failure("closing the target of session {id}", id=self.info.session_id)
        client.exited(ExitInfo(status=TERMINATED_STATUS, message=message))
        return True


def session_info(
    username: str,
    target: str,
    target_protocol: str,
    request: SessionRequest,
    client: ISessionClient,
    forward: str | None = None,
) -> SessionInfo:
    """The SessionInfo of a session about to open (front protocol and source from the
    client leg's flow record when there is one); ``forward``: a jump-host forward's
    destination, ``host:port``."""
    flow_id = getattr(client, "flow_id", None)
    flow = open_flow(flow_id)
    return SessionInfo(
        session_id=new_session_id(),
        username=username,
        target=target,
        target_protocol=target_protocol,
        front_protocol=flow.protocol if flow is not None else "",
        source=flow.peer if flow is not None else "",
        flow_id=flow_id,
        command=request.command,
        subsystem=request.subsystem,
        pty=request.pty,
        env=dict(request.env),
        started=time.time(),
        forward=forward,
    )


def tap_session(
    taps: Sequence[Any],
    info: SessionInfo,
    client: ISessionClient,
    start: Callable[[ISessionClient], ISessionTarget],
) -> ISessionTarget:
    """Start a session with ``start(client)`` behind the taps' observers. With no observer
    wanting it, the session runs unwrapped."""
    session = LiveSession(info)
    observers = []
    for tap in taps:
        try:
            observer = tap.session_started(session)
        except Exception:
            log.failure("session tap {tap!r} failed at session start", tap=tap)
            continue
        if observer is not None:
            observers.append(observer)
    if not observers:
        return start(client)
    tapped_client = TappedClient(client, session, observers)
    session._client = tapped_client
    try:
        started = start(tapped_client)
    except Exception:
        # The front end reports it to its client directly: the observers hear of the end here.
        tapped_client._end(None)
        raise
    target = TappedTarget(started, session, tapped_client)
    session._target = target._target
    return target


@implementer(ISessionClient)
class TappedClient:
    """The session's client, unchanged, with what it is sent shown to the observers.
    Other attributes (``flow_id``, ``description``...) are the client's own.

    The observers are called in a plain loop, each in its own ``try`` (free until it
    raises): this runs for every packet of every session."""

    def __init__(self, client: ISessionClient, session: LiveSession, observers: list[Any]) -> None:
        self._client = client
        self._session = session
        self._observers = list(observers)  # all: they hear of the end
        # Those called per packet (output, input, resized): end-only observers are left out.
        self._watching = [o for o in observers if getattr(o, "wants_data", True)]

    def _detach(self, observer: Any) -> None:
        """``observer`` raised: log it and call it no more (the lists are replaced, not
        changed, so that a loop over them goes on)."""
        log.failure(
            "session {id}: observer {observer!r} failed; detached",
            id=self._session.info.session_id,
            observer=observer,
        )
        self._observers = [o for o in self._observers if o is not observer]
        self._watching = [o for o in self._watching if o is not observer]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def write_stdout(self, data: bytes) -> None:
        session = self._session
        if session.ended:
            return
        session.bytes_to_client += len(data)
        for observer in self._watching:
            try:
                observer.output(data, False)
            except Exception:
                self._detach(observer)
        self._client.write_stdout(data)

    def write_stderr(self, data: bytes) -> None:
        session = self._session
        if session.ended:
            return
        session.bytes_to_client += len(data)
        for observer in self._watching:
            try:
                observer.output(data, True)
            except Exception:
                self._detach(observer)
        self._client.write_stderr(data)

    def _input(self, data: bytes) -> None:
        for observer in self._watching:
            try:
                observer.input(data)
            except Exception:
                self._detach(observer)

    def _resized(self, size: WindowSize) -> None:
        for observer in self._watching:
            try:
                observer.resized(size)
            except Exception:
                self._detach(observer)

    def send_eof(self) -> None:
        if not self._session.ended:
            self._client.send_eof()

    def exited(self, info: ExitInfo) -> None:
        if self._session.ended:
            return  # the target's own exit after an operator's terminate
        self._end(info)
        self._client.exited(info)

    def _end(self, info: ExitInfo | None) -> None:
        session = self._session
        session.ended = True
        session.exit = info
        for observer in self._observers:
            try:
                observer.ended(info)
            except Exception:
                self._detach(observer)
        self._observers = []
        self._watching = []

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self._client.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._client.unregisterProducer()


@implementer(ISessionTarget)
class TappedTarget:
    """The session's target, unchanged, with the client's input shown to the observers."""

    def __init__(self, target: ISessionTarget, session: LiveSession, client: TappedClient) -> None:
        self._target = target
        self._session = session
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def write_stdin(self, data: bytes) -> None:
        session = self._session
        if session.ended:
            return
        session.bytes_from_client += len(data)
        self._client._input(data)
        self._target.write_stdin(data)

    def close_stdin(self) -> None:
        self._target.close_stdin()

    def resize(self, size: WindowSize) -> None:
        self._client._resized(size)
        self._target.resize(size)

    def send_signal(self, name: str) -> None:
        self._target.send_signal(name)

    def close(self) -> None:
        if not self._session.ended:
            self._client._end(None)  # the client left before the program ended
        self._target.close()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self._target.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._target.unregisterProducer()
