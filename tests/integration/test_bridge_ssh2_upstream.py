"""Issue 4 end to end: PuTTY's plink -1 (SSH-1) -> gateway -> a real OpenSSH sshd (SSH-2)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.gateway_process import GatewayProcess
from tests.integration.conftest import (
    PASSWORD,
    base_config,
    peak_rss_growth_kib,
    ssh1_host_fingerprint,
    sshgateway_cli,
)
from tests.integration.test_ssh2_peers import ssh_argv
from tests.peers import putty_cipher_session, require_peer, run_to_file
from tests.sshd import OpenSSHServer, keygen

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def gw(tmp_path_factory, authorized_keys):
    work = tmp_path_factory.mktemp("bridge-sshd")
    device_key = keygen(work / "gateway_to_device")
    authorized = authorized_keys
    hashed = sshgateway_cli("hash-password", stdin=PASSWORD + "\n").stdout.strip()
    with OpenSSHServer(work / "sshd", [Path(str(device_key) + ".pub")]) as device:
        config = base_config(hashed, authorized, targets={
            "host2": {"protocol": "ssh2", "host": "127.0.0.1", "port": device.port,
                      "username": "root", "key": str(device_key), "connect_timeout": 20},
        })  # fmt: skip
        config["users"]["alice"]["targets"] = ["host2"]
        config["ssh1"] = {"ciphers": ["blowfish", "3des"]}
        (work / "gw").mkdir()
        with GatewayProcess(work / "gw", config) as process:
            process.fingerprint = ssh1_host_fingerprint(process.config["state_dir"])
            yield process


def plink1(gw, *args: str, stdin: bytes | None = None, timeout: float = 60, load=None):
    tools = require_peer("plink")
    argv = [tools["plink"], "-batch"]
    argv += ["-hostkey", gw.fingerprint, "-P", str(gw.port), "-pw", PASSWORD, "-l", "alice+host2"]
    # A saved session names the host itself: a host argument would become the command.
    argv += ["-load", load, *args] if load else ["-1", *args[:-1], "127.0.0.1", args[-1]]
    return run_to_file(argv, input=stdin, timeout=timeout)


def test_plink1_command_and_status_through_sshd(gw):
    result = plink1(gw, "echo out; echo err >&2; exit 6")
    assert result.stdout == b"out\n", result.stderr + gw.log_text()[-2000:].encode()
    assert b"err" in result.stderr
    assert result.returncode == 6


def test_plink1_pty_session_through_sshd(gw):
    result = plink1(gw, "-t", "tty; stty size")
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("/dev/pts/"), result
    assert result.returncode == 0


def test_64mib_through_plink1_to_sshd_bridge(gw, tmp_path):
    data = os.urandom(64 * 1024 * 1024)
    with putty_cipher_session("blowfish") as session:
        result = plink1(gw, "cat", stdin=data, timeout=600, load=session)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


def test_program_exits_while_client_still_sends(gw, client_keys):
    """The device's program ends with input still waiting for window: the session must
    end with its status, not wait for window that will never come."""
    result = subprocess.run(
        ssh_argv(gw, client_keys["ed25519"], "exit 3", user="alice+host2"),
        input=b"x" * (16 << 20), capture_output=True, timeout=60,
    )
    assert result.returncode == 3, result.stderr


def test_gateway_memory_bounded_with_a_slow_plink1_reader(gw):
    tools = require_peer("plink")
    argv = [tools["plink"], "-batch", "-1", "-hostkey", gw.fingerprint, "-P", str(gw.port),
            "-pw", PASSWORD, "-l", "alice+host2", "127.0.0.1", "cat /dev/zero"]
    assert peak_rss_growth_kib(gw, argv) < 32 * 1024


def test_64mib_through_openssh_to_sshd_bridge(gw, client_keys):
    data = os.urandom(64 * 1024 * 1024)
    result = subprocess.run(
        ssh_argv(gw, client_keys["ed25519"], "cat", user="alice+host2"),
        input=data, capture_output=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
