"""The SSH-1 upstream target against a real SSH-1 server over loopback TCP: the
gateway's own SSH-1 server in a second process (GatewayProcess) stands in for the
legacy device (no other SSH-1 server is packaged), with keys made by ``ssh-keygen1``.

Each case runs our target on a real reactor in a short-lived subprocess (a reactor
cannot be restarted inside pytest), bounded by a deadline, and reports JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway_process import REPO, GatewayProcess
from tests.integration.conftest import PASSWORD, base_config, sshgateway_cli
from tests.peers import require_peer

pytestmark = pytest.mark.peer

BIG = 16 * 1024 * 1024


def pattern(size: int) -> bytes:
    """Deterministic, incompressible-looking test data."""
    out = bytearray()
    block = hashlib.sha256(b"sshgateway").digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:size])


# ----------------------------------------------------------------- the driver process


def main() -> None:  # pragma: no cover - runs in the subprocess
    from twisted.internet import reactor
    from zope.interface import implementer

    from gateway.known_hosts import KnownHosts
    from gateway.targets import TargetConfig
    from gateway.targets.ssh1 import SSH1Target
    from protocols.session import ISessionClient, PtyRequest, SessionRequest, WindowSize

    spec = json.loads(sys.argv[1])
    config = dict(spec["config"])
    config["ciphers"] = tuple(config.get("ciphers", ()))
    if config.get("key"):
        config["key"] = Path(config["key"])
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Config(TargetConfig):  # TargetConfig has no compression key (yet)
        compression: int = 0

    target = SSH1Target(reactor, Config(**config), KnownHosts(spec["known_hosts"]))
    result: dict = {"out_len": 0, "err": "", "exit": None, "description": None}
    digest = hashlib.sha256()
    head = bytearray()

    @implementer(ISessionClient)
    class Client:
        def write_stdout(self, data: bytes) -> None:
            digest.update(data)
            result["out_len"] += len(data)
            if len(head) < 4096:
                head.extend(data[: 4096 - len(head)])

        def write_stderr(self, data: bytes) -> None:
            result["err"] += data.decode("utf-8", "replace")

        def send_eof(self) -> None:
            pass

        def exited(self, info) -> None:
            result["exit"] = info.as_status()
            if bridge.upstream is not None:
                result["description"] = bridge.upstream.description
            reactor.callLater(0, reactor.stop)

        def registerProducer(self, producer, streaming) -> None:
            pass

        def unregisterProducer(self) -> None:
            pass

    class Feeder:
        """Client input, sent while the bridge lets us (it pauses us on back-pressure)."""

        def __init__(self, data: bytes) -> None:
            self.data = memoryview(data)
            self.pos = 0
            self.paused = False
            self.pauses = 0

        def pauseProducing(self) -> None:
            self.paused = True
            self.pauses += 1

        def resumeProducing(self) -> None:
            self.paused = False
            reactor.callLater(0, self.run)

        def stopProducing(self) -> None:
            self.paused = True

        def run(self) -> None:
            while not self.paused and self.pos < len(self.data):
                bridge.write_stdin(bytes(self.data[self.pos : self.pos + 65536]))
                self.pos += 65536
            if self.pos >= len(self.data) and spec.get("eof", True):
                if not getattr(self, "eof_sent", False):
                    self.eof_sent = True
                    bridge.close_stdin()

    pty = None
    if spec.get("pty"):
        rows, cols = spec["pty"]
        pty = PtyRequest("xterm", WindowSize(rows, cols), ((128, 38400),))
    command = spec.get("command")
    request = SessionRequest(command=command.encode() if command is not None else None, pty=pty)
    bridge = target.open_session("alice", request, Client(), password=spec.get("gateway_password"))
    stdin = pattern(spec["stdin_size"]) if "stdin_size" in spec else spec.get("stdin", "").encode()
    feeder = Feeder(stdin)
    bridge.registerProducer(feeder, True)
    reactor.callLater(0, feeder.run)
    if spec.get("resize"):
        rows, cols = spec["resize"]
        reactor.callLater(spec.get("resize_after", 1.0), bridge.resize, WindowSize(rows, cols))

    def deadline() -> None:
        result["err"] += "DRIVER DEADLINE"
        reactor.stop()

    reactor.callLater(spec.get("deadline", 60), deadline)
    reactor.run()
    result["out_sha256"] = digest.hexdigest()
    result["out_head"] = head.decode("utf-8", "replace")
    result["feeder_pauses"] = feeder.pauses
    print(json.dumps(result))


def drive(spec: dict, timeout: float = 120) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.ssh1.test_client_peers import main; main()",
         json.dumps(spec)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    authorized = d / "authorized_keys"
    authorized.write_text(Path(str(rsa1_key) + ".pub").read_text())
    authorized.chmod(0o600)
    password_hash = sshgateway_cli("hash-password", stdin=PASSWORD + "\n").stdout.strip()
    config = base_config(password_hash, authorized, ssh1={"ciphers": ["3des", "blowfish", "des"]})
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
    assert "127.0.0.1" in (tmp_path / "known_hosts").read_text()


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
        device, tmp_path, pty=[24, 80], resize=[50, 132], resize_after=1.0,
        command="stty size; sleep 2; stty size", eof=False,
    )
    assert result["exit"] == 0, result
    lines = result["out_head"].replace("\r", "").split()
    assert lines == ["24", "80", "50", "132"], result


def test_changed_host_key_refused(device, tmp_path):
    known = tmp_path / "known_hosts"
    first = run(device, tmp_path, command="true", known_hosts=known)
    assert first["exit"] == 0
    pinned = known.read_text().split()
    # the same host now answers with another key: pretend the pinned one differs
    bits, e, n = pinned[1], pinned[2], int(pinned[3])
    known.write_text(f"{pinned[0]} {bits} {e} {n + 2}\n")
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
