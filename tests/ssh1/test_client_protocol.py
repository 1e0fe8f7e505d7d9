"""The Twisted SSH-1 client protocol alone, on a StringTransport: version exchange,
host key verified before the session key, hostile servers, fuzzing, close behaviour."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from protocols.session import ExitInfo, SessionRequest
from protocols.ssh1 import keys
from protocols.ssh1 import messages as m
from protocols.ssh1.client import SSH1ClientError, SSH1ClientOptions, SSH1ClientProtocol
from protocols.ssh1.packet import PacketDecoder
from protocols.ssh1.server_connection import ServerConnection
from tests.support.doubles import FakeUpstreamSink
from tests.support.ssh1.minclient import FUZZ_EXAMPLES, host_key, server_key, small_key


class Refused(Exception):
    pass


def make(verify=None, command=b"id", **options):
    seen = []

    def default_verify(e, n):
        seen.append((e, n))

    opts = SSH1ClientOptions(
        username="admin", verify_host_key=verify or default_verify, password="pw",
        software_version="9.9", peer="dev:22", **options,
    )
    sink = FakeUpstreamSink()
    proto = SSH1ClientProtocol(opts, SessionRequest(command=command), sink)
    transport = StringTransport()
    proto.makeConnection(transport)
    results = []
    proto.opened.addBoth(results.append)
    return proto, transport, sink, results, seen


def error_of(results) -> str:
    [failure] = results
    return str(failure.value)


@pytest.mark.parametrize(
    "line, ours",
    [(b"SSH-1.5-dev\n", b"SSH-1.5-"), (b"SSH-1.99-dev\r\n", b"SSH-1.5-"),
     (b"SSH-1.3-old\n", b"SSH-1.3-")],
)
def test_version_lines_accepted(line, ours):
    proto, transport, _sink, results, _ = make()
    proto.dataReceived(line)
    assert transport.value() == ours + b"sshgateway_9.9\n"
    assert proto.core is not None and not results


def test_banner_lines_before_identification_tolerated():
    proto, transport, _sink, results, _ = make()
    proto.dataReceived(b"Welcome\r\nto the switch\n")
    proto.dataReceived(b"SSH-1.5-dev\n")
    assert transport.value().startswith(b"SSH-1.5-")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"SSH-2.0-OpenSSH_9\r\n", "device speaks only SSH-2 (SSH-2.0-OpenSSH_9)"),
        (b"SSH-1.2-ancient\n", "unsupported SSH version"),
        (b"SSH-x\n", "malformed identification line"),
        (b"A" * 300, "overlong identification line"),
        (b"SSH-1.5-" + b"v" * 300 + b"\n", "overlong identification line"),
        (b"hello\n" * 20, "no SSH identification line"),
        (b"SSH-1.5-\x1b[2Jevil\x00\n" + b"\0\0\0\0garbage", "packet length 0"),
    ],
)
def test_bad_identification(data, message):
    proto, transport, _sink, results, _ = make()
    proto.dataReceived(data)
    assert message in error_of(results)
    assert transport.disconnecting
    assert isinstance(results[0].value, SSH1ClientError)


def test_closed_before_identification():
    proto, _transport, _sink, results, _ = make()
    proto.connectionLost(None)
    assert "before the SSH-1 identification" in error_of(results)


def server_for(proto, transport, host=None, server=None) -> ServerConnection:
    proto.dataReceived(b"SSH-1.5-dev\n")
    transport.clear()
    conn = ServerConnection(host or host_key(), server or server_key(), ("3des",))
    proto.dataReceived(conn.data_to_send())
    return conn


def test_host_key_checked_before_session_key():
    proto, transport, _sink, results, _ = make(verify=lambda e, n: (_ for _ in ()).throw(
        Refused("host key for dev:22 has CHANGED, refusing to connect")))
    server_for(proto, transport)
    [failure] = results
    assert isinstance(failure.value, Refused)  # the verifier's own exception, unchanged
    decoder = PacketDecoder()
    decoder.feed(transport.value())
    msg_type, _payload = decoder.next_packet()
    assert msg_type == m.SSH_MSG_DISCONNECT  # and no SESSION_KEY went out
    assert decoder.next_packet() is None
    assert transport.disconnecting


def test_verifier_gets_host_key_then_session_key_sent():
    proto, transport, _sink, results, seen = make()
    conn = server_for(proto, transport)
    assert seen == [keys.public_numbers(host_key())]
    conn.receive_data(transport.value())
    assert conn.next_event().cipher == "3des"


def test_weak_keys_logged():
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        proto, transport, _sink, results, seen = make()
        server_for(proto, transport, host=small_key(768), server=small_key(512))
    finally:
        globalLogPublisher.removeObserver(logged.append)
    warnings = [e.get("warning") for e in logged if e.get("warning")]
    assert "weak 512-bit server key" in warnings and "weak 768-bit host key" in warnings
    assert seen and not results


def test_protocol_error_after_version_disconnects():
    proto, transport, _sink, results, _ = make()
    proto.dataReceived(b"SSH-1.5-dev\n")
    proto.dataReceived(b"\0\0\0\x10" + b"\0" * 24)  # a packet that is not PUBLIC_KEY
    assert "SSH-1 protocol error" in error_of(results)
    assert transport.disconnecting


def test_password_never_in_log_or_repr():
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        proto, transport, _sink, results, _ = make()
        conn = server_for(proto, transport)
        conn.receive_data(transport.value())
        transport.clear()
        conn.next_event()
        proto.dataReceived(conn.data_to_send())  # SUCCESS for the session key
        conn.receive_data(transport.value())
        transport.clear()
        conn.next_event()
        conn.send_failure()
        proto.dataReceived(conn.data_to_send())  # user needs auth -> password sent
        conn.receive_data(transport.value())
        assert conn.next_event().password == b"pw"
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert "pw'" not in repr(proto.options)
    assert not any("pw" in repr(event.get("options", "")) for event in logged)


def test_close_when_device_stopped_reading_aborts():
    proto, transport, _sink, _results, _ = make()
    server_for(proto, transport)
    proto._gate.pauseProducing()
    proto.close()
    assert transport.disconnecting  # StringTransport's abort also marks it
    proto.connectionLost(None)  # nothing reaches the sink after close


def test_exit_status_reported_once():
    proto, transport, sink, results, _ = make()
    conn = server_for(proto, transport)
    for answer in ("key", "user"):
        conn.receive_data(transport.value())
        transport.clear()
        conn.next_event()
        if answer == "user":
            conn.send_success()
        proto.dataReceived(conn.data_to_send())
    assert results == [proto]
    conn.receive_data(transport.value())
    assert conn.next_event().command == b"id"
    conn.send_stdout(b"x")
    conn.send_exit_status(3)
    proto.dataReceived(conn.data_to_send())
    proto.connectionLost(None)
    assert (sink.out, sink.exit, sink.failure) == (b"x", ExitInfo(status=3), None)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(max_size=1500), st.integers(1, 200))
def test_fuzz_twisted_client(data, step):
    proto, transport, sink, results, _ = make()
    proto.dataReceived(b"SSH-1.5-fuzz\n")
    for start in range(0, len(data), step):
        proto.dataReceived(data[start : start + step])
    proto.connectionLost(None)
    assert len(results) == 1  # failed exactly once, never raised
