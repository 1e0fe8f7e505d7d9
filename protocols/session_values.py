"""The session model's value types: what a client asks for (:class:`SessionRequest`,
:class:`PtyRequest`, :class:`WindowSize`) and how the program ended (:class:`ExitInfo`).

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


@dataclass
class SessionRequest:
    """What the client asked for before the program starts."""

    command: bytes | None = None  # None: the user's login shell
    pty: PtyRequest | None = None
    env: dict[str, str] = field(default_factory=dict)  # already filtered by the front end's caller


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
