"""The gateway's configuration: the TOML file, its validation (with file, line and key in
every error), and the embedded default a newcomer starts with.

Reference (Markdown, ready for the README). Every key is listed; any other key is an
error, so that a typo cannot silently weaken security. Relative paths are relative to the
config file's directory; `~` is expanded. Numbers are seconds unless said otherwise.

| key | default | meaning |
| --- | --- | --- |
| `listen` | `["tcp:2222:interface=127.0.0.1"]` | Twisted server endpoint strings to listen on (one or more) |
| `state_dir` | `"sshgateway-state"` | host keys and records; created mode 0700 on first start |
| `protocols` | `["1", "2"]` | SSH versions offered: banner `SSH-1.99` for both, `SSH-2.0` or `SSH-1.5` for one |
| `version_timeout` | `30` | time a client has to send its version line |
| `[users.NAME]` | (at least one) | a login name: 1-64 of `A-Z a-z 0-9 . _ @ -` |
| `[users.NAME] password` | none | a hash from `sshgateway hash-password` (scrypt; bcrypt `$2b$` also accepted); plaintext is refused |
| `[users.NAME] authorized_keys` | none | OpenSSH authorized_keys file: SSH-2 lines and SSH-1 `bits e n` lines; `ssh-rsa` keys serve SSH-1 too. Re-read when it changes; ignored while group/world-writable. Keys whose options the gateway cannot enforce (`command=`, `from=`, `no-pty`, ...) are skipped with a log line |
| `[users.NAME] auth` | `"any"` | `"any"`: one configured method suffices; `"all"`: every configured method must pass (SSH-2 answers with partial success; SSH-1 cannot, so such users cannot log in over SSH-1) |
| `[users.NAME] targets` | `["local"]` | the targets this user may reach (names of `[targets.NAME]` tables, or `local`) |
| `[users.NAME] target` | none | the target used when the login name has no `+TARGET`; must be in `targets` |
| `[auth] grace_time` | `120` | from connect to successful login |
| `[auth] max_attempts` | `6` | failed attempts before disconnect |
| `[auth] failure_delay` | `1.0` | a failed attempt answers no sooner than this |
| `[session] env_allow` | `["LANG", "LC_*"]` | environment variables a client may set (case-sensitive fnmatch patterns) |
| `[ssh2] kex` | `mlkem768x25519-sha256`, `curve25519-sha256`, `diffie-hellman-group-exchange-sha256` | key exchange, in order of preference; opt-in: `curve25519-sha256@libssh.org`, `diffie-hellman-group14-sha1`, `diffie-hellman-group-exchange-sha1` |
| `[ssh2] host_key_algorithms` | `ssh-ed25519`, `rsa-sha2-512`, `rsa-sha2-256` | opt-in: `ssh-rsa` |
| `[ssh2] ciphers` | `chacha20-poly1305@openssh.com`, `aes256-gcm@openssh.com`, `aes128-gcm@openssh.com`, `aes256-ctr`, `aes192-ctr`, `aes128-ctr` | opt-in: `aes256-cbc`, `aes192-cbc`, `aes128-cbc`, `3des-cbc` |
| `[ssh2] macs` | `hmac-sha2-512-etm@openssh.com`, `hmac-sha2-256-etm@openssh.com`, `hmac-sha2-512`, `hmac-sha2-256` | opt-in: `hmac-sha1-etm@openssh.com`, `hmac-sha1`; unused with an AEAD cipher (chacha20-poly1305, AES-GCM) |
| `[ssh2] compression` | `false` | also offer zlib |
| `[ssh2] rekey_limit` | `1073741824` | bytes (both directions) after which the gateway starts a new key exchange; 65536 to 4 GiB |
| `[ssh2] rekey_interval` | `3600` | seconds after which the gateway starts a new key exchange |
| `[ssh1] ciphers` | `["3des", "blowfish"]` | SSH-1 ciphers; `des` and `none` only when listed |
| `[ssh1] server_key_bits` | `1024` | SSH-1 server key size (512-4096); must differ from the 2048-bit host key by at least 128 bits |
| `[ssh1] server_key_lifetime` | `3600` | the server key is regenerated after this (if it was used); at least 60 |
| `[ssh1] allow_x11_forwarding` | `false` | grant SSH-1 X11 forwarding |
| `[ssh1] allow_agent_forwarding` | `false` | grant SSH-1 agent forwarding |
| `[ssh1] permit_open` | `[]` | `"host:port"` destinations SSH-1 `-L` may reach; empty refuses all |
| `[flows] enabled` | `true` | record one flow per connection leg (client legs and upstream legs) in `<state_dir>/flows/flows.jsonl`, for `sshgateway flows`; names, sizes and timings only, never passwords, keys or session data |
| `[flows] max_bytes` | `10485760` | size at which `flows.jsonl` is rotated to `flows.jsonl.1` (at least 4096) |
| `[flows] keep` | `5` | rotated files kept (`flows.jsonl.1` ... `.N`); older ones are deleted; `0` keeps none |
| `[targets.NAME]` | `local` only | an upstream a user reaches by logging in as `user+NAME`; NAME is 1-64 of `A-Z a-z 0-9 . _ -`. `local` (programs on the gateway host) always exists |
| `[targets.NAME] protocol` | (required) | `"ssh1"`, `"ssh2"`, `"telnet"` or `"local"`; each protocol takes only the keys below that name it (`local` takes none) |
| `[targets.NAME] host` | (required) | upstream host name or address (ssh1, ssh2, telnet) |
| `[targets.NAME] port` | `22`, telnet `23` | upstream TCP port |
| `[targets.NAME] username` | the gateway user's name | upstream login name |
| `[targets.NAME] password` | none | stored upstream password, in plaintext by necessity: keep the file `chmod 600`, owned by the gateway's user (`check-config` warns otherwise) |
| `[targets.NAME] key` | none | upstream private key file (ssh1: SSH-1 RSA; ssh2: OpenSSH/PEM), unencrypted, `chmod 600` |
| `[targets.NAME] credentials` | `"stored"` | `"stored"`: `password`/`key` above; `"pass-through"`: the password the user gave the gateway is sent upstream (users who log in with a key cannot use such a target) |
| `[targets.NAME] host_key` | `"accept-new"` | ssh1, ssh2: `"accept-new"` (trust on first use: pinned in `<state_dir>/known_hosts`, ssh1 in `known_hosts.ssh1`, once the key exchange with it succeeded), `"strict"` (must already be pinned there), or a fingerprint (`SHA256:...`; ssh1 also MD5 colon-hex) |
| `[targets.NAME] connect_timeout` | `10` | from session request to open upstream session |
| `[targets.NAME] idle_timeout` | `0` | close the session after this long without data either way; `0`: never |
| `[targets.NAME] ciphers` | modern defaults | ssh1: from `3des`, `blowfish`, `des`; ssh2: cipher names in order of preference, legacy ones (`aes128-cbc`, `3des-cbc`) only when listed |
| `[targets.NAME] compression` | `0` | ssh1: zlib level (1-9) to request from the device; `0` for none |
| `[targets.NAME] kex` | modern defaults | ssh2: key exchange names, in order (`diffie-hellman-group1-sha1` only when listed) |
| `[targets.NAME] host_key_algorithms` | modern defaults | ssh2: host key algorithm names, in order (`ssh-rsa` only when listed) |
| `[targets.NAME] macs` | modern defaults | ssh2: MAC names, in order (`hmac-sha1`, `hmac-sha1-etm@openssh.com` only when listed) |
| `[targets.NAME] login_prompt` | none | telnet: a regular expression matched on upstream output; when it matches, the username is sent |
| `[targets.NAME] password_prompt` | none | telnet: a regular expression; when it matches, the password is sent |
| `[targets.NAME] shell_prompt` | none | telnet: a regular expression for the device shell's prompt at the end of a line; with it a command's output is cut from the first prompt to the next (no banner, no prompts) and `exit` is typed only once the command is done, so no output is lost |

Routing: a login name `alice+switch1` authenticates `alice` and asks for target `switch1`.
Without `+TARGET` the user's `target` is used; else an interactive session (shell, no
command) of a user with several targets gets a numbered menu; else `local` if allowed,
else the user's only target. A target that does not exist and one the user may not reach
get the same answer: one line on stderr and exit status 255.

Without a config file (:func:`default_config`): listen on 127.0.0.1:2222, state in
`./sshgateway-state`, one user — the invoking OS user — with `~/.ssh/authorized_keys`
and a generated password: :func:`ensure_default_password` (called by the service at start)
creates it on first start, prints it once to the log (`initial password for USER: ...`)
and keeps only its hash in `<state_dir>/default-password.hash` (0600). Delete that file
and restart for a new one.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
import secrets
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from gateway import passwords
from gateway.hostkeys import SSH1_HOST_KEY_BITS, ensure_state_dir, write_new_private_file
from gateway.targets import DEFAULT_PORTS, TARGET_PROTOCOLS, TargetConfig
from protocols.auth import METHOD_PASSWORD, METHOD_PUBLICKEY, AuthLimits
from protocols.ssh1.settings import KNOWN_CIPHERS as SSH1_KNOWN_CIPHERS
from protocols.ssh1.settings import SSH1Settings
from protocols.ssh2.settings import SSH2Settings

DEFAULT_LISTEN = ("tcp:2222:interface=127.0.0.1",)
DEFAULT_STATE_DIR = "sshgateway-state"
DEFAULT_PROTOCOLS = ("1", "2")
DEFAULT_VERSION_TIMEOUT = 30.0
DEFAULT_ENV_ALLOW = ("LANG", "LC_*")
DEFAULT_PASSWORD_FILE = "default-password.hash"
MAX_CONFIG_BYTES = 1024 * 1024

_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}\Z")
# No "+" (it separates user and target in a login name) and no "@" (ssh user@host).
_TARGET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}\Z")
LOCAL_TARGET = "local"
DEFAULT_USER_TARGETS = (LOCAL_TARGET,)
_log = Logger()


@dataclass(frozen=True)
class UserConfig:
    name: str
    password_hash: str | None = None
    authorized_keys: Path | None = None
    auth: str = "any"  # "any" | "all"
    target: str | None = None  # default target when the login name has no +TARGET
    targets: tuple[str, ...] = DEFAULT_USER_TARGETS  # targets this user may reach

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
class FlowsConfig:
    """The ``[flows]`` table: flow recording (gateway.flows)."""

    enabled: bool = True
    max_bytes: int = 10 * 1024 * 1024
    keep: int = 5


@dataclass(frozen=True)
class GatewayConfig:
    listen: tuple[str, ...] = DEFAULT_LISTEN
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    version_timeout: float = DEFAULT_VERSION_TIMEOUT
    users: Mapping[str, UserConfig] = field(default_factory=dict)
    # Always holds the built-in ``local``; upstream targets come from [targets.NAME].
    targets: Mapping[str, TargetConfig] = field(
        default_factory=lambda: {LOCAL_TARGET: TargetConfig(LOCAL_TARGET, "local")}
    )
    auth_limits: AuthLimits = field(default_factory=AuthLimits)
    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW
    ssh2: SSH2Settings = field(default_factory=SSH2Settings)
    ssh1: SSH1Settings = field(default_factory=SSH1Settings)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
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
    def __init__(self, source: str, lines: _Lines | None) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[ConfigProblem] = []

    def error(self, path: tuple[str, ...], message: str, *, hide_value: bool = False) -> None:
        line, text = self.lines.locate(path) if self.lines else (None, "")
        if hide_value and "=" in text:
            text = text.split("=", 1)[0] + '= "<redacted>"'
        self.problems.append(ConfigProblem(self.source, line, ".".join(path), message, text))

    # Typed getters: record a problem and return None when the value is unusable.

    def table(self, data: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
        value = data.get(path[-1], {})
        if not isinstance(value, dict):
            self.error(path, "must be a table")
            return None
        return value

    def named_table(
        self, path: tuple[str, str], raw: Any, name_pattern: re.Pattern[str], name_rule: str
    ) -> dict[str, Any] | None:
        """A ``[SECTION.NAME]`` table: its name must match ``name_pattern`` (``name_rule``
        says how to the user) and its value must be a table."""
        section, name = path
        if not name_pattern.match(name):
            self.error(path, name_rule)
            return None
        if not isinstance(raw, dict):
            self.error(path, f"must be a table ([{section}.NAME])")
            return None
        return raw

    def known(self, data: Mapping[str, Any], path: tuple[str, ...], keys: set[str]) -> None:
        for key in data:
            if key not in keys:
                hint = f" (known here: {', '.join(sorted(keys))})" if keys else ""
                # A misspelled key in a user table may well hold a password.
                hidden = path[:1] == ("users",)
                self.error(path + (key,), f"unknown key{hint}", hide_value=hidden)

    def number(
        self, data: Mapping[str, Any], path: tuple[str, ...], default: float, *, minimum: float
    ) -> float:
        value = data.get(path[-1], default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, "must be a number")
            return default
        if value < minimum or value != value or value == float("inf"):
            self.error(path, f"must be a finite number >= {minimum}")
            return default
        return float(value)

    def integer(
        self, data: Mapping[str, Any], path: tuple[str, ...], default: int, *, minimum: int
    ) -> int:
        value = data.get(path[-1], default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, "must be an integer")
            return default
        if value < minimum:
            self.error(path, f"must be at least {minimum}")
            return default
        return value

    def boolean(self, data: Mapping[str, Any], path: tuple[str, ...], default: bool) -> bool:
        value = data.get(path[-1], default)
        if not isinstance(value, bool):
            self.error(path, "must be true or false")
            return default
        return value

    def string(self, data: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
        value = data.get(path[-1])
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.error(path, "must be a non-empty string")
            return None
        return value

    def strings(
        self,
        data: Mapping[str, Any],
        path: tuple[str, ...],
        default: tuple[str, ...],
        *,
        allow_empty: bool = False,
    ) -> tuple[str, ...]:
        value = data.get(path[-1], default)
        if isinstance(value, tuple):
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.error(path, "must be a list of non-empty strings")
            return default
        if not value and not allow_empty:
            self.error(path, "must not be empty")
            return default
        if len(set(value)) != len(value):
            self.error(path, "lists a value twice")
        return tuple(value)


# --- the schema ----------------------------------------------------------------------------

TOP_KEYS = {
    "listen",
    "state_dir",
    "protocols",
    "version_timeout",
    "users",
    "auth",
    "session",
    "ssh2",
    "ssh1",
    "targets",
    "flows",
}
USER_KEYS = {"password", "authorized_keys", "auth", "target", "targets"}
_UPSTREAM_KEYS = {
    "protocol",
    "host",
    "port",
    "username",
    "password",
    "credentials",
    "connect_timeout",
    "idle_timeout",
}
# Which keys each target protocol takes; a key of another protocol is an error too.
TARGET_KEYS = {
    "local": {"protocol"},
    "ssh1": _UPSTREAM_KEYS | {"key", "host_key", "ciphers", "compression"},
    "ssh2": _UPSTREAM_KEYS | {"key", "host_key", "ciphers", "kex", "host_key_algorithms", "macs"},
    "telnet": _UPSTREAM_KEYS | {"login_prompt", "password_prompt", "shell_prompt"},
}
CREDENTIALS = ("stored", "pass-through")
HOST_KEY_POLICIES = ("accept-new", "strict")
_SHA256_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?\Z")
_MD5_FINGERPRINT = re.compile(r"(?:MD5:)?[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){15}\Z")
MAX_PROMPT_PATTERN = 1024
AUTH_KEYS = {"grace_time", "max_attempts", "failure_delay"}
SESSION_KEYS = {"env_allow"}
SSH2_KEYS = {"kex", "host_key_algorithms", "ciphers", "macs", "compression", "rekey_limit", "rekey_interval"}
SSH1_KEYS = {
    "ciphers",
    "server_key_bits",
    "server_key_lifetime",
    "allow_x11_forwarding",
    "allow_agent_forwarding",
    "permit_open",
}
KNOWN_PROTOCOLS = ("1", "2")
FLOWS_KEYS = {"enabled", "max_bytes", "keep"}

# A Twisted endpoint parser only stores the reactor; this one is never used to listen.
_NO_REACTOR = object()


def _path(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


def _check_listen(v: _Validator, data: Mapping[str, Any]) -> tuple[str, ...]:
    listen = v.strings(data, ("listen",), DEFAULT_LISTEN)
    for description in listen:
        try:
            serverFromString(_NO_REACTOR, description)
        except Exception as e:  # the parser raises ValueError, KeyError, TypeError...
            v.error(("listen",), f"bad endpoint {description!r}: {e}")
    return listen


def _check_user(
    v: _Validator, name: str, raw: Any, base: Path, targets: Mapping[str, TargetConfig]
) -> UserConfig | None:
    path = ("users", name)
    rule = "user names are 1-64 of A-Z a-z 0-9 . _ @ - (not starting with . @ -)"
    if v.named_table(path, raw, _USER_NAME, rule) is None:
        return None
    v.known(raw, path, USER_KEYS)
    password = raw.get("password")
    password_hash = None
    if password is not None:
        if not isinstance(password, str) or not password:
            v.error(path + ("password",), "must be a password hash string")
        elif not password.startswith("$"):
            v.error(
                path + ("password",),
                "looks like a plaintext password: store only its hash, made with "
                "`sshgateway hash-password` (reads the password on stdin)",
            )
        else:
            try:
                passwords.check_hash(password)
                password_hash = password
            except passwords.InvalidHash as e:
                v.error(path + ("password",), f"not a usable password hash: {e}")
    keys_file = v.string(raw, path + ("authorized_keys",))
    auth = raw.get("auth", "any")
    if auth not in ("any", "all"):
        v.error(path + ("auth",), 'must be "any" or "all"')
        auth = "any"
    allowed = v.strings(raw, path + ("targets",), DEFAULT_USER_TARGETS)
    for target_name in allowed:
        if target_name not in targets:
            v.error(
                path + ("targets",),
                f"unknown target {target_name!r} (defined: {', '.join(sorted(targets))})",
            )
    allowed = tuple(t for t in allowed if t in targets)
    default_target = v.string(raw, path + ("target",))
    if default_target is not None and default_target not in allowed:
        known = "" if default_target in targets else " (and no such target is defined)"
        v.error(
            path + ("target",),
            f"{default_target!r} is not in this user's targets "
            f"({', '.join(allowed) or 'none'}){known}",
        )
        default_target = None
    if password is None and keys_file is None:
        v.error(path, "has neither password nor authorized_keys: nobody could log in as it")
        return None
    return UserConfig(
        name=name,
        password_hash=password_hash,
        authorized_keys=_path(keys_file, base) if keys_file else None,
        auth=auth,
        target=default_target,
        targets=allowed,
    )


def _check_prompt(v: _Validator, raw: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
    pattern = v.string(raw, path)
    if pattern is None:
        return None
    if len(pattern) > MAX_PROMPT_PATTERN:
        v.error(path, f"longer than {MAX_PROMPT_PATTERN} characters")
        return None
    try:
        re.compile(pattern.encode("utf-8"))
    except re.error as e:
        v.error(path, f"not a regular expression: {e}")
        return None
    return pattern


def _check_host_key(v: _Validator, raw: Mapping[str, Any], path: tuple[str, ...]) -> str:
    policy = raw.get(path[-1], "accept-new")
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
        return "accept-new"
    if _MD5_FINGERPRINT.match(policy) and raw.get("protocol") != "ssh1":
        v.error(path, "MD5 fingerprints are for ssh1 targets; use the SHA256: form")
        return "accept-new"
    return policy


def _check_target(v: _Validator, name: str, raw: Any, base: Path) -> TargetConfig | None:
    path = ("targets", name)
    rule = "target names are 1-64 of A-Z a-z 0-9 . _ - (not starting with . -)"
    if v.named_table(path, raw, _TARGET_NAME, rule) is None:
        return None
    protocol = raw.get("protocol")
    if protocol not in TARGET_PROTOCOLS:
        if protocol is None:
            v.error(path, f"protocol is required ({', '.join(TARGET_PROTOCOLS)})")
        else:
            v.error(path + ("protocol",), f"must be one of {', '.join(TARGET_PROTOCOLS)}")
        return None
    if name == LOCAL_TARGET and protocol != "local":
        v.error(path + ("protocol",), 'the built-in target "local" must stay protocol "local"')
        return None
    allowed = TARGET_KEYS[protocol]
    for key in raw:
        if key not in allowed:
            used_by = [p for p, keys in TARGET_KEYS.items() if key in keys]
            why = f"not used by {protocol} targets" if used_by else "unknown key"
            # Any key here may hold a password (a typo of "password" included).
            v.error(
                path + (key,), f"{why} (known here: {', '.join(sorted(allowed))})", hide_value=True
            )
    if protocol == "local":
        return TargetConfig(name, protocol)

    problems = len(v.problems)
    host = v.string(raw, path + ("host",))
    if host is None and "host" not in raw:
        v.error(path, "host is required")
    elif host is not None and (len(host) > 255 or any(c.isspace() for c in host)):
        v.error(path + ("host",), "must be a host name or address (no spaces, at most 255)")
    port = v.integer(raw, path + ("port",), DEFAULT_PORTS[protocol], minimum=1)
    if port > 65535:
        v.error(path + ("port",), "must be at most 65535")
    username = v.string(raw, path + ("username",))
    if username is not None and (len(username) > 256 or not username.isprintable()):
        v.error(path + ("username",), "must be printable and at most 256 characters")
    password = raw.get("password")
    if password is not None and (not isinstance(password, str) or not password):
        v.error(path + ("password",), "must be a non-empty string", hide_value=True)
        password = None
    key_file = v.string(raw, path + ("key",))
    credentials = raw.get("credentials", "stored")
    if credentials not in CREDENTIALS:
        v.error(path + ("credentials",), f'must be "{CREDENTIALS[0]}" or "{CREDENTIALS[1]}"')
        credentials = "stored"
    if credentials == "pass-through" and (password is not None or key_file is not None):
        v.error(
            path + ("credentials",),
            '"pass-through" sends the gateway login password upstream: '
            "remove the stored password/key",
        )
    host_key = _check_host_key(v, raw, path + ("host_key",))
    connect_timeout = v.number(raw, path + ("connect_timeout",), 10.0, minimum=0.1)
    idle_timeout = v.number(raw, path + ("idle_timeout",), 0.0, minimum=0)
    algorithms: dict[str, tuple[str, ...]] = {}
    for key in ("ciphers", "kex", "host_key_algorithms", "macs"):
        if key in raw:
            algorithms[key] = v.strings(raw, path + (key,), ())
    for cipher in algorithms.get("ciphers", ()) if protocol == "ssh1" else ():
        if cipher not in SSH1_KNOWN_CIPHERS or cipher == "none":
            v.error(path + ("ciphers",), f"unknown ssh1 cipher {cipher!r} (3des, blowfish, des)")
    compression = v.integer(raw, path + ("compression",), 0, minimum=0)
    if compression > 9:
        v.error(path + ("compression",), "must be a zlib level from 1 to 9, or 0 for none")
    login_prompt = _check_prompt(v, raw, path + ("login_prompt",))
    password_prompt = _check_prompt(v, raw, path + ("password_prompt",))
    shell_prompt = _check_prompt(v, raw, path + ("shell_prompt",))
    if protocol == "ssh2":
        _check_ssh2_algorithms(v, path, name, algorithms)
    if len(v.problems) != problems:
        return None
    return TargetConfig(
        name=name,
        protocol=protocol,
        host=host or "",
        port=port,
        username=username,
        password=password,
        key=_path(key_file, base) if key_file else None,
        credentials=credentials,
        host_key=host_key,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        login_prompt=login_prompt,
        password_prompt=password_prompt,
        shell_prompt=shell_prompt,
        compression=compression,
        **algorithms,
    )


def _check_ssh2_algorithms(
    v: _Validator, path: tuple[str, ...], name: str, algorithms: Mapping[str, tuple[str, ...]]
) -> None:
    # The SSH-2 client owns its algorithm tables; asked one key at a time so that each
    # error names its own key and line. Without the module (a partial install) the
    # names are checked when the target is built at start-up instead.
    try:
        from gateway.targets.ssh2 import offered_algorithms
    except ImportError:
        return
    for key, names in algorithms.items():
        if not names:
            continue
        try:
            offered_algorithms(TargetConfig(name, "ssh2", **{key: names}))
        except ValueError as e:
            v.error(path + (key,), str(e))


def _check_targets(v: _Validator, data: Mapping[str, Any], base: Path) -> dict[str, TargetConfig]:
    targets = {LOCAL_TARGET: TargetConfig(LOCAL_TARGET, "local")}
    table = v.table(data, ("targets",))
    for name, raw in (table or {}).items():
        target = _check_target(v, name, raw, base)
        if target is not None:
            targets[name] = target
        elif _TARGET_NAME.match(name):
            # Known by name, so users that list it get no second, misleading error.
            targets[name] = TargetConfig(name, "local")
    return targets


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


def _build(data: Mapping[str, Any], v: _Validator, base: Path) -> GatewayConfig:
    v.known(data, (), TOP_KEYS)
    listen = _check_listen(v, data)
    state_dir = v.string(data, ("state_dir",)) or DEFAULT_STATE_DIR
    protocols = v.strings(data, ("protocols",), DEFAULT_PROTOCOLS)
    for p in protocols:
        if p not in KNOWN_PROTOCOLS:
            v.error(("protocols",), f'unknown protocol {p!r} (use "1" and/or "2")')
    protocols = tuple(p for p in KNOWN_PROTOCOLS if p in protocols) or DEFAULT_PROTOCOLS
    version_timeout = v.number(data, ("version_timeout",), DEFAULT_VERSION_TIMEOUT, minimum=1)

    targets = _check_targets(v, data, base)
    users: dict[str, UserConfig] = {}
    users_table = v.table(data, ("users",))
    if users_table is not None:
        for name, raw in users_table.items():
            user = _check_user(v, name, raw, base, targets)
            if user is not None:
                users[name] = user
        if not users_table:
            v.error(("users",), "no [users.NAME] configured: nobody could log in")

    auth = v.table(data, ("auth",)) or {}
    v.known(auth, ("auth",), AUTH_KEYS)
    defaults = AuthLimits()
    limits = AuthLimits(
        grace_time=v.number(auth, ("auth", "grace_time"), defaults.grace_time, minimum=1),
        max_attempts=v.integer(auth, ("auth", "max_attempts"), defaults.max_attempts, minimum=1),
        failure_delay=v.number(auth, ("auth", "failure_delay"), defaults.failure_delay, minimum=0),
    )

    session = v.table(data, ("session",)) or {}
    v.known(session, ("session",), SESSION_KEYS)
    env_allow = v.strings(session, ("session", "env_allow"), DEFAULT_ENV_ALLOW, allow_empty=True)

    ssh2_raw = v.table(data, ("ssh2",)) or {}
    v.known(ssh2_raw, ("ssh2",), SSH2_KEYS)
    ssh2_values: dict[str, Any] = {}
    for key in ("kex", "host_key_algorithms", "ciphers", "macs"):
        if key in ssh2_raw:
            ssh2_values[key] = v.strings(ssh2_raw, ("ssh2", key), ())
    if "compression" in ssh2_raw:
        ssh2_values["compression"] = v.boolean(ssh2_raw, ("ssh2", "compression"), False)
    if "rekey_limit" in ssh2_raw:
        ssh2_values["rekey_limit"] = v.integer(ssh2_raw, ("ssh2", "rekey_limit"), 0, minimum=0)
    if "rekey_interval" in ssh2_raw:
        ssh2_values["rekey_interval"] = v.number(ssh2_raw, ("ssh2", "rekey_interval"), 0, minimum=0)
    ssh2 = _settings(v, "ssh2", SSH2Settings, {k: x for k, x in ssh2_values.items() if x != ()})

    ssh1_raw = v.table(data, ("ssh1",)) or {}
    v.known(ssh1_raw, ("ssh1",), SSH1_KEYS)
    d1 = SSH1Settings()
    ssh1_values: dict[str, Any] = {}
    if "ciphers" in ssh1_raw:
        ssh1_values["ciphers"] = v.strings(ssh1_raw, ("ssh1", "ciphers"), d1.ciphers)
    if "server_key_bits" in ssh1_raw:
        ssh1_values["server_key_bits"] = v.integer(
            ssh1_raw, ("ssh1", "server_key_bits"), d1.server_key_bits, minimum=1
        )
    if "server_key_lifetime" in ssh1_raw:
        ssh1_values["server_key_lifetime"] = v.number(
            ssh1_raw, ("ssh1", "server_key_lifetime"), d1.server_key_lifetime, minimum=60
        )
    for key in ("allow_x11_forwarding", "allow_agent_forwarding"):
        if key in ssh1_raw:
            ssh1_values[key] = v.boolean(ssh1_raw, ("ssh1", key), False)
    if "permit_open" in ssh1_raw:
        permit = v.strings(ssh1_raw, ("ssh1", "permit_open"), (), allow_empty=True)
        for item in permit:
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                v.error(("ssh1", "permit_open"), f'{item!r} is not "host:port"')
        ssh1_values["permit_open"] = permit
    ssh1 = _settings(v, "ssh1", SSH1Settings, ssh1_values)
    if "1" in protocols:
        try:
            ssh1.check_host_key_bits(SSH1_HOST_KEY_BITS)
        except ValueError as e:
            v.error(("ssh1", "server_key_bits"), str(e))

    flows_raw = v.table(data, ("flows",)) or {}
    v.known(flows_raw, ("flows",), FLOWS_KEYS)
    fd = FlowsConfig()
    flows = FlowsConfig(
        enabled=v.boolean(flows_raw, ("flows", "enabled"), fd.enabled),
        max_bytes=v.integer(flows_raw, ("flows", "max_bytes"), fd.max_bytes, minimum=4096),
        keep=v.integer(flows_raw, ("flows", "keep"), fd.keep, minimum=0),
    )

    return GatewayConfig(
        listen=listen,
        state_dir=_path(state_dir, base),
        protocols=protocols,
        version_timeout=version_timeout,
        users=users,
        targets=targets,
        auth_limits=limits,
        env_allow=env_allow,
        ssh2=ssh2,
        ssh1=ssh1,
        flows=flows,
    )


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> GatewayConfig:
    """Validate TOML ``text``; :class:`ConfigError` lists every problem found."""
    lines = _Lines(text)
    v = _Validator(source, lines)
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
    config = _build(data, v, base if base is not None else Path.cwd())
    if v.problems:
        raise ConfigError(sorted(v.problems, key=lambda p: p.line or 0))
    return config


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate the TOML file at ``path``."""
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
    config = parse_config(text, str(source), base=source.resolve().parent)
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
