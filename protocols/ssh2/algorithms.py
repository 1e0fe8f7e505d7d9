"""Every SSH-2 algorithm name the gateway knows, in one registry: which role may use it
(the gateway's server, its client towards devices, or both) and whether it is legacy
(offered only when the operator lists it). The server settings ([ssh2] defaults and the
names they accept), the client's offer to a target, the config checks and the probe all
read these tables.

Rows are in the client's order of preference; the server's defaults keep their own order
(chacha20-poly1305 first: no AES hardware assumed on the client side). Whatever a role
knows beyond its defaults is opt-in for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocols.ssh2.transport_base import supported_key_exchanges

SERVER = "server"
CLIENT = "client"
BOTH = frozenset((SERVER, CLIENT))
KINDS = ("kex", "host_key_algorithms", "ciphers", "macs")


@dataclass(frozen=True)
class Algorithm:
    name: str
    roles: frozenset[str]  # who may use it: SERVER, CLIENT or BOTH
    legacy: bool = False  # weak or obsolete: never offered unless listed
    key_type: bytes | None = None  # host key algorithms: the key type that signs with it


def _table(*rows: Algorithm) -> dict[str, Algorithm]:
    return {row.name: row for row in rows}


_CLIENT_ONLY = frozenset((CLIENT,))

REGISTRY: dict[str, dict[str, Algorithm]] = {
    "kex": _table(
        Algorithm("mlkem768x25519-sha256", BOTH),
        Algorithm("curve25519-sha256", BOTH),
        Algorithm("curve25519-sha256@libssh.org", BOTH),
        Algorithm("ecdh-sha2-nistp256", _CLIENT_ONLY),
        Algorithm("ecdh-sha2-nistp384", _CLIENT_ONLY),
        Algorithm("ecdh-sha2-nistp521", _CLIENT_ONLY),
        Algorithm("diffie-hellman-group-exchange-sha256", BOTH),
        Algorithm("diffie-hellman-group14-sha1", BOTH, legacy=True),
        Algorithm("diffie-hellman-group-exchange-sha1", BOTH, legacy=True),
        Algorithm("diffie-hellman-group1-sha1", _CLIENT_ONLY, legacy=True),
    ),
    "host_key_algorithms": _table(
        Algorithm("ssh-ed25519", BOTH, key_type=b"ssh-ed25519"),
        Algorithm("ecdsa-sha2-nistp256", _CLIENT_ONLY, key_type=b"ecdsa-sha2-nistp256"),
        Algorithm("ecdsa-sha2-nistp384", _CLIENT_ONLY, key_type=b"ecdsa-sha2-nistp384"),
        Algorithm("ecdsa-sha2-nistp521", _CLIENT_ONLY, key_type=b"ecdsa-sha2-nistp521"),
        Algorithm("rsa-sha2-512", BOTH, key_type=b"ssh-rsa"),
        Algorithm("rsa-sha2-256", BOTH, key_type=b"ssh-rsa"),
        Algorithm("ssh-rsa", BOTH, legacy=True, key_type=b"ssh-rsa"),
        # DSA (1024-bit, SHA-1): the only host key of HP iLO 2/3, old Cisco SG, Brocade.
        Algorithm("ssh-dss", _CLIENT_ONLY, legacy=True, key_type=b"ssh-dss"),
    ),
    # The AEAD ciphers and EtM MACs are protocols.ssh2.cipher's (Conch 26.10 has none).
    # For the client AES-GCM comes first: one cryptography call per packet, where
    # chacha20-poly1305 makes three and CTR needs a Python HMAC as well.
    "ciphers": _table(
        Algorithm("aes256-gcm@openssh.com", BOTH),
        Algorithm("aes128-gcm@openssh.com", BOTH),
        Algorithm("chacha20-poly1305@openssh.com", BOTH),
        Algorithm("aes256-ctr", BOTH),
        Algorithm("aes192-ctr", BOTH),
        Algorithm("aes128-ctr", BOTH),
        Algorithm("aes256-cbc", BOTH, legacy=True),
        Algorithm("aes192-cbc", BOTH, legacy=True),
        Algorithm("aes128-cbc", BOTH, legacy=True),
        Algorithm("3des-cbc", BOTH, legacy=True),
    ),
    # Encrypt-then-MAC first; the encrypt-and-MAC forms stay for peers older than EtM
    # (OpenSSH < 6.2, PuTTY < 0.68, Conch).
    "macs": _table(
        Algorithm("hmac-sha2-512-etm@openssh.com", BOTH),
        Algorithm("hmac-sha2-256-etm@openssh.com", BOTH),
        Algorithm("hmac-sha2-512", BOTH),
        Algorithm("hmac-sha2-256", BOTH),
        Algorithm("hmac-sha1-etm@openssh.com", BOTH, legacy=True),
        Algorithm("hmac-sha1", BOTH, legacy=True),
        # What devices of the 2000s have besides hmac-sha1 (Cisco IOS, old dropbear).
        Algorithm("hmac-sha1-96", _CLIENT_ONLY, legacy=True),
        Algorithm("hmac-md5", _CLIENT_ONLY, legacy=True),
        Algorithm("hmac-md5-96", _CLIENT_ONLY, legacy=True),
    ),
}

# What the gateway's server offers when [ssh2] does not say, in its order of preference.
SERVER_DEFAULTS: dict[str, tuple[str, ...]] = {
    "kex": ("mlkem768x25519-sha256", "curve25519-sha256", "diffie-hellman-group-exchange-sha256"),
    "host_key_algorithms": ("ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"),
    "ciphers": (
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-ctr",
        "aes192-ctr",
        "aes128-ctr",
    ),
    "macs": (
        "hmac-sha2-512-etm@openssh.com",
        "hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-512",
        "hmac-sha2-256",
    ),
}


def usable(role: str, kind: str) -> tuple[str, ...]:
    """Every ``kind`` name ``role`` may use, in the registry's order."""
    return tuple(name for name, row in REGISTRY[kind].items() if role in row.roles)


def defaults(role: str, kind: str) -> tuple[str, ...]:
    """What ``role`` offers when nothing is listed: the server's own order, or every
    non-legacy name the client may use."""
    if role == SERVER:
        return SERVER_DEFAULTS[kind]
    return tuple(name for name in usable(role, kind) if not REGISTRY[kind][name].legacy)


def known(role: str, kind: str) -> tuple[str, ...]:
    """Every name ``role`` accepts in a list: its defaults, then its opt-in names."""
    first = defaults(role, kind)
    return first + tuple(name for name in usable(role, kind) if name not in first)


def is_legacy(kind: str, name: str) -> bool:
    row = REGISTRY[kind].get(name)
    return row is not None and row.legacy


for _kind, _names in SERVER_DEFAULTS.items():  # a typo here must not reach a KEXINIT
    assert all(SERVER in REGISTRY[_kind][n].roles and not REGISTRY[_kind][n].legacy for n in _names)

# Host-key signature algorithm -> the key type that signs with it.
HOST_KEY_TYPES: dict[str, bytes] = {
    name: row.key_type for name, row in REGISTRY["host_key_algorithms"].items() if row.key_type
}

# The client's tables: name -> legacy?, in its order of preference.
CLIENT_KEX, CLIENT_HOST_KEY_ALGORITHMS, CLIENT_CIPHERS, CLIENT_MACS = (
    {name: REGISTRY[kind][name].legacy for name in known(CLIENT, kind)} for kind in KINDS
)

# Group exchange: the smallest group the client accepts from a server, and the largest it
# would compute with (8192-bit modular exponentiation is already slow in Python).
DH_GEX_MIN_BITS = 2048
DH_GEX_MIN_BITS_LEGACY = 1024
DH_GEX_MAX_BITS = 8192


class AlgorithmError(ValueError):
    """A target lists an algorithm name this client does not know."""


def _choose(kind: str, wanted: tuple[str, ...]) -> list[bytes]:
    names = known(CLIENT, kind)
    if not wanted:
        return [name.encode() for name in defaults(CLIENT, kind)]
    for name in wanted:
        if name not in names:
            raise AlgorithmError(
                f"ssh2 target {kind}: unknown algorithm {name!r} (known: {', '.join(names)})"
            )
    return [name.encode() for name in wanted]


def client_offer(
    kex: Sequence[str], host_key_algorithms: Sequence[str], ciphers: Sequence[str], macs: Sequence[str]
) -> dict[str, list[bytes]]:
    """The client's algorithm lists for a target's lists (empty = the modern defaults);
    raises AlgorithmError for unknown names (the config loader calls this at start-up)."""
    # Only what this build can run (ML-KEM needs cryptography >= 48).
    supported = supported_key_exchanges()
    return {
        "kex": [name for name in _choose("kex", tuple(kex)) if name in supported],
        "host_key": _choose("host_key_algorithms", tuple(host_key_algorithms)),
        "cipher": _choose("ciphers", tuple(ciphers)),
        "mac": _choose("macs", tuple(macs)),
    }


def dh_min_bits(kex: Sequence[bytes]) -> int:
    """The smallest group-exchange group the client accepts: 1024 bits only when a legacy
    key exchange is offered (a device that old has nothing bigger)."""
    legacy = any(is_legacy("kex", name.decode()) for name in kex)
    return DH_GEX_MIN_BITS_LEGACY if legacy else DH_GEX_MIN_BITS
