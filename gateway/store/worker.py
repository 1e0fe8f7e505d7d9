"""The reactor's side of the shared store: every database call runs on one dedicated thread
(with its own connection, gateway.store.database), and comes back as a Deferred.

Writes that need no answer (flow records, audit events, penalties) go to a bounded queue,
drained in batches, one transaction per batch. When the database is down or slow the batch
goes back to the head of the queue and the drain is retried every ``retry`` seconds; the
gateway goes on. Past ``queue_max`` held writes the oldest is dropped. ``queued`` and
``dropped`` are what the metrics export; each change of state is one log line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

log = Logger()

DEFAULT_RETRY = 2.0
BATCH = 500  # writes per transaction
# A full queue logs its first drop and then one line per this many.
DROP_LOG_EVERY = 1000


class IStoreBackend(Interface):
    """The blocking side (gateway.store.database.Database, or a test's fake)."""

    def run(method: str, *args: Any) -> Any:
        """Call ``method`` with ``args``; raise when the database cannot be used."""

    def close() -> None:
        """Drop the connection."""


class IStoreWorker(Interface):
    """What the adapters ask of the store."""

    up: bool  # the last call reached the database

    def call(method: str, *args: Any) -> defer.Deferred:
        """Run ``method`` off the reactor; its result (or failure) as a Deferred."""

    def write(kind: str, *args: Any) -> None:
        """Queue a write (``Database._write_<kind>``); never fails, never waits."""


@implementer(IStoreWorker)
class StoreWorker:
    """One thread, its connection, and the write queue."""

    def __init__(
        self,
        backend: IStoreBackend,
        clock: IReactorTime,
        queue_max: int,
        *,
        run_in_thread: Callable[..., defer.Deferred] | None = None,
        retry: float = DEFAULT_RETRY,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.queue_max = queue_max
        self.retry = retry
        self.up = True  # optimistic until a call fails
        self.dropped = 0  # writes lost to a full queue, ever
        self.written = 0  # writes that reached the database, ever
        self._queue: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._in_flight: list[tuple[str, tuple[Any, ...]]] = []
        self._retry_call: Any = None
        self._pool: ThreadPool | None = None
        self._run_in_thread = run_in_thread
        self._stopped = False

    @property
    def queued(self) -> int:
        """Writes waiting for the database (in flight included)."""
        return len(self._queue) + len(self._in_flight)

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        if self._run_in_thread is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="sshgateway-store")
            self._pool.start()
            pool = self._pool

            def run_in_pool(f: Callable[..., Any], *args: Any) -> defer.Deferred:
                return threads.deferToThreadPool(self.clock, pool, f, *args)

            self._run_in_thread = run_in_pool

    def stop(self) -> defer.Deferred:
        """One last drain of what is queued, then the thread ends; what could not be
        written is logged as lost."""
        d = self._drain() if not self._in_flight else defer.succeed(None)

        def done(_: object) -> None:
            self._stopped = True
            if self._retry_call is not None and self._retry_call.active():
                self._retry_call.cancel()
            if self.queued:
                log.error(
                    "store: {count} queued writes not written at stop (database unreachable)",
                    count=self.queued,
                )
            if self._pool is not None:
                self._pool.callInThread(self.backend.close)
                self._pool.stop()

        return d.addBoth(done)

    # -- calls ---------------------------------------------------------------------------

    def call(self, method: str, *args: Any) -> defer.Deferred:
        assert self._run_in_thread is not None, "start() first"
        d = self._run_in_thread(self.backend.run, method, *args)
        d.addCallbacks(self._reached, self._unreachable)
        return d

    def _reached(self, result: Any) -> Any:
        if not self.up:
            self.up = True
            log.info("store: database reachable again; {count} queued writes", count=self.queued)
            self._schedule(0)
        return result

    def _unreachable(self, failure: Any) -> Any:
        if self.up:
            self.up = False
            log.error(
                "store: database unreachable ({error}); logins go on, writes are queued "
                "({count} queued)",
                error=_one_line(failure.value),
                count=self.queued,
                store_down=True,
            )
        return failure

    # -- writes --------------------------------------------------------------------------

    def write(self, kind: str, *args: Any) -> None:
        if self.queued >= self.queue_max:
            if self._queue:
                self._queue.popleft()
            else:
                self._dropped()
                return  # everything held is in flight: this one is the one to lose
            self._dropped()
        self._queue.append((kind, args))
        if self.up and not self._in_flight:
            self._schedule(0)

    def _dropped(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % DROP_LOG_EVERY == 0:
            log.error(
                "store: write queue full ({limit} held): dropped the oldest write "
                "({dropped} dropped so far)",
                limit=self.queue_max,
                dropped=self.dropped,
                store_dropped=self.dropped,
            )

    def _schedule(self, delay: float) -> None:
        if self._stopped or (self._retry_call is not None and self._retry_call.active()):
            return
        self._retry_call = self.clock.callLater(delay, self._drain)

    def _drain(self) -> defer.Deferred:
        if self._in_flight or not self._queue or self._run_in_thread is None:
            return defer.succeed(None)
        batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
        self._in_flight = batch

        def written(_: object) -> None:
            self._in_flight = []
            self.written += len(batch)
            if self._queue:
                self._schedule(0)

        def failed(_: object) -> None:
            self._in_flight = []
            self._queue.extendleft(reversed(batch))
            while len(self._queue) > self.queue_max:
                self._queue.popleft()
                self._dropped()
            self._schedule(self.retry)

        return self.call("apply", batch).addCallbacks(written, failed)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


__all__ = ["IStoreBackend", "IStoreWorker", "StoreWorker"]
