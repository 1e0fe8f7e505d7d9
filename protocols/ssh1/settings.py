"""SSH-1 server policy: ciphers offered, server-key size and lifetime, what the
preparatory phase may grant. Weak choices (``des``, ``none``) are offered only when the
operator lists them. Plain data: no Twisted, no gateway imports.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CIPHERS = ("3des", "blowfish")
KNOWN_CIPHERS = ("3des", "blowfish", "des", "none")

# The server key must differ from the host key by at least this many bits: the
# double encryption of the session key needs the inner result to fit the outer modulus.
KEY_SIZE_GAP = 128


@dataclass(frozen=True)
class SSH1Settings:
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    server_key_bits: int = 1024
    server_key_lifetime: float = 3600.0  # seconds; regenerated only if it was used
    allow_x11_forwarding: bool = False
    allow_agent_forwarding: bool = False
    # Local port forwarding (client -L) destinations as "host:port"; empty refuses all.
    permit_open: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.ciphers:
            raise ValueError("ssh1 ciphers: the list is empty")
        for name in self.ciphers:
            if name not in KNOWN_CIPHERS:
                raise ValueError(
                    f"ssh1 ciphers: unknown cipher {name!r} (known: {', '.join(KNOWN_CIPHERS)})"
                )
        if not 512 <= self.server_key_bits <= 4096:
            raise ValueError("ssh1 server_key_bits must be between 512 and 4096")

    def check_host_key_bits(self, host_key_bits: int) -> None:
        """Refuse to start when the two keys are too close in size (either order)."""
        if abs(host_key_bits - self.server_key_bits) < KEY_SIZE_GAP:
            raise ValueError(
                f"ssh1: host key ({host_key_bits} bits) and server key "
                f"({self.server_key_bits} bits) must differ by at least {KEY_SIZE_GAP} bits"
            )
