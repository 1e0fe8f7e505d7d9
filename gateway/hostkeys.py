"""The gateway's host keys: created on first start under the state directory, reused
afterwards, refused when other users could read them; their fingerprints as clients
display them; and :func:`key_error_reason`, the words for a key file that cannot be read
(never its contents).

Files (all 0600, in a 0700 state directory):

==============================  ===================================================
``ssh_host_ed25519_key``        SSH-2 Ed25519 host key (OpenSSH private key format)
``ssh_host_rsa_key``            SSH-2 RSA-3072 host key (OpenSSH private key format),
                                offered as rsa-sha2-512, rsa-sha2-256 (and ssh-rsa
                                if the operator enables it)
``ssh1_host_key``               SSH-1 RSA-2048 host key (PKCS#8 PEM)
``targets/NAME_ed25519_key``    SSH-2 Ed25519 host key the gateway shows for target
                                NAME when it answers inside a jump channel (SSH-1
                                and telnet targets, gateway.inner_ssh2); made at its
                                first use, by :func:`load_or_create_target_key`
==============================  ===================================================
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.ssh import keys
from twisted.logger import Logger

from protocols.fingerprint import sha256_fingerprint
from protocols.ssh1.keys import ssh1_fingerprint, ssh1_sha256_fingerprint

ED25519_FILE = "ssh_host_ed25519_key"
RSA_FILE = "ssh_host_rsa_key"
SSH1_FILE = "ssh1_host_key"
TARGET_KEYS_DIR = "targets"  # under the state directory: one host key per target
TARGET_KEY_SUFFIX = "_ed25519_key"
SSH2_RSA_BITS = 3072
SSH1_HOST_KEY_BITS = 2048
# Names under which the SSH-2 side looks up the RSA host key (one key, three algorithms).
RSA_ALGORITHMS = (b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa")
MAX_KEY_FILE_BYTES = 64 * 1024

_log = Logger()


class HostKeyError(Exception):
    """A host key file exists but must not or cannot be used; the message says why."""


def ssh2_fingerprint(key: keys.Key) -> str:
    """``SHA256:<base64 without padding>`` of the public key blob, as OpenSSH shows it."""
    return sha256_fingerprint(key.public().blob())


def key_error_reason(exc: BaseException) -> str:
    """Why a key file could not be loaded, for an error message or a log line.

    Never ``str(exc)``: the parsers' own messages can quote the file (Conch's ``cannot
    guess the type of b'...'`` holds the whole of a DER private key), so only the kind
    of failure becomes words; the caller names the file."""
    if isinstance(exc, keys.EncryptedKeyError) or isinstance(exc, TypeError):
        # cryptography says TypeError for "encrypted, but no password given".
        return "it is encrypted with a passphrase; store it unencrypted"
    if isinstance(exc, keys.BadKeyError):
        return "not an OpenSSH or PEM private key"
    if isinstance(exc, ValueError):
        return "damaged or unsupported key data"
    return f"unreadable key data ({type(exc).__name__})"


@dataclass(frozen=True)
class HostKeyInfo:
    """One host key as ``sshgateway fingerprints`` prints it."""

    protocol: str  # "ssh2" | "ssh1"
    type: str  # "ssh-ed25519", "ssh-rsa", "rsa1"
    bits: int
    fingerprint: str  # SHA256:..., as OpenSSH shows it (ssh -v, ssh1 -v, ssh-keygen -l)
    path: Path
    md5: str | None = None  # SSH-1 only: colon-hex, as PuTTY shows it

    @property
    def fingerprints(self) -> str:
        """Every form a client shows: ``SHA256:…``, and for SSH-1 also ``MD5:…`` (which
        ``plink -hostkey``, ``ssh-keygen1 -E md5`` and ``host_key`` all take)."""
        return self.fingerprint if self.md5 is None else f"{self.fingerprint} MD5:{self.md5}"


@dataclass
class HostKeys:
    ssh2: dict[bytes, keys.Key]  # algorithm name -> private key
    ssh1: rsa.RSAPrivateKey
    paths: dict[str, Path] = field(default_factory=dict)

    def ssh2_public(self) -> dict[bytes, keys.Key]:
        return {name: key.public() for name, key in self.ssh2.items()}

    def infos(self) -> list[HostKeyInfo]:
        seen: set[bytes] = set()
        result = []
        for key in self.ssh2.values():
            blob = key.public().blob()
            if blob in seen:
                continue
            seen.add(blob)
            path = self.paths[ED25519_FILE if key.type() == "Ed25519" else RSA_FILE]
            result.append(
                HostKeyInfo(
                    "ssh2", key.sshType().decode("ascii"), key.size(), ssh2_fingerprint(key), path
                )
            )
        numbers = self.ssh1.public_key().public_numbers()
        result.append(
            HostKeyInfo(
                "ssh1",
                "rsa1",
                self.ssh1.key_size,
                ssh1_sha256_fingerprint(numbers.e, numbers.n),
                self.paths[SSH1_FILE],
                ssh1_fingerprint(numbers.e, numbers.n),
            )
        )
        return result


def _check_private(path: Path) -> bytes:
    """Read a key file after making sure nobody else could have read it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise HostKeyError(f"{path}: cannot open host key: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise HostKeyError(f"{path}: host key is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise HostKeyError(
                f"{path}: permissions {mode:04o} are too open: a private host key must not be "
                f"accessible by group or others (run: chmod 600 {path})"
            )
        data = f.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise HostKeyError(f"{path}: host key file is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def write_new_private_file(path: Path, data: bytes) -> bool:
    """Create ``path`` (0600) atomically; False if another process created it first."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if it exists: never replace a key someone made
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _ssh2_key(path: Path, expected: str, min_bits: int) -> keys.Key:
    data = _check_private(path)
    try:
        key = keys.Key.fromString(data)
    except Exception as e:
        raise HostKeyError(f"{path}: not a readable private key ({key_error_reason(e)})") from None
    if key.isPublic() or key.type() != expected:
        raise HostKeyError(f"{path}: expected a private {expected} key, found {key.type()}")
    if key.size() < min_bits:
        raise HostKeyError(f"{path}: {key.size()}-bit key is too small (at least {min_bits})")
    return key


def _ssh1_key(path: Path) -> rsa.RSAPrivateKey:
    data = _check_private(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise HostKeyError(
            f"{path}: not a readable unencrypted PEM private key ({key_error_reason(e)})"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise HostKeyError(f"{path}: the SSH-1 host key must be RSA")
    if not 1024 <= key.key_size <= 8192:
        raise HostKeyError(f"{path}: {key.key_size}-bit SSH-1 host key is out of range")
    return key


def _generate(name: str) -> bytes:
    if name == ED25519_FILE:
        return keys.Key(ed25519.Ed25519PrivateKey.generate()).toString("OPENSSH")
    if name == RSA_FILE:
        return keys.Key(rsa.generate_private_key(65537, SSH2_RSA_BITS)).toString("OPENSSH")
    key = rsa.generate_private_key(65537, SSH1_HOST_KEY_BITS)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_state_dir(state_dir: Path) -> None:
    if not state_dir.exists():
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        os.chmod(state_dir, 0o700)  # makedirs' mode is filtered by the umask
        _log.info("created state directory {path}", path=str(state_dir))
    elif not state_dir.is_dir():
        raise HostKeyError(f"{state_dir}: state_dir is not a directory")


def _load(state_dir: Path) -> HostKeys:
    paths = {name: state_dir / name for name in (ED25519_FILE, RSA_FILE, SSH1_FILE)}
    ed = _ssh2_key(paths[ED25519_FILE], "Ed25519", 256)
    rsa_key = _ssh2_key(paths[RSA_FILE], "RSA", 2048)
    ssh2 = {b"ssh-ed25519": ed}
    ssh2.update({name: rsa_key for name in RSA_ALGORITHMS})
    return HostKeys(ssh2=ssh2, ssh1=_ssh1_key(paths[SSH1_FILE]), paths=paths)


def load_host_keys(state_dir: str | os.PathLike[str]) -> HostKeys:
    """Load existing host keys; :class:`HostKeyError` if any is missing or unusable."""
    return _load(Path(state_dir))


def load_or_create_host_keys(state_dir: str | os.PathLike[str]) -> HostKeys:
    """Load the host keys, first generating whichever do not exist yet."""
    directory = Path(state_dir)
    ensure_state_dir(directory)
    for name in (ED25519_FILE, RSA_FILE, SSH1_FILE):
        path = directory / name
        if not os.path.lexists(path) and write_new_private_file(path, _generate(name)):
            _log.info("generated host key {path}", path=str(path))
    host_keys = _load(directory)
    for info in host_keys.infos():
        _log.info(
            "host key {type} {bits} {fingerprint} ({protocol})",
            type=info.type,
            bits=info.bits,
            fingerprint=info.fingerprints,
            protocol=info.protocol,
        )
    return host_keys


def target_key_path(state_dir: str | os.PathLike[str], target: str) -> Path:
    """Where the host key the gateway shows for ``target`` in a jump channel lives (the
    config keeps target names to ``A-Z a-z 0-9 . _ -``, so the name is a file name)."""
    if not target or "/" in target or target.startswith("."):
        raise HostKeyError(f"{target!r} is not a target name")
    return Path(state_dir) / TARGET_KEYS_DIR / (target + TARGET_KEY_SUFFIX)


def load_target_key(state_dir: str | os.PathLike[str], target: str) -> keys.Key:
    """The existing host key of ``target``; :class:`HostKeyError` if there is none yet or
    it is unusable."""
    return _ssh2_key(target_key_path(state_dir, target), "Ed25519", 256)


def load_or_create_target_key(state_dir: str | os.PathLike[str], target: str) -> keys.Key:
    """The host key of ``target``, generated (Ed25519, 0600, in a 0700 directory) when it
    does not exist yet."""
    path = target_key_path(state_dir, target)
    ensure_state_dir(Path(state_dir))
    ensure_state_dir(path.parent)
    if not os.path.lexists(path) and write_new_private_file(path, _generate(ED25519_FILE)):
        key = load_target_key(state_dir, target)
        _log.info(
            "generated host key {path} for target {target}: ssh-ed25519 {fingerprint}",
            path=str(path),
            target=target,
            fingerprint=ssh2_fingerprint(key),
        )
        return key
    return load_target_key(state_dir, target)
