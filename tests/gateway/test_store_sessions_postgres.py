"""The session registry's statements (gateway.store.database, used by
gateway.store.sessions) against a real PostgreSQL (tests/support/postgres.py): rows of live
sessions, the removal of an instance's stale rows (its workers' too, no other instance's,
whatever characters its state_dir holds), and a kill request from its writing to its
outcome, the first outcome staying. The logic around them: tests/gateway/test_store_sessions.py."""

from __future__ import annotations

import psycopg
import pytest

from gateway.store.database import Database
from gateway.store.migrations import upgrade
from gateway.store.sessions import worker_instance

pytestmark = pytest.mark.peer

ME = "host-a:/srv/gw_%1"  # LIKE's wildcards in a state_dir must not widen the match


@pytest.fixture
def db(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        upgrade(conn)
    database = Database(postgres_url, ME)
    yield database
    database.close()


def summary(session_id: str, started: float) -> dict:
    return {
        "id": session_id, "user": "alice", "source": "192.0.2.7:40000", "front_protocol": "ssh2",
        "target": "local", "target_protocol": "local", "started": started, "bytes_in": 0,
        "bytes_out": 0, "recording": None,
    }  # fmt: skip


def test_rows_come_and_go_and_list_oldest_first(db):
    db.apply([
        ("live_session", ("s-2", "host-b:/srv/gw", summary("s-2", 2000.0), 2000.0)),
        ("live_session", ("s-1", ME, summary("s-1", 1000.0), 1000.0)),
    ])  # fmt: skip
    assert db.run("live_sessions") == [
        (ME, summary("s-1", 1000.0)), ("host-b:/srv/gw", summary("s-2", 2000.0))
    ]  # fmt: skip
    assert db.run("live_session", "s-2") == ("host-b:/srv/gw", summary("s-2", 2000.0))
    db.apply([("live_sessions_info", (ME, [("s-1", dict(summary("s-1", 1000.0), bytes_out=8))]))])
    assert db.run("live_session", "s-1")[1]["bytes_out"] == 8
    db.apply([("session_ended", ("s-2", ME))])  # not ours to remove
    db.apply([("session_ended", ("s-1", ME))])
    db.apply([("live_sessions_info", (ME, [("s-1", summary("s-1", 1000.0))]))])  # no comeback
    assert [row[0] for row in db.run("live_sessions")] == ["host-b:/srv/gw"]
    assert db.run("live_session", "s-1") is None


def test_an_instance_forgets_its_own_and_its_workers_stale_rows_only(db):
    rows = [
        ("crashed", ME, 10.0), ("worker", worker_instance(ME, 1), 10.0),
        ("lookalike", "host-a:/srv/gwX%1", 10.0), ("longer", ME + "0", 10.0),
        ("other", "host-b:/srv/gw_%1", 10.0), ("newer", worker_instance(ME, 2), 30.0),
    ]  # fmt: skip
    db.apply([("live_session", (sid, owner, summary(sid, t), t)) for sid, owner, t in rows])
    db.apply([("forget_sessions", (ME, 20.0))])
    remaining = {sid for sid in ("crashed", "worker", "lookalike", "longer", "other", "newer")
                 if db.run("live_session", sid) is not None}  # fmt: skip
    assert remaining == {"lookalike", "longer", "other", "newer"}


def test_a_kill_request_from_its_writing_to_its_first_outcome(db):
    kill_id = db.run("request_kill", "s-1", "host-b:/srv/gw", "root", 0, 4242, ME, "bye")
    assert db.run("pending_kills", "host-b:/srv/gw") == [
        (kill_id, "s-1", "root", 0, 4242, ME, "bye")
    ]  # fmt: skip
    assert db.run("pending_kills", ME) == [] and db.run("kill_outcome", kill_id) is None
    db.apply([("kill_done", (kill_id, "killed"))])
    db.apply([("kill_done", (kill_id, "expired"))])  # too late: the first outcome stays
    assert db.run("kill_outcome", kill_id) == "killed"
    assert db.run("pending_kills", "host-b:/srv/gw") == []
