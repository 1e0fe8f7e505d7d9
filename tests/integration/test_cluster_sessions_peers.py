"""The session registry of a cluster, end to end (issue 14, acceptance 2: "`sessions kill` on
A ends a session held by B"): two real gateway instances behind a real HAProxy, one
throwaway PostgreSQL (tests/integration/test_cluster_peers.cluster), a real OpenSSH
``ssh -tt`` held through instance B's own frontend, and the real ``sshgateway sessions``
command pointed at instance A's config.

- ``sessions list`` on A shows B's session, with the instance that holds it;
- ``sessions kill`` on A ends it: the client sees the message and exits, the program on
  the far side is gone, B's audit trail has ``session_killed`` naming the operator and
  instance A; an unknown id is an error (exit status 1);
- a gateway that crashed leaves rows; started again it removes them;
- with PostgreSQL stopped ``sessions list`` shows the instance's own sessions and warns.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from gateway.audit import audit_dir
from gateway.store import instance_name
from gateway.store.hostkeys import new_key
from gateway.store.migrations import upgrade
from tests.integration.test_cluster_peers import Cluster, cluster
from tests.support.clients import keyed_config, ssh_argv, sshgateway_cli
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tests.support.postgres import start_postgres
from tests.support.session_processes import alive, wait_gone

pytestmark = pytest.mark.peer

# The session says which process runs it, then waits for longer than any test.
PROGRAM = "echo pid=$$; exec sleep 300"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, postgres_server) -> Iterator[Cluster]:
    require_peer("haproxy", "ssh")
    with cluster(tmp_path_factory.mktemp("cluster"), postgres_server.new_database()) as c:
        yield c


def sessions(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess:
    return sshgateway_cli("sessions", *args, "--config", str(gw.config_path), check=False)


def listed(gw: GatewayProcess) -> list[dict]:
    result = sessions(gw, "list", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def held(port: int, key: Path) -> subprocess.Popen:
    """``ssh -tt`` to ``local`` through frontend ``port``, running PROGRAM."""
    return subprocess.Popen(
        ssh_argv(SimpleNamespace(port=port), key, "-tt", PROGRAM, user="alice+local"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def first_line_pid(client: subprocess.Popen) -> int:
    line = client.stdout.readline()
    found = re.search(r"pid=(\d+)", line)
    assert found, (line, client.poll())
    return int(found.group(1))


def audit_events(gw: GatewayProcess, name: str) -> list[dict]:
    path = audit_dir(gw.config["state_dir"]) / "audit.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("event") == name]


def wait_for(predicate, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.1)


def instance_of(gw: GatewayProcess) -> str:
    return instance_name(gw.config["state_dir"])


def test_sessions_kill_on_a_ends_a_session_held_by_b(shared):
    c = shared
    client = held(c.via["b"], c.key)
    try:
        pid = first_line_pid(client)
        assert alive(pid)
        b_name = instance_of(c.b)

        # A lists B's session (through the database), with the instance that holds it.
        def on_a() -> list[dict]:
            return [s for s in listed(c.a) if s["instance"] == b_name]

        wait_for(lambda: len(on_a()) == 1, what="B's session listed on A")
        [summary] = on_a()
        assert (summary["user"], summary["target"], summary["pty"]) == ("alice", "local", True)
        assert summary["command"] == PROGRAM
        text = sessions(c.a, "list")
        assert text.returncode == 0 and text.stderr == "", text.stderr
        header, *rows = text.stdout.splitlines()
        assert "INSTANCE" in header.split()
        assert any(summary["id"] in row and b_name in row for row in rows), text.stdout

        # Killed through A: B ends it, the client sees why and exits.
        killed = sessions(c.a, "kill", summary["id"], "--message", "cluster maintenance")
        assert killed.returncode == 0, killed.stderr + c.b.log_text()[-3000:]
        assert f"ended session {summary['id']}" in killed.stdout
        assert f"on instance {b_name}" in killed.stdout
        output, _ = client.communicate(timeout=20)
        assert "cluster maintenance" in output
        assert client.returncode != 0
        assert wait_gone([pid], 10) == []

        # B's audit trail names who asked, and where.
        wait_for(lambda: audit_events(c.b, "session_killed"), what="B's session_killed")
        [event] = [e for e in audit_events(c.b, "session_killed") if e["session"] == summary["id"]]
        assert event["by"] == pwd.getpwuid(os.geteuid()).pw_name
        assert event["by_instance"] == instance_of(c.a)
        assert event["client_message"] == "cluster maintenance"
        c.b.wait_for_log(rf"ended by .*on instance {re.escape(instance_of(c.a))}\): cluster")

        # Its row is gone: neither instance lists it any more.
        wait_for(lambda: not on_a(), what="the row removed")
        assert summary["id"] not in [s["id"] for s in listed(c.b)]
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()


def test_an_unknown_session_is_an_error_on_any_instance(shared):
    c = shared
    for gw in (c.a, c.b):
        result = sessions(gw, "kill", "no-such-session")
        assert result.returncode == 1
        assert "no live session no-such-session" in result.stderr, result.stderr


def _registry_rows(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT id, instance FROM live_sessions").fetchall()


def test_a_crashed_gateway_leaves_rows_and_removes_them_when_it_starts_again(
    tmp_path, postgres_server
):
    require_peer("ssh")
    url = postgres_server.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
    config, key = keyed_config(tmp_path, store={"url": url, "key": new_key()})
    (tmp_path / "gw").mkdir()
    gw = GatewayProcess(tmp_path / "gw", config).start()
    client = held(gw.port, key)
    try:
        first_line_pid(client)
        wait_for(lambda: len(_registry_rows(url)) == 1, what="the session's row")
        [(session_id, instance)] = _registry_rows(url)
        assert instance == instance_of(gw)
        os.killpg(gw.pid, signal.SIGKILL)  # a crash: no session ends, the row stays
        gw.process.wait(10)
        client.communicate(timeout=20)
        assert _registry_rows(url) == [(session_id, instance)]

        gw = GatewayProcess(tmp_path / "gw", config).start()  # the same state_dir and name
        wait_for(lambda: _registry_rows(url) == [], what="the stale row removed")
        assert sessions(gw, "kill", session_id).returncode == 1
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
        gw.stop()


def test_with_postgresql_stopped_the_list_is_the_local_one_with_a_warning(tmp_path):
    require_peer("ssh")
    server_run = start_postgres()
    server = next(server_run)
    client = None
    try:
        url = server.new_database()
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn)
        config, key = keyed_config(tmp_path, store={"url": url, "key": new_key()})
        (tmp_path / "gw").mkdir()
        with GatewayProcess(tmp_path / "gw", config) as gw:
            client = held(gw.port, key)
            first_line_pid(client)
            wait_for(lambda: len(_registry_rows(url)) == 1, what="the session's row")
            server.stop()
            result = sessions(gw, "list")
            assert result.returncode == 0, result.stderr
            assert "alice" in result.stdout and instance_of(gw) in result.stdout
            [warning] = result.stderr.splitlines()
            assert warning.startswith("sshgateway: warning: the shared session registry is "
                                      "unreachable")  # fmt: skip
            assert "only the sessions of this instance" in warning
            [summary] = listed(gw)
            # Its own sessions it still ends, the database down or not.
            killed = sessions(gw, "kill", summary["id"])
            assert killed.returncode == 0, killed.stderr
            client.communicate(timeout=20)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.communicate()
        server_run.close()


def test_with_worker_processes_a_session_is_listed_once_and_killed_from_another_instance(
    tmp_path, postgres_server
):
    require_peer("ssh")
    url = postgres_server.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
    config, key = keyed_config(tmp_path, store={"url": url, "key": new_key()})
    for name in ("workers", "plain"):
        (tmp_path / name).mkdir()
    client = None
    with (
        GatewayProcess(tmp_path / "workers", dict(config, workers=2)) as gw,
        GatewayProcess(tmp_path / "plain", config) as other,
    ):
        for number in (1, 2):
            gw.wait_for_log(rf"\[worker {number}\] sshgateway listening on", timeout=60)
        try:
            client = held(gw.port, key)
            pid = first_line_pid(client)
            wait_for(lambda: len(_registry_rows(url)) == 1, what="the session's row")
            [(session_id, row_instance)] = _registry_rows(url)
            # The parent lists it once: from its worker, named as the row names it.
            [summary] = listed(gw)
            assert summary["id"] == session_id and summary["worker"] in (1, 2)
            assert row_instance == summary["instance"] == instance_name(
                gw.config["state_dir"], summary["worker"]
            )
            assert [s["id"] for s in listed(other)] == [session_id]

            # Another instance ends it: the worker that holds it carries the request out.
            killed = sessions(other, "kill", session_id, "--message", "from the other one")
            assert killed.returncode == 0, killed.stderr + gw.log_text()[-3000:]
            output, _ = client.communicate(timeout=20)
            assert "from the other one" in output
            assert wait_gone([pid], 10) == []
            gw.wait_for_log(
                rf"\[worker {summary['worker']}\] .*ended by .*on instance "
                rf"{re.escape(instance_of(other))}\)"
            )
            wait_for(lambda: _registry_rows(url) == [], what="the row removed")
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.communicate()
