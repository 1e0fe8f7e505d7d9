"""No error message or log line quotes a key file or any file holding secrets (issue 9,
item 1): a file the gateway cannot read is named, with the reason, never shown.

Conch's own message for a key it cannot read is ``cannot guess the type of b'...'`` with
the whole file in it: a DER private key was printed to stderr and the log that way.
Every parser whose errors reach an operator is fed files full of secrets here, and what
comes out (exception text, log lines, tracebacks) is searched for any piece of them.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.conch.ssh import common
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher

from gateway import authorized_keys, hostkeys
from gateway.config import (
    ConfigError,
    DefaultPasswordError,
    ensure_default_password,
    parse_config,
)
from gateway.known_hosts import KnownHosts
from gateway.service import make_service
from gateway.targets import TargetConfig
from gateway.targets.bridge import UpstreamFailure
from gateway.targets.ssh1 import SSH1Target
from gateway.targets.ssh2 import SSH2Target
from tests.support.gateway_helpers import LOCAL_ACCESS, ed25519_key

MARKER = b"SECRET-MARKER-7f3a"


def der_private_key() -> bytes:
    key = rsa.generate_private_key(65537, 2048)
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


SECRET_FILES = {
    "der-rsa": der_private_key(),
    "text": b"password: " + MARKER + b"\nsecond line " + MARKER + b"\n",
    "binary": MARKER + bytes(range(256)) + MARKER,
    "braces": b"{" + MARKER + b"}",  # Conch's LSH branch: an AssertionError
}


class Seen(list):
    """Every log line, with the traceback of any logged failure."""

    def __call__(self, event: dict) -> None:
        self.append(formatEvent(event))
        failure = event.get("log_failure")
        if failure is not None:
            self.append(failure.getTraceback())


@pytest.fixture
def seen():
    observer = Seen()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def assert_not_quoted(text: str, data: bytes) -> None:
    """No piece of ``data`` in ``text``: raw, as Python shows bytes, hex or base64."""
    assert MARKER.decode() not in text
    for start in range(0, max(1, len(data) - 12), max(1, len(data) // 8)):
        piece = data[start : start + 12]
        for form in (
            repr(piece)[2:-1],
            piece.hex(),
            base64.b64encode(piece).decode()[:12],
            piece.decode("latin-1"),
        ):
            assert form not in text, f"{form!r} (bytes {start}..) quoted in:\n{text}"


def state_with_host_keys(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    hostkeys.load_or_create_host_keys(state)
    return state


def config_text(tmp_path: Path, extra: str = "") -> str:
    return (
        f'listen = ["tcp:0:interface=127.0.0.1"]\nstate_dir = "{tmp_path / "state"}"\n'
        f'{extra}\n[users.alice]\nauthorized_keys = "{tmp_path / "authorized_keys"}"\n'
        + LOCAL_ACCESS
    )


@pytest.mark.parametrize("name", [hostkeys.RSA_FILE, hostkeys.ED25519_FILE, hostkeys.SSH1_FILE])
@pytest.mark.parametrize("kind", sorted(SECRET_FILES))
def test_unreadable_host_key_is_named_not_shown(tmp_path, seen, name, kind):
    state = state_with_host_keys(tmp_path)
    data = SECRET_FILES[kind]
    path = state / name
    path.write_bytes(data)
    with pytest.raises(SystemExit) as stopped:  # what twistd prints, on stderr and in the log
        make_service(parse_config(config_text(tmp_path), "gw.toml", tmp_path), MemoryReactorClock())
    message = str(stopped.value)
    assert message.startswith(f"sshgateway: {path}: not a readable ")
    assert message.count("\n") == 0 and len(message) < 300
    assert_not_quoted(message + "\n".join(seen), data)


def test_the_reason_is_still_given(tmp_path):
    state = state_with_host_keys(tmp_path)
    (state / hostkeys.RSA_FILE).write_bytes(SECRET_FILES["der-rsa"])
    with pytest.raises(hostkeys.HostKeyError) as refused:
        hostkeys.load_host_keys(state)
    path = state / hostkeys.RSA_FILE
    assert str(refused.value) == (
        f"{path}: not a readable private key (not an OpenSSH or PEM private key)"
    )
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    encrypted = ed25519_key().toString("OPENSSH", passphrase=b"pass phrase")
    (state / hostkeys.RSA_FILE).write_bytes(encrypted)
    with pytest.raises(hostkeys.HostKeyError, match="encrypted with a passphrase"):
        hostkeys.load_host_keys(state)


@pytest.mark.parametrize("kind", sorted(SECRET_FILES))
def test_unreadable_ssh2_target_key(tmp_path, seen, kind):
    key = tmp_path / "device_key"
    key.write_bytes(SECRET_FILES[kind])
    config = TargetConfig("dev", "ssh2", host="device.lab", username="admin", key=key)
    target = SSH2Target(MemoryReactorClock(), config, KnownHosts(tmp_path / "known_hosts"))
    with pytest.raises(UpstreamFailure) as refused:
        target._load_key()
    text = str(refused.value) + "\n".join(seen)
    assert f"cannot use key file {key}: " in text
    assert_not_quoted(text, SECRET_FILES[kind])


@pytest.mark.parametrize("kind", sorted(SECRET_FILES))
def test_unreadable_ssh1_target_key(tmp_path, seen, kind):
    key = tmp_path / "device_key"
    key.write_bytes(SECRET_FILES[kind])
    config = TargetConfig("dev", "ssh1", host="device.lab", username="admin", key=key)
    with pytest.raises(ValueError) as refused:
        SSH1Target(MemoryReactorClock(), config, KnownHosts(tmp_path / "known_hosts"))
    assert f"key {key}: " in str(refused.value)
    assert_not_quoted(str(refused.value) + "\n".join(seen), SECRET_FILES[kind])


def test_authorized_keys_line_with_a_garbage_blob(seen):
    blob = common.NS(MARKER) + MARKER * 4
    line = b"ssh-ed25519 " + base64.b64encode(blob) + b" comment"
    assert authorized_keys.parse_authorized_keys(line, "alice/authorized_keys") == []
    text = "\n".join(seen)
    assert "alice/authorized_keys:1: skipped: unusable ssh-ed25519 key data" in text
    assert_not_quoted(text, blob)


@pytest.mark.parametrize(
    "value",
    [
        "$" + MARKER.decode(),  # a plaintext password that happens to start with "$"
        f"$scrypt$n={MARKER.decode()},r=8,p=1$c2FsdHNhbHQ$" + "A" * 43,
        f"$scrypt$n=16384,r=8,{MARKER.decode()}$c2FsdHNhbHQ$" + "A" * 43,
    ],
)
def test_config_password_value_never_quoted(tmp_path, value):
    text = config_text(tmp_path).replace(
        "[users.alice]\n", f'[users.alice]\npassword = "{value}"\n'
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "gw.toml", tmp_path)
    message = str(refused.value)
    assert "users.alice.password: " in message
    assert MARKER.decode() not in message


def test_default_password_file_not_quoted(tmp_path):
    config = parse_config(config_text(tmp_path), "gw.toml", tmp_path)
    config = dataclasses.replace(config, default_password_user="alice")
    os.makedirs(config.state_dir, mode=0o700)
    path = config.default_password_file
    path.write_bytes(MARKER + b"\n")
    path.chmod(0o600)
    with pytest.raises(DefaultPasswordError) as refused:
        ensure_default_password(config)
    assert str(path) in str(refused.value) and MARKER.decode() not in str(refused.value)


def test_known_hosts_garbage_not_quoted(tmp_path, seen):
    path = tmp_path / "known_hosts"
    path.write_bytes(b"host " + MARKER + b" more\n" + MARKER * 2000 + b"\n")
    known = KnownHosts(path)
    assert known.ssh2_key_types("host", 22) == []
    text = "\n".join(seen)
    assert f"known_hosts {path}:1: not a host key line, ignored" in text
    assert MARKER.decode() not in text
