"""The control socket: the local UNIX stream socket through which ``sshgateway sessions``
lists and ends live sessions (gateway.live_sessions.ISessionRegistry).

Where: ``[control] socket``, by default ``<state_dir>/control.sock``. Who may use it: the
account the gateway runs as, and root. The socket is made in ``startService``, after the
privilege drop (``run_as``, twistd ``--uid``), so it belongs to that account, with mode
0600; and each connection's peer credentials (SO_PEERCRED) are checked, so that a socket
whose mode was widened still serves nobody else.

At start an existing socket file is probed: one that answers belongs to another running
gateway (a clear start-up error: each gateway needs its own), one that refuses was left by
a gateway that did not stop cleanly and is replaced. Anything else at that path is left
alone and is an error too.

The protocol: one JSON object per line each way (a request at most MAX_REQUEST bytes), any
number of requests per connection, answered in order::

    {"request": "list"}                          -> {"ok": true, "sessions": [SUMMARY, ...],
                                                     "warnings": [TEXT, ...] (optional)}
    {"request": "kill", "session": ID,
     "message": TEXT or null,
     "operator": OPERATOR (optional)}            -> {"ok": true, "session": SUMMARY}
    (refused or failed)                          -> {"ok": false, "error": CODE, "message": TEXT}

CODE is one of ERRORS; an ``already_ended`` refusal carries the SUMMARY too. OPERATOR
(``{"name", "uid", "pid"}``) is whom a relaying parent of worker processes
(gateway.worker_sessions) asks for: it is believed only from the process the factory's
``relay_pid`` names (a worker's parent), and the kill is recorded as that operator's. A request that is no request (not JSON, not an object, an unknown
one, a line too long) is answered with ``bad_request``, logged, and the connection closed.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from gateway.live_sessions import ISessionRegistry, KillResult, Operator, SessionRegistryError

log = Logger()

CONTROL_SOCKET = "control.sock"  # under the state directory unless [control] socket says
MAX_REQUEST = 8192  # bytes in one request line
MAX_SESSION_ID = 128
IDLE_TIMEOUT = 60.0  # a connection that sends nothing for this long is closed
# The longest path a UNIX socket address holds (sun_path, with its terminating NUL).
MAX_SOCKET_PATH = 107
# How long the start-up probe waits for an existing socket to answer.
PROBE_TIMEOUT = 2.0

NOT_FOUND = "not_found"
ALREADY_ENDED = "already_ended"
REFUSED = "refused"
BAD_REQUEST = "bad_request"
FAILED = "failed"
# A session another instance holds (gateway.store.sessions): the store cannot be reached,
# or the holding instance did not carry out the kill in time.
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
ERRORS = (NOT_FOUND, ALREADY_ENDED, REFUSED, BAD_REQUEST, FAILED, UNREACHABLE, TIMEOUT)


class ControlSocketError(Exception):
    """The control socket cannot be served (the message says which path and why)."""


def control_socket_path(config: Any) -> Path:
    """Where the gateway serves its control socket: ``[control] socket``, else
    ``<state_dir>/control.sock``."""
    control = getattr(config, "control", None)
    configured = getattr(control, "socket", None)
    return Path(configured) if configured is not None else Path(config.state_dir) / CONTROL_SOCKET


def account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """The (pid, uid, gid) of the process at the other end of a connected UNIX socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def peer_operator(transport: Any) -> Operator | None:
    """Who is at the other end of a control connection; None when it cannot be told."""
    try:
        pid, uid, _ = peer_credentials(transport.getHandle())
    except (AttributeError, OSError):
        return None
    return Operator(account_name(uid), uid, pid)


def answer_line(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer, separators=(",", ":")).encode("utf-8") + b"\n"


def error_answer(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}


def listed_answer(sessions: list[Any]) -> dict[str, Any]:
    """A list answer; with ``warnings`` when the registry could not reach everything."""
    answer: dict[str, Any] = {"ok": True, "sessions": [s.to_json() for s in sessions]}
    warnings = getattr(sessions, "warnings", None)
    if warnings:
        answer["warnings"] = [str(w) for w in warnings]
    return answer


class ControlProtocol(LineReceiver, TimeoutMixin):
    """One control connection: checks its peer, then answers its requests in order."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST

    def __init__(self, factory: ControlFactory) -> None:
        self.factory = factory
        self.operator: Operator | None = None
        self.lost = False
        self.callLater = factory.reactor.callLater  # TimeoutMixin's clock

    # -- connection ------------------------------------------------------------------

    def connectionMade(self) -> None:
        operator = self.factory.credentials_of(self.transport)
        owner = self.factory.owner_uid()
        if operator is None or operator.uid not in (owner, 0):
            who = "an unknown peer" if operator is None else f"{operator} (pid {operator.pid})"
            log.warn(
                "control socket: refused {who}: only {owner} (uid {owner_uid}) and root may "
                "use it",
                who=who,
                owner=account_name(owner),
                owner_uid=owner,
            )
            allowed = "root" if owner == 0 else f"{account_name(owner)} and root"
            self._close_with(error_answer(REFUSED, f"only {allowed} may use this socket"))
            return
        self.operator = operator
        self.setTimeout(IDLE_TIMEOUT)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        log.info("control socket: {who} sent nothing for {s:.0f} s; closing", who=str(self.operator), s=IDLE_TIMEOUT)
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._bad(f"a request longer than {MAX_REQUEST} bytes")

    # -- requests --------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self.operator is None:  # refused, closing
            return
        self.resetTimeout()
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            self._bad("a request that is not JSON")
            return
        if not isinstance(request, dict):
            self._bad("a request that is not a JSON object")
            return
        kind = request.get("request")
        if kind == "list":
            answer = defer.maybeDeferred(self.factory.registry.list)
            answer.addCallback(listed_answer)
        elif kind == "kill":
            session_id, message = request.get("session"), request.get("message")
            if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID:
                self._bad("a kill request without a session id")
                return
            if message is not None and not isinstance(message, str):
                self._bad("a kill request whose message is not text")
                return
            answer = defer.maybeDeferred(
                self.factory.registry.kill, session_id, self._operator_of(request), message
            )
            answer.addCallback(self._killed, session_id)
        else:
            self._bad(f"an unknown request {str(kind)[:40]!r}")
            return
        # Answers go out in order: no further line is read until this one is answered.
        self.pauseProducing()
        answer.addErrback(self._failed, kind)
        answer.addCallback(self._answer)

    def _operator_of(self, request: dict[str, Any]) -> Operator | None:
        """Who asks: the peer, or whom the relaying parent names (and only the parent)."""
        relay = self.factory.relay_pid
        if relay is None or self.operator is None or self.operator.pid != relay:
            return self.operator
        return Operator.from_json(request.get("operator")) or self.operator

    def _killed(self, result: KillResult, session_id: str) -> dict[str, Any]:
        if result.session is None:
            log.info(
                "control socket: {who} asked to end session {session!r}: no such live session",
                who=str(self.operator),
                session=session_id,
            )
            return error_answer(NOT_FOUND, f"no live session {session_id}")
        if not result.killed:
            answer = error_answer(ALREADY_ENDED, f"session {session_id} had already ended")
            return {**answer, "session": result.session.to_json()}
        return {"ok": True, "session": result.session.to_json()}

    def _failed(self, failure: Failure, kind: str) -> dict[str, Any]:
        if failure.check(SessionRegistryError):  # an answer for the operator, no bug
            log.warn(
                "control socket: the {kind} request of {who} failed: {why}",
                kind=kind,
                who=str(self.operator),
                why=str(failure.value),
            )
            return error_answer(failure.value.code, str(failure.value))
        log.failure("control socket: the {kind} request of {who} failed", failure, kind=kind, who=str(self.operator))
        return error_answer(FAILED, f"the gateway could not do the {kind} request (see its log)")

    def _answer(self, answer: dict[str, Any]) -> None:
        if self.lost:  # the operator's command went away before its answer
            return
        self.transport.write(answer_line(answer))
        self.resumeProducing()

    def _bad(self, what: str) -> None:
        log.warn("control socket: {who} sent {what}; closing", who=str(self.operator), what=what)
        self._close_with(error_answer(BAD_REQUEST, f"the gateway could not read {what}"))

    def _close_with(self, answer: dict[str, Any]) -> None:
        self.operator = None  # nothing more is read from this connection
        self.transport.write(answer_line(answer))
        self.transport.loseConnection()


class ControlFactory(Factory):
    """Control connections over one registry. ``owner_uid`` (the account the gateway runs
    as now) and ``credentials_of`` (a transport's peer) are for tests to replace."""

    noisy = False

    def __init__(
        self,
        registry: Any,
        reactor: Any,
        *,
        owner_uid: Callable[[], int] = os.geteuid,
        credentials_of: Callable[[Any], Operator | None] = peer_operator,
    ) -> None:
        if not ISessionRegistry.providedBy(registry):
            raise TypeError(f"{registry!r} is no ISessionRegistry")
        self.registry = registry
        self.reactor = reactor
        self.owner_uid = owner_uid
        self.credentials_of = credentials_of
        # In a worker process: its parent's pid, whose kill requests name their operator.
        self.relay_pid: int | None = None

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self)


def stale_socket_at(path: Path) -> bool:
    """Whether a socket file left by a gateway that is gone is at ``path`` (False: nothing
    there); raises ControlSocketError when another gateway still serves it or the file is
    no socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ControlSocketError(f"control socket {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(
            f"control socket {path}: a file that is no socket is in the way (remove it, or "
            "set [control] socket)"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        pass  # nobody listens: a gateway that did not stop cleanly left it
    except OSError as e:
        raise ControlSocketError(
            f"control socket {path}: {e.strerror or e} (another account's gateway may serve it)"
        ) from None
    else:
        try:
            pid = peer_credentials(probe)[0]
        except OSError:
            pid = 0
        raise ControlSocketError(
            f"another gateway{f' (pid {pid})' if pid else ''} serves the control socket {path}: "
            "two gateways cannot share a state directory; give this one its own state_dir "
            "(or [control] socket)"
        )
    finally:
        probe.close()
    return True


def listen_control(reactor: Any, path: Path, factory: ControlFactory) -> Any:
    """Serve ``factory`` on the UNIX socket ``path`` (mode 0600 from the start); the
    listening port. Raises ControlSocketError."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlSocketError(
            f"control socket {path}: longer than the {MAX_SOCKET_PATH} bytes a UNIX socket "
            "path may have (set [control] socket to a shorter one)"
        )
    if stale_socket_at(path):
        path.unlink(missing_ok=True)
        log.info(
            "replaced the stale control socket {path} (its gateway did not stop cleanly)",
            path=str(path),
        )
    # bind() creates the file with the umask's mode; listenUNIX chmods it only afterwards.
    old_umask = os.umask(0o177)
    try:
        port = reactor.listenUNIX(str(path), factory, mode=0o600)
    except CannotListenError as e:
        cause = e.socketError
        reason = getattr(cause, "strerror", None) or str(cause)
        raise ControlSocketError(f"cannot listen on the control socket {path}: {reason}") from None
    finally:
        os.umask(old_umask)
    log.info("control socket on {path}", path=str(path))
    return port


class ControlService(service.Service):
    """The control socket, for as long as the gateway runs. It listens in startService,
    after the privilege drop, so that the socket is the gateway account's."""

    name = "control"

    def __init__(self, path: Path, registry: Any, reactor: Any) -> None:
        self.path = Path(path)
        self.factory = ControlFactory(registry, reactor)
        self.reactor = reactor
        self.port: Any = None

    def privilegedStartService(self) -> None:
        # Before the gateway binds its endpoints: a second gateway on this state directory
        # stops here, without having listened anywhere. (A ControlSocketError ends the
        # start-up; GatewayService makes it one line.)
        super().privilegedStartService()
        stale_socket_at(self.path)

    def startService(self) -> None:
        super().startService()
        self.port = listen_control(self.reactor, self.path, self.factory)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
