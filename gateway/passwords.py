"""Password hashes: making them, checking them in constant time, and spending the same
time on logins for users that do not exist.

A stored hash is a self-describing string ``$<scheme>$<parameters>$<salt>$<hash>``:

- ``$scrypt$n=32768,r=8,p=1$<salt>$<key>`` (salt and key in unpadded standard base64) is
  what :func:`hash_password` writes;
- ``$2b$...`` / ``$2a$...`` / ``$2y$...`` bcrypt hashes (from other tools) are accepted.

Schemes live in a table by name (:data:`SCHEMES`), so adding one is adding an entry.
Verification is CPU-heavy on purpose (tens of milliseconds): callers that run inside the
reactor should hand it to a thread (see ``gateway.auth``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

# scrypt cost: N=2**15, r=8 needs 32 MiB and about 0.1 s here, which is what an interactive
# login can afford while making offline guessing expensive.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_KEY_LEN = 32
SALT_LEN = 16
# Bounds on parameters read from a stored hash: a hostile or mistyped config must not make
# one login allocate gigabytes or spin for minutes.
_SCRYPT_MAX_N = 2**20
_SCRYPT_MAX_R = 32
_SCRYPT_MAX_P = 16
_SCRYPT_MAX_MEM = 1024 * 1024 * 1024
# bcrypt only looks at the first 72 bytes; longer passwords would silently share hashes.
_BCRYPT_MAX_PASSWORD = 72
# An SSH packet bounds passwords anyway; this keeps a hostile one from costing more.
MAX_PASSWORD_BYTES = 4096


class InvalidHash(ValueError):
    """The string is not a password hash this module can check."""


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise InvalidHash("bad base64 in password hash") from e


@dataclass(frozen=True)
class _ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def derive(self, password: bytes, salt: bytes | None = None) -> bytes:
        return hashlib.scrypt(
            password,
            salt=self.salt if salt is None else salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=_SCRYPT_MAX_MEM,
            dklen=len(self.key),
        )


def _parse_scrypt(stored: str) -> _ScryptHash:
    parts = stored.split("$")
    # "", "scrypt", params, salt, key
    if len(parts) != 5 or parts[0] != "" or parts[1] != "scrypt":
        raise InvalidHash("scrypt hash must look like $scrypt$n=..,r=..,p=..$salt$key")
    params: dict[str, int] = {}
    for item in parts[2].split(","):
        name, sep, value = item.partition("=")
        if not sep or name not in ("n", "r", "p") or name in params or not value.isdigit():
            # The value is not quoted, here or below: it may be a password typed by mistake.
            raise InvalidHash("bad scrypt parameters (they must look like n=..,r=..,p=..)")
        params[name] = int(value)
    if set(params) != {"n", "r", "p"}:
        raise InvalidHash("scrypt hash needs n, r and p")
    n, r, p = params["n"], params["r"], params["p"]
    if n < 2 or n & (n - 1) or n > _SCRYPT_MAX_N:
        raise InvalidHash(f"scrypt n must be a power of two up to {_SCRYPT_MAX_N}")
    if not 1 <= r <= _SCRYPT_MAX_R or not 1 <= p <= _SCRYPT_MAX_P:
        raise InvalidHash("scrypt r or p out of range")
    salt, key = _b64decode(parts[3]), _b64decode(parts[4])
    if len(salt) < 8 or not 16 <= len(key) <= 64:
        raise InvalidHash("scrypt salt or key has the wrong length")
    return _ScryptHash(n, r, p, salt, key)


def _scrypt_verify(stored: str, password: bytes) -> bool:
    parsed = _parse_scrypt(stored)
    return hmac.compare_digest(parsed.derive(password), parsed.key)


def _scrypt_dummy(stored: str, password: bytes) -> None:
    parsed = _parse_scrypt(stored)
    hmac.compare_digest(parsed.derive(password, salt=os.urandom(len(parsed.salt))), parsed.key)


def _bcrypt_check(stored: str) -> bytes:
    raw = stored.encode("ascii", "replace")
    if len(raw) != 60 or raw[3:4] != b"$" or not raw[4:6].isdigit():
        raise InvalidHash("bcrypt hash must be 60 characters like $2b$12$...")
    if not 4 <= int(raw[4:6]) <= 16:
        raise InvalidHash("bcrypt cost out of range (4..16)")
    return raw


def _bcrypt_verify(stored: str, password: bytes) -> bool:
    import bcrypt

    raw = _bcrypt_check(stored)
    if len(password) > _BCRYPT_MAX_PASSWORD or b"\0" in password:
        # bcrypt would silently cut such a password short; refuse it, after paying the
        # usual cost so that the answer takes the usual time.
        _bcrypt_dummy(stored, password)
        return False
    try:
        return bool(bcrypt.checkpw(password, raw))
    except ValueError as e:
        raise InvalidHash(str(e)) from e


def _bcrypt_dummy(stored: str, password: bytes) -> None:
    import bcrypt

    raw = _bcrypt_check(stored)
    cleaned = password[:_BCRYPT_MAX_PASSWORD].replace(b"\0", b"x")
    try:
        bcrypt.hashpw(cleaned, raw[:29])
    except ValueError as e:
        raise InvalidHash(str(e)) from e


@dataclass(frozen=True)
class Scheme:
    check: Callable[[str], object]  # raises InvalidHash for a malformed hash
    verify: Callable[[str, bytes], bool]
    dummy: Callable[[str, bytes], None]  # same work as verify, result unusable


SCHEMES: dict[str, Scheme] = {
    "scrypt": Scheme(_parse_scrypt, _scrypt_verify, _scrypt_dummy),
    "2b": Scheme(_bcrypt_check, _bcrypt_verify, _bcrypt_dummy),
    "2a": Scheme(_bcrypt_check, _bcrypt_verify, _bcrypt_dummy),
    "2y": Scheme(_bcrypt_check, _bcrypt_verify, _bcrypt_dummy),
}


def _scheme(stored: str) -> Scheme:
    if not isinstance(stored, str) or not stored.startswith("$"):
        raise InvalidHash("not a password hash (it must start with '$<scheme>$')")
    name = stored[1:].split("$", 1)[0]
    scheme = SCHEMES.get(name)
    if scheme is None:
        raise InvalidHash(
            f"unknown password hash scheme (the text after the first '$'; known: "
            f"{', '.join(SCHEMES)})"
        )
    return scheme


def check_hash(stored: str) -> None:
    """Raise :class:`InvalidHash` unless ``stored`` is a well-formed hash of a known scheme."""
    _scheme(stored).check(stored)


def is_hash(stored: str) -> bool:
    try:
        check_hash(stored)
    except InvalidHash:
        return False
    return True


def _as_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


def hash_password(
    password: str | bytes,
    *,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
) -> str:
    """A new ``$scrypt$`` hash of ``password`` with a random salt."""
    raw = _as_bytes(password)
    if not raw:
        raise ValueError("refusing to hash an empty password")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    salt = os.urandom(SALT_LEN)
    key = hashlib.scrypt(
        raw, salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAX_MEM, dklen=SCRYPT_KEY_LEN
    )
    stored = f"$scrypt$n={n},r={r},p={p}${_b64encode(salt)}${_b64encode(key)}"
    check_hash(stored)  # parameters outside the accepted bounds must fail here, not at login
    return stored


def verify_password(stored: str, password: str | bytes) -> bool:
    """Whether ``password`` matches ``stored``; the final comparison is constant-time.

    A malformed hash is simply a mismatch (the config loader reports it earlier)."""
    raw = _as_bytes(password)
    try:
        scheme = _scheme(stored)
        if len(raw) > MAX_PASSWORD_BYTES:
            scheme.dummy(stored, raw[:MAX_PASSWORD_BYTES])
            return False
        return scheme.verify(stored, raw)
    except InvalidHash:
        return False


_DEFAULT_DUMMY: str | None = None


def dummy_verify(password: str | bytes, like: str | None = None) -> bool:
    """Spend what checking ``password`` against a hash like ``like`` would cost, then say no.

    Used for unknown users (and users without a password) so that their answer arrives in
    the same time as a wrong password's. ``like`` picks the cost parameters (pass a hash
    of the configured users); by default those of :func:`hash_password`.
    """
    global _DEFAULT_DUMMY
    raw = _as_bytes(password)[:MAX_PASSWORD_BYTES]
    if like is None or not is_hash(like):
        if _DEFAULT_DUMMY is None:
            _DEFAULT_DUMMY = hash_password(b"unknown user")
        like = _DEFAULT_DUMMY
    try:
        _scheme(like).dummy(like, raw)
    except InvalidHash:
        pass
    return False
