"""The version-exchange dispatcher, in memory: banner, routing, limits, refusals; and
the refusal of a bad identification line over a real socket to a gateway process."""

from __future__ import annotations

import socket
import time

import pytest
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from gateway.dispatch import (
    MAJOR_DIFFERS,
    DispatcherFactory,
    VersionDispatcher,
    classify,
    server_version_line,
)
from protocols.handoff import IHandoffFactory
from tests.support.clients import base_config, hash_password
from tests.support.gateway_process import GatewayProcess


class RecordingProtocol(Protocol):
    def __init__(self, record, server_version, client_version):
        self.record = record
        self.server_version = server_version
        self.client_version = client_version
        self.received = b""
        self.lost = False

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=None):
        self.lost = True


@implementer(IHandoffFactory)
class FakeHandoff:
    def __init__(self):
        self.built: list[RecordingProtocol] = []

    def build_protocol(self, record, server_version, client_version):
        proto = RecordingProtocol(record, server_version, client_version)
        self.built.append(proto)
        return proto


def connect(protocols=("ssh1", "ssh2"), timeout=30.0):
    clock = Clock()
    handoffs = {name: FakeHandoff() for name in protocols}
    factory = DispatcherFactory(handoffs, clock, version_timeout=timeout)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, handoffs, clock


@pytest.mark.parametrize(
    "enabled, expected",
    [
        ({"ssh1", "ssh2"}, b"SSH-1.99-"),
        ({"ssh2"}, b"SSH-2.0-"),
        ({"ssh1"}, b"SSH-1.5-"),
    ],
)
def test_banner_depends_on_enabled_protocols(enabled, expected):
    assert server_version_line(frozenset(enabled)).startswith(expected + b"sshgateway_")


def test_sends_only_its_line_on_connect():
    _, transport, _, _ = connect()
    assert transport.value() == server_version_line(frozenset({"ssh1", "ssh2"})) + b"\r\n"


@pytest.mark.parametrize(
    "line, kind",
    [
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2", "ssh2"),
        (b"SSH-1.99-PuTTY_Release_0.78", "ssh2"),
        (b"SSH-1.5-PuTTY_Release_0.78", "ssh1"),
        (b"SSH-1.3-old", "ssh1"),
        (b"SSH-1.2-ancient", "too-old"),
        (b"SSH-3.0-x", None),
        (b"GET / HTTP/1.1", None),
        (b"SSH-2.0-", None),
        (b"SSH-2.0-OpenSSH-keyscan", "ssh2"),
    ],
)
def test_classify(line, kind):
    assert classify(line) == kind


def test_ssh2_client_handed_over_with_lines_and_rest():
    proto, transport, handoffs, _ = connect()
    proto.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n\x00\x00\x01")
    inner = handoffs["ssh2"].built[0]
    assert inner.client_version == b"SSH-2.0-OpenSSH_9.2"
    assert inner.server_version.startswith(b"SSH-1.99-")
    assert inner.received == b"\x00\x00\x01"
    proto.dataReceived(b"more")
    assert inner.received.endswith(b"more")
    assert inner.record.protocol == "ssh2"
    proto.connectionLost(None)
    assert inner.lost


def test_line_split_across_reads_and_lf_only():
    proto, _, handoffs, _ = connect()
    for byte in b"SSH-1.5-PuTTY\n":
        proto.dataReceived(bytes([byte]))
    assert handoffs["ssh1"].built[0].client_version == b"SSH-1.5-PuTTY"


def test_other_major_version_gets_plain_line():
    proto, transport, handoffs, _ = connect()
    transport.clear()
    proto.dataReceived(b"SSH-3.0-x\r\n")
    assert transport.value() == MAJOR_DIFFERS
    assert transport.disconnecting
    assert not handoffs["ssh2"].built and not handoffs["ssh1"].built


def test_disabled_protocol_refused_readably():
    proto, transport, handoffs, _ = connect(protocols=("ssh2",))
    transport.clear()
    proto.dataReceived(b"SSH-1.5-PuTTY\n")
    assert transport.value() == MAJOR_DIFFERS
    assert transport.disconnecting


def refused_with(data: bytes) -> tuple[bytes, VersionDispatcher]:
    """What the dispatcher answers to ``data`` after its banner (it must close), and the
    dispatcher, for its record."""
    proto, transport, handoffs, _ = connect()
    transport.clear()
    proto.dataReceived(data)
    assert transport.disconnecting
    assert not handoffs["ssh2"].built and not handoffs["ssh1"].built
    return transport.value(), proto


def test_overlong_line_cut_off_before_newline():
    reply, proto = refused_with(b"SSH-2.0-" + b"a" * 300)
    assert reply == MAJOR_DIFFERS
    assert proto.record.close_reason.startswith("identification line longer")


def test_overlong_line_with_newline_refused():
    reply, proto = refused_with(b"SSH-2.0-" + b"a" * 260 + b"\n")
    assert reply == MAJOR_DIFFERS
    assert proto.record.close_reason.startswith("identification line longer")


@pytest.mark.parametrize("line", [b"SSH-2.0-x\x00y\n", b"SSH-1.5-\xff\r\n", b"SSH-2.0-a\tb\n"])
def test_non_printable_refused(line):
    reply, proto = refused_with(line)
    assert reply == MAJOR_DIFFERS
    assert "non-printable" in proto.record.close_reason


def test_every_refusal_reads_the_same():
    """Whatever is wrong with the line, the client reads one plain line before the close
    (OpenSSH prints it: "Protocol major versions differ."), never a silent hang-up."""
    bad_lines = [
        b"SSH-3.0-x\r\n",
        b"GET / HTTP/1.1\r\n",
        b"SSH-1.2-ancient\n",
        b"SSH-2.0-" + b"a" * 300,
        b"SSH-2.0-x\x07\n",
    ]
    assert {refused_with(line)[0] for line in bad_lines} == {MAJOR_DIFFERS}


def test_data_after_a_refusal_is_ignored():
    proto, transport, _, _ = connect()
    transport.clear()
    proto.dataReceived(b"SSH-2.0-" + b"a" * 300)
    proto.dataReceived(b"b" * 300)  # still arriving while the close is under way
    proto.dataReceived(b"SSH-2.0-x\n")
    assert transport.value() == MAJOR_DIFFERS
    assert proto.record.close_reason.startswith("identification line longer")
    assert proto.inner is None


def test_never_ending_banner_times_out():
    proto, transport, _, clock = connect(timeout=10)
    proto.dataReceived(b"SSH-2.0-slow")
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    assert "timeout" in proto.record.close_reason


def test_timer_cancelled_after_handoff():
    proto, transport, handoffs, clock = connect(timeout=10)
    proto.dataReceived(b"SSH-2.0-x\n")
    clock.advance(100)
    assert not transport.disconnecting
    assert not clock.getDelayedCalls()


def test_bytes_counted():
    proto, transport, handoffs, _ = connect()
    proto.dataReceived(b"SSH-2.0-x\nabc")
    handoffs["ssh2"].built[0].transport.write(b"12345")
    record = proto.record
    assert record.bytes_in == len(b"SSH-2.0-x\nabc")
    assert record.bytes_out == len(transport.value())


def exchange_over_tcp(port: int, send: bytes, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """Connect, read the banner line, send ``send``; the banner and everything that comes
    back until the gateway closes (bounded by ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        banner = b""
        while not banner.endswith(b"\n"):
            banner += sock.recv(1)
        sock.sendall(send)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError(f"the gateway did not close; it sent {received!r}")
    return banner, received


def test_bad_lines_refused_readably_over_a_real_socket(tmp_path):
    authorized = tmp_path / "authorized_keys"
    authorized.write_text("")
    authorized.chmod(0o600)
    with GatewayProcess(tmp_path, base_config(hash_password(), authorized)) as gw:
        for line, reason in [
            (b"SSH-2.0-" + b"a" * 300, "identification line longer than 255 bytes"),
            (b"SSH-2.0-x\x00y\r\n", "identification line holds non-printable bytes"),
        ]:
            banner, reply = exchange_over_tcp(gw.port, line)
            assert banner.startswith(b"SSH-1.99-sshgateway_")
            assert reply == MAJOR_DIFFERS
            gw.wait_for_log(f"refusing 127\\.0\\.0\\.1:\\d+ during version exchange: {reason}")
