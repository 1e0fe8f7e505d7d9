"""Penalties per source: a source that misbehaves is refused for a while, the way OpenSSH's
``PerSourcePenalties`` works.

:class:`IPenaltyBook` is what the gateway asks (``refused_until``) and tells (``penalise``);
its sources are strings the caller has already grouped (``"192.0.2.7/32"``,
``"2001:db8::/64"``: :mod:`gateway.limits` does the grouping and the allow-list), so that a
store shared between several gateways can implement the same interface later.
:class:`MemoryPenaltyBook` keeps them in this process, on the reactor's clock.

How a penalty grows (OpenSSH's rules): the first one for a source runs ``duration`` seconds
from now; each further one adds its duration to the time that remains, up to ``maximum``.
The source is refused only once the remaining time exceeds ``minimum`` — so a single
dropped connection costs nothing, a run of them does — and from then on until the time has
run out. Nothing is ever stuck: an entry ends when its time does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gateway.events import PENALTY, emit

# What a source did to earn a penalty.
AUTHFAIL = "authfail"  # failed authentication and left without succeeding
NOAUTH = "noauth"  # left (or was dropped) before trying to authenticate
MALFORMED = "malformed"  # sent input that is not SSH at all (a bad identification line)
GRACE_EXCEEDED = "grace-exceeded"  # did not finish the version exchange or login in time
KINDS = (AUTHFAIL, NOAUTH, MALFORMED, GRACE_EXCEEDED)

_REASONS = {
    AUTHFAIL: "failed authentication",
    NOAUTH: "connections without attempting authentication",
    MALFORMED: "malformed input",
    GRACE_EXCEEDED: "exceeded the login grace time",
}


class IPenaltyBook(Interface):
    """Who is refused for a while, and why."""

    def penalise(source: str, kind: str) -> None:
        """``source`` did ``kind`` (one of :data:`KINDS`): add that kind's penalty."""

    def refused_until(source: str) -> float | None:
        """The clock time until which ``source`` is refused, or None if it is not."""


@dataclass(frozen=True)
class PenaltyRules:
    """Seconds each kind adds, and the bounds (OpenSSH's defaults where it has the kind)."""

    durations: Mapping[str, float]
    minimum: float = 15.0  # refused only while more than this remains
    maximum: float = 600.0  # a penalty never runs longer than this from now
    max_sources: int = 65536  # entries kept; past that, the soonest to end are dropped

    def __post_init__(self) -> None:
        unknown = set(self.durations) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown penalty kinds: {', '.join(sorted(unknown))}")
        if self.minimum < 0 or self.maximum < self.minimum or self.max_sources < 1:
            raise ValueError("need 0 <= minimum <= maximum and max_sources >= 1")


@dataclass
class _Penalty:
    expiry: float
    active: bool
    reason: str


@implementer(IPenaltyBook)
class MemoryPenaltyBook:
    """Penalties in a dict, timed by ``clock`` (the reactor, or ``task.Clock`` in tests)."""

    log = Logger()

    def __init__(self, rules: PenaltyRules, clock: IReactorTime) -> None:
        self.rules = rules  # may be replaced (a reloaded config): running penalties stay
        self.clock = clock
        self._penalties: dict[str, _Penalty] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        """How many sources have a penalty running (active or not yet)."""
        self._sweep(self.clock.seconds(), force=True)
        return len(self._penalties)

    def penalise(self, source: str, kind: str) -> None:
        seconds = self.rules.durations.get(kind, 0.0)
        if seconds <= 0:
            return
        now = self.clock.seconds()
        self._sweep(now)
        reason = _REASONS[kind]
        penalty = self._penalties.get(source)
        if penalty is None or penalty.expiry <= now:
            remaining = min(seconds, self.rules.maximum)
            penalty = _Penalty(now + remaining, remaining > self.rules.minimum, reason)
            self._penalties[source] = penalty
            self._overflow()
            if penalty.active:
                self._log_active(source, remaining, reason, "new")
            else:
                self.log.debug(
                    "penalty for {source}: {seconds:.0f}s for {reason} (not refused yet)",
                    source=source, seconds=remaining, reason=reason,
                )  # fmt: skip
            self._audit(source, kind, reason, seconds, remaining, penalty.active)
            return
        remaining = min(penalty.expiry - now + seconds, self.rules.maximum)
        penalty.expiry = now + remaining
        penalty.reason = reason
        if not penalty.active and remaining > self.rules.minimum:
            penalty.active = True
            self._log_active(source, remaining, reason, "activating")
        else:
            self.log.debug(
                "penalty for {source}: +{seconds:.0f}s for {reason}, {remaining:.0f}s remain",
                source=source, seconds=seconds, reason=reason, remaining=remaining,
            )  # fmt: skip
        self._audit(source, kind, reason, seconds, remaining, penalty.active)

    def _audit(
        self, source: str, kind: str, reason: str, seconds: float, remaining: float, refused: bool
    ) -> None:
        """Every penalty applied is an audit event (``refused``: the source is refused now)."""
        emit(
            self.log,
            PENALTY,
            "audit: penalty of {seconds:g}s for {source} ({reason}); {remaining:.0f}s remain, "
            "refused: {refused}",
            source=source,
            kind=kind,
            reason=reason,
            seconds=seconds,
            remaining=round(remaining, 3),
            refused=refused,
        )

    def refused_until(self, source: str) -> float | None:
        penalty = self._penalties.get(source)
        if penalty is None:
            return None
        if penalty.expiry <= self.clock.seconds():
            del self._penalties[source]
            return None
        return penalty.expiry if penalty.active else None

    def _log_active(self, source: str, remaining: float, reason: str, what: str) -> None:
        self.log.info(
            "penalty: {what} {remaining:.0f}s refusal of {source} for {reason}",
            what=what, remaining=remaining, source=source, reason=reason,
        )  # fmt: skip

    def _sweep(self, now: float, force: bool = False) -> None:
        """Forget penalties that have run out (at most once a minute: lookups expire their
        own entry, this only bounds what sources that never come back leave behind)."""
        if not force and now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        for source in [s for s, p in self._penalties.items() if p.expiry <= now]:
            del self._penalties[source]

    def _overflow(self) -> None:
        """Past ``max_sources``, drop the penalties that end soonest (OpenSSH's permissive
        overflow): memory stays bounded, and what is lost is what mattered least."""
        excess = len(self._penalties) - self.rules.max_sources
        if excess <= 0:
            return
        self._sweep(self.clock.seconds(), force=True)
        excess = len(self._penalties) - self.rules.max_sources
        if excess <= 0:
            return
        # Drop a tenth at once, so that a flood of new sources does not sort every time.
        drop = max(excess, self.rules.max_sources // 10)
        ending = sorted(self._penalties, key=lambda s: self._penalties[s].expiry)[:drop]
        for source in ending:
            del self._penalties[source]
        self.log.info(
            "penalty table full ({limit} sources): forgot the {count} ending soonest",
            limit=self.rules.max_sources, count=len(ending),
        )  # fmt: skip


__all__ = [
    "AUTHFAIL",
    "GRACE_EXCEEDED",
    "IPenaltyBook",
    "KINDS",
    "MALFORMED",
    "MemoryPenaltyBook",
    "NOAUTH",
    "PenaltyRules",
]
