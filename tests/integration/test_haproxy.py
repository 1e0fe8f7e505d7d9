"""The gateway behind a real HAProxy (issue 11, acceptance 7): HAProxy in ``mode tcp`` on
loopback sends a PROXY v2 header (``send-proxy-v2``) to a gateway process listening on a
``haproxy:tcp:port=0:interface=127.0.0.1`` endpoint; OpenSSH's ``ssh`` (SSH-2) and
OpenSSH 7.5's ``ssh1 -1`` (SSH-1), bound to 127.0.0.2 with ``-b``, log in through it. The
gateway's connection log line and flow record must name 127.0.0.2, the client, not
127.0.0.1, HAProxy's end of the connection. A connection that reaches the PROXY listener
without a header is closed with a log line and never sees a banner."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.clients import PASSWORD, keyed_config
from tests.support.gateway_process import GatewayProcess
from tests.support.haproxy import haproxy_in_front
from tests.support.peers import OPENSSL_LEGACY, require_peer

pytestmark = pytest.mark.peer

CLIENT_ADDRESS = "127.0.0.2"  # every client binds here; HAProxy's side is 127.0.0.1


@pytest.fixture(scope="module")
def gateway_behind_haproxy(tmp_path_factory):
    work = tmp_path_factory.mktemp("haproxy")
    config, key = keyed_config(work, listen=["haproxy:tcp:port=0:interface=127.0.0.1"])
    (work / "gw").mkdir()
    with GatewayProcess(work / "gw", config) as gw:
        with haproxy_in_front(work, gw.port) as haproxy_port:
            gw.key = key
            gw.haproxy_port = haproxy_port
            yield gw


def flow_records(gw: GatewayProcess, protocol: str, timeout: float = 20.0) -> list[dict]:
    path = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            records = [json.loads(line) for line in lines]
            found = [r for r in records if r["protocol"] == protocol]
            if found:
                return found
        time.sleep(0.1)
    raise AssertionError(f"no {protocol} flow record:\n" + gw.log_text()[-3000:])


def closed_lines(gw: GatewayProcess, protocol: str) -> list[str]:
    """The connection log lines of ``protocol``; and no connection at all (HAProxy's own
    included) is logged with HAProxy's address, 127.0.0.1."""
    gw.wait_for_log(rf"connection closed: .*protocol={protocol}\b")
    closed = [line for line in gw.output if "connection closed:" in line]
    assert not [line for line in closed if "peer=127.0.0.1:" in line], closed
    return [line for line in closed if f"protocol={protocol}" in line]


def test_openssh_through_haproxy_is_logged_and_recorded_with_its_own_address(
    gateway_behind_haproxy,
):
    gw = gateway_behind_haproxy
    ssh = require_peer("ssh")["ssh"]
    result = subprocess.run(
        [ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
         "-o", "ConnectTimeout=10", "-i", str(gw.key), "-o", "IdentitiesOnly=yes",
         "-b", CLIENT_ADDRESS, "-p", str(gw.haproxy_port), "alice@127.0.0.1",
         "echo through haproxy"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, b"through haproxy\n"), (
        result.stderr.decode() + gw.log_text()[-3000:]
    )
    (line,) = closed_lines(gw, "ssh2")
    assert f"peer={CLIENT_ADDRESS}:" in line, line
    (record,) = flow_records(gw, "ssh2")
    assert record["peer"].startswith(f"{CLIENT_ADDRESS}:"), record["peer"]


def test_ssh1_through_haproxy_is_logged_and_recorded_with_its_own_address(
    gateway_behind_haproxy, tmp_path
):
    """SSH-1 with OpenSSH 7.5's ``ssh1 -1 -b`` (plink has no bind-address option)."""
    gw = gateway_behind_haproxy
    tools = require_peer("ssh1", "sshpass")
    conf = tmp_path / "openssl-legacy.cnf"
    conf.write_text(OPENSSL_LEGACY)
    result = subprocess.run(
        [tools["sshpass"], "-p", PASSWORD, tools["ssh1"], "-1", "-F", "/dev/null",
         "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'known'}",
         "-b", CLIENT_ADDRESS, "-p", str(gw.haproxy_port), "alice@127.0.0.1",
         "echo ssh1 through haproxy"],
        capture_output=True, timeout=60, env=dict(os.environ, OPENSSL_CONF=str(conf)),
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, b"ssh1 through haproxy\n"), (
        result.stderr.decode() + gw.log_text()[-3000:]
    )
    (line,) = closed_lines(gw, "ssh1")
    assert f"peer={CLIENT_ADDRESS}:" in line and "user='alice'" in line, line
    (record,) = flow_records(gw, "ssh1")
    assert record["peer"].startswith(f"{CLIENT_ADDRESS}:"), record["peer"]


def test_connection_without_a_header_gets_no_banner_and_a_log_line(gateway_behind_haproxy):
    """Straight to the PROXY listener, past HAProxy: an SSH client's version line is not a
    PROXY header; the gateway closes without a word and says why in its log."""
    gw = gateway_behind_haproxy
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as conn:
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        assert conn.recv(1024) == b""  # closed, nothing sent first
    gw.wait_for_log(r"refusing 127\.0\.0\.1:\d+ \(PROXY listener\): no PROXY header")
