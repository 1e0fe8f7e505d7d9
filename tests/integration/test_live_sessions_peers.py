"""Issue 13, live sessions, end to end (acceptance 5): a real gateway, real clients
(OpenSSH ``ssh -tt`` to ``local``, PuTTY ``plink -1 -t`` to an OpenSSH sshd device), the
real ``sshgateway sessions`` command.

- ``sessions list`` shows both sessions: user, source, front protocol, target;
- ``sessions kill`` ends each: the client exits with the message on its screen, the
  program on the far side (local shell, device shell) is gone, and the gateway's
  SESSION_KILLED event names who ended it; an unknown id is an error (exit status 1);
- the control socket is the gateway's account's (mode 0600), a second gateway on the same
  state directory says why it cannot start, and a socket left by a killed gateway is
  replaced.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.clients import (
    keyed_config,
    one_target_config,
    plink1_argv,
    ssh1_fingerprint,
    ssh2_device,
    ssh_argv,
    sshgateway_cli,
    write_authorized_keys,
)
from tests.support.gateway_process import GatewayProcess, local_access
from tests.support.ops_process import run_once
from tests.support.session_processes import alive, wait_gone
from tests.support.sshd import keygen

pytestmark = pytest.mark.peer

# The session says which process runs it, then waits for longer than any test.
PROGRAM = "echo pid=$$; exec sleep 300"


def sessions(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess:
    return sshgateway_cli("sessions", *args, "--state-dir", gw.config["state_dir"], check=False)


def listed(gw: GatewayProcess) -> list[dict]:
    result = sessions(gw, "list", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def first_line_pid(client: subprocess.Popen) -> int:
    line = client.stdout.readline()
    found = re.search(r"pid=(\d+)", line)
    assert found, (line, client.poll())
    return int(found.group(1))


def gateway_events(gw: GatewayProcess, name: str) -> list[dict]:
    events = []
    for line in gw.log_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("audit_event") == name:
            events.append(event)
    return events


@pytest.fixture
def gw(tmp_path):
    """A gateway (JSON log) where alice reaches ``local`` and ``host2``, an OpenSSH sshd."""
    key = keygen(tmp_path / "alice_id")
    authorized = write_authorized_keys(tmp_path / "authorized_keys", key)
    with ssh2_device(tmp_path) as (_, target):
        config = one_target_config(authorized, "host2", target)
        config["users"]["alice"].update(local_access(), targets=["local", "host2"])
        config["log_format"] = "json"
        (tmp_path / "gw").mkdir()
        with GatewayProcess(tmp_path / "gw", config) as process:
            process.key = key
            yield process


def test_sessions_list_shows_and_kill_ends_an_ssh_and_a_plink1_session(gw):
    ssh = subprocess.Popen(
        ssh_argv(gw, gw.key, "-tt", PROGRAM, user="alice+local"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    plink = subprocess.Popen(
        plink1_argv(gw, "-t", PROGRAM, user="alice+host2", fingerprint=ssh1_fingerprint(gw)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        local_pid, device_pid = first_line_pid(ssh), first_line_pid(plink)
        assert alive(local_pid) and alive(device_pid)

        text = sessions(gw, "list")
        assert text.returncode == 0, text.stderr
        header, *rows = text.stdout.splitlines()
        assert header.split() == ["ID", "USER", "SOURCE", "FRONT", "TARGET", "STARTED", "IN",
                                  "OUT", "RECORDING"]  # fmt: skip
        assert len(rows) == 2
        found = {s["target"]: s for s in listed(gw)}
        assert set(found) == {"local", "host2"}
        for target, front in (("local", "ssh2"), ("host2", "ssh1")):
            summary = found[target]
            assert (summary["user"], summary["front_protocol"], summary["pty"]) == (
                "alice", front, True
            )  # fmt: skip
            assert summary["source"].startswith("127.0.0.1:") and summary["bytes_out"] > 0
            assert summary["command"] == PROGRAM
            row = next(r for r in rows if r.startswith(summary["id"]))
            assert row.split()[1:5] == ["alice", summary["source"], front, target]

        # The ssh session: the default message.
        killed = sessions(gw, "kill", found["local"]["id"])
        assert killed.returncode == 0, killed.stderr
        assert killed.stdout.startswith(f"ended session {found['local']['id']}: alice from ")
        out, _ = ssh.communicate(timeout=30)
        assert ssh.returncode == 255
        assert "sshgateway: session ended by an operator" in out, out
        assert wait_gone([local_pid], timeout=10) == []

        # The plink session: the operator's own message.
        killed = sessions(gw, "kill", found["host2"]["id"], "--message", "maintenance, back at 6")
        assert killed.returncode == 0, killed.stderr
        out, _ = plink.communicate(timeout=30)
        assert "sshgateway: maintenance, back at 6" in out, out
        assert wait_gone([device_pid], timeout=10) == [], "the device's shell is still there"
        assert plink.returncode != 0

        assert listed(gw) == []
        by_session = {e["session"]: e for e in gateway_events(gw, "session_killed")}
        for target in ("local", "host2"):
            event = by_session[found[target]["id"]]
            assert (event["user"], event["target"]) == ("alice", target)
            assert (event["by"], event["by_uid"]) == (pwd.getpwuid(os.geteuid()).pw_name, os.geteuid())
            assert event["by_pid"] > 0
        assert by_session[found["host2"]["id"]]["client_message"] == "maintenance, back at 6"

        unknown = sessions(gw, "kill", found["local"]["id"])
        assert unknown.returncode == 1
        assert f"no live session {found['local']['id']}" in unknown.stderr
    finally:
        for client in (ssh, plink):
            if client.poll() is None:
                client.kill()
                client.wait(10)


def test_the_control_socket_is_private_single_and_survives_a_crash(tmp_path):
    config, _ = keyed_config(tmp_path)
    state = tmp_path / "state"
    control = state / "control.sock"
    with GatewayProcess(tmp_path, config) as gw:
        gw.wait_for_log(r"control socket on ")
        st = control.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()

        # A second gateway on the same state directory: refused, and why.
        (tmp_path / "second").mkdir()
        second = run_once(tmp_path / "second", {**config, "state_dir": str(state),
                                                "listen": ["tcp:0:interface=127.0.0.1"]})  # fmt: skip
        assert second.returncode == 1
        assert (
            f"sshgateway: another gateway (pid {gw.pid}) serves the control socket {control}"
            in second.stdout + second.stderr
        ), second.stdout + second.stderr
        assert "Traceback" not in second.stdout + second.stderr
        assert "listening on" not in second.stdout + second.stderr  # it stopped before
        assert sessions(gw, "list").stdout == "no live sessions\n"  # the first one goes on

        os.kill(gw.pid, signal.SIGKILL)  # no clean stop: the socket file stays
        gw.process.wait(10)
    assert stat.S_ISSOCK(control.lstat().st_mode)
    stale = sessions(gw, "list")
    assert stale.returncode == 1 and "nothing answers" in stale.stderr

    with GatewayProcess(tmp_path, config) as again:
        again.wait_for_log(r"replaced the stale control socket")
        assert sessions(again, "list").stdout == "no live sessions\n"
    assert not control.exists()  # a clean stop takes it away


def test_a_socket_refuses_other_accounts_even_when_its_mode_is_widened(tmp_path):
    from tests.support.accounts import LOCAL_USER, ensure_account, interpreter_reachable_by

    account = ensure_account(LOCAL_USER)
    config, _ = keyed_config(tmp_path)
    where = Path("/tmp") / f"sshgw-control-{os.getpid()}-{time.monotonic_ns()}"
    where.mkdir(mode=0o711)
    config["control"] = {"socket": str(where / "control.sock")}
    try:
        with interpreter_reachable_by(LOCAL_USER), GatewayProcess(tmp_path, config) as gw:
            gw.wait_for_log(r"control socket on ")
            (where / "control.sock").chmod(0o666)  # an operator's mistake

            def as_other_account() -> None:
                os.setgid(account.pw_gid)
                os.setuid(account.pw_uid)

            result = subprocess.run(
                [*sshgateway_argv(), "sessions", "list", "--socket", str(where / "control.sock")],
                preexec_fn=as_other_account, capture_output=True, text=True, timeout=60,
                cwd="/",
            )  # fmt: skip
            assert result.returncode == 1, result.stdout + result.stderr
            assert "sshgateway: only root may use this socket" in result.stderr, result.stderr
            gw.wait_for_log(
                rf"control socket: refused {LOCAL_USER} \(uid {account.pw_uid}\) \(pid \d+\)"
            )
    finally:
        for leftover in where.iterdir():
            leftover.unlink()
        where.rmdir()


def sshgateway_argv() -> list[str]:
    import sys

    from tests.support.gateway_process import REPO

    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            "from tools.cli import main; sys.exit(main())"]  # fmt: skip


def test_with_run_as_the_socket_is_the_accounts_and_serves_it_and_root():
    from tests.support.accounts import (
        RUN_AS,
        ensure_account,
        interpreter_reachable_by,
        require_root,
        shared_workdir,
    )

    require_root()
    account = ensure_account(RUN_AS)
    with shared_workdir() as workdir, interpreter_reachable_by(RUN_AS):
        config, key = keyed_config(workdir, run_as=RUN_AS)
        config["users"]["alice"].update(os_user=RUN_AS, targets=["local"])
        os.chown(config["users"]["alice"]["authorized_keys"], account.pw_uid, account.pw_gid)
        with GatewayProcess(workdir, config) as gw:
            gw.wait_for_log(r"control socket on ")
            control = Path(gw.config["state_dir"]) / "control.sock"
            st = control.lstat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (account.pw_uid, 0o600)
            client = subprocess.Popen(
                ssh_argv(gw, key, "-tt", PROGRAM), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            try:
                pid = first_line_pid(client)

                def as_run_as() -> None:
                    os.setgid(account.pw_gid)
                    os.setuid(account.pw_uid)

                # The gateway's own account may list and end sessions...
                mine = subprocess.run(
                    [*sshgateway_argv(), "sessions", "list", "--format", "json", "--socket",
                     str(control)],
                    preexec_fn=as_run_as, capture_output=True, text=True, timeout=60, cwd="/",
                )  # fmt: skip
                assert mine.returncode == 0, mine.stderr
                [summary] = json.loads(mine.stdout)
                # ... and root too.
                killed = sessions(gw, "kill", summary["id"])
                assert killed.returncode == 0, killed.stderr
                out, _ = client.communicate(timeout=30)
                assert "sshgateway: session ended by an operator" in out
                assert wait_gone([pid], timeout=10) == []
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait(10)
