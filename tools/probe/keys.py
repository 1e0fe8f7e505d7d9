"""How the probe shows a host key: SHA256 fingerprints (SSH-1 key numbers, SSH-2 key
blobs as sent) and what Conch can tell of an SSH-2 key's type and size."""

from __future__ import annotations

import base64
import hashlib

from twisted.conch.ssh import keys as conch_keys

from protocols.ssh1.wire import int_to_bytes
from tools.probe.report import HostKey


def ssh1_sha256_fingerprint(e: int, n: int) -> str:
    """``SHA256:...`` of an SSH-1 key: the same bytes as the MD5 form (modulus, then
    exponent, each a bare big-endian magnitude), as ssh-keygen1 -l hashes them."""
    digest = hashlib.sha256(int_to_bytes(n) + int_to_bytes(e)).digest()
    return "SHA256:" + _b64(digest)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def host_key_from_blob(algorithm: str, blob: bytes) -> HostKey:
    """What a key exchange showed: type and size when Conch can read the key; the
    fingerprint is over the blob as sent, whatever is in it."""
    fingerprint = "SHA256:" + _b64(hashlib.sha256(blob).digest())
    try:
        key = conch_keys.Key.fromString(blob)
        return HostKey(algorithm, key.sshType().decode("ascii"), key.size(), fingerprint, False)
    except Exception:  # any malformed blob: keep the fingerprint, say the type is unknown
        return HostKey(algorithm, "unreadable", None, fingerprint, False)
