"""Key fingerprints as SSH clients print them: the one builder of the ``SHA256:…`` text.

OpenSSH (``ssh -v``, ``ssh-keygen -l``, ``ssh1 -v``, ``ssh-keygen1 -l``) and PuTTY show a
key's SHA256 fingerprint as ``SHA256:`` and the unpadded base64 of the digest. What is
hashed depends on the protocol: the public key blob for SSH-2
(:func:`protocols.ssh1.keys.ssh1_sha256_fingerprint` says what for SSH-1); the text is
made here, for both, so every place that shows or compares one agrees.
"""

from __future__ import annotations

import base64
import hashlib

PREFIX = "SHA256:"


def sha256_fingerprint(data: bytes) -> str:
    """``SHA256:<base64 of SHA-256(data), without padding>``."""
    return PREFIX + base64.b64encode(hashlib.sha256(data).digest()).decode("ascii").rstrip("=")
