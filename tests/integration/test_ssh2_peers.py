"""Issue 2 end to end: real OpenSSH and PuTTY clients against a real gateway process."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import time

import pytest

from tests.support.clients import (
    assert_memory_levels_off,
    base_config,
    plink2_argv,
    ssh2_fingerprint,
    ssh_argv,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tests.support.terminal import assert_window_change_reaches, size_report_script

pytestmark = pytest.mark.peer


def test_twistd_lists_plugin():
    import sys

    from tests.support.gateway_process import REPO, TWISTD

    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, *TWISTD, "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert "sshgateway" in out.stdout


def test_openssh_exec_behind_199_banner(gateway, client_keys):
    # -v shows the server's identification: key exchange succeeded behind SSH-1.99.
    argv = ssh_argv(gateway, client_keys["ed25519"], "echo hi; echo err >&2; exit 3")
    argv.insert(1, "-v")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert "Remote protocol version 1.99" in result.stderr
    assert result.stdout == "hi\n"
    assert "err\n" in result.stderr
    assert result.returncode == 3


def test_openssh_rsa_key(gateway, client_keys):
    result = subprocess.run(
        ssh_argv(gateway, client_keys["rsa"], "echo rsa"), capture_output=True, text=True,
        timeout=60,
    )
    assert result.stdout == "rsa\n", result.stderr


def test_plink_password_and_identical_failures(gateway):
    ok = subprocess.run(plink2_argv(gateway, "echo hi"), capture_output=True, text=True, timeout=60)
    assert ok.stdout.strip() == "hi", ok.stderr
    assert ok.returncode == 0

    wrong = subprocess.run(
        plink2_argv(gateway, "echo hi", password="wrong"), capture_output=True, text=True,
        timeout=60,
    )
    unknown = subprocess.run(
        plink2_argv(gateway, "echo hi", user="mallory", password="wrong"),
        capture_output=True, text=True, timeout=60,
    )
    assert wrong.returncode == unknown.returncode != 0
    assert "hi" not in wrong.stdout
    assert wrong.stderr.replace("alice", "USER") == unknown.stderr.replace("mallory", "USER")


def test_openssh_pty_and_window_change(gateway, client_keys, tmp_path):
    result = subprocess.run(
        ssh_argv(gateway, client_keys["ed25519"], "-tt", "tty"), capture_output=True, text=True,
        timeout=60,
    )
    assert re.search(r"^/dev/pts/\d+", result.stdout), result

    marker = tmp_path / "size"
    argv = ssh_argv(gateway, client_keys["ed25519"], "-tt", size_report_script(marker))
    assert_window_change_reaches(argv, marker)


@pytest.mark.slow
def test_64mib_through_cat(gateway, client_keys, tmp_path):
    data = tmp_path / "blob"
    data.write_bytes(os.urandom(64 * 1024 * 1024))
    with data.open("rb") as stdin:
        result = subprocess.run(
            ssh_argv(gateway, client_keys["ed25519"], "cat"), stdin=stdin, capture_output=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == 64 * 1024 * 1024
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data.read_bytes()).digest()


@pytest.mark.slow
def test_memory_bounded_when_client_stops_reading(gateway, client_keys):
    # The client's stdout is a pipe nobody reads: ssh stops granting window, and the
    # gateway must stop reading the program rather than buffer its output.
    assert_memory_levels_off(gateway, lambda: subprocess.Popen(
        ssh_argv(gateway, client_keys["ed25519"], "cat /dev/zero"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    ))  # fmt: skip


def raw_exchange(gw: GatewayProcess, send: bytes, read_timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send bytes after reading the banner; return what came back and whether it closed."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=read_timeout) as sock:
        banner = b""
        while not banner.endswith(b"\n"):
            banner += sock.recv(1)
        assert banner.startswith(b"SSH-1.99-sshgateway_")
        sock.sendall(send)
        received = b""
        deadline = time.monotonic() + read_timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except (ConnectionResetError, TimeoutError):
                return received, True
            if not chunk:
                return received, True
            received += chunk
        return received, False


def test_other_major_version_refused(gateway):
    received, closed = raw_exchange(gateway, b"SSH-3.0-x\r\n")
    assert received == b"Protocol major versions differ.\n"
    assert closed


def test_overlong_banner_cut_off(gateway):
    _, closed = raw_exchange(gateway, b"SSH-2.0-" + b"x" * 400)
    assert closed


def test_never_ending_banner_times_out(gateway):
    started = time.monotonic()
    _, closed = raw_exchange(gateway, b"SSH-2.0-never-ending", read_timeout=15)
    assert closed
    assert time.monotonic() - started < 10  # version_timeout is 5 s in the test config


def test_fingerprints_match_what_clients_see(gateway):
    tools = require_peer("ssh-keyscan", "ssh-keygen")
    scan = subprocess.run(
        [tools["ssh-keyscan"], "-t", "ed25519,rsa", "-p", str(gateway.port), "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    seen = subprocess.run(
        [tools["ssh-keygen"], "-lf", "-"], input=scan.stdout, capture_output=True, text=True,
        timeout=60,
    ).stdout
    assert ssh2_fingerprint(gateway, "ed25519") in seen
    assert ssh2_fingerprint(gateway, "rsa") in seen


def test_ssh_audit_reports_no_fail(tmp_path_factory, password_hash, authorized_keys):
    require_peer("ssh-audit")
    workdir = tmp_path_factory.mktemp("audit")
    config = base_config(password_hash, authorized_keys, protocols=["2"])
    with GatewayProcess(workdir, config) as gw:
        result = subprocess.run(
            [require_peer("ssh-audit")["ssh-audit"], "-p", str(gw.port), "127.0.0.1"], capture_output=True, text=True,
            timeout=120,
        )
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert "[fail]" not in output, output
    assert "mlkem768x25519-sha256" in output
