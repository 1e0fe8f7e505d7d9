"""Jump-host use (SSH-2 ``direct-tcpip``) through a real gateway to a real OpenSSH sshd
device: OpenSSH ``ssh -J`` (ProxyJump from an ssh_config file) runs a command end to end
and returns its status, ``ssh -W`` to a destination that is not one of alice's targets is
refused with a log line, and paramiko runs a command through a jump channel (``sock=``).
The forward is recorded as a flow linked to the outer connection's."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.clients import (
    assert_memory_levels_off,
    one_target_config,
    peak_rss_growth_kib,
    ssh2_device,
    sshgateway_cli,
)
from tests.support.flow_records import read_jsonl
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_module, require_peer
from tests.support.python_clients import paramiko_client

pytestmark = pytest.mark.peer


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    @property
    def port(self) -> int:
        return self.server_address[1]


@contextmanager
def tcp_server(handle) -> Iterator[_Server]:
    """A loopback TCP server on a free port whose connections run ``handle(socket)``."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                handle(self.request)
            except OSError:
                pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def send_zeros(sock: socket.socket) -> None:
    chunk = bytes(65536)
    while True:
        sock.sendall(chunk)


def read_nothing(sock: socket.socket) -> None:
    time.sleep(60)  # reads nothing


@pytest.fixture(scope="module")
def jump(tmp_path_factory, authorized_keys, client_keys):
    work = tmp_path_factory.mktemp("jump")
    flooding, holding = tcp_server(send_zeros), tcp_server(read_nothing)
    with ssh2_device(work) as (device, target), flooding as flood, holding as sink:
        target["aliases"] = ["host2.example"]
        config = one_target_config(authorized_keys, "host2", target)
        config["flows"] = {"enabled": True}
        # Raw forwarding beyond targets: the device's port under a name no target has, a
        # server that sends zeros without end, and one that never reads.
        config["users"]["alice"]["permit_open"] = [
            f"localhost:{device.port}", f"localhost:{flood.port}", f"localhost:{sink.port}",
        ]  # fmt: skip
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


def test_16mib_both_ways_through_ssh_J(jump):
    gw, ssh_config, _, _ = jump
    data = os.urandom(16 * 1024 * 1024)
    tools = require_peer("ssh")
    result = subprocess.run(
        [tools["ssh"], "-F", str(ssh_config), "host2", "cat"],
        input=data, capture_output=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


# Flow control is checked on raw forwards (ssh -W to a permit_open destination): through
# ssh -J the inner SSH session's own window would bound the gateway's buffers anyway.
def ssh_W_argv(ssh_config: Path, port: int) -> list[str]:
    return [require_peer("ssh")["ssh"], "-F", str(ssh_config), "-W", f"localhost:{port}", "gw"]


@pytest.mark.slow
def test_gateway_memory_bounded_with_a_slow_reader_of_a_raw_forward(jump):
    gw, ssh_config, _, _ = jump
    flood_port = gw.config["users"]["alice"]["permit_open"][1].rsplit(":", 1)[1]
    assert peak_rss_growth_kib(gw, ssh_W_argv(ssh_config, int(flood_port))) < 32 * 1024


@pytest.mark.slow
def test_gateway_memory_bounded_when_the_destination_does_not_read(jump):
    gw, ssh_config, _, _ = jump
    sink_port = gw.config["users"]["alice"]["permit_open"][2].rsplit(":", 1)[1]

    def start():
        with open("/dev/zero", "rb") as zeros:
            return subprocess.Popen(
                ssh_W_argv(ssh_config, int(sink_port)),
                stdin=zeros, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip

    assert_memory_levels_off(gw, start)


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



def test_a_forward_is_audited_listed_and_ended_by_an_operator(jump):
    """What a security team asks of a jump: the audit trail says who went where (ssh -J to
    a target, ssh -W to a permit_open destination), ``sessions list`` shows a forward while
    it is open, and ``sessions kill`` ends it."""
    gw, ssh_config, _, _ = jump
    audit = Path(gw.config["state_dir"]) / "audit" / "audit.jsonl"

    def events(name: str) -> list[dict]:
        return [e for e in read_jsonl(audit) if e.get("event") == name and e.get("forward")]

    before = len(events("session_end"))
    result = ssh(ssh_config, "host2", "echo audited")
    assert result.stdout == b"audited\n", result.stderr
    assert wait_for(lambda: len(events("session_end")) > before), gw.log_text()[-2000:]
    end = events("session_end")[-1]
    assert (end["user"], end["target"], end["target_protocol"]) == ("alice", "host2", "tcp")
    assert end["forward"].endswith(f":{gw.config['targets']['host2']['port']}")
    assert end["bytes_in"] > 1000 and end["bytes_out"] > 1000 and end["recording"] is None
    assert [s for s in events("session_start") if s["session"] == end["session"]]

    sink_port = int(gw.config["users"]["alice"]["permit_open"][2].rsplit(":", 1)[1])
    held = subprocess.Popen(
        ssh_W_argv(ssh_config, sink_port),
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        def listed() -> list[dict]:
            out = sshgateway_cli(
                "sessions", "list", "--state-dir", gw.config["state_dir"], "--format", "json"
            ).stdout
            return [s for s in json.loads(out) if s["forward"] == f"localhost:{sink_port}"]

        [forward] = wait_for(listed) or [None]
        assert forward is not None, gw.log_text()[-2000:]
        assert (forward["user"], forward["target"], forward["target_protocol"]) == ("alice", "", "tcp")
        text = sshgateway_cli("sessions", "list", "--state-dir", gw.config["state_dir"]).stdout
        assert f"forward localhost:{sink_port}" in text
        killed = sshgateway_cli(
            "sessions", "kill", forward["id"], "--state-dir", gw.config["state_dir"]
        )
        assert killed.returncode == 0, killed.stderr
        held.wait(20)  # the channel closed: ssh -W ends
    finally:
        held.kill()
        held.wait()
    [ended] = wait_for(lambda: [e for e in events("session_end") if e["session"] == forward["id"]])
    assert ended["terminated_by"], ended
