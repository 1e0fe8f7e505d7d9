"""The SSH-1 server key with real peers (issue 15): ``server_key_bits = 768`` passes
``check-config``, the gateway starts with it, and PuTTY's ``plink -1`` and OpenSSH 7.5's
``ssh1`` log in; and a server-key regeneration (a 4096-bit key: seconds of work) does not
hold up the logins that arrive meanwhile.

Skipped locally when a peer is missing, a failure under CI=true."""

from __future__ import annotations

import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest

from tests.support.clients import (
    PASSWORD,
    base_config,
    hash_password,
    plink1_argv,
    ssh1_argv,
    sshgateway_cli,
)
from tests.support.gateway_process import REPO, GatewayProcess, render_toml
from tests.support.peers import require_peer

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def gw768(tmp_path_factory):
    d = tmp_path_factory.mktemp("ssh1-768")
    authorized = d / "authorized_keys"
    authorized.write_text("")
    authorized.chmod(0o600)
    config = base_config(hash_password(), authorized, ssh1={"server_key_bits": 768})
    process = GatewayProcess(d, config)
    # check-config on the very file the gateway then starts with.
    process.config_path.write_text(render_toml(process.config))
    process.checked = sshgateway_cli("check-config", str(process.config_path), check=False)
    with process:
        yield process


def test_check_config_accepts_768_and_the_gateway_starts_with_it(gw768):
    assert gw768.checked.returncode == 0, gw768.checked.stdout + gw768.checked.stderr
    assert gw768.port is not None
    assert "key_size must be at least 1024" not in gw768.log_text()


def test_plink_logs_in_with_a_768_bit_server_key(gw768):
    result = subprocess.run(
        plink1_argv(gw768, "-v", "echo hi"), capture_output=True, text=True, timeout=60
    )
    assert (result.stdout, result.returncode) == ("hi\n", 0), result.stderr
    line = gw768.wait_for_log(r"protocol=ssh1 .*auth=password result=success.*").group(0)
    assert "server_key_bits=768" in line


def test_openssh_ssh1_logs_in_with_a_768_bit_server_key(gw768, tmp_path):
    tools = require_peer("sshpass")
    argv, env = ssh1_argv(gw768, tmp_path, "ssh1", "-v", "alice@127.0.0.1", "echo hi")
    result = subprocess.run(
        [tools["sshpass"], "-p", PASSWORD, *argv], capture_output=True, text=True, env=env,
        timeout=60,
    )
    assert (result.stdout, result.returncode) == ("hi\n", 0), result.stderr
    assert "Received server public key (768 bits) and host key (2048 bits)" in result.stderr


# ---------------------------------------------------------------- regeneration and logins

MAX_DELAY = 0.002  # seconds a login may be held up by a regeneration (issue 15)


class RotationServer:
    """tests.support.ssh1.key_rotation_server in a subprocess; what it says is read by a
    thread, so that a test can poll for it between logins."""

    def __init__(self, bits: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.ssh1.key_rotation_server", str(bits)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.line(60).split()[1])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def line(self, timeout: float) -> str:
        return self.lines.get(timeout=timeout)

    def said(self) -> str | None:
        """A line if one is waiting, else None."""
        try:
            return self.lines.get_nowait()
        except queue.Empty:
            return None

    def rotate(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("rotate\n")
        self.process.stdin.flush()
        assert self.line(60) == "rotating"

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def login_start(port: int) -> float:
    """Seconds from connecting to holding the server's SSH_SMSG_PUBLIC_KEY: everything a
    login waits for from the server before the client's own RSA work."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        line = b""
        while not line.endswith(b"\n"):
            line += read_exactly(sock, 1)
        assert line.startswith(b"SSH-1.5-")
        sock.sendall(b"SSH-1.5-latency_probe\n")
        length = int.from_bytes(read_exactly(sock, 4), "big")
        read_exactly(sock, length + 8 - length % 8)
        return time.perf_counter() - started


def rotation_round(server: RotationServer) -> tuple[float, float, list[float]]:
    """One regeneration: how long it took, the usual login time (just before and after
    it), and the logins answered while it ran."""
    before = [login_start(server.port) for _ in range(30)]
    server.rotate()
    during: list[float] = []
    deadline = time.monotonic() + 120
    while (said := server.said()) is None and time.monotonic() < deadline:
        during.append(login_start(server.port))
    assert said is not None and said.startswith("rotated"), said
    after = [login_start(server.port) for _ in range(30)]
    return float(said.split()[1]), statistics.median(before + after), during


def test_logins_during_a_regeneration_are_not_held_up():
    # The machine is shared: a round whose logins all slowed down together is noise, so
    # up to three rounds are measured and the best must meet the bar. Before the key was
    # made in a thread, no login at all was answered while it was made.
    server = RotationServer(4096)
    delays = []
    try:
        for _ in range(3):
            generation, usual, during = rotation_round(server)
            # A 4096-bit key takes seconds; many logins were answered meanwhile.
            assert generation > 0.2 and len(during) >= 20, (generation, during)
            delays.append(statistics.median(during) - usual)
            if delays[-1] <= MAX_DELAY:
                break
    finally:
        server.close()
    assert min(delays) <= MAX_DELAY, delays
