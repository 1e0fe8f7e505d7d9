"""The shared store's logic in memory (gateway.store), against a fake database: the write
queue (bounded, counted, drained when the database is back), penalties and host-key pins
shared between two instances, and what each does while the database is down. The same
against a real PostgreSQL: tests/gateway/test_store_postgres.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from gateway.jsonl import RotatingJSONLines
from gateway.known_hosts import HostKeyChanged, KnownHostsError
from gateway.penalties import AUTHFAIL, MALFORMED, IPenaltyBook, PenaltyRules
from gateway.session_tap import ISessionObserver, ISessionTap
from gateway.store.known_hosts import SharedKnownHosts
from gateway.store.penalties import SharedPenaltyBook
from gateway.store.worker import DEFAULT_RETRY, IStoreWorker, StoreWorker
from tests.support.doubles import FakeDatabase, run_at_once
from tests.support.gateway_helpers import LOCAL_ACCESS, ed25519_key

KEY = ed25519_key()
OTHER = ed25519_key()
RULES = PenaltyRules({AUTHFAIL: 5.0, MALFORMED: 30.0}, minimum=15.0, maximum=60.0)


def worker(database: FakeDatabase, clock: Clock, queue_max: int = 100) -> StoreWorker:
    store = StoreWorker(database, clock, queue_max, run_in_thread=run_at_once)
    store.start()
    return store


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_000_000)  # the penalties' ends are Unix times
    return clock


def test_the_worker_and_the_book_keep_to_their_interfaces(clock):
    store = worker(FakeDatabase(), clock)
    assert verifyObject(IStoreWorker, store)
    assert verifyObject(IPenaltyBook, SharedPenaltyBook(RULES, clock, store))


def test_writes_reach_the_database_in_order(clock):
    database = FakeDatabase()
    store = worker(database, clock)
    for n in range(3):
        store.write("record", "flows", {"n": n})
    clock.advance(0)
    assert [r["n"] for r in database.records["flows"]] == [0, 1, 2]
    assert (store.queued, store.dropped, store.written) == (0, 0, 3)


def test_writes_are_queued_and_counted_while_the_database_is_down_then_arrive(clock):
    database = FakeDatabase()
    store = worker(database, clock, queue_max=3)
    database.down = True
    for n in range(5):
        store.write("record", "audit", {"n": n})
        clock.advance(0)
    assert not store.up
    assert store.queued == 3 and store.dropped == 2  # the oldest two made room
    assert database.records["audit"] == []
    database.down = False
    clock.advance(DEFAULT_RETRY)
    assert store.up
    assert [r["n"] for r in database.records["audit"]] == [2, 3, 4]
    assert (store.queued, store.dropped) == (0, 2)


def test_a_failed_batch_is_retried_whole_and_not_twice(clock):
    database = FakeDatabase()
    store = worker(database, clock)
    database.down = True
    store.write("record", "flows", {"n": 1})
    clock.advance(0)
    clock.advance(DEFAULT_RETRY)  # still down: back in the queue
    assert store.queued == 1
    database.down = False
    clock.advance(DEFAULT_RETRY)
    clock.advance(DEFAULT_RETRY)
    assert database.records["flows"] == [{"n": 1}]


def test_the_flow_and_audit_writers_hand_every_record_to_the_store(tmp_path, clock):
    database = FakeDatabase()
    store = worker(database, clock)
    writer = RotatingJSONLines(tmp_path, "audit.jsonl", 4096, 1, what="audit")
    RotatingJSONLines.mirror = lambda what, record: store.write("record", what, record)
    try:
        writer.write({"event": "login"})
    finally:
        RotatingJSONLines.mirror = None
    clock.advance(0)
    assert database.records["audit"] == [{"event": "login"}]
    assert (tmp_path / "audit.jsonl").read_text().strip() == '{"event":"login"}'  # kept too


# -- penalties --------------------------------------------------------------------------


def two_books(clock: Clock, database: FakeDatabase) -> tuple[SharedPenaltyBook, SharedPenaltyBook]:
    return (
        SharedPenaltyBook(RULES, clock, worker(database, clock)),
        SharedPenaltyBook(RULES, clock, worker(database, clock)),
    )


def test_a_source_penalised_on_one_instance_is_refused_on_the_other(clock):
    database = FakeDatabase()
    a, b = two_books(clock, database)
    a.penalise("192.0.2.7/32", MALFORMED)
    clock.advance(0)
    assert b.refused_until("192.0.2.7/32") is None  # until b reads the table
    b.refresh()
    assert b.refused_until("192.0.2.7/32") == pytest.approx(clock.seconds() + 30.0)
    clock.advance(31)
    assert b.refused_until("192.0.2.7/32") is None  # and it ends there too


def test_penalties_not_yet_refused_are_shared_but_refuse_nobody(clock):
    database = FakeDatabase()
    a, b = two_books(clock, database)
    a.penalise("192.0.2.8/32", AUTHFAIL)  # 5 s: below the minimum
    clock.advance(0)
    b.refresh()
    assert b.refused_until("192.0.2.8/32") is None
    assert "192.0.2.8/32" in database.penalties


def test_with_the_database_down_an_instance_keeps_what_it_knew(clock):
    database = FakeDatabase()
    a, b = two_books(clock, database)
    a.penalise("192.0.2.9/32", MALFORMED)
    clock.advance(0)
    b.refresh()
    database.down = True
    b.refresh()  # fails: the last read stays
    assert b.refused_until("192.0.2.9/32") is not None
    b.penalise("198.51.100.1/32", MALFORMED)  # and its own penalties work as ever
    assert b.refused_until("198.51.100.1/32") is not None
    assert b.store.queued == 1


# -- host-key pins ----------------------------------------------------------------------


def two_known_hosts(
    tmp_path: Path, clock: Clock, database: FakeDatabase
) -> tuple[SharedKnownHosts, SharedKnownHosts]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return (
        SharedKnownHosts(tmp_path / "a" / "known_hosts", worker(database, clock)),
        SharedKnownHosts(tmp_path / "b" / "known_hosts", worker(database, clock)),
    )


def test_a_key_pinned_through_one_instance_is_enforced_by_the_other(tmp_path, clock):
    database = FakeDatabase()
    a, b = two_known_hosts(tmp_path, clock, database)
    a.check_ssh2("dev1", 22, KEY, "accept-new").record()
    assert len(database.pinned) == 1
    assert not (tmp_path / "a" / "known_hosts").exists()  # the pin is the database's
    b.refresh()
    b.check_ssh2("dev1", 22, KEY, "accept-new").record()  # the same key: fine
    with pytest.raises(HostKeyChanged, match="CHANGED"):
        b.check_ssh2("dev1", 22, OTHER, "accept-new")
    assert b.ssh2_key_types("dev1", 22) == ["ssh-ed25519"]


def test_two_first_sightings_are_settled_by_the_database(tmp_path, clock):
    database = FakeDatabase()
    a, b = two_known_hosts(tmp_path, clock, database)
    pin_a = a.check_ssh2("dev2", 22, KEY, "accept-new")
    pin_b = b.check_ssh2("dev2", 22, OTHER, "accept-new")  # neither knows the other's yet
    pin_a.record()
    pin_b.record()  # the database already holds a's: b takes it
    with pytest.raises(HostKeyChanged):
        b.check_ssh2("dev2", 22, OTHER, "accept-new")
    b.check_ssh2("dev2", 22, KEY, "accept-new")


def test_with_the_database_down_known_keys_are_checked_and_new_ones_refused(tmp_path, clock):
    database = FakeDatabase()
    a, b = two_known_hosts(tmp_path, clock, database)
    a.check_ssh2("dev3", 22, KEY, "accept-new").record()
    b.refresh()
    database.down = True
    b.refresh()
    b.store.write("record", "flows", {})  # the worker notices the database is down
    clock.advance(0)
    assert not b.store.up
    b.check_ssh2("dev3", 22, KEY, "accept-new")  # last-known pins still hold
    with pytest.raises(HostKeyChanged):
        b.check_ssh2("dev3", 22, OTHER, "accept-new")
    with pytest.raises(KnownHostsError, match="shared store is unreachable"):
        b.check_ssh2("dev4", 22, KEY, "accept-new")
    assert "dev4" not in str(database.pinned)


def test_local_file_entries_still_count_with_a_store(tmp_path, clock):
    database = FakeDatabase()
    a, _ = two_known_hosts(tmp_path, clock, database)
    (tmp_path / "a" / "known_hosts").write_text(
        "dev5 " + KEY.public().toString("OPENSSH").decode() + "\n"
    )
    a.check_ssh2("dev5", 22, KEY, "strict")
    with pytest.raises(HostKeyChanged):
        a.check_ssh2("dev5", 22, OTHER, "accept-new")


# -- the [store] table --------------------------------------------------------------------


def test_no_store_table_means_no_store():
    from gateway.config import parse_config
    from gateway.service import shared_store

    config = parse_config(f'[users.alice]\nauthorized_keys = "/ak"\n{LOCAL_ACCESS}', base=Path("/"))
    assert config.store.url is None
    assert shared_store(config, Clock()) is None


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('url = "postgresql://u:hunter2@db/gw"', "needs `key` or `key_file`"),
        ('url = "mysql://u:hunter2@db/gw"\nkey = "k"', "must be a PostgreSQL URL"),
        ('url = "postgresql://u:hunter2@db/gw"\nkey = "k"\nkey_file = "f"', "not both"),
    ],
)
def test_store_table_problems_are_named_and_hide_the_password(table, problem):
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as error:
        parse_config(
            f'[users.alice]\nauthorized_keys = "/ak"\n{LOCAL_ACCESS}[store]\n{table}\n',
            base=Path("/"),
        )
    assert problem in str(error.value)
    assert "hunter2" not in str(error.value)


def test_the_write_queue_counts_are_on_the_metrics(clock):
    from prometheus_client import generate_latest

    from gateway.metrics import GatewayMetrics

    database = FakeDatabase()
    store = worker(database, clock, queue_max=2)
    metrics = GatewayMetrics()
    metrics.watch_store(store)
    database.down = True
    for n in range(3):
        store.write("record", "flows", {"n": n})
        clock.advance(0)
    text = generate_latest(metrics.registry).decode()
    assert "sshgateway_store_queued_writes 2.0" in text
    assert "sshgateway_store_dropped_writes 1.0" in text
    assert "sshgateway_store_up 0.0" in text
    database.down = False
    clock.advance(DEFAULT_RETRY)
    text = generate_latest(metrics.registry).decode()
    assert "sshgateway_store_queued_writes 0.0" in text and "sshgateway_store_up 1.0" in text


def test_each_recorded_session_is_indexed_when_it_ends(tmp_path, clock):
    from gateway.session_tap import LiveSession, SessionInfo
    from gateway.store.recordings import RecordingIndex

    database = FakeDatabase()
    index = RecordingIndex(worker(database, clock))
    assert verifyObject(ISessionTap, index)
    cast = tmp_path / "f1.cast"
    cast.write_bytes(b"x" * 42)
    info = SessionInfo("s1", "alice", "dev1", "ssh2", "ssh2", "192.0.2.1:5", "f1", None, None, None)
    recorded, unrecorded = LiveSession(info), LiveSession(info)
    recorded.recording = str(cast)
    observers = [index.session_started(recorded), index.session_started(unrecorded)]
    assert all(verifyObject(ISessionObserver, o) for o in observers)
    for observer in observers:
        observer.ended(None)
    clock.advance(0)
    assert database.recordings == [(str(cast), "s1", "alice", "dev1", 42)]
