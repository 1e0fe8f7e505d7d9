"""Fixtures for end-to-end tests: a real gateway subprocess and real client keys/tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway_process import REPO, GatewayProcess
from tests.peers import require_peer

PASSWORD = "correct horse battery staple"


def sshgateway_cli(*args: str, stdin: str | None = None, check: bool = True):
    """Run the ``sshgateway`` admin command from this checkout."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=check,
    )


@pytest.fixture(scope="session")
def password_hash() -> str:
    return sshgateway_cli("hash-password", stdin=PASSWORD + "\n").stdout.strip()


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
    path.write_text(
        "".join(Path(str(k) + ".pub").read_text() for k in client_keys.values())
    )
    path.chmod(0o600)  # like sshd's StrictModes, the gateway ignores a writable file
    return path


def base_config(password_hash: str, authorized_keys: Path, **extra) -> dict:
    config = {
        "protocols": ["1", "2"],
        "version_timeout": 5,
        "auth": {"failure_delay": 0.2, "grace_time": 30, "max_attempts": 6},
        "users": {
            "alice": {
                "password": password_hash,
                "authorized_keys": str(authorized_keys),
                "auth": "any",
            },
        },
    }
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, password_hash, authorized_keys):
    """One dual-stack gateway per test module."""
    workdir = tmp_path_factory.mktemp("gateway")
    with GatewayProcess(workdir, base_config(password_hash, authorized_keys)) as gw:
        yield gw


def ssh1_host_fingerprint(state_dir: str) -> str:
    """The gateway's SSH-1 host key fingerprint (MD5 colon-hex), as plink -hostkey wants it."""
    out = sshgateway_cli("fingerprints", "--state-dir", state_dir).stdout
    return next(line.split()[3] for line in out.splitlines() if line.startswith("SSH-1"))


def peak_rss_growth_kib(gw: GatewayProcess, argv: list[str], seconds: float = 8) -> int:
    """Run a client that reads its output at about 100 KB/s; return the gateway's peak
    resident-memory growth meanwhile."""
    import time

    before = peak = gw.rss_kib()
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    received = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            received += len(client.stdout.read(10_000))
            time.sleep(0.1)
            peak = max(peak, gw.rss_kib())
    finally:
        client.kill()
        client.wait(10)
    # A session that sent nothing would prove nothing about buffering.
    assert received >= seconds * 50_000, f"the client read only {received} bytes"
    return peak - before
