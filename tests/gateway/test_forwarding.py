"""Jump-host forwarding in memory: which destinations a direct-tcpip may reach (a target
by name, host or alias on its port; a user's permit_open entry, matched as SSH-1's
permit_open is; everything else refused; ssh1/telnet targets chosen with their protocol,
for the gateway's own SSH-2 server, refused when there is none), the
config keys, and the TCP leg (TcpForward) against a StringTransport device: bytes both
ways, back-pressure, half-close and close in each direction, the flow record."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from gateway.config import ConfigError, GatewayConfig, UserConfig, parse_config
from gateway.forwarding import Destination, TcpForward, choose_destination
from gateway.routing import Router
from gateway.targets import TargetConfig
from protocols.forwarding import ForwardRefused, permits, split_host_port
from tests.support.doubles import FakeProducer, FakeSessionClient
from tests.support.gateway_helpers import LogCapture, fast_hash

TARGETS = {
    "host2": TargetConfig("host2", "ssh2", host="10.0.0.12", port=2222, aliases=("Host2.Example",)),
    "other": TargetConfig("other", "ssh2", host="10.0.0.13"),
    "sw1": TargetConfig("sw1", "ssh1", host="10.0.0.20"),
    "tel": TargetConfig("tel", "telnet", host="10.0.0.30", port=23),
    "local": TargetConfig("local", "local"),
}
ALICE = ("host2", "sw1", "tel", "local")


def choose(host: str, port: int, permit_open=()) -> Destination:
    return choose_destination("alice", host, port, TARGETS, ALICE, permit_open)


@pytest.mark.parametrize("host", ["host2", "10.0.0.12", "host2.example", "HOST2"])
def test_a_target_matches_by_name_host_or_alias_on_its_port(host):
    assert choose(host, 2222) == Destination("10.0.0.12", 2222, "host2", 10.0, "ssh2")


def test_ssh1_and_telnet_targets_are_chosen_with_their_protocol():
    assert choose("sw1", 22) == Destination("10.0.0.20", 22, "sw1", 10.0, "ssh1")
    assert choose("10.0.0.30", 23) == Destination("10.0.0.30", 23, "tel", 10.0, "telnet")


@pytest.mark.parametrize(
    ("host", "port", "why"),
    [
        ("host2", 22, "neither a target of alice nor permitted"),  # the target's name, wrong port
        ("10.0.0.12", 22, "neither"),
        ("other", 22, "neither"),  # a target, but not one of alice's
        ("10.0.0.13", 22, "neither"),
        ("localhost", 22, "neither"),  # local is not reached by forwarding
        ("sw1", 23, "neither"),
    ],
)
def test_everything_else_is_refused_with_the_reason(host, port, why):
    with pytest.raises(ForwardRefused, match=why):
        choose(host, port)


def test_permit_open_reaches_non_target_destinations_only_as_listed():
    entries = ("intranet.example:443", "[::1]:8080")
    assert choose("Intranet.Example", 443, entries) == Destination("Intranet.Example", 443)
    assert choose("::1", 8080, entries) == Destination("::1", 8080)
    with pytest.raises(ForwardRefused):
        choose("intranet.example", 80, entries)
    with pytest.raises(ForwardRefused):
        choose("intranet.example", 443)  # off by default


def test_the_host_port_rule_is_the_one_ssh1_uses():
    assert split_host_port("[::1]:22") == ("::1", 22)
    assert split_host_port("localhost:80") == ("localhost", 80)
    for bad in ("nohost", ":22", "host:0", "host:65536", "host:x", "a b:22"):
        assert split_host_port(bad) is None, bad
    assert permits(["localhost:80", "[::1]:22"], "LOCALHOST", 80)
    assert permits(["localhost:80", "[::1]:22"], "::1", 22)
    assert not permits(["localhost:80"], "localhost", 81)


def config_text(user: str = "", target: str = "") -> str:
    return f"""
[users.alice]
password = "{fast_hash("secret")}"
targets = ["host2"]
{user}
[targets.host2]
protocol = "ssh2"
host = "10.0.0.12"
{target}
"""


def test_config_reads_aliases_and_permit_open():
    config = parse_config(
        config_text('permit_open = ["intranet.example:443", "[::1]:8080"]', 'aliases = ["h2.x"]')
    )
    assert config.users["alice"].permit_open == ("intranet.example:443", "[::1]:8080")
    assert config.targets["host2"].aliases == ("h2.x",)
    plain = parse_config(config_text())
    assert plain.users["alice"].permit_open == () and plain.targets["host2"].aliases == ()


@pytest.mark.parametrize(
    ("user", "target", "words"),
    [
        ('permit_open = ["nohost"]', "", "users.alice.permit_open: 'nohost' is not \"host:port\""),
        ('permit_open = ["h:0"]', "", "is not \"host:port\""),
        ("", 'aliases = ["a b"]', "targets.host2.aliases"),
        ("", "aliases = [1]", "targets.host2.aliases: must be a list of non-empty strings"),
    ],
)
def test_bad_aliases_and_permit_open_are_refused(user, target, words):
    with pytest.raises(ConfigError) as e:
        parse_config(config_text(user, target))
    assert words in str(e.value)


# -- the router ---------------------------------------------------------------------------


def router(**user: object) -> Router:
    config = GatewayConfig(
        users={"alice": UserConfig("alice", password_hash="x", targets=ALICE, **user)},
        targets=TARGETS,
    )
    return Router(config, {name: object() for name in TARGETS}, clock=None)


def test_the_router_refuses_before_connecting():
    with pytest.raises(ForwardRefused, match="neither"):
        router().open_forward("alice", "intranet.example", 443, FakeSessionClient())
    with pytest.raises(ForwardRefused, match="neither"):
        router().open_forward("mallory", "host2", 2222, FakeSessionClient())


def test_without_inner_servers_ssh1_and_telnet_targets_are_refused():
    with pytest.raises(ForwardRefused, match="'sw1' is ssh1: no SSH-2 server for it here"):
        router().open_forward("alice", "sw1", 22, FakeSessionClient())


# -- the TCP leg ----------------------------------------------------------------------------


class Device(StringTransport):
    """A device's TCP connection that can be half-closed."""

    def __init__(self) -> None:
        super().__init__()
        self.write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class Leg:
    def __init__(self, flows: list | None = None) -> None:
        self.client = FakeSessionClient()
        self.client.flow_id = "f-outer"
        self.input = FakeProducer()
        self.connecting: defer.Deferred = defer.Deferred()
        self.factory: Factory | None = None
        self.flows = flows if flows is not None else []
        self.forward = TcpForward(
            None,
            "alice",
            Destination("10.0.0.12", 2222, "host2"),
            self.client,
            flow_done=self.flows.append,
            connect=self._connect,
        )
        self.forward.registerProducer(self.input, True)
        self.device = Device()
        self.protocol = None

    def _connect(self, factory: Factory) -> defer.Deferred:
        self.factory = factory
        return self.connecting

    def connect(self) -> None:
        self.protocol = self.factory.buildProtocol(None)
        self.protocol.makeConnection(self.device)
        self.connecting.callback(self.protocol)


def test_client_bytes_wait_for_the_connection_with_the_input_paused():
    leg = Leg()
    assert leg.input.paused  # no window is granted until the device is there
    leg.forward.write_stdin(b"SSH-2.0-client\r\n")
    leg.forward.close_stdin()
    assert leg.device.value() == b""
    leg.connect()
    assert leg.device.value() == b"SSH-2.0-client\r\n"
    assert leg.device.write_closed
    assert not leg.input.paused


def test_bytes_both_ways_and_back_pressure_both_ways():
    leg = Leg()
    leg.connect()
    leg.forward.write_stdin(b"to device")
    leg.protocol.dataReceived(b"to client")
    assert leg.device.value() == b"to device"
    assert bytes(leg.client.out) == b"to client"
    # Device -> client: the client pauses the device's transport (window used up).
    assert leg.client.producer is leg.device
    leg.client.producer.pauseProducing()
    assert leg.device.producerState == "paused"
    # Client -> device: the TCP transport pauses the channel's input (send buffer full).
    assert leg.device.producer is leg.input
    leg.device.producer.pauseProducing()
    assert leg.input.paused


def test_device_half_close_then_close_ends_the_channel_and_writes_the_flow():
    leg = Leg()
    leg.connect()
    leg.forward.write_stdin(b"abc")
    leg.protocol.dataReceived(b"hello")
    leg.protocol.readConnectionLost()
    assert leg.client.eof and leg.client.exit is None
    leg.protocol.connectionLost(Failure(Exception("closed")))
    assert leg.client.exit is not None
    [flow] = leg.flows
    record = flow.to_dict()
    assert record["link"] == "f-outer" and record["role"] == "client"
    assert record["protocol"] == "tcp" and record["target"] == "host2"
    assert record["peer"] == "10.0.0.12:2222" and record["user"] == "alice"
    assert record["bytes"] == {"c2s": 3, "s2c": 5}
    assert record["close_reason"] == "device closed the connection"
    leg.forward.close()  # the channel's close afterwards changes nothing
    assert len(leg.flows) == 1


def test_the_channels_close_drops_the_connection():
    leg = Leg()
    leg.connect()
    leg.forward.close()
    assert leg.device.disconnecting
    assert leg.device.producer is None
    [flow] = leg.flows
    assert flow.close_reason == "channel closed"
    leg.protocol.connectionLost(Failure(Exception("closed")))
    assert len(leg.flows) == 1


def test_close_while_connecting_cancels_the_attempt():
    leg = Leg()
    leg.forward.close()
    assert leg.connecting.called  # cancelled
    assert leg.client.exit is None  # the channel is already closing
    assert len(leg.flows) == 1


def test_connect_failure_closes_the_channel_with_a_log_line():
    logs = LogCapture()
    globalLogPublisher.addObserver(logs)
    try:
        leg = Leg()
        leg.connecting.errback(Failure(ConnectionRefusedError()))
    finally:
        globalLogPublisher.removeObserver(logs)
    assert leg.client.exit is not None
    assert "forward: alice -> 10.0.0.12:2222: connect failed" in logs.text()
    assert leg.flows[0].close_reason.startswith("connect failed")


def test_no_flow_recorder_without_a_sink():
    client = FakeSessionClient()
    forward = TcpForward(
        None, "alice", Destination("h", 1), client, connect=lambda f: defer.Deferred()
    )
    assert forward.flow is None


# -- a forward is watched like a session ----------------------------------------------------


def test_a_forward_is_watched_like_a_session_and_ended_without_text(monkeypatch):
    """The session taps (audit trail, live sessions, metrics) see a jump-host forward:
    who, where to, bytes and the end. An operator can end it; nothing is written into its
    channel, which carries the client's own SSH stream."""
    import gateway.forwarding
    from gateway.live_sessions import LiveSessions, summary_of
    from gateway.recording import wants_recording
    from protocols.session import SessionRequest
    from tests.support.doubles import FakeSessionTarget, RecordingTap

    opened: list[FakeSessionTarget] = []

    def fake_forward(clock, username, destination, client, flow_done=None):
        opened.append(FakeSessionTarget(SessionRequest(), client, destination.target, username))
        return opened[-1]

    monkeypatch.setattr(gateway.forwarding, "TcpForward", fake_forward)
    tap, registry = RecordingTap(), LiveSessions()
    routed = router()
    routed.session_taps = [tap, registry]
    client = FakeSessionClient()
    channel = routed.open_forward("alice", "host2.example", 2222, client)
    [live] = tap.sessions
    assert (live.info.target, live.info.target_protocol) == ("host2", "tcp")
    assert live.info.forward == "host2.example:2222" and live.info.pty is None
    assert summary_of(live).forward == "host2.example:2222"
    assert not wants_recording(GatewayConfig(), live.info)
    channel.write_stdin(b"SSH-2.0-client\r\n")
    opened[0].client.write_stdout(b"SSH-2.0-device\r\n")
    assert (live.bytes_from_client, live.bytes_to_client) == (16, 16)
    assert live.terminate("maintenance", by="root")
    assert client.out == b"SSH-2.0-device\r\n" and client.err == b""
    assert "close" in opened[0].calls and client.exit is not None
