"""Per-source penalties shared by every instance: :class:`SharedPenaltyBook` is an
:class:`~gateway.penalties.IPenaltyBook` over this instance's own
:class:`~gateway.penalties.MemoryPenaltyBook` and the ``penalties`` table.

A penalty given here is decided in memory (at once, as without a store) and its end is
queued to the table; the penalties other instances gave are read back every ``cache_ttl``
seconds (gateway.store.StoreService refreshes them), so a source refused by one instance
is refused by all within that time. With the database down each instance goes on with what
it knows: its own penalties, and the others' as last read.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from gateway.penalties import IPenaltyBook, MemoryPenaltyBook, PenaltyRules
from gateway.store.worker import IStoreWorker


@implementer(IPenaltyBook)
class SharedPenaltyBook:
    """This instance's penalties in memory, everybody's in the database."""

    def __init__(self, rules: PenaltyRules, clock: IReactorTime, store: IStoreWorker) -> None:
        self.local = MemoryPenaltyBook(rules, clock)
        self.clock = clock
        self.store = store
        self.shared: dict[str, float] = {}  # source -> end, active ones, as last read

    @property
    def rules(self) -> PenaltyRules:
        return self.local.rules

    @rules.setter
    def rules(self, rules: PenaltyRules) -> None:
        self.local.rules = rules

    def __len__(self) -> int:
        return len(self.local)

    def penalise(self, source: str, kind: str) -> None:
        self.local.penalise(source, kind)
        penalty = self.local._penalties.get(source)
        if penalty is not None:
            self.store.write("penalty", source, penalty.expiry, penalty.active, penalty.reason)
            if penalty.active:
                self.shared[source] = max(self.shared.get(source, 0.0), penalty.expiry)

    def refused_until(self, source: str) -> float | None:
        mine = self.local.refused_until(source)
        theirs = self.shared.get(source)
        if theirs is not None and theirs <= self.clock.seconds():
            del self.shared[source]
            theirs = None
        if mine is None or theirs is None:
            return mine if theirs is None else theirs
        return max(mine, theirs)

    def refresh(self) -> defer.Deferred:
        """Read the active penalties of every instance (kept as they were when the
        database cannot be read)."""

        def read(active: dict[str, float]) -> None:
            self.shared = active

        d: Any = self.store.call("active_penalties", self.clock.seconds())
        return d.addCallbacks(read, lambda _: None)


__all__ = ["SharedPenaltyBook"]
