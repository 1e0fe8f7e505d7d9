"""What a probe finds, as plain data: per host a :class:`HostReport` holding the SSH-1
offer, the SSH-2 KEXINIT and host keys, the logins made with ``--user``; and the
:class:`Credentials` those logins use. The attempts fill these in; the output formats and
the logins only read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocols.ssh2.kexinit import KexInit


@dataclass
class SSH1Offer:
    host_key_bits: int
    host_key_announced_bits: int
    host_key_md5: str  # colon-hex, as plink shows it
    host_key_sha256: str  # SHA256:..., as ssh-keygen1 -l shows it
    server_key_bits: int
    server_key_announced_bits: int
    ciphers: list[str]
    cipher_mask: int
    auth: list[str]
    auth_mask: int
    flags: list[str]
    flags_mask: int
    warnings: list[str] = field(default_factory=list)


@dataclass
class HostKey:
    algorithm: str  # the host key algorithm this key exchange used
    type: str  # the key's own type (ssh-ed25519, ssh-rsa, ...)
    bits: int | None
    fingerprint: str  # SHA256:...
    verified: bool  # the server proved it holds the key (exchange signature checked)


@dataclass
class SSH1Result:
    available: bool | None = None  # None: could not tell (no answer, refused)
    reason: str | None = None
    offer: SSH1Offer | None = None


@dataclass
class SSH2Result:
    available: bool | None = None
    reason: str | None = None
    kexinit: KexInit | None = None
    host_keys: list[HostKey] = field(default_factory=list)
    key_errors: list[str] = field(default_factory=list)


@dataclass
class LoginResult:
    """One login over one protocol (``--user``): its flow record's id for flows compare."""

    protocol: str
    ok: bool = False
    exit_status: int | None = None
    flow_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Credentials:
    """What ``--user`` / ``--password`` / ``--key`` give; never printed (no password in
    any repr) and never recorded."""

    user: str
    password: str | None = field(default=None, repr=False)
    key: Path | None = None
    state_dir: Path = Path("sshgateway-state")
    command: str = "true"
    flows: Any = field(default=None, repr=False, compare=False)  # gateway.flows.FlowWriter


@dataclass
class HostReport:
    target: str
    host: str
    port: int
    status: str = "error"  # ok | refused | timeout | error
    error: str | None = None
    identification: str | None = None
    protocols: list[str] = field(default_factory=list)
    ssh1: SSH1Result = field(default_factory=SSH1Result)
    ssh2: SSH2Result = field(default_factory=SSH2Result)
    logins: list[LoginResult] = field(default_factory=list)  # with --user only
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
