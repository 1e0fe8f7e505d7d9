"""The live sessions of every worker process (``workers = N``), for the parent's control
socket: an ISessionRegistry that asks each running worker's own control socket
(``<state_dir>/workers/control-N.sock``, the protocol of gateway.control) and merges the
answers.

``list`` is every worker's list, each session tagged with its worker's number, oldest
first. ``kill`` asks every worker at once: the one that holds the id ends it, the others
say they know no such session; the operator the parent saw is passed on (the worker
believes it from its parent only, gateway.control), so the SESSION_KILLED event names
them. A worker that does not answer within ``timeout`` (or cannot be reached) is left
out, with a log line: it never holds up the request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.control import ALREADY_ENDED, NOT_FOUND
from gateway.control_client import ControlError, ask_later
from gateway.live_sessions import ISessionRegistry, KillResult, Operator, SessionSummary

log = Logger()

WORKER_TIMEOUT = 2.0  # seconds a worker has to answer the parent

Ask = Callable[[Path, dict[str, Any]], defer.Deferred[dict[str, Any]]]


def worker_control_socket(state_dir: str | Path, number: int) -> Path:
    """Where worker ``number`` serves its own control socket."""
    return Path(state_dir) / "workers" / f"control-{number}.sock"


def tagged(data: Any, number: int) -> SessionSummary:
    return replace(SessionSummary.from_json(data), worker=number)


@implementer(ISessionRegistry)
class WorkerSessions:
    """The sessions of the workers ``running()`` names (their numbers), each asked on
    ``socket_of(number)`` through ``ask`` (gateway.control_client.ask_later)."""

    def __init__(
        self,
        running: Callable[[], Iterable[int]],
        socket_of: Callable[[int], Path],
        ask: Ask,
        clock: Any,
        timeout: float = WORKER_TIMEOUT,
    ) -> None:
        self.running = running
        self.socket_of = socket_of
        self.ask = ask
        self.clock = clock
        self.timeout = timeout

    @classmethod
    def of_supervisor(cls, supervisor: Any, state_dir: str | Path, reactor: Any) -> WorkerSessions:
        """The sessions of the workers ``supervisor`` (gateway.workers) runs now."""

        def running() -> list[int]:
            return [n for n, w in supervisor.workers.items() if w.process is not None]

        return cls(
            running,
            functools.partial(worker_control_socket, state_dir),
            functools.partial(ask_later, reactor),
            reactor,
        )

    def _ask_each(self, request: dict[str, Any]) -> defer.Deferred[list[tuple[int, Any]]]:
        """Every running worker's answer as (number, answer dict or ControlError); a
        worker that fails otherwise or in time is logged and left out."""

        def asked(number: int) -> defer.Deferred[Any]:
            d = defer.maybeDeferred(self.ask, self.socket_of(number), request)
            d.addTimeout(self.timeout, self.clock)
            d.addCallback(lambda answer: (number, answer))
            d.addErrback(self._unanswered, number, request["request"])
            return d

        answers = defer.gatherResults([asked(n) for n in sorted(self.running())])
        answers.addCallback(lambda found: [a for a in found if a is not None])
        return answers

    def _unanswered(self, failure: Any, number: int, kind: str) -> tuple[int, Any] | None:
        if failure.check(ControlError) and failure.value.code:  # the worker said no
            return (number, failure.value)
        if failure.check(defer.TimeoutError):
            why = f"no answer within {self.timeout:g} s"
        else:
            why = str(failure.value) or failure.type.__name__
        log.warn(
            "sessions: worker {worker} left out of the {kind} request: {why}",
            worker=number,
            kind=kind,
            why=why,
        )
        return None

    def list(self) -> defer.Deferred[list[SessionSummary]]:
        def merged(answers: list[tuple[int, Any]]) -> list[SessionSummary]:
            sessions = [
                tagged(data, number)
                for number, answer in answers
                if isinstance(answer, dict)
                for data in answer.get("sessions", [])
            ]
            return sorted(sessions, key=lambda s: s.started)

        return self._ask_each({"request": "list"}).addCallback(merged)

    def kill(
        self, session_id: str, by: Operator, message: str | None = None
    ) -> defer.Deferred[KillResult]:
        request = {
            "request": "kill",
            "session": session_id,
            "message": message,
            "operator": by.to_json() if by is not None else None,
        }

        def routed(answers: list[tuple[int, Any]]) -> KillResult:
            ended = None
            for number, answer in answers:
                if isinstance(answer, dict):
                    return KillResult(tagged(answer.get("session"), number), killed=True)
                if answer.code == ALREADY_ENDED and answer.answer and answer.answer.get("session"):
                    ended = KillResult(tagged(answer.answer["session"], number), killed=False)
                elif answer.code != NOT_FOUND:
                    log.warn(
                        "sessions: worker {worker} refused to end session {session}: {why}",
                        worker=number,
                        session=session_id,
                        why=str(answer),
                    )
            return ended or KillResult(None, killed=False)

        return self._ask_each(request).addCallback(routed)
