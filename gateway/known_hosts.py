"""Upstream host keys: the gateway's known_hosts files (OpenSSH's format) and the
per-target ``host_key`` policy that decides whether an upstream's key is trusted.

Policies (``[targets.NAME] host_key``):

- ``"accept-new"``: trust on first use. An unknown host's key is appended to the file
  once the key exchange with it succeeded (the device proved it holds the key); from
  then on it is pinned and a different key is refused.
- ``"strict"``: the key must already be in the file.
- a fingerprint, as the clients print them: ``SHA256:...`` (SSH-2 and SSH-1), or for
  SSH-1 also the MD5 colon-hex form, optionally ``MD5:``-prefixed. Several may be
  given, separated by commas (for a key rollover). The file is not consulted.

Two files, so that OpenSSH's tools keep working on the SSH-2 one:

- ``known_hosts``: SSH-2 keys, ``hosts keytype base64 [comment]``. Modern ``ssh-keygen``
  (``-F``, ``-R``, ``-H``) refuses a file with an SSH-1 line in it, so none is written
  there; SSH-1 lines found in it (an older gateway wrote them there) are moved out when
  the file is opened, and honoured meanwhile.
- ``known_hosts.ssh1`` beside it: SSH-1 keys, ``hosts bits e n [comment]``, the format of
  OpenSSH 7.5's ``ssh1`` (``ssh-keygen1 -F/-R/-H`` work on it).

In both, ``hosts`` is a comma list of names or patterns (``*``, ``?``, ``!negation``),
``[host]:port`` for ports other than 22, or a hashed ``|1|salt|hmac`` entry. ``@revoked``
lines refuse that key for every host that matches; ``@cert-authority`` lines are ignored
(no certificates here).

A host counts as *known* once any key of the same protocol is recorded for it: a
different key then means CHANGED even if its type differs, because a downgrade to a
weaker key type is exactly what an attacker in the middle would offer. The SSH-2 client
asks :meth:`KnownHosts.ssh2_key_types` first and prefers the recorded types, as OpenSSH
does, so an honest server is not caught by this.

Writers (appends, :meth:`KnownHosts.forget`, the SSH-1 move) hold an exclusive lock on
the file they change and re-read it first; a rewrite replaces the file by rename, as
``ssh-keygen -R`` does, and a writer that finds the file replaced while it waited for the
lock starts again on the new one.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import functools
import hashlib
import hmac
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from twisted.conch.ssh import keys
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gateway.events import HOST_KEY_CHANGED, HOST_KEY_FIRST_SEEN, HOST_KEY_REFUSED, emit
from gateway.hostkeys import ssh2_fingerprint
from gateway.upstream_errors import UpstreamFailure
from protocols.ssh1.keys import ssh1_fingerprint, ssh1_sha256_fingerprint

log = Logger()

# Hostile or accidental giant files must not be read whole: a known_hosts with tens of
# thousands of hosts is still far below this.
MAX_FILE_BYTES = 8 * 1024 * 1024
# An RSA-16384 SSH-2 line is about 2.9 KB of base64 and an SSH-1 line of the same size
# about 5 KB of decimal; anything much longer is not a key line.
MAX_LINE_BYTES = 16 * 1024
MAX_BITS = 16384
POLICIES = ("accept-new", "strict")
SSH1_SUFFIX = ".ssh1"  # known_hosts.ssh1: the SSH-1 keys
_LOCK_TRIES = 20  # a file replaced this often while we wait for its lock: give up


class HostKeyChanged(UpstreamFailure):
    """The upstream offered a key other than the pinned one."""

    pinned = ""  # where the known key is (file:line), or the config's fingerprints
    reason = "host-key-changed"


class HostKeyUnknown(UpstreamFailure):
    """``strict`` policy and the upstream's key is not in the file."""

    reason = "host-key-unknown"


class HostKeyRevoked(UpstreamFailure):
    """The upstream offered a key marked ``@revoked``."""

    reason = "host-key-revoked"


class KnownHostsError(UpstreamFailure):
    """The file cannot be used (too large, unreadable) or the policy is malformed."""

    reason = "known-hosts-unusable"

    detail = ""  # for the operator: which file and why (the message is the user's)


@dataclass(frozen=True)
class _Entry:
    patterns: str  # the host field as written
    marker: str  # "", "@revoked", "@cert-authority"
    protocol: str  # "ssh2" | "ssh1"
    key_type: str  # SSH-2 key type as written, "rsa1" for SSH-1
    blob: bytes  # SSH-2 public key blob; b"" for SSH-1
    e: int
    n: int
    line: int
    path: Path  # the file it is in

    def matches(self, name: str) -> bool:
        return _host_field_matches(self.patterns, name)

    def same_key(self, blob: bytes, e: int, n: int) -> bool:
        if self.protocol == "ssh2":
            return self.blob == blob
        return self.e == e and self.n == n

    @property
    def fingerprint(self) -> str:
        if self.protocol == "ssh1":
            return (
                f"{ssh1_sha256_fingerprint(self.e, self.n)} MD5:{ssh1_fingerprint(self.e, self.n)}"
            )
        try:
            return ssh2_fingerprint(keys.Key.fromString(self.blob))
        except Exception:  # a key type Conch cannot read: still listed, by its type
            return "(unreadable key)"

    @property
    def bits(self) -> int | None:
        return self.n.bit_length() if self.protocol == "ssh1" else None


@dataclass(frozen=True)
class ForgottenKey:
    """A line :meth:`KnownHosts.forget` removed."""

    protocol: str  # "ssh1" | "ssh2"
    key_type: str  # "rsa1" or the SSH-2 key type
    fingerprint: str
    path: Path
    line: int


def after_pins_read(ready: Deferred[None], connect: Callable[[], Deferred]) -> Deferred:
    """``connect()`` once ``ready`` (:meth:`KnownHosts.up_to_date`) fired: at once when it
    has (the local files: nothing changes for a gateway without a store), so a failure
    ``connect`` raises reaches the caller as before; else when the pins were read."""
    if ready.called:
        return connect()
    return ready.addCallback(lambda _: connect())


def host_name(host: str, port: int) -> str:
    """The name a known_hosts line uses for ``host:port`` (OpenSSH's convention)."""
    host = host.lower()
    return host if port == 22 else f"[{host}]:{port}"


def _hashed_matches(field: str, name: str) -> bool:
    parts = field.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2], validate=True)
        expected = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(salt) != 20 or len(expected) != 20:
        return False
    actual = hmac.new(salt, name.encode("utf-8", "replace"), hashlib.sha1).digest()
    return hmac.compare_digest(actual, expected)


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    # OpenSSH patterns know only "*" and "?"; "[" and "]" are literal (``[host]:port``).
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    )


def _host_field_matches(field: str, name: str) -> bool:
    if field.startswith("|"):
        return _hashed_matches(field, name)
    matched = False
    for pattern in field.lower().split(","):
        if not pattern:
            continue
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if _glob(pattern).fullmatch(name):
            if negated:
                return False
            matched = True
    return matched


def _blob_type(blob: bytes) -> str | None:
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length > 64 or len(blob) < 4 + length:
        return None
    try:
        return blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def _parse_line(text: str, number: int, path: Path) -> _Entry | None:
    fields = text.split()
    if not fields or fields[0].startswith("#"):
        return None
    marker = ""
    if fields[0].startswith("@"):
        marker = fields[0]
        fields = fields[1:]
        if marker not in ("@revoked", "@cert-authority"):
            return None
    if len(fields) < 3:
        return None
    patterns = fields[0]
    if fields[1].isdigit():
        # SSH-1: bits e n, all decimal.
        if len(fields) < 4 or not (fields[2].isdigit() and fields[3].isdigit()):
            return None
        bits = int(fields[1])
        if bits > MAX_BITS or len(fields[3]) > MAX_BITS // 3 + 2 or len(fields[2]) > 32:
            return None
        return _Entry(
            patterns, marker, "ssh1", "rsa1", b"", int(fields[2]), int(fields[3]), number, path
        )
    key_type = fields[1]
    try:
        blob = base64.b64decode(fields[2], validate=True)
    except (binascii.Error, ValueError):
        return None
    if _blob_type(blob) != key_type and not key_type.endswith("-cert-v01@openssh.com"):
        return None
    return _Entry(patterns, marker, "ssh2", key_type, blob, 0, 0, number, path)


def _lines(data: bytes, path: Path, warn: bool = False) -> Iterator[tuple[bytes, _Entry | None]]:
    """Each line of a file (without its newline) with its entry, None if it has none."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if len(raw) > MAX_LINE_BYTES:
            if warn:
                log.warn(
                    "known_hosts {path}:{line}: line too long, ignored", path=path, line=number
                )
            yield raw, None
            continue
        text = raw.decode("utf-8", "replace").strip()
        if not text or text.startswith("#"):
            yield raw, None
            continue
        entry = _parse_line(text, number, path)
        if entry is None and warn:
            log.warn(
                "known_hosts {path}:{line}: not a host key line, ignored", path=path, line=number
            )
        yield raw, entry


def _parse(data: bytes, path: Path) -> list[_Entry]:
    return [entry for _, entry in _lines(data, path, warn=True) if entry is not None]


@dataclass(frozen=True)
class _Offered:
    """The key an upstream presented, in the forms the checks need."""

    protocol: str
    key_type: str
    blob: bytes
    e: int
    n: int
    fingerprint: str  # as shown to the user
    line: str  # the known_hosts line body after the host field
    sha256: str  # "SHA256:<base64, no padding>"
    md5: str | None = None  # colon-hex, SSH-1 keys only (what plink and old ssh1 show)


class _HostsFile:
    """One file: its parsed entries (cached while the file is unchanged), and locked
    changes to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._cache: list[_Entry] = []

    def entries(self) -> list[_Entry]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._cache = None, []
            return []
        except OSError as exc:
            raise self.unusable(exc.strerror or str(exc)) from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            if st.st_size > MAX_FILE_BYTES:
                raise self.unusable("too large")
            try:
                with open(self.path, "rb") as f:
                    data = f.read(MAX_FILE_BYTES + 1)
            except OSError as exc:
                raise self.unusable(exc.strerror or str(exc)) from None
            if len(data) > MAX_FILE_BYTES:
                raise self.unusable("too large")
            self._cache, self._stamp = _parse(data, self.path), stamp
        return self._cache

    def unusable(self, why: str) -> KnownHostsError:
        log.error("known_hosts {path}: {why}", path=self.path, why=why)
        error = KnownHostsError(
            "the gateway's known_hosts file cannot be used; refusing to connect"
        )
        error.detail = f"{self.path}: {why}"
        return error

    @contextmanager
    def locked(self) -> Iterator[tuple[int, bytes]]:
        """The file open (created 0600 if missing) under an exclusive lock, with what it
        holds now. Another writer may have replaced it while we waited: then again on the
        new file."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            for _ in range(_LOCK_TRIES):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    st = os.fstat(fd)
                    if os.stat(self.path).st_ino != st.st_ino:
                        os.close(fd)  # replaced (forget, ssh-keygen -R) while we waited
                        continue
                    if st.st_size > MAX_FILE_BYTES:
                        raise self.unusable("too large")
                    data = os.pread(fd, st.st_size, 0)
                except BaseException:
                    os.close(fd)
                    raise
                try:
                    yield fd, data
                finally:
                    os.close(fd)  # also drops the lock
                    self._stamp = None
                return
        except OSError as exc:
            raise self.unusable(exc.strerror or str(exc)) from None
        raise self.unusable("replaced by another program again and again")

    def append(self, fd: int, data: bytes, lines: list[str]) -> None:
        prefix = b"\n" if data and not data.endswith(b"\n") else b""
        os.write(fd, prefix + "".join(f"{line}\n" for line in lines).encode("utf-8"))

    def replace(self, lines: list[bytes]) -> None:
        """Write ``lines`` as the whole file, atomically (call it while :meth:`locked`)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(b"".join(line + b"\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        self._stamp = None


class HostKeyPin:
    """What a check decided about an offered key. :meth:`record` writes an accept-new
    key to the file: call it only once the key exchange with that key succeeded, so that
    a device that cannot use (or does not hold) the key it shows never gets it pinned.
    For a key that was already known or matched a configured fingerprint it does
    nothing."""

    def __init__(
        self,
        known: KnownHosts | None,
        host: str,
        port: int,
        offered: _Offered,
        target: str | None = None,
    ) -> None:
        self._known = known
        self.host, self.port = host, port
        self._offered = offered
        self.target = target

    def record(self) -> None:
        """Pin the key; raises like a check if the file cannot be used or another
        session or process pinned a different key for the host meanwhile."""
        known, self._known = self._known, None
        if known is not None:
            with _audited(self.target, self.host, self.port, self._offered):
                pinned = known._append(self.host, self.port, self._offered)
            if not pinned:
                return  # another session pinned this very key meanwhile
            _audit(
                HOST_KEY_FIRST_SEEN,
                "audit: {target} ({host}:{port}): first seen {key_type} host key {fingerprint}, "
                "pinned (accept-new)",
                self.target,
                self.host,
                self.port,
                self._offered,
            )


def _audit(
    name: str, text: str, target: str | None, host: str, port: int, offered: _Offered, **more: str
) -> None:
    emit(
        log,
        name,
        text,
        target=target,
        host=host,
        port=port,
        protocol=offered.protocol,
        key_type=offered.key_type,
        fingerprint=offered.sha256,
        **more,
    )


@contextmanager
def _audited(target: str | None, host: str, port: int, offered: _Offered) -> Iterator[None]:
    """Emit ``host_key_changed`` or ``host_key_refused`` for a check that refuses a key."""
    try:
        yield
    except HostKeyChanged as exc:
        _audit(
            HOST_KEY_CHANGED,
            "audit: {target} ({host}:{port}): host key CHANGED to {key_type} {fingerprint} "
            "(pinned: {pinned}); refused",
            target,
            host,
            port,
            offered,
            pinned=getattr(exc, "pinned", ""),
            result="refused",
        )
        raise
    except (HostKeyUnknown, HostKeyRevoked) as exc:
        reason = "revoked" if isinstance(exc, HostKeyRevoked) else "unknown (strict)"
        _audit(
            HOST_KEY_REFUSED,
            "audit: {target} ({host}:{port}): {key_type} host key {fingerprint} refused: "
            "{reason}",
            target,
            host,
            port,
            offered,
            reason=reason,
        )
        raise


class KnownHosts:
    """The gateway's known_hosts: ``path`` for SSH-2 keys and ``path.ssh1`` beside it for
    SSH-1 keys. Checks run on the reactor thread; appends take an exclusive lock and
    re-read the file first, so neither two sessions of this process nor another process
    racing on the same file can record a host twice."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.ssh1_path = self.path.with_name(self.path.name + SSH1_SUFFIX)
        self._ssh2_file = _HostsFile(self.path)
        self._ssh1_file = _HostsFile(self.ssh1_path)
        try:
            self.move_ssh1_lines()
        except KnownHostsError:
            pass  # logged; the checks report the unusable file when they need it

    # -- public API ------------------------------------------------------------------

    def check_ssh2(
        self, host: str, port: int, key: keys.Key, policy: str, target: str | None = None
    ) -> HostKeyPin:
        """Return if ``key`` may be trusted for ``host:port`` under ``policy``, with the
        pin to :meth:`~HostKeyPin.record` once the key exchange succeeded; raise
        HostKeyChanged / HostKeyUnknown / HostKeyRevoked (whose message is what the user
        is shown) otherwise. ``target`` names the config's target, for the audit trail."""
        public = key.public()
        blob = public.blob()
        key_type = public.sshType().decode("ascii")
        fingerprint = ssh2_fingerprint(public)
        offered = _Offered(
            "ssh2",
            key_type,
            blob,
            0,
            0,
            fingerprint,
            f"{key_type} {base64.b64encode(blob).decode('ascii')}",
            fingerprint,
        )
        return self._check(host, port, offered, policy, target)

    def check_ssh1(
        self, host: str, port: int, bits: int, e: int, n: int, policy: str, target: str | None = None
    ) -> HostKeyPin:
        """As :meth:`check_ssh2`, for an SSH-1 RSA host key (modulus ``n``, exponent ``e``)."""
        sha256 = ssh1_sha256_fingerprint(e, n)
        md5 = ssh1_fingerprint(e, n)
        offered = _Offered(
            "ssh1", "rsa1", b"", e, n, f"{sha256} (MD5 {md5})", f"{bits} {e} {n}", sha256, md5
        )
        return self._check(host, port, offered, policy, target)

    def up_to_date(self, host: str, port: int, protocol: str) -> Deferred[None]:
        """Fires once the pins for ``host:port`` are as current as they can be before a
        check: at once here (the file is read at each check); a shared store re-reads a
        host it has no pin for, so that another instance's pin is not missed."""
        return succeed(None)

    def ssh2_key_types(self, host: str, port: int) -> list[str]:
        """SSH-2 key types already recorded for ``host:port`` (file order), so the
        client can prefer them in its host key algorithm list."""
        name = host_name(host, port)
        types: list[str] = []
        for entry in self._entries("ssh2"):
            if not entry.marker and entry.matches(name):
                if entry.key_type not in types:
                    types.append(entry.key_type)
        return types

    def forget(
        self, host: str, port: int, protocols: tuple[str, ...] = ("ssh1", "ssh2")
    ) -> list[ForgottenKey]:
        """Remove every key recorded for ``host:port`` (of ``protocols``), as ``ssh-keygen
        -R`` does: whole lines, hashed ones included; ``@revoked`` and ``@cert-authority``
        lines stay. Returns what was removed."""
        name = host_name(host, port)
        removed: list[ForgottenKey] = []

        def wanted(entry: _Entry) -> bool:
            return entry.protocol in protocols and not entry.marker and entry.matches(name)

        for hosts_file in (self._ssh2_file, self._ssh1_file):
            if not os.path.lexists(hosts_file.path):
                continue
            with hosts_file.locked() as (_fd, data):
                kept: list[bytes] = []
                gone: list[_Entry] = []
                for raw, entry in _lines(data, hosts_file.path):
                    if entry is not None and wanted(entry):
                        gone.append(entry)
                    else:
                        kept.append(raw)
                if gone:
                    hosts_file.replace(_without_last_empty(kept, data))
            for entry in gone:
                removed.append(
                    ForgottenKey(
                        entry.protocol, entry.key_type, entry.fingerprint, entry.path, entry.line
                    )
                )
                log.info(
                    "known_hosts: forgot {type} host key {fp} for {host}:{port} ({path}:{line})",
                    type=entry.key_type,
                    fp=entry.fingerprint,
                    host=host,
                    port=port,
                    path=entry.path,
                    line=entry.line,
                )
        return removed

    def move_ssh1_lines(self) -> int:
        """Move SSH-1 lines out of the SSH-2 file into the SSH-1 one (a gateway before
        the split kept both in one file, which ``ssh-keygen -R/-H`` refuse); returns how
        many. Done when the file is opened; the SSH-1 checks honour such lines meanwhile."""
        if not any(entry.protocol == "ssh1" for entry in self._ssh2_file.entries()):
            return 0
        with self._ssh2_file.locked() as (_fd, data):
            kept: list[bytes] = []
            moved: list[str] = []
            for raw, entry in _lines(data, self.path):
                if entry is not None and entry.protocol == "ssh1":
                    moved.append(raw.decode("utf-8", "replace").strip())
                else:
                    kept.append(raw)
            if not moved:
                return 0
            with self._ssh1_file.locked() as (fd1, data1):
                present = {line.strip() for line in data1.decode("utf-8", "replace").split("\n")}
                self._ssh1_file.append(fd1, data1, [line for line in moved if line not in present])
            self._ssh2_file.replace(_without_last_empty(kept, data))
        log.info(
            "known_hosts: moved {count} SSH-1 line(s) from {path} to {ssh1_path}",
            count=len(moved),
            path=self.path,
            ssh1_path=self.ssh1_path,
        )
        return len(moved)

    # -- the decision ----------------------------------------------------------------

    def _check(
        self, host: str, port: int, offered: _Offered, policy: str, target: str | None = None
    ) -> HostKeyPin:
        with _audited(target, host, port, offered):
            return self._decide(host, port, offered, policy, target)

    def _decide(
        self, host: str, port: int, offered: _Offered, policy: str, target: str | None
    ) -> HostKeyPin:
        policy = policy.strip()
        if policy not in POLICIES:
            self._check_fingerprint(host, port, offered, policy)
            return HostKeyPin(None, host, port, offered)
        verdict = self._judge(self._entries(offered.protocol), host, port, offered)
        if verdict == "ok":
            return HostKeyPin(None, host, port, offered)
        if policy == "strict":
            log.warn(
                "upstream {host}:{port}: unknown {type} host key {fp}, refused (strict)",
                host=host,
                port=port,
                type=offered.key_type,
                fp=offered.fingerprint,
            )
            raise HostKeyUnknown(
                f"host key for {host}:{port} is not known ({offered.key_type} "
                f'{offered.fingerprint}) and host_key is "strict": refusing to connect; '
                f"an administrator must add it to {self._file(offered.protocol).path}"
            )
        return HostKeyPin(self, host, port, offered, target)

    def _judge(self, entries: list[_Entry], host: str, port: int, offered: _Offered) -> str:
        """Return "ok" or "unknown"; raise for revoked and changed keys."""
        name = host_name(host, port)
        known: _Entry | None = None
        for entry in entries:
            if entry.protocol != offered.protocol or entry.marker == "@cert-authority":
                continue
            same = entry.same_key(offered.blob, offered.e, offered.n)
            if entry.marker == "@revoked":
                if same:
                    self._revoked(host, port, offered, entry)
                continue
            if not entry.matches(name):
                continue
            if same:
                return "ok"
            if known is None:
                known = entry
        if known is None:
            return "unknown"
        log.error(
            "upstream {host}:{port}: host key CHANGED: offered {type} {fp}, known key at "
            "{path}:{line}; refused",
            host=host,
            port=port,
            type=offered.key_type,
            fp=offered.fingerprint,
            path=known.path,
            line=known.line,
        )
        changed = HostKeyChanged(
            f"WARNING: host key for {host}:{port} has CHANGED! Someone could be "
            f"eavesdropping (man-in-the-middle attack), or the host key was replaced. "
            f"It now offers {offered.key_type} key {offered.fingerprint}; the known key "
            f"is in {known.path}:{known.line}. Refusing to connect: if the change is "
            f"expected, an administrator must remove that line (sshgateway known-hosts "
            f"forget)."
        )
        changed.pinned = f"{known.path}:{known.line}"
        raise changed

    def _revoked(self, host: str, port: int, offered: _Offered, entry: _Entry) -> None:
        log.error(
            "upstream {host}:{port}: offered REVOKED {type} host key {fp} ({path}:{line}); refused",
            host=host,
            port=port,
            type=offered.key_type,
            fp=offered.fingerprint,
            path=entry.path,
            line=entry.line,
        )
        raise HostKeyRevoked(
            f"WARNING: host key for {host}:{port} ({offered.key_type} {offered.fingerprint}) "
            f"is REVOKED in {entry.path}:{entry.line}: refusing to connect"
        )

    def _check_fingerprint(self, host: str, port: int, offered: _Offered, policy: str) -> None:
        wanted = [p.strip() for p in policy.split(",") if p.strip()]
        if not wanted or not all(_valid_fingerprint(p, offered.protocol) for p in wanted):
            log.error("upstream {host}:{port}: malformed host_key policy", host=host, port=port)
            raise KnownHostsError(
                f'host_key for {host}:{port} is neither "accept-new", "strict" nor a '
                f"valid fingerprint ({'SHA256' if offered.protocol == 'ssh2' else 'SHA256 or MD5'})"
            )
        if any(_same_fingerprint(p, offered) for p in wanted):
            return
        log.error(
            "upstream {host}:{port}: host key {type} {fp} does not match the configured "
            "fingerprint; refused",
            host=host,
            port=port,
            type=offered.key_type,
            fp=offered.fingerprint,
        )
        changed = HostKeyChanged(
            f"WARNING: host key for {host}:{port} has CHANGED! It offers "
            f"{offered.key_type} key {offered.fingerprint}, the configuration expects "
            f"{', '.join(wanted)}. Someone could be eavesdropping (man-in-the-middle "
            f"attack). Refusing to connect."
        )
        changed.pinned = "config: " + ", ".join(wanted)
        raise changed

    # -- the files -------------------------------------------------------------------

    def _file(self, protocol: str) -> _HostsFile:
        return self._ssh1_file if protocol == "ssh1" else self._ssh2_file

    def _entries(self, protocol: str) -> list[_Entry]:
        """The entries that speak about ``protocol`` keys: for SSH-1 those of its own file
        and any still in the SSH-2 file (not moved yet)."""
        if protocol == "ssh2":
            return [e for e in self._ssh2_file.entries() if e.protocol == "ssh2"]
        stray = [e for e in self._ssh2_file.entries() if e.protocol == "ssh1"]
        return [e for e in self._ssh1_file.entries() if e.protocol == "ssh1"] + stray

    def _append(self, host: str, port: int, offered: _Offered) -> bool:
        target = self._file(offered.protocol)
        with target.locked() as (fd, data):
            # Another session (or process) may have recorded this host while we waited.
            entries = _parse(data, target.path)
            if offered.protocol == "ssh1":
                entries += [e for e in self._ssh2_file.entries() if e.protocol == "ssh1"]
            if self._judge(entries, host, port, offered) == "ok":
                return False
            target.append(fd, data, [f"{host_name(host, port)} {offered.line}"])
        log.info(
            "known_hosts: recorded {type} host key {fp} for {host}:{port} (accept-new)",
            type=offered.key_type,
            fp=offered.fingerprint,
            host=host,
            port=port,
        )
        return True


def _without_last_empty(lines: list[bytes], data: bytes) -> list[bytes]:
    """``data.split(b"\\n")`` ends in an empty piece when the file ended with a newline:
    drop it, so that a rewrite does not grow a blank line each time."""
    if lines and data.endswith(b"\n") and lines[-1] == b"":
        return lines[:-1]
    return lines


def valid_policy(policy: str, protocol: str) -> bool:
    """Whether ``policy`` is a usable ``host_key`` value for a ``protocol`` ("ssh1" or
    "ssh2") target, for configuration checks at start-up."""
    policy = policy.strip()
    if policy in POLICIES:
        return True
    wanted = [p.strip() for p in policy.split(",") if p.strip()]
    return bool(wanted) and all(_valid_fingerprint(p, protocol) for p in wanted)


def _valid_fingerprint(text: str, protocol: str) -> bool:
    if text.startswith("SHA256:"):
        body = text[7:].rstrip("=")
        return len(body) == 43 and _b64_ok(body + "=")
    if protocol != "ssh1":
        return False  # MD5 only for SSH-1, where the clients still show it
    body = text[4:] if text.upper().startswith("MD5:") else text
    parts = body.split(":")
    return len(parts) == 16 and all(
        len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts
    )


def _b64_ok(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _same_fingerprint(wanted: str, offered: _Offered) -> bool:
    if wanted.startswith("SHA256:"):
        return wanted.rstrip("=") == offered.sha256
    body = wanted[4:] if wanted.upper().startswith("MD5:") else wanted
    return offered.md5 is not None and body.lower() == offered.md5
