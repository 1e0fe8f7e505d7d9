"""``sshgateway probe`` against real servers: the gateway (SSH-1.99, and SSH-1 only), an
SSH-2-only OpenSSH sshd, a closed port and a silent listener, all in one run of the command
(so the hosts are probed concurrently), plus the SSH-1 SHA256 fingerprint rule checked
against ``ssh-keygen1``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.clients import (
    PASSWORD,
    base_config,
    hash_password,
    sshgateway_cli,
    write_authorized_keys,
)
from tests.support.gateway_process import REPO, GatewayProcess
from tests.support.peers import require_peer
from tests.support.sshd import OpenSSHServer, free_port, silent_listener

pytestmark = pytest.mark.peer

TIMEOUT = 3.0


def probe_cli(*args: str, stdin: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from tools.cli import main; sys.exit(main())",
         "probe", "--timeout", str(TIMEOUT), *args],
        input=stdin, capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    return result, time.monotonic() - started


def keygen_fingerprints(tool: str, pub: Path, *extra: str) -> str:
    out = subprocess.run(
        [tool, "-l", *extra, "-f", str(pub)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return out.split()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work = tmp_path_factory.mktemp("probe")
    (work / "gw").mkdir()
    (work / "gw1").mkdir()
    authorized = write_authorized_keys(work / "authorized_keys")
    config = base_config(hash_password(), authorized)
    with GatewayProcess(work / "gw", config) as gw:
        # The same host keys (state_dir); a control socket of its own, as two gateways
        # cannot share one.
        ssh1_only = dict(
            config, protocols=["1"], state_dir=gw.config["state_dir"],
            control={"socket": str(work / "gw1" / "control.sock")},
        )  # fmt: skip
        with (
            GatewayProcess(work / "gw1", ssh1_only) as gw1,
            OpenSSHServer(work / "sshd", [], host_key_types=("ed25519", "rsa")) as sshd,
            silent_listener() as silent,
        ):
            yield {"gw": gw, "gw1": gw1, "sshd": sshd, "silent": silent, "closed": free_port()}


@pytest.fixture(scope="module")
def json_run(world):
    targets = [
        f"127.0.0.1:{world['gw'].port}",
        f"127.0.0.1:{world['sshd'].port}",
        f"127.0.0.1:{world['closed']}",
        f"127.0.0.1:{world['silent']}",
        f"127.0.0.1:{world['gw1'].port}",
    ]
    result, elapsed = probe_cli("--format", "json", *targets)
    assert result.returncode == 1, result.stderr  # two hosts did not answer
    reports = json.loads(result.stdout)
    assert [r["target"] for r in reports] == targets
    return reports, elapsed


def gateway_fingerprints(gw) -> list[list[str]]:
    out = sshgateway_cli("fingerprints", "--state-dir", gw.config["state_dir"]).stdout
    return [line.split() for line in out.splitlines()]


def test_gateway_offers_both_protocols(world, json_run):
    report = json_run[0][0]
    assert report["status"] == "ok"
    assert report["identification"].startswith("SSH-1.99-sshgateway")
    assert report["protocols"] == ["ssh1", "ssh2"]
    lines = gateway_fingerprints(world["gw"])
    ssh1 = report["ssh1"]["offer"]
    (_, _, bits, sha256, md5) = next(line for line in lines if line[0] == "SSH-1")
    assert (ssh1["host_key_bits"], ssh1["server_key_bits"]) == (2048, 1024) == (int(bits), 1024)
    assert "MD5:" + ssh1["host_key_md5"] == md5
    assert ssh1["host_key_sha256"] == sha256
    assert ssh1["ciphers"] and "password" in ssh1["auth"] and ssh1["warnings"] == []
    ssh2 = report["ssh2"]
    assert "curve25519-sha256" in ssh2["kexinit"]["kex"]
    assert ssh2["kexinit"]["compression_c2s"]
    offered = sorted(
        (k["type"], k["bits"], k["fingerprint"], k["verified"]) for k in ssh2["host_keys"]
    )
    expected = sorted((t, int(b), f, True) for p, t, b, f, *_ in lines if p == "SSH-2")
    assert offered == expected
    assert [(t, b) for t, b, _, _ in offered] == [("ssh-ed25519", 256), ("ssh-rsa", 3072)]
    assert ssh2["key_errors"] == []


def test_ssh2_only_sshd(world, json_run):
    report = json_run[0][1]
    sshd = world["sshd"]
    tool = require_peer("ssh-keygen")["ssh-keygen"]
    assert report["status"] == "ok" and report["identification"].startswith("SSH-2.0-OpenSSH")
    assert report["protocols"] == ["ssh2"]
    assert report["ssh1"]["available"] is False
    assert "SSH-2.0 only" in report["ssh1"]["reason"]
    got = {k["type"]: (k["bits"], k["fingerprint"]) for k in report["ssh2"]["host_keys"]}
    want = {
        "ssh-ed25519": (256, keygen_fingerprints(tool, Path(f"{sshd.host_keys[0]}.pub"))),
        "ssh-rsa": (2048, keygen_fingerprints(tool, Path(f"{sshd.host_keys[1]}.pub"))),
    }
    assert got == want


def test_ssh1_only_gateway(json_run):
    report = json_run[0][4]
    assert report["identification"].startswith("SSH-1.5-")
    assert report["protocols"] == ["ssh1"]
    assert report["ssh2"]["available"] is False and "SSH-1.5 only" in report["ssh2"]["reason"]
    assert (
        report["ssh1"]["offer"]["host_key_md5"] == json_run[0][0]["ssh1"]["offer"]["host_key_md5"]
    )


def test_closed_port_and_silent_listener_within_timeout(json_run):
    reports, elapsed = json_run
    closed, silent = reports[2], reports[3]
    assert closed["status"] == "refused" and closed["duration"] < 1
    assert silent["status"] == "timeout"
    assert TIMEOUT - 0.1 <= silent["duration"] <= TIMEOUT + 1
    assert "within 3 s" in silent["error"]
    assert elapsed < TIMEOUT + 15  # all hosts at once: one timeout, plus interpreter start


def test_csv_and_text(world):
    targets = [f"127.0.0.1:{world['gw'].port}", f"127.0.0.1:{world['closed']}"]
    result, _ = probe_cli("--format", "csv", *targets)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["status"] for r in rows] == ["ok", "refused"]
    assert rows[0]["protocols"] == "ssh1 ssh2"
    assert rows[0]["ssh1_host_key_bits"] == "2048" and rows[0]["ssh1_server_key_bits"] == "1024"
    assert rows[0]["ssh2_host_keys"].count("SHA256:") == 2
    text, _ = probe_cli(targets[0])
    assert text.returncode == 0, text.stderr
    assert (
        "SSH-1 host key   2048 bits" in text.stdout
        and "SSH-2 host key   ssh-rsa 3072" in text.stdout
    )


def test_ssh1_sha256_fingerprint_as_ssh_keygen1(tmp_path):
    """``ssh-keygen1 -l`` on an rsa1 key gives the SHA256 (and, with -E md5, the MD5) the
    probe computes from the same key's numbers."""
    from protocols.ssh1.keys import ssh1_fingerprint
    from tools.probe.keys import ssh1_sha256_fingerprint

    tool = require_peer("ssh-keygen1")["ssh-keygen1"]
    key = tmp_path / "rsa1"
    subprocess.run([tool, "-q", "-t", "rsa1", "-N", "", "-f", str(key)], check=True, timeout=60)
    pub = Path(f"{key}.pub")
    _bits, e, n = pub.read_text().split()[:3]
    assert ssh1_sha256_fingerprint(int(e), int(n)) == keygen_fingerprints(tool, pub)
    assert "MD5:" + ssh1_fingerprint(int(e), int(n)) == keygen_fingerprints(tool, pub, "-E", "md5")


def test_login_over_both_protocols_records_two_flows(world, tmp_path):
    """--user/--password: one login per protocol, each recorded as a flow for flows
    compare; the password is in no record."""
    state = tmp_path / "state"
    target = f"127.0.0.1:{world['gw'].port}"
    result, _ = probe_cli(
        "--format", "json", "--user", "alice", "--password", "-", "--state-dir", str(state),
        "--command", "exit 3", target, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (report,) = json.loads(result.stdout)
    logins = {x["protocol"]: x for x in report["logins"]}
    assert set(logins) == {"ssh1", "ssh2"}
    for x in logins.values():
        assert (x["ok"], x["exit_status"], x["error"]) == (True, 3, None)
        assert x["flow_id"].startswith("f-")
    text = (state / "flows" / "flows.jsonl").read_text()
    records = {r["id"]: r for r in map(json.loads, text.splitlines())}
    ssh1 = records[logins["ssh1"]["flow_id"]]
    ssh2 = records[logins["ssh2"]["flow_id"]]
    assert (ssh1["role"], ssh1["protocol"], ssh1["user"]) == ("client", "ssh1", "alice")
    assert ssh1["exit_status"] == 3 and ssh2["exit_status"] == 3
    assert {"method": "password", "result": "success"}.items() <= ssh1["auth"][-1].items()
    names = [m["name"] for m in ssh1["messages"]]
    assert names.index("SSH_SMSG_PUBLIC_KEY") < names.index("SSH_CMSG_SESSION_KEY")
    assert "SSH2_MSG_KEXINIT" in [m["name"] for m in ssh2["messages"]]
    assert (ssh2["role"], ssh2["protocol"], ssh2["user"]) == ("client", "ssh2", "alice")
    assert PASSWORD not in text and PASSWORD.split()[0] not in text
    listed = sshgateway_cli("flows", "list", "--state-dir", str(state)).stdout
    assert logins["ssh1"]["flow_id"] in listed and logins["ssh2"]["flow_id"] in listed


def test_login_refused_is_reported(world, tmp_path):
    target = f"127.0.0.1:{world['gw'].port}"
    result, _ = probe_cli(
        "--format", "csv", "--user", "alice", "--password", "-", "--state-dir",
        str(tmp_path / "state"), target, stdin="wrong password\n",
    )  # fmt: skip
    (row,) = csv.DictReader(io.StringIO(result.stdout))
    assert row["ssh1_login"].startswith("failed:") and row["ssh2_login"].startswith("failed:")
    assert "wrong password" not in (tmp_path / "state" / "flows" / "flows.jsonl").read_text()


def test_concurrency_limit_and_progress_bar_on_a_terminal():
    """20 silent hosts, 10 at a time, 1 s each: two waves; the progress bar is drawn on
    stderr when stderr is a terminal (stdout stays clean CSV)."""
    master, slave = os.openpty()
    with silent_listener() as port:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from tools.cli import main; sys.exit(main())",
             "probe", "--timeout", "1", "--concurrency", "10", "--format", "csv",
             *[f"127.0.0.1:{port}"] * 20],
            stdout=subprocess.PIPE, stderr=slave, text=True, cwd=REPO, timeout=120,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    os.close(slave)
    drawn = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(master, 65536):
            drawn += chunk
            if b"20/20" in drawn:
                break
    os.close(master)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["status"] for r in rows] == ["timeout"] * 20
    assert 2.0 <= elapsed < 15
    assert b"probe [" in drawn and b"] 20/20" in drawn


def test_progress_bar_counts_seconds_while_a_real_host_stays_silent():
    """Issue 9, item 15: one silent listener, --timeout 3: the bar on the terminal shows
    the elapsed time going up (1s, 2s) during the wait, not ``0s`` until the host is done."""
    master, slave = os.openpty()
    with silent_listener() as port:
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from tools.cli import main; sys.exit(main())",
             "probe", "--timeout", "3", "--format", "csv", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=slave, text=True, cwd=REPO, timeout=120,
        )  # fmt: skip
    os.close(slave)
    drawn = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(master, 65536):
            drawn += chunk
            if b"1/1" in drawn and drawn.endswith(b"\n"):
                break
    os.close(master)
    assert result.returncode == 1 and "timeout" in result.stdout
    frames = [f.strip() for f in drawn.decode().split("\r") if f.strip()]
    waiting = [f for f in frames if " 0/1 " in f]
    assert {"probe [" + "." * 30 + f"] 0/1 {s}s" for s in (0, 1, 2)} <= set(waiting), frames
    assert frames[-1].startswith("probe [" + "#" * 30 + "] 1/1 3s"), frames
