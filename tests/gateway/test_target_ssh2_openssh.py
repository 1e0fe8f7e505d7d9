"""The SSH-2 upstream target against a real OpenSSH sshd on loopback, with a private
reactor driven for bounded time: exec, exit status and signal, stderr, key, password and
keyboard-interactive logins, pty and window change, host key pinning, connection
failures, legacy algorithms, 16 MiB each way, flow control."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gateway.known_hosts import KnownHosts
from gateway.targets import TargetConfig
from gateway.targets.ssh2 import SSH2Target
from protocols.session import PtyRequest, SessionRequest, WindowSize
from protocols.ssh2.client_channel import LOCAL_WINDOW
from protocols.ssh2.rekey import RekeyingTransport
from tests.support.doubles import FakeProducer, FakeSessionClient
from tests.support.sshd import (
    OpenSSHServer,
    close_reactor,
    free_port,
    fresh_reactor,
    keygen,
    run_until,
    silent_listener,
)

pytestmark = pytest.mark.peer
TIMEOUT = 30


class Feeder(FakeProducer):
    """The front end's input: writes ``data`` in chunks while the bridge lets it."""

    def __init__(self, session, data: bytes, chunk: int = 64 * 1024) -> None:
        super().__init__()
        self.session = session
        self.data = memoryview(data)
        self.chunk = chunk
        session.registerProducer(self, True)

    def stopProducing(self) -> None:
        super().stopProducing()
        self.data = memoryview(b"")

    def step(self) -> None:
        while not self.paused and self.data:
            piece, self.data = self.data[: self.chunk], self.data[self.chunk :]
            self.session.write_stdin(bytes(piece))
            if not self.data:
                self.session.close_stdin()
                return
            break


@pytest.fixture(scope="module")
def user_key(tmp_path_factory) -> Path:
    return keygen(tmp_path_factory.mktemp("user") / "id_ed25519")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory, user_key):
    # Re-keying every 4 MiB: the 16 MiB transfer goes through several key exchanges.
    with OpenSSHServer(
        tmp_path_factory.mktemp("sshd"),
        [Path(str(user_key) + ".pub")],
        extra_config="RekeyLimit 4M\n",
    ) as s:
        yield s


@pytest.fixture
def reactor():
    r = fresh_reactor()
    yield r
    close_reactor(r)


def config(port: int, key: Path | None, **extra) -> TargetConfig:
    return TargetConfig(
        name="dev",
        protocol="ssh2",
        host="127.0.0.1",
        port=port,
        username="root",
        key=key,
        connect_timeout=extra.pop("connect_timeout", 20.0),
        **extra,
    )


def run(reactor, target, request, stdin: bytes | None = None, until=None):
    client = FakeSessionClient()
    session = target.open_session("alice", request, client)
    if stdin is not None:
        session.write_stdin(stdin)
        session.close_stdin()
    assert run_until(reactor, until or (lambda: client.exit is not None), TIMEOUT)
    return client, session


def exec_request(command: bytes, pty: PtyRequest | None = None) -> SessionRequest:
    return SessionRequest(command=command, pty=pty)


def test_exec_stdout_stderr_exit_status(reactor, sshd, user_key, tmp_path):
    target = SSH2Target(reactor, config(sshd.port, user_key), KnownHosts(tmp_path / "kh"))
    client, session = run(
        reactor, target, exec_request(b"cat; echo oops >&2; exit 7"), stdin=b"hello\n"
    )
    assert bytes(client.out) == b"hello\n"
    assert bytes(client.err) == b"oops\n"
    assert client.exit.status == 7
    assert client.eof
    assert session.stats.bytes_from_upstream == len(b"hello\noops\n")


def test_exit_signal(reactor, sshd, user_key, tmp_path):
    target = SSH2Target(reactor, config(sshd.port, user_key), KnownHosts(tmp_path / "kh"))
    client, _ = run(reactor, target, exec_request(b"kill -TERM $$"))
    assert client.exit.signal == "TERM"
    assert client.exit.status is None


def test_rsa_user_key_signs_with_sha2(reactor, tmp_path):
    key = keygen(tmp_path / "id_rsa", "rsa")
    with OpenSSHServer(tmp_path / "sshd", [Path(str(key) + ".pub")]) as server:
        target = SSH2Target(reactor, config(server.port, key), KnownHosts(tmp_path / "kh"))
        client, _ = run(reactor, target, exec_request(b"echo ok"))
    assert bytes(client.out) == b"ok\n"
    assert client.exit.status == 0


def test_wrong_key_is_refused(reactor, sshd, tmp_path):
    other = keygen(tmp_path / "id_other")
    target = SSH2Target(reactor, config(sshd.port, other), KnownHosts(tmp_path / "kh"))
    client, _ = run(reactor, target, exec_request(b"true"))
    assert client.exit.status == 255
    assert b"authentication refused by upstream" in client.err


def test_pty_and_window_change(reactor, sshd, user_key, tmp_path):
    target = SSH2Target(reactor, config(sshd.port, user_key), KnownHosts(tmp_path / "kh"))
    pty = PtyRequest(term="xterm", size=WindowSize(rows=24, cols=80), modes=((53, 0),))
    client = FakeSessionClient()
    session = target.open_session(
        "alice", exec_request(b"stty size; tty; read x; stty size", pty), client
    )
    assert run_until(reactor, lambda: b"/dev/pts" in client.out, TIMEOUT)
    assert b"24 80" in client.out
    session.resize(WindowSize(rows=50, cols=132))
    session.write_stdin(b"go\r")
    assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
    assert b"50 132" in client.out
    assert b"go" not in client.out  # ECHO (opcode 53) off was passed on
    assert client.exit.status == 0


def test_accept_new_then_pinned_then_changed_key_refused(reactor, user_key, tmp_path):
    known = KnownHosts(tmp_path / "state" / "known_hosts")
    with OpenSSHServer(tmp_path / "sshd", [Path(str(user_key) + ".pub")]) as server:
        target = SSH2Target(reactor, config(server.port, user_key), known)
        client, _ = run(reactor, target, exec_request(b"echo first"))
        assert client.exit.status == 0
        lines = (tmp_path / "state" / "known_hosts").read_text().splitlines()
        assert lines == [f"[127.0.0.1]:{server.port} " + " ".join(server.host_public().split()[:2])]
        assert (tmp_path / "state" / "known_hosts").stat().st_mode & 0o777 == 0o600
        client, _ = run(reactor, target, exec_request(b"echo again"))
        assert bytes(client.out) == b"again\n"
        assert len((tmp_path / "state" / "known_hosts").read_text().splitlines()) == 1

        server.stop()
        server.new_host_keys()
        server.start()
        client, _ = run(reactor, target, exec_request(b"echo never"))
    assert client.out == b""
    assert client.exit.status == 255
    err = bytes(client.err).decode()
    assert f"host key for 127.0.0.1:{server.port} has CHANGED" in err
    assert "known_hosts:1" in err
    assert "SHA256:" in err


def test_strict_unknown_host_refused(reactor, sshd, user_key, tmp_path):
    target = SSH2Target(
        reactor, config(sshd.port, user_key, host_key="strict"), KnownHosts(tmp_path / "kh")
    )
    client, _ = run(reactor, target, exec_request(b"echo never"))
    assert client.exit.status == 255
    assert b"is not known" in client.err
    assert not (tmp_path / "kh").exists()


def test_fingerprint_policy(reactor, sshd, user_key, tmp_path):
    import base64

    blob = base64.b64decode(sshd.host_public().split()[1])
    fp = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    target = SSH2Target(
        reactor, config(sshd.port, user_key, host_key=fp), KnownHosts(tmp_path / "kh")
    )
    client, _ = run(reactor, target, exec_request(b"echo pinned"))
    assert bytes(client.out) == b"pinned\n"


def test_connection_refused(reactor, user_key, tmp_path):
    target = SSH2Target(reactor, config(free_port(), user_key), KnownHosts(tmp_path / "kh"))
    client, _ = run(reactor, target, exec_request(b"true"))
    assert client.exit.status == 255
    assert b"dev: connection refused" in client.err


def test_silent_upstream_times_out(reactor, user_key, tmp_path):
    with silent_listener() as port:
        target = SSH2Target(
            reactor, config(port, user_key, connect_timeout=1.0), KnownHosts(tmp_path / "kh")
        )
        client, _ = run(reactor, target, exec_request(b"true"))
        # The canceller dropped our half of the connection.
        assert run_until(reactor, lambda: set(reactor.getReaders()) <= {reactor.waker}, 5)
    assert client.exit.status == 255
    assert b"no session within 1 s" in client.err


def test_reset_mid_session(reactor, sshd, user_key, tmp_path):
    target = SSH2Target(reactor, config(sshd.port, user_key), KnownHosts(tmp_path / "kh"))
    client = FakeSessionClient()
    target.open_session("alice", exec_request(b"echo started; sleep 1; kill -9 $PPID"), client)
    assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
    assert bytes(client.out) == b"started\n"
    assert client.exit.status == 255
    assert client.err == b"sshgateway: dev: connection reset mid-session\r\n"


@pytest.mark.slow
def test_16_mib_each_way_byte_identical(reactor, sshd, user_key, tmp_path):
    target = SSH2Target(reactor, config(sshd.port, user_key), KnownHosts(tmp_path / "kh"))
    data = os.urandom(16 * 1024 * 1024)
    client = FakeSessionClient()
    session = target.open_session("alice", exec_request(b"cat"), client)
    feeder = Feeder(session, data)

    def done() -> bool:
        feeder.step()
        return client.exit is not None

    assert run_until(reactor, done, 120)
    assert client.exit.status == 0
    assert len(client.out) == len(data)
    assert hashlib.sha256(client.out).digest() == hashlib.sha256(data).digest()
    assert feeder.pauses > 0  # the upstream's window held the input back


def test_paused_front_end_stops_upstream_output(reactor, sshd, user_key, tmp_path):
    target = SSH2Target(reactor, config(sshd.port, user_key), KnownHosts(tmp_path / "kh"))
    client = FakeSessionClient()
    session = target.open_session("alice", exec_request(b"head -c 8388608 /dev/zero"), client)
    assert run_until(reactor, lambda: len(client.out) > 0, TIMEOUT)
    session.pauseProducing()  # what the front end does when its client stops reading
    run_until(reactor, lambda: False, 1.0)
    held = len(client.out)
    run_until(reactor, lambda: False, 0.5)
    assert len(client.out) == held  # nothing more once the granted window is used up
    assert held < 2 * LOCAL_WINDOW + 1024 * 1024
    session.resumeProducing()
    assert run_until(reactor, lambda: client.exit is not None, 60)
    assert len(client.out) == 8 * 1024 * 1024
    assert client.exit.status == 0


def test_legacy_algorithms_when_listed(reactor, user_key, tmp_path):
    # An old device: group1 key exchange, CBC, HMAC-SHA1, an ssh-rsa host key.
    legacy = (
        "KexAlgorithms diffie-hellman-group1-sha1\nCiphers aes128-cbc\nMACs hmac-sha1\n"
        "HostKeyAlgorithms ssh-rsa\n"
    )
    with OpenSSHServer(
        tmp_path / "sshd", [Path(str(user_key) + ".pub")], ("rsa",), legacy
    ) as server:
        modern = SSH2Target(reactor, config(server.port, user_key), KnownHosts(tmp_path / "kh"))
        client, _ = run(reactor, modern, exec_request(b"echo never"))
        assert client.exit.status == 255
        assert b"key exchange with upstream failed" in client.err

        target = SSH2Target(
            reactor,
            config(
                server.port,
                user_key,
                kex=("diffie-hellman-group1-sha1",),
                ciphers=("aes128-cbc",),
                macs=("hmac-sha1",),
                host_key_algorithms=("ssh-rsa",),
            ),
            KnownHosts(tmp_path / "kh"),
        )
        client = FakeSessionClient()
        session = target.open_session("alice", exec_request(b"cat"), client)
        assert run_until(reactor, lambda: session.upstream is not None, TIMEOUT)
        assert session.upstream.description == (
            f"ssh2 127.0.0.1:{server.port} kex=diffie-hellman-group1-sha1 hostkey=ssh-rsa "
            "cipher=aes128-cbc mac=hmac-sha1 strict_kex=yes"
        )
        session.write_stdin(b"old device\n")
        session.close_stdin()
        assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
    assert bytes(client.out) == b"old device\n"
    assert client.exit.status == 0


def test_concurrent_first_connections_record_the_host_once(reactor, sshd, user_key, tmp_path):
    path = tmp_path / "kh"
    targets = [SSH2Target(reactor, config(sshd.port, user_key), KnownHosts(path)) for _ in range(3)]
    clients = [FakeSessionClient() for _ in targets]
    for target, client in zip(targets, clients, strict=True):
        target.open_session("alice", exec_request(b"echo hi"), client)
    assert run_until(reactor, lambda: all(c.exit is not None for c in clients), TIMEOUT)
    assert [c.exit.status for c in clients] == [0, 0, 0]
    assert len(path.read_text().splitlines()) == 1


ROOT_PASSWORD = "upstream pw 42"


@pytest.mark.parametrize(
    ("auth_config", "pam"),
    [
        ("PasswordAuthentication yes\n", False),
        # A device offering only keyboard-interactive (through PAM, pam_unix).
        ("UsePAM yes\nPasswordAuthentication no\nKbdInteractiveAuthentication yes\n", True),
    ],
    ids=["password", "keyboard-interactive"],
)
def test_password_logins(reactor, tmp_path, auth_config, pam):
    with OpenSSHServer(
        tmp_path / "sshd", [], extra_config=auth_config, root_password=ROOT_PASSWORD, pam=pam
    ) as server:
        known = KnownHosts(tmp_path / "kh")
        stored = SSH2Target(reactor, config(server.port, None, password=ROOT_PASSWORD), known)
        client, _ = run(reactor, stored, exec_request(b"echo in; exit 5"))
        assert (bytes(client.out), client.exit.status) == (b"in\n", 5), bytes(client.err)

        passthrough = SSH2Target(
            reactor, config(server.port, None, credentials="pass-through"), known
        )
        client = FakeSessionClient()
        passthrough.open_session(
            "alice", exec_request(b"echo through"), client, password=ROOT_PASSWORD
        )
        assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
        assert bytes(client.out) == b"through\n"

        wrong = SSH2Target(reactor, config(server.port, None, password="nope"), known)
        client, _ = run(reactor, wrong, exec_request(b"echo never"))
    assert client.exit.status == 255
    assert b"authentication refused by upstream" in client.err


@pytest.mark.parametrize(
    ("ciphers", "macs", "expected"),
    [
        ((), (), "cipher=aes256-gcm@openssh.com mac=implicit"),
        (("aes128-gcm@openssh.com",), (), "cipher=aes128-gcm@openssh.com mac=implicit"),
        (("chacha20-poly1305@openssh.com",), (), "cipher=chacha20-poly1305@openssh.com mac=implicit"),
        (("aes128-ctr",), (), "cipher=aes128-ctr mac=hmac-sha2-512-etm@openssh.com"),
        (("aes256-ctr",), ("hmac-sha2-256",), "cipher=aes256-ctr mac=hmac-sha2-256"),
    ],
)  # fmt: skip
def test_ciphers_against_openssh(reactor, sshd, user_key, tmp_path, ciphers, macs, expected):
    target = SSH2Target(
        reactor,
        config(sshd.port, user_key, ciphers=ciphers, macs=macs),
        KnownHosts(tmp_path / "kh"),
    )
    data = os.urandom(1024 * 1024 + 13)
    client = FakeSessionClient()
    session = target.open_session("alice", exec_request(b"cat"), client)
    assert run_until(reactor, lambda: session.upstream is not None, TIMEOUT)
    assert session.upstream.description.endswith(f"{expected} strict_kex=yes")
    assert "kex=curve25519-sha256 " in session.upstream.description  # sshd 9.2: no ML-KEM
    session.write_stdin(data)
    session.close_stdin()
    assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
    assert bytes(client.out) == data


def test_client_initiated_re_keys_against_openssh(reactor, sshd, user_key, tmp_path, monkeypatch):
    """The gateway's client starts key exchanges itself (every 256 KiB here) and sshd
    follows, with strict key exchange restarting the counters each time."""
    monkeypatch.setattr(RekeyingTransport, "rekey_limit", 256 * 1024)
    target = SSH2Target(reactor, config(sshd.port, user_key), KnownHosts(tmp_path / "kh"))
    data = os.urandom(3 * 1024 * 1024 + 7)
    client = FakeSessionClient()
    session = target.open_session("alice", exec_request(b"cat"), client)
    assert run_until(reactor, lambda: session.upstream is not None, TIMEOUT)
    transport_ = session.upstream.channel.attempt.transport
    session.write_stdin(data)
    session.close_stdin()
    assert run_until(reactor, lambda: client.exit is not None, TIMEOUT)
    assert bytes(client.out) == data
    assert transport_.key_exchanges >= 10
