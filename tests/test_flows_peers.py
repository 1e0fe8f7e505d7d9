"""Flow records from real clients through a real gateway subprocess (issue 5, acceptance
1 and 3): one ``plink -1`` login and OpenSSH logins (password and key) each leave one
record with the five stages, the protocol's own message names in order and what was
negotiated; and no record holds the password, the private key or the session data."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.clients import (
    PASSWORD,
    base_config,
    hash_password,
    one_target_config,
    plink1_argv,
    ssh1_fingerprint,
    ssh2_device,
    ssh_argv,
    sshgateway_cli,
    write_authorized_keys,
)
from tests.support.flow_records import read_jsonl
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tests.support.sshd import keygen

pytestmark = pytest.mark.peer

PAYLOAD = b"payload-never-recorded-7f3a91\n"


@pytest.fixture(scope="module")
def peers_gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("flows-peers")
    key = keygen(work / "id_ed25519")
    authz = write_authorized_keys(work / "authorized_keys", key)
    (work / "gw").mkdir()
    with GatewayProcess(work / "gw", base_config(hash_password(), authz)) as gw:
        gw.key = key
        yield gw


def _records(gw: GatewayProcess, count: int, timeout: float = 20.0) -> list[dict]:
    path = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            records = read_jsonl(path)
            if len(records) >= count:
                return records
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} flow records:\n" + gw.log_text()[-3000:])


def _names(record: dict) -> list[str]:
    return [m["name"] for m in record["messages"]]


def _in_order(names: list[str], wanted: list[str]) -> bool:
    position = 0
    for name in names:
        if position < len(wanted) and name == wanted[position]:
            position += 1
    return position == len(wanted)


def test_ssh1_and_ssh2_logins_leave_flow_records_without_secrets(peers_gateway):
    gw = peers_gateway
    sshpass = require_peer("sshpass")["sshpass"]
    fingerprint = ssh1_fingerprint(gw)
    runs = [
        plink1_argv(gw, "cat", fingerprint=fingerprint),
        [sshpass, "-p", PASSWORD, *ssh_argv(gw, None, "-o", "PreferredAuthentications=password",
                                            "-o", "PubkeyAuthentication=no", "cat", batch=False)],
        ssh_argv(gw, gw.key, "cat"),
    ]  # fmt: skip
    for argv in runs:
        result = subprocess.run(argv, input=PAYLOAD, capture_output=True, timeout=60)
        assert result.stdout == PAYLOAD, result.stderr + gw.log_text()[-2000:].encode()

    records = _records(gw, 3)
    ssh1 = [r for r in records if r["protocol"] == "ssh1"]
    ssh2 = [r for r in records if r["protocol"] == "ssh2"]
    assert len(ssh1) == 1 and len(ssh2) == 2

    r1 = ssh1[0]
    assert r1["versions"]["client"].startswith("SSH-1.5-PuTTY")
    assert r1["versions"]["server"].startswith("SSH-1.99-sshgateway")
    assert r1["user"] == "alice" and r1["role"] == "server" and r1["link"] is None
    assert [s["name"] for s in r1["stages"]] == [
        "version", "kex", "auth", "session", "interaction", "close"
    ]  # fmt: skip
    assert all(s["start"] is not None for s in r1["stages"]), r1["stages"]
    assert _in_order(_names(r1), [
        "version", "version", "SSH_SMSG_PUBLIC_KEY", "SSH_CMSG_SESSION_KEY", "SSH_SMSG_SUCCESS",
        "SSH_CMSG_USER", "SSH_SMSG_FAILURE", "SSH_CMSG_AUTH_PASSWORD", "SSH_SMSG_SUCCESS",
        "SSH_CMSG_EXEC_CMD", "SSH_CMSG_STDIN_DATA", "SSH_SMSG_STDOUT_DATA",
        "SSH_SMSG_EXITSTATUS", "SSH_CMSG_EXIT_CONFIRMATION",
    ]), _names(r1)  # fmt: skip
    n1 = r1["negotiated"]
    assert n1["cipher"] in ("3des", "blowfish")
    assert n1["server_key_bits"] == 1024 and n1["host_key_bits"] == 2048
    assert n1["host_key_fingerprint"] == "MD5:" + fingerprint
    assert {"method": "password", "result": "success"} in [
        {k: a[k] for k in ("method", "result")} for a in r1["auth"]
    ]
    assert "exec_cmd" in [q["name"] for q in r1["requests"]]
    assert r1["exit_status"] == 0
    assert r1["bytes"]["c2s"] > 0 and r1["bytes"]["s2c"] > 0

    for r2 in ssh2:
        assert r2["versions"]["client"].startswith("SSH-2.0-OpenSSH")
        assert all(s["start"] is not None for s in r2["stages"]), r2["stages"]
        assert _in_order(_names(r2), [
            "version", "version", "SSH2_MSG_KEXINIT", "SSH2_MSG_KEXINIT",
            "SSH2_MSG_KEX_ECDH_INIT", "SSH2_MSG_KEX_ECDH_REPLY", "SSH2_MSG_NEWKEYS",
            "SSH2_MSG_SERVICE_REQUEST", "SSH2_MSG_SERVICE_ACCEPT", "SSH2_MSG_USERAUTH_REQUEST",
            "SSH2_MSG_USERAUTH_SUCCESS", "SSH2_MSG_CHANNEL_OPEN",
            "SSH2_MSG_CHANNEL_OPEN_CONFIRMATION", "SSH2_MSG_CHANNEL_REQUEST",
            "SSH2_MSG_CHANNEL_DATA", "SSH2_MSG_CHANNEL_CLOSE",
        ]), _names(r2)  # fmt: skip
        n2 = r2["negotiated"]
        assert n2["kex"] and n2["cipher_c2s"] and n2["mac_s2c"] is not None
        assert n2["host_key_fingerprint"].startswith("SHA256:")
        assert n2["strict_kex"] is True  # OpenSSH (Debian's 9.2 has the Terrapin fix)
        assert "exec" in [q["name"] for q in r2["requests"]]
        assert r2["exit_status"] == 0
    methods = {a["method"] for r in ssh2 for a in r["auth"] if a["result"] == "success"}
    assert methods == {"password", "publickey"}

    # No secrets: the password, the private key (its base64 body and decoded bytes) and
    # the session data appear in no record file.
    key_text = Path(gw.key).read_text().splitlines()
    key_body = "".join(line for line in key_text if not line.startswith("-----"))
    key_bytes = base64.b64decode(key_body)
    secrets = [PASSWORD.encode(), PAYLOAD.strip(), key_body.encode()]
    secrets += [line.encode() for line in key_text if len(line) > 20 and "-----" not in line]
    secrets += [base64.b64encode(key_bytes[i : i + 24]) for i in range(0, len(key_bytes) - 24, 24)]
    for path in (Path(gw.config["state_dir"]) / "flows").iterdir():
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, (path, secret[:10])
        assert key_bytes[-64:] not in data


def test_bridged_session_gives_two_linked_flows(tmp_path):
    """plink -1 -> gateway -> a real OpenSSH sshd: the client leg (SSH-1, role server) and
    the upstream leg (SSH-2, role client) are both recorded, the second linked to the first."""
    authz = write_authorized_keys(tmp_path / "authorized_keys")
    with ssh2_device(tmp_path) as (device, target):
        config = one_target_config(authz, "dev", target)
        (tmp_path / "gw").mkdir()
        with GatewayProcess(tmp_path / "gw", config) as gw:
            result = subprocess.run(
                plink1_argv(gw, "cat; exit 4", user="alice+dev"),
                input=PAYLOAD, capture_output=True, timeout=60,
            )  # fmt: skip
            assert result.stdout == PAYLOAD, result.stderr + gw.log_text()[-3000:].encode()
            assert result.returncode == 4
            records = _records(gw, 2)
    [front] = [r for r in records if r["role"] == "server"]
    [upstream] = [r for r in records if r["role"] == "client"]
    assert front["protocol"] == "ssh1" and upstream["protocol"] == "ssh2"
    assert upstream["link"] == front["id"] and front["link"] is None
    assert upstream["target"] == "dev" and upstream["user"] == "root"
    assert upstream["peer"] == f"127.0.0.1:{device.port}"
    assert upstream["versions"]["server"].startswith("SSH-2.0-OpenSSH")
    assert upstream["versions"]["client"].startswith("SSH-2.0-")
    # Conch's client sends its KEXINIT without waiting for the server's line.
    assert _names(upstream).count("version") == 2
    assert upstream["stages"][0]["messages"] == 2
    assert _in_order(_names(upstream), [
        "version", "SSH2_MSG_KEXINIT", "SSH2_MSG_KEXINIT", "SSH2_MSG_NEWKEYS",
        "SSH2_MSG_SERVICE_REQUEST", "SSH2_MSG_USERAUTH_REQUEST", "SSH2_MSG_USERAUTH_SUCCESS",
        "SSH2_MSG_CHANNEL_OPEN", "SSH2_MSG_CHANNEL_REQUEST", "SSH2_MSG_CHANNEL_DATA",
    ]), _names(upstream)  # fmt: skip
    assert all(s["start"] is not None for s in upstream["stages"]), upstream["stages"]
    assert upstream["exit_status"] == 4 and front["exit_status"] == 4
    assert upstream["negotiated"]["host_key_fingerprint"].startswith("SHA256:")
    assert upstream["negotiated"]["strict_kex"] is True  # sshd and our client agree on it
    assert {"method": "publickey", "result": "success"} in [
        {k: a[k] for k in ("method", "result")} for a in upstream["auth"]
    ]
    key_body = "".join(
        line
        for line in Path(target["key"]).read_text().splitlines()
        if not line.startswith("-----")
    )
    for path in (Path(gw.config["state_dir"]) / "flows").iterdir():
        data = path.read_bytes()
        for secret in (PASSWORD.encode(), PAYLOAD.strip(), key_body[:40].encode(),
                       key_body[-40:].encode()):  # fmt: skip
            assert secret not in data


def test_user_and_target_recorded_alike_for_both_protocols(tmp_path):
    """Issue 9, item 13: plink -1 and OpenSSH log in as ``alice+sw1`` and as ``alice``
    (whose one target is sw1): every client leg records user ``alice`` and the target it
    was routed to, ``sw1``, and ``flows list`` shows them so, whatever the protocol."""
    tools = require_peer("plink", "ssh", "sshpass")
    key = keygen(tmp_path / "id_ed25519")
    authz = write_authorized_keys(tmp_path / "authorized_keys", key)
    config = one_target_config(authz, "sw1", {"protocol": "local"})
    (tmp_path / "gw").mkdir()
    with GatewayProcess(tmp_path / "gw", config) as gw:
        fingerprint = ssh1_fingerprint(gw)
        runs = [
            plink1_argv(gw, "cat", user="alice+sw1", fingerprint=fingerprint),
            plink1_argv(gw, "cat", fingerprint=fingerprint),
            [tools["sshpass"], "-p", PASSWORD, *ssh_argv(
                gw, None, "-o", "PreferredAuthentications=password",
                "-o", "PubkeyAuthentication=no", "cat", user="alice+sw1", batch=False,
            )],
            ssh_argv(gw, key, "cat", user="alice+sw1"),
            ssh_argv(gw, key, "cat"),
        ]  # fmt: skip
        for argv in runs:
            result = subprocess.run(argv, input=PAYLOAD, capture_output=True, timeout=60)
            assert result.stdout == PAYLOAD, result.stderr + gw.log_text()[-2000:].encode()
        records = _records(gw, len(runs))
        listing = sshgateway_cli("flows", "list", "--config", str(gw.config_path))
    assert sorted(r["protocol"] for r in records) == ["ssh1"] * 2 + ["ssh2"] * 3
    assert [(r["role"], r["user"], r["target"]) for r in records] == [
        ("server", "alice", "sw1")
    ] * len(runs), [(r["protocol"], r["user"], r["target"]) for r in records]
    rows = [line.split() for line in listing.stdout.splitlines()]
    header = rows[0]
    # "TIME (UTC)" is two words in the header and two (date, time) in each row.
    user, proto, target = header.index("USER"), header.index("PROTO"), header.index("TARGET")
    assert len(rows) == 1 + len(runs), listing.stdout
    assert sorted(row[proto] for row in rows[1:]) == ["ssh1"] * 2 + ["ssh2"] * 3
    assert {(row[user], row[target]) for row in rows[1:]} == {("alice", "sw1")}, listing.stdout


def test_eof_is_in_the_interaction_for_plink_1_and_openssh(peers_gateway):
    """Issue 9, item 14: ``true`` with nothing on stdin, so each EOF comes before any data:
    plink -1's CMSG_EOF and both SSH-2 CHANNEL_EOFs (OpenSSH's and the gateway's) are
    all counted in the interaction, not in the session request."""
    gw = peers_gateway
    path = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"
    before = len(read_jsonl(path))
    runs = [plink1_argv(gw, "true", fingerprint=ssh1_fingerprint(gw)), ssh_argv(gw, gw.key, "true")]
    for argv in runs:
        result = subprocess.run(argv, input=b"", capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr + gw.log_text()[-2000:].encode()
    records = _records(gw, before + 2)[before:]
    eofs = {
        r["protocol"]: sorted(
            (m["dir"], m["stage"]) for m in r["messages"] if m["name"].endswith("_EOF")
        )
        for r in records
    }
    assert eofs == {
        "ssh1": [("c2s", "interaction")],
        "ssh2": [("c2s", "interaction"), ("s2c", "interaction")],
    }, eofs
