"""The shared store against a real PostgreSQL (tests/support/postgres.py): the migrations
and ``sshgateway db``, the statements the store runs, the host keys every instance shares,
and end to end two gateway instances on one database, which go on serving logins while the
database is stopped and write what they queued once it is back (issue 14, acceptance 4)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from gateway.config import load_config
from gateway.hostkeys import HostKeyError
from gateway.store import StoreService, StoreUnusable
from gateway.store.database import Database
from gateway.store.hostkeys import new_key
from gateway.store.migrations import REQUIRED_VERSION, upgrade
from tests.support.clients import base_config, hash_password, keyed_config, ssh_argv, sshgateway_cli
from tests.support.gateway_process import GatewayProcess, render_toml
from tests.support.postgres import start_postgres

pytestmark = pytest.mark.peer

KEY = new_key()


def store_config(tmp_path: Path, url: str, key: str = KEY, name: str = "gw") -> Path:
    path = tmp_path / f"{name}.toml"
    authorized = tmp_path / "authorized_keys"
    authorized.touch(mode=0o600)
    config = base_config(_password_hash(), authorized, state_dir=str(tmp_path / name))
    config["store"] = {"url": url, "key": key}
    path.write_text(render_toml(config))
    return path


def _password_hash(cache: list[str] = []) -> str:  # noqa: B006 - one hash for the module
    if not cache:
        cache.append(hash_password())
    return cache[0]


def upgraded(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
    return url


def test_db_upgrade_brings_a_new_database_to_the_schema_and_is_idempotent(tmp_path, postgres_url):
    config = store_config(tmp_path, postgres_url)
    status = sshgateway_cli("db", "status", "--config", str(config), check=False)
    assert status.returncode == 1 and "version 0" in status.stdout, status
    first = sshgateway_cli("db", "upgrade", "--config", str(config))
    assert "applied migration 1" in first.stdout
    assert f"schema at version {REQUIRED_VERSION}" in first.stdout
    again = sshgateway_cli("db", "upgrade", "--config", str(config))
    assert "applied" not in again.stdout
    status = sshgateway_cli("db", "status", "--config", str(config))
    assert "usable" in status.stdout


def test_db_commands_report_an_unreachable_database_in_one_line(tmp_path, postgres_server):
    url = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/no_such_database"
    result = sshgateway_cli(
        "db", "upgrade", "--config", str(store_config(tmp_path, url)), check=False
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no_such_database" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_gateway_refuses_to_start_on_a_schema_older_than_it_needs(tmp_path, postgres_url):
    config = load_config(store_config(tmp_path, postgres_url))
    store = StoreService(config.store, reactor=None)
    with pytest.raises(
        StoreUnusable,
        match=rf"version 0, this gateway needs {REQUIRED_VERSION}: run `sshgateway db upgrade",
    ):
        store.host_keys(config.state_dir)


def test_make_service_ends_in_one_line_on_an_old_schema(tmp_path, postgres_url, capsys):
    from twisted.internet.testing import MemoryReactorClock

    from gateway.service import make_service

    config = load_config(store_config(tmp_path, postgres_url))
    with pytest.raises(SystemExit) as stopped:
        make_service(config, MemoryReactorClock())
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sshgateway db upgrade" in err, err


def test_every_instance_presents_the_same_host_keys(tmp_path, postgres_url):
    url = upgraded(postgres_url)
    a = load_config(store_config(tmp_path, url, name="a"))
    b = load_config(store_config(tmp_path, url, name="b"))
    keys_a = StoreService(a.store, None).host_keys(a.state_dir)
    keys_b = StoreService(b.store, None).host_keys(b.state_dir)
    assert [i.fingerprints for i in keys_a.infos()] == [i.fingerprints for i in keys_b.infos()]
    with psycopg.connect(url) as conn:
        sealed = conn.execute("SELECT sealed FROM host_keys").fetchall()
    assert len(sealed) == 3 and all(b"PRIVATE" not in bytes(s) for (s,) in sealed)  # encrypted
    wrong = load_config(store_config(tmp_path, url, key=new_key(), name="c"))
    with pytest.raises(HostKeyError, match="does not decrypt"):
        StoreService(wrong.store, None).host_keys(wrong.state_dir)


def test_the_statements_settle_pins_merge_penalties_and_keep_records(postgres_url):
    url = upgraded(postgres_url)
    a, b = Database(url, "a"), Database(url, "b")
    assert a.run("pin", "dev1", "ssh2", "ssh-ed25519 AAAA-first") == "ssh-ed25519 AAAA-first"
    assert b.run("pin", "dev1", "ssh2", "ssh-ed25519 AAAA-second") == "ssh-ed25519 AAAA-first"
    assert b.run("pins") == [("dev1", "ssh2", "ssh-ed25519 AAAA-first")]
    a.run("apply", [("penalty", ("192.0.2.7/32", 2000.0, True, "malformed input"))])
    b.run("apply", [("penalty", ("192.0.2.7/32", 1500.0, False, "failed authentication"))])
    assert b.run("active_penalties", 1000.0) == {"192.0.2.7/32": 2000.0}
    assert b.run("active_penalties", 2500.0) == {}
    a.run("apply", [("record", ("flows", {"id": "f1"})), ("record", ("audit", {"event": "x"}))])
    assert b.run("records", "flows") == [{"id": "f1"}]
    assert b.run("records", "audit") == [{"event": "x"}]
    a.run("apply", [("recording", ("/r/f1.cast", "s1", "alice", "dev1", 10))])
    a.run("apply", [("recording", ("/r/f1.cast", "s1", "alice", "dev1", 42))])
    assert b.run("recordings") == [("/r/f1.cast", "s1", "alice", "dev1", 42)]
    a.close()
    b.close()


# -- end to end -----------------------------------------------------------------------------


def _rows(url: str, table: str) -> list[dict]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(f"SELECT record FROM {table} ORDER BY seq").fetchall()]


def _count(url: str, table: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT path, username, size FROM {table}").fetchall()


def _login(gw: GatewayProcess, key: Path, word: str) -> None:
    result = subprocess.run(
        ssh_argv(gw, key, f"echo {word}"), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout == f"{word}\n", (
        result.stderr + gw.log_text()[-3000:]
    )


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_two_instances_share_one_database_and_go_on_while_it_is_down(tmp_path):
    server_run = start_postgres()
    server = next(server_run)
    try:
        url = upgraded(server.new_database())
        store = {"url": url, "key": KEY}
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        config, key = keyed_config(tmp_path, store=store)
        config_a = dict(config, metrics={"listen": "tcp:0:interface=127.0.0.1"})
        with (
            GatewayProcess(tmp_path / "a", config_a) as gw_a,
            GatewayProcess(tmp_path / "b", config) as gw_b,
        ):
            metrics = gw_a.wait_for_log(r"metrics served on (http://[0-9.]+:\d+/metrics)").group(1)
            _login(gw_a, key, "via-a")
            _login(gw_b, key, "via-b")
            # The same host keys on both, from the database.
            fingerprints = [
                sshgateway_cli("fingerprints", "--state-dir", gw.config["state_dir"]).stdout
                for gw in (gw_a, gw_b)
            ]
            assert fingerprints[0] == fingerprints[1]
            # Either instance's `flows` and `audit` show the flows and logins of both.
            _wait_for(
                lambda: len([r for r in _rows(url, "audit_events") if r["event"] == "login"]) >= 2
            )
            audit = sshgateway_cli(
                "audit", "--config", str(gw_b.config_path), "--event", "login", "--format", "json"
            )
            logins = json.loads(audit.stdout)
            assert len(logins) == 2 and {r["user"] for r in logins} == {"alice"}
            flows = sshgateway_cli("flows", "list", "--config", str(gw_a.config_path)).stdout
            # Both sessions were recorded (files on each instance), and indexed in the database.
            _wait_for(lambda: len(_count(url, "recordings")) >= 2)
            assert {row[1] for row in _count(url, "recordings")} == {"alice"}
            assert len([r for r in _rows(url, "flow_records") if r.get("role") == "server"]) >= 2
            assert flows.count("alice") >= 2, flows

            # The database goes away: logins go on, their records are queued and counted.
            flows_before = len(_rows(url, "flow_records"))
            server.stop()
            _login(gw_a, key, "while-down")
            gw_a.wait_for_log(r"store: database unreachable .*writes are queued")
            scraped = urllib.request.urlopen(metrics, timeout=10).read().decode()
            assert "sshgateway_store_up 0.0" in scraped, scraped
            queued = re.search(r"^sshgateway_store_queued_writes (\S+)$", scraped, re.M)
            assert queued and float(queued.group(1)) >= 1, scraped
            # Back: the queued flows and audit events arrive.
            server.start()
            gw_a.wait_for_log(r"store: database reachable again; \d+ queued writes", timeout=30)
            _wait_for(lambda: len(_rows(url, "flow_records")) > flows_before)
            words = [r.get("command") for r in _rows(url, "audit_events")]
            assert "echo while-down" in words, words
            scraped = urllib.request.urlopen(metrics, timeout=10).read().decode()
            assert "sshgateway_store_up 1.0" in scraped
            assert "sshgateway_store_dropped_writes 0.0" in scraped
    finally:
        server_run.close()


def test_known_hosts_forget_with_a_store_removes_the_shared_pin(tmp_path, postgres_url):
    url = upgraded(postgres_url)
    Database(url, "a").run("pin", "[127.0.0.1]:2222", "ssh2", "ssh-ed25519 AAAA-pinned")
    path = store_config(tmp_path, url)
    text = path.read_text() + (
        '\n[targets.dev1]\nprotocol = "ssh2"\nhost = "127.0.0.1"\nport = 2222\n'
        'username = "root"\nhost_key = "accept-new"\n'
    )
    path.write_text(text)
    result = sshgateway_cli("known-hosts", "forget", "dev1", "--config", str(path))
    assert "1 key(s) pinned in the shared store" in result.stdout, result
    assert Database(url, "b").run("pins") == []
