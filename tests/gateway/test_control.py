"""The control socket: its protocol in memory (StringTransport, iosim) over a registry
double or the real one, the peer-credential check, hostile requests; the socket itself on
a real reactor (mode, stale files, another gateway, bad paths); and its place in the
gateway's service (made after the privilege drop, a clear start-up error)."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.test import iosim

from gateway.config import ConfigError, parse_config
from gateway.control import (
    IDLE_TIMEOUT,
    MAX_REQUEST,
    ControlFactory,
    ControlService,
    ControlSocketError,
    listen_control,
    peer_credentials,
)
from gateway.live_sessions import LiveSessions, Operator, SessionSummary
from gateway.routing import Router
from gateway.service import make_service
from protocols.session import PtyRequest, SessionRequest, WindowSize
from tests.support.doubles import FakeSessionClient, FakeSessionRegistry, FakeTarget
from tests.support.gateway_helpers import LOCAL_ACCESS, ROUTED_TARGETS, fast_hash
from tests.support.sshd import close_reactor, fresh_reactor, run_until

ROOT = Operator("root", 0, 4242)
SUMMARY = SessionSummary(
    id="s-1", user="alice", source="192.0.2.7:40000", front_protocol="ssh1", target="sw1",
    target_protocol="ssh1", started=1_700_000_000.0, bytes_in=9, bytes_out=8,
    recording="/state/recordings/f-1.cast", command=None, subsystem=None, pty=True,
)  # fmt: skip


@pytest.fixture
def logged():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def connected(registry=None, peer: Operator | None = ROOT, owner: int = 0):
    """A control connection from ``peer`` to a gateway running as uid ``owner``."""
    clock = Clock()
    factory = ControlFactory(
        registry if registry is not None else FakeSessionRegistry([SUMMARY]),
        clock,
        owner_uid=lambda: owner,
        credentials_of=lambda transport: peer,
    )
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


def answers(transport: StringTransport) -> list[dict]:
    return [json.loads(line) for line in transport.value().splitlines()]


def send(protocol, *requests: dict) -> None:
    protocol.dataReceived(b"".join(json.dumps(r).encode() + b"\n" for r in requests))


# --- the protocol ------------------------------------------------------------------------


def test_list_answers_with_the_sessions():
    protocol, transport, _ = connected()
    send(protocol, {"request": "list"})
    assert answers(transport) == [{"ok": True, "sessions": [SUMMARY.to_json()]}]
    assert not transport.disconnecting


def test_kill_names_the_peer_as_the_operator_and_answers_with_the_session():
    registry = FakeSessionRegistry([SUMMARY])
    protocol, transport, _ = connected(registry)
    send(protocol, {"request": "kill", "session": "s-1", "message": "bye"})
    assert registry.kills == [("s-1", ROOT, "bye")]
    assert answers(transport) == [{"ok": True, "session": SUMMARY.to_json()}]


def test_an_unknown_session_is_an_error_and_the_connection_goes_on(logged):
    protocol, transport, _ = connected()
    send(protocol, {"request": "kill", "session": "nope"}, {"request": "list"})
    unknown, listing = answers(transport)
    assert unknown == {"ok": False, "error": "not_found", "message": "no live session nope"}
    assert listing["ok"] and not transport.disconnecting
    assert any("asked to end session 'nope': no such live session" in formatEvent(e) for e in logged)


def test_answers_keep_the_order_of_the_requests_when_the_registry_answers_later():
    registry = FakeSessionRegistry([SUMMARY], later=True)
    protocol, transport, _ = connected(registry)
    send(protocol, {"request": "kill", "session": "s-1"}, {"request": "list"})
    # Nothing more is read until the first request is answered.
    assert len(registry.pending) == 1 and registry.kills == [("s-1", ROOT, None)]
    assert transport.value() == b"" and transport.producerState == "paused"
    registry.fire_pending()
    registry.fire_pending()
    kill, listing = answers(transport)
    assert kill["ok"] and kill["session"]["id"] == "s-1"
    assert listing == {"ok": True, "sessions": []}
    assert transport.producerState == "producing"


def test_an_answer_for_a_peer_that_left_is_dropped():
    registry = FakeSessionRegistry([SUMMARY], later=True)
    protocol, transport, _ = connected(registry)
    send(protocol, {"request": "list"})
    protocol.connectionLost(None)
    registry.fire_pending()
    assert transport.value() == b""


def test_a_failing_registry_is_an_answer_not_a_dead_connection(logged):
    registry = FakeSessionRegistry()
    registry.list = lambda: 1 / 0
    protocol, transport, _ = connected(registry)
    send(protocol, {"request": "list"})
    [answer] = answers(transport)
    assert answer["error"] == "failed" and "see its log" in answer["message"]
    assert any(e.get("log_failure") is not None for e in logged)


@pytest.mark.parametrize(
    ("peer", "owner", "allowed"),
    [
        (Operator("gwrun", 998, 7), 998, True),  # the gateway's own account
        (ROOT, 998, True),
        (ROOT, 0, True),
        (Operator("mallory", 1001, 7), 998, False),
        (Operator("gwrun", 998, 7), 0, False),  # a gateway run as root: root only
        (None, 0, False),  # credentials that cannot be read
    ],
)
def test_only_the_gateways_account_and_root_may_use_it(peer, owner, allowed, logged):
    protocol, transport, _ = connected(peer=peer, owner=owner)
    send(protocol, {"request": "list"})
    [answer] = answers(transport)
    assert answer["ok"] is allowed
    if not allowed:
        assert answer["error"] == "refused" and transport.disconnecting
        assert any(
            formatEvent(e).startswith("control socket: refused ") for e in logged
        ), [formatEvent(e) for e in logged]


def test_a_refused_peer_gets_one_line_saying_who_may():
    protocol, transport, _ = connected(peer=Operator("mallory", 1001, 7), owner=0)
    assert answers(transport) == [
        {"ok": False, "error": "refused", "message": "only root may use this socket"}
    ]


HOSTILE = {
    "not JSON": b"GET / HTTP/1.0\n",
    "not an object": b"[1, 2]\n",
    "unknown request": b'{"request": "reboot"}\n',
    "no request": b"{}\n",
    "kill without id": b'{"request": "kill"}\n',
    "kill with a number": b'{"request": "kill", "session": 5}\n',
    "kill with a huge id": b'{"request": "kill", "session": "' + b"x" * 200 + b'"}\n',
    "message not text": b'{"request": "kill", "session": "s-1", "message": ["x"]}\n',
    "deep nesting": b"[" * 5000 + b"\n",
    "not UTF-8": b'{"request": "\xff\xfe"}\n',
    "huge number": b'{"request": ' + b"9" * 5000 + b"}\n",
    "a line too long": b"x" * (MAX_REQUEST + 10),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_answered_logged_and_closed(data, logged):
    registry = FakeSessionRegistry([SUMMARY])
    protocol, transport, _ = connected(registry)
    protocol.dataReceived(data + b'\n{"request": "kill", "session": "s-1"}\n')
    [answer] = answers(transport)
    assert answer["ok"] is False and answer["error"] == "bad_request"
    assert transport.disconnecting and registry.kills == []  # nothing after it is read
    lines = [formatEvent(e) for e in logged]
    assert any(line.startswith("control socket: root (uid 0) sent ") for line in lines), lines
    assert not any(e.get("log_failure") is not None for e in logged)


def test_an_idle_connection_is_closed():
    protocol, transport, clock = connected()
    clock.advance(IDLE_TIMEOUT - 1)
    send(protocol, {"request": "list"})
    clock.advance(IDLE_TIMEOUT - 1)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


CONFIG = f"""
[users.alice]
password = "{fast_hash("pw")}"
targets = ["sw1"]
""" + ROUTED_TARGETS


class LineClient(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self) -> None:
        self.answers: list[dict] = []

    def lineReceived(self, line: bytes) -> None:
        self.answers.append(json.loads(line))


def test_list_and_kill_a_routed_session_over_a_connection():
    # The real registry behind a Router, the protocol over iosim's loopback.
    config = parse_config(CONFIG)
    targets = {name: FakeTarget(name) for name in config.targets}
    registry = LiveSessions()
    routed = Router(config, targets, Clock())
    routed.session_taps = [registry]
    client_leg = FakeSessionClient()
    routed.open_session(
        "alice", SessionRequest(pty=PtyRequest("xterm", WindowSize(24, 80))), client_leg,
        target="sw1",
    )  # fmt: skip
    factory = ControlFactory(registry, Clock(), credentials_of=lambda t: ROOT)
    client, _, pump = iosim.connectedServerAndClient(lambda: factory.buildProtocol(None), LineClient)
    client.sendLine(b'{"request": "list"}')
    pump.flush()
    [listing] = client.answers
    [summary] = listing["sessions"]
    assert (summary["user"], summary["target"], summary["pty"]) == ("alice", "sw1", True)
    client.sendLine(json.dumps({"request": "kill", "session": summary["id"]}).encode())
    pump.flush()
    assert client.answers[1] == {"ok": True, "session": summary}
    assert b"sshgateway: session ended by an operator" in client_leg.err
    assert targets["sw1"].opened[0].closed


# --- the socket on a real reactor --------------------------------------------------------


@pytest.fixture
def reactor():
    r = fresh_reactor()
    yield r
    close_reactor(r)



def ask(reactor, path: Path, request: dict) -> dict:
    """One request through a real client socket, the reactor turning meanwhile."""
    client = socket.socket(socket.AF_UNIX)
    client.setblocking(False)
    client.connect(str(path))
    client.sendall(json.dumps(request).encode() + b"\n")
    received = bytearray()

    def answered() -> bool:
        try:
            received.extend(client.recv(65536))
        except BlockingIOError:
            pass
        return received.endswith(b"\n")

    assert run_until(reactor, answered, timeout=10)
    client.close()
    return json.loads(received)


def test_peer_credentials_are_the_peer_process():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert peer_credentials(ours) == (os.getpid(), os.geteuid(), os.getegid())


def test_the_socket_is_the_owners_only_and_answers(tmp_path, reactor):
    path = tmp_path / "control.sock"
    port = listen_control(reactor, path, ControlFactory(FakeSessionRegistry([SUMMARY]), reactor))
    st = path.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert ask(reactor, path, {"request": "list"})["sessions"] == [SUMMARY.to_json()]
    port.stopListening()
    assert run_until(reactor, lambda: not path.exists(), timeout=10)


def test_a_stale_socket_is_replaced(tmp_path, reactor, logged):
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listening: what a killed gateway leaves
    stale.close()
    port = listen_control(reactor, path, ControlFactory(FakeSessionRegistry(), reactor))
    assert ask(reactor, path, {"request": "list"}) == {"ok": True, "sessions": []}
    assert any("replaced the stale control socket" in formatEvent(e) for e in logged)
    port.stopListening()


def test_a_socket_another_gateway_serves_is_left_alone(tmp_path, reactor):
    path = tmp_path / "control.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))
    other.listen(1)
    with other, pytest.raises(ControlSocketError) as error:
        listen_control(reactor, path, ControlFactory(FakeSessionRegistry(), reactor))
    assert str(error.value) == (
        f"another gateway (pid {os.getpid()}) serves the control socket {path}: two gateways "
        "cannot share a state directory; give this one its own state_dir (or [control] socket)"
    )
    assert stat.S_ISSOCK(path.lstat().st_mode)


def test_a_file_that_is_no_socket_is_left_alone(tmp_path, reactor):
    path = tmp_path / "control.sock"
    path.write_text("precious")
    with pytest.raises(ControlSocketError, match="a file that is no socket is in the way"):
        listen_control(reactor, path, ControlFactory(FakeSessionRegistry(), reactor))
    assert path.read_text() == "precious"


def test_bad_paths_are_one_line_errors(tmp_path, reactor):
    factory = ControlFactory(FakeSessionRegistry(), reactor)
    with pytest.raises(ControlSocketError, match=r"cannot listen on the control socket .*: No such file"):
        listen_control(reactor, tmp_path / "missing" / "control.sock", factory)
    with pytest.raises(ControlSocketError, match="longer than the 107 bytes"):
        listen_control(reactor, tmp_path / ("x" * 120) / "control.sock", factory)


# --- in the gateway's service ------------------------------------------------------------


def service_config(tmp_path: Path, extra: str = ""):
    text = f'''
listen = ["tcp:0:interface=127.0.0.1"]
state_dir = "{tmp_path / "state"}"
{extra}
[users.alice]
authorized_keys = "{tmp_path / "authorized_keys"}"
{LOCAL_ACCESS}'''
    return parse_config(text, "test.toml", tmp_path)


def test_the_socket_is_made_after_the_privilege_drop_over_the_sessions_registry(tmp_path):
    reactor = MemoryReactorClock()
    top = make_service(service_config(tmp_path), reactor)
    top.privilegedStartService()  # as root: endpoints bound, then the drop
    assert reactor.unixServers == []
    top.startService()
    try:
        [(path, factory, _, mode, _)] = reactor.unixServers
        assert (path, mode) == (str(tmp_path / "state" / "control.sock"), 0o600)
        [registry] = [t for t in top.session_taps if isinstance(t, LiveSessions)]
        assert factory.registry is registry
        assert registry in top.dispatcher.generation.targets.session_taps
    finally:
        top.stopService()


def test_a_configured_socket_path(tmp_path):
    reactor = MemoryReactorClock()
    top = make_service(service_config(tmp_path, '[control]\nsocket = "run/gw.sock"'), reactor)
    top.startService()
    top.stopService()
    assert reactor.unixServers[0][0] == str(tmp_path / "run" / "gw.sock")
    assert [s.name for s in top if isinstance(s, ControlService)] == ["control"]


def test_a_busy_socket_ends_the_start_with_one_line(tmp_path, capsys):
    reactor = MemoryReactorClock()
    top = make_service(service_config(tmp_path), reactor)
    path = tmp_path / "state" / "control.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))
    other.listen(1)
    with other, pytest.raises(SystemExit) as exit_:
        top.privilegedStartService()
    assert exit_.value.code == 1
    assert reactor.tcpServers == []  # stopped before it listened anywhere
    assert capsys.readouterr().err == (
        f"sshgateway: another gateway (pid {os.getpid()}) serves the control socket {path}: two "
        "gateways cannot share a state directory; give this one its own state_dir (or [control] "
        "socket)\n"
    )
    top.stopService()


def test_the_config_key_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="at most 107 bytes"):
        service_config(tmp_path, f'[control]\nsocket = "/{"x" * 120}"')
    with pytest.raises(ConfigError, match="unknown key"):
        service_config(tmp_path, '[control]\nsockets = "x"')
