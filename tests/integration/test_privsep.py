"""Issue 11, privilege separation, end to end: a gateway started as root binds a port
below 1024, then runs as an unprivileged account (``run_as``, or ``twistd --uid/--gid``);
logins work, flow records are written, and local programs are started by the privileged
spawner, which ends them when the client hangs up or the gateway is killed.

Root only (accounts are created with useradd): skipped without root, failed under CI.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.accounts import (
    LOCAL_USER,
    RUN_AS,
    ensure_account,
    free_low_port,
    interpreter_reachable_by,
    parent_of,
    process_user,
    require_root,
    shared_workdir,
)
from tests.support.clients import keyed_config, plink1_argv, ssh_argv
from tests.support.flow_records import read_jsonl
from tests.support.gateway_process import GatewayProcess
from tests.support.session_processes import cleanup, start_session, wait_gone

pytestmark = pytest.mark.peer


@pytest.fixture
def workdir() -> Iterator[Path]:
    require_root()
    ensure_account(RUN_AS)
    with shared_workdir() as path, interpreter_reachable_by(RUN_AS):
        yield path


def gateway(
    workdir: Path,
    *,
    run_as: bool = True,
    twistd_args: tuple[str, ...] = (),
    os_user: str | None = None,
):
    """A gateway on a free port below 1024, alice's key readable by the account; with
    ``os_user``, alice's local sessions run as that account."""
    port = free_low_port()
    extra = {"listen": [f"tcp:{port}:interface=127.0.0.1"]}
    if run_as:
        extra["run_as"] = RUN_AS
    config, key = keyed_config(workdir, **extra)
    account = ensure_account(RUN_AS)
    # Without another account named, alice's local sessions run as the gateway's own.
    ensure_account(os_user or RUN_AS)
    config["users"]["alice"].update(os_user=os_user or RUN_AS, targets=["local"])
    os.chown(config["users"]["alice"]["authorized_keys"], account.pw_uid, account.pw_gid)
    return GatewayProcess(workdir, config, twistd_args=twistd_args), key, port


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def spawner_pid(gw: GatewayProcess) -> int:
    return int(gw.wait_for_log(r"started the session spawner \(pid (\d+)\)").group(1))


def check_dropped_gateway(gw: GatewayProcess, key: Path, port: int) -> None:
    assert gw.port == port < 1024
    # "listening" is logged before the drop: wait for it.
    assert wait_for(lambda: process_user(gw.pid) == RUN_AS), process_user(gw.pid)
    spawner = spawner_pid(gw)
    assert process_user(spawner) == "root"
    # A login, and a local program started by the spawner (the shell's parent), as alice's
    # os_user: here the gateway's own account.
    out = subprocess.run(
        ssh_argv(gw, key, "id -un; echo $PPID"), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, (out.stderr, gw.log_text()[-3000:])
    user, parent = out.stdout.split()
    assert user == RUN_AS
    assert int(parent) == spawner
    # With a terminal, which the spawner gave to the account; and over SSH-1 (plink -1).
    out = subprocess.run(
        ssh_argv(gw, key, "-tt", 'stat -c %U "$(tty)"'), capture_output=True, text=True, timeout=30
    )
    assert out.stdout.split() == [RUN_AS], (out.stdout, out.stderr)
    out = subprocess.run(plink1_argv(gw, "id -un"), capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == [RUN_AS], (out.stdout, out.stderr, gw.log_text()[-2000:])
    # Flow records are written, into a state directory the account owns; the host keys
    # stay 0600 (and root's: read before the drop).
    state = Path(gw.config["state_dir"])
    flows = state / "flows" / "flows.jsonl"
    gw.wait_for_log(r"local session for alice: pid \d+ ended")
    assert wait_for(flows.exists)
    records = read_jsonl(flows)
    assert any(r["user"] == "alice" for r in records)
    run_as_uid = ensure_account(RUN_AS).pw_uid
    assert state.stat().st_uid == run_as_uid
    assert (state / "flows").stat().st_uid == run_as_uid
    for name in ("ssh_host_ed25519_key", "ssh_host_rsa_key", "ssh1_host_key"):
        st = (state / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == 0


def test_run_as_binds_a_low_port_then_runs_as_the_account(workdir):
    gw, key, port = gateway(workdir)
    with gw:
        check_dropped_gateway(gw, key, port)
        assert f"running as {RUN_AS}" in gw.log_text()


def test_twistd_uid_and_gid_bind_before_switching(workdir):
    gw, key, port = gateway(workdir, run_as=False, twistd_args=("--uid", RUN_AS, "--gid", RUN_AS))
    with gw:
        check_dropped_gateway(gw, key, port)


def test_local_session_runs_as_its_os_user_through_the_spawner(workdir):
    gw, key, _ = gateway(workdir, os_user=LOCAL_USER)
    with gw:
        out = subprocess.run(
            ssh_argv(gw, key, "id -un; echo $PPID"), capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, (out.stderr, gw.log_text()[-3000:])
        assert out.stdout.split() == [LOCAL_USER, str(spawner_pid(gw))]


# alice's os_user: the gateway's own account, or another.
SESSION_ACCOUNTS = pytest.mark.parametrize("os_user", [None, LOCAL_USER], ids=["run_as", "os_user"])


@SESSION_ACCOUNTS
def test_spawned_session_ends_when_the_client_hangs_up(workdir, os_user):
    gw, key, _ = gateway(workdir, os_user=os_user)
    with gw:
        client, pids = start_session(gw, key)
        try:
            assert parent_of(pids[0]) == spawner_pid(gw)
            client.kill()  # the connection drops without a word
            client.wait(10)
            assert wait_gone(pids, timeout=10) == [], gw.log_text()[-3000:]
            assert gw.process.poll() is None
        finally:
            cleanup(client, pids)


@SESSION_ACCOUNTS
def test_spawned_session_ends_when_the_gateway_is_killed(workdir, os_user):
    gw, key, _ = gateway(workdir, os_user=os_user)
    with gw:
        client, pids = start_session(gw, key)
        spawner = spawner_pid(gw)
        try:
            os.kill(gw.pid, signal.SIGKILL)
            gw.process.wait(10)
            assert wait_gone(pids, timeout=10) == [], gw.log_text()[-3000:]
            assert wait_gone([spawner], timeout=10) == []  # and the spawner is done too
        finally:
            cleanup(client, pids)
