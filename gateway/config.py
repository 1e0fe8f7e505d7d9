"""The gateway's configuration: the TOML file, its validation (with file, line and key in
every error), and the embedded default a newcomer starts with.

Reference (Markdown, ready for the README; :func:`reference_table` writes it from the
schema below, which also drives the checks). Every key is listed; any other key is an
error, so that a typo cannot silently weaken security. Relative paths are relative to the
config file's directory; `~` is expanded. Numbers are seconds unless said otherwise.

{reference_table}

Routing: a login name `alice+switch1` authenticates `alice` and asks for target `switch1`.
Without `+TARGET` the user's `target` is used; else an interactive session (shell, no
command) of a user with several targets gets a numbered menu; else `local` if allowed,
else the user's only target. A target that does not exist and one the user may not reach
get the same answer: one line on stderr and exit status 255.

Access to `local`: nothing is granted by default. A user reaches `local` only when its
`targets` names it, and then runs as the OS account its `os_user` names (required with
`local`). Run as root, the gateway may start programs as any existing account; run as
anyone else, `os_user` may only name the gateway's own account (:class:`LocalAccounts`).
A user with no targets at all is an error.

Without a config file (:func:`default_config`): listen on 127.0.0.1:2222, state in
`./sshgateway-state`, one user — the invoking OS user — with `~/.ssh/authorized_keys`
and a generated password, who reaches `local` as that same OS account: :func:`ensure_default_password` (called by the service at start)
creates it on first start, prints it once to the log (`initial password for USER: ...`)
and keeps only its hash in `<state_dir>/default-password.hash` (0600). Delete that file
and restart for a new one.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import pwd
import re
import secrets
import stat
import tomllib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from gateway import passwords, quirks
from gateway.hostkeys import SSH1_HOST_KEY_BITS, ensure_state_dir, write_new_private_file
from gateway.limits import LimitsConfig, MaxStartups, Netblock, parse_network
from gateway.penalties import AUTHFAIL, GRACE_EXCEEDED, MALFORMED, NOAUTH, PenaltyRules
from gateway.privsep import run_as_problem
from gateway.targets import TargetConfig
from gateway.targets.registry import TARGET_PROTOCOLS
from protocols.auth import METHOD_PASSWORD, METHOD_PUBLICKEY, AuthLimits
from protocols.forwarding import split_host_port
from protocols.ssh1.settings import KEY_SIZE_GAP as SSH1_KEY_SIZE_GAP
from protocols.ssh1.settings import KNOWN_CIPHERS as SSH1_KNOWN_CIPHERS
from protocols.ssh1.settings import SSH1Settings
from protocols.ssh2.algorithms import CLIENT as SSH2_CLIENT
from protocols.ssh2.algorithms import SERVER as SSH2_SERVER
from protocols.ssh2.algorithms import is_legacy as ssh2_is_legacy
from protocols.ssh2.algorithms import known as ssh2_known
from protocols.ssh2.settings import SSH2Settings

DEFAULT_LISTEN = ("tcp:2222:interface=127.0.0.1",)
DEFAULT_STATE_DIR = "sshgateway-state"
DEFAULT_PROTOCOLS = ("1", "2")
DEFAULT_VERSION_TIMEOUT = 30.0
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_ENV_ALLOW = ("LANG", "LC_*")
DEFAULT_PASSWORD_FILE = "default-password.hash"
LOG_FORMATS = ("text", "json")  # gateway.logformat writes "json"
MAX_CONFIG_BYTES = 1024 * 1024

_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}\Z")
# No "+" (it separates user and target in a login name) and no "@" (ssh user@host).
_TARGET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}\Z")
LOCAL_TARGET = "local"
# An OS account name as useradd takes it (and no more than sshd would look up).
_OS_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,31}\$?\Z")
_log = Logger()


@dataclass(frozen=True)
class UserConfig:
    name: str
    password_hash: str | None = None
    authorized_keys: Path | None = None
    auth: str = "any"  # "any" | "all"
    target: str | None = None  # default target when the login name has no +TARGET
    targets: tuple[str, ...] = ()  # targets this user may reach (none unless configured)
    os_user: str | None = None  # the OS account ``local`` runs as; None: no local access
    # Raw SSH-2 direct-tcpip destinations ("host:port") beyond the user's targets; none by default.
    permit_open: tuple[str, ...] = ()
    # Whether this user's sessions are recorded (gateway.recording); None: [recording] enabled.
    record: bool | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        """The authentication methods configured for this user (SSH-2 spelling)."""
        found = []
        if self.password_hash is not None:
            found.append(METHOD_PASSWORD)
        if self.authorized_keys is not None:
            found.append(METHOD_PUBLICKEY)
        return tuple(found)


@dataclass(frozen=True)
class LocalAccounts:
    """Which OS accounts ``os_user`` may name, as seen when the config is checked: any
    existing one for a gateway that runs as root (``privileged``), else only its own."""

    privileged: bool
    own: str | None  # the gateway's own account; None if its uid has no passwd entry
    exists: Callable[[str], bool] = lambda name: _account_exists(name)

    @classmethod
    def of_this_process(cls) -> LocalAccounts:
        """The running process: root is effective uid 0. (A gateway that starts as root
        and drops privileges later counts as root: its launcher keeps what it needs.)"""
        return cls(privileged=os.geteuid() == 0, own=own_account())

    def problem(self, name: str) -> str | None:
        """What is wrong with ``os_user = name`` here, if anything."""
        if self.privileged:
            return None if self.exists(name) else f"no OS account named {name!r} on this host"
        if name == self.own:
            return None
        own = repr(self.own) if self.own is not None else f"uid {os.geteuid()}"
        return (
            f"the gateway does not run as root, so local sessions can only run as its own "
            f"account {own}, not {name!r}"
        )


def own_account() -> str | None:
    """The name of the OS account the process runs as (its effective uid)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# Where OpenSSH packages put sftp-server (Debian and Ubuntu; RHEL, Fedora and SUSE; Arch):
# the program that serves `subsystem sftp` on local unless [session] sftp_server names one.
SFTP_SERVER_PATHS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
)


@dataclass(frozen=True)
class FlowsConfig:
    """The ``[flows]`` table: flow recording (gateway.flows)."""

    enabled: bool = True
    max_bytes: int = 10 * 1024 * 1024
    keep: int = 5


# Syslog facilities ``[audit] syslog_facility`` may name (Python's syslog.LOG_<NAME>).
SYSLOG_FACILITIES = ("auth", "authpriv", "daemon", "user") + tuple(f"local{i}" for i in range(8))


@dataclass(frozen=True)
class AuditConfig:
    """The ``[audit]`` table: the audit trail (gateway.audit)."""

    enabled: bool = True
    max_bytes: int = 10 * 1024 * 1024
    keep: int = 10
    syslog: bool = False
    syslog_facility: str = "authpriv"


@dataclass(frozen=True)
class StoreConfig:
    """The ``[store]`` table: shared state in PostgreSQL (gateway.store); no ``url``: none,
    everything stays in the local state_dir."""

    url: str | None = None
    key: str | None = None  # Fernet key for the host keys at rest (or key_file)
    key_file: Path | None = None
    queue_max: int = 10000  # writes held while the database is unreachable
    cache_ttl: float = 2.0  # seconds a read of shared pins and penalties is reused
    # Not a config key: set in worker process N (gateway.worker), whose rows in the shared
    # session registry are its own (gateway.store.instance_name).
    worker: int | None = None


def _bad_store_url(url: str) -> str | None:
    if not url.startswith(("postgresql://", "postgres://")):
        return 'must be a PostgreSQL URL: "postgresql://user@host/dbname"'
    return None


@dataclass(frozen=True)
class MetricsConfig:
    """The ``[metrics]`` table: the Prometheus endpoint (gateway.metrics)."""

    listen: str | None = None  # a Twisted endpoint string serving /metrics; None: off


@dataclass(frozen=True)
class RecordingConfig:
    """The ``[recording]`` table: session recordings (gateway.recording)."""

    enabled: bool = True
    input: bool = False
    dir: Path | None = None  # None: <state_dir>/recordings
    max_age_days: float = 90.0  # 0: kept whatever their age
    max_total_bytes: int = 10 * 1024**3  # 0: no limit on the total


@dataclass(frozen=True)
class ControlConfig:
    """The ``[control]`` table: the control socket (gateway.control)."""

    socket: Path | None = None  # None: <state_dir>/control.sock


@dataclass(frozen=True)
class GatewayConfig:
    listen: tuple[str, ...] = DEFAULT_LISTEN
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    version_timeout: float = DEFAULT_VERSION_TIMEOUT
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    log_format: str = "text"  # "text" | "json" (gateway.logformat)
    users: Mapping[str, UserConfig] = field(default_factory=dict)
    # Always holds the built-in ``local``; upstream targets come from [targets.NAME].
    targets: Mapping[str, TargetConfig] = field(
        default_factory=lambda: {LOCAL_TARGET: TargetConfig(LOCAL_TARGET, "local")}
    )
    auth_limits: AuthLimits = field(default_factory=AuthLimits)
    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW
    # Whether authorized_keys environment="NAME=value" options reach the session.
    permit_user_environment: bool = False
    # The program that serves `subsystem sftp` on local; None: the usual places.
    sftp_server: Path | None = None
    ssh2: SSH2Settings = field(default_factory=SSH2Settings)
    ssh1: SSH1Settings = field(default_factory=SSH1Settings)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    run_as: str | None = None  # the account to drop to after binding (gateway.privsep)
    workers: int = 1  # reactor processes serving the endpoints (gateway.workers); 1: this one
    source: Path | None = None  # the file it came from; None for the embedded default
    # The user who gets a generated password (embedded default only).
    default_password_user: str | None = None

    @property
    def default_password_file(self) -> Path:
        return self.state_dir / DEFAULT_PASSWORD_FILE


# --- errors with positions ---------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    key: str
    message: str
    text: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        head = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        return f"{head}\n    {self.text}" if self.text else head


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` lists every error found; the message
    names file, line, key and shows the line (password values redacted)."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# Any key that may hold a secret, typos included ("pasword"), has its value hidden.
_PASSWORD_LINE = re.compile(r"""^(\s*[^=#]*(?:pas|pw|secret)[^=]*=\s*).*$""", re.I)


def _redact(text: str) -> str:
    """A config line fit for an error message: the value of any password key hidden."""
    return _PASSWORD_LINE.sub(lambda m: m.group(1) + '"<redacted>"', text.strip())


_KEY_PART = re.compile(r"""\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|'([^']*)')\s*""")


def _key_path(text: str, pos: int = 0) -> tuple[tuple[str, ...], int] | None:
    """Parse a dotted TOML key at ``text[pos:]``; returns (parts, end) or None."""
    parts: list[str] = []
    while True:
        m = _KEY_PART.match(text, pos)
        if m is None:
            return None
        bare, basic, literal = m.groups()
        if basic is not None:
            try:
                basic = tomllib.loads(f'k = "{basic}"')["k"]
            except tomllib.TOMLDecodeError:
                return None
        parts.append(bare if bare is not None else basic if basic is not None else literal)
        pos = m.end()
        if text.startswith(".", pos):
            pos += 1
            continue
        return tuple(parts), pos


class _Lines:
    """Where each key of a TOML text is, found by a light scan (tomllib keeps no positions)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.where: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(self.lines, start=1):
            stripped = line.lstrip()
            if stripped.startswith("["):
                start = 2 if stripped.startswith("[[") else 1
                parsed = _key_path(stripped, start)
                if parsed is not None and stripped[parsed[1] :].lstrip().startswith("]"):
                    table = parsed[0]
                    self.where.setdefault(table, number)
                continue
            parsed = _key_path(line)
            if parsed is not None and line[parsed[1] :].startswith("="):
                self.where.setdefault(table + parsed[0], number)

    def locate(self, path: tuple[str, ...]) -> tuple[int | None, str]:
        for length in range(len(path), 0, -1):
            number = self.where.get(path[:length])
            if number is not None:
                return number, _redact(self.lines[number - 1])
        return None, ""

    def text(self, number: int) -> str:
        if 1 <= number <= len(self.lines):
            return _redact(self.lines[number - 1])
        return ""


class _Validator:
    def __init__(self, source: str, lines: _Lines | None, base: Path) -> None:
        self.source = source
        self.lines = lines
        self.base = base  # relative paths in the file are relative to this
        self.problems: list[ConfigProblem] = []

    def error(self, path: tuple[str, ...], message: str, *, hide_value: bool = False) -> None:
        line, text = self.lines.locate(path) if self.lines else (None, "")
        if hide_value and "=" in text:
            text = text.split("=", 1)[0] + '= "<redacted>"'
        self.problems.append(ConfigProblem(self.source, line, ".".join(path), message, text))

    def table(self, data: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
        value = data.get(path[-1], {})
        if not isinstance(value, dict):
            self.error(path, "must be a table")
            return None
        return value

    def named_table(
        self, path: tuple[str, str], raw: Any, kind: NamedTables
    ) -> dict[str, Any] | None:
        """A ``[SECTION.NAME]`` table: its name must match ``kind.pattern`` (``kind.rule``
        says how to the user) and its value must be a table."""
        section, name = path
        if not kind.pattern.match(name):
            self.error(path, kind.rule)
            return None
        if not isinstance(raw, dict):
            self.error(path, f"must be a table ([{section}.NAME])")
            return None
        return raw

    def known(self, data: Mapping[str, Any], path: tuple[str, ...], keys: Collection[str]) -> None:
        for key in data:
            if key not in keys:
                hint = f" (known here: {', '.join(sorted(keys))})" if keys else ""
                # A misspelled key in a user table may well hold a password.
                hidden = path[:1] == ("users",)
                self.error(path + (key,), f"unknown key{hint}", hide_value=hidden)

    # Reading by the schema.

    def read(
        self, data: Mapping[str, Any], table: tuple[str, ...], key: Key, default: Any = None
    ) -> Any:
        """The value of ``key`` in the table at path ``table`` (its ``data``); ``default``
        replaces the schema's where it depends on other keys (a target's port)."""
        if key.required and key.name not in data:
            hint = f" ({', '.join(key.kind.options)})" if isinstance(key.kind, Choice) else ""
            self.error(table, f"{key.name} is required{hint}")
            return None
        return key.kind.read(
            self, data, table + (key.name,), key.default if default is None else default
        )

    def read_table(
        self, data: Mapping[str, Any], table: tuple[str, ...], name: str, **defaults: Any
    ) -> dict[str, Any]:
        """Every key of schema table ``name`` (e.g. ``"users.NAME"``), by key name."""
        return {
            key.name: self.read(data, table, key, defaults.get(key.name)) for key in _rows(name)
        }


# --- the schema ----------------------------------------------------------------------------
#
# One row per key: the table it sits in, how its value is read and checked (type, range,
# choices, default), the target protocols that take it, and its line in the reference.
# The unknown-key checks, the typed reading and reference_table() all come from these
# rows; the rules that tie several keys together are the named functions after them.

KNOWN_PROTOCOLS = ("1", "2")
CREDENTIALS = ("stored", "pass-through")
TELNET_EXIT_STATUS = ("none", "posix")
KEYBOARD_INTERACTIVE = ("answer", "ask")
HOST_KEY_POLICIES = ("accept-new", "strict")
_SHA256_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?\Z")
_MD5_FINGERPRINT = re.compile(r"(?:MD5:)?[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){15}\Z")
MAX_PROMPT_PATTERN = 1024
# What an ssh1 target may list: every SSH-1 cipher but "none".
SSH1_TARGET_CIPHERS = tuple(c for c in SSH1_KNOWN_CIPHERS if c != "none")
# The protocols with an upstream device (all but "local"): the targets' keys default to them.
UPSTREAM_PROTOCOLS = tuple(p.name for p in TARGET_PROTOCOLS.values() if p.upstream is not None)

KeyPath = tuple[str, ...]  # ("targets", "sw1", "port")
# A Twisted endpoint parser only stores the reactor; this one is never used to listen.
_NO_REACTOR = object()


class Kind:
    """How a key's value is read and how its default is shown in the reference. An
    unusable value is recorded as a problem (naming the key) and the default used instead."""

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        raise NotImplementedError

    def show(self, default: Any) -> str:
        return f"`{json.dumps(default)}`"


@dataclass(frozen=True)
class Number(Kind):
    minimum: float

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        value = data.get(path[-1], default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            v.error(path, "must be a number")
            return default
        if value < self.minimum or value != value or value == float("inf"):
            v.error(path, f"must be a finite number >= {self.minimum}")
            return default
        return float(value)

    def show(self, default: Any) -> str:
        return f"`{int(default) if float(default).is_integer() else default}`"


@dataclass(frozen=True)
class Integer(Kind):
    minimum: int
    maximum: int | None = None
    above: str | None = None  # the problem with a value above maximum, if not "at most"

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        value = data.get(path[-1], default)
        if value is None and default is None:
            return None  # optional, and not given
        if isinstance(value, bool) or not isinstance(value, int):
            v.error(path, "must be an integer")
            return default
        if value < self.minimum:
            v.error(path, f"must be at least {self.minimum}")
            return default
        if self.maximum is not None and value > self.maximum:
            v.error(path, self.above or f"must be at most {self.maximum}")
        return value


def cores() -> int:
    """The cores this process may run on (``workers = "auto"``)."""
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return max(1, count or 1)


@dataclass(frozen=True)
class WorkerCount(Kind):
    """``workers``: a positive integer, or ``"auto"`` for one per core."""

    maximum: int = 256

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        value = data.get(path[-1], default)
        if value == "auto":
            return cores()
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.maximum:
            v.error(path, f'must be "auto" or an integer from 1 to {self.maximum}')
            return default
        return value


@dataclass(frozen=True)
class Boolean(Kind):
    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        value = data.get(path[-1], default)
        if value is None and default is None:
            return None  # optional, and not given
        if not isinstance(value, bool):
            v.error(path, "must be true or false")
            return default
        return value


@dataclass(frozen=True)
class Text(Kind):
    """A non-empty string; ``check`` returns what is wrong with one, if anything."""

    check: Callable[[str], str | None] | None = None
    secret: bool = False  # a problem never shows the value

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        value = data.get(path[-1])
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            v.error(path, "must be a non-empty string", hide_value=self.secret)
            return default
        problem = self.check(value) if self.check else None
        if problem:
            v.error(path, problem, hide_value=self.secret)
            return default
        return value


@dataclass(frozen=True)
class FilePath(Text):
    """A file or directory name: ``~`` expanded, relative to the config file's directory."""

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        value = super().read(v, data, path, default)
        return _path(value, v.base) if value is not None else None


@dataclass(frozen=True)
class Texts(Kind):
    """A list of different non-empty strings; ``each`` returns what is wrong with one item,
    if anything (a problem for each bad item)."""

    allow_empty: bool = False
    each: Callable[[str], str | None] | None = None
    as_names: bool = False  # the reference lists the default as names, not as TOML

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        value = data.get(path[-1], default)
        if isinstance(value, tuple):
            return value
        if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
            v.error(path, "must be a list of non-empty strings")
            return default
        if not value and not self.allow_empty:
            v.error(path, "must not be empty")
            return default
        if len(set(value)) != len(value):
            v.error(path, "lists a value twice")
        for item in value if self.each else ():
            problem = self.each(item)
            if problem:
                v.error(path, problem)
        return tuple(value)

    def show(self, default: Any) -> str:
        return _names(default) if self.as_names else f"`{json.dumps(list(default))}`"


@dataclass(frozen=True)
class Choice(Kind):
    options: tuple[str, ...]

    @property
    def rule(self) -> str:
        if len(self.options) == 2:
            return f'must be "{self.options[0]}" or "{self.options[1]}"'
        return f"must be one of {', '.join(self.options)}"

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        value = data.get(path[-1], default)
        if value not in self.options:
            v.error(path, self.rule)
            return default
        return value


@dataclass(frozen=True)
class Quirks(Kind):
    """A target's ``quirks``: "auto", "none" or a list of names from gateway.quirks."""

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        value = data.get(path[-1], default)
        if isinstance(value, tuple):
            return value
        problem = quirks.check_setting(value)
        if problem:
            v.error(path, problem)
            return default
        return value if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class PasswordHash(Kind):
    """A user's password: only a hash from ``sshgateway hash-password`` is accepted."""

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        password = data.get(path[-1])
        if password is None:
            return default
        if not isinstance(password, str) or not password:
            v.error(path, "must be a password hash string")
        elif not password.startswith("$"):
            v.error(
                path,
                "looks like a plaintext password: store only its hash, made with "
                "`sshgateway hash-password` (reads the password on stdin)",
            )
        else:
            try:
                passwords.check_hash(password)
                return password
            except passwords.InvalidHash as e:
                v.error(path, f"not a usable password hash: {e}")
        return default


@dataclass(frozen=True)
class HostKeyPolicy(Kind):
    """``accept-new``, ``strict`` or a fingerprint (SHA256, or MD5 colon-hex)."""

    def read(self, v: _Validator, data: Mapping[str, Any], path: KeyPath, default: Any) -> Any:
        policy = data.get(path[-1], default)
        if not isinstance(policy, str) or not (
            policy in HOST_KEY_POLICIES
            or _SHA256_FINGERPRINT.match(policy)
            or _MD5_FINGERPRINT.match(policy)
        ):
            v.error(
                path,
                'must be "accept-new", "strict" or a fingerprint ("SHA256:" and 43 base64 '
                "characters, or MD5 colon-hex for ssh1)",
            )
            return default
        return policy


@dataclass(frozen=True)
class NamedTables(Kind):
    """``[SECTION.NAME]`` tables: NAME must match ``pattern``; ``rule`` says how."""

    pattern: re.Pattern[str]
    rule: str


@dataclass(frozen=True)
class Key:
    """One row of the schema."""

    table: str  # "" (top level), "auth", ..., or "users.NAME" / "targets.NAME"
    name: str  # "" for the row of the [SECTION.NAME] tables themselves
    kind: Kind
    default: Any  # None: no value unless given
    meaning: str
    _: KW_ONLY
    shown: str | None = None  # the default column, where the default is no plain value
    required: bool = False
    protocols: tuple[str, ...] = UPSTREAM_PROTOCOLS  # [targets.NAME] keys: who takes them

    @property
    def label(self) -> str:
        if not self.table:
            return f"`{self.name}`"
        return f"`[{self.table}] {self.name}`" if self.name else f"`[{self.table}]`"

    @property
    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        return "none" if self.default is None else self.kind.show(self.default)

    @property
    def meaning_text(self) -> str:
        # A target key that only some protocols take says which, first.
        if self.table == TARGETS and set(self.protocols) < set(UPSTREAM_PROTOCOLS):
            return f"{', '.join(self.protocols)}: {self.meaning}"
        return self.meaning


def _names(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _opt_in(known: tuple[str, ...], default: tuple[str, ...]) -> str:
    return "opt-in: " + _names(name for name in known if name not in default)


def _ssh2_target_legacy(kind: str) -> str:
    """The legacy names an ssh2 target may list (the gateway's own server never offers the
    client-only ones)."""
    return _names(n for n in ssh2_known(SSH2_CLIENT, kind) if ssh2_is_legacy(kind, n))


def _bad_endpoint(description: str) -> str | None:
    if description.split(":", 1)[0] == "systemd":
        return _bad_systemd_endpoint(description)
    try:
        serverFromString(_NO_REACTOR, description)
    except Exception as e:  # the parser raises ValueError, KeyError, TypeError...
        return f"bad endpoint {description!r}: {e}"
    return None


def _bad_systemd_endpoint(description: str) -> str | None:
    """``systemd:domain=INET:index=N`` or ``systemd:domain=INET:name=NAME``, checked without
    the sockets: Twisted's parser looks the socket up at once, and outside systemd
    (``check-config``) there is none, so the form is checked here instead. A socket that is
    missing when the gateway starts is reported then (gateway.service)."""
    fields: dict[str, str] = {}
    for part in description.split(":")[1:]:
        key, sep, value = part.partition("=")
        if not sep or key in fields:
            return f"bad endpoint {description!r}: expected systemd:domain=INET:index=N or :name=NAME"
        fields[key] = value
    unknown = set(fields) - {"domain", "index", "name"}
    if unknown:
        return f"bad endpoint {description!r}: unknown option {', '.join(sorted(unknown))}"
    if fields.get("domain") not in ("INET", "INET6", "UNIX"):
        return f"bad endpoint {description!r}: domain must be INET, INET6 or UNIX"
    if ("index" in fields) == ("name" in fields):
        return f"bad endpoint {description!r}: give exactly one of index=N and name=NAME"
    if "index" in fields and not fields["index"].isdigit():
        return f"bad endpoint {description!r}: index must be a number (0 for the first socket)"
    if "name" in fields and not fields["name"]:
        return f"bad endpoint {description!r}: name is empty"
    return None


def _unknown_protocol(name: str) -> str | None:
    return None if name in KNOWN_PROTOCOLS else f'unknown protocol {name!r} (use "1" and/or "2")'


def _not_host_port(item: str) -> str | None:
    if split_host_port(item) is None:
        return f'{item!r} is not "host:port"'
    return None


def _bad_host(host: str) -> str | None:
    if len(host) > 255 or any(c.isspace() for c in host):
        return "must be a host name or address (no spaces, at most 255)"
    return None


def _bad_username(username: str) -> str | None:
    if len(username) > 256 or not username.isprintable():
        return "must be printable and at most 256 characters"
    return None


def _bad_os_user(name: str) -> str | None:
    if not _OS_USER_NAME.match(name):
        return "must be an OS account name (1-32 of A-Z a-z 0-9 . _ -, not starting with . -)"
    return None


def _bad_prompt(pattern: str) -> str | None:
    if len(pattern) > MAX_PROMPT_PATTERN:
        return f"longer than {MAX_PROMPT_PATTERN} characters"
    try:
        re.compile(pattern.encode("utf-8"))
    except re.error as e:
        return f"not a regular expression: {e}"
    return None


def _bad_socket_path(text: str) -> str | None:
    # sun_path holds 108 bytes with its NUL; a longer name cannot be bound.
    if len(os.fsencode(os.path.expanduser(text))) > 107:
        return "a UNIX socket path has at most 107 bytes"
    return None


def _default_ports() -> str:
    ports = {p.name: p.default_port for p in TARGET_PROTOCOLS.values() if p.upstream}
    usual = Counter(ports.values()).most_common(1)[0][0]
    return f"`{usual}`" + "".join(
        f", {name} `{port}`" for name, port in ports.items() if port != usual
    )


def _bad_max_startups(text: str) -> str | None:
    try:
        MaxStartups.parse(text)
    except ValueError as e:
        return str(e)
    return None


def _bad_netblock(text: str) -> str | None:
    try:
        Netblock.parse(text)
    except ValueError as e:
        return str(e)
    return None


def _bad_network(text: str) -> str | None:
    try:
        parse_network(text)
    except ValueError as e:
        return f"not an address or network: {e}"
    return None


def _either(options: Iterable[str]) -> str:
    quoted = [f'`"{option}"`' for option in options]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


USERS, TARGETS = "users.NAME", "targets.NAME"
_GATEWAY, _USER, _TARGET = GatewayConfig(), UserConfig(""), TargetConfig("", "")
_AUTH, _SSH2, _SSH1, _FLOWS = AuthLimits(), SSH2Settings(), SSH1Settings(), FlowsConfig()
_AUDIT = AuditConfig()
_STORE = StoreConfig()
_RECORDING = RecordingConfig()
_LIMITS = LimitsConfig()
_PENALTIES = _LIMITS.penalties
assert _PENALTIES is not None
_MODERN = "modern defaults"

# fmt: off
SCHEMA: tuple[Key, ...] = (
    Key("", "listen", Texts(each=_bad_endpoint), _GATEWAY.listen,
        "Twisted server endpoint strings to listen on (one or more)"),
    Key("", "state_dir", FilePath(), DEFAULT_STATE_DIR,
        "host keys and records; created mode 0700 on first start"),
    Key("", "protocols", Texts(each=_unknown_protocol), _GATEWAY.protocols,
        "SSH versions offered: banner `SSH-1.99` for both, `SSH-2.0` or `SSH-1.5` for one"),
    Key("", "version_timeout", Number(minimum=1), _GATEWAY.version_timeout,
        "time a client has to send its version line"),
    Key("", "shutdown_grace", Number(minimum=0), _GATEWAY.shutdown_grace,
        "at SIGTERM/SIGINT: time open sessions get to end (their clients are told) before "
        "they are disconnected"),
    Key("", "log_format", Choice(LOG_FORMATS), _GATEWAY.log_format,
        '`"text"`, or `"json"`: one JSON object per line with the connection record\'s fields '
        "as fields (`twistd sshgateway --log-format` overrides it); read at start"),
    Key("", "run_as", Text(check=run_as_problem), None,
        "an OS account: started as root, the gateway binds its endpoints and reads its host "
        "keys, gives it the state directory, then runs as it (see Privileges); without root "
        "only the gateway's own account", shown="(stays as started)"),
    Key("", "workers", WorkerCount(), 1,
        'reactor processes serving the same endpoints, or `"auto"`: one per core; with more '
        "than one a parent process binds, supervises and restarts them (see Worker "
        "processes); read at start"),

    Key(USERS, "", NamedTables(_USER_NAME, "user names are 1-64 of A-Z a-z 0-9 . _ @ - "
                               "(not starting with . @ -)"), None,
        "a login name: 1-64 of `A-Z a-z 0-9 . _ @ -`", shown="(at least one)"),
    Key(USERS, "password", PasswordHash(), None,
        "a hash from `sshgateway hash-password` (scrypt; bcrypt `$2b$` also accepted); "
        "plaintext is refused"),
    Key(USERS, "authorized_keys", FilePath(), None,
        "OpenSSH authorized_keys file: SSH-2 lines and SSH-1 `bits e n` lines; `ssh-rsa` keys "
        "serve SSH-1 too. Re-read when it changes; ignored while group/world-writable. Key "
        "options are enforced as sshd does (README: authorized_keys options); a line with an "
        "option the gateway does not know is skipped with a log line"),
    Key(USERS, "auth", Choice(("any", "all")), _USER.auth,
        '`"any"`: one configured method suffices; `"all"`: every configured method must pass '
        "(SSH-2 answers with partial success; SSH-1 cannot, so such users cannot log in over "
        "SSH-1)"),
    Key(USERS, "targets", Texts(), _USER.targets,
        "the targets this user may reach (names of `[targets.NAME]` tables, or `local`); "
        "nothing is granted by default, and a user with no target is an error",
        shown="(required)"),
    Key(USERS, "target", Text(), None,
        "the target used when the login name has no `+TARGET`; must be in `targets`"),
    Key(USERS, "os_user", Text(check=_bad_os_user), None,
        "the OS account `local` sessions run as (its uid, gid, groups, home and shell from "
        "the passwd database); required when `targets` names `local`. Any existing account "
        "when the gateway runs as root; otherwise only the gateway's own account",
        shown="none (no `local`)"),
    Key(USERS, "permit_open", Texts(allow_empty=True, each=_not_host_port), _USER.permit_open,
        '`"host:port"` destinations this user\'s SSH-2 `direct-tcpip` (`-W`, `-L`) may reach '
        "besides its targets (README: Jump host); matched as `[ssh1] permit_open` is; empty: "
        "only targets"),
    Key(USERS, "record", Boolean(), None,
        "record this user's sessions (`true`) or not (`false`), whatever `[recording] enabled` "
        "says; when the user's and the target's `record` differ, `true` wins",
        shown="`[recording] enabled`"),

    Key("auth", "grace_time", Number(minimum=1), _AUTH.grace_time,
        "from connect to successful login"),
    Key("auth", "max_attempts", Integer(minimum=1), _AUTH.max_attempts,
        "failed attempts before disconnect"),
    Key("auth", "failure_delay", Number(minimum=0), _AUTH.failure_delay,
        "a failed attempt answers no sooner than this"),

    Key("session", "env_allow", Texts(allow_empty=True), DEFAULT_ENV_ALLOW,
        "environment variables a client may set (case-sensitive fnmatch patterns)"),
    Key("session", "permit_user_environment", Boolean(), _GATEWAY.permit_user_environment,
        'whether an authorized_keys `environment="NAME=value"` option sets NAME for the '
        "session (as sshd's `PermitUserEnvironment`); when off, the key still works and the "
        "option is ignored with a log line"),
    Key("session", "sftp_server", FilePath(), None,
        "the program that serves `subsystem sftp` (scp, sftp) on `local`, run as the user's "
        "`os_user` like sshd's `Subsystem sftp`",
        shown=f"the first of {_names(SFTP_SERVER_PATHS)} that exists"),

    Key("ssh2", "kex", Texts(as_names=True), _SSH2.kex,
        f"key exchange, in order of preference; {_opt_in(ssh2_known(SSH2_SERVER, 'kex'), _SSH2.kex)}"),
    Key("ssh2", "host_key_algorithms", Texts(as_names=True), _SSH2.host_key_algorithms,
        _opt_in(ssh2_known(SSH2_SERVER, "host_key_algorithms"), _SSH2.host_key_algorithms)),
    Key("ssh2", "ciphers", Texts(as_names=True), _SSH2.ciphers,
        _opt_in(ssh2_known(SSH2_SERVER, "ciphers"), _SSH2.ciphers)),
    Key("ssh2", "macs", Texts(as_names=True), _SSH2.macs,
        f"{_opt_in(ssh2_known(SSH2_SERVER, 'macs'), _SSH2.macs)}; unused with an AEAD cipher "
        "(chacha20-poly1305, AES-GCM)"),
    Key("ssh2", "compression", Boolean(), _SSH2.compression,
        "also offer zlib"),
    Key("ssh2", "rekey_limit", Integer(minimum=0), _SSH2.rekey_limit,
        "bytes (both directions) after which the gateway starts a new key exchange; "
        "65536 to 4 GiB"),
    Key("ssh2", "rekey_interval", Number(minimum=0), _SSH2.rekey_interval,
        "seconds after which the gateway starts a new key exchange"),

    Key("ssh1", "ciphers", Texts(), _SSH1.ciphers,
        f"SSH-1 ciphers; {' and '.join(f'`{c}`' for c in SSH1_KNOWN_CIPHERS if c not in _SSH1.ciphers)} "
        "only when listed"),
    Key("ssh1", "server_key_bits", Integer(minimum=1), _SSH1.server_key_bits,
        f"SSH-1 server key size (512-4096; under 1024 the gateway makes the key itself); must "
        f"differ from the {SSH1_HOST_KEY_BITS}-bit host key by at least {SSH1_KEY_SIZE_GAP} bits; "
        "made anew in a thread every `server_key_lifetime`"),
    Key("ssh1", "server_key_lifetime", Number(minimum=60), _SSH1.server_key_lifetime,
        "the server key is regenerated after this (if it was used); at least 60"),
    Key("ssh1", "allow_x11_forwarding", Boolean(), _SSH1.allow_x11_forwarding,
        "grant SSH-1 X11 forwarding"),
    Key("ssh1", "allow_agent_forwarding", Boolean(), _SSH1.allow_agent_forwarding,
        "grant SSH-1 agent forwarding"),
    Key("ssh1", "permit_open", Texts(allow_empty=True, each=_not_host_port), _SSH1.permit_open,
        '`"host:port"` destinations SSH-1 `-L` may reach; empty refuses all'),

    Key("flows", "enabled", Boolean(), _FLOWS.enabled,
        "record one flow per connection leg (client legs and upstream legs) in "
        "`<state_dir>/flows/flows.jsonl`, for `sshgateway flows`; names, sizes and timings "
        "only, never passwords, keys or session data"),
    Key("flows", "max_bytes", Integer(minimum=4096), _FLOWS.max_bytes,
        "size at which `flows.jsonl` is rotated to `flows.jsonl.1` (at least 4096)"),
    Key("flows", "keep", Integer(minimum=0), _FLOWS.keep,
        "rotated files kept (`flows.jsonl.1` ... `.N`); older ones are deleted; `0` keeps none"),

    Key("audit", "enabled", Boolean(), _AUDIT.enabled,
        "write every audit event (logins, sessions, host keys, penalties, reloads, weak "
        "legs) as one JSON line to `<state_dir>/audit/audit.jsonl`, for `sshgateway audit` "
        "(README: Audit trail); never passwords, keys or session data"),
    Key("audit", "max_bytes", Integer(minimum=4096), _AUDIT.max_bytes,
        "size at which `audit.jsonl` is rotated to `audit.jsonl.1` (at least 4096)"),
    Key("audit", "keep", Integer(minimum=0), _AUDIT.keep,
        "rotated files kept (`audit.jsonl.1` ... `.N`); older ones are deleted; `0` keeps none"),
    Key("audit", "syslog", Boolean(), _AUDIT.syslog,
        "also send each audit event to syslog (journald under systemd) as "
        "`sshgateway-audit: {JSON}`"),
    Key("audit", "syslog_facility", Choice(SYSLOG_FACILITIES), _AUDIT.syslog_facility,
        "the syslog facility of those messages"),
    Key("recording", "enabled", Boolean(), _RECORDING.enabled,
        "record every session but SFTP/subsystem ones (terminal sessions and exec commands) as "
        "an asciicast v2 file (README: Session recording); `record` in `[users.NAME]` and "
        "`[targets.NAME]` overrides it"),
    Key("recording", "input", Boolean(), _RECORDING.input,
        "also record what the client typed (`\"i\"` events); off because input holds the "
        "passwords typed at device prompts: with it on, recordings may contain them"),
    Key("recording", "dir", FilePath(), None,
        "where recordings are written (created mode 0700; files mode 0600)",
        shown="`<state_dir>/recordings`"),
    Key("recording", "max_age_days", Number(minimum=0), _RECORDING.max_age_days,
        "days a recording is kept (checked at start and hourly); `0`: no age limit"),
    Key("recording", "max_total_bytes", Integer(minimum=0), _RECORDING.max_total_bytes,
        "when the recordings take more than this, the oldest finished ones are deleted "
        "(at start and hourly); `0`: no limit"),
    Key("control", "socket", FilePath(check=_bad_socket_path), None,
        "the control socket `sshgateway sessions` uses (a UNIX socket, mode 0600, for the "
        "gateway's account and root); at most 107 bytes; read at start",
        shown="`<state_dir>/control.sock`"),

    Key("store", "url", Text(check=_bad_store_url, secret=True), None,
        "shared state of several instances in PostgreSQL (`postgresql://user:pw@host/db`; "
        "README: Shared state in PostgreSQL); none: everything stays in `state_dir`"),
    Key("store", "key", Text(secret=True), None,
        "the Fernet key (urlsafe base64, 32 bytes) that encrypts the host keys in the "
        "database; or `key_file`; required with `url`"),
    Key("store", "key_file", FilePath(), None,
        "a file holding that key (mode 0600), instead of `key`"),
    Key("store", "queue_max", Integer(minimum=1), _STORE.queue_max,
        "writes (flows, audit events, penalties, pins) held while the database is down; "
        "past that the oldest are dropped and counted"),
    Key("store", "cache_ttl", Number(minimum=0), _STORE.cache_ttl,
        "seconds a read of the shared host-key pins and penalties is reused"),

    Key("limits", "max_startups", Text(check=_bad_max_startups), str(_LIMITS.max_startups),
        "unauthenticated connections (both protocols): from `start` on, a new one is refused "
        "with `rate`% probability, rising linearly to 100% at `full` (OpenSSH's `MaxStartups`); "
        "a single number N means N:100:N. `full` is lowered to fit the file descriptor limit"),
    Key("limits", "per_source_max_startups", Integer(minimum=1), None,
        "unauthenticated connections allowed from one source (see `per_source_netblock`)",
        shown="no limit"),
    Key("limits", "per_source_netblock", Text(check=_bad_netblock), str(_LIMITS.per_source_netblock),
        '`"IPV4_BITS:IPV6_BITS"`: the prefix that makes addresses one source, for '
        "`per_source_max_startups` and penalties (`24:48` counts a /24 and a /48 as one)"),
    Key("limits", "penalties", Boolean(), True,
        "refuse a source for a while after it misbehaves (OpenSSH's `PerSourcePenalties`): "
        "each penalty below adds to the time that remains"),
    Key("limits", "penalty_authfail", Number(minimum=0), _PENALTIES.durations[AUTHFAIL],
        "seconds added when a connection failed authentication and never succeeded"),
    Key("limits", "penalty_noauth", Number(minimum=0), _PENALTIES.durations[NOAUTH],
        "seconds added when a connection closed before trying to authenticate"),
    Key("limits", "penalty_malformed", Number(minimum=0), _PENALTIES.durations[MALFORMED],
        "seconds added for a connection whose first line is no SSH identification"),
    Key("limits", "penalty_grace_exceeded", Number(minimum=0), _PENALTIES.durations[GRACE_EXCEEDED],
        "seconds added when a connection ran out of `version_timeout` or `[auth] grace_time`"),
    Key("limits", "penalty_min", Number(minimum=0), _PENALTIES.minimum,
        "a source is refused only while more than this remains of its penalty"),
    Key("limits", "penalty_max", Number(minimum=1), _PENALTIES.maximum,
        "the longest a source is refused; must be at least `penalty_min`"),
    Key("limits", "penalty_max_sources", Integer(minimum=1), _PENALTIES.max_sources,
        "sources with a penalty kept in memory; past that the ones ending soonest are dropped"),
    Key("limits", "penalty_exempt", Texts(allow_empty=True, each=_bad_network), (),
        'addresses and networks (`"192.0.2.0/24"`, `"2001:db8::/32"`) never penalised '
        "(loopback is not exempt unless listed)"),

    Key("metrics", "listen", Text(check=_bad_endpoint), None,
        "a Twisted endpoint string (`\"tcp:9810:interface=127.0.0.1\"`) on which `/metrics` "
        "serves the Prometheus text format (README: Metrics); a reload opens, moves or "
        "closes it", shown="off"),

    Key(TARGETS, "", NamedTables(_TARGET_NAME, "target names are 1-64 of A-Z a-z 0-9 . _ - "
                                 "(not starting with . -)"), None,
        "an upstream a user reaches by logging in as `user+NAME`; NAME is 1-64 of "
        "`A-Z a-z 0-9 . _ -`. `local` (programs on the gateway host) always exists",
        shown="`local` only"),
    Key(TARGETS, "protocol", Choice(tuple(TARGET_PROTOCOLS)), None,
        f"{_either(TARGET_PROTOCOLS)}; a key below that names protocols is for those only; "
        "`local` takes none",
        shown="(required)", required=True, protocols=tuple(TARGET_PROTOCOLS)),
    Key(TARGETS, "host", Text(check=_bad_host), None,
        "upstream host name or address", shown="(required)", required=True),
    Key(TARGETS, "aliases", Texts(allow_empty=True, each=_bad_host), _TARGET.aliases,
        "other host names a jump-host `direct-tcpip` (`-J`) may use for this target, "
        "besides its name and `host` (README: Jump host)", protocols=UPSTREAM_PROTOCOLS),
    Key(TARGETS, "port", Integer(minimum=1, maximum=65535), None,  # the protocol's
        "upstream TCP port", shown=_default_ports()),
    Key(TARGETS, "username", Text(check=_bad_username), None,
        "upstream login name", shown="the gateway user's name"),
    Key(TARGETS, "password", Text(secret=True), None,
        "stored upstream password, in plaintext by necessity: keep the file `chmod 600`, owned "
        "by the gateway's user (`check-config` warns otherwise)"),
    Key(TARGETS, "key", FilePath(), None,
        "upstream private key file (ssh1: SSH-1 RSA; ssh2: OpenSSH/PEM), unencrypted, "
        "`chmod 600`", protocols=("ssh1", "ssh2")),
    Key(TARGETS, "credentials", Choice(CREDENTIALS), _TARGET.credentials,
        '`"stored"`: `password`/`key` above; `"pass-through"`: the password the user gave the '
        "gateway is sent upstream (users who log in with a key cannot use such a target)"),
    Key(TARGETS, "host_key", HostKeyPolicy(), _TARGET.host_key,
        '`"accept-new"` (trust on first use: pinned in `<state_dir>/known_hosts`, ssh1 in '
        '`known_hosts.ssh1`, once the key exchange with it succeeded), `"strict"` (must '
        "already be pinned there), or a fingerprint (`SHA256:...`; ssh1 also MD5 colon-hex)",
        protocols=("ssh1", "ssh2")),
    Key(TARGETS, "connect_timeout", Number(minimum=0.1), _TARGET.connect_timeout,
        "from session request to open upstream session"),
    Key(TARGETS, "idle_timeout", Number(minimum=0), _TARGET.idle_timeout,
        "close the session after this long without data either way; `0`: never"),
    Key(TARGETS, "record", Boolean(), None,
        "record sessions on this target (`true`) or not (`false`), whatever `[recording] "
        "enabled` says; when the user's and the target's `record` differ, `true` wins",
        shown="`[recording] enabled`", protocols=tuple(TARGET_PROTOCOLS)),
    Key(TARGETS, "ciphers", Texts(), _TARGET.ciphers,
        f"cipher names in order of preference; ssh1 from {_names(SSH1_TARGET_CIPHERS)}; ssh2 "
        f"legacy ones ({_ssh2_target_legacy('ciphers')}) only when listed",
        shown=_MODERN, protocols=("ssh1", "ssh2")),
    Key(TARGETS, "compression",
        Integer(minimum=0, maximum=9, above="must be a zlib level from 1 to 9, or 0 for none"),
        _TARGET.compression,
        "zlib level (1-9) to request from the device; `0` for none", protocols=("ssh1",)),
    Key(TARGETS, "min_key_bits", Integer(minimum=256, maximum=8192), _TARGET.min_key_bits,
        "the smallest host or server key the device may show; keys PuTTY accepts down to "
        "this size are used with a warning (README: SSH-1 devices with small keys)",
        protocols=("ssh1",)),
    Key(TARGETS, "kex", Texts(), _TARGET.kex,
        f"key exchange names, in order (legacy: {_ssh2_target_legacy('kex')}, only when listed)",
        shown=_MODERN, protocols=("ssh2",)),
    Key(TARGETS, "host_key_algorithms", Texts(), _TARGET.host_key_algorithms,
        f"host key algorithm names, in order (legacy: {_ssh2_target_legacy('host_key_algorithms')}, "
        "only when listed)",
        shown=_MODERN, protocols=("ssh2",)),
    Key(TARGETS, "macs", Texts(), _TARGET.macs,
        f"MAC names, in order (legacy: {_ssh2_target_legacy('macs')}, only when listed)",
        shown=_MODERN, protocols=("ssh2",)),
    Key(TARGETS, "login_prompt", Text(check=_bad_prompt), None,
        "a regular expression matched on upstream output; when it matches, the username is "
        "sent", protocols=("telnet",)),
    Key(TARGETS, "password_prompt", Text(check=_bad_prompt), None,
        "a regular expression; when it matches, the password is sent", protocols=("telnet",)),
    Key(TARGETS, "shell_prompt", Text(check=_bad_prompt), None,
        "a regular expression for the device shell's prompt at the end of a line; with it a "
        "command's output is cut from the first prompt to the next (no banner, no prompts) and "
        "`exit` is typed only once the command is done, so no output is lost",
        protocols=("telnet",)),
    Key(TARGETS, "rekey", Boolean(), _TARGET.rekey,
        "`false`: the gateway never starts a key exchange towards this device (for firmware "
        "that never answers a re-key or breaks on one); one the device starts is still "
        "answered", protocols=("ssh2",)),
    Key(TARGETS, "keyboard_interactive", Choice(KEYBOARD_INTERACTIVE), _TARGET.keyboard_interactive,
        '`"answer"`: the gateway answers every prompt, echoed ones with the upstream login name, '
        'hidden ones with the password; `"ask"`: the first hidden prompt gets the password (stored '
        "or passed through), every other one (a one-time code) is put to the user in their "
        "session, which then needs a terminal (a pty: OpenSSH's `-t`); the connect timeout "
        "waits meanwhile",
        protocols=("ssh2",)),
    Key(TARGETS, "exit_status", Choice(TELNET_EXIT_STATUS), _TARGET.exit_status,
        '`"none"`: a command reports status 0 when the device hangs up; `"posix"` (needs '
        "`shell_prompt`): once the command is done the gateway types `echo` of a marker and "
        "`$?`, strips that exchange from the output and reports the real status (a POSIX "
        "shell on the device)", protocols=("telnet",)),
    Key(TARGETS, "quirks", Quirks(), _TARGET.quirks,
        '`"auto"`: the workarounds of the quirk profile matching the device\'s identification '
        'line apply (see *Quirk profiles*); `"none"`: none; a list of profile and workaround '
        "names: exactly those. A profile never adds a legacy algorithm: those stay the "
        "target's own lists", protocols=("ssh1", "ssh2")),
)
# fmt: on


def _rows(table: str) -> tuple[Key, ...]:
    return tuple(key for key in SCHEMA if key.table == table and key.name)


def _row(table: str, name: str) -> Key:
    return next(key for key in SCHEMA if key.table == table and key.name == name)


def _keys(table: str) -> frozenset[str]:
    return frozenset(key.name for key in _rows(table))


# The key sets the unknown-key checks use, all read off the schema.
TOP_KEYS = _keys("") | {key.table.split(".")[0] for key in SCHEMA if key.table}
USER_KEYS = _keys(USERS)
AUTH_KEYS = _keys("auth")
SESSION_KEYS = _keys("session")
SSH2_KEYS = _keys("ssh2")
SSH1_KEYS = _keys("ssh1")
FLOWS_KEYS = _keys("flows")
AUDIT_KEYS = _keys("audit")
CONTROL_KEYS = _keys("control")
STORE_KEYS = _keys("store")
LIMITS_KEYS = _keys("limits")
METRICS_KEYS = _keys("metrics")
# Which keys each target protocol takes; a key of another protocol is an error too.
TARGET_KEYS = {
    protocol: frozenset(key.name for key in _rows(TARGETS) if protocol in key.protocols)
    for protocol in TARGET_PROTOCOLS
}


def reference_table() -> str:
    """The Markdown reference of every key (in this module's docstring and README.md)."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| {k.label} | {k.default_text} | {k.meaning_text} |" for k in SCHEMA]
    return "\n".join(lines)


# --- rules across keys ---------------------------------------------------------------------


def _path(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


def _check_user(
    v: _Validator,
    name: str,
    raw: Any,
    targets: Mapping[str, TargetConfig],
    accounts: LocalAccounts,
) -> UserConfig | None:
    path = ("users", name)
    if v.named_table(path, raw, _row(USERS, "").kind) is None:
        return None
    v.known(raw, path, USER_KEYS)
    values = v.read_table(raw, path, USERS)
    allowed = _check_user_targets(v, path, values["targets"], targets)
    if "targets" not in raw:
        v.error(
            path,
            "has no targets: nothing is granted by default; list what it may reach, e.g. "
            'targets = ["local"] with os_user = "ACCOUNT"',
        )
    default_target = _check_default_target(v, path, values["target"], allowed, targets)
    local = tuple(t for t in allowed if targets[t].protocol == "local")
    os_user = _check_os_user(v, path, raw, values["os_user"], local, accounts)
    if raw.get("password") is None and values["authorized_keys"] is None:
        v.error(path, "has neither password nor authorized_keys: nobody could log in as it")
        return None
    return UserConfig(
        name=name,
        password_hash=values["password"],
        authorized_keys=values["authorized_keys"],
        auth=values["auth"],
        target=default_target,
        targets=allowed,
        os_user=os_user,
        permit_open=values["permit_open"],
        record=values["record"],
    )


def _check_os_user(
    v: _Validator,
    path: tuple[str, ...],
    raw: Mapping[str, Any],
    os_user: str | None,
    local: tuple[str, ...],
    accounts: LocalAccounts,
) -> str | None:
    """``local``: the user's targets that run programs on the gateway host."""
    if os_user is None:
        # (One that is there but unusable has had its error already.)
        if local and "os_user" not in raw:
            names = " and ".join(f'"{name}"' for name in local)
            v.error(
                path + ("targets",),
                f"{names} need{'s' if len(local) == 1 else ''} os_user, the OS account its "
                'sessions run as (e.g. os_user = "ACCOUNT"); there is no default',
            )
        return None
    problem = accounts.problem(os_user)
    if problem:
        v.error(path + ("os_user",), problem)
        return None
    return os_user


def _check_user_targets(
    v: _Validator,
    path: tuple[str, ...],
    allowed: tuple[str, ...],
    targets: Mapping[str, TargetConfig],
) -> tuple[str, ...]:
    for target_name in allowed:
        if target_name not in targets:
            v.error(
                path + ("targets",),
                f"unknown target {target_name!r} (defined: {', '.join(sorted(targets))})",
            )
    return tuple(t for t in allowed if t in targets)


def _check_default_target(
    v: _Validator,
    path: tuple[str, ...],
    default_target: str | None,
    allowed: tuple[str, ...],
    targets: Mapping[str, TargetConfig],
) -> str | None:
    if default_target is None or default_target in allowed:
        return default_target
    known = "" if default_target in targets else " (and no such target is defined)"
    v.error(
        path + ("target",),
        f"{default_target!r} is not in this user's targets ({', '.join(allowed) or 'none'}){known}",
    )
    return None


def _check_target(v: _Validator, name: str, raw: Any) -> TargetConfig | None:
    path = ("targets", name)
    if v.named_table(path, raw, _row(TARGETS, "").kind) is None:
        return None
    protocol = v.read(raw, path, _row(TARGETS, "protocol"))
    if protocol is None:
        return None
    if name == LOCAL_TARGET and protocol != "local":
        v.error(path + ("protocol",), 'the built-in target "local" must stay protocol "local"')
        return None
    _check_target_keys(v, path, raw, protocol)
    if protocol == "local":
        return TargetConfig(name, protocol, record=v.read(raw, path, _row(TARGETS, "record")))

    problems = len(v.problems)
    values = v.read_table(raw, path, TARGETS, port=TARGET_PROTOCOLS[protocol].default_port)
    _check_pass_through(v, path, values)
    _check_md5_fingerprint(v, path, protocol, values["host_key"])
    _check_ssh1_target_ciphers(v, path, protocol, values["ciphers"])
    if protocol == "telnet" and values["exit_status"] == "posix" and values["shell_prompt"] is None:
        v.error(
            path + ("exit_status",),
            '"posix" needs shell_prompt: the status is asked for at the prompt after the command',
        )
    algorithms = {key: values[key] for key in ("ciphers", "kex", "host_key_algorithms", "macs")}
    _check_target_algorithms(v, path, name, protocol, algorithms)
    if len(v.problems) != problems:
        return None
    return TargetConfig(name=name, **{**values, "host": values["host"] or ""})


def _check_target_keys(
    v: _Validator, path: tuple[str, ...], raw: Mapping[str, Any], protocol: str
) -> None:
    allowed = TARGET_KEYS[protocol]
    for key in raw:
        if key not in allowed:
            used_by = [p for p, keys in TARGET_KEYS.items() if key in keys]
            why = f"not used by {protocol} targets" if used_by else "unknown key"
            # Any key here may hold a password (a typo of "password" included).
            v.error(
                path + (key,), f"{why} (known here: {', '.join(sorted(allowed))})", hide_value=True
            )


def _check_pass_through(v: _Validator, path: tuple[str, ...], values: Mapping[str, Any]) -> None:
    if values["credentials"] == "pass-through" and (
        values["password"] is not None or values["key"] is not None
    ):
        v.error(
            path + ("credentials",),
            '"pass-through" sends the gateway login password upstream: '
            "remove the stored password/key",
        )


def _check_md5_fingerprint(
    v: _Validator, path: tuple[str, ...], protocol: str, host_key: str
) -> None:
    if _MD5_FINGERPRINT.match(host_key) and protocol != "ssh1":
        v.error(path + ("host_key",), "MD5 fingerprints are for ssh1 targets; use the SHA256: form")


def _check_ssh1_target_ciphers(
    v: _Validator, path: tuple[str, ...], protocol: str, ciphers: tuple[str, ...]
) -> None:
    for cipher in ciphers if protocol == "ssh1" else ():
        if cipher not in SSH1_TARGET_CIPHERS:
            v.error(
                path + ("ciphers",),
                f"unknown ssh1 cipher {cipher!r} ({', '.join(SSH1_TARGET_CIPHERS)})",
            )


def _check_target_algorithms(
    v: _Validator,
    path: tuple[str, ...],
    name: str,
    protocol: str,
    algorithms: Mapping[str, tuple[str, ...]],
) -> None:
    # The protocol's client owns its algorithm tables; asked one key at a time so that
    # each error names its own key and line.
    check = TARGET_PROTOCOLS[protocol].check_algorithms
    if check is None:
        return
    for key, names in algorithms.items():
        if not names:
            continue
        try:
            check(TargetConfig(name, protocol, **{key: names}))
        except ValueError as e:
            v.error(path + (key,), str(e))


def _check_targets(v: _Validator, data: Mapping[str, Any]) -> dict[str, TargetConfig]:
    targets = {LOCAL_TARGET: TargetConfig(LOCAL_TARGET, "local")}
    table = v.table(data, ("targets",))
    for name, raw in (table or {}).items():
        target = _check_target(v, name, raw)
        if target is not None:
            targets[name] = target
        elif _TARGET_NAME.match(name):
            # Known by name, so users that list it get no second, misleading error (and,
            # with no protocol, not taken for one that runs programs on the gateway host).
            targets[name] = TargetConfig(name, "")
    return targets


def _check_users(
    v: _Validator,
    data: Mapping[str, Any],
    targets: Mapping[str, TargetConfig],
    accounts: LocalAccounts,
) -> dict[str, UserConfig]:
    users: dict[str, UserConfig] = {}
    table = v.table(data, ("users",))
    if table is None:
        return users
    for name, raw in table.items():
        user = _check_user(v, name, raw, targets, accounts)
        if user is not None:
            users[name] = user
    if not table:
        v.error(("users",), "no [users.NAME] configured: nobody could log in")
    return users


def _settings(v: _Validator, section: str, cls: Callable[..., Any], values: dict[str, Any]) -> Any:
    # Each field on its own first, so that an error names its own key and line.
    good: dict[str, Any] = {}
    for key, value in values.items():
        try:
            cls(**{key: value})
            good[key] = value
        except (ValueError, TypeError) as e:
            v.error((section, key), str(e))
    try:
        return cls(**good)
    except (ValueError, TypeError) as e:
        v.error((section,), str(e))
        return cls()


def _check_ssh1_key_gap(v: _Validator, protocols: tuple[str, ...], ssh1: SSH1Settings) -> None:
    if "1" in protocols:
        try:
            ssh1.check_host_key_bits(SSH1_HOST_KEY_BITS)
        except ValueError as e:
            v.error(("ssh1", "server_key_bits"), str(e))


def _section(v: _Validator, data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``[name]`` table, its unknown keys reported."""
    raw = v.table(data, (name,)) or {}
    v.known(raw, (name,), _keys(name))
    return raw


def _check_store(v: _Validator, data: Mapping[str, Any]) -> StoreConfig:
    values = v.read_table(_section(v, data, "store"), ("store",), "store")
    if values["url"] is not None and values["key"] is None and values["key_file"] is None:
        v.error(
            ("store", "url"), "needs `key` or `key_file` (the host keys are encrypted)",
            hide_value=True,
        )
    if values["key"] is not None and values["key_file"] is not None:
        v.error(("store", "key_file"), "give `key` or `key_file`, not both")
    return StoreConfig(**values)


def _check_limits(v: _Validator, data: Mapping[str, Any]) -> LimitsConfig:
    values = v.read_table(_section(v, data, "limits"), ("limits",), "limits")
    rules = None
    if values["penalties"]:
        durations = {
            AUTHFAIL: values["penalty_authfail"],
            NOAUTH: values["penalty_noauth"],
            MALFORMED: values["penalty_malformed"],
            GRACE_EXCEEDED: values["penalty_grace_exceeded"],
        }
        if values["penalty_max"] < values["penalty_min"]:
            v.error(("limits", "penalty_max"), "must be at least penalty_min")
            values["penalty_max"] = values["penalty_min"]
        rules = PenaltyRules(
            durations, values["penalty_min"], values["penalty_max"], values["penalty_max_sources"]
        )
    return LimitsConfig(
        max_startups=MaxStartups.parse(values["max_startups"]),
        per_source_max_startups=values["per_source_max_startups"],
        per_source_netblock=Netblock.parse(values["per_source_netblock"]),
        penalties=rules,
        penalty_exempt=tuple(
            parse_network(n) for n in values["penalty_exempt"] if _bad_network(n) is None
        ),
    )


def _build(data: Mapping[str, Any], v: _Validator, accounts: LocalAccounts) -> GatewayConfig:
    v.known(data, (), TOP_KEYS)
    top = v.read_table(data, (), "")
    # Offered in this order, whatever the file's.
    protocols = tuple(p for p in KNOWN_PROTOCOLS if p in top["protocols"]) or DEFAULT_PROTOCOLS
    targets = _check_targets(v, data)
    users = _check_users(v, data, targets, accounts)
    auth = v.read_table(_section(v, data, "auth"), ("auth",), "auth")
    session = v.read_table(_section(v, data, "session"), ("session",), "session")
    # The SSH settings check their own values: given only the keys the file sets.
    ssh2_raw = _section(v, data, "ssh2")
    ssh2_values = v.read_table(ssh2_raw, ("ssh2",), "ssh2")
    ssh2 = _settings(
        v, "ssh2", SSH2Settings, {k: x for k, x in ssh2_values.items() if k in ssh2_raw}
    )
    ssh1_raw = _section(v, data, "ssh1")
    ssh1_values = v.read_table(ssh1_raw, ("ssh1",), "ssh1")
    ssh1 = _settings(
        v, "ssh1", SSH1Settings, {k: x for k, x in ssh1_values.items() if k in ssh1_raw}
    )
    _check_ssh1_key_gap(v, protocols, ssh1)
    flows = FlowsConfig(**v.read_table(_section(v, data, "flows"), ("flows",), "flows"))
    audit = AuditConfig(**v.read_table(_section(v, data, "audit"), ("audit",), "audit"))
    store = _check_store(v, data)
    recording = RecordingConfig(
        **v.read_table(_section(v, data, "recording"), ("recording",), "recording")
    )
    control = ControlConfig(**v.read_table(_section(v, data, "control"), ("control",), "control"))
    limits = _check_limits(v, data)
    metrics = MetricsConfig(**v.read_table(_section(v, data, "metrics"), ("metrics",), "metrics"))
    return GatewayConfig(
        listen=top["listen"],
        state_dir=top["state_dir"],
        protocols=protocols,
        version_timeout=top["version_timeout"],
        shutdown_grace=top["shutdown_grace"],
        log_format=top["log_format"],
        users=users,
        targets=targets,
        auth_limits=AuthLimits(**auth),
        env_allow=session["env_allow"],
        permit_user_environment=session["permit_user_environment"],
        sftp_server=session["sftp_server"],
        ssh2=ssh2,
        ssh1=ssh1,
        flows=flows,
        audit=audit,
        store=store,
        recording=recording,
        control=control,
        limits=limits,
        metrics=metrics,
        run_as=top["run_as"],
        workers=top["workers"],
    )


def parse_config(
    text: str,
    source: str = "<config>",
    base: Path | None = None,
    *,
    accounts: LocalAccounts | None = None,
) -> GatewayConfig:
    """Validate TOML ``text``; :class:`ConfigError` lists every problem found. ``accounts``
    says which ``os_user`` names are usable (default: as this process sees them)."""
    lines = _Lines(text)
    v = _Validator(source, lines, base if base is not None else Path.cwd())
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = int(m.group(1)) if m else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise ConfigError(
            [
                ConfigProblem(
                    source,
                    line,
                    "",
                    f"TOML syntax error: {message}",
                    lines.text(line) if line else "",
                )
            ]
        ) from None
    config = _build(data, v, accounts if accounts is not None else LocalAccounts.of_this_process())
    if v.problems:
        raise ConfigError(sorted(v.problems, key=lambda p: p.line or 0))
    return config


def load_config(
    path: str | os.PathLike[str], *, accounts: LocalAccounts | None = None
) -> GatewayConfig:
    """Read and validate the TOML file at ``path`` (``accounts``: see :func:`parse_config`)."""
    source = Path(path)
    try:
        with open(source, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(
            [ConfigProblem(str(source), None, "", f"cannot read: {e.strerror}")]
        ) from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigProblem(str(source), None, "", "file is larger than 1 MiB")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([ConfigProblem(str(source), line, "", "not valid UTF-8")]) from None
    config = parse_config(text, str(source), base=source.resolve().parent, accounts=accounts)
    return dataclasses.replace(config, source=source)


def config_warnings(config: GatewayConfig) -> list[str]:
    """Problems that do not stop the gateway but should be fixed (for ``check-config`` and
    the start-up log): a config file holding upstream passwords that others can read."""
    warnings: list[str] = []
    holders = [t.name for t in config.targets.values() if t.password is not None]
    if config.source is not None and holders:
        try:
            mode = os.stat(config.source).st_mode & 0o777
        except OSError:
            mode = 0
        if mode & 0o077:
            warnings.append(
                f"{config.source}: warning: holds upstream passwords (targets "
                f"{', '.join(sorted(holders))}) but its mode is {mode:04o}: "
                f"run chmod 600 {config.source}"
            )
    return warnings


def default_config() -> GatewayConfig:
    """The embedded default: see the module docstring."""
    user = getpass.getuser()
    return GatewayConfig(
        state_dir=Path(DEFAULT_STATE_DIR).absolute(),
        users={
            user: UserConfig(
                name=user,
                authorized_keys=Path(os.path.expanduser("~")) / ".ssh" / "authorized_keys",
                # The one user reaches the gateway host as the account that started it.
                targets=(LOCAL_TARGET,),
                os_user=own_account(),
            )
        },
        default_password_user=user,
    )


class DefaultPasswordError(Exception):
    """The stored default password hash is unusable (the message says what to do)."""


def ensure_default_password(config: GatewayConfig, log: Logger | None = None) -> GatewayConfig:
    """For the embedded default: give the default user a password login.

    On first start a random password is generated, logged once, and only its hash is
    written to ``<state_dir>/default-password.hash`` (0600); later starts reuse the hash.
    Returns the config with the user's ``password_hash`` set (unchanged for a config file).
    """
    name = config.default_password_user
    if name is None or name not in config.users:
        return config
    log = log or _log
    path = config.default_password_file
    ensure_state_dir(config.state_dir)
    if not os.path.lexists(path):
        password = secrets.token_urlsafe(15)
        if write_new_private_file(path, (passwords.hash_password(password) + "\n").encode()):
            log.warn(
                "initial password for {user}: {password} (shown only this once; only its "
                "hash is kept in {path}: delete that file and restart for a new password)",
                user=name,
                password=password,
                path=str(path),
            )
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise DefaultPasswordError(f"{path}: not a regular file; delete it and restart")
        if st.st_mode & 0o077:
            raise DefaultPasswordError(
                f"{path}: permissions {st.st_mode & 0o777:04o} are too open (run: chmod 600 {path})"
            )
        with open(path, "rb") as f:
            stored = f.read(4096).decode("ascii", "replace").strip()
    except OSError as e:
        raise DefaultPasswordError(f"{path}: cannot read: {e.strerror}") from e
    if not passwords.is_hash(stored):
        raise DefaultPasswordError(
            f"{path}: not a password hash; delete the file and restart to generate a new password"
        )
    user = dataclasses.replace(config.users[name], password_hash=stored)
    return dataclasses.replace(config, users={**config.users, name: user})


# The module's reference table, written from the schema (python -OO drops docstrings).
__doc__ = (__doc__ or "").replace("{reference_table}", reference_table())
