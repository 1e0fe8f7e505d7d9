"""The SSH-1 upstream target against a real SSH-1 server over loopback TCP: the
gateway's own SSH-1 server in a second process (GatewayProcess) stands in for the
legacy device (no other SSH-1 server is packaged), with keys made by ``ssh-keygen1``.

Each case runs our target on a real reactor in a short-lived subprocess (a reactor
cannot be restarted inside pytest), bounded by a deadline, and reports JSON.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.clients import PASSWORD, base_config, hash_password, write_authorized_keys
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tests.support.ssh1.target_driver import drive, pattern

pytestmark = pytest.mark.peer

BIG = 16 * 1024 * 1024


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rsa1_key(tmp_path_factory) -> Path:
    tools = require_peer("ssh-keygen1")
    path = tmp_path_factory.mktemp("ssh1-client-keys") / "device_key"
    subprocess.run(
        [tools["ssh-keygen1"], "-q", "-t", "rsa1", "-b", "1024", "-N", "", "-f", str(path)],
        check=True, timeout=120,
    )
    return path


@pytest.fixture(scope="module")
def device(tmp_path_factory, rsa1_key):
    """A gateway subprocess as the SSH-1 device: user alice, password or the rsa1 key."""
    d = tmp_path_factory.mktemp("ssh1-device")
    authorized = write_authorized_keys(d / "authorized_keys", rsa1_key)
    config = base_config(hash_password(), authorized, ssh1={"ciphers": ["3des", "blowfish", "des"]})
    config["protocols"] = ["1"]
    with GatewayProcess(d, config) as process:
        yield process


def device_config(device: GatewayProcess, **extra) -> dict:
    config = {"name": "dev", "protocol": "ssh1", "host": "127.0.0.1", "port": device.port,
              "username": "alice", "password": PASSWORD, "connect_timeout": 30.0}
    config.update(extra)
    return config


def run(device, tmp_path, known_hosts: Path | None = None, **spec) -> dict:
    config = spec.pop("config", {})
    full = {"config": device_config(device, **config),
            "known_hosts": str(known_hosts or tmp_path / "known_hosts"), **spec}
    return drive(full)


# ----------------------------------------------------------------- tests


def test_command_stdout_stderr_exit_status(device, tmp_path):
    result = run(device, tmp_path, command="echo hi; echo err >&2; exit 7")
    assert (result["out_head"], result["err"], result["exit"]) == ("hi\n", "err\n", 7)
    assert "cipher=3des" in result["description"]
    assert "127.0.0.1" in (tmp_path / "known_hosts.ssh1").read_text()


def test_rsa_key_from_ssh_keygen1(device, tmp_path, rsa1_key):
    result = run(device, tmp_path, config={"password": None, "key": str(rsa1_key)},
                 command="echo viakey")
    assert (result["out_head"], result["exit"]) == ("viakey\n", 0)
    device.wait_for_log(r"protocol=ssh1 .*auth=publickey result=success")


def test_wrong_password(device, tmp_path):
    result = run(device, tmp_path, config={"password": "wrong"}, command="echo no")
    assert result["exit"] == 255 and result["out_len"] == 0
    assert "dev: login as 'alice' refused by the device (tried password)" in result["err"]


@pytest.mark.parametrize("cipher", ["blowfish", "des"])
def test_other_ciphers(device, tmp_path, cipher):
    result = run(device, tmp_path, config={"ciphers": [cipher]}, command="echo c")
    assert (result["out_head"], result["exit"]) == ("c\n", 0), result
    assert f"cipher={cipher}" in result["description"]


def test_compression(device, tmp_path):
    result = run(device, tmp_path, config={"compression": 6}, command="cat",
                 stdin_size=1024 * 1024)
    assert "compression=6" in result["description"]
    assert result["out_len"] == 1024 * 1024
    assert result["out_sha256"] == hashlib.sha256(pattern(1024 * 1024)).hexdigest()


def test_pty_and_window_change(device, tmp_path):
    result = run(
        device, tmp_path, pty=[24, 80], resize=[50, 132], resize_after="first line",
        command="stty size; sleep 2; stty size", eof=False,
    )
    assert result["exit"] == 0, result
    lines = result["out_head"].replace("\r", "").split()
    assert lines == ["24", "80", "50", "132"], result


def test_changed_host_key_refused(device, tmp_path):
    known = tmp_path / "known_hosts"
    first = run(device, tmp_path, command="true", known_hosts=known)
    assert first["exit"] == 0
    known_ssh1 = tmp_path / "known_hosts.ssh1"  # SSH-1 pins live beside known_hosts
    pinned = known_ssh1.read_text().split()
    # the same host now answers with another key: pretend the pinned one differs
    bits, e, n = pinned[1], pinned[2], int(pinned[3])
    known_ssh1.write_text(f"{pinned[0]} {bits} {e} {n + 2}\n")
    result = run(device, tmp_path, command="echo no", known_hosts=known)
    assert result["exit"] == 255 and result["out_len"] == 0
    assert "CHANGED" in result["err"] and result["err"].startswith("sshgateway: dev:")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused(tmp_path):
    port = free_port()
    result = drive({"config": {"name": "dev", "protocol": "ssh1", "host": "127.0.0.1",
                               "port": port, "password": "x", "connect_timeout": 10.0},
                    "known_hosts": str(tmp_path / "kh"), "command": "true"})
    assert result["exit"] == 255
    assert result["err"] == f"sshgateway: dev: cannot connect to 127.0.0.1:{port}: connection refused\r\n"


def test_silent_device_times_out(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepted by the kernel, never answered
        port = listener.getsockname()[1]
        result = drive({"config": {"name": "dev", "protocol": "ssh1", "host": "127.0.0.1",
                                   "port": port, "password": "x", "connect_timeout": 1.5},
                        "known_hosts": str(tmp_path / "kh"), "command": "true"})
    assert result["exit"] == 255
    assert result["err"] == "sshgateway: dev: no session within 1.5 s\r\n"


@pytest.mark.slow
def test_16_mib_byte_identical(device, tmp_path):
    result = run(device, tmp_path, command="cat", stdin_size=BIG, deadline=100)
    assert result["exit"] == 0, result["err"]
    assert result["out_len"] == BIG
    assert result["out_sha256"] == hashlib.sha256(pattern(BIG)).hexdigest()


def test_key_files_from_real_tools(tmp_path, rsa1_key):
    from protocols.ssh1 import keyfile, keys

    tools = require_peer("puttygen")
    putty = tmp_path / "putty_key"
    subprocess.run(
        [tools["puttygen"], "-t", "rsa1", "-b", "1024", "-o", str(putty),
         "--new-passphrase", "/dev/null"],
        check=True, capture_output=True, timeout=120,
    )
    for path in (putty, rsa1_key):
        key, _comment = keyfile.load_private_key(path.read_bytes())
        bits, e, n = Path(str(path) + ".pub").read_text().split()[:3] if path == rsa1_key else (
            None, None, None)
        if bits is not None:
            assert keys.public_numbers(key) == (int(e), int(n))
        # the key really decrypts what its public half encrypts (a challenge round trip)
        e2, n2 = keys.public_numbers(key)
        assert keys.decrypt_challenge(key, keys.encrypt_challenge(b"c" * 32, e2, n2)) == b"c" * 32
