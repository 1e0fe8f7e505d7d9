"""Config loading: every key, errors with file/line/key, the embedded default and its
generated password."""

from __future__ import annotations

import getpass
import os
import stat
from pathlib import Path

import pytest
from twisted.logger import Logger

from gateway import passwords
from gateway.config import (
    ConfigError,
    DefaultPasswordError,
    default_config,
    ensure_default_password,
    load_config,
    parse_config,
)
from protocols.auth import AuthLimits
from protocols.ssh1.settings import SSH1Settings
from protocols.ssh2.settings import SSH2Settings
from tests.support.gateway_helpers import LOCAL_ACCESS, OWN_ACCOUNT, LogCapture, fast_hash

HASH = fast_hash("secret")


def full_config(state_dir: str = "state") -> str:
    return f"""\
listen = ["tcp:2222:interface=127.0.0.1", "tcp:0"]
state_dir = "{state_dir}"
protocols = ["2"]
version_timeout = 10

[users.alice]
password = "{HASH}"
authorized_keys = "keys/alice"
auth = "all"
targets = ["local"]
os_user = "{OWN_ACCOUNT}"

[users."bob"]
authorized_keys = "/etc/keys/bob"
targets = ["local"]
os_user = "{OWN_ACCOUNT}"

[auth]
grace_time = 60
max_attempts = 3
failure_delay = 0.5

[session]
env_allow = ["LANG", "LC_*", "TZ"]

[ssh2]
kex = ["curve25519-sha256"]
host_key_algorithms = ["ssh-ed25519", "ssh-rsa"]
ciphers = ["aes128-ctr", "aes128-cbc"]
macs = ["hmac-sha2-256", "hmac-sha1"]
compression = true

[ssh1]
ciphers = ["blowfish"]
server_key_bits = 768
server_key_lifetime = 600
allow_x11_forwarding = true
allow_agent_forwarding = true
permit_open = ["localhost:80", "[::1]:22"]
"""


def test_every_key(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(full_config())
    config = load_config(path)
    assert config.source == path
    assert config.listen == ("tcp:2222:interface=127.0.0.1", "tcp:0")
    assert config.state_dir == tmp_path / "state"  # relative to the config file
    assert config.protocols == ("2",)
    assert config.version_timeout == 10.0
    alice, bob = config.users["alice"], config.users["bob"]
    assert alice.password_hash == HASH and alice.auth == "all"
    assert alice.authorized_keys == tmp_path / "keys" / "alice"
    assert alice.methods == ("password", "publickey")
    assert bob.password_hash is None and bob.auth == "any" and bob.methods == ("publickey",)
    assert bob.authorized_keys == Path("/etc/keys/bob")
    assert config.auth_limits == AuthLimits(grace_time=60, max_attempts=3, failure_delay=0.5)
    assert config.env_allow == ("LANG", "LC_*", "TZ")
    assert config.ssh2 == SSH2Settings(
        kex=("curve25519-sha256",),
        host_key_algorithms=("ssh-ed25519", "ssh-rsa"),
        ciphers=("aes128-ctr", "aes128-cbc"),
        macs=("hmac-sha2-256", "hmac-sha1"),
        compression=True,
    )
    assert config.ssh1 == SSH1Settings(
        ciphers=("blowfish",),
        server_key_bits=768,
        server_key_lifetime=600.0,
        allow_x11_forwarding=True,
        allow_agent_forwarding=True,
        permit_open=("localhost:80", "[::1]:22"),
    )


def test_minimal_config_gets_defaults():
    config = parse_config(VALID_USER, base=Path("/srv"))
    assert config.listen == ("tcp:2222:interface=127.0.0.1",)
    assert config.protocols == ("1", "2")
    assert config.version_timeout == 30.0
    assert config.state_dir == Path("/srv/sshgateway-state")
    assert config.auth_limits == AuthLimits()
    assert config.env_allow == ("LANG", "LC_*")
    assert config.ssh2 == SSH2Settings() and config.ssh1 == SSH1Settings()


def test_home_is_expanded(monkeypatch):
    monkeypatch.setenv("HOME", "/home/zed")
    config = parse_config('[users.zed]\nauthorized_keys = "~/.ssh/authorized_keys"\n' + LOCAL_ACCESS)
    assert config.users["zed"].authorized_keys == Path("/home/zed/.ssh/authorized_keys")


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.toml")
    return info.value


VALID_USER = f'[users.alice]\npassword = "{HASH}"\n{LOCAL_ACCESS}'


@pytest.mark.parametrize(
    "text,line,key,words",
    [
        ('listne = ["tcp:2222"]\n' + VALID_USER, 1, "listne", "unknown key"),
        (VALID_USER + 'auht = "all"\n', 5, "users.alice.auht", "unknown key"),
        (VALID_USER + "[auth]\ngrace_tme = 5\n", 6, "auth.grace_tme", "unknown key"),
        (VALID_USER + "[ssh3]\n", 5, "ssh3", "unknown key"),
        (VALID_USER + '[ssh2]\nkex = ["curve25519-sha256", "nope"]\n', 6, "ssh2.kex", "nope"),
        (VALID_USER + "[ssh2]\nciphers = []\n", 6, "ssh2.ciphers", "must not be empty"),
        (VALID_USER + '[ssh1]\nciphers = ["rc4"]\n', 6, "ssh1.ciphers", "rc4"),
        (VALID_USER + "[ssh1]\nserver_key_bits = 2000\n", 6, "ssh1.server_key_bits", "differ"),
        (VALID_USER + '[ssh1]\npermit_open = ["nohost"]\n', 6, "ssh1.permit_open", "host:port"),
        (VALID_USER + "[auth]\nmax_attempts = 0\n", 6, "auth.max_attempts", "at least 1"),
        (VALID_USER + "[auth]\nmax_attempts = true\n", 6, "auth.max_attempts", "integer"),
        (VALID_USER + "[auth]\nfailure_delay = -1\n", 6, "auth.failure_delay", ">= 0"),
        ('protocols = ["3"]\n' + VALID_USER, 1, "protocols", "unknown protocol"),
        ('protocols = "2"\n' + VALID_USER, 1, "protocols", "list"),
        ('listen = ["bogus:1"]\n' + VALID_USER, 1, "listen", "bad endpoint"),
        ('version_timeout = "x"\n' + VALID_USER, 1, "version_timeout", "number"),
        (VALID_USER + 'auth = "some"\n', 5, "users.alice.auth", '"any" or "all"'),
        ('[users.carol]\nauth = "any"\n' + LOCAL_ACCESS, 1, "users.carol", "neither password"),
        ("[users]\n", 1, "users", "nobody could log in"),
        ('[users."a b"]\nauthorized_keys = "k"\n', 1, "users.a b", "user names"),
        (
            'users.dave.password = "' + HASH + '"\nusers.dave.shell = "x"\n',
            2,
            "users.dave.shell",
            "unknown",
        ),
        (VALID_USER + "[session]\nenv_allow = [1]\n", 6, "session.env_allow", "strings"),
        (
            '[users.alice]\npassword = "$scrypt$n=3,r=1,p=1$AAAA$AAAA"\n',
            2,
            "users.alice.password",
            "not a usable password hash",
        ),
    ],
)
def test_errors_name_file_line_key_and_show_the_line(text, line, key, words):
    error = error_of(text)
    problem = next(p for p in error.problems if p.key == key)
    assert problem.file == "gw.toml" and problem.line == line
    assert words in problem.message
    assert problem.text == text.splitlines()[line - 1].strip() or "redacted" in problem.text
    assert f"gw.toml:{line}: {key}: " in str(error)


def test_every_error_is_reported_at_once():
    error = error_of('listne = 1\n[users.alice]\npassword = "{HASH}"\nauht = 1\n' + LOCAL_ACCESS)
    assert [p.key for p in error.problems] == ["listne", "users.alice.password", "users.alice.auht"]


def test_plaintext_password_is_an_error_and_never_echoed():
    error = error_of('[users.alice]\npassword = "hunter2"\n')
    assert "sshgateway hash-password" in str(error)
    assert "hunter2" not in str(error)
    assert 'password = "<redacted>"' in str(error)
    error = error_of('[users.alice]\npasword = "hunter2"\nauthorized_keys = "k"\n')
    assert "hunter2" not in str(error)  # a misspelled key is still hidden


def test_syntax_error_has_line_and_text():
    error = error_of(VALID_USER + "[auth\n")
    (problem,) = error.problems
    assert problem.line == 5 and "TOML syntax error" in problem.message
    assert problem.text == "[auth"


def test_syntax_error_on_a_password_line_hides_it():
    error = error_of('[users.alice]\npassword = "hunter2\n')
    assert "hunter2" not in str(error)


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[users.alice]\npassword = "\xff"\n')
    with pytest.raises(ConfigError, match=r"bad.toml:2: not valid UTF-8"):
        load_config(bad)


def test_ssh1_key_gap_only_matters_when_ssh1_is_on():
    parse_config('protocols = ["2"]\n' + VALID_USER + "[ssh1]\nserver_key_bits = 2000\n")


# --- the embedded default -----------------------------------------------------------------


def test_default_config(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = default_config()
    user = getpass.getuser()
    assert config.listen == ("tcp:2222:interface=127.0.0.1",)
    assert config.state_dir == tmp_path / "sshgateway-state"
    assert config.protocols == ("1", "2")
    assert list(config.users) == [user]
    assert config.users[user].authorized_keys == Path(os.path.expanduser("~/.ssh/authorized_keys"))
    assert config.default_password_user == user


def test_default_password_generated_once_logged_once_stored_hashed(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)
    monkeypatch.setattr(passwords.hash_password, "__kwdefaults__", {"n": 2**8, "r": 8, "p": 1})
    logs = LogCapture()
    config = ensure_default_password(default_config(), Logger(observer=logs))
    user = config.default_password_user
    stored = config.users[user].password_hash
    path = config.default_password_file
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(config.state_dir).st_mode) == 0o700
    assert path.read_text().strip() == stored
    (line,) = logs
    assert line.startswith(f"initial password for {user}: ")
    password = line.split(": ")[1].split(" ")[0]
    assert passwords.verify_password(stored, password)
    assert password not in path.read_text()

    # Second start: same hash, nothing printed.
    again = ensure_default_password(default_config(), Logger(observer=logs))
    assert again.users[user].password_hash == stored and len(logs) == 1

    # Delete the file: a new password.
    path.unlink()
    renewed = ensure_default_password(default_config(), Logger(observer=logs))
    assert renewed.users[user].password_hash != stored and len(logs) == 2


def test_default_password_file_checks(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = default_config()
    config.state_dir.mkdir(mode=0o700)
    config.default_password_file.write_text("hunter2\n")
    os.chmod(config.default_password_file, 0o600)
    with pytest.raises(DefaultPasswordError, match="delete the file"):
        ensure_default_password(config)
    config.default_password_file.write_text(fast_hash("x") + "\n")
    os.chmod(config.default_password_file, 0o644)
    with pytest.raises(DefaultPasswordError, match="too open"):
        ensure_default_password(config)


def test_config_file_needs_no_default_password(tmp_path):
    config = parse_config(VALID_USER, base=tmp_path)
    assert ensure_default_password(config) is config
    assert not (tmp_path / "sshgateway-state").exists()


def test_reference_table_documents_every_key():
    from gateway import config as module

    doc = module.__doc__
    tables = {
        "users", "auth", "session", "ssh2", "ssh1", "targets", "flows", "audit", "limits",
        "metrics", "recording", "control",
    }
    for key in module.TOP_KEYS - tables:
        assert f"| `{key}` |" in doc
    for section, keys in (
        ("users.NAME", module.USER_KEYS),
        ("auth", module.AUTH_KEYS),
        ("session", module.SESSION_KEYS),
        ("ssh2", module.SSH2_KEYS),
        ("ssh1", module.SSH1_KEYS),
        ("flows", module.FLOWS_KEYS),
        ("audit", module.AUDIT_KEYS),
        ("control", module.CONTROL_KEYS),
        ("limits", module.LIMITS_KEYS),
        ("metrics", module.METRICS_KEYS),
        ("targets.NAME", set().union(*module.TARGET_KEYS.values())),
    ):
        for key in keys:
            assert f"| `[{section}] {key}` |" in doc, (section, key)


def test_default_password_file_that_is_not_a_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = default_config()
    config.default_password_file.mkdir(parents=True)
    with pytest.raises(DefaultPasswordError, match="not a regular file"):
        ensure_default_password(config)
