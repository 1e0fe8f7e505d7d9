"""``workers = 2`` with real clients (acceptance 1 of issue 14): OpenSSH ssh and paramiko
logins spread over both worker processes (the parent's log shows both worker numbers);
a worker killed with SIGKILL mid-run leaves the other serving, and the parent restarts
it. Also: the flows both workers append to one file stay whole lines."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.clients import PASSWORD, base_config, ssh_argv
from tests.support.gateway_process import GatewayProcess
from tests.support.python_clients import paramiko_client

pytestmark = pytest.mark.peer

LOGGED_IN = re.compile(r"\[worker (\d+)\] .*logged in")


@pytest.fixture
def two_workers(tmp_path, password_hash, authorized_keys):
    config = base_config(password_hash, authorized_keys, workers=2)
    with GatewayProcess(tmp_path, config) as gw:
        gw.wait_for_log(r"\[worker 1\] sshgateway listening on", timeout=60)
        gw.wait_for_log(r"\[worker 2\] sshgateway listening on", timeout=60)
        yield gw


def worker_pids(gw: GatewayProcess) -> dict[int, int]:
    """The latest pid of each worker, from the parent's log."""
    pids: dict[int, int] = {}
    for found in re.finditer(r"worker (\d+) started \(pid (\d+)\)", gw.log_text()):
        pids[int(found.group(1))] = int(found.group(2))
    return pids


def openssh_login(gw: GatewayProcess, key) -> str:
    done = subprocess.run(
        ssh_argv(gw, key, "echo", "served"), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def paramiko_login(gw: GatewayProcess, fingerprints) -> str:
    client = paramiko_client(gw, password=PASSWORD, fingerprints=fingerprints)
    with client:
        _stdin, stdout, _stderr = client.exec_command("echo served", timeout=30)
        return stdout.read().decode()


def logins(gw: GatewayProcess, key, fingerprints, count: int) -> list[str]:
    """``count`` logins, half OpenSSH, half paramiko, four at a time."""
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(openssh_login, gw, key)
            if i % 2
            else pool.submit(paramiko_login, gw, fingerprints)
            for i in range(count)
        ]
        return [f.result() for f in futures]


def served_by(gw: GatewayProcess, since: int = 0) -> list[int]:
    return [int(n) for n in LOGGED_IN.findall(gw.log_text()[since:])]


def test_logins_spread_over_both_workers_and_a_killed_worker_is_restarted(two_workers, client_keys):
    gw = two_workers
    from tests.support.python_clients import gateway_fingerprints

    fingerprints = gateway_fingerprints(gw)
    key = client_keys["ed25519"]
    assert logins(gw, key, fingerprints, 24) == ["served\n"] * 24
    assert set(served_by(gw)) == {1, 2}, gw.log_text()
    flows = (gw.workdir / "state" / "flows" / "flows.jsonl").read_text().splitlines()
    assert flows and all(json.loads(line) for line in flows)

    # SIGKILL one worker: the other serves every login meanwhile.
    pids = worker_pids(gw)
    os.kill(pids[1], signal.SIGKILL)
    gw.wait_for_log(rf"worker 1 \(pid {pids[1]}\) was killed by SIGKILL after .*; restarting it")
    mark = len(gw.log_text())
    assert logins(gw, key, fingerprints, 6) == ["served\n"] * 6
    assert os.path.exists(f"/proc/{pids[2]}")

    # The parent restarts it, and it serves again.
    gw.wait_for_log(rf"worker 1 started \(pid (?!{pids[1]}\))\d+\)", timeout=30)
    new_pid = worker_pids(gw)[1]
    assert new_pid != pids[1]
    gw.wait_for_log(r"\[worker 1\] sshgateway listening on", timeout=60)
    deadline = time.monotonic() + 120
    while 1 not in served_by(gw, mark) and time.monotonic() < deadline:
        mark_before = len(gw.log_text())
        logins(gw, key, fingerprints, 8)
        if 1 in served_by(gw, mark_before):
            break
    assert 1 in served_by(gw, mark), gw.log_text()[mark:]


def test_sigterm_drains_every_worker_and_the_parent_exits_0(two_workers):
    gw = two_workers
    pids = worker_pids(gw)
    os.kill(gw.pid, signal.SIGTERM)
    assert gw.process.wait(30) == 0
    for pid in pids.values():
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()
    text = gw.log_text()
    assert "[worker 1] shutdown: every connection is closed" in text
    assert "[worker 2] shutdown: every connection is closed" in text


def test_one_metrics_endpoint_sums_both_workers(
    tmp_path, password_hash, authorized_keys, client_keys
):
    import urllib.request

    from tests.support.python_clients import gateway_fingerprints

    config = base_config(
        password_hash, authorized_keys, workers=2, metrics={"listen": "tcp:0:interface=127.0.0.1"}
    )
    with GatewayProcess(tmp_path, config) as gw:
        for number in (1, 2):
            gw.wait_for_log(rf"\[worker {number}\] sshgateway listening on", timeout=60)
        port = int(gw.wait_for_log(r"\] metrics served on http://127\.0\.0\.1:(\d+)/").group(1))
        fingerprints = gateway_fingerprints(gw)
        assert logins(gw, client_keys["ed25519"], fingerprints, 12) == ["served\n"] * 12
        assert set(served_by(gw)) == {1, 2}, gw.log_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            text = reply.read().decode()
        logged_in = {
            line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("sshgateway_logins_total{")
        }
        assert sum(v for k, v in logged_in.items() if 'result="success"' in k) == 12, text
        assert 'method="publickey"' in "".join(logged_in) and 'method="password"' in "".join(
            logged_in
        )
        assert (
            oct((tmp_path / "state" / "workers" / "metrics-1.sock").stat().st_mode & 0o777)
            == "0o600"
        )
