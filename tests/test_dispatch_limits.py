"""The dispatcher applies the limits on unauthenticated connections at accept (in memory):
a refused connection gets one plain line and no version line, so no key exchange; a
connection stops counting when it logs in or closes; its outcome earns its source's
penalty; max_startups' full is kept within the descriptor limit."""

from __future__ import annotations

import random

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from gateway import dispatch
from gateway.dispatch import DispatcherFactory
from gateway.limits import BUSY_LINE, PENALTY_LINE, ConnectionLimits, LimitsConfig, MaxStartups
from gateway.penalties import (
    AUTHFAIL,
    GRACE_EXCEEDED,
    MALFORMED,
    NOAUTH,
    MemoryPenaltyBook,
    PenaltyRules,
)
from tests.test_dispatch import FakeHandoff

RULES = PenaltyRules(
    {AUTHFAIL: 5.0, NOAUTH: 1.0, MALFORMED: 10.0, GRACE_EXCEEDED: 10.0}, minimum=15.0, maximum=600.0
)


class Gateway:
    def __init__(self, **settings):
        self.clock = Clock()
        config = LimitsConfig(**{"penalties": RULES, **settings})
        self.book = MemoryPenaltyBook(RULES, self.clock)
        self.limits = ConnectionLimits(config, self.clock, self.book, 120.0, rng=random.Random(3))
        self.handoffs = {"ssh1": FakeHandoff(), "ssh2": FakeHandoff()}
        self.factory = DispatcherFactory(self.handoffs, self.clock, 30.0, limits=self.limits)

    def connect(self, host="192.0.2.7", port=40000):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        proto.makeConnection(transport)
        return proto, transport

    def close(self, proto):
        proto.connectionLost(None)


def test_past_max_startups_a_connection_gets_one_line_and_no_version_line():
    gw = Gateway(max_startups=MaxStartups.parse("2"))
    held = [gw.connect(port=n) for n in range(2)]
    assert all(t.value().startswith(b"SSH-1.99-") for _, t in held)
    proto, transport = gw.connect(port=3)
    assert transport.value() == BUSY_LINE  # no "SSH-" line: the client cannot start a kex
    assert transport.disconnecting
    proto.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert not gw.handoffs["ssh2"].built  # nothing reaches a protocol
    gw.close(proto)
    assert gw.limits.pending == 2


def test_a_refusal_is_logged_with_the_peer_and_the_reason():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw = Gateway(max_startups=MaxStartups.parse("1"))
        gw.connect()
        gw.connect(port=2)
    finally:
        globalLogPublisher.removeObserver(events.append)
    refusals = [
        e for e in events if e.get("log_format", "").startswith("refusing {peer} at accept")
    ]
    assert len(refusals) == 1
    assert refusals[0]["peer"] == "192.0.2.7:2"
    assert refusals[0]["reason"] == "max_startups 1:100:1: 1 unauthenticated connections"


def test_a_connection_counts_until_its_record_says_it_logged_in():
    gw = Gateway()
    proto, _ = gw.connect()
    proto.dataReceived(b"SSH-2.0-x\r\n")
    assert gw.limits.pending == 1
    proto.record.auth_result = "success"  # what both front ends do on login
    proto.dataReceived(b"next packet")
    assert gw.limits.pending == 0
    gw.close(proto)
    assert gw.limits.pending == 0 and len(gw.book) == 0  # no penalty for a login


def test_a_connection_that_closes_stops_counting_and_earns_its_penalty():
    gw = Gateway()
    for n in range(4):
        proto, _ = gw.connect(port=n)
        proto.dataReceived(b"SSH-2.0-x\r\n")
        proto.record.auth_result = "failure"
        gw.close(proto)
    assert gw.limits.pending == 0
    proto, transport = gw.connect(port=9)
    assert transport.value() == PENALTY_LINE
    assert proto.record.close_reason == "penalty: 192.0.2.7/32 refused for 20s more"
    _, other = gw.connect(host="192.0.2.8")
    assert other.value().startswith(b"SSH-1.99-")


def test_a_line_that_is_no_ssh_at_all_is_penalised_as_malformed():
    gw = Gateway()
    for n in range(2):
        proto, _ = gw.connect(port=n)
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        gw.close(proto)
    _, transport = gw.connect(port=3)
    assert transport.value() == PENALTY_LINE  # 2 x 10 s > 15 s


def test_a_client_of_a_version_we_do_not_serve_is_not_malformed():
    gw = Gateway()
    for n in range(2):
        proto, _ = gw.connect(port=n)
        proto.dataReceived(b"SSH-1.1-old\r\n")
        gw.close(proto)
    _, transport = gw.connect(port=3)
    assert transport.value().startswith(b"SSH-1.99-")


def test_a_version_timeout_is_penalised_as_grace_exceeded():
    gw = Gateway()
    stalled = [gw.connect(port=n) for n in range(2)]
    gw.clock.advance(30)
    for proto, transport in stalled:
        assert transport.disconnecting
        gw.close(proto)
    _, transport = gw.connect(port=3)
    assert transport.value() == PENALTY_LINE


def test_one_byte_a_second_does_not_stretch_the_version_timeout():
    gw = Gateway()
    proto, transport = gw.connect()
    for byte in b"SSH-2.0-" + b"x" * 40:
        proto.dataReceived(bytes([byte]))
        gw.clock.advance(1)
        if transport.disconnecting:
            break
    assert gw.clock.seconds() == 30
    assert proto.record.close_reason == "no identification line within the version timeout"


def test_full_is_capped_to_the_descriptor_limit_when_listening_starts(monkeypatch):
    events = []
    monkeypatch.setattr(dispatch.resource, "getrlimit", lambda which: (256, 4096))
    globalLogPublisher.addObserver(events.append)
    try:
        gw = Gateway(max_startups=MaxStartups(10, 30, 1000))
        gw.factory.doStart()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert gw.limits.max_startups == MaxStartups(10, 30, 96)
    assert any("needs more file descriptors" in e.get("log_format", "") for e in events)
    gw.factory.doStop()


def test_without_limits_the_dispatcher_counts_nothing():
    factory = DispatcherFactory({"ssh2": FakeHandoff()}, Clock())
    for _ in range(500):
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        assert transport.value().startswith(b"SSH-2.0-")
