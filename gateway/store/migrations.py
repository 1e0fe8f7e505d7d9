"""The shared store's schema, as numbered migrations applied in order by ``sshgateway db
upgrade`` (never by a starting gateway, which only checks the version: several instances
starting at once must not race on DDL).

``schema_version`` holds one row per applied migration. A migration is never edited once
released: a change is a new entry at the end. :data:`REQUIRED_VERSION` is what this code
needs; a database behind it makes the gateway refuse to start with a one-line error.
"""

from __future__ import annotations

from typing import Any

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "host-key pins, penalties, flows, audit, host keys, sessions, recordings",
        """
        CREATE TABLE host_key_pins (
            host_name   text NOT NULL,          -- as in known_hosts: host or [host]:port
            protocol    text NOT NULL,          -- ssh1 | ssh2
            key_line    text NOT NULL,          -- the known_hosts line after the host field
            instance    text NOT NULL,          -- who saw it first
            pinned_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (host_name, protocol)   -- one pinned key per host and protocol
        );
        CREATE TABLE penalties (
            source      text PRIMARY KEY,       -- already grouped (gateway.limits)
            expires     double precision NOT NULL,  -- Unix time
            active      boolean NOT NULL,
            reason      text NOT NULL,
            instance    text NOT NULL
        );
        CREATE INDEX penalties_expires ON penalties (expires);
        CREATE TABLE flow_records (
            seq         bigserial PRIMARY KEY,
            instance    text NOT NULL,
            written_at  timestamptz NOT NULL DEFAULT now(),
            record      jsonb NOT NULL
        );
        CREATE TABLE audit_events (
            seq         bigserial PRIMARY KEY,
            instance    text NOT NULL,
            written_at  timestamptz NOT NULL DEFAULT now(),
            record      jsonb NOT NULL
        );
        CREATE TABLE host_keys (
            name        text PRIMARY KEY,       -- the state_dir file name it stands for
            sealed      bytea NOT NULL,         -- Fernet token of the private key file
            created_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE live_sessions (
            id          text PRIMARY KEY,
            instance    text NOT NULL,
            info        jsonb NOT NULL,
            started_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE session_kills (
            id          bigserial PRIMARY KEY,
            session_id  text NOT NULL,
            instance    text NOT NULL,          -- the instance that holds the session
            requested_by text NOT NULL,
            requested_at timestamptz NOT NULL DEFAULT now(),
            done_at     timestamptz
        );
        CREATE TABLE recordings (
            path        text PRIMARY KEY,
            session_id  text NOT NULL,
            username    text NOT NULL,
            target      text NOT NULL,
            size        bigint NOT NULL,
            instance    text NOT NULL,
            written_at  timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        2,
        "cluster-wide sessions list/kill: what a kill request carries and how it ended",
        """
        ALTER TABLE session_kills
            ADD COLUMN message       text,     -- what the client is told (NULL: the default)
            ADD COLUMN requester_uid integer,  -- the operator's uid and pid, on asked_on
            ADD COLUMN requester_pid integer,
            ADD COLUMN asked_on      text,     -- the instance whose control socket was asked
            ADD COLUMN outcome       text;     -- killed | ended | not_found, with done_at
        CREATE INDEX session_kills_pending ON session_kills (instance) WHERE done_at IS NULL;
        CREATE INDEX live_sessions_instance ON live_sessions (instance);
        """,
    ),
)

REQUIRED_VERSION = MIGRATIONS[-1][0]

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
# Held while migrating, so two `db upgrade` runs at once apply each migration once.
_MIGRATION_LOCK = 0x55_47_57_01


class SchemaTooOld(Exception):
    """The database's schema is behind what this gateway needs."""


def current_version(conn: Any) -> int:
    """The highest applied migration; 0 for a database never upgraded."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def check_version(conn: Any) -> int:
    """The schema's version; raises SchemaTooOld when it is behind this code."""
    version = current_version(conn)
    if version < REQUIRED_VERSION:
        raise SchemaTooOld(
            f"the store's schema is at version {version}, this gateway needs "
            f"{REQUIRED_VERSION}: run `sshgateway db upgrade --config FILE` first"
        )
    return version


def upgrade(conn: Any) -> list[tuple[int, str]]:
    """Apply the migrations the database lacks (each in its own transaction, under an
    advisory lock); returns those applied."""
    applied: list[tuple[int, str]] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(_VERSION_TABLE)
        have = current_version(conn)
        for version, description, sql in MIGRATIONS:
            if version <= have:
                continue
            with conn.transaction():
                conn.execute(sql)
                conn.execute(
                    "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                    (version, description),
                )
            applied.append((version, description))
    return applied


__all__ = [
    "MIGRATIONS",
    "REQUIRED_VERSION",
    "SchemaTooOld",
    "check_version",
    "current_version",
    "upgrade",
]
