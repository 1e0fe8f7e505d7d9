"""Jump-host use of an SSH-1 device: the gateway answers inside the ``direct-tcpip``
channel as an SSH-2 server for the device (gateway.inner_ssh2), with its own host key for
the target, and the session goes to the device as ``alice+dev1``'s would.

The device is the gateway's own SSH-1 server in a second process (as in
test_bridge_ssh1_upstream); the clients are OpenSSH ``ssh -J`` (ProxyJump from an
ssh_config file) and paramiko through a jump channel (``sock=``)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.clients import (
    PASSWORD,
    base_config,
    hash_password,
    peak_rss_growth_kib,
    ssh2_fingerprint,
    sshgateway_cli,
)
from tests.support.gateway_process import GatewayProcess, local_access
from tests.support.peers import require_module, require_peer
from tests.support.python_clients import paramiko_client
from tests.support.telnetd import TelnetDaemon
from tests.support.terminal import assert_window_change_reaches, size_report_script

pytestmark = pytest.mark.peer

DEVICE_PASSWORD = "device secret 42"


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """An SSH-1-only device with one account, admin/DEVICE_PASSWORD."""
    config = {
        "protocols": ["1"],
        "users": {"admin": {"password": hash_password(DEVICE_PASSWORD), **local_access()}},
        "ssh1": {"ciphers": ["blowfish", "3des"]},
    }
    with GatewayProcess(tmp_path_factory.mktemp("device"), config) as dev:
        yield dev


TELNET_USER, TELNET_PASSWORD = "admin", "telnet pass 42"


@pytest.fixture(scope="module")
def telnet_device(tmp_path_factory):
    """A telnet-only device: inetutils telnetd (tests.support.telnetd)."""
    with TelnetDaemon(tmp_path_factory.mktemp("telnetd"), TELNET_USER, TELNET_PASSWORD) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def jump(tmp_path_factory, password_hash, authorized_keys, client_keys, device, telnet_device):
    targets = {
        "dev1": {
            "protocol": "ssh1", "host": "127.0.0.1", "port": device.port,
            "username": "admin", "password": DEVICE_PASSWORD, "host_key": "accept-new",
            "connect_timeout": 10, "ciphers": ["blowfish", "3des"], "aliases": ["dev1.example"],
        },
        "tel1": {
            "protocol": "telnet", "host": "127.0.0.1", "port": telnet_device.port,
            "username": TELNET_USER, "password": TELNET_PASSWORD, "login_prompt": "login: $",
            "password_prompt": "Password: ?$", "connect_timeout": 10,
        },
    }  # fmt: skip
    config = base_config(password_hash, authorized_keys, targets=targets)
    config["users"]["alice"]["targets"] = ["dev1", "tel1"]
    del config["users"]["alice"]["os_user"]
    config["flows"] = {"enabled": True}
    work = tmp_path_factory.mktemp("jump-inner")
    (work / "gw").mkdir()
    with GatewayProcess(work / "gw", config) as gw:
        known_hosts = work / "known_hosts"
        ssh_config = work / "ssh_config"
        ssh_config.write_text(
            f"""Host gw
    HostName 127.0.0.1
    Port {gw.port}
    User alice
    IdentityFile {client_keys["ed25519"]}
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
Host tel1
    Port {telnet_device.port}
    User admin
    ProxyJump gw
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
Host dev1 dev1.example
    Port {device.port}
    User admin
    ProxyJump gw
    StrictHostKeyChecking accept-new
    UserKnownHostsFile {known_hosts}
Host *
    IdentitiesOnly yes
    BatchMode yes
    LogLevel ERROR
    ConnectTimeout 20
"""
        )
        yield gw, ssh_config, known_hosts, device


def ssh(
    ssh_config: Path, *args: str, timeout: float = 60, input: bytes | None = None
) -> subprocess.CompletedProcess:
    tools = require_peer("ssh")
    return subprocess.run(
        [tools["ssh"], "-F", str(ssh_config), *args],
        capture_output=True, timeout=timeout, input=input,
    )  # fmt: skip


def target_fingerprint(gw: GatewayProcess, target: str) -> str:
    result = sshgateway_cli("fingerprints", "--state-dir", gw.config["state_dir"], "--target", target)
    match = re.fullmatch(r"SSH-2 ssh-ed25519 256 (SHA256:[A-Za-z0-9+/]+)\n", result.stdout)
    assert match, result.stdout + result.stderr
    return match.group(1)


def flow_records(gw: GatewayProcess) -> list[dict]:
    path = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"
    if not path.exists():
        return []
    # The gateway may be writing a record right now: a last line without its end is not
    # one yet.
    lines = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines if line]


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize("host", ["dev1", "dev1.example"])
def test_ssh_J_runs_a_command_on_the_ssh1_device_and_returns_its_status(jump, host):
    gw, ssh_config, _, _ = jump
    result = ssh(ssh_config, host, "echo hi; exit 7")
    assert result.stdout == b"hi\n", result.stderr + gw.log_text()[-3000:].encode()
    assert result.returncode == 7
    # The inner login is bound to alice's connection; the name the client sent is logged.
    gw.wait_for_log(r"jump: alice -> dev1: inner SSH-2 login as 'admin'")


def test_ssh_J_gets_a_pty_on_the_ssh1_device_with_window_changes(jump, tmp_path):
    gw, ssh_config, _, _ = jump
    result = ssh(ssh_config, "-tt", "dev1", "tty")
    assert result.stdout.startswith(b"/dev/pts/"), result.stderr + gw.log_text()[-2000:].encode()
    marker = tmp_path / "size"
    argv = [require_peer("ssh")["ssh"], "-F", str(ssh_config), "-tt", "dev1",
            size_report_script(marker)]  # fmt: skip
    assert_window_change_reaches(argv, marker)


def test_ssh_J_interactive_shell_on_the_ssh1_device(jump):
    gw, ssh_config, _, _ = jump
    result = ssh(ssh_config, "-tt", "dev1", timeout=60, input=b"echo shell-$((6*7))\rexit 3\r")
    assert b"shell-42" in result.stdout, result.stderr + gw.log_text()[-2000:].encode()
    assert result.returncode == 3


def test_a_jump_host_inner_session_is_recorded_like_alice_plus_dev1(jump):
    gw, ssh_config, _, _ = jump
    recordings = Path(gw.config["state_dir"]) / "recordings"
    before = set(recordings.glob("*.cast"))
    result = ssh(ssh_config, "-tt", "dev1", "echo inner-$((6*7))")
    assert b"inner-42" in result.stdout, result.stderr
    titled = []

    def recorded() -> bool:
        for path in set(recordings.glob("*.cast")) - before:
            lines = path.read_text().splitlines()
            if json.loads(lines[0])["title"] == "alice -> dev1: echo inner-$((6*7))":
                titled[:] = [json.loads(line) for line in lines[1:]]
        return any(e[1] == "o" and "inner-42" in e[2] for e in titled)

    assert wait_for(recorded), gw.log_text()[-2000:]


def test_the_host_key_the_client_sees_is_the_targets(jump):
    gw, ssh_config, known_hosts, _ = jump
    assert ssh(ssh_config, "dev1", "true").returncode == 0
    tools = require_peer("ssh-keygen")
    listed = subprocess.run(
        [tools["ssh-keygen"], "-l", "-f", str(known_hosts)], capture_output=True, text=True
    )
    seen = set(re.findall(r"SHA256:[A-Za-z0-9+/]+", listed.stdout))
    assert seen == {target_fingerprint(gw, "dev1")}, listed.stdout + listed.stderr
    key_file = Path(gw.config["state_dir"]) / "targets" / "dev1_ed25519_key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_any_inner_user_name_is_accepted(jump):
    gw, ssh_config, _, _ = jump
    result = ssh(ssh_config, "-l", "someone-else", "dev1", "echo ok")
    assert result.stdout == b"ok\n", result.stderr
    gw.wait_for_log(r"inner SSH-2 login as 'someone-else'")


def test_the_inner_connection_is_a_flow_record_linked_to_the_outer_one(jump):
    gw, ssh_config, _, _ = jump

    def inner_records():
        return [r for r in flow_records(gw) if " jump:dev1" in r["peer"]]

    before = len(inner_records())
    assert ssh(ssh_config, "dev1", "echo linked").returncode == 0
    assert wait_for(lambda: len(inner_records()) > before), gw.log_text()[-2000:]
    inner = inner_records()[-1]
    assert inner["role"] == "server" and inner["protocol"] == "ssh2"
    assert inner["user"] == "alice" and inner["target"] == "dev1"

    def by_id():
        return {r["id"]: r for r in flow_records(gw)}

    # The outer connection's record is written when it closes, after the inner one's.
    assert wait_for(lambda: inner["link"] in by_id()), inner
    outer = by_id()[inner["link"]]
    assert outer["role"] == "server" and outer["user"] == "alice"
    assert any(r["name"] == "direct-tcpip" for r in outer["requests"])
    # The device leg links to the inner connection.
    assert wait_for(
        lambda: any(r["link"] == inner["id"] and r["role"] == "client" for r in flow_records(gw))
    )


def test_paramiko_through_a_jump_channel_runs_a_command_on_the_ssh1_device(jump, client_keys):
    paramiko = require_module("paramiko")
    gw, _, _, device = jump
    outer = paramiko_client(gw, key_filename=str(client_keys["ed25519"]))
    try:
        channel = outer.get_transport().open_channel(
            "direct-tcpip", ("dev1", device.port), ("127.0.0.1", 0)
        )
        inner = paramiko.Transport(channel)
        try:
            inner.start_client(timeout=20)
            assert inner.get_remote_server_key().get_name() == "ssh-ed25519"
            inner.auth_none("admin")
            session = inner.open_session(timeout=20)
            session.exec_command("echo through; exit 5")
            out = b""
            while chunk := session.recv(1024):
                out += chunk
            assert out == b"through\n"
            assert session.recv_exit_status() == 5
        finally:
            inner.close()
    finally:
        outer.close()


def test_ssh_J_runs_a_command_on_a_telnet_device(jump):
    gw, ssh_config, _, _ = jump
    result = ssh(ssh_config, "tel1", "echo hi-$((6*7))")
    assert b"hi-42\n" in result.stdout, result.stderr + gw.log_text()[-3000:].encode()
    gw.wait_for_log(r"jump: alice -> tel1: inner SSH-2 login as 'admin'")


def test_ssh_J_shell_with_a_pty_on_a_telnet_device(jump):
    gw, ssh_config, _, _ = jump
    result = ssh(ssh_config, "-tt", "tel1", input=b"stty size; echo tel-$((6*7))\rexit\r")
    assert b"tel-42" in result.stdout, result.stderr + gw.log_text()[-3000:].encode()


@pytest.mark.parametrize("mode", [[], ["-O"]], ids=["sftp-mode", "rcp-O"])
def test_scp_through_the_jump_puts_and_gets_a_file_on_the_ssh1_device(jump, tmp_path, mode):
    """OpenSSH 9's scp in its default SFTP mode (served by the gateway over the device's
    scp) and in the legacy rcp mode (-O, a command on the device)."""
    gw, ssh_config, _, _ = jump
    tools = require_peer("scp")
    source, copy, back = tmp_path / "up", tmp_path / "on-device", tmp_path / "back"
    source.write_bytes(os.urandom(200_000))
    for src, dst in ((str(source), f"dev1:{copy}"), (f"dev1:{copy}", str(back))):
        result = subprocess.run(
            [tools["scp"], *mode, "-F", str(ssh_config), src, dst], capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stderr + gw.log_text()[-2000:].encode()
    assert back.read_bytes() == source.read_bytes()


def test_sftp_through_the_jump_is_served_as_for_alice_plus_dev1(jump, tmp_path):
    gw, ssh_config, _, _ = jump
    tools = require_peer("sftp")
    source = tmp_path / "put-me"
    source.write_bytes(os.urandom(50_000))
    result = subprocess.run(
        [tools["sftp"], "-F", str(ssh_config), "-b", "-", "dev1"],
        input=f"pwd\nput {source} {tmp_path / 'put'}\n".encode(), capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"Remote working directory" in result.stdout
    assert (tmp_path / "put").read_bytes() == source.read_bytes()
    gw.wait_for_log(r"sftp on dev1: served by the gateway over the device's scp")


@pytest.mark.slow
def test_gateway_memory_bounded_with_a_slow_reader_through_the_jump(jump):
    """The device could send far faster than the client reads (about 100 KB/s): the inner
    session's window and the jump channel's pause the device."""
    gw, ssh_config, _, _ = jump
    argv = [require_peer("ssh")["ssh"], "-F", str(ssh_config), "dev1", "cat /dev/zero"]
    assert peak_rss_growth_kib(gw, argv) < 32 * 1024


def test_plink_through_plink_nc_reaches_the_ssh1_device(jump):
    """PuTTY as the jump client: an outer ``plink -nc dev1:PORT`` (a direct-tcpip channel
    through the gateway) is the inner plink's ``-proxycmd``; the inner plink speaks SSH-2
    to the gateway's server for dev1 (pinned to `fingerprints --target dev1`), logs in with
    ``none`` and runs a command on the SSH-1 device."""
    gw, ssh_config, _, device = jump
    tools = require_peer("plink")
    assert ssh(ssh_config, "dev1", "true").returncode == 0  # dev1's key exists from here on
    outer = [
        tools["plink"], "-ssh", "-2", "-batch", "-hostkey", ssh2_fingerprint(gw),
        "-P", str(gw.port), "-pw", PASSWORD, "-nc", f"dev1:{device.port}", "alice@127.0.0.1",
    ]  # fmt: skip
    inner = [
        tools["plink"], "-ssh", "-2", "-batch", "-hostkey", target_fingerprint(gw, "dev1"),
        "-proxycmd", shlex.join(outer), "-P", str(device.port), "admin@dev1",
        "echo via-plink; exit 6",
    ]  # fmt: skip
    result = subprocess.run(inner, capture_output=True, timeout=90, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout) == (6, b"via-plink\n"), result.stderr
