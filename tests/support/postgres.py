"""A throwaway PostgreSQL for the shared-store tests (Debian ``postgresql``): a cluster made
with ``initdb`` in a temp dir, run by ``postgres`` itself on a free loopback port and a Unix
socket in that dir, trust authentication, fsync off. As root, the cluster belongs to an
unprivileged account (Debian's ``postgres``, else one the tests create), since PostgreSQL
refuses to run as root.

``postgres_server`` (session-wide) serves many tests, each with its own database
(``postgres_url``); a test that stops and restarts the server makes its own with
:func:`start_postgres`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import pytest

from tests.support.peers import in_ci, require_module

_DATABASES = count(1)


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        message = f"PostgreSQL's {name} is not installed (Debian package postgresql)"
        if in_ci():
            pytest.fail(message + " (CI=true: a missing peer is a failure)")
        pytest.skip(message)
    return found[-1]


def _owner() -> pwd.struct_passwd | None:
    """The account the cluster runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        from tests.support.accounts import ensure_account

        return ensure_account("gwpg")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """One cluster: ``start``/``stop`` it (the data stays), ``url`` to a database."""

    directory: Path
    port: int
    owner: pwd.struct_passwd | None
    process: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / "postgres.log"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _as_owner(self) -> dict:
        if self.owner is None:
            return {}
        return {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}

    def init(self) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        if self.owner is not None:
            os.chown(self.directory, self.owner.pw_uid, self.owner.pw_gid)
        subprocess.run(
            [_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True, capture_output=True, cwd=self.directory, **self._as_owner(),
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=off", "-c", "max_connections=50"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.directory, **self._as_owner(),
            )  # fmt: skip
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres not ready: {self.log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), and wait for it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"gw_{os.getpid()}_{next(_DATABASES)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def start_postgres() -> Iterator[PostgresServer]:
    """A new cluster, started; stopped and removed afterwards (a generator for fixtures)."""
    require_module("psycopg")
    _bin("initdb")
    owner = _owner()
    directory = Path(tempfile.mkdtemp(prefix="gw-postgres-"))
    directory.chmod(0o711)  # the cluster's owner must reach its own directory inside
    server = PostgresServer(directory / "cluster", _free_port(), owner)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    yield from start_postgres()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new empty database on the session's PostgreSQL."""
    return postgres_server.new_database()
