"""SFTP over scp end to end with real implementations on both sides: paramiko's
SFTPClient, OpenSSH's ``sftp -D`` and OpenSSH 9's ``scp`` (SFTP mode, through a fake
``ssh`` given with ``-S``) talk to the gateway's server (tests/support/
sftp_over_scp_runner.py) whose device runs the real system ``scp -f``/``scp -t``."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.peers import require_module, require_peer

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

pytestmark = pytest.mark.peer


def runner_argv(device: Path, log: Path) -> list[str]:
    return [sys.executable, "-m", "tests.support.sftp_over_scp_runner", str(device), str(log)]


class SocketChannel:
    """A socket as paramiko's SFTPClient wants its channel (it names it in log lines)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_name(self) -> str:
        return "socketpair"

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def transfers(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def device(tmp_path: Path) -> Path:
    require_peer("scp")
    path = tmp_path / "device"
    path.mkdir()
    return path


def test_paramiko_get_and_put_1_mib(device: Path, tmp_path: Path) -> None:
    paramiko = require_module("paramiko")
    content = os.urandom(MIB)
    (device / "remote.bin").write_bytes(content)
    ours, theirs = socket.socketpair()
    log = tmp_path / "transfers.jsonl"
    server = subprocess.Popen(
        runner_argv(device, log), stdin=theirs, stdout=theirs, cwd=ROOT, stderr=subprocess.PIPE
    )
    theirs.close()
    try:
        sftp = paramiko.SFTPClient(SocketChannel(ours))
        local = tmp_path / "got.bin"
        sftp.get("remote.bin", str(local))  # stat, open, prefetched reads
        assert local.read_bytes() == content
        upload = os.urandom(MIB + 1)
        (tmp_path / "up.bin").write_bytes(upload)
        sftp.put(str(tmp_path / "up.bin"), "uploaded.bin")  # open, writes, close, stat
        assert (device / "uploaded.bin").read_bytes() == upload
        assert sftp.stat("remote.bin").st_size == MIB
        assert stat.S_ISDIR(sftp.stat("/").st_mode)  # scp -r -f / names no file
        assert stat.S_ISDIR(sftp.stat(".").st_mode)
        with pytest.raises(IOError):
            sftp.listdir(".")
        with pytest.raises(FileNotFoundError):
            sftp.get("missing.bin", str(tmp_path / "x"))
        sftp.close()
    finally:
        ours.close()
        assert server.wait(timeout=20) == 0, server.stderr.read() if server.stderr else ""
    assert {(t["direction"], t["path"], t["size"], t["result"]) for t in transfers(log)} == {
        ("get", "remote.bin", MIB, "ok"),
        ("put", "uploaded.bin", MIB + 1, "ok"),
    }


def test_openssh_sftp_get_and_put(device: Path, tmp_path: Path) -> None:
    sftp = require_peer("sftp")["sftp"]
    content = os.urandom(MIB + 5)
    (device / "remote.bin").write_bytes(content)
    (device / "remote.bin").chmod(0o640)
    upload = os.urandom(MIB - 3)
    (tmp_path / "up.bin").write_bytes(upload)
    batch = tmp_path / "batch"
    batch.write_text(f"get remote.bin {tmp_path / 'got.bin'}\nput {tmp_path / 'up.bin'} put.bin\n")
    log = tmp_path / "transfers.jsonl"
    server = " ".join(runner_argv(device, log))
    result = subprocess.run(
        [sftp, "-b", str(batch), "-D", server],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "got.bin").read_bytes() == content
    assert (device / "put.bin").read_bytes() == upload
    assert [(t["direction"], t["path"], t["size"], t["result"]) for t in transfers(log)] == [
        ("get", "./remote.bin", MIB + 5, "ok"),  # sftp makes paths absolute from "."
        ("put", "./put.bin", MIB - 3, "ok"),
    ]


def test_openssh_scp_sftp_mode_get_and_put(device: Path, tmp_path: Path) -> None:
    scp = require_peer("scp")["scp"]
    content = os.urandom(MIB)
    (device / "remote.bin").write_bytes(content)
    log = tmp_path / "transfers.jsonl"
    fake_ssh = tmp_path / "fake-ssh"
    # scp (SFTP mode) runs: fake-ssh [options] -s -- HOST sftp
    fake_ssh.write_text(
        "#!/bin/sh\ncd " + str(ROOT) + " && exec " + " ".join(runner_argv(device, log)) + "\n"
    )
    fake_ssh.chmod(0o700)
    got = tmp_path / "got.bin"
    get = subprocess.run(
        [scp, "-s", "-S", str(fake_ssh), "device:remote.bin", str(got)],
        capture_output=True,
        timeout=60,
    )
    assert get.returncode == 0, get.stderr.decode()
    assert got.read_bytes() == content
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(MIB + 11))
    for destination, stored in [("device:", "upload.bin"), ("device:renamed.bin", "renamed.bin")]:
        put = subprocess.run(
            [scp, "-s", "-S", str(fake_ssh), str(upload), destination],
            capture_output=True,
            timeout=60,
        )
        assert put.returncode == 0, put.stderr.decode()
        assert (device / stored).read_bytes() == upload.read_bytes()
    # Into a directory: its stat (the D line of scp -r -f) tells scp to append the name.
    (device / "sub").mkdir()
    put = subprocess.run(
        [scp, "-s", "-S", str(fake_ssh), str(upload), "device:sub"], capture_output=True, timeout=60
    )
    assert put.returncode == 0, put.stderr.decode()
    assert (device / "sub" / "upload.bin").read_bytes() == upload.read_bytes()
    # A device error reaches the user with the device's words.
    missing = subprocess.run(
        [scp, "-s", "-S", str(fake_ssh), "device:missing.bin", str(tmp_path / "m")],
        capture_output=True,
        timeout=60,
    )
    assert missing.returncode != 0
    assert b"No such file or directory" in missing.stderr
