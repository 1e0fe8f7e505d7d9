"""Bounded CPU-heavy work (password hashing) shared fairly between the sources asking for
it, so that a flood of guesses from one address cannot make everyone else wait.

:class:`FairSlots` runs at most ``slots`` jobs at once and at most ``per_source`` of them
for one source. A job that cannot start waits in its source's queue; when a slot frees,
the sources with waiting jobs take turns (round robin), not first come first served. A
source that already has ``queue_limit`` jobs waiting has further ones refused at once
(:class:`SourceBusy`): its backlog, and the time its own attempts wait, stay bounded.

:func:`source_of` says which source a peer (``host:port``) counts as.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.host_patterns import peer_address

# Peers without an address (tests, UNIX sockets) all count as this one source.
UNKNOWN_SOURCE = "unknown"

# An IPv6 user has a whole /64 to pick addresses from: count it as one source.
IPV6_SOURCE_PREFIX = 64


class SourceBusy(Exception):
    """The source already has its share of jobs running and ``queue_limit`` waiting.

    ``first`` is true for the first refusal since the source's queue was last empty, so
    that callers log one line per burst rather than one per refused job.
    """

    def __init__(self, source: str, first: bool) -> None:
        super().__init__(f"{source}: too many jobs waiting")
        self.source = source
        self.first = first


def source_of(peer: str) -> str:
    """The source a peer counts as: its IPv4 address (an IPv4-mapped IPv6 address counts
    as the IPv4 one), its IPv6 /64, or the peer string itself when it is no address."""
    address = peer_address(peer)
    if address is None:
        return peer or UNKNOWN_SOURCE
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False))
    return str(address)


class FairSlots:
    """``run(source, f, *args)`` runs ``f`` (which may return a Deferred) when a slot is
    free for ``source``; the Deferred it returns fires with ``f``'s result, or fails at
    once with :class:`SourceBusy`."""

    def __init__(self, slots: int, per_source: int, queue_limit: int) -> None:
        if slots < 1 or per_source < 1 or queue_limit < 0:
            raise ValueError("slots and per_source must be at least 1, queue_limit at least 0")
        self.slots = slots
        self.per_source = min(per_source, slots)
        self.queue_limit = queue_limit
        self.free = slots
        self._running: dict[str, int] = {}
        # Sources with waiting jobs, in turn order: the one served last moves to the end.
        self._waiting: OrderedDict[str, deque[tuple[defer.Deferred, Callable, tuple]]] = (
            OrderedDict()
        )
        self._refusing: set[str] = set()

    def running(self, source: str) -> int:
        return self._running.get(source, 0)

    def waiting(self, source: str) -> int:
        queue = self._waiting.get(source)
        return len(queue) if queue is not None else 0

    @property
    def sources(self) -> int:
        """How many sources have jobs running or waiting (what this object holds on to)."""
        return len(self._running.keys() | self._waiting.keys())

    def run(self, source: str, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self.free > 0 and self.running(source) < self.per_source and not self.waiting(source):
            return self._start(source, f, args)
        queue = self._waiting.get(source)
        if queue is None:
            queue = self._waiting[source] = deque()
        if len(queue) >= self.queue_limit:
            if not queue:
                del self._waiting[source]
            first = source not in self._refusing
            self._refusing.add(source)
            return defer.fail(SourceBusy(source, first))
        waiter: defer.Deferred = defer.Deferred()
        queue.append((waiter, f, args))
        return waiter

    def _start(self, source: str, f: Callable[..., Any], args: tuple) -> defer.Deferred:
        self.free -= 1
        self._running[source] = self.running(source) + 1
        d = defer.maybeDeferred(f, *args)
        d.addBoth(self._release, source)
        return d

    def _release(self, result: Any, source: str) -> Any:
        left = self._running[source] - 1
        if left:
            self._running[source] = left
        else:
            del self._running[source]
            if source not in self._waiting:
                self._refusing.discard(source)  # its burst is over
        self.free += 1
        self._dispatch()
        return result

    def _dispatch(self) -> None:
        while self.free > 0:
            source = next((s for s in self._waiting if self.running(s) < self.per_source), None)
            if source is None:
                return  # nobody waiting, or every waiting source holds its share
            queue = self._waiting[source]
            waiter, f, args = queue.popleft()
            if queue:
                self._waiting.move_to_end(source)
            else:
                del self._waiting[source]
                self._refusing.discard(source)
            self._start(source, f, args).addBoth(_fire, waiter)


def _fire(result: Any, waiter: defer.Deferred) -> None:
    if not waiter.called:  # a caller may have cancelled it meanwhile
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)
