"""The sshgateway admin command: hash-password, fingerprints, check-config."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import passwords
from gateway.hostkeys import load_or_create_host_keys, load_or_create_target_key, ssh2_fingerprint
from tests.support.gateway_helpers import LOCAL_ACCESS, OWN_ACCOUNT, fast_hash
from tools import cli

ROOT = Path(__file__).resolve().parents[2]


def run(argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def cheap_hashes(monkeypatch):
    monkeypatch.setattr(passwords.hash_password, "__kwdefaults__", {"n": 2**8, "r": 8, "p": 1})


def test_hash_password(cheap_hashes):
    status, out, err = run(["hash-password"], "s3cret pass\n")
    assert status == 0 and err == ""
    (line,) = out.splitlines()
    assert passwords.verify_password(line, "s3cret pass")


def test_hash_password_crlf_and_no_newline(cheap_hashes):
    for given in ("pw\r\n", "pw"):
        status, out, _ = run(["hash-password"], given)
        assert status == 0 and passwords.verify_password(out.strip(), "pw")


def test_hash_password_refuses_empty():
    for given in ("", "\n", "\r\n"):
        status, out, err = run(["hash-password"], given)
        assert status == 1 and out == "" and "empty" in err


def test_hash_password_refuses_huge():
    status, out, err = run(["hash-password"], "x" * (passwords.MAX_PASSWORD_BYTES + 5) + "\n")
    assert status == 1 and out == "" and "longer" in err


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli") / "state"
    load_or_create_host_keys(directory)
    return directory


def test_fingerprints_from_state_dir(state_dir):
    host = load_or_create_host_keys(state_dir)
    status, out, _ = run(["fingerprints", "--state-dir", str(state_dir)])
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 3
    infos = host.infos()
    assert lines[0] == f"SSH-2 ssh-ed25519 256 {infos[0].fingerprint}"
    assert lines[1] == f"SSH-2 ssh-rsa 3072 {infos[1].fingerprint}"
    assert lines[2] == f"SSH-1 rsa1 2048 {infos[2].fingerprint} MD5:{infos[2].md5}"
    assert lines[0].split()[3].startswith("SHA256:")
    # SSH-1: SHA256 as OpenSSH's ssh1 -v shows it, and MD5 as PuTTY shows it.
    assert lines[2].split()[3].startswith("SHA256:")
    assert len(lines[2].split()[4].split(":")) == 17


def test_fingerprints_from_config(state_dir, tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(
        f'state_dir = "{state_dir}"\n[users.a]\npassword = "{fast_hash("x")}"\n{LOCAL_ACCESS}'
    )
    status, out, _ = run(["fingerprints", "--config", str(config)])
    assert status == 0 and len(out.splitlines()) == 3


def test_fingerprints_without_keys(tmp_path):
    status, out, err = run(["fingerprints", "--state-dir", str(tmp_path / "none")])
    assert status == 1 and out == "" and "created when the gateway first starts" in err
    assert not (tmp_path / "none").exists()


def test_fingerprints_of_a_targets_jump_host_key(state_dir):
    key = load_or_create_target_key(state_dir, "dev1")
    status, out, err = run(["fingerprints", "--state-dir", str(state_dir), "--target", "dev1"])
    assert status == 0 and err == ""
    assert out == f"SSH-2 ssh-ed25519 256 {ssh2_fingerprint(key)}\n"


def test_fingerprints_of_a_target_not_used_yet(state_dir):
    status, out, err = run(["fingerprints", "--state-dir", str(state_dir), "--target", "new1"])
    assert status == 1 and out == ""
    assert "created at its first jump-host use" in err
    assert not (state_dir / "targets" / "new1_ed25519_key").exists()


def test_fingerprints_with_bad_config(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text("bogus = 1\n")
    status, _, err = run(["fingerprints", "--config", str(config)])
    assert status == 1 and "gw.toml:1: bogus: unknown key" in err


def test_fingerprints_needs_a_source():
    with pytest.raises(SystemExit):
        run(["fingerprints"])


def test_check_config_ok(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[users.a]\npassword = "{fast_hash("x")}"\nauthorized_keys = "nope"\n{LOCAL_ACCESS}'
    )
    status, out, _ = run(["check-config", str(config)])
    assert status == 0
    assert out.splitlines()[-1] == f"{config}: OK"
    assert "does not exist" in out  # a warning, not an error


def test_check_config_errors(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text('[users.a]\npassword = "plain"\n[auth]\nmax_attempts = "6"\n')
    status, out, _ = run(["check-config", str(config)])
    assert status == 1
    assert f"{config}:2: users.a.password: looks like a plaintext password" in out
    assert f"{config}:4: auth.max_attempts: must be an integer" in out
    assert '    max_attempts = "6"' in out
    assert 'plain"' not in out


def test_unknown_subcommand():
    with pytest.raises(SystemExit):
        run(["frobnicate"])


def test_console_entry_point_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "check-config", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 1 and "cannot read" in done.stdout


def test_check_config_warns_about_readable_file_with_upstream_passwords(tmp_path):
    import io as _io

    from tools.cli import main as cli_main

    config = tmp_path / "gw.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        "[users.alice]\n"
        'authorized_keys = "keys"\n'
        'targets = ["local", "dev"]\n'
        f'os_user = "{OWN_ACCOUNT}"\n'
        "[targets.dev]\n"
        'protocol = "ssh2"\nhost = "192.0.2.1"\nusername = "admin"\npassword = "Zq9secretZq9"\n'
    )
    config.chmod(0o644)
    out = _io.StringIO()
    assert cli_main(["check-config", str(config)], stdout=out, stderr=_io.StringIO()) == 0
    assert "chmod 600" in out.getvalue() and "Zq9secretZq9" not in out.getvalue()
    config.chmod(0o600)
    out = _io.StringIO()
    cli_main(["check-config", str(config)], stdout=out, stderr=_io.StringIO())
    assert "chmod 600" not in out.getvalue()


# -- known-hosts forget ----------------------------------------------------------------------


def pinned_state(tmp_path):
    """A state dir whose known_hosts pin an SSH-1 and an SSH-2 key for 192.0.2.1:2222
    and an SSH-2 key for 192.0.2.2 (port 22)."""
    from gateway.known_hosts import KnownHosts
    from tests.support.gateway_helpers import ed25519_key, rsa_key

    state = tmp_path / "state"
    known = KnownHosts(state / "known_hosts")
    data = rsa_key().public().data()
    known.check_ssh1("192.0.2.1", 2222, 1024, data["e"], data["n"], "accept-new").record()
    known.check_ssh2("192.0.2.1", 2222, ed25519_key(), "accept-new").record()
    known.check_ssh2("192.0.2.2", 22, ed25519_key(), "accept-new").record()
    return state


def targets_config(tmp_path, state) -> Path:
    config = tmp_path / "gw.toml"
    target = 'host = "192.0.2.1"\nport = 2222\nusername = "admin"\npassword = "pw"\n'
    config.write_text(
        f'state_dir = "{state}"\n[users.a]\npassword = "{fast_hash("x")}"\n'
        'targets = ["old", "new", "strict", "pinned", "tel"]\n'
        f'[targets.old]\nprotocol = "ssh1"\n{target}'
        f'[targets.new]\nprotocol = "ssh2"\n{target}'
        f'[targets.strict]\nprotocol = "ssh2"\nhost_key = "strict"\n{target}'
        f'[targets.pinned]\nprotocol = "ssh2"\nhost_key = "SHA256:{"A" * 43}"\n{target}'
        '[targets.tel]\nprotocol = "telnet"\nhost = "192.0.2.1"\n'
    )
    config.chmod(0o600)
    return config


def test_known_hosts_forget_a_target_of_the_config(tmp_path):
    state = pinned_state(tmp_path)
    config = targets_config(tmp_path, state)
    status, out, err = run(["known-hosts", "forget", "--config", str(config), "old"])
    assert status == 0 and err == ""
    forgot, then = out.splitlines()
    assert forgot.startswith("forgot old (192.0.2.1:2222): SSH-1 rsa1 SHA256:")
    assert forgot.endswith(f"({state / 'known_hosts.ssh1'}:1)") and " MD5:" in forgot
    assert then == "old: the next connection pins the key the device offers then"
    assert (state / "known_hosts.ssh1").read_text() == ""
    assert (state / "known_hosts").read_text().count("\n") == 2  # its SSH-2 key stays

    status, out, _ = run(["known-hosts", "forget", "--config", str(config), "old"])
    assert status == 0 and out.splitlines()[0] == "no host key recorded for old (192.0.2.1:2222)"

    status, out, _ = run(["known-hosts", "forget", "--config", str(config), "strict"])
    assert status == 0
    assert out.splitlines()[0].startswith("forgot strict (192.0.2.1:2222): SSH-2 ssh-ed25519 ")
    assert out.splitlines()[1] == (
        'strict: host_key is "strict": connections are refused until its key is added to '
        f"{state / 'known_hosts'}"
    )
    status, out, _ = run(["known-hosts", "forget", "--config", str(config), "pinned"])
    assert status == 0 and "pins a fingerprint in the config" in out


def test_known_hosts_forget_by_host_with_state_dir(tmp_path):
    state = pinned_state(tmp_path)
    status, out, _ = run(["known-hosts", "forget", "--state-dir", str(state), "192.0.2.1:2222"])
    assert status == 0
    assert [line.split()[2] for line in out.splitlines()] == ["SSH-2", "SSH-1"]
    status, out, _ = run(["known-hosts", "forget", "--state-dir", str(state), "192.0.2.2"])
    assert status == 0 and out.startswith("forgot 192.0.2.2:22: SSH-2 ssh-ed25519 SHA256:")
    assert (state / "known_hosts").read_text() == ""
    status, out, _ = run(["known-hosts", "forget", "--state-dir", str(state), "[192.0.2.2]:22"])
    assert status == 0 and out == "no host key recorded for 192.0.2.2:22\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "CONFIG", "nosuch"], "'nosuch': no such target in CONFIG, nothing to forget"),
        (["--config", "CONFIG", "tel"], "'tel': a telnet target in CONFIG"),
        (["--config", "CONFIG", "local"], "'local': a local target in CONFIG"),
        (["--state-dir", "STATE", "host:port"], "'host:port' is not HOST, HOST:PORT or"),
        (["--state-dir", "STATE", "[h]:0"], "is not HOST, HOST:PORT"),
    ],
)
def test_known_hosts_forget_unknown_target(tmp_path, argv, message):
    state = pinned_state(tmp_path)
    config = targets_config(tmp_path, state)
    before = (state / "known_hosts").read_text(), (state / "known_hosts.ssh1").read_text()
    argv = [str(config) if a == "CONFIG" else str(state) if a == "STATE" else a for a in argv]
    status, out, err = run(["known-hosts", "forget", *argv])
    assert status == 1 and out == ""
    assert message.replace("CONFIG", str(config)) in err
    assert "(targets with host keys: new, old, pinned, strict)" in err or "--state-dir" in argv
    assert ((state / "known_hosts").read_text(), (state / "known_hosts.ssh1").read_text()) == before


def test_known_hosts_forget_needs_a_source_and_a_target():
    for argv in (["known-hosts"], ["known-hosts", "forget", "x"], ["known-hosts", "forget"]):
        with pytest.raises(SystemExit):
            run(argv)
