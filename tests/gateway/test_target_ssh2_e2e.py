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
from tests.support.flow_records import read_jsonl
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


def test_openssh_through_the_gateway_to_an_old_ssh2_device(tmp_path):
    """Acceptance: a device with only an ssh-dss host key, 3des-cbc, hmac-sha1 and
    diffie-hellman-group1-sha1 (sshd 9.2 configured so), reached when its target lists
    them: check-config accepts the block, ``ssh`` gets the output, the log line and the
    flow record show the legacy algorithms. A name the client does not know is refused by
    check-config with the known ones."""
    from tests.support.clients import sshgateway_cli
    from tests.support.sshd import OpenSSHServer

    client_key = keygen(tmp_path / "client_ed25519")
    authorized = write_authorized_keys(tmp_path / "authorized_keys", client_key)
    device_key = keygen(tmp_path / "gateway_to_device", "rsa")
    legacy = (
        "KexAlgorithms diffie-hellman-group1-sha1\nCiphers 3des-cbc\nMACs hmac-sha1\n"
        "HostKeyAlgorithms ssh-dss\n"
    )
    with OpenSSHServer(
        tmp_path / "sshd", [Path(str(device_key) + ".pub")], ("dsa",), legacy
    ) as device:
        target = {
            "protocol": "ssh2", "host": "127.0.0.1", "port": device.port, "username": "root",
            "key": str(device_key), "connect_timeout": 30, "rekey": False,
            "host_key_algorithms": ["ssh-dss", "ssh-rsa"],
            "kex": ["diffie-hellman-group1-sha1"], "ciphers": ["3des-cbc"], "macs": ["hmac-sha1"],
        }  # fmt: skip
        config = one_target_config(authorized, "ilo", target)
        (tmp_path / "gw").mkdir()
        with GatewayProcess(tmp_path / "gw", config) as gw:
            checked = sshgateway_cli("check-config", str(gw.config_path), check=False)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            result = subprocess.run(
                ssh_argv(gw, client_key, "echo from-an-old-device; exit 5", user="alice+ilo"),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert result.returncode == 5, result.stderr + gw.log_text()[-3000:]
            assert result.stdout == "from-an-old-device\n"
            gw.wait_for_log(
                r"bridged session: user=alice front=\[ssh2 [^\]]*\] target=ilo upstream=\[ssh2 "
                r"127\.0\.0\.1:\d+ kex=diffie-hellman-group1-sha1 hostkey=ssh-dss "
                r"cipher=3des-cbc mac=hmac-sha1 "
            )
        known = (Path(gw.config["state_dir"]) / "known_hosts").read_text()
        assert known.split()[1:3] == device.host_public().split()[:2]
    records = read_jsonl(Path(gw.config["state_dir"]) / "flows" / "flows.jsonl")
    [upstream] = [r for r in records if r.get("negotiated", {}).get("kex", "").endswith("group1-sha1")]
    assert upstream["negotiated"]["host_key_type"] == "ssh-dss"
    assert upstream["negotiated"]["cipher_c2s"] == "3des-cbc"

    bad = gw.config_path.read_text().replace('"3des-cbc"', '"3des"')
    bad_path = tmp_path / "bad.toml"
    bad_path.write_text(bad)
    checked = sshgateway_cli("check-config", str(bad_path), check=False)
    assert checked.returncode != 0
    assert "targets.ilo.ciphers: ssh2 target ciphers: unknown algorithm '3des'" in (
        checked.stdout + checked.stderr
    )
    assert "3des-cbc" in checked.stdout + checked.stderr
