"""Shared helpers for the gateway tests: cheap password hashes, keys, log capture."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.ssh import keys

from gateway import passwords

# Cheap scrypt parameters: the tests exercise the logic, not the cost.
FAST = {"n": 2**8, "r": 8, "p": 1}


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
