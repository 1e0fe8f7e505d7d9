"""Shared helpers for the gateway tests: cheap password hashes, keys, public-key
credentials, the result of an already-fired Deferred, log capture."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.ssh import keys
from twisted.cred.credentials import SSHPrivateKey
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway import passwords
from gateway.config import own_account

# Cheap scrypt parameters: the tests exercise the logic, not the cost.
FAST = {"n": 2**8, "r": 8, "p": 1}

# The account the tests run as: the one OS account local sessions may run as whether or not
# the tests run as root.
OWN_ACCOUNT = own_account() or "root"
# The lines of a [users.NAME] table that grant `local`, as the tests' own account (nothing
# is granted by default).
LOCAL_ACCESS = f'targets = ["local"]\nos_user = "{OWN_ACCOUNT}"\n'


# The [targets.*] tables the routing tests share: sw1 (SSH-1, with a device password),
# host2 (SSH-2), tn (telnet, logging in with the user's own password) and secret (listed
# for no user).
ROUTED_TARGETS = """
[targets.sw1]
protocol = "ssh1"
host = "192.0.2.10"
password = "device"

[targets.host2]
protocol = "ssh2"
host = "192.0.2.11"

[targets.tn]
protocol = "telnet"
host = "192.0.2.12"
credentials = "pass-through"

[targets.secret]
protocol = "ssh2"
host = "192.0.2.13"
"""


def fast_hash(password: str) -> str:
    return passwords.hash_password(password, **FAST)


def ed25519_key() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


def rsa_key(bits: int = 1024) -> keys.Key:
    # 1024 bits keeps the tests fast; sizes are not what these tests are about.
    return keys.Key(rsa.generate_private_key(65537, bits))


def ssh1_line(key: keys.Key, comment: str = "ssh1-key") -> str:
    data = key.public().data()
    return f"{data['n'].bit_length()} {data['e']} {data['n']} {comment}"


def pk(
    name: bytes,
    key: keys.Key,
    data: bytes = b"session-data",
    signature_type: bytes | None = None,
    sign: bool = True,
    blob: bytes | None = None,
) -> SSHPrivateKey:
    """Public-key credentials for ``name``: signed over ``data`` unless ``sign`` is false
    (a query), with another signature algorithm or a replaced key blob when given."""
    public = key.public()
    algorithm = signature_type or public.sshType()
    signature = key.sign(data, signatureType=signature_type) if sign else None
    return SSHPrivateKey(name, algorithm, blob or public.blob(), data, signature)


def result_of(d: Deferred):
    """The Deferred's result now (it must have fired), re-raising a failure."""
    box: list = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def failure_of(d: Deferred) -> Failure:
    """The Failure the Deferred has already fired with."""
    box: list = []
    d.addBoth(box.append)
    assert box and isinstance(box[0], Failure), box
    return box[0]


def write_private(path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


class LogCapture(list):
    """A twisted.logger observer that keeps the formatted messages."""

    def __call__(self, event: dict) -> None:
        from twisted.logger import formatEvent

        self.append(formatEvent(event))

    def text(self) -> str:
        return "\n".join(self)
