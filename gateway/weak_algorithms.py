"""What counts as a weak (legacy) algorithm on a leg, in one table, and the ``weak_leg``
gateway events that report each use of one.

A leg is a client's connection to the gateway (``client``) or the gateway's connection to
a device (``upstream``). Its negotiated algorithms are given in the flow records' names
(protocols.flow ``negotiated``: ``cipher`` for SSH-1; ``kex``, ``host_key_algorithm``,
``cipher_c2s``/``cipher_s2c``, ``mac_c2s``/``mac_s2c`` for SSH-2). Every entry of
:data:`WEAK` that a leg uses is one event, so that an auditor can list every downgrade with
``sshgateway audit --event weak_leg``. The README's "Audit trail" section shows this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from gateway.events import WEAK_LEG, emit

log = Logger()

# what -> algorithm -> why it is weak. "what" is the kind of choice (protocol, cipher, kex,
# host_key_algorithm, mac), as the events name it.
_SHA1_SIG = "SHA-1 signatures (chosen-prefix collisions)"
_CBC = "CBC mode (plaintext-recovery attacks on SSH's CBC, no encrypt-then-MAC)"
_64BIT = "64-bit block cipher (birthday bound: Sweet32)"
WEAK: dict[str, dict[str, str]] = {
    "protocol": {
        "ssh1": "SSH-1: CRC-32 integrity, MD5 session id, RSA PKCS#1 v1.5 key transport",
        "telnet": "telnet: no encryption, passwords and data in clear",
    },
    "cipher": {
        # SSH-1 names
        "none": "no encryption",
        "des": "single DES (56-bit key)",
        "3des": "3DES, " + _64BIT,
        "blowfish": "Blowfish, " + _64BIT,
        # SSH-2 names
        "3des-cbc": "3DES, " + _64BIT + ", " + _CBC,
        "blowfish-cbc": "Blowfish, " + _64BIT + ", " + _CBC,
        "cast128-cbc": "CAST-128, " + _64BIT + ", " + _CBC,
        "des-cbc": "single DES (56-bit key), " + _CBC,
        "aes128-cbc": _CBC,
        "aes192-cbc": _CBC,
        "aes256-cbc": _CBC,
        "rijndael-cbc@lysator.liu.se": _CBC,
        "arcfour": "RC4 (biased keystream)",
        "arcfour128": "RC4 (biased keystream)",
        "arcfour256": "RC4 (biased keystream)",
    },
    "kex": {
        "diffie-hellman-group1-sha1": "1024-bit group (Logjam), SHA-1 exchange hash",
        "diffie-hellman-group14-sha1": "SHA-1 exchange hash",
        "diffie-hellman-group-exchange-sha1": "SHA-1 exchange hash",
    },
    "host_key_algorithm": {
        "ssh-rsa": "RSA with " + _SHA1_SIG,
        "ssh-dss": "DSA (1024-bit) with " + _SHA1_SIG,
    },
    "mac": {
        "hmac-sha1": "HMAC-SHA1, encrypt-and-MAC",
        "hmac-sha1-etm@openssh.com": "HMAC-SHA1",
        "hmac-sha1-96": "HMAC-SHA1 truncated to 96 bits",
        "hmac-md5": "HMAC-MD5",
        "hmac-md5-etm@openssh.com": "HMAC-MD5",
        "hmac-md5-96": "HMAC-MD5 truncated to 96 bits",
    },
}

# Negotiated keys (flow-record names) -> the kind of choice they are.
_KEYS = (
    ("cipher", "cipher"),
    ("cipher_c2s", "cipher"),
    ("cipher_s2c", "cipher"),
    ("kex", "kex"),
    ("host_key_algorithm", "host_key_algorithm"),
    ("mac_c2s", "mac"),
    ("mac_s2c", "mac"),
)


@dataclass(frozen=True)
class WeakChoice:
    what: str  # "protocol", "cipher", "kex", "host_key_algorithm", "mac"
    algorithm: str
    why: str


def why_weak(what: str, algorithm: str) -> str | None:
    """Why ``algorithm`` (a ``what``) is weak, or None. Any SSH-2 ``*-cbc`` cipher is."""
    why = WEAK.get(what, {}).get(algorithm)
    if why is None and what == "cipher" and algorithm.endswith("-cbc"):
        return _CBC
    return why


def weak_choices(protocol: str, negotiated: Mapping[str, Any]) -> list[WeakChoice]:
    """The weak choices of one leg of ``protocol`` ("ssh1", "ssh2", "telnet"), each once
    (a cipher used both ways is one choice)."""
    found: list[WeakChoice] = []
    seen: set[tuple[str, str]] = set()

    def add(what: str, algorithm: str) -> None:
        why = why_weak(what, algorithm)
        if why is not None and (what, algorithm) not in seen:
            seen.add((what, algorithm))
            found.append(WeakChoice(what, algorithm, why))

    if protocol:
        add("protocol", protocol)
    for key, what in _KEYS:
        value = negotiated.get(key)
        if isinstance(value, str) and value:
            add(what, value)
    return found


def report_weak_leg(
    leg: str,
    protocol: str,
    negotiated: Mapping[str, Any],
    *,
    user: str,
    target: str | None,
    session: str | None = None,
    flow_id: str | None = None,
) -> list[WeakChoice]:
    """Emit one ``weak_leg`` event per weak choice of a leg (``leg``: "client" or
    "upstream") a session of ``user`` to ``target`` uses; returns them."""
    choices = weak_choices(protocol, negotiated)
    for choice in choices:
        emit(
            log,
            WEAK_LEG,
            "weak leg: {user} -> {target}: {leg} leg ({protocol}) uses {what} {algorithm}: {why}",
            leg=leg,
            protocol=protocol,
            what=choice.what,
            algorithm=choice.algorithm,
            why=choice.why,
            user=user,
            target=target,
            session=session,
            flow_id=flow_id,
        )
    return choices


def weak_table_markdown() -> str:
    """The table above as Markdown, for the README (tests/test_readme.py keeps them equal)."""
    lines = ["| what | algorithm | why it is weak |", "| --- | --- | --- |"]
    for what, algorithms in WEAK.items():
        for algorithm, why in algorithms.items():
            lines.append(f"| `{what}` | `{algorithm}` | {why} |")
    lines.append(f"| `cipher` | any other `*-cbc` | {_CBC} |")
    return "\n".join(lines)


__all__ = [
    "WEAK",
    "WeakChoice",
    "report_weak_leg",
    "weak_choices",
    "weak_table_markdown",
    "why_weak",
]
