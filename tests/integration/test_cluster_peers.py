"""Two gateway instances behind a real HAProxy, sharing one throwaway PostgreSQL (issue 14,
acceptance 2 and 3): HAProxy (Debian ``haproxy``) in ``mode tcp`` balances round robin
over both instances' ``haproxy:`` listeners with ``send-proxy-v2``, checks them with
``check-send-proxy`` every 500 ms and redispatches a connection an instance refuses. The
instances have separate state directories and ports and one ``[store]``.

The HAProxy config is tests.support.haproxy.cluster_config, the one the README shows (a
test here checks they match), plus one frontend per instance so that a test can go through
instance A or B on purpose. Clients bind 127.0.0.2 (``ssh -b``), or 127.0.0.3 for the source
that earns a penalty; HAProxy's own address (health checks) and 127.0.0.2 are exempt from
penalties, as the README advises for monitoring hosts."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from gateway.store.hostkeys import new_key
from gateway.store.migrations import upgrade
from tests.support.accounts import LOCAL_USER, ensure_account
from tests.support.clients import (
    keyed_config,
    plink1_argv,
    ssh1_fingerprint,
    ssh2_device,
    sshgateway_cli,
)
from tests.support.flow_records import read_jsonl
from tests.support.gateway_process import GatewayProcess
from tests.support.haproxy import (
    cluster_config,
    free_port,
    haproxy_running,
    server_field,
    server_stat,
)
from tests.support.peers import require_peer

pytestmark = pytest.mark.peer

CLIENT = "127.0.0.2"  # the clients' address, as the PROXY header gives it
HOSTILE = "127.0.0.3"  # the source that earns a penalty
README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass
class Cluster:
    a: GatewayProcess
    b: GatewayProcess
    key: Path
    port: int  # HAProxy's balanced frontend
    via: dict[str, int] = field(default_factory=dict)  # instance name -> its own frontend
    device: object = None
    url: str = ""
    workdir: Path | None = None


def _per_instance_frontends(via: dict[str, int], ports: dict[str, int]) -> str:
    """One frontend per instance (same PROXY v2 header and check), to pick A or B."""
    text = ""
    for name, port in via.items():
        text += (
            f"frontend to_{name}\n    bind 127.0.0.1:{port}\n    default_backend only_{name}\n"
            f"backend only_{name}\n    server {name} 127.0.0.1:{ports[name]} send-proxy-v2\n"
        )
    return text


@contextmanager
def cluster(workdir: Path, url: str, with_device: bool = False) -> Iterator[Cluster]:
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
    limits = {
        "penalties": True,
        "penalty_malformed": 60,
        "penalty_min": 5,
        "penalty_exempt": ["127.0.0.1/32", f"{CLIENT}/32"],
        "max_startups": "100",
    }
    config, key = keyed_config(
        workdir,
        listen=["haproxy:tcp:port=0:interface=127.0.0.1"],
        store={"url": url, "key": new_key()},
        limits=limits,
    )
    # Local sessions run as an account whose shell reads no start-up files: a session
    # killed with its instance must not leave a login shell's half-done start-up (root's
    # ~/.bashrc here takes a lock file that every later root shell then waits 60 s on).
    config["users"]["alice"]["os_user"] = ensure_account(LOCAL_USER).pw_name
    with ExitStack() as stack:
        device = None
        if with_device:
            device, target = stack.enter_context(ssh2_device(workdir))
            config["targets"] = {"dev1": dict(target, host_key="accept-new")}
            config["users"]["alice"]["targets"] = ["local", "dev1"]
        instances = {}
        for name in ("a", "b"):
            (workdir / name).mkdir()
            instances[name] = stack.enter_context(GatewayProcess(workdir / name, config))
        port = free_port()
        via = {name: free_port() for name in instances}
        text = cluster_config(
            f"127.0.0.1:{port}",
            [(n, f"127.0.0.1:{gw.port}") for n, gw in instances.items()],
            stats_socket=str(workdir / "haproxy.sock"),
        ) + _per_instance_frontends(via, {n: gw.port for n, gw in instances.items()})
        stack.enter_context(haproxy_running(workdir, text, port))
        yield Cluster(instances["a"], instances["b"], key, port, via, device, url, workdir)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, postgres_server) -> Iterator[Cluster]:
    require_peer("haproxy", "ssh", "plink")
    with cluster(
        tmp_path_factory.mktemp("cluster"), postgres_server.new_database(), with_device=True
    ) as c:
        yield c


def ssh_through(
    port: int,
    key: Path,
    known_hosts: Path,
    *args: str,
    user: str = "alice",
    strict: str = "yes",
    bind: str = CLIENT,
) -> subprocess.CompletedProcess:
    ssh = require_peer("ssh")["ssh"]
    return subprocess.run(
        [ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={strict}",
         "-o", f"UserKnownHostsFile={known_hosts}", "-o", "LogLevel=ERROR",
         "-o", "ConnectTimeout=10", "-i", str(key), "-o", "IdentitiesOnly=yes",
         "-b", bind, "-p", str(port), f"{user}@127.0.0.1", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def served(gw: GatewayProcess, protocol: str) -> int:
    """Sessions of ``protocol`` this instance logged as closed."""
    return len(
        [line for line in gw.output if "connection closed:" in line and f"protocol={protocol}" in line
         and "user='alice'" in line]
    )  # fmt: skip


def test_ssh_and_plink1_see_one_host_key_from_both_instances(shared, tmp_path):
    c = shared
    known = tmp_path / "known_hosts"
    first = ssh_through(c.port, c.key, known, "echo first", strict="accept-new")
    assert (first.returncode, first.stdout) == (0, "first\n"), first.stderr
    before = {gw: served(gw, "ssh2") for gw in (c.a, c.b)}
    for n in range(10):
        result = ssh_through(c.port, c.key, known, f"echo ssh {n}")
        assert (result.returncode, result.stdout) == (0, f"ssh {n}\n"), (
            result.stderr + c.a.log_text()[-2000:] + c.b.log_text()[-2000:]
        )
    # One key pinned by ssh (strict from the second login on), and both instances served.
    assert len(known.read_text().splitlines()) == 1
    for gw in (c.a, c.b):
        _wait(lambda gw=gw: served(gw, "ssh2") > before[gw])

    # plink -1 pinned to the SSH-1 fingerprint: -batch refuses any other key.
    fingerprint = ssh1_fingerprint(c.a)
    assert fingerprint == ssh1_fingerprint(c.b)
    through = SimpleNamespace(port=c.port, config=c.a.config)
    before = {gw: served(gw, "ssh1") for gw in (c.a, c.b)}
    for n in range(10):
        result = subprocess.run(
            plink1_argv(through, f"echo plink {n}", fingerprint=fingerprint),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (result.returncode, result.stdout) == (0, f"plink {n}\n"), (
            result.stderr + c.a.log_text()[-2000:] + c.b.log_text()[-2000:]
        )
    for gw in (c.a, c.b):
        _wait(lambda gw=gw: served(gw, "ssh1") > before[gw])


def test_a_device_key_pinned_through_a_is_enforced_by_b(shared, tmp_path):
    c = shared
    known = tmp_path / "known_hosts"
    pinned = ssh_through(c.via["a"], c.key, known, "echo pinned", user="alice+dev1",
                         strict="no")  # fmt: skip
    assert (pinned.returncode, pinned.stdout) == (0, "pinned\n"), (
        pinned.stderr + c.a.log_text()[-3000:]
    )
    with psycopg.connect(c.url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM host_key_pins").fetchone()
    assert count >= 1
    c.device.stop()
    c.device.new_host_keys()
    c.device.start()
    refused = ssh_through(c.via["b"], c.key, known, "echo never", user="alice+dev1",
                          strict="no")  # fmt: skip
    assert refused.returncode == 255 and refused.stdout == "", _log(c.b)
    assert "has CHANGED" in refused.stderr, refused.stderr + c.b.log_text()[-3000:]
    c.b.wait_for_log(r"host key CHANGED")


def _proxied_first_line(port: int, send: bytes = b"") -> bytes:
    """Connect from HOSTILE through HAProxy's frontend ``port``; send ``send``; what the
    gateway says first (up to its first line end), or b"" if it closes."""
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((HOSTILE, 0))
        s.connect(("127.0.0.1", port))
        if send:
            s.sendall(send)
        data = b""
        try:
            while b"\n" not in data:
                chunk = s.recv(1024)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        return data


def test_a_source_penalised_on_a_is_refused_on_b(shared):
    c = shared
    _proxied_first_line(c.via["a"], b"GET / HTTP/1.0\r\n\r\n")
    c.a.wait_for_log(rf"penalty: \w+ \d+s refusal of {re.escape(HOSTILE)}/32")

    def refused_on_b() -> bool:
        return _proxied_first_line(c.via["b"]).startswith(b"Refused for a while")

    _wait(refused_on_b, timeout=20)
    c.b.wait_for_log(rf"refusing {re.escape(HOSTILE)}:\d+ at accept: penalty")


def test_flows_and_audit_on_either_instance_show_both(shared, tmp_path):
    c = shared
    for name in ("a", "b"):  # at least one login on each, whatever ran before
        ok = ssh_through(c.via[name], c.key, tmp_path / "kh", "true", strict="no")
        assert ok.returncode == 0, ok.stderr
    # Each instance's own logins: flow ids from its local flow file, sources from its log.
    flows, sources = {}, {}
    for name, gw in (("a", c.a), ("b", c.b)):
        path = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        flows[name] = {r["id"] for r in records if r.get("user")}
        sources[name] = set(re.findall(r"logged in with \w+ from (\S+) \(", gw.log_text()))
        assert flows[name] and sources[name], name
    for gw in (c.a, c.b):
        listed: set[str] = set()

        def both_listed(gw=gw, listed=listed) -> bool:
            out = sshgateway_cli(
                "flows", "list", "--config", str(gw.config_path), "--format", "json",
                "--limit", "100000",
            ).stdout  # fmt: skip
            listed |= {r["id"] for r in json.loads(out)["flows"]}
            return bool(listed & flows["a"] and listed & flows["b"])

        _wait(both_listed)
        logged_in: set[str] = set()

        def both_audited(gw=gw, logged_in=logged_in) -> bool:
            logged_in |= {r["source"] for r in _audit(gw)}
            return sources["a"] <= logged_in and sources["b"] <= logged_in

        _wait(both_audited)


def _log(gw: GatewayProcess) -> str:
    return gw.log_text()


def test_health_checks_leave_no_flow_records_and_no_connection_lines(shared):
    """HAProxy checks each instance every 500 ms (``check-send-proxy``: a v2 LOCAL
    header): the checks pass, and no instance logs or records them as connections."""
    c = shared
    for name in ("a", "b"):
        deadline = time.monotonic() + 10
        while server_field(c.workdir / "haproxy.sock", "gateways", name, "check_status") != "L4OK":
            assert time.monotonic() < deadline, f"HAProxy's check of {name} never passed"
            time.sleep(0.1)
    time.sleep(2)  # four more checks of each
    for gw in (c.a, c.b):
        # (plink -1 logins come from 127.0.0.1 too, but they spoke SSH.)
        lines = [line for line in gw.output if "peer=127.0.0.1:" in line]
        assert [line for line in lines if "protocol=ssh" not in line] == [], lines[:3]
        flows = read_jsonl(Path(gw.config["state_dir"]) / "flows" / "flows.jsonl")
        unspoken = [f for f in flows if f["peer"].startswith("127.0.0.1:") and not f["protocol"]]
        assert unspoken == [], unspoken[:1]


def _audit(gw: GatewayProcess) -> list[dict]:
    out = sshgateway_cli(
        "audit", "--config", str(gw.config_path), "--event", "login", "--format", "json"
    ).stdout
    return json.loads(out)


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_killing_an_instance_during_200_logins_fails_no_more_than_its_sessions(
    tmp_path, postgres_server
):
    """Acceptance 3: 200 logins through HAProxy, four at a time; instance A is killed
    (SIGKILL) once 50 have ended. HAProxy's check takes A out within 500 ms, and a
    connection refused by A meanwhile is redispatched to B; the only logins that may fail
    are the ones A held at the moment it died."""
    require_peer("haproxy", "ssh")
    total, parallel, kill_after = 200, 4, 50
    with cluster(tmp_path, postgres_server.new_database()) as c:
        known = tmp_path / "known_hosts"
        first = ssh_through(c.port, c.key, known, "true", strict="accept-new")
        assert first.returncode == 0, first.stderr
        lock = threading.Lock()
        results: list[tuple[int, str]] = []
        started = iter(range(total))
        killed = threading.Event()

        def run() -> None:
            while True:
                with lock:
                    n = next(started, None)
                if n is None:
                    return
                try:
                    result = ssh_through(c.port, c.key, known, f"echo {n}")
                    outcome = (result.returncode, result.stdout + result.stderr)
                except subprocess.TimeoutExpired:
                    outcome = (-1, f"login {n} hung for 60 s")
                with lock:
                    results.append(outcome)
                    if len(results) == kill_after and not killed.is_set():
                        c.a.process.send_signal(signal.SIGKILL)
                        killed.set()

        threads = [threading.Thread(target=run) for _ in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        assert killed.is_set() and c.a.process.wait(10) == -signal.SIGKILL
        failures = [out for status, out in results if status != 0]
        assert len(results) == total
        # The sessions A held when it died: all HAProxy ever sent to A but the ones A
        # saw to their end (its log, up to its death). That includes connections sent to
        # A in the moment it was dying, before its kernel closed the listening socket.
        sent_to_a = server_stat(tmp_path / "haproxy.sock", "gateways", "a", "stot")
        held = sent_to_a - served(c.a, "ssh2")
        # (A connection HAProxy retried or redispatched counts in stot too: held is an
        # upper bound; the logins under way at the kill, `parallel`, another one.)
        assert len(failures) <= min(held, parallel), (held, sent_to_a, failures)
        # HAProxy's health check took A out.
        assert re.search(r"[Ss]erver gateways/a is DOWN", (tmp_path / "haproxy.log").read_text())
        # B served the rest: every login after the kill went there.
        assert served(c.b, "ssh2") >= total - kill_after - held


def test_the_readme_shows_the_haproxy_config_these_tests_run():
    """README "Deployment: several instances behind HAProxy": its haproxy.cfg is
    cluster_config with the README's example addresses."""
    text = README.read_text()
    block = re.search(r"<!-- haproxy-cluster-config -->\n```\n(.*?)```\n", text, re.S)
    assert block, "the README lost its marked HAProxy config"
    expected = cluster_config(":22", [("gw1", "10.0.0.11:2222"), ("gw2", "10.0.0.12:2222")])
    assert block.group(1) == expected
