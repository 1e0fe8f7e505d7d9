"""OpenSSH ``authorized_keys`` files, for both protocols: parsing (bounded) and a per-file
cache that re-reads when the file changes.

One file per user holds SSH-2 lines (``[options] keytype base64 [comment]``) and SSH-1 RSA
lines (``[options] bits exponent modulus [comment]``, as ``puttygen -O public`` and
``ssh-keygen1`` write them). An ``ssh-rsa`` line also serves SSH-1 logins: same e and n.

Options (:func:`parse_options`, :class:`KeyOptions`) are parsed as sshd parses them and
enforced by the gateway: ``from=`` and ``expiry-time=`` when the key is offered
(:meth:`KeyOptions.login_refusal`, used by gateway.auth), the rest on the logged-in
session (``restrict``, ``no-pty``, ``no-port-forwarding``, ... as the avatar's
``SessionRestrictions``; ``command=`` and ``environment=`` by gateway.routing). A line with
an option the gateway does not know is skipped with a log line: accepting it would grant
more than its owner wrote.
"""

from __future__ import annotations

import binascii
import calendar
import os
import re
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from twisted.conch.ssh import keys
from twisted.logger import Logger

from gateway import host_patterns
from protocols.session import SessionRestrictions

MAX_FILE_BYTES = 1024 * 1024
MAX_LINE_BYTES = 16 * 1024  # OpenSSH's own limit on a public key line
# 8192 bits is far beyond any SSH-1 key in use, and keeps the decimal modulus under
# Python's int() digit limit (4300).
MAX_SSH1_BITS = 8192
MIN_SSH1_BITS = 512

_log = Logger()
_SSH1_LINE = re.compile(rb"(\d{1,5})\s+(\d{1,2500})\s+(\d{1,2500})(?:\s+(.*))?\Z", re.S)

# At most this many environment= options on one line (sshd allows 1024; a session
# request allows 64 variables from the client, and the key gets no more).
MAX_ENVIRONMENT = 64
MAX_ENV_NAME = 256
_ENV_NAME = re.compile(r"[A-Za-z0-9_]+\Z")
# expiry-time: YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, then optionally Z or UTC.
_EXPIRY = re.compile(r"(\d{8}|\d{12}|\d{14})(Z|UTC)?\Z", re.I)

# Flags that take a "no-" prefix, and the KeyOptions field each sets.
_NEGATABLE_FLAGS = {
    "pty": "pty",
    "port-forwarding": "port_forwarding",
    "agent-forwarding": "agent_forwarding",
    "x11-forwarding": "x11_forwarding",
    "user-rc": "user_rc",
}
# Flags for FIDO (sk-) keys, which Conch cannot verify: such keys never log in, and the
# flags change nothing for the others.
_SECURITY_KEY_FLAGS = frozenset({"touch-required", "no-touch-required", "verify-required"})
_VALUE_OPTIONS = frozenset({"command", "from", "environment", "expiry-time"})
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class KeyLineError(ValueError):
    pass


class UnknownOption(KeyLineError):
    """An option the gateway does not know: the line is skipped, since accepting it would
    grant more than its owner wrote (``permitopen=``, ``tunnel=``, ``cert-authority``...)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"option {_printable(name)!r} is not supported by the gateway")
        self.name = name


def _printable(text: str, limit: int = 64) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


@dataclass(frozen=True)
class KeyOptions:
    """What the options of one authorized_keys line say, with sshd's meaning (sshd(8)
    AUTHORIZED_KEYS FILE FORMAT). The default is a line without options.

    ``from_patterns`` and ``expiry`` decide whether the key may log in at all
    (:meth:`login_refusal`); the flags restrict the session once logged in;
    ``command`` replaces whatever the client asks to run; ``environment`` is set for the
    session only where the config permits user environment.
    """

    pty: bool = True
    port_forwarding: bool = True
    agent_forwarding: bool = True
    x11_forwarding: bool = True
    user_rc: bool = True  # the gateway runs no ~/.ssh/rc: accepted, nothing to enforce
    command: str | None = None
    from_patterns: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    expiry: int | None = None  # seconds since the epoch; the key is refused after it

    def login_refusal(self, address: host_patterns.Address | None, now: float) -> str | None:
        """Why a login with this line is refused for a client at ``address`` at ``now``
        (for the log only), or None when it is admitted."""
        if self.expiry is not None and self.expiry < now:
            when = datetime.fromtimestamp(self.expiry, UTC)
            return f"the key expired at {when:%Y-%m-%d %H:%M:%S} UTC (expiry-time)"
        if self.from_patterns is not None:
            try:
                allowed = host_patterns.from_allows(self.from_patterns, address)
            except host_patterns.PatternError as e:
                return f"invalid from= criteria ({e})"
            if not allowed:
                shown = str(address) if address is not None else "an unknown address"
                return (
                    f"{shown} is not permitted to use this key "
                    f'(from="{_printable(self.from_patterns, 200)}")'
                )
        return None

    def session_restrictions(self, origin: str) -> SessionRestrictions:
        """The flags as the front ends read them off the avatar."""
        return SessionRestrictions(
            pty=self.pty,
            port_forwarding=self.port_forwarding,
            agent_forwarding=self.agent_forwarding,
            x11_forwarding=self.x11_forwarding,
            origin=origin,
        )


def parse_options(text: str) -> KeyOptions:
    """The options field of a line, parsed as sshd's auth-options.c does: names are
    case-insensitive, the flags may be preceded by ``no-`` (``restrict`` may not),
    ``restrict`` turns every flag off and later flags turn some on again, values are
    double-quoted with ``\\"`` for a quote (any other backslash is kept). Raises
    :class:`UnknownOption` or :class:`KeyLineError`."""
    values: dict[str, object] = {}
    environment: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text) and text[pos] not in " \t":
        end = pos
        while end < len(text) and text[end] not in ",= \t":
            end += 1
        name = text[pos:end].translate(_ASCII_LOWER)
        if end < len(text) and text[end] == "=":
            if name not in _VALUE_OPTIONS:
                raise UnknownOption(text[pos:end])
            value, pos = _dequote(text, end + 1, name)
            _set_value(values, environment, name, value)
        else:
            pos = end
            if name == "restrict":
                values.update({field: False for field in _NEGATABLE_FLAGS.values()})
            elif name in _NEGATABLE_FLAGS:
                values[_NEGATABLE_FLAGS[name]] = True
            elif name.startswith("no-") and name[3:] in _NEGATABLE_FLAGS:
                values[_NEGATABLE_FLAGS[name[3:]]] = False
            elif name and name not in _SECURITY_KEY_FLAGS:
                # (An empty option, as in "pty,,no-x11-forwarding", is passed over, as
                # sshd does.)
                raise UnknownOption(text[pos - len(name) : pos])
        if pos >= len(text) or text[pos] in " \t":
            break
        if text[pos] != ",":
            raise KeyLineError("unexpected text after an option")
        pos += 1
        if pos >= len(text) or text[pos] in " \t":
            raise KeyLineError("unexpected end of options after a comma")
    return KeyOptions(**values, environment=tuple(environment))  # type: ignore[arg-type]


def _dequote(text: str, pos: int, name: str) -> tuple[str, int]:
    """The double-quoted value at ``pos`` and the position after its closing quote."""
    if pos >= len(text) or text[pos] != '"':
        raise KeyLineError(f"{name}= value without a starting quote")
    value: list[str] = []
    pos += 1
    while pos < len(text) and text[pos] != '"':
        if text[pos] == "\\" and text[pos + 1 : pos + 2] == '"':
            pos += 1
        value.append(text[pos])
        pos += 1
    if pos >= len(text):
        raise KeyLineError(f"{name}= value without an ending quote")
    return "".join(value), pos + 1


def _set_value(
    values: dict[str, object], environment: list[tuple[str, str]], name: str, value: str
) -> None:
    if name == "command":
        if "command" in values:
            raise KeyLineError("more than one command= option")
        values["command"] = value
    elif name == "from":
        if "from_patterns" in values:
            raise KeyLineError("more than one from= option")
        values["from_patterns"] = value
    elif name == "expiry-time":
        expiry = _expiry_time(value)
        # Several: the earliest counts, as in sshd.
        previous = values.get("expiry")
        values["expiry"] = expiry if previous is None else min(expiry, previous)  # type: ignore[call-overload]
    else:  # environment
        var, sep, setting = value.partition("=")
        if not sep or len(var) > MAX_ENV_NAME or not _ENV_NAME.match(var):
            raise KeyLineError("environment= value is not NAME=value")
        if len(environment) >= MAX_ENVIRONMENT:
            raise KeyLineError(f"more than {MAX_ENVIRONMENT} environment= options")
        # A name given twice: the first counts, as in sshd.
        if all(var != known for known, _ in environment):
            environment.append((var, setting))


def _expiry_time(value: str) -> int:
    """expiry-time="YYYYMMDD[HHMM[SS]]" (local time) or with a Z / UTC suffix (UTC)."""
    match = _EXPIRY.match(value)
    if match is None:
        raise KeyLineError("expiry-time is not YYYYMMDD[HHMM[SS]][Z]")
    digits = match.group(1).ljust(14, "0")
    try:
        when = datetime(
            int(digits[0:4]), int(digits[4:6]), int(digits[6:8]),
            int(digits[8:10]), int(digits[10:12]), int(digits[12:14]),
        )  # fmt: skip
        if match.group(2):
            stamp = calendar.timegm(when.timetuple())
        else:
            stamp = int(time.mktime(when.timetuple()))
    except (ValueError, OverflowError):
        raise KeyLineError("expiry-time is not a valid date and time") from None
    if stamp <= 0:
        raise KeyLineError("expiry-time is before 1970")
    return stamp


NO_OPTIONS = KeyOptions()


@dataclass(frozen=True)
class AuthorizedKey:
    """One usable key. ``key`` is the SSH-2 public key (None for an SSH-1-only line);
    ``rsa`` is ``(e, n)`` when the key can serve SSH-1 RSA authentication."""

    key: keys.Key | None
    rsa: tuple[int, int] | None
    options: KeyOptions
    comment: str
    line: int
    source: str = "authorized_keys"  # the file, for log lines

    @property
    def blob(self) -> bytes | None:
        return self.key.blob() if self.key is not None else None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _split_options(line: bytes) -> tuple[str, bytes]:
    """The leading options field and the rest of the line, as sshd finds the key after
    it: up to the first space or tab outside double quotes (``\\"`` never toggles)."""
    quoted = False
    i = 0
    while i < len(line) and (quoted or line[i : i + 1] not in (b" ", b"\t")):
        if line[i : i + 1] == b"\\" and line[i + 1 : i + 2] == b'"':
            i += 2
            continue
        if line[i : i + 1] == b'"':
            quoted = not quoted
        i += 1
    if quoted:
        raise KeyLineError("unterminated quote in options")
    # surrogateescape: a forced command keeps its exact bytes.
    return line[:i].decode("utf-8", "surrogateescape"), line[i:].lstrip(b" \t")


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


def parse_line(
    raw: bytes, number: int = 0, source: str = "authorized_keys"
) -> AuthorizedKey | None:
    """One line of an authorized_keys file: None for blanks and comments, an
    :class:`AuthorizedKey`, or :class:`KeyLineError` (:class:`UnknownOption` included)
    saying why the line is unusable."""
    line = raw.strip()
    if not line or line.startswith(b"#"):
        return None
    options_text: str | None = None
    for attempt in range(2):
        found = _read_key(line)
        if found is not None:
            # As sshd: the options are parsed once a key follows them.
            options = NO_OPTIONS if options_text is None else parse_options(options_text)
            key, rsa, comment = found
            return AuthorizedKey(key, rsa, options, comment, number, source)
        if attempt:
            break
        # Not a key at the start: what comes first must be an options field.
        options_text, line = _split_options(line)
        if not line:
            raise KeyLineError("options but no key")
    raise KeyLineError("not a key line (unknown key type)")


def _read_key(line: bytes) -> tuple[keys.Key | None, tuple[int, int] | None, str] | None:
    """(SSH-2 key, SSH-1 (e, n), comment) of a line that starts with a key, None if it
    does not; KeyLineError for a key that is there but unusable."""
    ssh1 = _SSH1_LINE.match(line)
    if ssh1 is not None:
        rsa, comment = _parse_ssh1(ssh1)
        return None, rsa, comment
    fields = line.split()
    if fields[0].startswith((b"ssh-", b"ecdsa-", b"sk-")) and len(fields) >= 2:
        key, comment = _parse_ssh2(fields)
        rsa = None
        if key.type() == "RSA":
            data = key.data()
            rsa = (int(data["e"]), int(data["n"]))
        return key, rsa, comment
    return None


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
            entry = parse_line(raw, number, source)
        except KeyLineError as e:
            _log.warn("{source}:{line}: skipped: {why}", source=source, line=number, why=str(e))
            continue
        if entry is None:
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

    def find_ssh2(self, blob: bytes) -> list[AuthorizedKey]:
        """The entries listing the SSH-2 public key ``blob``, in file order (a key may be
        listed on several lines with different options: sshd tries each in turn)."""
        return [e for e in self.keys() if e.key is not None and e.blob == blob]

    def find_ssh1(self, modulus: int) -> list[AuthorizedKey]:
        """The entries with this RSA modulus (SSH-1 lines and ``ssh-rsa`` lines), in file
        order."""
        return [e for e in self.keys() if e.rsa is not None and e.rsa[1] == modulus]
