"""OpenSSH ``authorized_keys`` files, for both protocols: parsing (bounded) and a per-file
cache that re-reads when the file changes.

One file per user holds SSH-2 lines (``[options] keytype base64 [comment]``) and SSH-1 RSA
lines (``[options] bits exponent modulus [comment]``, as ``puttygen -O public`` and
``ssh-keygen1`` write them). An ``ssh-rsa`` line also serves SSH-1 logins: same e and n.

Options are parsed but the gateway does not enforce OpenSSH's restrictions (``command=``,
``from=``, ``no-pty``, ...). A key whose line carries a restriction we cannot enforce is
skipped with a log line: accepting it would grant more than its owner wrote.
"""

from __future__ import annotations

import binascii
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from twisted.conch.ssh import keys
from twisted.logger import Logger

MAX_FILE_BYTES = 1024 * 1024
MAX_LINE_BYTES = 16 * 1024  # OpenSSH's own limit on a public key line
# 8192 bits is far beyond any SSH-1 key in use, and keeps the decimal modulus under
# Python's int() digit limit (4300).
MAX_SSH1_BITS = 8192
MIN_SSH1_BITS = 512

# Options that only relax what the gateway never grants anyway, or switch nothing on.
HARMLESS_OPTIONS = frozenset(
    {
        "no-port-forwarding",
        "no-agent-forwarding",
        "no-x11-forwarding",
        "no-user-rc",
        "restrict",
        "port-forwarding",
        "agent-forwarding",
        "x11-forwarding",
        "user-rc",
        "pty",
        "no-touch-required",
        "verify-required",
    }
)

_log = Logger()
_SSH1_LINE = re.compile(rb"(\d{1,5})\s+(\d{1,2500})\s+(\d{1,2500})(?:\s+(.*))?\Z", re.S)


@dataclass(frozen=True)
class AuthorizedKey:
    """One usable key. ``key`` is the SSH-2 public key (None for an SSH-1-only line);
    ``rsa`` is ``(e, n)`` when the key can serve SSH-1 RSA authentication."""

    key: keys.Key | None
    rsa: tuple[int, int] | None
    options: tuple[str, ...]
    comment: str
    line: int

    @property
    def blob(self) -> bytes | None:
        return self.key.blob() if self.key is not None else None


class KeyLineError(ValueError):
    pass


def _split_options(line: bytes) -> tuple[tuple[str, ...], bytes]:
    """Split a leading options field (commas, double-quoted values may hold spaces)."""
    options: list[str] = []
    current = bytearray()
    quoted = False
    i = 0
    while i < len(line):
        c = line[i : i + 1]
        if quoted:
            if c == b"\\" and line[i + 1 : i + 2] == b'"':
                current += b'"'
                i += 2
                continue
            if c == b'"':
                quoted = False
            current += c
        elif c == b'"':
            quoted = True
            current += c
        elif c == b",":
            options.append(current.decode("utf-8", "replace"))
            current = bytearray()
        elif c in b" \t":
            break
        else:
            current += c
        i += 1
    if quoted:
        raise KeyLineError("unterminated quote in options")
    options.append(current.decode("utf-8", "replace"))
    if any(not o for o in options):
        raise KeyLineError("empty option")
    return tuple(options), line[i:].lstrip(b" \t")


def _option_name(option: str) -> str:
    return option.split("=", 1)[0].lower()


def _parse_ssh2(fields: list[bytes]) -> tuple[keys.Key, str]:
    if len(fields) < 2:
        raise KeyLineError("missing key data")
    key_type = fields[0]
    try:
        blob = binascii.a2b_base64(fields[1])
    except binascii.Error as e:
        raise KeyLineError("bad base64 key data") from e
    try:
        key = keys.Key.fromString(blob, type="blob")
    except Exception:  # Conch raises several types for garbage blobs
        # Not Conch's message: it quotes the blob ("unknown blob type: b'...'").
        raise KeyLineError(
            f"unusable {key_type[:64].decode('ascii', 'replace')} key data"
        ) from None
    if key.sshType() != key_type:
        raise KeyLineError(
            f"key type field {key_type.decode('ascii', 'replace')!r} does not match the key "
            f"data ({key.sshType().decode('ascii', 'replace')})"
        )
    comment = b" ".join(fields[2:]).decode("utf-8", "replace")
    return key, comment


def _parse_ssh1(match: re.Match[bytes]) -> tuple[tuple[int, int], str]:
    try:
        bits, e, n = int(match.group(1)), int(match.group(2)), int(match.group(3))
    except ValueError as error:  # the regex bounds the digits; this is belt and braces
        raise KeyLineError(f"unreadable SSH-1 key numbers: {error}") from error
    if not MIN_SSH1_BITS <= n.bit_length() <= MAX_SSH1_BITS:
        raise KeyLineError(f"SSH-1 modulus of {n.bit_length()} bits is out of range")
    if e < 3 or e % 2 == 0 or e >= n or n % 2 == 0:
        raise KeyLineError("SSH-1 key with an impossible exponent or modulus")
    if bits != n.bit_length():
        # ssh-keygen1 writes the exact size; a mismatch means a damaged line.
        raise KeyLineError(f"SSH-1 key says {bits} bits but its modulus has {n.bit_length()}")
    comment = (match.group(4) or b"").strip().decode("utf-8", "replace")
    return (e, n), comment


def parse_line(raw: bytes, number: int = 0) -> AuthorizedKey | None:
    """One line of an authorized_keys file: None for blanks and comments, an
    :class:`AuthorizedKey`, or :class:`KeyLineError` saying why the line is unusable."""
    line = raw.strip()
    if not line or line.startswith(b"#"):
        return None
    options: tuple[str, ...] = ()
    for _ in range(2):
        ssh1 = _SSH1_LINE.match(line)
        if ssh1 is not None:
            rsa, comment = _parse_ssh1(ssh1)
            return AuthorizedKey(None, rsa, options, comment, number)
        fields = line.split()
        if fields[0].startswith((b"ssh-", b"ecdsa-", b"sk-")) and len(fields) >= 2:
            key, comment = _parse_ssh2(fields)
            rsa = None
            if key.type() == "RSA":
                data = key.data()
                rsa = (int(data["e"]), int(data["n"]))
            return AuthorizedKey(key, rsa, options, comment, number)
        if options:
            break
        # Not a key at the start: what comes first must be an options field.
        options, line = _split_options(line)
        if not line:
            raise KeyLineError("options but no key")
    raise KeyLineError("not a key line (unknown key type)")


def _unenforceable(options: tuple[str, ...]) -> list[str]:
    return [o for o in options if _option_name(o) not in HARMLESS_OPTIONS]


def parse_authorized_keys(data: bytes, source: str = "authorized_keys") -> list[AuthorizedKey]:
    """Every usable key in ``data``; each skipped line gets a log line saying why."""
    found: list[AuthorizedKey] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if len(raw) > MAX_LINE_BYTES:
            _log.warn(
                "{source}:{line}: skipped: line longer than {limit} bytes",
                source=source,
                line=number,
                limit=MAX_LINE_BYTES,
            )
            continue
        try:
            entry = parse_line(raw, number)
        except KeyLineError as e:
            _log.warn("{source}:{line}: skipped: {why}", source=source, line=number, why=str(e))
            continue
        if entry is None:
            continue
        refused = _unenforceable(entry.options)
        if refused:
            _log.warn(
                "{source}:{line}: skipped: the gateway cannot enforce option(s) {options}",
                source=source,
                line=number,
                options=", ".join(_option_name(o) for o in refused),
            )
            continue
        found.append(entry)
    return found


class AuthorizedKeysFile:
    """One user's authorized_keys file, re-read whenever it changes on disk.

    The check is one ``stat`` per lookup; a missing, unreadable, oversized, or
    group/world-writable file yields no keys (and a log line when its state changes).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, ...] | None = None
        self._keys: list[AuthorizedKey] = []
        self._problem: str | None = None

    def _refuse(self, why: str, stamp: tuple[int, ...] | None) -> list[AuthorizedKey]:
        if why != self._problem:
            _log.warn(
                "authorized_keys {path}: {why}; no keys from it", path=str(self.path), why=why
            )
        self._problem = why
        self._stamp = stamp
        self._keys = []
        return []

    def keys(self) -> list[AuthorizedKey]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._refuse("file does not exist", None)
        except OSError as e:
            return self._refuse(f"cannot stat: {e.strerror}", None)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_mode)
        if stamp == self._stamp:
            return list(self._keys)
        if not stat.S_ISREG(st.st_mode):
            return self._refuse("not a regular file", stamp)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            # Like sshd's StrictModes: anyone who can write it could add their own key.
            return self._refuse(
                f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})", stamp
            )
        if st.st_size > MAX_FILE_BYTES:
            return self._refuse(f"larger than {MAX_FILE_BYTES} bytes", stamp)
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            return self._refuse(f"cannot read: {e.strerror}", stamp)
        if len(data) > MAX_FILE_BYTES:
            return self._refuse(f"larger than {MAX_FILE_BYTES} bytes", stamp)
        self._keys = parse_authorized_keys(data, str(self.path))
        self._stamp = stamp
        self._problem = None
        return list(self._keys)

    def find_ssh2(self, blob: bytes) -> AuthorizedKey | None:
        """The entry listing the SSH-2 public key ``blob``, if any."""
        for entry in self.keys():
            if entry.key is not None and entry.blob == blob:
                return entry
        return None

    def find_ssh1(self, modulus: int) -> AuthorizedKey | None:
        """The entry with this RSA modulus (an SSH-1 line or an ``ssh-rsa`` line), if any."""
        for entry in self.keys():
            if entry.rsa is not None and entry.rsa[1] == modulus:
                return entry
        return None
