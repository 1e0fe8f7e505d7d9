"""``sshgateway db upgrade|status|new-key``: the shared store's schema (gateway.store).

``upgrade`` applies the migrations the database lacks (gateway.store.migrations) and is
safe to run again, and from several machines at once; ``status`` prints the schema version
and whether this gateway can use it; ``new-key`` prints a new key for ``[store] key``.
"""

from __future__ import annotations

import argparse
from typing import Protocol, TextIO

from gateway.config import ConfigError, load_config


class _IO(Protocol):
    stdout: TextIO
    stderr: TextIO


def setup_parser(p: argparse.ArgumentParser) -> None:
    p.description = "The shared PostgreSQL store ([store] url): its schema, and its key."
    sub = p.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    for name, help_text in (
        ("upgrade", "apply the schema migrations the database lacks"),
        ("status", "the schema version, and whether this gateway can use it"),
    ):
        q = sub.add_parser(name, help=help_text)
        q.add_argument("--config", required=True, help="the config file with [store] url")
    sub.add_parser("new-key", help="print a new key for [store] key (Fernet)")


def run(args: argparse.Namespace, io: _IO) -> int:
    """Run ``sshgateway db ...``; returns the exit status."""
    if args.db_command == "new-key":
        from gateway.store.hostkeys import new_key

        print(new_key(), file=io.stdout)
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=io.stderr)
        return 1
    if config.store.url is None:
        print(f"sshgateway db: {args.config} has no [store] url", file=io.stderr)
        return 1
    import psycopg

    from gateway.store.database import connect
    from gateway.store.migrations import REQUIRED_VERSION, current_version, upgrade

    try:
        with connect(config.store.url) as conn:
            if args.db_command == "upgrade":
                applied = upgrade(conn)
                for version, description in applied:
                    print(f"applied migration {version}: {description}", file=io.stdout)
                version = current_version(conn)
                print(f"schema at version {version}", file=io.stdout)
                return 0
            version = current_version(conn)
    except psycopg.Error as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"sshgateway db: {reason}", file=io.stderr)
        return 1
    usable = "usable" if version >= REQUIRED_VERSION else "too old: run `sshgateway db upgrade`"
    print(
        f"schema at version {version}; this gateway needs {REQUIRED_VERSION}: {usable}",
        file=io.stdout,
    )
    return 0 if version >= REQUIRED_VERSION else 1


__all__ = ["run", "setup_parser"]
