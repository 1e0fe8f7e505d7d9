"""The SSH-1 upstream target in memory: SSH1Target -> our Twisted SSH-1 client -> the
gateway's own dispatcher and SSH-1 server, joined by twisted.test.iosim, on a
MemoryReactorClock. No sockets, no sleeps."""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim

from gateway.known_hosts import KnownHosts
from protocols.session import ExitInfo, PtyRequest, SessionRequest, WindowSize
from protocols.ssh1 import keyfile, keys
from tests.support.ssh1.minclient import (
    HUGE_EXPONENT_KEY,
    host_key,
    public_key_payload,
    small_key,
    user_key,
)
from tests.support.ssh1.target_rig import Device, Rig, ScriptedDevice


@pytest.fixture
def known_hosts(tmp_path) -> KnownHosts:
    return KnownHosts(tmp_path / "known_hosts")


def test_command_stdout_stderr_exit_status(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts)
    bridge = rig.open(SessionRequest(command=b"echo hi; exit 7"))
    bridge.write_stdin(b"input")
    bridge.close_stdin()
    rig.flush()
    assert bridge.upstream is not None
    target = rig.device.target
    assert target.request.command == b"echo hi; exit 7"
    assert target.stdin == b"input" and target.eof
    assert "cipher=3des" in bridge.upstream.description
    target.client.write_stdout(b"hi\n")
    target.client.write_stderr(b"oops\n")
    target.client.exited(ExitInfo(status=7))
    rig.flush()
    assert (rig.client.out, rig.client.err, rig.client.exit) == (b"hi\n", b"oops\n", ExitInfo(status=7))
    assert rig.client_transport.disconnecting
    assert "192.0.2.1" in (tmp_path / "known_hosts.ssh1").read_text()  # accept-new pinned it


def test_input_before_session_open_is_held_and_delivered(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts)
    bridge = rig.open(SessionRequest(command=b"cat"), connect=False)
    bridge.write_stdin(b"early ")
    bridge.resize(WindowSize(30, 100))
    rig.connect()
    bridge.write_stdin(b"late")
    rig.flush()
    assert rig.device.target.stdin == b"early late"


def test_pty_shell_and_window_change(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts)
    pty = PtyRequest("xterm-256color", WindowSize(24, 80, 0, 0), ((128, 38400), (3, 127), (53, 1)))
    bridge = rig.open(SessionRequest(command=None, pty=pty))
    target = rig.device.target
    assert target.request.command is None
    assert target.request.pty == PtyRequest(
        "xterm-256color", WindowSize(24, 80), ((128, 38400), (3, 127), (53, 1))
    )
    bridge.resize(WindowSize(50, 132, 1, 2))
    rig.flush()
    assert target.sizes == [WindowSize(50, 132, 1, 2)]
    bridge.send_signal("INT")  # SSH-1 has no signals: ignored, connection unharmed
    bridge.write_stdin(b"exit\n")
    rig.flush()
    assert target.stdin == b"exit\n"


def test_rsa_key_login(tmp_path, known_hosts):
    path = tmp_path / "device_key"
    path.write_bytes(keyfile.dump_private_key(user_key(), "gw"))
    rig = Rig(tmp_path, known_hosts, password=None, key=path)
    rig.open(SessionRequest(command=b"id"))
    assert rig.device.target.request.command == b"id"


def test_wrong_password_refused_with_message(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts, password="wrong")
    rig.open(SessionRequest(command=b"id"))
    assert rig.client.exit == ExitInfo(status=255)
    assert rig.client.err == (
        b"sshgateway: dev: login as 'admin' refused by the device (tried password)\r\n"
    )
    assert not rig.device.realm.avatars


def test_pass_through_uses_gateway_password_and_login_name(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts, username=None, password=None, credentials="pass-through")
    rig.open(SessionRequest(command=b"id"), username="admin", password="devpass")
    assert rig.device.target.request.command == b"id"


def test_unlisted_key_then_password(tmp_path, known_hosts):
    path = tmp_path / "other_key"
    path.write_bytes(keyfile.dump_private_key(rsa.generate_private_key(65537, 1024)))
    rig = Rig(tmp_path, known_hosts, key=path)
    rig.open(SessionRequest(command=b"id"))
    assert rig.device.target.request.command == b"id"


@pytest.mark.parametrize("cipher", ["3des", "blowfish", "des"])
def test_each_cipher(tmp_path, known_hosts, cipher):
    rig = Rig(tmp_path, known_hosts, ciphers=(cipher,))
    bridge = rig.open(SessionRequest(command=b"x"))
    assert f"cipher={cipher}" in bridge.upstream.description
    rig.device.target.client.write_stdout(b"z" * 100000)
    rig.flush()
    assert rig.client.out == b"z" * 100000


def test_compression(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts, compression=6)
    bridge = rig.open(SessionRequest(command=b"x"))
    assert "compression=6" in bridge.upstream.description
    bridge.write_stdin(b"a" * 300000)
    rig.flush()
    assert rig.device.target.stdin == b"a" * 300000


def test_changed_host_key_refused_with_warning(tmp_path, known_hosts):
    first = Rig(tmp_path, known_hosts)
    first.open(SessionRequest(command=b"x"))
    assert first.client.exit is None
    other = rsa.generate_private_key(65537, 2048)
    rig = Rig(tmp_path, known_hosts, device=Device(MemoryReactorClock(), host=other))
    rig.open(SessionRequest(command=b"x"))
    assert rig.client.exit == ExitInfo(status=255)
    assert b"CHANGED" in rig.client.err and b"dev:" in rig.client.err
    assert not rig.device.realm.avatars  # no password was ever sent


class FailureLog(list):
    """Logged failures (their tracebacks) and "Unhandled Error" lines."""

    def __call__(self, event: dict) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            self.append(formatEvent(event) or repr(event))


@pytest.fixture
def failures():
    observer = FailureLog()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def test_device_key_openssl_refuses_is_a_clean_failure(tmp_path, known_hosts, failures):
    # Odd 3 <= e < n, 4096-bit modulus: every protocol check passes, but OpenSSL will
    # not encrypt with a public exponent over 64 bits at that size. Before the key was
    # validated, send_session_key raised ValueError out of the protocol ("Unhandled
    # Error") after accept-new had already pinned the useless key.
    device = ScriptedDevice(public_key_payload(host=HUGE_EXPONENT_KEY))
    rig = Rig(tmp_path, known_hosts, device=device)
    rig.open(SessionRequest(command=b"x"))
    assert rig.client.exit == ExitInfo(status=255)
    assert b"dev: " in rig.client.err and b"cannot be used for RSA encryption" in rig.client.err
    assert rig.client.err.count(b"\n") == 1
    assert failures == []
    assert not (tmp_path / "known_hosts.ssh1").exists() and not (tmp_path / "known_hosts").exists()


def test_key_pinned_only_once_the_device_accepted_the_session_key(tmp_path, known_hosts, failures):
    # A device that shows a usable host key but cannot decrypt our session key with it
    # (here: it hangs up) has proved nothing: accept-new must not pin its key.
    rig = Rig(tmp_path, known_hosts, device=ScriptedDevice(public_key_payload()))
    rig.open(SessionRequest(command=b"x"))
    assert rig.client.exit == ExitInfo(status=255)
    assert failures == []
    assert not (tmp_path / "known_hosts.ssh1").exists()
    # The real device (same host key) answers the session key: now it is pinned.
    Rig(tmp_path, known_hosts).open(SessionRequest(command=b"x"))
    e, n = keys.public_numbers(host_key())
    assert (tmp_path / "known_hosts.ssh1").read_text() == f"192.0.2.1 2048 {e} {n}\n"


def test_key_pinned_meanwhile_by_another_process_is_a_change(tmp_path, known_hosts):
    known_hosts._entries = lambda protocol: []  # its view predates the other's pin
    other = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
    KnownHosts(tmp_path / "known_hosts").check_ssh1(
        "192.0.2.1", 22, 2048, other.e, other.n, "accept-new"
    ).record()
    rig = Rig(tmp_path, known_hosts)
    rig.open(SessionRequest(command=b"x"))
    assert rig.client.exit == ExitInfo(status=255)
    assert b"CHANGED" in rig.client.err
    assert not rig.device.realm.avatars  # no password was ever sent
    assert (tmp_path / "known_hosts.ssh1").read_text().count("\n") == 1


def test_strict_unknown_host_refused(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts, host_key="strict")
    rig.open(SessionRequest(command=b"x"))
    assert rig.client.exit == ExitInfo(status=255)
    assert not (tmp_path / "known_hosts").exists() or not (tmp_path / "known_hosts").read_text()


def test_fingerprint_policy(tmp_path, known_hosts):
    e, n = keys.public_numbers(host_key())
    rig = Rig(tmp_path, known_hosts, host_key=keys.ssh1_fingerprint(e, n))
    rig.open(SessionRequest(command=b"x"))
    assert rig.client.exit is None and rig.device.target


def test_connection_refused(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts)
    rig.open(SessionRequest(command=b"x"), connect=False)
    connector = rig.reactor.connectors[-1]
    _host, _port, factory, _timeout, _bind = rig.reactor.tcpClients[-1]
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
    assert rig.client.exit == ExitInfo(status=255)
    assert rig.client.err == b"sshgateway: dev: cannot connect to 192.0.2.1:22: connection refused\r\n"


def test_connect_timeout_while_connecting(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts, connect_timeout=5.0)
    rig.open(SessionRequest(command=b"x"), connect=False)
    rig.reactor.advance(5.0)
    assert rig.client.exit == ExitInfo(status=255)
    assert b"no session within 5 s" in rig.client.err
    assert rig.reactor.connectors[-1].stoppedConnecting


def test_connect_timeout_with_silent_device(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts, connect_timeout=5.0)
    rig.open(SessionRequest(command=b"x"), connect=False)
    host, port, factory, _timeout, _bind = rig.reactor.tcpClients[-1]
    proto = factory.buildProtocol(None)
    transport = iosim.FakeTransport(proto, isServer=False)
    proto.makeConnection(transport)
    rig.reactor.advance(5.0)
    assert rig.client.exit == ExitInfo(status=255)
    assert b"no session within 5 s" in rig.client.err
    assert transport.disconnecting  # dropped at once


def test_device_speaking_only_ssh2(tmp_path, known_hosts):
    reactor = MemoryReactorClock()
    rig = Rig(tmp_path, known_hosts, device=Device(reactor, protocols=("ssh2",)))
    rig.open(SessionRequest(command=b"x"))
    assert b"device speaks only SSH-2" in rig.client.err
    assert rig.client.exit == ExitInfo(status=255)


def test_device_disconnect_mid_session(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts)
    rig.open(SessionRequest(command=b"x"))
    rig.server_transport.loseConnection()
    rig.flush()
    assert rig.client.exit == ExitInfo(status=255)
    assert rig.client.err == (
        b"sshgateway: 192.0.2.1:22: connection to the device lost: closed before an exit status\r\n"
    )


def test_client_close_disconnects_device(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts)
    bridge = rig.open(SessionRequest(command=b"x"))
    bridge.close()
    rig.flush()
    assert rig.client_transport.disconnecting
    assert rig.device.target.closed


def test_back_pressure_both_ways(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts)
    bridge = rig.open(SessionRequest(command=b"x"))
    proto = rig.protocol
    calls = []
    rig.client_transport.pauseProducing = lambda: calls.append("pause")
    rig.client_transport.resumeProducing = lambda: calls.append("resume")
    # the gateway's client cannot take more: we stop reading the device
    bridge.pauseProducing()
    assert calls == ["pause"]
    rig.device.target.client.write_stdout(b"held")
    rig.flush()
    assert rig.client.out == b""
    bridge.resumeProducing()
    rig.flush()
    assert calls == ["pause", "resume"]
    assert rig.client.out == b"held"
    # the device's socket is full: the gateway's client input is paused
    producer = FakeInput()
    bridge.registerProducer(producer, True)
    proto._gate.pauseProducing()
    assert producer.paused
    proto._gate.resumeProducing()
    assert not producer.paused


class FakeInput:
    paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass


def test_unknown_cipher_in_config_refused(tmp_path, known_hosts):
    with pytest.raises(ValueError, match="unknown ssh1 cipher 'aes128-ctr'"):
        Rig(tmp_path, known_hosts, ciphers=("aes128-ctr",))


def test_bad_key_file_refused(tmp_path, known_hosts):
    path = tmp_path / "k"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="targets.dev: key .*not an SSH-1 private key"):
        Rig(tmp_path, known_hosts, key=path)
    with pytest.raises(ValueError, match="cannot read key"):
        Rig(tmp_path, known_hosts, key=tmp_path / "missing")


def test_options_repr_hides_password(tmp_path, known_hosts):
    rig = Rig(tmp_path, known_hosts)
    assert "devpass" not in repr(rig.target.options("alice", None))
    assert replace(rig.config, password="x").password == "x"


def test_dual_stack_device_announcing_1_99(tmp_path, known_hosts):
    reactor = MemoryReactorClock()
    rig = Rig(tmp_path, known_hosts, device=Device(reactor, protocols=("ssh1", "ssh2")))
    rig.open(SessionRequest(command=b"x"))
    assert rig.client.exit is None
    assert rig.protocol.server_version.startswith(b"SSH-1.99-")
    assert rig.device.target.request.command == b"x"


# ---------------------------------------------------------------- small keys (issue 15)


def legacy_device(host_bits: int, server_bits: int) -> Device:
    """The gateway's SSH-1 server with the small keys of old firmware."""
    host = small_key(host_bits) if host_bits < 1024 else host_key_1024()
    settings_bits = host_bits - 256 if host_bits >= 768 else host_bits + 256
    return Device(MemoryReactorClock(), host=host, server=small_key(server_bits),
                  server_key_bits=settings_bits)  # fmt: skip


@functools.cache
def host_key_1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)


class Captured(list):
    def __call__(self, event: dict) -> None:
        self.append(formatEvent(event))


@pytest.fixture
def logged():
    observer = Captured()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


class FlowSink:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def write_flow(self, flow) -> None:
        flow.close()
        self.records.append(flow.to_dict())


@pytest.mark.parametrize("host_bits, server_bits", [(1024, 384), (768, 512), (512, 384)])
def test_device_with_small_keys_reached_with_warning_and_flow_mark(
    tmp_path, known_hosts, logged, host_bits, server_bits
):
    rig = Rig(tmp_path, known_hosts, device=legacy_device(host_bits, server_bits))
    flows = FlowSink()
    rig.target.flows = flows
    bridge = rig.open(SessionRequest(command=b"echo hi"))
    assert bridge.upstream is not None and rig.client.exit is None
    assert f"host_key_bits={host_bits} server_key_bits={server_bits}" in bridge.upstream.description
    warned = [line for line in logged if "accepted for a legacy device" in line]
    assert any(f"weak {server_bits}-bit server key" in line for line in warned), logged
    assert any(f"weak {host_bits}-bit host key" in line for line in warned), logged
    rig.device.target.client.exited(ExitInfo(status=0))
    rig.flush()
    rig.client_transport.loseConnection()
    rig.flush()
    [record] = flows.records
    negotiated = record["negotiated"]
    assert (negotiated["host_key_bits"], negotiated["server_key_bits"]) == (host_bits, server_bits)
    assert f"weak {server_bits}-bit server key" in negotiated["warnings"]
    assert f"weak {host_bits}-bit host key" in negotiated["warnings"]


@pytest.mark.parametrize(
    "host_bits, server_bits, floor, words",
    [
        (1024, 384, 512, b"the device's server key has 384 bits, under this target's min_key_bits (512)"),
        (768, 1024, 1024, b"the device's host key has 768 bits, under this target's min_key_bits (1024)"),
        (512, 384, 1024, b"the device's server key has 384 bits and its host key 512 bits, under "
         b"this target's min_key_bits (1024)"),
    ],
)
def test_keys_under_min_key_bits_refused_with_the_reason(
    tmp_path, known_hosts, host_bits, server_bits, floor, words
):
    rig = Rig(tmp_path, known_hosts, device=legacy_device(host_bits, server_bits),
              min_key_bits=floor)  # fmt: skip
    rig.open(SessionRequest(command=b"x"))
    assert rig.client.exit == ExitInfo(status=255)
    assert rig.client.err.startswith(b"sshgateway: dev: " + words), rig.client.err
    assert rig.client.err.count(b"\n") == 1
    assert not rig.device.realm.avatars  # no password was sent
    assert not (tmp_path / "known_hosts.ssh1").exists()  # nor the key pinned


def test_default_floor_takes_what_putty_takes(tmp_path, known_hosts):
    assert Rig(tmp_path, known_hosts).config.min_key_bits == 256
