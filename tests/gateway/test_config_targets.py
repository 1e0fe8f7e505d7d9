"""Config: [targets.NAME] tables and the users' target / targets keys, with errors that
name file, line and key, and the warning for a readable file holding target passwords."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import ConfigError, config_warnings, load_config, parse_config
from gateway.targets import TargetConfig
from tests.support.gateway_helpers import LOCAL_ACCESS, OWN_ACCOUNT, fast_hash

HASH = fast_hash("secret")
FP = "SHA256:" + "A" * 43
MD5 = ":".join(["ab"] * 16)


def user(extra: str | None = None) -> str:
    """Alice's table: by default she reaches ``local``; ``extra`` replaces that (her OS
    account follows whenever it names ``local``)."""
    if extra is None:
        extra = LOCAL_ACCESS.rstrip("\n")
    elif '"local"' in extra:
        extra += f'\nos_user = "{OWN_ACCOUNT}"'
    return f'[users.alice]\npassword = "{HASH}"\n{extra}\n'


def parse(text: str, base: Path | None = None):
    return parse_config(text, "gw.toml", base=base or Path("/etc/gw"))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return [str(p) for p in info.value.problems]


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def test_every_target_key():
    config = parse(
        user('targets = ["local", "sw1", "host2", "tn"]\ntarget = "sw1"')
        + f"""
[targets.sw1]
protocol = "ssh1"
host = "192.0.2.10"
port = 2201
username = "admin"
password = "device-pw"
host_key = "{MD5}"
connect_timeout = 5
idle_timeout = 600
ciphers = ["3des", "des"]

[targets.host2]
protocol = "ssh2"
host = "host2.example"
key = "keys/host2"
host_key = "{FP}"
kex = ["diffie-hellman-group1-sha1"]
host_key_algorithms = ["ssh-rsa"]
ciphers = ["aes128-cbc", "3des-cbc"]
macs = ["hmac-sha1"]

[targets.tn]
protocol = "telnet"
host = "::1"
credentials = "pass-through"
login_prompt = "(?i)login: ?$"
password_prompt = "[Pp]assword:"
shell_prompt = "sw1[>#] ?"
"""
    )
    assert config.targets["sw1"] == TargetConfig(
        name="sw1",
        protocol="ssh1",
        host="192.0.2.10",
        port=2201,
        username="admin",
        password="device-pw",
        host_key=MD5,
        connect_timeout=5.0,
        idle_timeout=600.0,
        ciphers=("3des", "des"),
    )
    host2 = config.targets["host2"]
    assert host2.key == Path("/etc/gw/keys/host2") and host2.port == 22
    assert host2.host_key == FP and host2.credentials == "stored"
    assert host2.kex == ("diffie-hellman-group1-sha1",)
    assert host2.host_key_algorithms == ("ssh-rsa",)
    assert host2.ciphers == ("aes128-cbc", "3des-cbc") and host2.macs == ("hmac-sha1",)
    tn = config.targets["tn"]
    assert (tn.port, tn.credentials, tn.host_key) == (23, "pass-through", "accept-new")
    assert tn.login_prompt == "(?i)login: ?$" and tn.password_prompt == "[Pp]assword:"
    assert tn.shell_prompt == "sw1[>#] ?"
    assert (tn.connect_timeout, tn.idle_timeout, tn.username, tn.password) == (
        10.0,
        0.0,
        None,
        None,
    )
    alice = config.users["alice"]
    assert alice.targets == ("local", "sw1", "host2", "tn") and alice.target == "sw1"


def test_local_always_exists():
    config = parse(user())
    assert config.targets == {"local": TargetConfig("local", "local")}
    alice = config.users["alice"]
    assert alice.targets == ("local",) and alice.target is None
    assert alice.os_user == OWN_ACCOUNT


def test_local_may_be_declared_but_not_changed():
    config = parse(
        user() + '[targets.local]\nprotocol = "local"\n[targets.here]\nprotocol = "local"\n'
    )
    assert config.targets["here"].protocol == "local"
    found = only_problem(user() + '[targets.local]\nprotocol = "ssh2"\nhost = "h"\n')
    assert "gw.toml:6: targets.local.protocol" in found and "must stay" in found


def test_local_targets_take_no_other_key():
    found = only_problem(user() + '[targets.here]\nprotocol = "local"\nhost = "h"\n')
    assert "gw.toml:7: targets.here.host: not used by local targets" in found


@pytest.mark.parametrize(
    "body, line, key, message",
    [
        ('host = "h"', 5, "targets.t", "protocol is required"),
        ('protocol = "ssh3"\nhost = "h"', 6, "targets.t.protocol", "must be one of"),
        ('protocol = "ssh2"', 5, "targets.t", "host is required"),
        ('protocol = "ssh2"\nhost = ""', 7, "targets.t.host", "non-empty"),
        ('protocol = "ssh2"\nhost = "a b"', 7, "targets.t.host", "no spaces"),
        ('protocol = "ssh2"\nhost = "h"\nport = 0', 8, "targets.t.port", "at least 1"),
        ('protocol = "ssh2"\nhost = "h"\nport = 65536', 8, "targets.t.port", "at most 65535"),
        ('protocol = "ssh2"\nhost = "h"\nport = "22"', 8, "targets.t.port", "integer"),
        (
            'protocol = "ssh2"\nhost = "h"\ncredentials = "agent"',
            8,
            "targets.t.credentials",
            "pass-through",
        ),
        ('protocol = "ssh2"\nhost = "h"\nhost_key = "yes"', 8, "targets.t.host_key", "accept-new"),
        (
            'protocol = "ssh2"\nhost = "h"\nhost_key = "SHA256:short"',
            8,
            "targets.t.host_key",
            "fingerprint",
        ),
        (f'protocol = "ssh2"\nhost = "h"\nhost_key = "{MD5}"', 8, "targets.t.host_key", "MD5"),
        (
            'protocol = "ssh2"\nhost = "h"\nconnect_timeout = 0',
            8,
            "targets.t.connect_timeout",
            ">= 0.1",
        ),
        ('protocol = "ssh2"\nhost = "h"\nidle_timeout = -1', 8, "targets.t.idle_timeout", ">= 0"),
        ('protocol = "ssh2"\nhost = "h"\nkex = []', 8, "targets.t.kex", "must not be empty"),
        ('protocol = "ssh2"\nhost = "h"\nmacs = "hmac-sha1"', 8, "targets.t.macs", "list"),
        (
            'protocol = "ssh1"\nhost = "h"\nciphers = ["rc4"]',
            8,
            "targets.t.ciphers",
            "unknown ssh1 cipher",
        ),
        (
            'protocol = "ssh1"\nhost = "h"\nciphers = ["none"]',
            8,
            "targets.t.ciphers",
            "unknown ssh1 cipher",
        ),
        (
            'protocol = "ssh1"\nhost = "h"\nkex = ["x"]',
            8,
            "targets.t.kex",
            "not used by ssh1 targets",
        ),
        ('protocol = "telnet"\nhost = "h"\nkey = "k"', 8, "targets.t.key", "not used by telnet"),
        (
            'protocol = "telnet"\nhost = "h"\nhost_key = "strict"',
            8,
            "targets.t.host_key",
            "not used by telnet",
        ),
        (
            'protocol = "ssh2"\nhost = "h"\nlogin_prompt = "x"',
            8,
            "targets.t.login_prompt",
            "not used by ssh2",
        ),
        (
            'protocol = "telnet"\nhost = "h"\nlogin_prompt = "(unclosed"',
            8,
            "targets.t.login_prompt",
            "regular expression",
        ),
        (
            'protocol = "telnet"\nhost = "h"\nshell_prompt = "[unclosed"',
            8,
            "targets.t.shell_prompt",
            "regular expression",
        ),
        (
            'protocol = "ssh1"\nhost = "h"\nshell_prompt = "x"',
            8,
            "targets.t.shell_prompt",
            "not used by ssh1",
        ),
        (
            'protocol = "telnet"\nhost = "h"\npassword_prompt = ""',
            8,
            "targets.t.password_prompt",
            "non-empty",
        ),
        (
            'protocol = "ssh2"\nhost = "h"\nusername = "a\\u0007b"',
            8,
            "targets.t.username",
            "printable",
        ),
        ('protocol = "ssh2"\nhost = "h"\nfrobnicate = 1', 8, "targets.t.frobnicate", "unknown key"),
    ],
)
def test_target_errors_name_line_and_key(body, line, key, message):
    found = only_problem(user() + "[targets.t]\n" + body + "\n")
    assert found.startswith(f"gw.toml:{line}: {key}: "), found
    assert message in found, found


def test_long_prompt_pattern_is_refused():
    found = only_problem(
        user()
        + '[targets.t]\nprotocol = "telnet"\nhost = "h"\nlogin_prompt = "'
        + "a" * 2000
        + '"\n'
    )
    assert "longer than" in found


def test_pass_through_with_a_stored_secret_is_an_error():
    found = only_problem(
        user()
        + '[targets.t]\nprotocol = "ssh2"\nhost = "h"\ncredentials = "pass-through"\n'
        + 'password = "x"\n'
    )
    assert "targets.t.credentials" in found and "remove the stored password" in found


def test_password_values_never_appear_in_errors():
    for body in (
        'protocol = "ssh2"\nhost = "h"\npassword = 12345678',
        'protocol = "ssh2"\nhost = "h"\npasword = "hunter2-typo"',
        'protocol = "telnet"\nhost = "h"\nsecret = "hunter2-typo"',
        'protocol = "local"\npassword = "hunter2-typo"',
    ):
        text = "\n".join(problems(user() + "[targets.t]\n" + body + "\n"))
        assert "12345678" not in text and "hunter2" not in text, text
        assert "<redacted>" in text


@pytest.mark.parametrize("name", ["a+b", "a@b", "-x", ".x", "x" * 65, "a b"])
def test_target_names(name):
    found = only_problem(user() + f'[targets."{name}"]\nprotocol = "ssh2"\nhost = "h"\n')
    assert "target names are" in found


def test_target_table_must_be_a_table():
    found = only_problem("targets = 3\n" + user())
    assert found.startswith("gw.toml:1: targets: must be a table"), found


def test_users_target_lists():
    base = '[targets.sw1]\nprotocol = "ssh2"\nhost = "h"\n'
    found = only_problem(user('targets = ["local", "nope"]') + base)
    assert found.startswith("gw.toml:3: users.alice.targets: unknown target 'nope'"), found
    assert "defined: local, sw1" in found
    found = only_problem(user('target = "sw1"\ntargets = ["local"]') + base)
    assert found.startswith("gw.toml:3: users.alice.target: 'sw1' is not in this user's targets")
    found = only_problem(user('targets = ["sw1"]\ntarget = "ghost"') + base)
    assert "users.alice.target" in found and "no such target is defined" in found
    assert "must not be empty" in only_problem(user("targets = []"))
    assert "lists a value twice" in only_problem(user('targets = ["local", "local"]'))
    assert "must be a list" in only_problem(user('targets = "local"'))


def test_a_broken_target_gives_one_error_not_one_per_user():
    text = (
        user('targets = ["sw1"]')
        + '[users.bob]\npassword = "'
        + HASH
        + '"\ntargets = ["sw1"]\n'
        + '[targets.sw1]\nprotocol = "ssh2"\n'
    )
    found = problems(text)
    assert len(found) == 1 and "host is required" in found[0], found


def test_warns_about_a_readable_file_with_target_passwords(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(user() + '[targets.sw1]\nprotocol = "ssh1"\nhost = "h"\npassword = "pw"\n')
    os.chmod(path, 0o644)
    [warning] = config_warnings(load_config(path))
    assert "holds upstream passwords" in warning and "0644" in warning and "chmod 600" in warning
    assert 'pw"' not in warning
    os.chmod(path, 0o600)
    assert config_warnings(load_config(path)) == []
    path.write_text(user() + '[targets.sw1]\nprotocol = "ssh1"\nhost = "h"\n')
    os.chmod(path, 0o644)
    assert config_warnings(load_config(path)) == []


def test_ssh2_algorithm_names_are_checked_by_the_ssh2_client():
    pytest.importorskip("gateway.targets.ssh2")
    found = problems(
        user()
        + '[targets.t]\nprotocol = "ssh2"\nhost = "h"\n'
        + 'kex = ["diffie-hellman-group1-sha1"]\nciphers = ["rot13"]\nmacs = ["hmac-md4"]\n'
    )
    assert len(found) == 2, found
    assert found[0].startswith("gw.toml:9: targets.t.ciphers: ") and "rot13" in found[0]
    assert found[1].startswith("gw.toml:10: targets.t.macs: ") and "hmac-md4" in found[1]


def test_old_device_settings_of_an_ssh2_target():
    pytest.importorskip("gateway.targets.ssh2")
    device = (
        '[targets.ilo]\nprotocol = "ssh2"\nhost = "h"\nhost_key_algorithms = ["ssh-dss"]\n'
        'kex = ["diffie-hellman-group1-sha1"]\nciphers = ["3des-cbc", "aes256-cbc"]\n'
        'macs = ["hmac-md5", "hmac-sha1-96"]\nrekey = false\n'
    )
    target = parse(user() + device).targets["ilo"]
    assert (target.host_key_algorithms, target.macs, target.rekey) == (
        ("ssh-dss",), ("hmac-md5", "hmac-sha1-96"), False
    )
    assert parse(user() + '[targets.t]\nprotocol = "ssh2"\nhost = "h"\n').targets["t"].rekey
    found = problems(
        user() + '[targets.t]\nprotocol = "ssh2"\nhost = "h"\nhost_key_algorithms = ["ssh-dsa"]\n'
        'rekey = "no"\n'
    )
    assert len(found) == 2, found
    assert "targets.t.host_key_algorithms: " in found[0]
    assert "unknown algorithm 'ssh-dsa'" in found[0] and "ssh-dss" in found[0]
    assert "targets.t.rekey: must be true or false" in found[1]
    assert "not used by telnet targets" in only_problem(
        user() + '[targets.t]\nprotocol = "telnet"\nhost = "h"\nrekey = false\n'
    )


def test_telnet_exit_status_needs_the_shell_prompt():
    telnet = '[targets.t]\nprotocol = "telnet"\nhost = "h"\n'
    assert parse(user() + telnet).targets["t"].exit_status == "none"
    target = parse(user() + telnet + 'exit_status = "posix"\nshell_prompt = "[$#] "\n').targets["t"]
    assert target.exit_status == "posix"
    assert (
        'targets.t.exit_status: "posix" needs shell_prompt: the status is asked for at the '
        "prompt after the command"
    ) in only_problem(user() + telnet + 'exit_status = "posix"\n')
    assert 'must be "none" or "posix"' in only_problem(user() + telnet + 'exit_status = "sh"\n')
    assert "not used by ssh2 targets" in only_problem(
        user() + '[targets.t]\nprotocol = "ssh2"\nhost = "h"\nexit_status = "posix"\n'
    )


def test_ssh1_target_compression_level(tmp_path):
    from gateway.config import ConfigError, parse_config

    base = (
        'state_dir = "s"\n[users.alice]\nauthorized_keys = "k"\ntargets = ["dev"]\n'
        '[targets.dev]\nprotocol = "ssh1"\nhost = "192.0.2.9"\n'
    )
    config = parse_config(base + "compression = 6\n", "t.toml", tmp_path)
    assert config.targets["dev"].compression == 6
    assert parse_config(base, "t.toml", tmp_path).targets["dev"].compression == 0
    import pytest

    with pytest.raises(ConfigError) as info:
        parse_config(base + "compression = 12\n", "t.toml", tmp_path)
    assert "compression" in str(info.value)
