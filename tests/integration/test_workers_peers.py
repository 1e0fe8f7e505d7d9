"""``workers = 2`` with real clients (acceptance 1 of issue 14): OpenSSH ssh and paramiko
logins spread over both worker processes (the parent's log shows both worker numbers);
a worker killed with SIGKILL mid-run leaves the other serving, and the parent restarts
it. Also: the flows both workers append to one file stay whole lines."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.clients import PASSWORD, base_config, ssh_argv
from tests.support.flow_records import read_jsonl
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
    assert read_jsonl(gw.workdir / "state" / "flows" / "flows.jsonl")

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


# --- the endpoints the parent takes over: systemd's sockets, haproxy: (PROXY protocol) --------


def test_systemd_socket_activation_with_workers_ready_only_from_the_parent(tmp_path):
    import socket as sockets

    from tests.integration.test_systemd import activated

    gw, key = activated(tmp_path, "systemd:domain=INET:name=ssh", fdname="ssh")
    gw.config["workers"] = 2
    path = tmp_path / "notify.sock"
    heard: list[str] = []
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(60)
        gw.extra_env["NOTIFY_SOCKET"] = str(path)
        with gw:
            for _ in range(6):
                done = subprocess.run(
                    ssh_argv(gw, key, "echo activated"), capture_output=True, text=True, timeout=90
                )
                assert (done.returncode, done.stdout) == (0, "activated\n"), done.stderr
            assert re.search(r"\[worker \d\] .*logged in", gw.log_text()), gw.log_text()
            while "READY=1" not in heard:
                heard.extend(notify.recv(4096).decode().split("\n"))
            gw.process.send_signal(signal.SIGTERM)
            assert gw.process.wait(30) == 0
            notify.settimeout(1)
            try:
                while True:
                    heard.extend(notify.recv(4096).decode().split("\n"))
            except TimeoutError:
                pass
    assert [s for s in heard if s in ("READY=1", "STOPPING=1")] == ["READY=1", "STOPPING=1"]


def test_haproxy_endpoint_with_workers_logs_the_clients_address(tmp_path):
    from tests.integration.test_haproxy import CLIENT_ADDRESS, haproxy_in_front
    from tests.support.clients import keyed_config

    config, key = keyed_config(
        tmp_path, listen=["haproxy:tcp:port=0:interface=127.0.0.1"], workers=2
    )
    (tmp_path / "gw").mkdir()
    with GatewayProcess(tmp_path / "gw", config) as gw:
        for number in (1, 2):
            gw.wait_for_log(rf"\[worker {number}\] sshgateway listening on", timeout=60)
        with haproxy_in_front(tmp_path, gw.port) as haproxy_port:
            for _ in range(4):
                argv = ssh_argv(gw, key, "echo proxied")
                argv[argv.index(str(gw.port))] = str(haproxy_port)
                argv[1:1] = ["-b", CLIENT_ADDRESS]
                done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                assert (done.returncode, done.stdout) == (0, "proxied\n"), done.stderr
        closed = [line for line in gw.output if "connection closed:" in line]
        assert closed and all(f"peer={CLIENT_ADDRESS}:" in line for line in closed), closed
        assert all("[worker " in line for line in closed)


def test_run_as_workers_run_as_the_account_on_the_parents_low_port():
    from tests.integration.test_privsep import gateway, wait_for
    from tests.support.accounts import (
        RUN_AS,
        ensure_account,
        interpreter_reachable_by,
        process_user,
        require_root,
        shared_workdir,
    )

    require_root()
    ensure_account(RUN_AS)
    with shared_workdir() as workdir, interpreter_reachable_by(RUN_AS):
        gw, key, port = gateway(workdir)
        gw.config["workers"] = 2
        with gw:
            for number in (1, 2):
                gw.wait_for_log(rf"\[worker {number}\] sshgateway listening on", timeout=60)
            pids = worker_pids(gw)
            assert wait_for(lambda: process_user(gw.pid) == RUN_AS)
            assert {process_user(pid) for pid in pids.values()} == {RUN_AS}
            for _ in range(4):
                done = subprocess.run(
                    ssh_argv(gw, key, "id -un"), capture_output=True, text=True, timeout=60
                )
                assert (done.returncode, done.stdout) == (0, f"{RUN_AS}\n"), (
                    done.stderr + gw.log_text()[-3000:]
                )
            assert gw.port == port < 1024


# --- live sessions across workers: the configured control socket sees them all -------------


def logins_seen(gw: GatewayProcess) -> list[int]:
    """The worker of each login so far, in order (one audit line per login)."""
    return [int(n) for n in re.findall(r"\[worker (\d+)\] audit: alice logged in", gw.log_text())]


def test_sessions_list_shows_and_kill_ends_sessions_on_either_worker(tmp_path):
    import pwd

    from tests.integration.test_live_sessions_peers import PROGRAM, first_line_pid, listed, sessions
    from tests.support.clients import keyed_config
    from tests.support.session_processes import alive, wait_gone

    config, key = keyed_config(tmp_path, workers=2)
    (tmp_path / "gw").mkdir()
    clients: list[tuple[subprocess.Popen, int, int]] = []  # (ssh -tt, its shell's pid, worker)
    with GatewayProcess(tmp_path / "gw", config) as gw:
        for number in (1, 2):
            gw.wait_for_log(rf"\[worker {number}\] sshgateway listening on", timeout=60)
        try:
            # One at a time, until both workers hold one: the log says which took each login.
            while {worker for *_, worker in clients} != {1, 2}:
                assert len(clients) < 12, gw.log_text()
                before = len(logins_seen(gw))
                ssh = subprocess.Popen(
                    ssh_argv(gw, key, "-tt", PROGRAM, user="alice+local"),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True,
                )  # fmt: skip
                pid = first_line_pid(ssh)
                deadline = time.monotonic() + 30
                while len(logins_seen(gw)) == before and time.monotonic() < deadline:
                    time.sleep(0.1)
                logged_in = logins_seen(gw)
                assert len(logged_in) == before + 1, gw.log_text()
                clients.append((ssh, pid, logged_in[-1]))

            found = listed(gw)  # on the configured socket: the parent's
            assert sorted(s["worker"] for s in found) == sorted(w for *_, w in clients), found
            assert all(s["user"] == "alice" and s["target"] == "local" for s in found)
            text = sessions(gw, "list")
            assert text.returncode == 0, text.stderr
            assert text.stdout.splitlines()[0].split()[-2:] == ["WORKER", "RECORDING"]

            # End the newest session, which is on the worker the last client reached.
            victim = max(found, key=lambda s: s["started"])
            worker = clients[-1][2]
            assert victim["worker"] == worker
            killed = sessions(gw, "kill", victim["id"], "--message", "moving you to worker 3")
            assert killed.returncode == 0, killed.stderr + gw.log_text()[-3000:]
            assert killed.stdout.startswith(f"ended session {victim['id']}: alice from ")
            ssh, pid, _ = clients.pop()
            out, _ = ssh.communicate(timeout=30)
            assert ssh.returncode == 255 and "sshgateway: moving you to worker 3" in out, out
            assert wait_gone([pid], timeout=10) == []
            assert all(alive(p) for _, p, _ in clients)
            assert sorted(s["id"] for s in listed(gw)) == sorted(
                s["id"] for s in found if s["id"] != victim["id"]
            )

            # The worker's log names the operator who asked the parent, not the parent.
            me = pwd.getpwuid(os.geteuid()).pw_name
            gw.wait_for_log(
                rf"\[worker {worker}\] .*session {re.escape(victim['id'])} of alice to local "
                rf"ended by {re.escape(me)} \(uid {os.geteuid()}, pid (?!{gw.pid}\))\d+\)",
                timeout=10,
            )
            unknown = sessions(gw, "kill", victim["id"])
            assert unknown.returncode == 1 and "no live session" in unknown.stderr
        finally:
            for ssh, *_ in clients:
                if ssh.poll() is None:
                    ssh.kill()
                    ssh.wait(10)
