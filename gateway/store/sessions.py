"""The session registry of a cluster, in the shared store: which instance holds which live
session, so that ``sshgateway sessions list`` and ``sessions kill`` work from any instance.

- :class:`SessionIndex`, a session tap, keeps this process's sessions in ``live_sessions``:
  a row (the summary ``sessions list`` shows) at each start, its byte counts brought up to
  date every ``REFRESH_EVERY`` seconds (one write for all that changed), removed at the
  end. At start
  :func:`forget_stale_sessions` queues the removal of the rows this instance left when it
  last stopped without ending its sessions (a crash).
- :class:`KillRequests` carries out the ``session_kills`` requests addressed to this
  process: polled every ``KILL_POLL`` seconds, each ends the session through the local
  registry (gateway.live_sessions: the client is told, SESSION_KILLED names the operator
  and the instance they asked) and is marked done with its outcome.
- :class:`ClusterSessions` is the control socket's registry on an instance with a store:
  ``list`` is this instance's sessions (from its own registry, which wins for them) and
  every other instance's rows; ``kill`` of a session held elsewhere writes a kill request
  for its instance and waits up to ``KILL_WAIT`` seconds for the outcome.

Every database call goes through the store's worker (gateway.store.worker): rows are
queued writes, reads run on its thread; nothing blocks a login or the reactor. With the
database down, ``list`` gives this instance's sessions and a warning, and ``kill`` of a
session this instance does not hold says it cannot ask the others.

Instance names: ``<hostname>:<state_dir>`` (stable across restarts, unique on a host since
one state_dir serves one gateway); a worker process (``workers = N``) is
``<that>/worker-<n>``: its rows are "local" to its parent, which lists them through the
workers' own control sockets.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from gateway.control import FAILED, TIMEOUT, UNREACHABLE
from gateway.live_sessions import (
    ISessionRegistry,
    KillResult,
    Operator,
    SessionList,
    SessionRegistryError,
    SessionSummary,
    summary_of,
)
from gateway.session_tap import ISessionObserver, ISessionTap, LiveSession
from gateway.store.worker import IStoreWorker
from protocols.session import ExitInfo, WindowSize

log = Logger()

KILL_POLL = 1.0  # seconds between this process's looks for kill requests addressed to it
KILL_WAIT = 10.0  # seconds the asking instance waits for the holder to carry a kill out
KILL_CHECK = 0.2  # seconds between its looks at the request's outcome
LIST_TIMEOUT = 5.0  # seconds a list waits for the database before listing local only
# Seconds between updates of the rows' byte counts: what another instance's list shows of
# this one's sessions is at most this old (its own list is live).
REFRESH_EVERY = 15.0

# How a kill request ended (session_kills.outcome).
KILLED, ENDED, NOT_FOUND, KILL_FAILED, EXPIRED = "killed", "ended", "not_found", "failed", "expired"


def worker_instance(instance: str, number: int) -> str:
    """The instance name of worker process ``number`` of the gateway named ``instance``."""
    return f"{instance}/worker-{number}"


def is_local(instance: str, mine: str) -> bool:
    """Whether rows named ``instance`` are this gateway's (``mine``) or its workers'."""
    return instance == mine or instance.startswith(mine + "/")


def forget_stale_sessions(store: IStoreWorker, instance: str, started_before: float) -> None:
    """Queue the removal of the rows ``instance`` (and its workers) left of sessions that
    started before ``started_before`` (this process's start): a gateway that crashed
    could not remove them. First in the queue, so before this process's own rows."""
    store.write("forget_sessions", instance, started_before)


# -- the rows of this process's sessions -------------------------------------------------


@implementer(ISessionTap)
class SessionIndex:
    """Writes a ``live_sessions`` row for each session of this process while it lasts."""

    def __init__(self, store: IStoreWorker, instance: str) -> None:
        self.store = store
        self.instance = instance
        # The sessions with a row, and the byte counts (in, out) their row shows.
        self.sessions: dict[str, LiveSession] = {}
        self.written: dict[str, tuple[int, int]] = {}
        self._loop: task.LoopingCall | None = None

    def session_started(self, session: LiveSession) -> ISessionObserver:
        summary = summary_of(session)
        self.store.write(
            "live_session", summary.id, self.instance, summary.to_json(), summary.started
        )
        self.sessions[summary.id] = session
        self.written[summary.id] = (summary.bytes_in, summary.bytes_out)
        return _Indexed(self, summary.id)

    def session_ended(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self.written.pop(session_id, None)
        self.store.write("session_ended", session_id, self.instance)

    def refresh(self) -> None:
        """Queue one update of the rows whose byte counts changed since last written."""
        changed = []
        for session_id, session in self.sessions.items():
            counts = (session.bytes_from_client, session.bytes_to_client)
            if counts != self.written.get(session_id):
                self.written[session_id] = counts
                changed.append((session_id, summary_of(session).to_json()))
        if changed:
            self.store.write("live_sessions_info", self.instance, changed)

    def start(self, clock: Any, interval: float = REFRESH_EVERY) -> None:
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = clock
        self._loop.start(interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()


@implementer(ISessionObserver)
class _Indexed:
    """Removes its session's row when the session ends."""

    def __init__(self, index: SessionIndex, session_id: str) -> None:
        self.index = index
        self.session_id = session_id

    def output(self, data: bytes, stderr: bool) -> None:
        pass

    def input(self, data: bytes) -> None:
        pass

    def resized(self, size: WindowSize) -> None:
        pass

    def ended(self, info: ExitInfo | None) -> None:
        self.index.session_ended(self.session_id)


# -- the holding side of a kill ------------------------------------------------------------


class KillRequests:
    """Carries out the kill requests addressed to ``instance`` with ``local`` (the
    registry of this process's sessions), polled every ``interval`` seconds."""

    def __init__(
        self,
        local: Any,
        store: IStoreWorker,
        instance: str,
        clock: Any,
        interval: float = KILL_POLL,
    ) -> None:
        self.local = local
        self.store = store
        self.instance = instance
        self.clock = clock
        self.interval = interval
        # Requests taken on and still pending in the table (their outcome is queued):
        # a poll before that write lands must not carry them out twice.
        self.taken: set[int] = set()
        self._loop: task.LoopingCall | None = None

    def start(self) -> None:
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def poll(self) -> defer.Deferred:
        """One look for pending requests; never fails (a database that is down is the
        store's to report, and the next look tries again)."""
        if not self.store.up:  # the store's own refresh finds out when it is back
            return defer.succeed(None)
        d = self.store.call("pending_kills", self.instance)
        return d.addCallbacks(self._carry_out, lambda _: None)

    def _carry_out(self, rows: list[tuple[Any, ...]]) -> None:
        self.taken &= {row[0] for row in rows}
        for kill_id, session_id, requested_by, uid, pid, asked_on, message in rows:
            if kill_id in self.taken:
                continue
            self.taken.add(kill_id)
            operator = Operator(str(requested_by), uid, pid, asked_on or None)
            d = defer.maybeDeferred(self.local.kill, session_id, operator, message)
            d.addCallbacks(self._outcome, self._failed, errbackArgs=(session_id,))
            d.addCallback(
                lambda outcome, kill_id=kill_id: self.store.write("kill_done", kill_id, outcome)
            )

    @staticmethod
    def _outcome(result: KillResult) -> str:
        if result.session is None:
            return NOT_FOUND
        return KILLED if result.killed else ENDED

    @staticmethod
    def _failed(failure: Any, session_id: str) -> str:
        log.failure(
            "sessions: a kill request for session {session} failed", failure, session=session_id
        )
        return KILL_FAILED


# -- the control socket's registry -----------------------------------------------------------


@implementer(ISessionRegistry)
class ClusterSessions:
    """This instance's sessions (``local``: its LiveSessions, or with worker processes its
    WorkerSessions) and every other instance's, through the store."""

    def __init__(
        self,
        local: Any,
        store: IStoreWorker,
        instance: str,
        clock: Any,
        *,
        kill_wait: float = KILL_WAIT,
        kill_check: float = KILL_CHECK,
        list_timeout: float = LIST_TIMEOUT,
    ) -> None:
        self.local = local
        self.store = store
        self.instance = instance
        self.clock = clock
        self.kill_wait = kill_wait
        self.kill_check = kill_check
        self.list_timeout = list_timeout

    # -- list ------------------------------------------------------------------------------

    def _own(self, summary: SessionSummary) -> SessionSummary:
        """A local session, named by the instance (or worker) that holds it."""
        if summary.instance is not None:
            return summary
        name = (
            self.instance
            if summary.worker is None
            else worker_instance(self.instance, summary.worker)
        )
        return replace(summary, instance=name)

    def list(self) -> defer.Deferred[list[SessionSummary]]:
        local = defer.maybeDeferred(self.local.list)
        shared = self._read("live_sessions", timeout=self.list_timeout)
        d = defer.gatherResults([local, shared], consumeErrors=True)
        d.addErrback(lambda failure: failure.value.subFailure)  # the local list's own failure
        return d.addCallback(self._merged)

    def _merged(self, found: list[Any]) -> SessionList:
        mine, shared = found
        sessions = [self._own(s) for s in mine]
        warnings = []
        if isinstance(shared, str):
            warnings.append(
                f"the shared session registry is unreachable ({shared}): only the sessions "
                f"of this instance ({self.instance}) are listed"
            )
        else:
            for instance, info in shared:
                if is_local(instance, self.instance):
                    continue  # this instance's own list is the live one
                summary = self._summary(instance, info)
                if summary is not None:
                    sessions.append(summary)
        sessions.sort(key=lambda s: s.started)
        return SessionList(sessions, warnings)

    @staticmethod
    def _summary(instance: str, info: Any) -> SessionSummary | None:
        try:
            return replace(SessionSummary.from_json(info), instance=instance)
        except (ValueError, TypeError) as e:
            log.warn(
                "sessions: an unreadable live_sessions row of {instance}: {e}",
                instance=instance,
                e=str(e),
            )
            return None

    def _read(self, method: str, *args: Any, timeout: float) -> defer.Deferred:
        """``method``'s answer, or (on any failure) a one-line reason as text."""
        if not self.store.up:
            return defer.succeed("database down")
        d = self.store.call(method, *args)
        d.addTimeout(timeout, self.clock)

        def why(failure: Any) -> str:
            if failure.check(defer.TimeoutError):
                return f"no answer within {timeout:g} s"
            text = str(failure.value).strip().splitlines()
            return (text[0] if text else failure.type.__name__)[:200]

        return d.addErrback(why)

    # -- kill ------------------------------------------------------------------------------

    def kill(
        self, session_id: str, by: Operator, message: str | None = None
    ) -> defer.Deferred[KillResult]:
        d = defer.maybeDeferred(self.local.kill, session_id, by, message)

        def here_or_elsewhere(result: KillResult) -> Any:
            if result.session is not None:
                return replace(result, session=self._own(result.session))
            return self._kill_elsewhere(session_id, by, message)

        return d.addCallback(here_or_elsewhere)

    def _unreachable(self, session_id: str, why: str) -> SessionRegistryError:
        return SessionRegistryError(
            UNREACHABLE,
            f"no session {session_id} on this instance ({self.instance}), and the shared "
            f"session registry is unreachable ({why}): cannot ask the other instances",
        )

    def _kill_elsewhere(self, session_id: str, by: Operator, message: str | None) -> Any:
        d = self._read("live_session", session_id, timeout=self.list_timeout)

        def found(row: Any) -> Any:
            if isinstance(row, str):
                raise self._unreachable(session_id, row)
            if row is None or is_local(row[0], self.instance):
                return KillResult(None, killed=False)  # (a local row: the session ended)
            instance, info = row
            summary = self._summary(instance, info) or SessionSummary(
                session_id, "?", "", "", "?", "", 0.0, 0, 0, None, instance=instance
            )
            asked = self.store.call(
                "request_kill",
                session_id,
                instance,
                by.name,
                by.uid,
                by.pid,
                self.instance,
                message,
            )
            asked.addErrback(
                lambda f: _raise(self._unreachable(session_id, str(f.value).strip()[:200]))
            )
            asked.addCallback(self._await, summary)
            return asked

        return d.addCallback(found)

    def _await(self, kill_id: int, summary: SessionSummary) -> defer.Deferred[KillResult]:
        """The request's outcome, looked at every ``kill_check`` seconds until
        ``kill_wait``; past that the request is withdrawn and this is a TIMEOUT."""
        deadline = self.clock.seconds() + self.kill_wait
        done: defer.Deferred[KillResult] = defer.Deferred()

        def look() -> None:
            d = self.store.call("kill_outcome", kill_id)
            d.addCallbacks(seen, lambda _: seen(None))

        def seen(outcome: str | None) -> None:
            if outcome == KILLED:
                done.callback(KillResult(summary, killed=True))
            elif outcome in (ENDED, NOT_FOUND):
                done.callback(KillResult(summary, killed=False))
            elif outcome is not None:
                done.errback(
                    SessionRegistryError(
                        FAILED,
                        f"instance {summary.instance} could not end session {summary.id} "
                        f"({outcome}; see its log)",
                    )
                )
            elif self.clock.seconds() >= deadline:
                # Withdrawn: an instance that comes back later must not end it unasked.
                self.store.write("kill_done", kill_id, EXPIRED)
                done.errback(
                    SessionRegistryError(
                        TIMEOUT,
                        f"instance {summary.instance} holds session {summary.id} but did not "
                        f"end it within {self.kill_wait:g} s (is it running and reaching "
                        "the database?); the request is withdrawn",
                    )
                )
            else:
                self.clock.callLater(self.kill_check, look)

        look()
        return done


def _raise(error: Exception) -> Any:
    raise error


__all__ = [
    "KILL_POLL",
    "KILL_WAIT",
    "ClusterSessions",
    "KillRequests",
    "SessionIndex",
    "forget_stale_sessions",
    "is_local",
    "worker_instance",
]
