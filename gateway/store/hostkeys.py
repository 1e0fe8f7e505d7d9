"""The host keys every instance presents, stored once in the ``host_keys`` table, encrypted
at rest with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under ``[store] key``
or ``key_file``.

At start, under an advisory lock: each key missing from the table is taken from this
instance's state_dir if it has one (so the first instance of a cluster keeps the keys its
clients already trust) or generated, and stored. Then every instance writes the table's
keys over its state_dir files (0600) and loads them the usual way, so ``sshgateway
fingerprints`` and a start with the database down (which uses these copies) show and
present the same keys.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from gateway.hostkeys import (
    ED25519_FILE,
    RSA_FILE,
    SSH1_FILE,
    HostKeyError,
    HostKeys,
    _generate,
    ensure_state_dir,
    load_or_create_host_keys,
)

log = Logger()

NAMES = (ED25519_FILE, RSA_FILE, SSH1_FILE)
_HOST_KEYS_LOCK = 0x55_47_57_02


def fernet_for(key: str | None, key_file: Path | None) -> Any:
    """The Fernet for ``[store] key`` / ``key_file``; HostKeyError naming what is wrong."""
    from cryptography.fernet import Fernet

    if key_file is not None:
        try:
            key = key_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise HostKeyError(f"[store] key_file {key_file}: cannot read it ({e})") from None
    if not key:
        raise HostKeyError("[store] needs key or key_file to encrypt the host keys")
    try:
        return Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise HostKeyError(
            "[store] key is not a Fernet key (32 bytes, urlsafe base64; make one with "
            "`sshgateway db new-key`)"
        ) from None


def new_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


def share_host_keys(conn: Any, fernet: Any, state_dir: Path) -> HostKeys:
    """Settle the cluster's host keys in the database (blocking; at start, before the
    reactor runs) and load them from the state_dir copies."""
    from cryptography.fernet import InvalidToken

    ensure_state_dir(state_dir)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_HOST_KEYS_LOCK,))
        stored = dict(conn.execute("SELECT name, sealed FROM host_keys").fetchall())
        for name in NAMES:
            if name in stored:
                continue
            local = state_dir / name
            data = local.read_bytes() if local.is_file() else _generate(name)
            stored[name] = fernet.encrypt(data)
            conn.execute(
                "INSERT INTO host_keys (name, sealed) VALUES (%s, %s)", (name, stored[name])
            )
            log.info(
                "store: host key {name} stored (from {origin})",
                name=name,
                origin="this state_dir" if local.is_file() else "a new key",
            )
    for name in NAMES:
        try:
            data = fernet.decrypt(bytes(stored[name]))
        except InvalidToken:
            raise HostKeyError(
                f"[store] key does not decrypt host key {name} in the database (a different "
                "key than the instance that stored it)"
            ) from None
        _write_private(state_dir / name, data)
    return load_or_create_host_keys(state_dir)


def _write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600) atomically, unless it holds that already."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


__all__ = ["NAMES", "fernet_for", "new_key", "share_host_keys"]
