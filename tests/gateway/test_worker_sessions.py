"""The parent's registry over its workers' sessions (gateway.worker_sessions), in memory:
each worker is the real control protocol (gateway.control) over a FakeSessionRegistry on a
StringTransport, reached through a fake ``ask``; a worker that never answers is left out
after the timeout of a Clock. And the relayed operator: believed from the parent only."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from gateway.control import ControlFactory
from gateway.control_client import answer_of, request_line
from gateway.live_sessions import ISessionRegistry, LiveSessions, Operator, SessionSummary
from gateway.service import control_service
from gateway.worker_sessions import WORKER_TIMEOUT, WorkerSessions, worker_control_socket
from tests.support.doubles import FakeSessionRegistry

PARENT = Operator("gateway", 1000, 777)  # the parent process, as a worker's socket sees it
OPERATOR = Operator("root", 0, 4242)  # who asked the parent


def summary(session_id: str, started: float) -> SessionSummary:
    return SessionSummary(
        id=session_id, user="alice", source="192.0.2.7:40000", front_protocol="ssh2",
        target="sw1", target_protocol="ssh2", started=started, bytes_in=1, bytes_out=2,
        recording=None,
    )  # fmt: skip


class FakeWorkers:
    """Worker control sockets by path: each the real ControlProtocol (relaying from the
    parent's pid) over its own FakeSessionRegistry; ``silent`` workers never answer."""

    def __init__(self, registries: dict[int, FakeSessionRegistry], silent: set[int] = frozenset()):
        self.registries = registries
        self.silent = silent
        self.asked: list[tuple[int, dict]] = []

    def socket_of(self, number: int) -> Path:
        return Path(f"/state/workers/control-{number}.sock")

    def ask(self, path: Path, request: dict) -> defer.Deferred:
        number = int(path.name.removeprefix("control-").removesuffix(".sock"))
        self.asked.append((number, request))
        if number in self.silent:
            return defer.Deferred()
        factory = ControlFactory(
            self.registries[number], Clock(), owner_uid=lambda: 1000, credentials_of=lambda t: PARENT
        )
        factory.relay_pid = PARENT.pid
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(request_line(request))
        return defer.maybeDeferred(answer_of, path, transport.value().split(b"\n")[0])

    def registry(self, clock: Clock | None = None) -> WorkerSessions:
        return WorkerSessions(
            lambda: sorted(self.registries), self.socket_of, self.ask, clock or Clock()
        )


@pytest.fixture
def logged():
    seen: list[str] = []

    def observe(event):
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def result_of(d: defer.Deferred):
    results, failures = [], []
    d.addCallbacks(results.append, failures.append)
    assert not failures, failures[0].getTraceback()
    assert results, "the Deferred has not fired"
    return results[0]


def test_it_is_a_session_registry():
    assert verifyObject(ISessionRegistry, FakeWorkers({1: FakeSessionRegistry()}).registry())


def test_list_merges_every_workers_sessions_tagged_oldest_first():
    workers = FakeWorkers({
        1: FakeSessionRegistry([summary("a", 30.0), summary("b", 10.0)]),
        2: FakeSessionRegistry([summary("c", 20.0)]),
    })  # fmt: skip
    listed = result_of(workers.registry().list())
    assert [(s.id, s.worker) for s in listed] == [("b", 1), ("c", 2), ("a", 1)]
    assert replace(listed[0], worker=None) == summary("b", 10.0)


def test_a_worker_that_never_answers_is_left_out_after_the_timeout(logged):
    clock = Clock()
    workers = FakeWorkers(
        {1: FakeSessionRegistry([summary("a", 1.0)]), 2: FakeSessionRegistry([summary("b", 2.0)])},
        silent={2},
    )
    answer = workers.registry(clock).list()
    assert not answer.called  # worker 2 may still answer
    clock.advance(WORKER_TIMEOUT)
    assert [(s.id, s.worker) for s in result_of(answer)] == [("a", 1)]
    assert any(
        "worker 2 left out of the list request: no answer within 2 s" in line for line in logged
    ), logged
    assert clock.getDelayedCalls() == []


def test_an_unreachable_worker_is_left_out_at_once(logged):
    workers = FakeWorkers({1: FakeSessionRegistry([summary("a", 1.0)]), 2: FakeSessionRegistry()})
    asking = workers.ask

    def ask(path, request):
        if path.name == "control-2.sock":
            return defer.fail(ConnectionRefusedError("Connection refused"))
        return asking(path, request)

    workers.ask = ask
    assert [s.id for s in result_of(workers.registry().list())] == ["a"]
    assert any("worker 2 left out of the list request" in line for line in logged)


def test_kill_goes_to_the_worker_that_holds_the_session_and_names_the_operator():
    workers = FakeWorkers({
        1: FakeSessionRegistry([summary("a", 1.0)]),
        2: FakeSessionRegistry([summary("b", 2.0)]),
    })  # fmt: skip
    result = result_of(workers.registry().kill("b", OPERATOR, "maintenance"))
    assert result.killed and (result.session.id, result.session.worker) == ("b", 2)
    assert workers.registries[2].kills == [("b", OPERATOR, "maintenance")]
    assert workers.registries[1].kills == [("b", OPERATOR, "maintenance")]  # asked, unknown there
    assert workers.registries[1].sessions == [summary("a", 1.0)]


def test_kill_of_an_unknown_id_is_not_found_even_with_a_silent_worker():
    clock = Clock()
    workers = FakeWorkers({1: FakeSessionRegistry(), 2: FakeSessionRegistry()}, silent={2})
    answer = workers.registry(clock).kill("nope", OPERATOR)
    clock.advance(WORKER_TIMEOUT)
    result = result_of(answer)
    assert (result.session, result.killed) == (None, False)


def test_kill_of_a_session_that_already_ended_says_so():
    class Ended(FakeSessionRegistry):
        def kill(self, session_id, by, message=None):
            from gateway.live_sessions import KillResult

            return defer.succeed(KillResult(summary(session_id, 1.0), killed=False))

    workers = FakeWorkers({1: FakeSessionRegistry(), 2: Ended()})
    result = result_of(workers.registry().kill("gone", OPERATOR))
    assert (result.session.id, result.session.worker, result.killed) == ("gone", 2, False)


@pytest.mark.parametrize("peer_pid, believed", [(PARENT.pid, True), (PARENT.pid + 1, False)])
def test_a_worker_believes_the_relayed_operator_from_its_parent_only(peer_pid, believed):
    registry = FakeSessionRegistry([summary("a", 1.0)])
    peer = replace(PARENT, pid=peer_pid)
    factory = ControlFactory(registry, Clock(), owner_uid=lambda: 1000, credentials_of=lambda t: peer)
    factory.relay_pid = PARENT.pid
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(
        request_line({"request": "kill", "session": "a", "operator": OPERATOR.to_json()})
    )
    assert json.loads(transport.value())["ok"] is True
    assert registry.kills == [("a", OPERATOR if believed else peer, None)]


def test_the_parent_of_workers_serves_the_workers_sessions(tmp_path):
    from types import SimpleNamespace

    config = SimpleNamespace(state_dir=str(tmp_path), control=SimpleNamespace(socket=None))
    supervisor = SimpleNamespace(workers={1: SimpleNamespace(process=object()),
                                          2: SimpleNamespace(process=None)})  # fmt: skip
    served = control_service(config, Clock(), [LiveSessions()], supervisor)
    registry = served.factory.registry
    assert isinstance(registry, WorkerSessions)
    assert list(registry.running()) == [1]  # worker 2 is between a death and its restart
    assert registry.socket_of(1) == worker_control_socket(tmp_path, 1)
    assert isinstance(control_service(config, Clock(), [LiveSessions()]).factory.registry, LiveSessions)


# --- the client on a real reactor: a real worker socket, and one that never answers ---------


def test_real_sockets_one_answering_one_silent_within_the_timeout(tmp_path, logged):
    import socket
    import time

    from gateway.control import listen_control
    from tests.support.sshd import close_reactor, fresh_reactor, run_until

    reactor = fresh_reactor()
    silent = socket.socket(socket.AF_UNIX)  # accepts (the kernel's backlog), never answers
    (tmp_path / "workers").mkdir()
    try:
        factory = ControlFactory(FakeSessionRegistry([summary("a", 1.0)]), reactor)
        port = listen_control(reactor, worker_control_socket(tmp_path, 1), factory)
        silent.bind(str(worker_control_socket(tmp_path, 2)))
        silent.listen(4)
        registry = WorkerSessions.of_supervisor(supervisor_running(1, 2), tmp_path, reactor)
        registry.timeout = 0.5
        results: list = []
        started = time.monotonic()
        registry.list().addBoth(results.append)
        assert run_until(reactor, lambda: bool(results), timeout=10)
        assert time.monotonic() - started < 5
        assert [(s.id, s.worker) for s in results[0]] == [("a", 1)]
        assert any("worker 2 left out of the list request: no answer within 0.5 s" in line
                   for line in logged)  # fmt: skip
        port.stopListening()
    finally:
        silent.close()
        close_reactor(reactor)


def supervisor_running(*numbers: int):
    """A WorkerSupervisor's ``workers`` as WorkerSessions reads them: all running."""
    from types import SimpleNamespace

    return SimpleNamespace(workers={n: SimpleNamespace(process=object()) for n in numbers})
