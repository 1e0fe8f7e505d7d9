"""The PROXY header on ``haproxy:`` listeners, in memory: the parser (v1 and v2, split
anywhere, hostile bytes) and the wrapper in front of the version dispatcher (no banner
before the header; the client's address in the record, the flow, the SSH transports and
the dispatcher factory's ``buildProtocol``; malformed, missing and cut-off headers closed
with a log line). The real HAProxy is in tests/integration/test_haproxy.py."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from gateway.config import parse_config
from gateway.dispatch import DispatcherFactory
from gateway.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeaderEndpoint,
    ProxyHeaderError,
    ProxyHeaderFactory,
    ProxyHeaderParser,
    server_endpoint,
)
from gateway.service import make_service
from protocols.handoff import IHandoffFactory
from tests.support.flow_records import read_jsonl
from tests.support.gateway_helpers import LOCAL_ACCESS, LogCapture

LB = IPv4Address("TCP", "127.0.0.1", 40001)  # the load balancer's end of the connection
GATEWAY = IPv4Address("TCP", "127.0.0.1", 2222)


def v2_header(
    source: str = "127.0.0.2",
    source_port: int = 50022,
    destination: str = "127.0.0.1",
    destination_port: int = 2222,
    command: int = 1,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header as HAProxy's ``send-proxy-v2`` writes it (TCP over IPv4 or IPv6)."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source_port, destination_port) + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def feed_all(parser: ProxyHeaderParser, data: bytes, step: int) -> tuple:
    """Feed ``data`` ``step`` bytes at a time up to the end of the header; returns the
    header and every byte after it (what the parser returned and what was not fed)."""
    for i in range(0, len(data), step):
        result = parser.feed(data[i : i + step])
        if result is not None:
            header, rest = result
            return header, rest + data[i + step :]
    raise AssertionError("the header never ended")


# --- the parser ----------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_v2_ipv4_header_in_any_pieces(step):
    header, rest = feed_all(ProxyHeaderParser(), v2_header() + b"SSH-2.0-x\r\n", step)
    assert header.version == 2
    assert header.source == IPv4Address("TCP", "127.0.0.2", 50022)
    assert header.destination == IPv4Address("TCP", "127.0.0.1", 2222)
    assert rest == b"SSH-2.0-x\r\n"


def test_v2_ipv6_header_with_tlvs():
    tlvs = b"\x05\x00\x04abcd"  # PP2_TYPE_UNIQUE_ID
    header, rest = ProxyHeaderParser().feed(v2_header("2001:db8::7", 1, "::1", 22, tlvs=tlvs))
    assert header.source == IPv6Address("TCP", "2001:db8::7", 1)
    assert header.destination == IPv6Address("TCP", "::1", 22)
    assert rest == b""


def test_ipv4_mapped_addresses_become_ipv4():
    header, _ = ProxyHeaderParser().feed(v2_header("::ffff:192.0.2.7", 5, "::1", 22))
    assert header.source == IPv4Address("TCP", "192.0.2.7", 5)
    assert header.destination == IPv6Address("TCP", "::1", 22)
    header, _ = ProxyHeaderParser().feed(b"PROXY TCP6 ::ffff:192.0.2.8 ::1 6 22\r\n")
    assert header.source == IPv4Address("TCP", "192.0.2.8", 6)


def test_v2_local_and_unspec_carry_no_address():
    header, _ = ProxyHeaderParser().feed(v2_header(command=0))
    assert header.source is None and header.destination is None
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x00"
    header, _ = ProxyHeaderParser().feed(unspec)
    assert header.source is None


@pytest.mark.parametrize("step", [1, 1000])
def test_v1_headers(step):
    line = b"PROXY TCP4 192.0.2.9 127.0.0.1 56324 2222\r\nSSH-1.5-x\n"
    header, rest = feed_all(ProxyHeaderParser(), line, step)
    assert header.version == 1 and rest == b"SSH-1.5-x\n"
    assert header.source == IPv4Address("TCP", "192.0.2.9", 56324)
    header, rest = ProxyHeaderParser().feed(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\nrest")
    assert header.source == IPv6Address("TCP", "2001:db8::1", 1)
    assert rest == b"rest"
    header, rest = ProxyHeaderParser().feed(b"PROXY UNKNOWN whatever\r\n")
    assert header.source is None and rest == b""


@pytest.mark.parametrize(
    "data, why",
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "no PROXY header"),
        (b"GET / HTTP/1.0\r\n", "no PROXY header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 abc 22\r\n", "malformed port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "malformed port"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "non-IPv4"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "malformed address"),
        (b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n", "malformed address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CR LF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed PROXY v1"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "malformed PROXY v1"),
        (b"PROXY " + b"x" * 120, "longer than 107"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "unknown version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command 2"),
        (V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12), "unknown address family 4"),
        (V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "datagram"),
        (V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "shorter than its address block"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "at most 4096"),
    ],
)
def test_malformed_headers_are_refused_with_a_reason(data, why):
    with pytest.raises(ProxyHeaderError, match=why):
        ProxyHeaderParser().feed(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_any_bytes_end_in_a_header_more_needed_or_a_header_error(data, step):
    parser = ProxyHeaderParser()
    for i in range(0, len(data), step):
        try:
            if parser.feed(data[i : i + step]) is not None:
                return
        except ProxyHeaderError:
            return


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=60))
def test_hostile_v2_bodies_after_a_valid_signature(body):
    data = (
        V2_SIGNATURE
        + b"\x21"
        + bytes([body[0] if body else 0x11])
        + struct.pack("!H", len(body))
        + body
    )
    try:
        ProxyHeaderParser().feed(data)
    except ProxyHeaderError:
        pass


# --- the wrapper in front of the dispatcher ------------------------------------------


class RecordingProtocol(Protocol):
    """What the dispatcher hands a connection to, keeping what it is given."""

    def __init__(self, record):
        self.record = record
        self.lost = False

    def connectionLost(self, reason=None):
        self.lost = True


@implementer(IHandoffFactory)
class FakeHandoff:
    def __init__(self):
        self.built = []

    def build_protocol(self, record, server_version, client_version):
        self.built.append(RecordingProtocol(record))
        return self.built[-1]


class FlowList(list):
    def write_flow(self, flow):
        self.append(flow)


class RecordingDispatcherFactory(DispatcherFactory):
    """Notes the address ``buildProtocol`` is asked with (where accept-time limits look)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.addresses = []

    def buildProtocol(self, addr):
        self.addresses.append(addr)
        return super().buildProtocol(addr)


@pytest.fixture
def logs():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


def proxied(timeout: float = 5.0):
    clock = Clock()
    flows = FlowList()
    dispatcher = RecordingDispatcherFactory(
        {"ssh1": FakeHandoff(), "ssh2": FakeHandoff()}, clock, version_timeout=timeout, flows=flows
    )
    wrapper = ProxyHeaderFactory(dispatcher).buildProtocol(LB)
    transport = StringTransport(hostAddress=GATEWAY, peerAddress=LB)
    wrapper.makeConnection(transport)
    return wrapper, transport, dispatcher, clock, flows


def test_no_banner_before_the_header_then_everything_sees_the_client():
    wrapper, transport, dispatcher, _, flows = proxied()
    assert transport.value() == b""
    assert dispatcher.addresses == []
    wrapper.dataReceived(v2_header()[:10])
    assert transport.value() == b""
    wrapper.dataReceived(v2_header()[10:] + b"SSH-2.0-OpenSSH_9.2\r\n")
    assert transport.value().startswith(b"SSH-1.99-sshgateway_")
    assert dispatcher.addresses == [IPv4Address("TCP", "127.0.0.2", 50022)]
    inner = dispatcher.handoffs["ssh2"].built[0]
    assert inner.record.peer == "127.0.0.2:50022"
    assert wrapper.getPeer() == IPv4Address("TCP", "127.0.0.2", 50022)
    assert wrapper.getHost() == GATEWAY
    wrapper.connectionLost(None)
    assert inner.lost
    assert [flow.to_dict()["peer"] for flow in flows] == ["127.0.0.2:50022"]


def test_local_header_keeps_the_connections_own_address():
    wrapper, transport, dispatcher, _, _ = proxied()
    wrapper.dataReceived(v2_header(command=0))
    assert transport.value().startswith(b"SSH-1.99-")
    assert dispatcher.addresses == [LB]


def test_a_health_check_leaves_no_flow_record_and_no_connection_line(logs):
    """HAProxy's check (``check-send-proxy``): a v2 LOCAL header, the banner, a close. Every
    500 ms per instance: no flow record, no info line, not a counted connection."""
    wrapper, transport, _, _, flows = proxied()
    wrapper.dataReceived(v2_header(command=0))
    assert transport.value().startswith(b"SSH-1.99-")  # a banner check still sees one
    wrapper.connectionLost(None)
    assert flows == []
    assert "127.0.0.1:40001" not in logs.text()


@pytest.mark.parametrize("command", [0, 1])
def test_a_connection_that_speaks_ssh_is_recorded_whatever_its_header(logs, command):
    wrapper, _, _, _, flows = proxied()
    wrapper.dataReceived(v2_header(command=command) + b"SSH-2.0-OpenSSH_9.2\r\n")
    wrapper.connectionLost(None)
    assert len(flows) == 1
    assert "connection closed" in logs.text()


def test_a_relayed_client_that_says_nothing_is_still_recorded(logs):
    wrapper, _, _, _, flows = proxied()
    wrapper.dataReceived(v2_header())
    wrapper.connectionLost(None)
    assert [flow.to_dict()["peer"] for flow in flows] == ["127.0.0.2:50022"]
    assert "connection closed" in logs.text()


def test_malformed_header_closes_with_a_log_line_and_no_banner(logs):
    wrapper, transport, dispatcher, _, flows = proxied()
    wrapper.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert transport.disconnecting
    assert transport.value() == b""
    assert dispatcher.addresses == [] and flows == []
    assert "refusing 127.0.0.1:40001 (PROXY listener): no PROXY header" in logs.text()
    wrapper.dataReceived(b"more")  # dropped, not parsed again
    wrapper.connectionLost(None)
    assert flows == []


def test_no_header_within_the_version_timeout_aborts_with_a_log_line(logs):
    wrapper, transport, dispatcher, clock, _ = proxied(timeout=5.0)
    wrapper.dataReceived(v2_header()[:20])
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting  # StringTransport's abortConnection
    assert "127.0.0.1:40001 (PROXY listener): no complete PROXY header within" in logs.text()
    assert dispatcher.addresses == []


def test_header_in_time_cancels_its_timer_and_the_dispatcher_takes_over():
    wrapper, transport, _, clock, _ = proxied(timeout=5.0)
    wrapper.dataReceived(v2_header())
    assert clock.getDelayedCalls() and all(
        call.func.__name__ == "_timed_out" and call.func.__self__ is not wrapper
        for call in clock.getDelayedCalls()
    )  # only the dispatcher's own version timer is left
    wrapper.connectionLost(None)
    assert not clock.getDelayedCalls()


def test_closed_in_the_middle_of_the_header_is_logged(logs):
    wrapper, _, dispatcher, clock, flows = proxied()
    wrapper.dataReceived(b"PROXY TCP4 1.2")
    wrapper.connectionLost(None)
    assert "closed in the middle of its PROXY header" in logs.text()
    assert not clock.getDelayedCalls() and flows == [] and dispatcher.addresses == []


def test_dispatcher_factory_that_refuses_the_client_closes_the_connection():
    wrapper, transport, dispatcher, _, _ = proxied()
    dispatcher.buildProtocol = lambda addr: None
    wrapper.dataReceived(v2_header() + b"SSH-2.0-x\r\n")
    assert transport.disconnecting and transport.value() == b""


# --- the endpoint string, and the whole service in memory ----------------------------


def test_only_haproxy_endpoints_get_the_header_reader():
    reactor = MemoryReactorClock()
    assert isinstance(server_endpoint(reactor, "haproxy:tcp:0"), ProxyHeaderEndpoint)
    assert isinstance(server_endpoint(reactor, "HAProxy:tcp:0"), ProxyHeaderEndpoint)
    assert not isinstance(server_endpoint(reactor, "tcp:0"), ProxyHeaderEndpoint)


def service_config(tmp_path: Path, listen: str):
    (tmp_path / "authorized_keys").write_text("")
    text = f'''
listen = ["{listen}"]
state_dir = "{tmp_path / "state"}"
protocols = ["1", "2"]
[users.alice]
authorized_keys = "{tmp_path / "authorized_keys"}"
{LOCAL_ACCESS}'''
    return parse_config(text, "test.toml", tmp_path)


@pytest.mark.parametrize(
    "client_line, kind", [(b"SSH-2.0-OpenSSH_9.2\r\n", "ssh2"), (b"SSH-1.5-PuTTY\n", "ssh1")]
)
def test_haproxy_listener_of_the_service_gives_both_protocols_the_client(
    tmp_path, client_line, kind
):
    """The service as ``twistd sshgateway`` builds it, with the real SSH-1 and SSH-2
    implementations: their transport's getPeer(), the connection record and the flow
    record all name the client from the header, and the banner waits for the header."""
    reactor = MemoryReactorClock()
    top = make_service(service_config(tmp_path, "haproxy:tcp:0:interface=127.0.0.1"), reactor)
    top.startService()
    try:
        ((_, factory, _, interface),) = reactor.tcpServers
        assert interface == "127.0.0.1"
        proto = factory.buildProtocol(LB)
        transport = StringTransport(hostAddress=GATEWAY, peerAddress=LB)
        proto.makeConnection(transport)
        assert transport.value() == b""  # no banner yet
        proto.dataReceived(v2_header() + client_line)
        assert transport.value().startswith(b"SSH-1.99-sshgateway_")
        inner = proto.wrappedProtocol.inner
        assert inner.record.protocol == kind
        assert inner.record.peer == "127.0.0.2:50022"
        assert inner.transport.getPeer() == IPv4Address("TCP", "127.0.0.2", 50022)
        proto.connectionLost(None)
    finally:
        top.stopService()
    flows = tmp_path / "state" / "flows" / "flows.jsonl"
    (record,) = read_jsonl(flows)
    assert record["peer"] == "127.0.0.2:50022"
