"""SFTP to an SSH-1 device end to end: OpenSSH 9's ``scp`` (SFTP mode) and ``sftp`` put and
get through the gateway, which serves SFTP itself and runs ``scp -t``/``scp -f`` on the
device. The device is the gateway's own SSH-1 server in a second process, whose scp is the
system's; the files moved are noted in the client's flow record."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.clients import base_config, hash_password, openssh_argv
from tests.support.flow_records import read_jsonl
from tests.support.gateway_process import GatewayProcess, local_access

pytestmark = [pytest.mark.peer, pytest.mark.slow]

DEVICE_PASSWORD = "device secret 17"
SIZE = 16 * 1024 * 1024 + 17  # the 16 MiB, and a tail that is no whole block


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    config = {
        "protocols": ["1"],
        "users": {"admin": {"password": hash_password(DEVICE_PASSWORD), **local_access()}},
        "auth": {"failure_delay": 0.2},
    }
    with GatewayProcess(tmp_path_factory.mktemp("device"), config) as dev:
        yield dev


@pytest.fixture(scope="module")
def gw(tmp_path_factory, device, authorized_keys):
    targets = {
        "dev1": {
            "protocol": "ssh1",
            "host": "127.0.0.1",
            "port": device.port,
            "username": "admin",
            "password": DEVICE_PASSWORD,
            "host_key": "accept-new",
        }
    }
    config = base_config(hash_password(), authorized_keys, targets=targets)
    config["users"]["alice"]["targets"] = ["dev1"]
    with GatewayProcess(tmp_path_factory.mktemp("gw"), config) as process:
        yield process


def run(argv: list[str], stdin: bytes | None = None):
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=180)


def ok(result, gw) -> None:
    assert result.returncode == 0, result.stderr.decode(errors="replace") + gw.log_text()[-3000:]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_scp_and_sftp_put_and_get_through_the_device_s_scp(gw, client_keys, tmp_path):
    key = client_keys["ed25519"]
    source = tmp_path / "up.bin"
    source.write_bytes(os.urandom(SIZE))
    remote = tmp_path / "on-device.bin"  # the device is this host: its scp writes here
    # OpenSSH 9's scp speaks SFTP by default.
    ok(run(openssh_argv("scp", gw, key) + [str(source), f"alice+dev1@127.0.0.1:{remote}"]), gw)
    assert digest(remote) == digest(source)
    back = tmp_path / "back.bin"
    ok(run(openssh_argv("scp", gw, key) + [f"alice+dev1@127.0.0.1:{remote}", str(back)]), gw)
    assert digest(back) == digest(source)
    # sftp's get and put.
    again = tmp_path / "again.bin"
    batch = f"put {source} {tmp_path / 'put.bin'}\nget {remote} {again}\n"
    ok(run(openssh_argv("sftp", gw, key) + ["-b", "-", "alice+dev1@127.0.0.1"], batch.encode()), gw)
    assert digest(tmp_path / "put.bin") == digest(source) == digest(again)
    gw.wait_for_log(r"alice: sftp on dev1: served by the gateway over the device's scp")
    # The files moved are in the client's flow records (names and sizes, no contents).
    flows = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"
    deadline = time.monotonic() + 10
    while True:
        records = read_jsonl(flows)
        moved = [f for r in records for f in r.get("files", [])]
        if len(moved) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {(f["direction"], f["path"], f["size"], f["result"]) for f in moved} >= {
        ("put", str(remote), SIZE, "ok"),
        ("get", str(remote), SIZE, "ok"),
        ("put", str(tmp_path / "put.bin"), SIZE, "ok"),
    }
