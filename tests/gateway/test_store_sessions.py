"""The cluster's session registry in memory (gateway.store.sessions): two instances, each
with its own sessions (a Router, LiveSessions), over one fake database and one fake clock.
A session on B is a row in live_sessions while it lasts and is listed on A with the
instance that holds it; ``kill`` on A ends it on B (the client told, SESSION_KILLED naming
the operator and the instance they asked); an instance that does not answer is a timeout
and its request is withdrawn; with the database down the list is the local one with a
warning; an instance's stale rows go at its start. The same against a real PostgreSQL and
real gateways: tests/integration/test_cluster_sessions_peers.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from gateway import events
from gateway.control import TIMEOUT, UNREACHABLE, ControlFactory
from gateway.live_sessions import (
    ISessionRegistry,
    KillResult,
    LiveSessions,
    Operator,
    SessionRegistryError,
    SessionSummary,
)
from gateway.session_tap import TERMINATED_STATUS, ISessionTap
from gateway.store import StoreService, instance_name
from gateway.store.sessions import (
    KILL_POLL,
    KILL_WAIT,
    REFRESH_EVERY,
    ClusterSessions,
    KillRequests,
    SessionIndex,
    forget_stale_sessions,
    is_local,
    worker_instance,
)
from gateway.store.worker import StoreWorker
from protocols.session import ExitInfo, PtyRequest, SessionRequest, WindowSize
from tests.gateway.test_live_sessions import router
from tests.support.doubles import FakeDatabase, FakeSessionClient, FakeSessionRegistry, run_at_once

PTY = PtyRequest("xterm", WindowSize(24, 80))
ROOT = Operator("root", 0, 4242)


class Instance:
    """One gateway instance: its sessions, their rows, its kill requests, its registry."""

    def __init__(self, name: str, database: FakeDatabase, clock: Clock) -> None:
        self.name = name
        self.store = StoreWorker(database, clock, 100, run_in_thread=run_at_once)
        self.store.start()
        self.live = LiveSessions()
        self.index = SessionIndex(self.store, name)
        self.router, self.targets = router(self.live, self.index)
        self.kill_requests = KillRequests(self.live, self.store, name, clock)
        self.registry = ClusterSessions(self.live, self.store, name, clock)

    def open(self, user: str = "alice", target: str = "sw1") -> tuple[FakeSessionClient, str]:
        client = FakeSessionClient()
        self.router.open_session(user, SessionRequest(pty=PTY), client, target=target)
        return client, list(self.live.sessions)[-1]


@pytest.fixture
def logged():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


@pytest.fixture
def database() -> FakeDatabase:
    return FakeDatabase()


@pytest.fixture
def a(database, clock) -> Instance:
    return Instance("host-a:/var/lib/sshgateway", database, clock)


@pytest.fixture
def b(database, clock) -> Instance:
    instance = Instance("host-b:/var/lib/sshgateway", database, clock)
    instance.kill_requests.start()
    yield instance
    instance.kill_requests.stop()


def result_of(d):
    out = collected(d)
    assert out, "no answer yet"
    return out[0]


def collected(d) -> list:
    """The Deferred's result (or failure) once it has one: an empty list until then."""
    out: list = []
    d.addBoth(out.append)
    return out


def test_the_registry_and_the_index_keep_to_their_interfaces(a):
    assert verifyObject(ISessionRegistry, a.registry)
    assert verifyObject(ISessionTap, SessionIndex(a.store, a.name))


def test_a_session_is_a_row_while_it_lasts_and_is_listed_on_every_instance(a, b, database, clock):
    a.open("erin", "local")
    clock.advance(5)
    _, their_id = b.open("alice", "sw1")
    clock.advance(0)
    assert {row[0] for row in database.live.values()} == {a.name, b.name}
    listed = result_of(a.registry.list())
    assert [(s.user, s.instance) for s in listed] == [("erin", a.name), ("alice", b.name)]
    assert listed.warnings == []
    assert listed[1] == SessionSummary.from_json({**database.live[their_id][1], "instance": b.name})
    # Either instance lists the same sessions; its own from memory (live byte counts).
    b.targets["sw1"].opened[0].client.write_stdout(b"switch> ")
    from_b = result_of(b.registry.list())
    assert [(s.user, s.instance, s.bytes_out) for s in from_b] == [
        ("erin", a.name, 0), ("alice", b.name, 8)
    ]  # fmt: skip
    b.targets["sw1"].opened[0].client.exited(ExitInfo(status=0))  # it ends on B
    clock.advance(0)
    assert their_id not in database.live
    assert [s.user for s in result_of(a.registry.list())] == ["erin"]


def test_a_local_row_never_hides_or_doubles_the_local_list(a, database, clock):
    # A row of this instance with no session behind it (left by a crash before the
    # cleanup ran): the local registry is the truth for this instance.
    database.live["gone"] = (a.name, {"id": "gone"}, 1.0)
    database.live["worker"] = (worker_instance(a.name, 2), {"id": "worker"}, 1.0)
    a.open()
    clock.advance(0)
    assert [s.instance for s in result_of(a.registry.list())] == [a.name]
    assert result_of(a.registry.kill("gone", ROOT)) == KillResult(None, killed=False)


def test_kill_on_a_ends_a_session_held_by_b_and_names_who_asked_where(
    a, b, database, clock, logged
):
    client, session_id = b.open("alice", "sw1")
    clock.advance(0)
    operator = Operator("root", 0, 4242)
    answer = collected(a.registry.kill(session_id, operator, "maintenance"))
    assert answer == []  # B has yet to look for requests
    [request] = database.kills
    assert (request["instance"], request["asked_on"], request["message"]) == (
        b.name, a.name, "maintenance"
    )  # fmt: skip
    clock.advance(KILL_POLL)  # B's look: it ends the session, its outcome is written
    clock.advance(0)
    assert b"sshgateway: maintenance" in client.err and client.exit.status == TERMINATED_STATUS
    assert request["outcome"] == "killed"
    clock.advance(1)  # A's next look at the outcome
    [result] = answer
    assert isinstance(result, KillResult) and result.killed
    assert (result.session.id, result.session.instance) == (session_id, b.name)
    [event] = [e for e in logged if events.event_of(e) == events.SESSION_KILLED]
    assert (event["by"], event["by_uid"], event["by_instance"]) == ("root", 0, a.name)
    assert f"(uid 0, pid 4242, on instance {a.name}): maintenance" in formatEvent(event)
    assert session_id not in database.live  # the session's end removed its row


def test_kill_of_a_session_that_ended_meanwhile_says_so(a, b, database, clock):
    _, session_id = b.open()
    clock.advance(0)
    answer = collected(a.registry.kill(session_id, ROOT))
    b.live.sessions[session_id].ended = True  # ended while the request was on its way
    clock.advance(KILL_POLL)
    clock.advance(1)
    [result] = answer
    assert result.session.id == session_id and result.killed is False
    assert database.kills[0]["outcome"] == "ended"


def test_an_unknown_id_is_not_found_everywhere(a, b, clock):
    b.open()
    clock.advance(0)
    assert result_of(a.registry.kill("no-such-id", ROOT)) == KillResult(None, killed=False)


def test_an_instance_that_does_not_answer_is_a_timeout_and_the_request_is_withdrawn(
    a, b, database, clock
):
    client, session_id = b.open()
    clock.advance(0)
    b.kill_requests.stop()  # B hangs (or lost its database)
    answer = collected(a.registry.kill(session_id, ROOT))
    clock.pump([1] * int(KILL_WAIT - 1))
    assert answer == []
    clock.pump([1] * 2)
    [failure] = answer
    assert failure.check(SessionRegistryError) and failure.value.code == TIMEOUT
    assert b.name in str(failure.value) and f"{KILL_WAIT:g} s" in str(failure.value)
    assert database.kills[0]["outcome"] == "expired"
    b.kill_requests.start()  # B comes back: it does not end the session unasked
    clock.advance(KILL_POLL)
    assert session_id in b.live.sessions and client.exit is None


def test_a_request_is_carried_out_once_while_its_outcome_is_still_queued(b, database, clock):
    _, session_id = b.open()
    clock.advance(0)
    database.request_kill(session_id, b.name, "root", 0, 1, "elsewhere", None)
    ends = []
    b.live.kill = lambda *args: ends.append(args) or LiveSessions.kill(b.live, *args)
    real_kill_done = database._write_kill_done
    database._write_kill_done = lambda *args: (_ for _ in ()).throw(ConnectionError("slow"))
    clock.advance(KILL_POLL)  # carried out; its outcome fails to land and is queued again
    b.store.up = True
    clock.advance(KILL_POLL)  # still pending in the table: not carried out again
    assert len(ends) == 1
    database._write_kill_done = real_kill_done
    clock.pump([2.0] * 3)
    assert database.kills[0]["outcome"] == "killed"


def test_with_the_database_down_list_is_local_with_a_warning_and_kill_says_why(
    a, b, database, clock
):
    a.open("erin", "local")
    b.open("alice", "sw1")
    clock.advance(0)
    database.down = True
    listed = result_of(a.registry.list())  # the store finds out with this call
    assert [s.user for s in listed] == ["erin"]
    [warning] = listed.warnings
    assert "unreachable" in warning and a.name in warning
    listed = result_of(a.registry.list())  # known down: no wait for the database
    assert [s.user for s in listed] == ["erin"] and "database down" in listed.warnings[0]
    failure = result_of(a.registry.kill("held-by-b", ROOT))
    assert failure.check(SessionRegistryError) and failure.value.code == UNREACHABLE
    assert "cannot ask the other instances" in str(failure.value)


def test_a_slow_database_does_not_hold_up_the_list(a, clock):
    a.open()
    a.store.call = lambda *args: defer.Deferred()  # a database that never answers
    answer = collected(a.registry.list())
    assert answer == []
    clock.advance(a.registry.list_timeout)
    [listed] = answer
    assert len(listed) == 1 and "no answer within" in listed.warnings[0]


def test_the_control_socket_passes_warnings_and_refusals_on(a, database, clock):
    import json

    from twisted.internet.testing import StringTransport

    database.down = True
    factory = ControlFactory(a.registry, clock, owner_uid=lambda: 0, credentials_of=lambda t: ROOT)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b'{"request": "list"}\n{"request": "kill", "session": "x"}\n')
    listing, kill = [json.loads(line) for line in transport.value().splitlines()]
    assert listing["ok"] and listing["sessions"] == [] and "unreachable" in listing["warnings"][0]
    assert kill["ok"] is False and kill["error"] == UNREACHABLE and "cannot ask" in kill["message"]


def test_an_instance_forgets_its_stale_rows_and_its_workers_at_start(database, clock):
    me, other = "host-a:/srv/gw_1", "host-b:/srv/gw_1"
    for session_id, owner, started in [
        ("crashed", me, 10.0), ("worker", worker_instance(me, 1), 10.0),
        ("prefix", me + "x", 10.0), ("other", other, 10.0), ("new", worker_instance(me, 2), 30.0),
    ]:  # fmt: skip
        database.live[session_id] = (owner, {}, started)
    store = StoreWorker(database, clock, 100, run_in_thread=run_at_once)
    store.start()
    forget_stale_sessions(store, me, 20.0)
    clock.advance(0)
    assert set(database.live) == {"prefix", "other", "new"}


def test_instance_names_are_stable_and_name_workers(tmp_path):
    name = instance_name(tmp_path)
    assert name == instance_name(tmp_path) and name.endswith(f":{tmp_path.resolve()}")
    assert instance_name(tmp_path, 3) == worker_instance(name, 3) == f"{name}/worker-3"
    assert is_local(worker_instance(name, 3), name) and not is_local(name + "x", name)


def test_the_store_service_wires_rows_kill_requests_and_the_registry(tmp_path, clock):
    settings = type("S", (), {"url": "postgresql://x/y", "queue_max": 10, "cache_ttl": 2.0})()
    service = StoreService(settings, clock, instance="gw1")
    live = LiveSessions()
    taps = service.session_taps([live])
    assert [type(t).__name__ for t in taps] == ["RecordingIndex", "SessionIndex"]
    assert service.kill_requests.local is live and service.kill_requests.instance == "gw1"
    parent = FakeSessionRegistry([])
    registry = service.session_registry(parent)
    assert isinstance(registry, ClusterSessions) and registry.local is parent


def test_with_worker_processes_the_parent_lists_its_workers_sessions_once(database, clock):
    # The parent of workers asks them (gateway.worker_sessions): their rows in the table
    # are its own, named <instance>/worker-N; another instance's are added.
    parent = "host-a:/srv/gw"
    summary = SessionSummary(
        "w-1", "alice", "192.0.2.7:1", "ssh2", "local", "local", 10.0, 0, 0, None, worker=2
    )
    database.live["w-1"] = (worker_instance(parent, 2), summary.to_json(), 10.0)
    elsewhere = replace(summary, id="b-1", worker=None, started=20.0)
    database.live["b-1"] = ("host-b:/srv/gw", elsewhere.to_json(), 20.0)
    store = StoreWorker(database, clock, 100, run_in_thread=run_at_once)
    store.start()
    registry = ClusterSessions(FakeSessionRegistry([summary]), store, parent, clock)
    listed = result_of(registry.list())
    assert [(s.id, s.worker, s.instance) for s in listed] == [
        ("w-1", 2, worker_instance(parent, 2)),
        ("b-1", None, "host-b:/srv/gw"),
    ]


def test_the_rows_byte_counts_follow_the_session_every_few_seconds(a, b, database, clock):
    _, session_id = b.open()
    b.index.start(clock)
    clock.advance(0)
    b.targets["sw1"].opened[0].client.write_stdout(b"switch> ")
    assert [s.bytes_out for s in result_of(a.registry.list())] == [0]  # as of its start
    clock.advance(REFRESH_EVERY)
    clock.advance(0)
    assert [s.bytes_out for s in result_of(a.registry.list())] == [8]
    writes = b.store.written
    clock.advance(REFRESH_EVERY)  # nothing changed: nothing written
    clock.advance(0)
    assert b.store.written == writes
    b.index.stop()
