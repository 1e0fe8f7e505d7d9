"""Fixtures for end-to-end tests: a real gateway subprocess and real client keys/tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.clients import base_config, hash_password, write_authorized_keys
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password()


@pytest.fixture(scope="session")
def client_keys(tmp_path_factory) -> dict[str, Path]:
    """An ed25519 and an RSA user key made by OpenSSH's ssh-keygen."""
    tools = require_peer("ssh-keygen")
    d = tmp_path_factory.mktemp("client-keys")
    keys = {}
    for kind, extra in (("ed25519", []), ("rsa", ["-b", "3072"])):
        path = d / f"id_{kind}"
        subprocess.run(
            [tools["ssh-keygen"], "-q", "-t", kind, *extra, "-N", "", "-C", f"test-{kind}",
             "-f", str(path)],
            check=True,
            timeout=60,
        )
        keys[kind] = path
    return keys


@pytest.fixture(scope="session")
def authorized_keys(tmp_path_factory, client_keys) -> Path:
    path = tmp_path_factory.mktemp("authz") / "authorized_keys"
    return write_authorized_keys(path, *client_keys.values())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, password_hash, authorized_keys):
    """One dual-stack gateway per test module."""
    workdir = tmp_path_factory.mktemp("gateway")
    with GatewayProcess(workdir, base_config(password_hash, authorized_keys)) as gw:
        yield gw
