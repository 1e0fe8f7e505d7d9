"""Jump-host use (SSH-2 ``direct-tcpip``) through a real gateway to a real OpenSSH sshd
device: OpenSSH ``ssh -J`` (ProxyJump from an ssh_config file) runs a command end to end
and returns its status, ``ssh -W`` to a destination that is not one of alice's targets is
refused with a log line, and paramiko runs a command through a jump channel (``sock=``).
The forward is recorded as a flow linked to the outer connection's."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.clients import one_target_config, ssh2_device
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_module, require_peer
from tests.support.python_clients import paramiko_client

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def jump(tmp_path_factory, authorized_keys, client_keys):
    work = tmp_path_factory.mktemp("jump")
    with ssh2_device(work) as (device, target):
        target["aliases"] = ["host2.example"]
        config = one_target_config(authorized_keys, "host2", target)
        config["flows"] = {"enabled": True}
        # Raw forwarding beyond targets: the device's port under a name no target has.
        config["users"]["alice"]["permit_open"] = [f"localhost:{device.port}"]
        (work / "gw").mkdir()
        with GatewayProcess(work / "gw", config) as gw:
            ssh_config = work / "ssh_config"
            ssh_config.write_text(
                f"""Host gw
    HostName 127.0.0.1
    Port {gw.port}
    User alice
    IdentityFile {client_keys["ed25519"]}
Host host2 host2.example 127.0.0.1
    Port {device.port}
    User root
    IdentityFile {target["key"]}
    ProxyJump gw
Host *
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    ConnectTimeout 20
"""
            )
            yield gw, ssh_config, device, target


def ssh(ssh_config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    tools = require_peer("ssh")
    return subprocess.run(
        [tools["ssh"], "-F", str(ssh_config), *args], capture_output=True, timeout=timeout
    )


def flow_records(gw: GatewayProcess) -> list[dict]:
    path = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize("host", ["host2", "host2.example", "127.0.0.1"])
def test_ssh_J_runs_a_command_on_the_device_and_returns_its_status(jump, host):
    gw, ssh_config, _, _ = jump
    result = ssh(ssh_config, host, "echo hi from $(id -un); exit 7")
    assert result.stdout == b"hi from root\n", result.stderr + gw.log_text()[-2000:].encode()
    assert result.returncode == 7


def test_the_forward_is_a_flow_record_linked_to_the_outer_connection(jump):
    gw, ssh_config, device, _ = jump

    def forwards():
        return [r for r in flow_records(gw) if r["protocol"] == "tcp"]

    before = len(forwards())
    result = ssh(ssh_config, "host2", "head -c 100000 /dev/zero")
    assert len(result.stdout) == 100000 and result.returncode == 0, result.stderr
    assert wait_for(lambda: len(forwards()) > before), gw.log_text()[-2000:]
    record = forwards()[-1]

    def outer_records():
        return {r["id"]: r for r in flow_records(gw) if r["role"] == "server"}

    # The outer connection's record is written when it closes, after the forward's.
    assert wait_for(lambda: record["link"] in outer_records()), record
    outer = outer_records()
    assert outer[record["link"]]["user"] == "alice"
    assert record["role"] == "client" and record["target"] == "host2"
    assert record["peer"] == f"127.0.0.1:{device.port}"
    assert record["bytes"]["s2c"] > 100000 and record["bytes"]["c2s"] > 0
    assert record["duration"] > 0
    assert any(r["name"] == "direct-tcpip" for r in outer[record["link"]]["requests"])


def test_a_destination_that_is_not_a_target_is_refused(jump):
    gw, ssh_config, device, _ = jump
    # The device's port, but under a name that is neither the target's nor an alias.
    result = ssh(ssh_config, "-o", "LogLevel=INFO", "-W", f"127.0.0.2:{device.port}", "gw")
    assert result.returncode != 0
    assert b"administratively prohibited" in result.stderr, result.stderr
    gw.wait_for_log(
        r"alice: refused b'direct-tcpip' channel to 127.0.0.2:\d+: 127.0.0.2:\d+ is neither a "
        "target of alice nor permitted"
    )
    # The right name on the wrong port is refused too.
    result = ssh(ssh_config, "-o", "LogLevel=INFO", "-W", f"host2:{device.port + 1}", "gw")
    assert result.returncode != 0
    assert b"administratively prohibited" in result.stderr, result.stderr


def test_permit_open_reaches_a_destination_that_is_no_target(jump):
    gw, ssh_config, device, target = jump
    result = ssh(
        ssh_config, "-o", "ProxyJump=gw", "-o", f"IdentityFile={target['key']}",
        "-p", str(device.port), "root@localhost", "exit 4",
    )  # fmt: skip
    assert result.returncode == 4, result.stderr + gw.log_text()[-2000:].encode()
    gw.wait_for_log(r"forward: alice -> localhost:\d+: connected")


def test_paramiko_through_a_jump_channel(jump, client_keys):
    paramiko = require_module("paramiko")
    gw, _, device, target = jump
    outer = paramiko_client(gw, key_filename=str(client_keys["ed25519"]))
    try:
        channel = outer.get_transport().open_channel(
            "direct-tcpip", ("host2", device.port), ("127.0.0.1", 0)
        )
        inner = paramiko.SSHClient()
        inner.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        inner.connect(
            "host2", device.port, username="root", key_filename=target["key"], sock=channel,
            allow_agent=False, look_for_keys=False, timeout=20, banner_timeout=20,
        )  # fmt: skip
        try:
            _, stdout, _ = inner.exec_command("echo through; exit 5", timeout=30)
            assert stdout.read() == b"through\n"
            assert stdout.channel.recv_exit_status() == 5
        finally:
            inner.close()
    finally:
        outer.close()

