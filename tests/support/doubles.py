"""In-memory test doubles shared by the test suite, one class for each role:

- the front end's side of a session (FakeSessionClient) and a producer that records being
  paused, resumed and stopped (FakeProducer);
- an open upstream session and the sink an upstream client reports to (FakeUpstream,
  FakeUpstreamSink);
- a target's session, a named target that opens them for the Router, and one of those per
  configured target (FakeSessionTarget, FakeTarget, fake_targets);
- the portal side of the in-memory SSH-1 and SSH-2 servers: a user whose sessions are
  FakeSessionTargets, a realm handing them out, an SSH-1 RSA checker, and an RSA
  challenge callback (Avatar, Realm, RSAChecker, Challenger);
- a handed-over connection as the shutdown drain sees it, and the handoff that builds
  them (FakeDrainable, FakeDrainableHandoff);
- the parent's way of starting worker processes, and the workers it starts
  (FakeWorkerSpawner, FakeWorkerProcess);
- session taps and observers that keep what they see (RecordingTap, RecordingObserver),
  and the recorder's background writer run by the test (ManualWriter).
- work sent off the reactor (``threads.deferToThread``), held until the test runs it
  (ThreadCalls).
- a live-session registry with canned sessions, answering at once or when told
  (FakeSessionRegistry).

They record what they are told so that a test can assert on it; the few rules they keep
(a refused user, an unlisted key) are in their docstrings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from gateway.live_sessions import ISessionRegistry, KillResult
from gateway.recording import IBackgroundWriter
from gateway.session_tap import ISessionObserver, ISessionTap
from gateway.store.worker import IStoreBackend
from gateway.targets.bridge import IUpstreamSession
from gateway.workers import IWorkerSpawner
from protocols.auth import ISSH1RSAChallenge, PolicyRefused
from protocols.handoff import IDrainable, IHandoffFactory
from protocols.session import (
    UNRESTRICTED,
    ExitInfo,
    IGatewayUser,
    ISessionClient,
    ISessionTarget,
    SessionRequest,
    SessionRestrictions,
    WindowSize,
)


@implementer(ISessionClient)
class FakeSessionClient:
    """The front end's side of a session: collects output, EOF, the exit and the producer.
    Output after the exit is a bug in the code under test, so it fails at once."""

    description = "fake client"

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.eof = False
        self.exit: ExitInfo | None = None
        self.producer: Any = None

    def write_stdout(self, data: bytes) -> None:
        assert self.exit is None, "output after the exit"
        self.out += data

    def write_stderr(self, data: bytes) -> None:
        assert self.exit is None, "output after the exit"
        self.err += data

    def send_eof(self) -> None:
        self.eof = True

    def exited(self, info: ExitInfo) -> None:
        self.exit = info

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


@implementer(IPushProducer)
class FakeProducer:
    """A push producer that records whether it is paused, how often, and being stopped."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IUpstreamSession)
class FakeUpstream(FakeProducer):
    """An open upstream session, as the bridge sees it."""

    description = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.eof = False
        self.sizes: list[WindowSize] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def send_eof(self) -> None:
        self.eof = True

    def resize(self, size: WindowSize) -> None:
        self.sizes.append(size)

    def send_signal(self, name: str) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakeUpstreamSink:
    """What an upstream client protocol reports to: output, the exit, a failure, and
    whether it asked for the front end's input to pause."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.exit: ExitInfo | None = None
        self.failure: str | None = None
        self.input_paused = False

    def stdout(self, data: bytes) -> None:
        self.out += data

    def stderr(self, data: bytes) -> None:
        self.err += data

    def exited(self, info: ExitInfo) -> None:
        self.exit = info

    def failed(self, message: str) -> None:
        self.failure = message

    def pause_input(self) -> None:
        self.input_paused = True

    def resume_input(self) -> None:
        self.input_paused = False


@implementer(ISessionTarget)
class FakeSessionTarget:
    """A target's session: keeps the input (whole in ``stdin``, and each write in
    ``stdin_writes``) and the control calls in order in ``calls`` ("eof", a WindowSize,
    ("signal", name), "close"). ``target``, ``username`` and ``kwargs`` are what
    FakeTarget.open_session was given."""

    def __init__(
        self,
        request: SessionRequest,
        client: Any,
        target: str | None = None,
        username: str | None = None,
        kwargs: dict | None = None,
    ) -> None:
        self.request, self.client = request, client
        self.target, self.username, self.kwargs = target, username, kwargs or {}
        self.stdin = bytearray()
        self.stdin_writes: list[bytes] = []
        self.calls: list = []
        self.producer: Any = None

    @property
    def eof(self) -> bool:
        return "eof" in self.calls

    @property
    def sizes(self) -> list[WindowSize]:
        return [c for c in self.calls if isinstance(c, WindowSize)]

    @property
    def signals(self) -> list[str]:
        return [c[1] for c in self.calls if isinstance(c, tuple)]

    @property
    def closed(self) -> bool:
        return "close" in self.calls

    def write_stdin(self, data: bytes) -> None:
        self.stdin += data
        self.stdin_writes.append(data)

    def close_stdin(self) -> None:
        self.calls.append("eof")

    def resize(self, size: WindowSize) -> None:
        self.calls.append(size)

    def send_signal(self, name: str) -> None:
        self.calls.append(("signal", name))

    def close(self) -> None:
        self.calls.append("close")

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


class FakeTarget:
    """A named target for the Router: opens FakeSessionTargets and keeps them in
    ``opened``. A target that does not take the user's password must never get one (the
    local target gets the user's ``os_user`` instead)."""

    def __init__(self, name: str, takes_password: bool = True) -> None:
        self.name = name
        self.takes_password = takes_password
        self.opened: list[FakeSessionTarget] = []
        self.closed_all = 0

    def open_session(
        self, username: str, request: SessionRequest, client: Any, **kwargs: Any
    ) -> FakeSessionTarget:
        assert self.takes_password or "password" not in kwargs
        session = FakeSessionTarget(request, client, self.name, username, kwargs)
        self.opened.append(session)
        return session

    def close_all(self) -> None:
        self.closed_all += 1


def fake_targets(names: Any) -> dict[str, FakeTarget]:
    """A FakeTarget per name; "local" (the gateway's own shell) takes no password."""
    return {name: FakeTarget(name, takes_password=name != "local") for name in names}


@implementer(IGatewayUser)
class Avatar:
    """A logged-in user whose sessions are FakeSessionTargets, kept in ``targets``;
    ``on_open(target, client)`` is called for each, only ``allowed_env`` may be set, and
    ``restrictions`` are what the front ends must refuse."""

    def __init__(
        self,
        name: str,
        on_open: Callable[[FakeSessionTarget, Any], None] | None = None,
        allowed_env: tuple[str, ...] = (),
        restrictions: SessionRestrictions = UNRESTRICTED,
    ) -> None:
        self.username = name
        self.targets: list[FakeSessionTarget] = []
        self.on_open = on_open
        self.allowed_env = allowed_env
        self.restrictions = restrictions

    def open_session(self, request: SessionRequest, client: Any) -> FakeSessionTarget:
        target = FakeSessionTarget(request, client)
        self.targets.append(target)
        if self.on_open is not None:
            self.on_open(target, client)
        return target

    def env_allowed(self, name: str) -> bool:
        return name in self.allowed_env


@implementer(IRealm)
class Realm:
    """Hands out Avatars (with ``restrictions``) and counts logouts; the user "twostep" is
    refused by policy."""

    def __init__(self, restrictions: SessionRestrictions = UNRESTRICTED) -> None:
        self.avatars: list[Avatar] = []
        self.logouts = 0
        self.restrictions = restrictions

    def requestAvatar(self, avatar_id: bytes, mind: Any, *interfaces: Any) -> tuple:
        name = avatar_id.decode()
        if name == "twostep":
            raise PolicyRefused("needs password and publickey")
        avatar = Avatar(name, restrictions=self.restrictions)
        self.avatars.append(avatar)

        def logout() -> None:
            self.logouts += 1

        return IGatewayUser, avatar, logout


@implementer(ICredentialsChecker)
class RSAChecker:
    """Accepts an SSH-1 RSA login for a listed user whose key (e, n) answers the challenge."""

    credentialInterfaces = (ISSH1RSAChallenge,)

    def __init__(self, listed: dict[bytes, tuple[int, int]]) -> None:
        self.listed = listed

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        key = self.listed.get(credentials.username)
        if key is None or key[1] != credentials.modulus:
            return defer.fail(UnauthorizedLogin("no"))
        d = credentials.challenge(*key)

        def answered(ok: object) -> bytes:
            if ok is not True:
                raise UnauthorizedLogin("no")
            return credentials.username

        return d.addCallback(answered)


class Challenger:
    """An SSH-1 RSA challenge callback: records each (e, n) asked and gives ``answer``."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[tuple[int, int]] = []

    def __call__(self, e: int, n: int) -> Any:
        self.asked.append((e, n))
        return self.answer


@implementer(IDrainable)
class FakeDrainable(Protocol):
    """A handed-over connection as the shutdown drain sees it: records the messages its
    sessions were told and its DISCONNECT; ``session`` says whether it has a session."""

    def __init__(self, session: bool = True) -> None:
        self.session = session
        self.told: list[str] = []
        self.disconnected: str | None = None

    def has_session(self) -> bool:
        return self.session

    def tell_sessions(self, message: str) -> None:
        self.told.append(message)

    def disconnect_by_application(self, reason: str) -> None:
        self.disconnected = reason
        self.transport.loseConnection()


@implementer(IHandoffFactory)
class FakeDrainableHandoff:
    """Hands every connection to a new FakeDrainable (``built`` lists them); ``stop``
    records that its generation was retired."""

    def __init__(self) -> None:
        self.built: list[FakeDrainable] = []
        self.stopped = False

    def build_protocol(self, record: Any, server_version: bytes, client_version: bytes) -> Any:
        self.built.append(FakeDrainable())
        return self.built[-1]

    def stop(self) -> None:
        self.stopped = True


@implementer(ISessionObserver)
class RecordingObserver:
    """A session observer that keeps every call in ``calls`` (("output", data, stderr),
    ("input", data), ("resized", size), ("ended", info)); with ``fail_on`` naming a call,
    that call raises (an observer with a bug)."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_on = fail_on

    def _keep(self, *call: Any) -> None:
        self.calls.append(call)
        if call[0] == self.fail_on:
            raise RuntimeError(f"observer bug in {call[0]}")

    def output(self, data: bytes, stderr: bool) -> None:
        self._keep("output", data, stderr)

    def input(self, data: bytes) -> None:
        self._keep("input", data)

    def resized(self, size: WindowSize) -> None:
        self._keep("resized", size)

    def ended(self, info: ExitInfo | None) -> None:
        self._keep("ended", info)


@implementer(ISessionTap)
class RecordingTap:
    """A session tap that watches every session (or none with ``watch=False``) and keeps
    the LiveSessions in ``sessions`` and their observers in ``observers``."""

    def __init__(self, watch: bool = True, fail_on: str | None = None) -> None:
        self.watch = watch
        self.fail_on = fail_on
        self.sessions: list[Any] = []
        self.observers: list[RecordingObserver] = []

    def session_started(self, session: Any) -> RecordingObserver | None:
        self.sessions.append(session)
        if not self.watch:
            return None
        observer = RecordingObserver(self.fail_on)
        self.observers.append(observer)
        return observer


@implementer(IStoreBackend)
class FakeDatabase:
    """The shared store's blocking side (gateway.store.database.Database) in memory: the
    same methods, and ``down`` makes every call fail as an unreachable server does."""

    def __init__(self) -> None:
        self.down = False
        self.records: dict[str, list[dict[str, Any]]] = {"flows": [], "audit": []}
        self.penalties: dict[str, tuple[float, bool, str]] = {}
        self.pinned: dict[tuple[str, str], str] = {}
        self.recordings: list[tuple[str, str, str, str, int]] = []
        self.calls: list[str] = []
        # The cluster's session registry: session id -> (instance, summary, started), and
        # the session_kills rows (a request's id is its index + 1).
        self.live: dict[str, tuple[str, Any, float]] = {}
        self.kills: list[dict[str, Any]] = []

    def run(self, method: str, *args: Any) -> Any:
        self.calls.append(method)
        if self.down:
            raise ConnectionRefusedError("connection refused (fake database down)")
        return getattr(self, method)(*args)

    def close(self) -> None:
        pass

    def schema_version(self) -> int:
        return 1

    def apply(self, writes: Any) -> None:
        for kind, args in writes:
            getattr(self, "_write_" + kind)(*args)

    def _write_record(self, what: str, record: dict[str, Any]) -> None:
        self.records[what].append(record)

    def _write_penalty(self, source: str, expires: float, active: bool, reason: str) -> None:
        old = self.penalties.get(source)
        if old is not None:
            expires, active = max(expires, old[0]), active or old[1]
        self.penalties[source] = (expires, active, reason)

    def _write_pin(self, host_name: str, protocol: str, key_line: str) -> None:
        self.pin(host_name, protocol, key_line)

    def _write_recording(
        self, path: str, session_id: str, username: str, target: str, size: int
    ) -> None:
        self.recordings.append((path, session_id, username, target, size))

    def _write_forget_pins(self, host_name: str, protocols: Any) -> None:
        for protocol in protocols:
            self.pinned.pop((host_name, protocol), None)

    def active_penalties(self, now: float) -> dict[str, float]:
        return {s: p[0] for s, p in self.penalties.items() if p[1] and p[0] > now}

    def pins(self) -> list[tuple[str, str, str]]:
        return [(name, protocol, line) for (name, protocol), line in self.pinned.items()]

    def pin(self, host_name: str, protocol: str, key_line: str) -> str:
        return self.pinned.setdefault((host_name, protocol), key_line)

    # -- the cluster's session registry (gateway.store.sessions) ---------------------------

    def _write_live_session(self, session_id: str, instance: str, info: Any, started: float) -> None:
        self.live[session_id] = (instance, info, started)

    def _write_live_sessions_info(self, instance: str, rows: Any) -> None:
        for session_id, info in rows:
            row = self.live.get(session_id)
            if row is not None and row[0] == instance:
                self.live[session_id] = (instance, info, row[2])

    def _write_session_ended(self, session_id: str, instance: str) -> None:
        if self.live.get(session_id, ("",))[0] == instance:
            del self.live[session_id]

    def _write_forget_sessions(self, instance: str, started_before: float) -> None:
        for session_id, (owner, _, started) in list(self.live.items()):
            if (owner == instance or owner.startswith(instance + "/")) and started < started_before:
                del self.live[session_id]

    def _write_kill_done(self, kill_id: int, outcome: str) -> None:
        row = self.kills[kill_id - 1]
        if row["outcome"] is None:
            row["outcome"] = outcome

    def live_sessions(self) -> list[tuple[str, Any]]:
        rows = sorted(self.live.values(), key=lambda row: row[2])
        return [(instance, info) for instance, info, _ in rows]

    def live_session(self, session_id: str) -> tuple[str, Any] | None:
        row = self.live.get(session_id)
        return None if row is None else (row[0], row[1])

    def request_kill(self, session_id: str, instance: str, requested_by: str, uid: Any, pid: Any,
                     asked_on: str, message: Any) -> int:  # fmt: skip
        self.kills.append(dict(
            session_id=session_id, instance=instance, requested_by=requested_by, uid=uid,
            pid=pid, asked_on=asked_on, message=message, outcome=None,
        ))  # fmt: skip
        return len(self.kills)

    def pending_kills(self, instance: str) -> list[tuple[Any, ...]]:
        return [
            (n, k["session_id"], k["requested_by"], k["uid"], k["pid"], k["asked_on"], k["message"])
            for n, k in enumerate(self.kills, 1)
            if k["instance"] == instance and k["outcome"] is None
        ]

    def kill_outcome(self, kill_id: int) -> str | None:
        return self.kills[kill_id - 1]["outcome"]


def run_at_once(f: Any, *args: Any) -> Any:
    """The store worker's thread, for tests: the call runs now, its result a Deferred."""
    from twisted.internet import defer

    return defer.maybeDeferred(f, *args)


class FakeWorkerProcess:
    """A worker's process transport: records the signals it is sent; :meth:`end` makes it
    end (``signal``: killed by it, else ``status``) as Twisted reports a process's end."""

    def __init__(self, protocol: Any, number: int, listen_fds: dict[str, int], pid: int) -> None:
        self.protocol = protocol
        self.number = number
        self.listen_fds = listen_fds
        self.pid: int | None = pid
        self.signals: list[str] = []
        protocol.makeConnection(self)

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, signame: str) -> None:
        from twisted.internet.error import ProcessExitedAlready

        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(signame)

    def say(self, data: bytes, fd: int = 1) -> None:
        self.protocol.childDataReceived(fd, data)

    def end(self, status: int = 0, signal: int | None = None) -> None:
        from twisted.internet.error import ProcessDone, ProcessTerminated
        from twisted.python.failure import Failure

        self.pid = None
        if status == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(None if signal else status, signal))
        self.protocol.processEnded(reason)


@implementer(IWorkerSpawner)
class FakeWorkerSpawner:
    """Starts FakeWorkerProcesses (pids 1000, 1001, ...), kept in ``processes``."""

    def __init__(self) -> None:
        self.processes: list[FakeWorkerProcess] = []

    def spawn(self, protocol: Any, number: int, listen_fds: Any) -> FakeWorkerProcess:
        process = FakeWorkerProcess(protocol, number, dict(listen_fds), 1000 + len(self.processes))
        self.processes.append(process)
        return process

    def running(self) -> dict[int, FakeWorkerProcess]:
        """The live process of each worker number."""
        return {p.number: p for p in self.processes if p.pid is not None}
@implementer(IBackgroundWriter)
class ManualWriter:
    """The recorder's background writer (gateway.recording.IBackgroundWriter) in memory: the
    work it is given waits in ``jobs`` until the test runs it (``run_all``, ``run_next``),
    so a test decides when "the disk" is done; ``synchronous=True`` runs it at once."""

    def __init__(self, synchronous: bool = False) -> None:
        self.synchronous = synchronous
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred]] = []
        self.stopped = False

    def run(self, work: Callable[..., Any], *args: Any) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        self.jobs.append((work, args, done))
        if self.synchronous:
            self.run_all()
        return done

    def run_next(self) -> None:
        work, args, done = self.jobs.pop(0)
        try:
            result = work(*args)
        except BaseException:
            done.errback()
        else:
            done.callback(result)

    def run_all(self) -> None:
        while self.jobs:
            self.run_next()

    def stop(self) -> None:
        self.run_all()
        self.stopped = True


class ThreadCalls:
    """Stands in for ``twisted.internet.threads.deferToThread``: each call waits in
    ``pending`` until :meth:`run` makes it and fires its Deferred (as the reactor does when
    the thread is done), or is made at once while ``at_once`` is set."""

    def __init__(self, at_once: bool = False) -> None:
        self.at_once = at_once
        self.pending: list[tuple[Callable[..., Any], tuple, dict, defer.Deferred]] = []
        self.made = 0

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        self.pending.append((function, args, kwargs, done))
        if self.at_once:
            self.run()
        return done

    def run(self) -> None:
        while self.pending:
            function, args, kwargs, done = self.pending.pop(0)
            self.made += 1
            try:
                result = function(*args, **kwargs)
            except Exception:
                done.errback()
            else:
                done.callback(result)


class RecordingKeyGenerator:
    """Stands in for ``protocols.ssh1.server.generate_server_key`` (the SSH-1 server-key
    generator): records the size of each key asked for and hands out a ready-made key of
    that size; the real one takes 8-89 ms at 1024-2048 bits, seconds at 4096 (what no
    login may wait for). Checked against the real signature in tests/test_doubles.py."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, bits: int) -> Any:
        from tests.support.ssh1.minclient import small_key

        self.calls.append(bits)
        return small_key(bits)


@implementer(ISessionRegistry)
class FakeSessionRegistry:
    """A live-session registry holding the ``sessions`` (SessionSummary) it is given: kill
    ends one (recording the call in ``kills``: (id, by, message)) or says it is unknown.
    With ``later=True`` every answer waits in ``pending`` until the test fires it."""

    def __init__(self, sessions: list[Any] | None = None, later: bool = False) -> None:
        self.sessions = list(sessions or [])
        self.kills: list[tuple] = []
        self.later = later
        self.pending: list[tuple[defer.Deferred, Any]] = []

    def _answer(self, value: Any) -> defer.Deferred:
        if not self.later:
            return defer.succeed(value)
        d: defer.Deferred = defer.Deferred()
        self.pending.append((d, value))
        return d

    def fire_pending(self) -> None:
        pending, self.pending = self.pending, []
        for d, value in pending:
            d.callback(value)

    def list(self) -> defer.Deferred:
        return self._answer(list(self.sessions))

    def kill(self, session_id: str, by: Any, message: str | None = None) -> defer.Deferred:
        self.kills.append((session_id, by, message))
        found = next((s for s in self.sessions if s.id == session_id), None)
        if found is not None:
            self.sessions.remove(found)
        return self._answer(KillResult(found, killed=found is not None))
