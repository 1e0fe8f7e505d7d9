"""The SSH-2 client's algorithm policy: which names the gateway's client may offer a
device, modern ones by default and legacy ones only when the target lists them.

Tables by name; order is preference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from twisted.conch.ssh import _kex
from zope.interface import implementer

# name -> legacy? Order is preference. Legacy names are offered only when listed.
KEX: dict[str, bool] = {
    "mlkem768x25519-sha256": False,
    "curve25519-sha256": False,
    "curve25519-sha256@libssh.org": False,
    "ecdh-sha2-nistp256": False,
    "ecdh-sha2-nistp384": False,
    "ecdh-sha2-nistp521": False,
    "diffie-hellman-group-exchange-sha256": False,
    "diffie-hellman-group14-sha1": True,
    "diffie-hellman-group-exchange-sha1": True,
    "diffie-hellman-group1-sha1": True,
}
HOST_KEY_ALGORITHMS: dict[str, bool] = {
    "ssh-ed25519": False,
    "ecdsa-sha2-nistp256": False,
    "ecdsa-sha2-nistp384": False,
    "ecdsa-sha2-nistp521": False,
    "rsa-sha2-512": False,
    "rsa-sha2-256": False,
    "ssh-rsa": True,
}
# The AEAD ciphers and EtM MACs are protocols.ssh2.cipher's (Conch 26.10 has none).
# AES-GCM comes first: one cryptography call per packet, where chacha20-poly1305 makes
# three and CTR needs a Python HMAC as well.
CIPHERS: dict[str, bool] = {
    "aes256-gcm@openssh.com": False,
    "aes128-gcm@openssh.com": False,
    "chacha20-poly1305@openssh.com": False,
    "aes256-ctr": False,
    "aes192-ctr": False,
    "aes128-ctr": False,
    "aes256-cbc": True,
    "aes192-cbc": True,
    "aes128-cbc": True,
    "3des-cbc": True,
}
MACS: dict[str, bool] = {
    "hmac-sha2-512-etm@openssh.com": False,
    "hmac-sha2-256-etm@openssh.com": False,
    "hmac-sha2-512": False,
    "hmac-sha2-256": False,
    "hmac-sha1-etm@openssh.com": True,
    "hmac-sha1": True,
}
# Group exchange: the smallest group we accept from the server, and the largest we would
# compute with (8192-bit modular exponentiation is already slow in Python).
DH_GEX_MIN_BITS = 2048
DH_GEX_MIN_BITS_LEGACY = 1024
DH_GEX_MAX_BITS = 8192
DH_EXPONENT_BITS = 512  # twice the strength of AES-256 (RFC 4419 section 6.2)



class AlgorithmError(ValueError):
    """A target lists an algorithm name this client does not know."""


@implementer(_kex._IFixedGroupKexAlgorithm)
class _DHGroup1SHA1:
    """diffie-hellman-group1-sha1 (RFC 4253 section 8.1): Oakley group 2 (RFC 2409
    section 6.2), 1024 bits. Weak; only for devices that offer nothing else."""

    preference = 99
    hashProcessor = hashlib.sha1
    generator = 2
    prime = int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22"
        "514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6"
        "F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381"
        "FFFFFFFFFFFFFFFF",
        16,
    )


_kex._kexAlgorithms.setdefault(b"diffie-hellman-group1-sha1", _DHGroup1SHA1())


_SUPPORTED_KEX = set(_kex.getSupportedKeyExchanges())


def _choose(kind: str, table: dict[str, bool], wanted: tuple[str, ...]) -> list[bytes]:
    if not wanted:
        return [name.encode() for name, legacy in table.items() if not legacy]
    for name in wanted:
        if name not in table:
            raise AlgorithmError(
                f"ssh2 target {kind}: unknown algorithm {name!r} (known: {', '.join(table)})"
            )
    return [name.encode() for name in wanted]



def client_offer(
    kex: Sequence[str], host_key_algorithms: Sequence[str], ciphers: Sequence[str], macs: Sequence[str]
) -> dict[str, list[bytes]]:
    """The client's algorithm lists for a target's lists (empty = the modern defaults);
    raises AlgorithmError for unknown names (the config loader calls this at start-up)."""
    offered_kex = _choose("kex", KEX, tuple(kex))
    # Only what this build can run (ML-KEM needs cryptography >= 48).
    offered_kex = [name for name in offered_kex if name in _SUPPORTED_KEX]
    return {
        "kex": offered_kex,
        "host_key": _choose("host_key_algorithms", HOST_KEY_ALGORITHMS, tuple(host_key_algorithms)),
        "cipher": _choose("ciphers", CIPHERS, tuple(ciphers)),
        "mac": _choose("macs", MACS, tuple(macs)),
    }


def dh_min_bits(kex: Sequence[bytes]) -> int:
    """The smallest group-exchange group the client accepts: 1024 bits only when a legacy
    key exchange is offered (a device that old has nothing bigger)."""
    legacy = any(KEX.get(name.decode(), False) for name in kex)
    return DH_GEX_MIN_BITS_LEGACY if legacy else DH_GEX_MIN_BITS
