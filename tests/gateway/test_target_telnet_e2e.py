"""Issue 4 acceptance 3 end to end: OpenSSH ``ssh`` (SSH-2) and ``plink -1`` (SSH-1) reach
a real telnet device (Debian's inetutils telnetd) through the gateway, with the device's
login prompts answered from ``[targets.NAME]``."""

from __future__ import annotations

import subprocess

import pytest

from tests.gateway_process import GatewayProcess
from tests.integration.conftest import PASSWORD, base_config, sshgateway_cli
from tests.integration.test_ssh2_peers import ssh_argv
from tests.peers import require_peer
from tests.telnetd import TelnetDaemon

pytestmark = pytest.mark.peer

DEVICE_USER, DEVICE_PASSWORD = "admin", "telnet device pw"


@pytest.fixture(scope="module")
def telnet_gateway(tmp_path_factory):
    tools = require_peer("ssh-keygen")
    work = tmp_path_factory.mktemp("telnet-e2e")
    key = work / "id_ed25519"
    subprocess.run(
        [tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
        check=True, timeout=60,
    )  # fmt: skip
    authorized = work / "authorized_keys"
    authorized.write_text((work / "id_ed25519.pub").read_text())
    authorized.chmod(0o600)
    hashed = sshgateway_cli("hash-password", stdin=PASSWORD + "\n").stdout.strip()
    with TelnetDaemon(work, DEVICE_USER, DEVICE_PASSWORD) as device:
        targets = {
            "tdev": {
                "protocol": "telnet", "host": "127.0.0.1", "port": device.port,
                "username": DEVICE_USER, "password": DEVICE_PASSWORD,
                "login_prompt": "login: $", "password_prompt": "Password: $",
                "connect_timeout": 10,
            },
        }  # fmt: skip
        config = base_config(hashed, authorized, targets=targets)
        config["users"]["alice"]["targets"] = ["tdev"]
        (work / "gw").mkdir()
        with GatewayProcess(work / "gw", config) as gw:
            yield gw, key


def test_openssh_command_through_telnet_device(telnet_gateway):
    gw, key = telnet_gateway
    result = subprocess.run(
        ssh_argv(gw, key, "echo via-telnet; echo $((6*7))", user="alice+tdev"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + gw.log_text()[-3000:]
    assert "via-telnet\n42\n" in result.stdout
    assert "Password" not in result.stdout
    gw.wait_for_log(r"bridged session: user=alice front=\[ssh2 [^\]]*\] target=tdev upstream=\[telnet ")


def test_openssh_tty_shell_through_telnet_device(telnet_gateway):
    gw, key = telnet_gateway
    argv = ssh_argv(gw, key, user="alice+tdev")
    argv.insert(1, "-tt")
    result = subprocess.run(
        argv, input="stty size; echo T=$TERM\nexit\n", capture_output=True, text=True,
        timeout=60, env={"TERM": "vt100", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "T=vt100" in result.stdout
    assert "dev$ " in result.stdout


def test_plink_ssh1_command_through_telnet_device(telnet_gateway):
    gw, _ = telnet_gateway
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
         "-pw", PASSWORD, "alice+tdev@127.0.0.1", "echo from-plink"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + gw.log_text()[-3000:]
    assert "from-plink" in result.stdout
