"""The SSH-2 front end against real OpenSSH and PuTTY clients, without the gateway:
a subprocess serves it with the in-memory tests' fake portal and target."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.peers import require_peer

pytestmark = pytest.mark.peer
REPO = Path(__file__).resolve().parents[2]


class PeerServer:
    def __init__(self, pubkey: Path, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        # The log goes to a file: a pipe nobody reads would block the server when full.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.ssh2.peer_server", str(pubkey), *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            raise RuntimeError("peer server did not start:\n" + self.stop())
        self.port = int(line.split()[1])

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        return text


@pytest.fixture(scope="module")
def user_key(tmp_path_factory) -> Path:
    tools = require_peer("ssh-keygen")
    path = tmp_path_factory.mktemp("ssh2-peer") / "id_ed25519"
    subprocess.run([tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, timeout=60)
    return path


@pytest.fixture
def server(request, user_key):
    args = getattr(request, "param", ())
    srv = PeerServer(Path(str(user_key) + ".pub"), *args)
    yield srv
    srv.stop()


def ssh(srv: PeerServer, key: Path | None, *args: str, options: tuple[str, ...] = ()):
    tools = require_peer("ssh")
    argv = [tools["ssh"], "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-p", str(srv.port),
            *options]
    if key is not None:
        argv += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    return argv + ["alice@127.0.0.1", *args]


def test_openssh_exec_behind_199_banner(server, user_key):
    r = subprocess.run(ssh(server, user_key, "echo hi", options=("-o", "BatchMode=yes")),
                       capture_output=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith(b"command=b'echo hi'")
    assert r.stderr == b"err\n"


@pytest.mark.parametrize("kex", ["curve25519-sha256", "diffie-hellman-group-exchange-sha256"])
@pytest.mark.parametrize("hostkey", ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"])
def test_openssh_each_default_kex_and_host_key(server, user_key, kex, hostkey):
    options = ("-o", "BatchMode=yes", "-o", f"KexAlgorithms={kex}",
               "-o", f"HostKeyAlgorithms={hostkey}")
    r = subprocess.run(ssh(server, user_key, "x", options=options), capture_output=True, timeout=60)
    assert r.returncode == 3, r.stderr


def test_openssh_pty_env_and_exit_signal(server, user_key):
    options = ("-o", "BatchMode=yes", "-o", "SendEnv=LANG FOO", "-tt")
    env = dict(os.environ, LANG="C.UTF-8", FOO="bar")
    r = subprocess.run(ssh(server, user_key, "x", options=options), capture_output=True,
                       timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert b"pty=PtyRequest(term=" in r.stdout
    assert b"env={'LANG': 'C.UTF-8'}" in r.stdout
    r = subprocess.run(ssh(server, user_key, "signal", options=("-o", "BatchMode=yes")),
                       capture_output=True, timeout=60)
    assert r.returncode == 255  # how OpenSSH reports an exit-signal


@pytest.mark.parametrize("server", [("all",)], indirect=True)
def test_openssh_partial_success_key_then_password(server, user_key):
    tools = require_peer("sshpass")
    argv = ssh(server, user_key, "x", options=("-o", "PreferredAuthentications=publickey,password"))
    r = subprocess.run([tools["sshpass"], "-p", "secret", *argv], capture_output=True, timeout=60)
    assert r.returncode == 3, r.stderr


def plink(srv: PeerServer, user: str, password: str):
    tools = require_peer("plink")
    keyscan = require_peer("ssh-keyscan", "ssh-keygen")
    scan = subprocess.run([keyscan["ssh-keyscan"], "-p", str(srv.port), "-t", "ed25519", "127.0.0.1"],
                          capture_output=True, text=True, timeout=60).stdout
    fp = subprocess.run([keyscan["ssh-keygen"], "-lf", "-"], input=scan, capture_output=True,
                        text=True, timeout=60).stdout.split()[1]
    return subprocess.run(
        [tools["plink"], "-ssh", "-2", "-batch", "-hostkey", fp, "-P", str(srv.port),
         "-pw", password, f"{user}@127.0.0.1", "x"],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def test_plink_password_and_identical_failures(server):
    ok = plink(server, "alice", "secret")
    assert ok.returncode == 3, ok.stderr
    assert ok.stdout.startswith(b"command=b'x'")
    wrong = plink(server, "alice", "wrong")
    unknown = plink(server, "mallory", "wrong")
    assert wrong.returncode == unknown.returncode != 0
    assert wrong.stderr == unknown.stderr
