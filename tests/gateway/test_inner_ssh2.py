"""The gateway's SSH-2 server inside a jump channel (gateway.inner_ssh2), in memory: the
transport over the channel (writes, back-pressure, close), the bound portal (``none``
succeeds for any name, yields the outer user routed to the target), the version
exchange and its refusals, a whole inner connection from Conch's client (``none``
login, a command routed as ``alice+dev1`` with its exit status) and its flow record
linked to the outer one; the target's host key on disk."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.conch.ssh import common
from twisted.cred import credentials
from twisted.internet import task
from twisted.internet.interfaces import IConsumer, ITransport
from twisted.logger import globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.auth import GatewayUser
from gateway.hostkeys import HostKeyError, load_or_create_target_key, load_target_key
from gateway.inner_ssh2 import SERVER_VERSION, ChannelTransport, InnerConnection, bound_portal
from protocols.auth import AuthLimits, LoginContext
from protocols.flow import FlowRecorder
from protocols.record import ConnectionRecord
from protocols.session import ExitInfo, IGatewayUser, ISessionClient, ISessionTarget
from protocols.ssh2.factory import SSH2ServerFactory
from protocols.ssh2.settings import SSH2Settings
from tests.support.doubles import FakeProducer, FakeSessionClient, FakeSessionTarget
from tests.support.gateway_helpers import LogCapture as _Capture
from tests.support.ssh2.harness import (
    ClientConnection,
    ClientSession,
    ClientTransport,
    host_keys,
)


class LogCapture(_Capture):
    """The log lines written while the ``with`` block runs."""

    def __enter__(self) -> LogCapture:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


# -- the transport over the channel -------------------------------------------------------


def test_channel_transport_writes_channel_data_and_counts_it():
    client, record = FakeSessionClient(), ConnectionRecord(peer="p")
    transport = ChannelTransport(client, record)
    assert verifyObject(ITransport, transport) and verifyObject(IConsumer, transport)
    transport.write(b"abc")
    transport.writeSequence([b"de", b"f"])
    assert bytes(client.out) == b"abcdef" and record.bytes_out == 6


def test_channel_transport_gives_its_producer_to_the_channel():
    client = FakeSessionClient()
    transport = ChannelTransport(client, ConnectionRecord(peer="p"))
    producer = FakeProducer()
    transport.registerProducer(producer, True)
    assert client.producer is producer  # the channel pauses it while its window is used up
    transport.unregisterProducer()
    assert client.producer is None


def test_channel_transport_close_ends_the_channel_once():
    client = FakeSessionClient()
    transport = ChannelTransport(client, ConnectionRecord(peer="p"))
    transport.registerProducer(FakeProducer(), True)
    transport.loseConnection()
    assert client.eof and client.exit == ExitInfo(status=0) and client.producer is None
    transport.write(b"late")  # dropped, not an output after the exit
    transport.loseConnection()
    assert bytes(client.out) == b""


# -- the bound portal ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["admin", "alice", "anything at all"])
def test_none_succeeds_for_any_name_and_yields_the_bound_avatar(name):
    avatar = GatewayUser("alice", object(), ()).routed_to("dev1")
    portal = bound_portal(avatar, "dev1")
    assert portal.listCredentialsInterfaces() == [credentials.IAnonymous]
    context = LoginContext(protocol="ssh2", peer="p")
    context.begin(name, "none")
    with LogCapture() as logs:
        result = portal.login(credentials.Anonymous(), context, IGatewayUser)
    interface, got, logout = result.result
    assert interface is IGatewayUser and got is avatar
    logout()
    assert f"jump: alice -> dev1: inner SSH-2 login as {name!r}" in logs.text()


def test_the_bound_portal_takes_no_password():
    portal = bound_portal(GatewayUser("alice", object(), ()), "dev1")
    d = portal.login(credentials.UsernamePassword(b"admin", b"x"), None, IGatewayUser)
    assert d.called and d.result.check(Exception)
    d.addErrback(lambda _: None)


def test_routed_to_keeps_the_login_and_names_the_target():
    user = GatewayUser(
        "alice", object(), ("LANG",), password="pw", forced_command=b"show", environment={"A": "1"}
    )
    routed = user.routed_to("dev1")
    assert routed.username == "alice" and routed.target == "dev1"
    assert routed._password == "pw" and routed.forced_command == b"show"
    assert routed.environment == {"A": "1"} and routed.env_allow == ("LANG",)
    assert routed.restrictions is user.restrictions and routed.targets is user.targets


# -- version exchange (a recording protocol stands in for the SSH-2 transport) -------------


class RecordingProtocol:
    def __init__(self, server_version: bytes, client_version: bytes) -> None:
        self.versions = (server_version, client_version)
        self.data = bytearray()
        self.transport: Any = None
        self.lost = False

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class RecordingFactory:
    def __init__(self) -> None:
        self.built: list[RecordingProtocol] = []

    def build_protocol(self, record: Any, server: bytes, client: bytes) -> RecordingProtocol:
        self.built.append(RecordingProtocol(server, client))
        return self.built[-1]


class Flows:
    def __init__(self) -> None:
        self.written: list[FlowRecorder] = []

    def write_flow(self, flow: FlowRecorder) -> None:
        self.written.append(flow)


class OuterChannel(FakeSessionClient):
    peer = "192.0.2.1:5000"
    flow_id = "f-outer"


def inner(flows: Flows | None = None, **kw: Any) -> tuple[InnerConnection, Any, task.Clock]:
    clock = task.Clock()
    client = OuterChannel()
    connection = InnerConnection(
        RecordingFactory(),
        client,
        username="alice",
        target="dev1",
        clock=clock,
        flow_done=flows.write_flow if flows is not None else None,
        **kw,
    )
    assert verifyObject(ISessionTarget, connection)
    clock.advance(0)
    return connection, client, clock


def test_the_version_line_is_sent_once_the_channel_is_open_then_handed_over():
    connection, client, _ = inner()
    assert bytes(client.out) == SERVER_VERSION + b"\r\n"
    assert SERVER_VERSION.startswith(b"SSH-2.0-sshgateway_")
    connection.write_stdin(b"SSH-2.0-OpenSSH_9.6\r\nfirst packet")
    (protocol,) = connection.factory.built
    assert protocol.versions == (SERVER_VERSION, b"SSH-2.0-OpenSSH_9.6")
    assert bytes(protocol.data) == b"first packet"
    connection.write_stdin(b" more")
    assert bytes(protocol.data) == b"first packet more"
    assert connection.record.client_version == "SSH-2.0-OpenSSH_9.6"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"SSH-1.5-old\n", "does not speak SSH-2"),
        (b"GET / HTTP/1.1\r\n", "does not speak SSH-2"),
        (b"x" * 300, "longer than 255 bytes"),
    ],
)
def test_anything_but_an_ssh2_line_is_refused_with_a_log_line(line, why):
    connection, client, _ = inner()
    with LogCapture() as logs:
        connection.write_stdin(line)
    assert bytes(client.out).endswith(b"Protocol major versions differ.\n")
    assert client.exit == ExitInfo(status=0) and not connection.factory.built
    assert why in logs.text()


def test_no_version_line_in_time_ends_the_channel():
    connection, client, clock = inner(version_timeout=5)
    with LogCapture() as logs:
        clock.advance(5)
    assert client.exit is not None and "no identification line" in logs.text()


def test_a_channel_closed_before_it_opened_starts_nothing():
    clock = task.Clock()
    client = OuterChannel()
    connection = InnerConnection(
        RecordingFactory(), client, username="alice", target="dev1", clock=clock
    )
    connection.close()
    clock.advance(0)
    assert bytes(client.out) == b"" and not clock.getDelayedCalls()


def test_close_ends_the_inner_connection_and_writes_its_linked_record():
    flows = Flows()
    connection, client, clock = inner(flows)
    connection.write_stdin(b"SSH-2.0-x\r\n")
    (protocol,) = connection.factory.built
    with LogCapture() as logs:
        connection.close()
        connection.close()
    assert protocol.lost and "jump: inner connection closed" in logs.text()
    (flow,) = flows.written
    assert flow.link == "f-outer" and flow.user == "alice" and flow.target == "dev1"
    assert flow.role == "server" and flow.protocol == "ssh2"
    assert flow.peer == "192.0.2.1:5000 jump:dev1"
    assert flow.bytes == {"c2s": len(b"SSH-2.0-x\r\n"), "s2c": len(SERVER_VERSION) + 2}
    assert not clock.getDelayedCalls()


# -- a whole inner connection: Conch's client logs in with none and runs a command ---------


@implementer(ISessionClient)
class Pipe(OuterChannel):
    """The jump channel between the client's transport and the inner connection."""

    def __init__(self) -> None:
        super().__init__()
        self.to_client = bytearray()

    def write_stdout(self, data: bytes) -> None:
        self.to_client += data


class Targets:
    """Stands in for the Router: records how the inner session was opened."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, Any, dict]] = []

    def open_session(self, username: str, request: Any, client: Any, **kw: Any) -> Any:
        self.opened.append((username, request, kw))
        target = FakeSessionTarget(request, client)
        client.write_stdout(b"hi\n")
        client.send_eof()
        client.exited(ExitInfo(status=7))
        return target


class NoneAuth:
    """Conch's client auth sends ``none`` first; that is all this one tries."""

    def __init__(self, user: bytes, conn: Any) -> None:
        from twisted.conch.ssh import userauth

        class Auth(userauth.SSHUserAuthClient):
            def getPublicKey(self) -> Any:
                return None

            def getPassword(self, prompt: Any = None) -> Any:
                return None

        self.auth = Auth(user, conn)


class Wire:
    def __init__(self, user: bytes = b"admin") -> None:
        from twisted.internet.testing import StringTransport

        self.clock = task.Clock()
        self.targets = Targets()
        avatar = GatewayUser("alice", self.targets, ()).routed_to("dev1")
        factory = SSH2ServerFactory(
            None, host_keys(), SSH2Settings(), AuthLimits(), self.clock
        ).with_portal(bound_portal(avatar, "dev1"))
        self.flows = Flows()
        self.pipe = Pipe()
        self.inner = InnerConnection(
            factory,
            self.pipe,
            username="alice",
            target="dev1",
            clock=self.clock,
            flow_done=self.flows.write_flow,
        )
        self.conn = ClientConnection()
        self.client = ClientTransport(NoneAuth(user, self.conn).auth)
        self.wire = StringTransport()
        self.client.makeConnection(self.wire)
        self.clock.advance(0)
        self.pump()

    def pump(self) -> None:
        for _ in range(100):
            moved = False
            if self.pipe.to_client:
                data, self.pipe.to_client[:] = bytes(self.pipe.to_client), b""
                self.client.dataReceived(data)
                moved = True
            sent = self.wire.value()
            if sent:
                self.wire.clear()
                self.inner.write_stdin(sent)
                moved = True
            if not moved:
                return


def test_a_client_logs_in_with_none_and_runs_a_command_routed_to_the_target():
    w = Wire(user=b"whoever")
    assert w.conn.started, w.pipe.exit
    session = ClientSession(conn=w.conn)
    w.conn.openChannel(session)
    w.pump()
    session.request(b"exec", common.NS(b"echo hi; exit 7"))
    w.pump()
    assert bytes(session.out) == b"hi\n" and session.exit_status == 7
    ((username, request, kw),) = w.targets.opened
    assert username == "alice" and kw["target"] == "dev1"  # as alice+dev1 would
    assert request.command == b"echo hi; exit 7"
    assert w.inner.record.user == "whoever" and w.inner.record.auth_method == "none"
    w.inner.close()
    (flow,) = w.flows.written
    assert flow.link == "f-outer" and flow.user == "alice"


def test_the_client_sees_the_factorys_host_key():
    w = Wire()
    assert w.client.host_key in {k.public().blob() for k in host_keys().values()}


# -- the target's host key on disk ---------------------------------------------------------


def test_a_targets_host_key_is_made_once_with_mode_0600(tmp_path):
    state = tmp_path / "state"
    with pytest.raises(HostKeyError):
        load_target_key(state, "dev1")
    key = load_or_create_target_key(state, "dev1")
    path = state / "targets" / "dev1_ed25519_key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (state / "targets").stat().st_mode & 0o777 == 0o700
    assert load_or_create_target_key(state, "dev1").blob() == key.blob()
    assert load_target_key(state, "dev1").blob() == key.blob()
    assert load_or_create_target_key(state, "dev2").blob() != key.blob()


def test_a_targets_host_key_readable_by_others_is_refused(tmp_path):
    load_or_create_target_key(tmp_path, "dev1")
    (tmp_path / "targets" / "dev1_ed25519_key").chmod(0o644)
    with pytest.raises(HostKeyError, match="too open"):
        load_or_create_target_key(tmp_path, "dev1")


def test_garbage_after_the_version_line_ends_the_channel_cleanly():
    clock = task.Clock()
    avatar = GatewayUser("alice", Targets(), ()).routed_to("dev1")
    factory = SSH2ServerFactory(
        None, host_keys(), SSH2Settings(), AuthLimits(), clock
    ).with_portal(bound_portal(avatar, "dev1"))
    flows = Flows()
    client = OuterChannel()
    connection = InnerConnection(
        factory, client, username="alice", target="dev1", clock=clock, flow_done=flows.write_flow
    )
    clock.advance(0)
    with LogCapture() as logs:
        connection.write_stdin(b"SSH-2.0-x\r\n" + b"\xff" * 64)
    assert client.exit == ExitInfo(status=0) and client.eof
    assert "Traceback" not in logs.text() and "disconnecting" in logs.text()
    connection.close()
    (flow,) = flows.written
    assert flow.close_reason
    assert not clock.getDelayedCalls()  # no login grace timer left on a dead channel
