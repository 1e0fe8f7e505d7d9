"""The metrics in memory: each metric fed by what the gateway really logs and taps (the
dispatcher's close, gateway events, the bridge's end, a failing flow writer, the session
tap), read back from the registry's Prometheus text (generate_latest, then parsed); label
values stay in their fixed sets whatever a client sends; the service's endpoint opens,
moves and closes with the config."""

from __future__ import annotations

import contextlib
import errno

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import Logger, LogPublisher, globalLogPublisher
from zope.interface.verify import verifyObject

from gateway import events
from gateway.config import parse_config
from gateway.dispatch import DispatcherFactory
from gateway.flows import FlowWriter
from gateway.known_hosts import HostKeyChanged
from gateway.limits import ConnectionLimits, LimitsConfig, MaxStartups
from gateway.listening import ListenError
from gateway.metrics import GatewayMetrics, MetricsService
from gateway.routing import Router
from gateway.session_tap import ISessionObserver, ISessionTap, TappedTarget
from gateway.targets.bridge import BridgeSession, UpstreamFailure
from protocols.flow import C2S, S2C, FlowRecorder
from protocols.session import ExitInfo, PtyRequest, SessionRequest, WindowSize
from tests.support.doubles import (
    FakeDrainableHandoff,
    FakeSessionClient,
    FakeTarget,
    FakeUpstream,
)
from tests.support.gateway_helpers import LOCAL_ACCESS, ROUTED_TARGETS, fast_hash

CONFIG = (
    f"""
[users.alice]
password = "{fast_hash("pw")}"
targets = ["sw1"]

[users.erin]
password = "{fast_hash("pw")}"
{LOCAL_ACCESS}"""
    + ROUTED_TARGETS
)


def samples(metrics: GatewayMetrics) -> dict[tuple, float]:
    """Every sample of the registry's text exposition: (name, sorted labels) -> value."""
    text = generate_latest(metrics.registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


@contextlib.contextmanager
def observing(metrics: GatewayMetrics):
    """The metrics observe the global log (where the gateway's modules log) meanwhile."""
    globalLogPublisher.addObserver(metrics.observe)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(metrics.observe)


def emitter(metrics: GatewayMetrics) -> Logger:
    publisher = LogPublisher(metrics.observe)
    return Logger(namespace="gateway.test", observer=publisher)


# -- logins, penalties, recordings truncated: gateway events -----------------------------


def test_logins_are_counted_by_protocol_method_and_result():
    metrics = GatewayMetrics()
    log = emitter(metrics)
    login = {"user": "alice", "source": "192.0.2.7:4000", "client_version": "SSH-2.0-x"}
    events.emit(log, events.LOGIN, "in", method="password", protocol="ssh2", **login)
    events.emit(log, events.LOGIN, "in", method="publickey", protocol="ssh2", **login)
    events.emit(log, events.LOGIN, "in", method="password", protocol="ssh2", **login)
    events.emit(log, events.LOGIN_FAILED, "no", method="password", protocol="ssh1", **login)
    total = "sshgateway_logins_total"
    assert value(metrics, total, protocol="ssh2", method="password", result="success") == 2
    assert value(metrics, total, protocol="ssh2", method="publickey", result="success") == 1
    assert value(metrics, total, protocol="ssh1", method="password", result="failure") == 1


def test_a_client_cannot_invent_label_values():
    metrics = GatewayMetrics()
    log = emitter(metrics)
    for n in range(50):
        events.emit(log, events.LOGIN_FAILED, "no", method=f"made-up-{n}", protocol=f"ssh-{n}")
    events.emit(log, events.LOGIN, "in", method="publickey+password", protocol="ssh2")
    events.emit(log, events.LOGIN, "in", method="publickey+x" * 20, protocol="ssh2")
    total = "sshgateway_logins_total"
    assert value(metrics, total, protocol="unknown", method="other", result="failure") == 50
    assert value(metrics, total, protocol="ssh2", method="publickey+password", result="success") == 1
    assert value(metrics, total, protocol="ssh2", method="publickey+other", result="success") == 1
    assert len([k for k in samples(metrics) if k[0] == total]) == 3


def test_penalties_by_kind_and_truncated_recordings():
    metrics = GatewayMetrics()
    log = emitter(metrics)
    events.emit(log, events.PENALTY, "p", source="192.0.2.7/32", reason="authfail", seconds=5)
    events.emit(log, events.PENALTY, "p", source="192.0.2.7/32", reason="malformed input", seconds=9)
    events.emit(log, events.PENALTY, "p", source="192.0.2.7/32", reason="???", seconds=1)
    events.emit(log, events.RECORDING_TRUNCATED, "t", session="s1", recording="r", reason="full")
    assert value(metrics, "sshgateway_penalties_total", reason="authfail") == 1
    assert value(metrics, "sshgateway_penalties_total", reason="malformed") == 1
    assert value(metrics, "sshgateway_penalties_total", reason="other") == 1
    assert value(metrics, "sshgateway_recordings_truncated_total") == 1


def test_an_event_the_metrics_cannot_read_never_raises():
    metrics = GatewayMetrics()
    metrics.observe({"audit_event": events.LOGIN, "method": object(), "protocol": None})
    metrics.observe({"record": "not a record", "log_namespace": "x"})
    metrics.observe({})
    assert value(metrics, "sshgateway_logins_total", protocol="unknown", method="unknown",
                 result="success") == 1  # fmt: skip


# -- connections: the dispatcher's close ------------------------------------------------


class Dispatcher:
    """A dispatcher in memory with flow records on and the limits at accept."""

    def __init__(self, **limits):
        self.clock = Clock()
        self.handoff = FakeDrainableHandoff()
        self.flows: list[FlowRecorder] = []
        sink = type("Sink", (), {"write_flow": lambda _, flow: self.flows.append(flow)})()
        config = LimitsConfig(penalties=None, **limits)
        self.factory = DispatcherFactory(
            {"ssh2": self.handoff, "ssh1": FakeDrainableHandoff()},
            self.clock,
            flows=sink,
            limits=ConnectionLimits(config, self.clock, None, 120.0),
        )

    def connect(self, port=40000):
        proto = self.factory.buildProtocol(None)
        proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", port)))
        return proto


def test_connections_by_protocol_and_result_with_bytes_and_handshake():
    metrics = GatewayMetrics()
    gw = Dispatcher()
    with observing(metrics):
        proto = gw.connect()
        proto.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n")
        flow = proto.record.flow
        flow.packet(C2S, "SSH2_MSG_KEXINIT", 1000)
        gw.clock.advance(0.04)
        flow.packet(S2C, "SSH2_MSG_NEWKEYS", 16)
        flow.packet(C2S, "SSH2_MSG_SERVICE_REQUEST", 48)  # the key exchange is over
        proto.record.auth_result = "success"
        proto.dataReceived(b"x" * 100)
        proto.connectionLost(None)

        failed = gw.connect(port=2)
        failed.dataReceived(b"SSH-1.5-PuTTY\n")
        failed.record.auth_result = "failure"
        failed.connectionLost(None)

        garbage = gw.connect(port=3)
        garbage.dataReceived(b"GET / HTTP/1.1\r\n")
        garbage.connectionLost(None)
    total = "sshgateway_connections_total"
    assert value(metrics, total, protocol="ssh2", result="success") == 1
    assert value(metrics, total, protocol="ssh1", result="failure") == 1
    assert value(metrics, total, protocol="unknown", result="noauth") == 1
    version_line = len(b"SSH-1.99-sshgateway_0.1.0\r\n")
    bytes_total = "sshgateway_connection_bytes_total"
    assert value(metrics, bytes_total, protocol="ssh2", direction="in") == 21 + 100
    assert value(metrics, bytes_total, protocol="ssh2", direction="out") == version_line
    handshake = "sshgateway_handshake_seconds"
    assert value(metrics, f"{handshake}_count", protocol="ssh2") == 1
    assert value(metrics, f"{handshake}_sum", protocol="ssh2") == pytest.approx(0.04)
    assert value(metrics, f"{handshake}_bucket", protocol="ssh2", le="0.025") == 0
    assert value(metrics, f"{handshake}_bucket", protocol="ssh2", le="0.05") == 1
    # the connections that never finished a key exchange have no handshake time
    assert value(metrics, f"{handshake}_count", protocol="ssh1") is None


def test_a_connection_refused_at_accept_is_counted_as_refused():
    metrics = GatewayMetrics()
    gw = Dispatcher(max_startups=MaxStartups.parse("1"))
    with observing(metrics):
        held = gw.connect()
        refused = gw.connect(port=2)
        refused.connectionLost(None)
        held.connectionLost(None)
    total = "sshgateway_connections_total"
    assert value(metrics, total, protocol="unknown", result="refused") == 1
    assert value(metrics, total, protocol="unknown", result="noauth") == 1


# -- sessions: the tap -----------------------------------------------------------------


def router(*taps):
    config = parse_config(CONFIG)
    targets = {name: FakeTarget(name, takes_password=name != "local") for name in config.targets}
    targets["local"] = FakeTarget("local", takes_password=False)
    routed = Router(config, targets, Clock())
    routed.session_taps = list(taps)
    return routed, targets, config


def test_active_sessions_by_front_and_target_protocol_and_their_bytes_at_the_end():
    metrics = GatewayMetrics()
    verifyObject(ISessionTap, metrics)
    routed, targets, _ = router(metrics)
    flow = FlowRecorder("server", "192.0.2.7:40000", "ssh2")
    client = FakeSessionClient()
    client.flow_id = flow.id
    pty = SessionRequest(pty=PtyRequest("xterm", WindowSize(24, 80)))
    session = routed.open_session("alice", pty, client, target="sw1")
    routed.open_session("erin", SessionRequest(command=b"id"), FakeSessionClient(), target="local")
    active = "sshgateway_sessions_active"
    assert value(metrics, active, front_protocol="ssh2", target_protocol="ssh1") == 1
    assert value(metrics, active, front_protocol="unknown", target_protocol="local") == 1
    opened = targets["sw1"].opened[0]
    opened.client.write_stdout(b"hello")
    session.write_stdin(b"ls\r")
    opened.client.exited(ExitInfo(status=0))
    assert value(metrics, active, front_protocol="ssh2", target_protocol="ssh1") == 0
    labels = {"front_protocol": "ssh2", "target_protocol": "ssh1"}
    assert value(metrics, "sshgateway_sessions_total", **labels) == 1
    assert value(metrics, "sshgateway_session_bytes_total", direction="to_client", **labels) == 5
    assert value(metrics, "sshgateway_session_bytes_total", direction="from_client", **labels) == 3
    assert value(metrics, "sshgateway_recordings_total") == 0  # no recorder set one


def test_a_session_with_a_recording_counts_it_at_its_end_and_a_client_leaving_ends_it():
    metrics = GatewayMetrics()

    class Recorder:  # what the recorder's tap does first: name the file
        def session_started(self, session):
            session.recording = "/state/recordings/f-1.cast"
            return None

    routed, targets, _ = router(Recorder(), metrics)
    session = routed.open_session("alice", SessionRequest(), FakeSessionClient(), target="sw1")
    verifyObject(ISessionObserver, session._client._observers[0])  # the one it handed out
    session.close()  # the client went away first
    assert value(metrics, "sshgateway_recordings_total") == 1
    assert value(metrics, "sshgateway_sessions_active", front_protocol="unknown",
                 target_protocol="ssh1") == 0  # fmt: skip


# -- upstream failures: the bridge's end -----------------------------------------------


def bridge(connect_timeout=10.0, idle=None, target="dev1"):
    clock, pending = Clock(), defer.Deferred()
    sinks = []

    def connect(request, sink):
        sinks.append(sink)
        return pending

    BridgeSession(clock, FakeSessionClient(), SessionRequest(command=b"x"), connect,
                  username="alice", target=target, connect_timeout=connect_timeout,
                  idle_timeout=idle)  # fmt: skip
    return pending, sinks[0], clock


def test_upstream_failures_by_target_and_reason():
    metrics = GatewayMetrics()
    metrics.reconfigure(parse_config(CONFIG))
    with observing(metrics):
        bridge(target="sw1")[0].errback(UpstreamFailure("connection refused"))
        bridge(target="sw1")[0].errback(HostKeyChanged("host key changed"))
        bridge(target="sw1", connect_timeout=5)[2].advance(5)
        pending, sink, _ = bridge(target="sw1")
        pending.callback(FakeUpstream())
        sink.failed("connection lost")
        pending, _, clock = bridge(target="sw1", idle=30)
        pending.callback(FakeUpstream())
        clock.advance(30)
        bridge(target="not-configured")[0].errback(RuntimeError("bug"))
        pending, sink, _ = bridge(target="sw1")
        pending.callback(FakeUpstream())
        sink.exited(ExitInfo(status=1))  # a program's own failure is no upstream failure
    total = "sshgateway_upstream_failures_total"
    assert value(metrics, total, target="sw1", reason="open-failed") == 1
    assert value(metrics, total, target="sw1", reason="host-key-changed") == 1
    assert value(metrics, total, target="sw1", reason="timeout") == 1
    assert value(metrics, total, target="sw1", reason="lost") == 1
    assert value(metrics, total, target="sw1", reason="idle") == 1
    assert value(metrics, total, target="other", reason="internal") == 1
    assert sum(v for k, v in samples(metrics).items() if k[0] == total) == 6


# -- write errors ----------------------------------------------------------------------


def test_a_flow_writer_that_cannot_write_is_counted(tmp_path):
    metrics = GatewayMetrics()
    (tmp_path / "flows").write_text("a file where the directory should be")
    writer = FlowWriter(tmp_path / "flows")
    with observing(metrics):
        writer.write_flow(FlowRecorder("server", "192.0.2.7:1", "ssh2"))
    assert value(metrics, "sshgateway_write_errors_total", writer="flows") == 1


def test_the_audit_writer_s_errors_are_counted_by_their_log_key():
    metrics = GatewayMetrics()
    log = emitter(metrics)
    log.error("cannot write audit record: {error}", error="disk full", write_error="audit")
    log.error("cannot send audit record to syslog", write_error="audit-syslog")
    log.error("something else", write_error="/etc/passwd")
    assert value(metrics, "sshgateway_write_errors_total", writer="audit") == 1
    assert value(metrics, "sshgateway_write_errors_total", writer="audit-syslog") == 1
    assert value(metrics, "sshgateway_write_errors_total", writer="other") == 1


# -- the service -----------------------------------------------------------------------


def metrics_config(listen):
    text = CONFIG + (f'\n[metrics]\nlisten = "{listen}"\n' if listen else "")
    return parse_config(text)


class Reactor(MemoryReactor):
    """Its ports say whether they were stopped; port 9811 is taken by another program."""

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port == 9811:
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "in use"))
        listening = super().listenTCP(port, factory, backlog, interface)
        listening.stopped = False

        def stop():
            listening.stopped = True

        listening.stopListening = stop
        return listening


def test_the_service_listens_observes_while_it_serves_and_stops():
    reactor, publisher = Reactor(), LogPublisher()
    served = MetricsService.for_config(
        metrics_config("tcp:9810:interface=127.0.0.1"), reactor
    )
    served.publisher, served.site_factory = publisher, lambda metrics: "site"
    served.privilegedStartService()
    served.startService()
    [(port, site, _backlog, interface)] = reactor.tcpServers
    assert (port, site, interface) == (9810, "site", "127.0.0.1")
    events.emit(Logger(observer=publisher), events.LOGIN, "in", method="password", protocol="ssh2")
    assert value(served.metrics, "sshgateway_logins_total", protocol="ssh2", method="password",
                 result="success") == 1  # fmt: skip
    served.stopService()
    assert served.port is None and not publisher._observers


def test_with_listen_off_it_does_nothing_and_leaves_sessions_alone():
    reactor = Reactor()
    idle = MetricsService.for_config(metrics_config(None), reactor)
    idle.publisher = LogPublisher()
    idle.startService()
    assert not reactor.tcpServers and not idle.publisher._observers
    routed, _, _ = router(idle)
    session = routed.open_session("alice", SessionRequest(), FakeSessionClient(), target="sw1")
    assert not isinstance(session, TappedTarget)  # not wrapped: no observer wanted it


def test_a_reload_opens_moves_and_closes_the_endpoint():
    reactor = Reactor()
    served = MetricsService.for_config(metrics_config(None), reactor)
    served.publisher, served.site_factory = LogPublisher(), lambda metrics: "site"
    served.startService()
    served.reconfigure(metrics_config("tcp:9810:interface=127.0.0.1"))
    assert [s[0] for s in reactor.tcpServers] == [9810] and served.publisher._observers
    first = served.port
    served.reconfigure(metrics_config("tcp:9812:interface=127.0.0.1"))
    assert [s[0] for s in reactor.tcpServers] == [9810, 9812]
    assert first.stopped and served.port is not first
    served.reconfigure(metrics_config(None))
    assert served.port is None and not served.publisher._observers


def test_a_port_in_use_fails_start_up_with_one_line_and_a_reload_keeps_the_old_one():
    busy = MetricsService.for_config(metrics_config("tcp:9811"), Reactor())
    busy.site_factory = lambda metrics: "site"
    with pytest.raises(ListenError, match="cannot listen on tcp:9811: in use"):
        busy.privilegedStartService()
    served = MetricsService.for_config(metrics_config("tcp:9810"), Reactor())
    served.publisher, served.site_factory = LogPublisher(), lambda metrics: "site"
    served.startService()
    port = served.port
    served.reconfigure(metrics_config("tcp:9811"))
    assert served.port is port and served.listen == "tcp:9810" and not port.stopped


def test_the_gateway_serves_its_metrics_as_a_child_service_and_a_reload_moves_them(tmp_path):
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.server import Site

    from gateway.config import load_config
    from gateway.service import make_service

    def write(listen):
        path.write_text(
            f'listen = ["tcp:2222:interface=127.0.0.1"]\nstate_dir = "{tmp_path / "state"}"\n'
            f'[metrics]\nlisten = "{listen}"\n' + CONFIG
        )

    path = tmp_path / "gateway.toml"
    write("tcp:9810:interface=127.0.0.1")
    reactor = MemoryReactorClock()
    top = make_service(load_config(path), reactor)
    [served] = [tap for tap in top.session_taps if isinstance(tap, MetricsService)]
    assert served.parent is top and served in top.dispatcher.generation.targets.session_taps
    top.startService()
    try:
        listening = {port: factory for port, factory, _, _ in reactor.tcpServers}
        assert listening.keys() == {2222, 9810}
        site = listening[9810]
        assert isinstance(site, Site) and site.resource.children.keys() == {b"metrics"}
        write("tcp:9811:interface=127.0.0.1")
        assert top.reload()
        assert reactor.tcpServers[-1][0] == 9811 and served.listen.startswith("tcp:9811")
    finally:
        top.stopService()
    assert served.port is None and not served.running
