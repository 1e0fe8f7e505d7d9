"""Limits on unauthenticated connections, decided when a connection is accepted — before
the gateway sends its version line, so before any key exchange work (SSH-1 costs two RSA
decryptions per connection, SSH-2 a Diffie-Hellman or ML-KEM operation).

This module owns three decisions, all taken by :class:`ConnectionLimits.admit`:

- **penalties** (:mod:`gateway.penalties`): a source refused for a while after it failed to
  authenticate, left without trying, sent something that is not SSH, or ran out of time.
  ``closed`` says which of these a connection did, and the book adds that penalty.
- **per-source startups**: at most ``per_source_max_startups`` unauthenticated connections
  from one source at once (OpenSSH's ``PerSourceMaxStartups``).
- **max_startups** ``start:rate:full`` (OpenSSH's ``MaxStartups``): with ``start`` or more
  connections unauthenticated, a new one is refused with probability ``rate``%, rising
  linearly to 100% at ``full``.

A *source* is an address grouped by a prefix (``per_source_netblock``, ``32:128`` by
default: every address on its own), written as a network (``192.0.2.7/32``). Addresses in
``penalty_exempt`` are never penalised. A connection counts as a startup from accept until
its record says it authenticated (both front ends set ``auth_result``), or until it closes.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.host_patterns import peer_address
from gateway.penalties import (
    AUTHFAIL,
    GRACE_EXCEEDED,
    MALFORMED,
    NOAUTH,
    IPenaltyBook,
    PenaltyRules,
)
from protocols.record import ConnectionRecord

log = Logger()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Descriptors kept out of the unauthenticated connections' reach: listeners, log and
# flow files, the thread pool's pipes, host keys being read, upstream sockets...
RESERVED_DESCRIPTORS = 64


@dataclass(frozen=True)
class MaxStartups:
    """OpenSSH's ``MaxStartups start:rate:full``; a single number N means N:100:N."""

    start: int
    rate: int
    full: int

    def __post_init__(self) -> None:
        if not (1 <= self.start <= self.full and 0 <= self.rate <= 100):
            raise ValueError("need 1 <= start <= full and a rate from 0 to 100")

    @classmethod
    def parse(cls, text: str) -> MaxStartups:
        parts = text.split(":")
        if len(parts) not in (1, 3) or not all(p.isdigit() for p in parts):
            raise ValueError(f'{text!r} is not "start:rate:full" or a single number')
        if len(parts) == 1:
            return cls(int(parts[0]), 100, int(parts[0]))
        start, rate, full = map(int, parts)
        if not 1 <= start <= full:
            raise ValueError(f"{text!r}: need 1 <= start <= full")
        if rate > 100:
            raise ValueError(f"{text!r}: rate is a percentage, at most 100")
        return cls(start, rate, full)

    def __str__(self) -> str:
        return f"{self.start}:{self.rate}:{self.full}"

    def drop_percent(self, pending: int) -> float:
        """The chance (in %) that a new connection is refused while ``pending`` others are
        unauthenticated."""
        if pending < self.start:
            return 0.0
        if pending >= self.full or self.rate == 100:
            return 100.0
        return self.rate + (100 - self.rate) * (pending - self.start) / (self.full - self.start)

    def drops(self, pending: int, rng: random.Random) -> bool:
        percent = self.drop_percent(pending)
        return percent >= 100.0 or (percent > 0.0 and rng.random() * 100.0 < percent)

    def capped(self, most: int) -> MaxStartups:
        """The same curve, with ``full`` no higher than ``most``."""
        if self.full <= most:
            return self
        full = max(1, most)
        return MaxStartups(min(self.start, full), self.rate, full)


def descriptor_cap(soft_limit: int) -> int:
    """The most unauthenticated connections a process with ``soft_limit`` descriptors can
    hold and still have room for its sessions (which take more than one each: a local
    program's pty and pipes, an upstream socket): half of what is left after the reserve."""
    return max(1, (soft_limit - RESERVED_DESCRIPTORS) // 2)


@dataclass(frozen=True)
class Netblock:
    """How many leading bits of an address make one source (``per_source_netblock``)."""

    v4: int = 32
    v6: int = 128

    @classmethod
    def parse(cls, text: str) -> Netblock:
        parts = text.split(":")
        if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
            raise ValueError(f'{text!r} is not "IPV4_BITS" or "IPV4_BITS:IPV6_BITS"')
        v4 = int(parts[0])
        v6 = int(parts[1]) if len(parts) == 2 else cls.v6
        if not 0 <= v4 <= 32 or not 0 <= v6 <= 128:
            raise ValueError(f"{text!r}: IPv4 bits go from 0 to 32, IPv6 bits from 0 to 128")
        return cls(v4, v6)

    def __str__(self) -> str:
        return f"{self.v4}:{self.v6}"

    def of(self, address: Address) -> str:
        bits = self.v4 if isinstance(address, ipaddress.IPv4Address) else self.v6
        return str(ipaddress.ip_network((address, bits), strict=False))


def parse_network(text: str) -> Network:
    """An allow-list entry: an address or a network in CIDR form (host bits must be 0)."""
    return ipaddress.ip_network(text, strict=True)


def source_of(peer: str, netblock: Netblock) -> tuple[str, Address | None]:
    """The source a peer (``host:port`` as in the connection record) counts as, and its
    address (None for peers without one, which all count as one source: their string)."""
    address = peer_address(peer)
    if address is None:
        return peer or "unknown", None
    return netblock.of(address), address


@dataclass(frozen=True)
class LimitsConfig:
    """The ``[limits]`` table (gateway.config reads it; this module applies it)."""

    max_startups: MaxStartups = MaxStartups(10, 30, 100)
    per_source_max_startups: int | None = None
    per_source_netblock: Netblock = Netblock()
    # None: no penalties at all.
    penalties: PenaltyRules | None = field(
        default_factory=lambda: PenaltyRules(
            {AUTHFAIL: 5.0, NOAUTH: 1.0, MALFORMED: 10.0, GRACE_EXCEEDED: 10.0}
        )
    )
    penalty_exempt: tuple[Network, ...] = ()


@dataclass(eq=False)
class Startup:
    """One accepted connection that has not authenticated yet."""

    record: ConnectionRecord
    source: str
    exempt: bool
    accepted: float
    counted: bool = True


class Refused(Exception):
    """A connection refused at accept: ``reason`` for the log, ``line`` for the client."""

    def __init__(self, reason: str, line: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


# What a refused client reads before the connection closes: one plain line, before any
# SSH version line (RFC 4253 section 4.2 lets a server send other lines first; OpenSSH
# shows it with -v, PuTTY as the reason the server closed).
BUSY_LINE = b"Too many unauthenticated connections; try again later.\r\n"
PENALTY_LINE = b"Refused for a while after failed or aborted logins; try again later.\r\n"


class ConnectionLimits:
    """Counts the unauthenticated connections (over every listener and both protocols)
    and decides, at accept, which new ones to refuse."""

    def __init__(
        self,
        config: LimitsConfig,
        clock: IReactorTime,
        penalties: IPenaltyBook | None,
        grace_time: float,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.max_startups = config.max_startups
        self.clock = clock
        self.penalties = penalties if config.penalties is not None else None
        self.grace_time = grace_time
        self.rng = rng if rng is not None else random.SystemRandom()
        self._pending: set[Startup] = set()
        self._per_source: dict[str, int] = {}
        self._soft_limit: int | None = None

    def reconfigure(self, config: LimitsConfig, penalties: IPenaltyBook | None) -> None:
        """New settings (a reloaded config) for new connections: the connections counted
        now stay counted. ``penalties`` is the book to use from now on (keep the old one
        to keep the penalties running)."""
        self.config = config
        self.max_startups = config.max_startups
        self.penalties = penalties if config.penalties is not None else None
        if self._soft_limit is not None:
            self.fit_descriptors(self._soft_limit)

    @property
    def pending(self) -> int:
        """Unauthenticated connections counted now."""
        return len(self._pending)

    def pending_from(self, source: str) -> int:
        return self._per_source.get(source, 0)

    def fit_descriptors(self, soft_limit: int) -> None:
        """Keep ``full`` below what ``soft_limit`` descriptors allow (logged if lowered)."""
        self._soft_limit = soft_limit
        capped = self.config.max_startups.capped(descriptor_cap(soft_limit))
        if capped != self.max_startups:
            log.warn(
                "max_startups {configured} needs more file descriptors than the limit of "
                "{limit} leaves: using {capped}",
                configured=str(self.config.max_startups),
                limit=soft_limit,
                capped=str(capped),
            )
        self.max_startups = capped

    def exempt(self, address: Address | None) -> bool:
        """Never penalised: listed in ``penalty_exempt``, or no IP address at all (a UNIX
        socket's peers cannot be told apart, and are local)."""
        return address is None or any(
            address.version == net.version and address in net for net in self.config.penalty_exempt
        )

    def admit(self, record: ConnectionRecord) -> Startup:
        """Count a new connection, or raise :class:`Refused`."""
        source, address = source_of(record.peer, self.config.per_source_netblock)
        exempt = self.exempt(address)
        if self.penalties is not None and not exempt:
            until = self.penalties.refused_until(source)
            if until is not None:
                left = until - self.clock.seconds()
                raise Refused(f"penalty: {source} refused for {left:.0f}s more", PENALTY_LINE)
        limit = self.config.per_source_max_startups
        if self.pending >= self.max_startups.start or (
            limit is not None and self.pending_from(source) >= limit
        ):
            self._forget_authenticated()
        if limit is not None and self.pending_from(source) >= limit:
            raise Refused(
                f"per_source_max_startups: {source} has {limit} unauthenticated connections",
                BUSY_LINE,
            )
        if self.max_startups.drops(self.pending, self.rng):
            raise Refused(
                f"max_startups {self.max_startups}: {self.pending} unauthenticated connections",
                BUSY_LINE,
            )
        startup = Startup(record, source, exempt, self.clock.seconds())
        self._pending.add(startup)
        self._per_source[source] = self.pending_from(source) + 1
        return startup

    def authenticated(self, startup: Startup) -> None:
        """The connection logged in: it no longer counts."""
        if not startup.counted:
            return
        startup.counted = False
        self._pending.discard(startup)
        left = self._per_source[startup.source] - 1
        if left:
            self._per_source[startup.source] = left
        else:
            del self._per_source[startup.source]

    def closed(self, startup: Startup, kind: str | None = None) -> None:
        """The connection is gone: it no longer counts, and unless it authenticated its
        source earns a penalty — ``kind`` if the caller knows it (a malformed version line,
        a version timeout), else what the record says it did."""
        self.authenticated(startup)
        if startup.record.auth_result == "success" or self.penalties is None or startup.exempt:
            return
        if kind is None:
            if startup.record.auth_result == "failure":
                kind = AUTHFAIL
            elif self.clock.seconds() - startup.accepted >= self.grace_time:
                kind = GRACE_EXCEEDED
            else:
                kind = NOAUTH
        self.penalties.penalise(startup.source, kind)

    def _forget_authenticated(self) -> None:
        """Stop counting connections whose login has succeeded since we last looked (the
        dispatcher notices most of them at their next bytes; this makes a decision at the
        limit exact). At most ``full`` connections are counted, so this stays small."""
        for startup in [s for s in self._pending if s.record.auth_result == "success"]:
            self.authenticated(startup)


def networks(texts: Iterable[str]) -> tuple[Network, ...]:
    return tuple(parse_network(t) for t in texts)
