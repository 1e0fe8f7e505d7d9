"""The SSH-2 direct-tcpip channel in memory (iosim): a Conch client opens it through the
gateway's SSH-2 front to a StringTransport "device" (the gateway's TcpForward leg);
bytes both ways, the window against the TCP producer in each direction, EOF and close
from either side, and refusals (administratively prohibited, with a log line)."""

from __future__ import annotations

import struct

import pytest
from twisted.conch.ssh import common, connection
from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from gateway.forwarding import Destination, TcpForward
from protocols.forwarding import ForwardRefused
from protocols.ssh2.settings import SSH2Settings
from tests.support.doubles import Avatar
from tests.support.gateway_helpers import LogCapture
from tests.support.ssh2.harness import ClientSession, FakePortal, wire

WINDOW = 32 * 1024  # the gateway's channel window (the smallest it takes)


@pytest.fixture
def logs():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


class Device(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class JumpAvatar(Avatar):
    """alice, who may forward to host2:22 only; each forward's device is a Device."""

    def __init__(self) -> None:
        super().__init__("alice")
        self.forwards: list[tuple[TcpForward, defer.Deferred, list]] = []
        self.flows: list = []

    def open_forward(self, host: str, port: int, client):
        if (host, port) == ("unresolvable", 22):
            return TcpForward(
                None, "alice", Destination(host, port), client, flow_done=self.flows.append,
                connect=lambda factory: defer.fail(DNSLookupError(host)),
            )  # fmt: skip
        if (host, port) != ("host2", 22):
            raise ForwardRefused(f"{host}:{port} is neither a target of alice nor permitted")
        factories: list = []

        def connect(factory):
            factories.append(factory)
            return connecting

        connecting: defer.Deferred = defer.Deferred()
        forward = TcpForward(
            None, "alice", Destination("10.0.0.12", 22, "host2"), client,
            flow_done=self.flows.append, connect=connect,
        )  # fmt: skip
        self.forwards.append((forward, connecting, factories))
        return forward


class ClientForward(ClientSession):
    name = b"direct-tcpip"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.failed = None

    def openFailed(self, reason):
        self.failed = reason


def open_data(host: bytes = b"host2", port: int = 22) -> bytes:
    return common.NS(host) + struct.pack(">L", port) + common.NS(b"127.0.0.1") + struct.pack(">L", 5)


def jump_wire():
    avatar = JumpAvatar()
    portal = FakePortal(users={"alice": avatar})
    w = wire(portal=portal, settings=SSH2Settings(channel_window=WINDOW))
    return w, avatar


def open_forward(w, avatar, **kw):
    channel = ClientForward(conn=w.conn, **kw)
    w.conn.openChannel(channel, open_data())
    w.flush()
    assert channel.opened, channel.failed
    forward, connecting, factories = avatar.forwards[-1]
    device = Device()
    protocol = factories[0].buildProtocol(None)
    protocol.makeConnection(device)
    connecting.callback(protocol)
    w.flush()
    return channel, device, protocol


def test_bytes_both_ways_through_the_channel(logs):
    w, avatar = jump_wire()
    channel, device, protocol = open_forward(w, avatar)
    w.conn.sendData(channel, b"SSH-2.0-OpenSSH_9.2\r\n")
    protocol.dataReceived(b"SSH-2.0-device\r\n")
    w.flush()
    assert device.value() == b"SSH-2.0-OpenSSH_9.2\r\n"
    assert bytes(channel.out) == b"SSH-2.0-device\r\n"
    assert "alice: b'direct-tcpip' channel to host2:22" in logs.text()
    assert "forward: alice -> 10.0.0.12:22 (target host2): connected" in logs.text()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (open_data(b"elsewhere"), "elsewhere:22 is neither a target of alice nor permitted"),
        (open_data(port=2222), "host2:2222 is neither"),
        (open_data()[:-2], "refused b'direct-tcpip' channel to ?"),  # malformed
        (open_data(port=0), "bad host or port"),
    ],
)
def test_refused_destinations_are_administratively_prohibited(logs, data, why):
    w, avatar = jump_wire()
    channel = ClientForward(conn=w.conn)
    w.conn.openChannel(channel, data)
    w.flush()
    assert channel.failed is not None
    assert channel.failed.data == connection.OPEN_ADMINISTRATIVELY_PROHIBITED
    assert why in logs.text()
    assert avatar.forwards == []
    assert w.open_session().opened  # the connection goes on


def test_device_output_pauses_while_the_clients_window_is_used_up():
    w, avatar = jump_wire()
    held: list[int] = []
    granting = w.conn.adjustWindow

    def hold(channel, amount):  # the client does not read: it grants no window
        held.append(amount)

    w.conn.adjustWindow = hold
    channel, device, protocol = open_forward(w, avatar, localWindow=8192)
    protocol.dataReceived(b"x" * 20000)
    w.flush()
    assert len(channel.out) == 8192
    assert device.producerState == "paused"  # the device's reading stops
    w.conn.adjustWindow = granting
    granting(channel, 8192)
    granting(channel, 8192)
    w.flush()
    assert device.producerState == "producing"
    assert len(channel.out) == 20000


def test_client_input_pauses_while_the_device_does_not_take_it():
    w, avatar = jump_wire()
    channel, device, protocol = open_forward(w, avatar)
    server_channel = w.server_channel()
    device.producer.pauseProducing()  # the TCP send buffer is full
    channel.write(b"y" * (WINDOW + 8192))
    w.flush()
    assert len(device.value()) == WINDOW  # what the window allowed, no more
    assert channel.remoteWindowLeft == 0  # no new window while paused
    assert len(channel.buf) == 8192  # the rest waits on the client's side
    assert server_channel.input_paused
    device.producer.resumeProducing()
    w.flush()
    assert len(device.value()) == WINDOW + 8192


def test_client_eof_half_closes_and_client_close_drops_the_device():
    w, avatar = jump_wire()
    channel, device, protocol = open_forward(w, avatar)
    w.conn.sendEOF(channel)
    w.flush()
    assert device.write_closed and not device.disconnecting
    protocol.dataReceived(b"still answering")
    w.flush()
    assert bytes(channel.out) == b"still answering"
    w.conn.sendClose(channel)
    w.flush()
    assert device.disconnecting
    assert channel.is_closed
    assert [f.close_reason for f in avatar.flows] == ["channel closed"]


def test_device_eof_and_close_end_the_channel():
    w, avatar = jump_wire()
    channel, device, protocol = open_forward(w, avatar)
    protocol.dataReceived(b"bye")
    protocol.readConnectionLost()
    w.flush()
    assert channel.events == ["data", "eof"]
    protocol.connectionLost(Failure(Exception("closed")))
    w.flush()
    assert channel.events == ["data", "eof", "closed"]
    assert [f.close_reason for f in avatar.flows] == ["device closed the connection"]
    assert avatar.flows[0].bytes == {"c2s": 0, "s2c": 3}


def test_device_close_waits_for_the_clients_window_before_closing():
    w, avatar = jump_wire()
    granting = w.conn.adjustWindow
    w.conn.adjustWindow = lambda channel, amount: None
    channel, device, protocol = open_forward(w, avatar, localWindow=4096)
    protocol.dataReceived(b"z" * 6000)
    protocol.connectionLost(Failure(Exception("closed")))
    w.flush()
    assert len(channel.out) == 4096 and "closed" not in channel.events
    w.conn.adjustWindow = granting
    granting(channel, 4096)
    w.flush()
    assert len(channel.out) == 6000
    assert channel.events[-2:] == ["eof", "closed"]


def test_a_connection_that_fails_at_once_closes_the_channel(logs):
    w, avatar = jump_wire()
    channel = ClientForward(conn=w.conn)
    w.conn.openChannel(channel, open_data(b"unresolvable"))
    w.flush()
    assert channel.opened and channel.is_closed
    assert "forward: alice -> unresolvable:22: connect failed" in logs.text()
    assert [f.close_reason[:14] for f in avatar.flows] == ["connect failed"]
