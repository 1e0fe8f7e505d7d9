"""The session model's value types: what a client asks for (:class:`SessionRequest`,
:class:`PtyRequest`, :class:`WindowSize`), where the connection it came over runs between
(:class:`ConnectionAddresses`) and how the program ended (:class:`ExitInfo`).

Plain dataclasses with no Twisted or zope import, so that the SSH-1 sans-I/O core can use
them; the interfaces that carry them are in :mod:`protocols.session`, which re-exports
these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WindowSize:
    rows: int
    cols: int
    xpixel: int = 0
    ypixel: int = 0


@dataclass(frozen=True)
class PtyRequest:
    term: str
    size: WindowSize
    # (opcode, value) pairs in SSH-2 numbering; unknown opcodes already dropped.
    modes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class ConnectionAddresses:
    """The two ends of the client's TCP connection, as the gateway sees them (behind a
    PROXY-protocol balancer: the client's own address). What sshd puts in ``SSH_CLIENT``
    and ``SSH_CONNECTION``."""

    client_host: str
    client_port: int
    server_host: str
    server_port: int

    @classmethod
    def of(cls, peer: object, host: object) -> ConnectionAddresses | None:
        """From a transport's ``getPeer()`` and ``getHost()`` (Twisted IPv4Address or
        IPv6Address); None for anything without a host and port (a UNIX socket)."""
        ends = []
        for address in (peer, host):
            name, port = getattr(address, "host", None), getattr(address, "port", None)
            if not isinstance(name, str) or not isinstance(port, int) or not name:
                return None
            ends.append((_unmapped(name), port))
        (client_host, client_port), (server_host, server_port) = ends
        return cls(client_host, client_port, server_host, server_port)


def _unmapped(host: str) -> str:
    # An IPv4 client of an IPv6 listener shows as ::ffff:a.b.c.d; sshd reports it as
    # a.b.c.d (ipv64_normalise_mapped), and so do we.
    prefix = "::ffff:"
    if host.lower().startswith(prefix) and host.count(".") == 3:
        return host[len(prefix) :]
    return host


@dataclass
class SessionRequest:
    """What the client asked for before the program starts."""

    command: bytes | None = None  # None: the user's login shell
    pty: PtyRequest | None = None
    env: dict[str, str] = field(default_factory=dict)  # already filtered by the front end's caller
    # The connection the request came over; None where there is none to tell (tests, tools).
    addresses: ConnectionAddresses | None = None
    # An SSH-2 "subsystem" request's name (then ``command`` is None): the Router decides
    # per target what serves it (gateway.routing).
    subsystem: str | None = None


# The subsystems a session may ask for; the front end refuses any other name at once.
SFTP_SUBSYSTEM = "sftp"
KNOWN_SUBSYSTEMS = frozenset({SFTP_SUBSYSTEM})


@dataclass(frozen=True)
class ExitInfo:
    """How the program ended. Exactly one of ``status`` and ``signal`` is set."""

    status: int | None = None
    signal: str | None = None  # SSH-2 signal name without "SIG", e.g. "TERM"
    core_dumped: bool = False
    message: str = ""

    def as_status(self) -> int:
        """The single number SSH-1 (and shells) report: 128 + signal number for a signal."""
        if self.status is not None:
            return self.status
        import signal as _signal

        number = getattr(_signal, "SIG" + (self.signal or ""), None)
        return 128 + int(number) if number is not None else 255
