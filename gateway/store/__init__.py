"""Shared state in PostgreSQL (``[store] url``), for several gateway instances behind one
load balancer. Without a url nothing here is used: the state stays in ``state_dir``.

:class:`StoreService` owns the store for a running gateway: it checks the schema and
settles the host keys at start (blocking, before the reactor runs), then runs the database
client on its own thread (gateway.store.worker) and hands the gateway adapters behind the
interfaces it already uses: :class:`~gateway.store.known_hosts.SharedKnownHosts`,
:class:`~gateway.store.penalties.SharedPenaltyBook`, and the flow and audit writers'
mirror (gateway.jsonl), the recordings index (a session tap, gateway.store.recordings),
and the cluster's session registry (gateway.store.sessions: each instance's rows, the kill
requests it carries out, the control socket's list and kill over every instance). The
shared pins and penalties are re-read every ``cache_ttl``.

The tables and their migrations: gateway.store.migrations; ``sshgateway db upgrade``
applies them (tools.db).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.store.database import Database, connect
from gateway.store.hostkeys import fernet_for, share_host_keys
from gateway.store.known_hosts import SharedKnownHosts
from gateway.store.migrations import SchemaTooOld, check_version
from gateway.store.penalties import SharedPenaltyBook
from gateway.store.worker import StoreWorker

log = Logger()


class StoreUnusable(Exception):
    """The store cannot be used at start (one line, for the startup error)."""


def instance_name(state_dir: str | Path | None = None, worker: int | None = None) -> str:
    """How this instance is named in the tables: ``<hostname>:<state_dir>``, the same
    across restarts (so that it finds the rows it left) and unique on its host (one
    state_dir serves one gateway); worker process N of it adds ``/worker-N``. Without a
    state_dir (tools, tests): host and process."""
    from gateway.store.sessions import worker_instance

    if state_dir is None:
        return f"{socket.gethostname()}:{os.getpid()}"
    name = f"{socket.gethostname()}:{Path(state_dir).resolve()}"
    return name if worker is None else worker_instance(name, worker)


class StoreService(service.Service):
    """The shared store of one running gateway."""

    def __init__(self, settings: Any, reactor: Any, *, instance: str | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.instance = instance or instance_name()
        self.worker = StoreWorker(
            Database(settings.url, self.instance), reactor, settings.queue_max
        )
        self.known_hosts_by_path: dict[Path, SharedKnownHosts] = {}
        self.penalty_books: list[SharedPenaltyBook] = []
        self._refresher: task.LoopingCall | None = None
        self.kill_requests: Any = None  # gateway.store.sessions.KillRequests, with sessions
        self.session_index: Any = None  # gateway.store.sessions.SessionIndex

    # -- at start, blocking ----------------------------------------------------------

    def host_keys(self, state_dir: Path) -> Any:
        """Check the schema and settle the cluster's host keys. With the database
        unreachable, the copies this instance wrote last time are used (and if there are
        none it cannot start). Raises StoreUnusable or HostKeyError."""
        from gateway.hostkeys import HostKeyError, load_host_keys

        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreUnusable(
                "[store] url needs psycopg 3: pip install 'sshgateway[postgres]'"
            ) from None
        fernet = fernet_for(self.settings.key, self.settings.key_file)
        try:
            conn = connect(self.settings.url)
        except Exception as e:  # psycopg.OperationalError and friends
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            try:
                keys = load_host_keys(state_dir)
            except HostKeyError:
                raise StoreUnusable(
                    f"[store] database unreachable ({reason}) and no copy of the shared host "
                    f"keys in {state_dir} yet"
                ) from None
            self.worker.up = False
            log.error(
                "store: database unreachable at start ({reason}): using the host keys "
                "copied to {state_dir} last time; writes are queued",
                reason=reason,
                state_dir=str(state_dir),
            )
            return keys
        try:
            check_version(conn)
            return share_host_keys(conn, fernet, state_dir)
        except SchemaTooOld as e:
            raise StoreUnusable(str(e)) from None
        finally:
            conn.close()

    # -- adapters --------------------------------------------------------------------

    def known_hosts(self, path: Path) -> SharedKnownHosts:
        """The shared KnownHosts for ``path`` (one per path, kept across reloads)."""
        known = self.known_hosts_by_path.get(path)
        if known is None:
            known = self.known_hosts_by_path[path] = SharedKnownHosts(path, self.worker)
        return known

    def penalty_book(self, rules: Any) -> SharedPenaltyBook:
        book = SharedPenaltyBook(rules, self.reactor, self.worker)
        self.penalty_books.append(book)
        return book

    def session_tap(self) -> Any:
        """The session tap that indexes recordings (after the recorder's)."""
        from gateway.store.recordings import RecordingIndex

        return RecordingIndex(self.worker)

    def session_taps(self, taps: list[Any]) -> list[Any]:
        """The store's session taps, after ``taps`` (the recorder's first): the
        recordings index, and the rows of this process's live sessions; the kill
        requests addressed to this process are carried out by the registry among
        ``taps`` (gateway.live_sessions.LiveSessions)."""
        from gateway.live_sessions import ISessionRegistry
        from gateway.store.sessions import KillRequests, SessionIndex

        local = next((tap for tap in taps if ISessionRegistry.providedBy(tap)), None)
        if local is not None:
            self.kill_requests = KillRequests(local, self.worker, self.instance, self.reactor)
        self.session_index = SessionIndex(self.worker, self.instance)
        return [self.session_tap(), self.session_index]

    def session_registry(self, local: Any) -> Any:
        """The control socket's registry: ``local`` (this instance's sessions) and every
        other instance's (gateway.store.sessions.ClusterSessions)."""
        from gateway.store.sessions import ClusterSessions

        return ClusterSessions(local, self.worker, self.instance, self.reactor)

    def mirror(self, what: str, record: dict[str, Any]) -> None:
        """A flow record or audit event for its append-only table (gateway.jsonl)."""
        self.worker.write("record", what, record)

    # -- running -----------------------------------------------------------------------

    def refresh(self) -> defer.Deferred:
        """Re-read the shared pins and penalties."""
        reads = [known.refresh() for known in self.known_hosts_by_path.values()]
        reads += [book.refresh() for book in self.penalty_books]
        if not reads:  # still find out whether the database is back
            reads.append(self.worker.call("schema_version").addErrback(lambda _: None))
        return defer.gatherResults(reads)

    def startService(self) -> None:
        from gateway.jsonl import RotatingJSONLines
        from gateway.store.sessions import forget_stale_sessions

        super().startService()
        self.worker.start()
        # First in the queue: before any row of this process's own sessions.
        forget_stale_sessions(self.worker, self.instance, self.reactor.seconds())
        if self.kill_requests is not None:
            self.kill_requests.start()
        if self.session_index is not None:
            self.session_index.start(self.reactor)
        RotatingJSONLines.mirror = self.mirror
        self._refresher = task.LoopingCall(self.refresh)
        self._refresher.clock = self.reactor
        self._refresher.start(max(self.settings.cache_ttl, 0.5), now=True)

    def stopService(self) -> defer.Deferred:
        from gateway.jsonl import RotatingJSONLines

        super().stopService()
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        if self.kill_requests is not None:
            self.kill_requests.stop()
        if self.session_index is not None:
            self.session_index.stop()
        if RotatingJSONLines.mirror == self.mirror:
            RotatingJSONLines.mirror = None
        return self.worker.stop()


__all__ = ["StoreService", "StoreUnusable", "instance_name"]
