"""SSH-2 algorithm policy: which names the gateway offers, hardened by default.

Algorithms are chosen by name from protocols.ssh2.algorithms' registry; the opt-in ones
exist so that an operator can list them, per config, for old clients — they are never
offered unless listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.ssh2.algorithms import SERVER, defaults, known
from protocols.ssh2.rekey import DEFAULT_REKEY_INTERVAL, DEFAULT_REKEY_LIMIT

DEFAULT_KEX = defaults(SERVER, "kex")
DEFAULT_HOST_KEY_ALGORITHMS = defaults(SERVER, "host_key_algorithms")
DEFAULT_CIPHERS = defaults(SERVER, "ciphers")
DEFAULT_MACS = defaults(SERVER, "macs")

# Everything an operator may list; the extra entries are the opt-in ones.
KNOWN_KEX = known(SERVER, "kex")
KNOWN_HOST_KEY_ALGORITHMS = known(SERVER, "host_key_algorithms")
KNOWN_CIPHERS = known(SERVER, "ciphers")
KNOWN_MACS = known(SERVER, "macs")


class UnknownAlgorithm(ValueError):
    pass


def _check(kind: str, names: tuple[str, ...], known: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise UnknownAlgorithm(f"ssh2 {kind}: the list is empty")
    for name in names:
        if name not in known:
            raise UnknownAlgorithm(
                f"ssh2 {kind}: unknown algorithm {name!r} (known: {', '.join(known)})"
            )
    return names


@dataclass(frozen=True)
class SSH2Settings:
    kex: tuple[str, ...] = DEFAULT_KEX
    host_key_algorithms: tuple[str, ...] = DEFAULT_HOST_KEY_ALGORITHMS
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    macs: tuple[str, ...] = DEFAULT_MACS
    compression: bool = False  # offer zlib as well as none
    # Session channels: the window we grant the client and the largest data packet we
    # accept. A large window keeps a bulk upload streaming; 32 KiB is what OpenSSH uses.
    channel_window: int = 2 * 1024 * 1024
    channel_max_packet: int = 32 * 1024
    # Our own key exchanges (protocols.ssh2.rekey): after this many bytes both ways, or
    # this many seconds, whichever comes first.
    rekey_limit: int = DEFAULT_REKEY_LIMIT
    rekey_interval: float = DEFAULT_REKEY_INTERVAL

    def __post_init__(self) -> None:
        _check("kex", self.kex, KNOWN_KEX)
        _check("host_key_algorithms", self.host_key_algorithms, KNOWN_HOST_KEY_ALGORITHMS)
        _check("ciphers", self.ciphers, KNOWN_CIPHERS)
        _check("macs", self.macs, KNOWN_MACS)
        if not 32 * 1024 <= self.channel_window <= 0x7FFFFFFF:
            raise ValueError("ssh2 channel_window: between 32768 and 2^31 - 1 bytes")
        if not 4096 <= self.channel_max_packet <= 256 * 1024:
            raise ValueError("ssh2 channel_max_packet: between 4096 and 262144 bytes")
        if not 64 * 1024 <= self.rekey_limit <= 4 << 30:
            raise ValueError("ssh2 rekey_limit: between 65536 bytes and 4 GiB")
        if not 10 <= self.rekey_interval <= 7 * 86400:
            raise ValueError("ssh2 rekey_interval: between 10 seconds and a week")
