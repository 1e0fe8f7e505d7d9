"""End to end: OpenSSH ``ssh`` (SSH-2) and ``plink -1`` (SSH-1) reach a real OpenSSH sshd
through the gateway's SSH-2 upstream target, logging in upstream with the gateway's key
and pinning the device's host key in ``<state_dir>/known_hosts``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.clients import (
    one_target_config,
    run_plink1,
    ssh2_device,
    ssh_argv,
    write_authorized_keys,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.sshd import keygen

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def ssh2_gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("ssh2-e2e")
    client_key = keygen(work / "client_ed25519")
    authorized = write_authorized_keys(work / "authorized_keys", client_key)
    with ssh2_device(work) as (device, target):
        config = one_target_config(authorized, "sdev", target)
        (work / "gw").mkdir()
        with GatewayProcess(work / "gw", config) as gw:
            yield gw, client_key, device


def test_openssh_command_through_ssh2_device(ssh2_gateway):
    gw, key, device = ssh2_gateway
    result = subprocess.run(
        ssh_argv(gw, key, "echo via-ssh2; echo err >&2; exit 7", user="alice+sdev"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 7, result.stderr + gw.log_text()[-3000:]
    assert result.stdout == "via-ssh2\n"
    assert "err" in result.stderr
    gw.wait_for_log(
        r"bridged session: user=alice front=\[ssh2 kex=[^\]]*\] target=sdev "
        r"upstream=\[ssh2 127\.0\.0\.1:\d+ kex="
    )
    known = (Path(gw.config["state_dir"]) / "known_hosts").read_text()
    assert known.split()[1:3] == device.host_public().split()[:2]


def test_openssh_tty_through_ssh2_device(ssh2_gateway):
    gw, key, _ = ssh2_gateway
    argv = ssh_argv(gw, key, "stty size; echo T=$TERM", user="alice+sdev")
    argv.insert(1, "-tt")
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60,
        env={"TERM": "vt100", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + gw.log_text()[-3000:]
    assert "T=vt100" in result.stdout


def test_plink_ssh1_through_ssh2_device(ssh2_gateway):
    gw, _, _ = ssh2_gateway
    result = run_plink1(gw, "echo from-plink; exit 3", user="alice+sdev", status=3)
    assert "from-plink" in result.stdout
