"""What the shared store does in PostgreSQL: one method per statement, all blocking, all
run on the store's own thread (gateway.store.worker), never on the reactor's. The
connection is made lazily and dropped on any connection error, so the next call reconnects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.store.migrations import check_version

CONNECT_TIMEOUT = 3  # seconds: an unreachable server must fail fast, the queue waits
STATEMENT_TIMEOUT_MS = 5000  # a slow server: give up, queue, and try again later

# Tables the append-only records go to, by the writer's ``what`` (gateway.jsonl).
RECORD_TABLES = {"flows": "flow_records", "audit": "audit_events"}


def connect(url: str) -> Any:
    """A new autocommit connection to ``url`` (psycopg is imported only with a store)."""
    import psycopg

    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        application_name="sshgateway",
    )


class Database:
    """The store's statements over one connection (made on first use)."""

    def __init__(self, url: str, instance: str) -> None:
        self.url = url
        self.instance = instance
        self._conn: Any = None

    @property
    def conn(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url)
        return self._conn

    def run(self, method: str, *args: Any) -> Any:
        """Call one of the methods below; on a connection error drop the connection (the
        caller sees the error) so the next call starts afresh."""
        import psycopg

        try:
            return getattr(self, method)(*args)
        except psycopg.Error:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # -- schema ----------------------------------------------------------------------

    def schema_version(self) -> int:
        return check_version(self.conn)

    # -- writes (queued by the worker) -------------------------------------------------

    def apply(self, writes: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Apply queued writes in one transaction: all of them arrive, or none."""
        with self.conn.transaction():
            for kind, args in writes:
                getattr(self, "_write_" + kind)(*args)

    def _write_record(self, what: str, record: dict[str, Any]) -> None:
        table = RECORD_TABLES[what]
        self.conn.execute(
            f"INSERT INTO {table} (instance, record) VALUES (%s, %s::jsonb)",
            (self.instance, json.dumps(record)),
        )

    def _write_penalty(self, source: str, expires: float, active: bool, reason: str) -> None:
        # Two instances penalising one source: the later end wins, as in one book.
        self.conn.execute(
            "INSERT INTO penalties (source, expires, active, reason, instance) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (source) DO UPDATE SET "
            "expires = greatest(penalties.expires, excluded.expires), "
            "active = penalties.active OR excluded.active, reason = excluded.reason, "
            "instance = excluded.instance",
            (source, expires, active, reason, self.instance),
        )

    def _write_recording(
        self, path: str, session_id: str, username: str, target: str, size: int
    ) -> None:
        self.conn.execute(
            "INSERT INTO recordings (path, session_id, username, target, size, instance) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (path) DO UPDATE SET "
            "size = excluded.size",
            (path, session_id, username, target, size, self.instance),
        )

    def _write_pin(self, host_name: str, protocol: str, key_line: str) -> None:
        self.pin(host_name, protocol, key_line)

    def _write_forget_pins(self, host_name: str, protocols: Iterable[str]) -> None:
        self.forget_pins(host_name, protocols)

    def _write_live_session(
        self, session_id: str, instance: str, info: dict[str, Any], started: float
    ) -> None:
        self.conn.execute(
            "INSERT INTO live_sessions (id, instance, info, started_at) "
            "VALUES (%s, %s, %s::jsonb, to_timestamp(%s)) ON CONFLICT (id) DO UPDATE SET "
            "instance = excluded.instance, info = excluded.info, started_at = excluded.started_at",
            (session_id, instance, json.dumps(info), started),
        )

    def _write_live_sessions_info(
        self, instance: str, rows: Sequence[tuple[str, dict[str, Any]]]
    ) -> None:
        # An update only: a row its session's end removed meanwhile stays removed.
        with self.conn.cursor() as cur:
            cur.executemany(
                "UPDATE live_sessions SET info = %s::jsonb WHERE id = %s AND instance = %s",
                [(json.dumps(info), session_id, instance) for session_id, info in rows],
            )

    def _write_session_ended(self, session_id: str, instance: str) -> None:
        self.conn.execute(
            "DELETE FROM live_sessions WHERE id = %s AND instance = %s", (session_id, instance)
        )

    def _write_forget_sessions(self, instance: str, started_before: float) -> None:
        # The instance's rows and its workers' ("<instance>/worker-N"; left() rather than
        # LIKE: a state_dir may hold "_" or "%").
        self.conn.execute(
            "DELETE FROM live_sessions WHERE (instance = %s OR left(instance, %s) = %s) "
            "AND started_at < to_timestamp(%s)",
            (instance, len(instance) + 1, instance + "/", started_before),
        )
        self.conn.execute(
            "DELETE FROM session_kills WHERE done_at < now() - interval '1 day'"
        )

    def _write_kill_done(self, kill_id: int, outcome: str) -> None:
        # The first outcome stays (a withdrawn request is not carried out afterwards).
        self.conn.execute(
            "UPDATE session_kills SET done_at = now(), outcome = %s "
            "WHERE id = %s AND done_at IS NULL",
            (outcome, kill_id),
        )

    # -- reads and settled writes (not queued: their caller waits for the answer) -----

    def live_sessions(self) -> list[tuple[str, dict[str, Any]]]:
        """Every instance's live sessions: (instance, summary), oldest first."""
        return self.conn.execute(
            "SELECT instance, info FROM live_sessions ORDER BY started_at"
        ).fetchall()

    def live_session(self, session_id: str) -> tuple[str, dict[str, Any]] | None:
        """(instance, summary) of one live session, or None."""
        return self.conn.execute(
            "SELECT instance, info FROM live_sessions WHERE id = %s", (session_id,)
        ).fetchone()

    def request_kill(
        self,
        session_id: str,
        instance: str,
        requested_by: str,
        uid: int | None,
        pid: int | None,
        asked_on: str,
        message: str | None,
    ) -> int:
        """Ask ``instance`` to end ``session_id``; the request's id."""
        row = self.conn.execute(
            "INSERT INTO session_kills (session_id, instance, requested_by, requester_uid, "
            "requester_pid, asked_on, message) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "RETURNING id",
            (session_id, instance, requested_by, uid, pid, asked_on, message),
        ).fetchone()
        return int(row[0])

    def pending_kills(self, instance: str) -> list[tuple[Any, ...]]:
        """The requests ``instance`` has yet to carry out: (id, session, requested_by,
        uid, pid, asked_on, message), oldest first."""
        return self.conn.execute(
            "SELECT id, session_id, requested_by, requester_uid, requester_pid, asked_on, "
            "message FROM session_kills WHERE instance = %s AND done_at IS NULL ORDER BY id",
            (instance,),
        ).fetchall()

    def kill_outcome(self, kill_id: int) -> str | None:
        """How request ``kill_id`` ended; None while it is pending."""
        row = self.conn.execute(
            "SELECT outcome FROM session_kills WHERE id = %s AND done_at IS NOT NULL",
            (kill_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    def active_penalties(self, now: float) -> dict[str, float]:
        rows = self.conn.execute(
            "SELECT source, expires FROM penalties WHERE active AND expires > %s", (now,)
        ).fetchall()
        return {source: float(expires) for source, expires in rows}

    def pins(self) -> list[tuple[str, str, str]]:
        """Every pinned key: (host_name, protocol, key_line)."""
        return self.conn.execute(
            "SELECT host_name, protocol, key_line FROM host_key_pins ORDER BY pinned_at"
        ).fetchall()

    def pin(self, host_name: str, protocol: str, key_line: str) -> str:
        """Pin ``key_line`` unless the host has a key of ``protocol`` already; the key
        pinned afterwards (ours, or the one that was first)."""
        self.conn.execute(
            "INSERT INTO host_key_pins (host_name, protocol, key_line, instance) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (host_name, protocol, key_line, self.instance),
        )
        row = self.conn.execute(
            "SELECT key_line FROM host_key_pins WHERE host_name = %s AND protocol = %s",
            (host_name, protocol),
        ).fetchone()
        return str(row[0])

    def forget_pins(self, host_name: str, protocols: Iterable[str]) -> int:
        cur = self.conn.execute(
            "DELETE FROM host_key_pins WHERE host_name = %s AND protocol = ANY(%s)",
            (host_name, list(protocols)),
        )
        return cur.rowcount

    def recordings(self) -> list[tuple[str, str, str, str, int]]:
        """The recordings index: (path, session, user, target, size), oldest first."""
        return self.conn.execute(
            "SELECT path, session_id, username, target, size FROM recordings ORDER BY written_at"
        ).fetchall()

    def records(self, what: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The append-only records of ``what`` (flows, audit), oldest first."""
        table = RECORD_TABLES[what]
        if limit is None:
            rows = self.conn.execute(f"SELECT record FROM {table} ORDER BY seq").fetchall()
        else:
            rows = self.conn.execute(
                f"SELECT record FROM (SELECT seq, record FROM {table} ORDER BY seq DESC "
                "LIMIT %s) AS last ORDER BY seq",
                (limit,),
            ).fetchall()
        return [row[0] for row in rows]


__all__ = ["CONNECT_TIMEOUT", "RECORD_TABLES", "Database", "connect"]
