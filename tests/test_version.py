"""``sshgateway --version`` and ``twistd sshgateway --version``: the version in
pyproject.toml, read from the installed package's metadata (one place)."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from gateway import __version__
from gateway.dispatch import server_version_line
from tests.support.clients import sshgateway_cli
from tests.support.gateway_process import REPO, TWISTD
from tests.support.ops_process import gateway_env

PROJECT_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_version_comes_from_pyproject():
    assert __version__ == PROJECT_VERSION
    assert server_version_line(frozenset({"ssh1", "ssh2"})).endswith(
        f"sshgateway_{PROJECT_VERSION}".encode()
    )


def test_sshgateway_version():
    result = sshgateway_cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"sshgateway {PROJECT_VERSION}\n", ""
    )  # fmt: skip


def test_twistd_sshgateway_version():
    result = subprocess.run(
        [sys.executable, *TWISTD, "sshgateway", "--version"],
        env=gateway_env(), capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, f"sshgateway {PROJECT_VERSION}\n"), result.stderr
