"""Issue 13, acceptance 2, end to end: real clients through a real gateway leave their
logins, sessions (with the command) and weak legs in the audit trail, which
``sshgateway audit`` (the real command, in its own process) lists.

OpenSSH's ``ssh`` (SSH-2, key) runs a command on a real sshd device; PuTTY's ``plink -1``
(SSH-1, password) runs one on an SSH-1 device (the gateway's own SSH-1 server in a second
process: no other SSH-1 server is packaged). A failed login is audited alike for a known and
an unknown user, without the password; a device whose host key changed is refused and
audited.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest

from tests.support.clients import (
    PASSWORD,
    base_config,
    hash_password,
    plink1_argv,
    ssh1_fingerprint,
    ssh2_device,
    ssh_argv,
    sshgateway_cli,
)
from tests.support.gateway_helpers import ed25519_key
from tests.support.gateway_process import GatewayProcess, local_access

pytestmark = pytest.mark.peer

DEVICE_PASSWORD = "device secret 42"
WRONG_PASSWORD = "wrong horse 7 battery"


@pytest.fixture(scope="module")
def ssh1_device(tmp_path_factory):
    config = {
        "protocols": ["1"],
        "users": {"admin": {"password": hash_password(DEVICE_PASSWORD), **local_access()}},
        "auth": {"failure_delay": 0.2},
    }
    with GatewayProcess(tmp_path_factory.mktemp("audit-device"), config) as device:
        yield device


@pytest.fixture(scope="module")
def gw(tmp_path_factory, authorized_keys, ssh1_device):
    work = tmp_path_factory.mktemp("audit-gw")
    with ssh2_device(work) as (sshd, host2):
        targets = {
            "dev1": {
                "protocol": "ssh1", "host": "127.0.0.1", "port": ssh1_device.port,
                "username": "admin", "password": DEVICE_PASSWORD, "connect_timeout": 20,
            },
            "host2": host2,
            # The same sshd under another name: its pinned key (seeded below) is not the
            # one it shows, as if the device's key had changed.
            "host3": {**host2, "host": "localhost"},
        }  # fmt: skip
        config = base_config(hash_password(), authorized_keys, targets=targets)
        config["users"]["alice"]["targets"] = ["dev1", "host2", "host3"]
        # Legacy SSH-2 algorithms a client may pick (opt-in), for the client leg's weak_leg.
        config["ssh2"] = {
            "ciphers": ["chacha20-poly1305@openssh.com", "aes128-ctr", "aes128-cbc"],
            "macs": ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-256", "hmac-sha1"],
        }
        del config["users"]["alice"]["os_user"]
        state = work / "state"
        state.mkdir(mode=0o700)
        other = ed25519_key().public()
        known = state / "known_hosts"
        blob = base64.b64encode(other.blob()).decode()
        known.write_text(f"[localhost]:{sshd.port} ssh-ed25519 {blob}\n")
        known.chmod(0o600)
        with GatewayProcess(work, config) as process:
            process.fingerprint = ssh1_fingerprint(process)
            yield process


def audit(gw, *args: str) -> list[dict]:
    """``sshgateway audit --format json ARGS`` on the gateway's state directory."""
    result = sshgateway_cli(
        "audit", "--state-dir", gw.config["state_dir"], "--format", "json", *args
    )
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout)


def wait_for(gw, predicate, *args: str, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = audit(gw, *args)
        if predicate(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def plink1(gw, command: str, user: str, password: str = PASSWORD):
    argv = plink1_argv(gw, command, user=user, password=password, fingerprint=gw.fingerprint)
    return subprocess.run(argv, capture_output=True, timeout=60)


def test_exec_sessions_through_both_fronts_are_audited_with_logins_and_weak_legs(gw, client_keys):
    ssh = subprocess.run(
        ssh_argv(gw, client_keys["ed25519"], "echo via-openssh", user="alice+host2"),
        capture_output=True,
        timeout=60,
    )
    assert ssh.stdout == b"via-openssh\n", ssh.stderr + gw.log_text()[-3000:].encode()
    plink = plink1(gw, "echo via-plink; exit 3", "alice+dev1")
    assert plink.stdout == b"via-plink\n" and plink.returncode == 3, plink.stderr

    def done(records):
        return sum(r["event"] == "session_end" for r in records) >= 2

    records = wait_for(gw, done, "--user", "alice")
    by_event: dict[str, list[dict]] = {}
    for record in records:
        by_event.setdefault(record["event"], []).append(record)

    logins = {(r["protocol"], r["method"]) for r in by_event["login"]}
    assert {("ssh2", "publickey"), ("ssh1", "password")} <= logins
    ssh1_login = next(r for r in by_event["login"] if r["protocol"] == "ssh1")
    assert ssh1_login["client_version"].startswith("SSH-1.5-PuTTY")
    assert ssh1_login["source"].startswith("127.0.0.1:")

    starts = {r["command"]: r for r in by_event["session_start"]}
    ends = {r["command"]: r for r in by_event["session_end"]}
    openssh, putty = starts["echo via-openssh"], starts["echo via-plink; exit 3"]
    assert (openssh["target"], openssh["protocol"], openssh["pty"]) == ("host2", "ssh2", False)
    assert (putty["target"], putty["protocol"], putty["target_protocol"]) == (
        "dev1",
        "ssh1",
        "ssh1",
    )
    assert ends["echo via-openssh"]["exit_status"] == 0
    assert ends["echo via-plink; exit 3"]["exit_status"] == 3
    assert ends["echo via-plink; exit 3"]["bytes_out"] == len(b"via-plink\n")

    # The SSH-1 session is weak on both legs: SSH-1 itself and its cipher, each an event.
    weak = [r for r in by_event["weak_leg"] if r["target"] == "dev1"]
    client = {(r["what"], r["algorithm"]) for r in weak if r["leg"] == "client"}
    upstream = {(r["what"], r["algorithm"]) for r in weak if r["leg"] == "upstream"}
    assert ("protocol", "ssh1") in client and ("protocol", "ssh1") in upstream
    assert {w for w, _ in client} == {"protocol", "cipher"} == {w for w, _ in upstream}
    assert all(r["session"] == putty["session"] for r in weak if r["leg"] == "client")
    assert all(r["flow_id"] == putty["flow_id"] for r in weak)
    # The modern SSH-2 session to sshd has none.
    assert not [r for r in by_event["weak_leg"] if r.get("session") == openssh["session"]]

    # The text form says the same, one line per event.
    text = sshgateway_cli("audit", "--state-dir", gw.config["state_dir"], "--user", "alice")
    assert 'command="echo via-plink; exit 3"' in text.stdout


def test_a_failed_login_is_audited_alike_for_known_and_unknown_users(gw):
    assert plink1(gw, "true", "alice", WRONG_PASSWORD).returncode != 0
    assert plink1(gw, "true", "nobody-such", WRONG_PASSWORD).returncode != 0

    def done(records):
        return {r["user"] for r in records} >= {"alice", "nobody-such"}

    failed = wait_for(gw, done, "--event", "login_failed")
    known = next(r for r in failed if r["user"] == "alice")
    unknown = next(r for r in failed if r["user"] == "nobody-such")
    assert set(known) == set(unknown)
    assert (known["method"], known["protocol"]) == (unknown["method"], unknown["protocol"])
    trail = b"".join(p.read_bytes() for p in (gw.workdir / "state" / "audit").iterdir())
    for secret in (WRONG_PASSWORD, PASSWORD, DEVICE_PASSWORD):
        assert secret.encode() not in trail


def test_a_changed_device_host_key_is_refused_and_audited(gw, client_keys):
    result = subprocess.run(
        ssh_argv(gw, client_keys["ed25519"], "true", user="alice+host3"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 255 and "CHANGED" in result.stderr
    [changed] = wait_for(gw, bool, "--event", "host_key_changed", "--target", "host3")
    assert changed["host"] == "localhost" and changed["result"] == "refused"
    assert changed["fingerprint"].startswith("SHA256:") and changed["pinned"].endswith(":1")


def test_an_ssh2_client_that_picks_cbc_and_hmac_sha1_is_a_weak_client_leg(gw, client_keys):
    result = subprocess.run(
        ssh_argv(
            gw, client_keys["ed25519"], "-c", "aes128-cbc", "-m", "hmac-sha1", "echo cbc",
            user="alice+host2",
        ),
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert result.stdout == b"cbc\n", result.stderr
    sessions = wait_for(gw, bool, "--event", "session_start", "--target", "host2")
    session = next(r for r in sessions if r["command"] == "echo cbc")["session"]
    weak = [r for r in audit(gw, "--event", "weak_leg") if r.get("session") == session]
    assert {(r["leg"], r["what"], r["algorithm"]) for r in weak} == {
        ("client", "cipher", "aes128-cbc"),
        ("client", "mac", "hmac-sha1"),
    }
