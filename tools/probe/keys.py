"""How the probe shows a host key: SHA256 fingerprints (SSH-1 key numbers, SSH-2 key
blobs as sent) and what Conch can tell of an SSH-2 key's type and size."""

from __future__ import annotations

from twisted.conch.ssh import keys as conch_keys

from protocols.fingerprint import sha256_fingerprint
from protocols.ssh1.keys import ssh1_sha256_fingerprint
from tools.probe.report import HostKey

__all__ = ["host_key_from_blob", "ssh1_sha256_fingerprint"]


def host_key_from_blob(algorithm: str, blob: bytes) -> HostKey:
    """What a key exchange showed: type and size when Conch can read the key; the
    fingerprint is over the blob as sent, whatever is in it."""
    fingerprint = sha256_fingerprint(blob)
    try:
        key = conch_keys.Key.fromString(blob)
        return HostKey(algorithm, key.sshType().decode("ascii"), key.size(), fingerprint, False)
    except Exception:  # any malformed blob: keep the fingerprint, say the type is unknown
        return HostKey(algorithm, "unreadable", None, fingerprint, False)
