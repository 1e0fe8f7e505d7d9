"""Issue 11, lifecycle, end to end: a real gateway process, real clients (OpenSSH ``ssh``
and PuTTY ``plink -1``), real signals.

- SIGHUP with a session open: the session goes on and ends with its own exit status; a
  new login sees the edited config; a broken config is refused with a log line and the
  running one stays.
- SIGTERM with a session open: the client reads the shutdown message on stderr and gets
  a clean DISCONNECT (``ssh`` exits 255, nobody reports a reset connection); the gateway
  exits 0 within ``shutdown_grace``. A second SIGTERM ends it at once.
- ``NOTIFY_SOCKET``: READY=1 once listening, RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.clients import (
    hash_password,
    plink1_argv,
    ssh_argv,
    write_authorized_keys,
)
from tests.support.gateway_process import GatewayProcess, local_access, render_toml
from tests.support.sshd import keygen

pytestmark = pytest.mark.peer

GRACE = 2  # shutdown_grace in these tests (seconds)
# The session waits for one line on its stdin, then ends with a status of its own.
SESSION = "echo started; read line; echo got $line; exit 7"
# The session runs longer than any test: only the gateway can end it.
LONG_SESSION = "echo started; sleep 120; echo ended by itself"


def user(password_hash: str, authorized_keys: Path) -> dict:
    return {"password": password_hash, "authorized_keys": str(authorized_keys), **local_access()}


def gateway_config(tmp_path: Path, names: tuple[str, ...]) -> tuple[dict, Path]:
    key = keygen(tmp_path / "user_id")
    authorized = write_authorized_keys(tmp_path / "authorized_keys", key)
    password_hash = hash_password()
    config = {
        "protocols": ["1", "2"],
        "version_timeout": 5,
        "shutdown_grace": GRACE,
        "auth": {"failure_delay": 0.2, "grace_time": 30, "max_attempts": 6},
        "users": {name: user(password_hash, authorized) for name in names},
    }
    return config, key


def client_argv(kind: str, gw: GatewayProcess, key: Path, command: str, login: str = "alice"):
    if kind == "ssh":
        argv = ssh_argv(gw, key, command, user=login)
        # INFO shows the server's DISCONNECT reason; errors (a reset) show at any level.
        return [argv[0], "-o", "LogLevel=INFO", *argv[1:]]
    return plink1_argv(gw, command, user=login)


def start_session(
    kind: str, gw: GatewayProcess, key: Path, command: str = SESSION
) -> subprocess.Popen:
    client = subprocess.Popen(
        client_argv(kind, gw, key, command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = client.stdout.readline()
    assert line == "started\n", (line, client.poll(), gw.log_text()[-3000:])
    return client


def login(kind: str, gw: GatewayProcess, key: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        client_argv(kind, gw, key, "echo hello", login=name),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rewrite(gw: GatewayProcess, config: dict) -> None:
    gw.config = config
    gw.config_path.write_text(render_toml(config))


@pytest.mark.parametrize("kind", ["ssh", "plink1"])
def test_sighup_reloads_for_new_logins_and_open_sessions_go_on(tmp_path, kind):
    config, key = gateway_config(tmp_path, ("alice",))
    with GatewayProcess(tmp_path, config) as gw:
        client = start_session(kind, gw, key)
        try:
            assert login(kind, gw, key, "bob").returncode != 0  # bob is not configured yet

            edited = dict(gw.config)
            edited["users"] = {**config["users"], "bob": config["users"]["alice"]}
            rewrite(gw, edited)
            os.kill(gw.pid, signal.SIGHUP)
            # The open session counts; bob's refused login may not have closed yet.
            gw.wait_for_log(r"reloaded .*gateway\.toml: 2 user\(s\).*[12] open connection")
            new = login(kind, gw, key, "bob")
            assert new.returncode == 0 and new.stdout == "hello\n", new.stderr

            # A broken config: refused with a line saying so; bob can still log in.
            gw.config_path.write_text(render_toml(edited) + "\n[users.carol]\nauth = 1\n")
            os.kill(gw.pid, signal.SIGHUP)
            gw.wait_for_log(r"reload refused, the running configuration stays in force: .*gateway\.toml")
            assert login(kind, gw, key, "bob").returncode == 0

            # The session opened before both reloads goes on and ends with its own status.
            out, err = client.communicate("over\n", timeout=30)
            assert client.returncode == 7, (out, err, gw.log_text()[-3000:])
            assert "got over" in out
        finally:
            if client.poll() is None:
                client.kill()
        assert gw.process.poll() is None


@pytest.mark.parametrize("kind", ["ssh", "plink1"])
def test_sigterm_tells_the_session_and_disconnects_it_cleanly(tmp_path, kind):
    config, key = gateway_config(tmp_path, ("alice",))
    with GatewayProcess(tmp_path, config) as gw:
        client = start_session(kind, gw, key, LONG_SESSION)
        try:
            # A connection still in the version exchange is closed at once, not kept.
            idle = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            idle.recv(100)
            started = time.monotonic()
            os.kill(gw.pid, signal.SIGTERM)
            out, err = client.communicate(timeout=GRACE + 20)
            status = gw.process.wait(GRACE + 20)
            took = time.monotonic() - started
            assert idle.recv(100) == b""  # closed by the gateway
            idle.close()
        finally:
            if client.poll() is None:
                client.kill()
        log = gw.log_text()
        assert status == 0, log[-3000:]
        assert took < GRACE + 5, took
        assert f"sshgateway is shutting down; this session ends in {GRACE} s" in err, err
        assert "reset" not in err.lower(), err
        if kind == "ssh":
            assert client.returncode == 255, (client.returncode, err)
            assert "Received disconnect" in err and "sshgateway is shutting down" in err, err
        else:  # PuTTY ends on any DISCONNECT with status 1 and shows its reason
            assert client.returncode == 1, (client.returncode, err)
            assert 'Remote side sent disconnect message:\n"sshgateway is shutting down"' in err, err
        assert "ended by itself" not in out
        assert "shutdown grace time over: disconnecting 1 connection" in log
        assert "connection reset" not in log.lower(), log[-3000:]
        gw.assert_no_traceback()


def test_second_sigterm_exits_at_once(tmp_path):
    config, key = gateway_config(tmp_path, ("alice",))
    config["shutdown_grace"] = 60
    with GatewayProcess(tmp_path, config) as gw:
        client = start_session("ssh", gw, key, LONG_SESSION)
        try:
            os.kill(gw.pid, signal.SIGTERM)
            gw.wait_for_log(r"session\(s\) get up to 60 s to end")
            started = time.monotonic()
            os.kill(gw.pid, signal.SIGTERM)
            gw.process.wait(10)
            assert time.monotonic() - started < 5
            client.wait(10)
        finally:
            if client.poll() is None:
                client.kill()
        assert "SIGTERM again: exiting now" in gw.log_text()


def test_notify_socket_hears_ready_reloading_and_stopping(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    config, key = gateway_config(tmp_path, ("alice",))
    received: list[str] = []

    def until(state: str) -> str:
        while True:
            message = listener.recv(4096).decode()
            received.append(message)
            if state in message.split("\n"):
                return message

    with listener, GatewayProcess(tmp_path, config) as gw:
        ready = until("READY=1")
        assert "STATUS=serving" in ready
        os.kill(gw.pid, signal.SIGHUP)
        reloading = until("RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.split("\n"))
        assert "READY=1" in until("READY=1")  # the reload is over
        os.kill(gw.pid, signal.SIGTERM)
        assert "STOPPING=1" in until("STOPPING=1")
        assert gw.process.wait(GRACE + 20) == 0
    known = {"READY=1", "RELOADING=1", "STOPPING=1"}
    states = [line for message in received for line in message.split("\n") if line in known]
    assert states == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], received
