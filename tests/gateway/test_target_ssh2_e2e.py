"""End to end: OpenSSH ``ssh`` (SSH-2) and ``plink -1`` (SSH-1) reach a real OpenSSH sshd
through the gateway's SSH-2 upstream target, logging in upstream with the gateway's key
and pinning the device's host key in ``<state_dir>/known_hosts``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.gateway_process import GatewayProcess
from tests.integration.conftest import PASSWORD, base_config, sshgateway_cli
from tests.integration.test_ssh2_peers import ssh_argv
from tests.peers import require_peer
from tests.sshd import OpenSSHServer, keygen

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def ssh2_gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("ssh2-e2e")
    client_key = keygen(work / "client_ed25519")
    device_key = keygen(work / "gateway_to_device")
    authorized = work / "authorized_keys"
    authorized.write_text(Path(str(client_key) + ".pub").read_text())
    authorized.chmod(0o600)
    hashed = sshgateway_cli("hash-password", stdin=PASSWORD + "\n").stdout.strip()
    with OpenSSHServer(work / "sshd", [Path(str(device_key) + ".pub")]) as device:
        targets = {
            "sdev": {
                "protocol": "ssh2", "host": "127.0.0.1", "port": device.port,
                "username": "root", "key": str(device_key), "connect_timeout": 20,
            },
        }  # fmt: skip
        config = base_config(hashed, authorized, targets=targets)
        config["users"]["alice"]["targets"] = ["sdev"]
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
    tools = require_peer("plink")
    fingerprint = next(
        line.split()[3]
        for line in sshgateway_cli(
            "fingerprints", "--state-dir", gw.config["state_dir"]
        ).stdout.splitlines()
        if line.startswith("SSH-1")
    )
    result = subprocess.run(
        [tools["plink"], "-1", "-batch", "-hostkey", fingerprint, "-P", str(gw.port),
         "-pw", PASSWORD, "alice+sdev@127.0.0.1", "echo from-plink; exit 3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr + gw.log_text()[-3000:]
    assert "from-plink" in result.stdout
