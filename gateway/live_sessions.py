"""Live sessions: which sessions are open now, and ending one of them by hand.

Everything that shows or ends live sessions (the control socket, gateway.control, and
through it ``sshgateway sessions``) talks to an :class:`ISessionRegistry`: a list of
:class:`SessionSummary` and a ``kill`` that answers with a :class:`KillResult`. Both may
answer later (a Deferred), because a registry that spans worker processes
(gateway.worker_sessions) or gateway instances (gateway.store.sessions, in PostgreSQL) has
to ask elsewhere. A list may come with warnings (:class:`SessionList`: what it could not
reach), and a kill may fail with a :class:`SessionRegistryError` that says why.

:class:`LiveSessions` is the registry of this process: a session tap
(gateway.session_tap) that keeps each open :class:`~gateway.session_tap.LiveSession` from
its start to its end. Its ``kill`` ends the session through ``LiveSession.terminate`` (the
client is told and closed, the device leg or local program closed) and emits the
SESSION_KILLED gateway event naming the :class:`Operator` who asked.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gateway import events
from gateway.session_tap import EndObserver, ISessionObserver, ISessionTap, LiveSession
from protocols.session import ExitInfo

log = Logger()

# What a client is told when an operator gives no message of their own.
DEFAULT_KILL_MESSAGE = "session ended by an operator"
# An operator's message reaches the user's terminal: one line, printable, bounded.
MAX_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class Operator:
    """Who asked for something on the control socket, as its peer credentials say."""

    name: str  # the account name (the uid as text when it has none)
    uid: int | None = None
    pid: int | None = None
    # With a shared store: the gateway instance whose control socket they asked, when
    # that is not the instance that holds the session (gateway.store.sessions).
    instance: str | None = None

    def __str__(self) -> str:
        who = self.name if self.uid is None else f"{self.name} (uid {self.uid})"
        return who if self.instance is None else f"{who} on instance {self.instance}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Operator | None:
        """The operator a relayed request names (gateway.worker_sessions); None when it
        names none."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        uid, pid = data.get("uid"), data.get("pid")
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (uid, pid)):
            return None
        instance = data.get("instance")
        if instance is not None and not isinstance(instance, str):
            return None
        return cls(data["name"][:64], uid, pid, instance[:256] if instance else None)


@dataclass(frozen=True)
class SessionSummary:
    """One open session as ``sessions list`` shows it; plain values, JSON-able."""

    id: str
    user: str
    source: str  # the client's "host:port"
    front_protocol: str  # "ssh1", "ssh2" ("" when unknown)
    target: str
    target_protocol: str
    started: float  # wall-clock seconds
    bytes_in: int  # from the client
    bytes_out: int  # to the client
    recording: str | None
    command: str | None = None  # an exec session's command line
    subsystem: str | None = None
    pty: bool = False
    forward: str | None = None  # a jump-host forward's "host:port"
    worker: int | None = None  # with worker processes: the one that holds the session
    instance: str | None = None  # with a shared store: the gateway instance that holds it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> SessionSummary:
        """The summary in a control-socket answer; ValueError when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("a session summary is a JSON object")
        try:
            summary = cls(**data)
        except TypeError as e:
            raise ValueError(f"not a session summary: {e}") from None
        return summary


@dataclass(frozen=True)
class KillResult:
    """What ``kill`` did: ``session`` is None for an unknown id; ``killed`` is False when
    the session ended by itself before it could be ended."""

    session: SessionSummary | None
    killed: bool


class SessionList(list[SessionSummary]):
    """The sessions a ``list`` found, and ``warnings``: what it could not reach (one line
    each, for the operator: e.g. the shared store is down and only this instance's
    sessions are listed)."""

    def __init__(self, sessions: Iterable[SessionSummary] = (), warnings: Iterable[str] = ()) -> None:
        super().__init__(sessions)
        self.warnings = list(warnings)


class SessionRegistryError(Exception):
    """A kill the registry could not carry out; ``code`` (one of gateway.control's error
    codes) and the message say why, for the operator."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ISessionRegistry(Interface):
    """The open sessions, wherever they run. Both methods answer with a Deferred."""

    def list() -> defer.Deferred[list[SessionSummary]]:
        """The open sessions, oldest first."""

    def kill(session_id: str, by: Operator, message: str | None = None) -> defer.Deferred[KillResult]:
        """End session ``session_id``: its client is sent ``message`` (or
        DEFAULT_KILL_MESSAGE) and closed, its target closed; ``by`` is recorded as who
        ended it."""


def clean_message(message: str | None) -> str:
    """The operator's message as it may reach a user's terminal: control characters (an
    escape sequence could rewrite the user's screen) become spaces, one line, at most
    MAX_MESSAGE_CHARS; DEFAULT_KILL_MESSAGE when nothing is left."""
    if not message:
        return DEFAULT_KILL_MESSAGE
    text = "".join(" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in message)
    text = " ".join(text.split())[:MAX_MESSAGE_CHARS]
    return text or DEFAULT_KILL_MESSAGE


def summary_of(session: LiveSession) -> SessionSummary:
    info = session.info
    return SessionSummary(
        id=info.session_id,
        user=info.username,
        source=info.source,
        front_protocol=info.front_protocol,
        target=info.target,
        target_protocol=info.target_protocol,
        started=info.started,
        bytes_in=session.bytes_from_client,
        bytes_out=session.bytes_to_client,
        recording=session.recording,
        command=info.command_text,
        subsystem=info.subsystem,
        pty=info.pty is not None,
        forward=info.forward,
    )


class _Registered(EndObserver):
    """Takes its session out of the registry when it ends; sees nothing else."""

    def __init__(self, registry: LiveSessions, session: LiveSession) -> None:
        self.registry = registry
        self.session = session

    def ended(self, info: ExitInfo | None) -> None:
        self.registry.sessions.pop(self.session.info.session_id, None)


@implementer(ISessionTap, ISessionRegistry)
class LiveSessions:
    """The sessions open in this process (a session tap), behind ISessionRegistry."""

    def __init__(self) -> None:
        self.sessions: dict[str, LiveSession] = {}  # in start order

    def session_started(self, session: LiveSession) -> ISessionObserver:
        self.sessions[session.info.session_id] = session
        return _Registered(self, session)

    def list(self) -> defer.Deferred[list[SessionSummary]]:
        return defer.succeed([summary_of(s) for s in self.sessions.values()])

    def kill(
        self, session_id: str, by: Operator, message: str | None = None
    ) -> defer.Deferred[KillResult]:
        session = self.sessions.get(session_id)
        if session is None:
            return defer.succeed(KillResult(None, killed=False))
        summary = summary_of(session)
        if session.ended:
            return defer.succeed(KillResult(summary, killed=False))
        text = clean_message(message)
        # Before terminate: the session's end (and the observers' SESSION_END) follows it.
        events.emit(
            log,
            events.SESSION_KILLED,
            "session {session} of {user} to {target} ended by {by} (uid {by_uid}, pid "
            "{by_pid}" + (", on instance {by_instance}" if by.instance else "") + "): "
            "{client_message}",
            session=session_id,
            user=summary.user,
            target=summary.target,
            source=summary.source,
            by=by.name,
            by_uid=by.uid,
            by_pid=by.pid,
            # Asked on another instance (gateway.store.sessions): the one they asked.
            **({"by_instance": by.instance} if by.instance else {}),
            client_message=text,  # ("message" is the log line's own text in JSON logs)
        )
        killed = session.terminate(text, by=by.name)
        return defer.succeed(KillResult(summary, killed=killed))
