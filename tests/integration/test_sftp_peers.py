"""Issue 12, SFTP: OpenSSH 9's ``scp`` (SFTP mode, its default) and ``sftp -b`` through a
real gateway process, to ``local`` (sftp-server run as alice's ``os_user``, a throwaway
account) and to a real sshd device (``alice+host2``, the subsystem relayed to its own
sftp-server); the refusals on telnet devices and for unknown subsystems as the
clients show them (SSH-1 devices: tests/integration/test_sftp_ssh1_device.py); ``scp -O`` still passes through as a command; the flow record names
the subsystem and the files moved, with their sizes. paramiko's SFTPClient (as automation uses it) and PuTTY's psftp too.

Needs root (the local sessions run as another account); otherwise skipped with the reason,
a failure under ``CI=true``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.accounts import os_account
from tests.support.clients import (
    PASSWORD,
    base_config,
    hash_password,
    openssh_argv,
    ssh2_device,
    ssh2_fingerprint,
)
from tests.support.flow_records import read_jsonl
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tests.support.python_clients import paramiko_client

pytestmark = pytest.mark.peer

ACCOUNT = "gwsftp"  # not the local-access tests' account: runs may overlap
BIG = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def account():
    with os_account(ACCOUNT) as entry:
        yield entry


@pytest.fixture(scope="module")
def gw(tmp_path_factory, account, authorized_keys):
    work = tmp_path_factory.mktemp("sftp")
    with ssh2_device(work) as (_, host2):
        never = {"host": "127.0.0.1", "port": 9, "password": "unused"}  # never contacted
        targets = {
            "host2": host2,
            "dev1": {"protocol": "ssh1", **never},
            "tn": {"protocol": "telnet", **never},
        }
        config = base_config(hash_password(), authorized_keys, targets=targets)
        config["users"]["alice"].update(
            targets=["local", "host2", "dev1", "tn"], target="local", os_user=ACCOUNT
        )
        (work / "gw").mkdir()
        with GatewayProcess(work / "gw", config) as process:
            yield process


def run(argv: list[str], stdin: bytes | None = None, timeout: float = 120):
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)


def scp(gw, key, *args: str):
    return run(openssh_argv("scp", gw, key) + list(args))


def sftp_batch(gw, key, destination: str, batch: str):
    return run(openssh_argv("sftp", gw, key) + ["-b", "-", destination], batch.encode())


def digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(BIG))
    return path


def home_file(account, name: str) -> Path:
    return Path(account.pw_dir) / name


def ok(result, gw) -> None:
    assert result.returncode == 0, result.stderr.decode(errors="replace") + gw.log_text()[-3000:]


# -- local: sftp-server as the os_user ---------------------------------------------------------


def test_sftp_to_local_runs_as_the_os_user(gw, account, client_keys, tmp_path):
    source = tmp_path / "small.txt"
    source.write_bytes(b"sftp to local\n")
    home_file(account, "small.txt").unlink(missing_ok=True)
    result = sftp_batch(gw, client_keys["ed25519"], "alice@127.0.0.1",
                        f"put {source} small.txt\npwd\n")  # fmt: skip
    ok(result, gw)
    uploaded = home_file(account, "small.txt")
    assert uploaded.read_bytes() == b"sftp to local\n"
    assert (uploaded.stat().st_uid, uploaded.stat().st_gid) == (account.pw_uid, account.pw_gid)
    assert f"Remote working directory: {account.pw_dir}" in result.stdout.decode()
    gw.wait_for_log(r"alice: sftp on local: /\S+/sftp-server")


@pytest.mark.slow
def test_scp_sftp_mode_puts_and_gets_16mib_to_local(gw, account, client_keys, tmp_path):
    source, back = big_file(tmp_path), tmp_path / "back.bin"
    ok(scp(gw, client_keys["ed25519"], str(source), "alice@127.0.0.1:scp-big.bin"), gw)
    assert digest(home_file(account, "scp-big.bin")) == digest(source)
    assert home_file(account, "scp-big.bin").stat().st_uid == account.pw_uid
    ok(scp(gw, client_keys["ed25519"], "alice@127.0.0.1:scp-big.bin", str(back)), gw)
    assert digest(back) == digest(source)


@pytest.mark.slow
def test_sftp_batch_puts_and_gets_16mib_to_local(gw, account, client_keys, tmp_path):
    source, back = big_file(tmp_path), tmp_path / "back.bin"
    batch = f"put {source} sftp-big.bin\nget sftp-big.bin {back}\n"
    ok(sftp_batch(gw, client_keys["ed25519"], "alice@127.0.0.1", batch), gw)
    assert digest(home_file(account, "sftp-big.bin")) == digest(source)
    assert digest(back) == digest(source)


# -- an sshd device: the subsystem relayed --------------------------------------------------


@pytest.mark.slow
def test_scp_sftp_mode_puts_and_gets_16mib_to_an_sshd_device(gw, client_keys, tmp_path):
    source, remote, back = big_file(tmp_path), tmp_path / "on-host2.bin", tmp_path / "back.bin"
    ok(scp(gw, client_keys["ed25519"], str(source), f"alice+host2@127.0.0.1:{remote}"), gw)
    assert digest(remote) == digest(source)
    ok(scp(gw, client_keys["ed25519"], f"alice+host2@127.0.0.1:{remote}", str(back)), gw)
    assert digest(back) == digest(source)


@pytest.mark.slow
def test_sftp_batch_puts_and_gets_16mib_to_an_sshd_device(gw, client_keys, tmp_path):
    source, remote, back = big_file(tmp_path), tmp_path / "on-host2.bin", tmp_path / "back.bin"
    batch = f"put {source} {remote}\nget {remote} {back}\n"
    ok(sftp_batch(gw, client_keys["ed25519"], "alice+host2@127.0.0.1", batch), gw)
    assert digest(remote) == digest(source)
    assert digest(back) == digest(source)


def test_sftp_to_an_sshd_device_is_its_own_sftp_server(gw, client_keys, tmp_path):
    (tmp_path / "listed.txt").write_text("x")
    result = sftp_batch(gw, client_keys["ed25519"], "alice+host2@127.0.0.1", f"ls {tmp_path}\n")
    ok(result, gw)
    assert "listed.txt" in result.stdout.decode()
    gw.wait_for_log(r"alice: sftp on host2: relayed to the device")


# -- refusals, as the clients show them ----------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("tn", "telnet devices have no SFTP or file transfer"),
    ],
)
def test_sftp_and_scp_to_devices_without_sftp_say_why(gw, client_keys, tmp_path, target, reason):
    source = tmp_path / "f"
    source.write_text("x")
    for result in (
        sftp_batch(gw, client_keys["ed25519"], f"alice+{target}@127.0.0.1", "ls\n"),
        scp(gw, client_keys["ed25519"], str(source), f"alice+{target}@127.0.0.1:f"),
    ):
        assert result.returncode != 0
        assert f"sshgateway: sftp on {target}: {reason}" in result.stderr.decode(), result.stderr
    gw.wait_for_log(rf"alice asked for subsystem 'sftp' on {target}: refused")


def test_unknown_subsystem_fails_the_request(gw, client_keys):
    result = run(
        openssh_argv("ssh", gw, client_keys["ed25519"]) + ["-s", "alice@127.0.0.1", "netconf"]
    )
    assert result.returncode == 255
    assert b"subsystem request failed on channel 0" in result.stderr
    gw.wait_for_log(r"refused subsystem 'netconf': unknown subsystem")


# -- legacy scp and the record ---------------------------------------------------------------


def test_legacy_scp_still_runs_as_a_command(gw, account, client_keys, tmp_path):
    source = tmp_path / "legacy.txt"
    source.write_bytes(b"rcp protocol\n" * 100)
    ok(scp(gw, client_keys["ed25519"], "-O", str(source), "alice@127.0.0.1:legacy.txt"), gw)
    uploaded = home_file(account, "legacy.txt")
    assert uploaded.read_bytes() == source.read_bytes()
    assert uploaded.stat().st_uid == account.pw_uid


def test_the_flow_record_names_the_subsystem(gw, client_keys):
    ok(sftp_batch(gw, client_keys["ed25519"], "alice+host2@127.0.0.1", "pwd\n"), gw)
    flows = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"

    def subsystem_legs() -> list[dict]:
        if not flows.exists():
            return []
        records = read_jsonl(flows)
        return [
            r for r in records
            if r["target"] == "host2"
            and ("subsystem sftp", "success") in [(q["name"], q["result"]) for q in r["requests"]]
        ]  # fmt: skip

    deadline = time.monotonic() + 15
    while len({r["role"] for r in subsystem_legs()}) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    legs = {r["role"]: r for r in subsystem_legs()}
    # The user's leg (the gateway as server) and the gateway's own leg to the device (as
    # client) both name it, linked.
    assert set(legs) == {"server", "client"}, legs
    assert legs["client"]["link"] == legs["server"]["id"]


def flow_files(gw, path: str) -> list[dict]:
    """The ``files`` entries naming ``path`` in the user's legs' flow records; the record
    is written when the connection has closed, so wait for it a little."""
    flows = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"
    deadline = time.monotonic() + 15
    while True:
        records = (
            read_jsonl(flows) if flows.exists() else []
        )
        found = [
            f for r in records if r["role"] == "server" for f in r.get("files", [])
            if f["path"] == path
        ]  # fmt: skip
        if len(found) >= 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize("user", ["alice", "alice+host2"])
def test_the_flow_record_lists_the_files_moved_with_their_sizes(
    gw, account, client_keys, tmp_path, user
):
    # sftp-server and the device's server are relayed; the gateway watches the stream.
    source, back = tmp_path / "noted.bin", tmp_path / "noted-back.bin"
    source.write_bytes(os.urandom(200 * 1024 + 3))
    if user == "alice":
        remote = f"{account.pw_dir}/noted-{os.getpid()}.bin"  # sftp sends absolute paths
    else:
        remote = str(tmp_path / "on-host2-noted.bin")
    batch = f"put {source} {remote}\nget {remote} {back}\n"
    ok(sftp_batch(gw, client_keys["ed25519"], f"{user}@127.0.0.1", batch), gw)
    assert back.read_bytes() == source.read_bytes()
    files = flow_files(gw, remote)
    moved = sorted((f["direction"], f["path"], f["size"], f["result"]) for f in files)
    assert moved == [("get", remote, 200 * 1024 + 3, "ok"), ("put", remote, 200 * 1024 + 3, "ok")]


# -- other SFTP clients: paramiko (automation) and PuTTY's psftp -------------------------------


@pytest.mark.parametrize("user", ["alice", "alice+host2"])
def test_paramiko_sftp_client_puts_stats_and_gets(gw, account, client_keys, tmp_path, user):
    client = paramiko_client(gw, user=user, key_filename=str(client_keys["ed25519"]))
    data = os.urandom(1024 * 1024 + 7)
    remote = "paramiko.bin" if user == "alice" else str(tmp_path / "paramiko.bin")
    try:
        sftp = client.open_sftp()
        with sftp.open(remote, "wb") as f:
            f.write(data)
        assert sftp.stat(remote).st_size == len(data)
        with sftp.open(remote, "rb") as f:
            assert f.read() == data
        sftp.close()
    finally:
        client.close()
    if user == "alice":
        assert home_file(account, remote).stat().st_uid == account.pw_uid


def sftp_on_local(gw) -> int:
    return sum("alice: sftp on local: " in line for line in list(gw.output))


def test_psftp_batch_put_and_get_to_local(gw, account, tmp_path):
    # psftp falls back to running sftp-server as a command when the subsystem request
    # fails: only the log line shows that it was the subsystem that served it.
    tools = require_peer("psftp")
    before = sftp_on_local(gw)
    source, back = tmp_path / "p.bin", tmp_path / "p-back.bin"
    source.write_bytes(os.urandom(300 * 1024))
    (tmp_path / "batch").write_text(f"put {source} psftp.bin\nget psftp.bin {back}\n")
    result = run([
        tools["psftp"], "-batch", "-hostkey", ssh2_fingerprint(gw), "-P", str(gw.port),
        "-pw", PASSWORD, "-b", str(tmp_path / "batch"), "alice@127.0.0.1",
    ])  # fmt: skip
    ok(result, gw)
    assert back.read_bytes() == source.read_bytes()
    assert home_file(account, "psftp.bin").stat().st_uid == account.pw_uid
    deadline = time.monotonic() + 10  # the log is read from the gateway's output by a thread
    while sftp_on_local(gw) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sftp_on_local(gw) == before + 1
