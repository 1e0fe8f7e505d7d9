"""Issue 4 end to end: PuTTY's plink -1 (SSH-1) -> gateway -> a real OpenSSH sshd (SSH-2)."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from tests.support.clients import (
    one_target_config,
    peak_rss_growth_kib,
    plink1_argv,
    ssh1_fingerprint,
    ssh2_device,
    ssh_argv,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import putty_cipher_session, run_to_file

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def gw(tmp_path_factory, authorized_keys):
    work = tmp_path_factory.mktemp("bridge-sshd")
    with ssh2_device(work) as (_, target):
        config = one_target_config(authorized_keys, "host2", target)
        config["ssh1"] = {"ciphers": ["blowfish", "3des"]}
        (work / "gw").mkdir()
        with GatewayProcess(work / "gw", config) as process:
            process.fingerprint = ssh1_fingerprint(process)
            yield process


def plink1(gw, *args: str, stdin: bytes | None = None, timeout: float = 60, load=None):
    argv = plink1_argv(gw, *args, user="alice+host2", fingerprint=gw.fingerprint, load=load)
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_gateway_memory_bounded_with_a_slow_plink1_reader(gw):
    argv = plink1_argv(gw, "cat /dev/zero", user="alice+host2", fingerprint=gw.fingerprint)
    assert peak_rss_growth_kib(gw, argv) < 32 * 1024


@pytest.mark.slow
def test_64mib_through_openssh_to_sshd_bridge(gw, client_keys):
    data = os.urandom(64 * 1024 * 1024)
    result = subprocess.run(
        ssh_argv(gw, client_keys["ed25519"], "cat", user="alice+host2"),
        input=data, capture_output=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
