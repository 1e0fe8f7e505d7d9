"""The SSH-1 state machine's tables (protocols/ssh1/messages.py: ALLOWED, TRANSITIONS,
Awaiting) are consistent with each other, the cores move only by them, and a message or
a call out of order ends cleanly: a DISCONNECT with a reason for the peer's, a
RuntimeError with nothing sent for our caller's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocols.session_values import PtyRequest, WindowSize
from protocols.ssh1 import events as ev
from protocols.ssh1 import messages as m
from protocols.ssh1.client_connection import ClientConnection
from protocols.ssh1.packet import PacketEncoder
from protocols.ssh1.server_connection import ServerConnection
from protocols.ssh1.wire import Reader, Writer
from tests.support.ssh1.minclient import MiniClient, drain, host_key, server_key, string, user_key

ROOT = Path(__file__).resolve().parents[2]
SERVER, CLIENT = m.Role.SERVER, m.Role.CLIENT
PHASES = {role: {phase for r, phase in m.ALLOWED if r is role} for role in m.Role}


def received_by(role: m.Role, msg_type: int) -> bool:
    """Whether ``role`` is the side that receives ``msg_type`` (MSG_*: both sides)."""
    peer = "SSH_CMSG_" if role is SERVER else "SSH_SMSG_"
    return m.NAMES[msg_type].startswith((peer, "SSH_MSG_"))


def sent_by(role: m.Role, msg_type: int) -> bool:
    own = "SSH_SMSG_" if role is SERVER else "SSH_CMSG_"
    return m.NAMES[msg_type].startswith((own, "SSH_MSG_"))


def successors(role: m.Role, phase: m.Phase) -> set[m.Phase]:
    return {after for (r, p, _), after in m.TRANSITIONS.items() if r is role and p is phase}


def reachable(role: m.Role, start: m.Phase, step) -> set[m.Phase]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in step(role, todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# ---------------------------------------------------------------- the tables themselves
def test_rows_name_phases_of_their_role_and_known_messages():
    for (role, phase, msg_type), after in m.TRANSITIONS.items():
        assert phase in PHASES[role] and after in PHASES[role], (role, phase, after)
        assert msg_type in m.NAMES


@pytest.mark.parametrize("role", list(m.Role), ids=lambda r: r.value)
def test_every_phase_is_reachable_from_the_start(role):
    assert m.INITIAL_PHASE in PHASES[role]
    assert reachable(role, m.INITIAL_PHASE, successors) == PHASES[role]


@pytest.mark.parametrize("role", list(m.Role), ids=lambda r: r.value)
def test_every_phase_can_reach_closed(role):
    for phase in PHASES[role]:
        assert m.Phase.CLOSED in reachable(role, phase, successors), phase


def test_closed_is_terminal():
    assert not [key for key in m.TRANSITIONS if key[1] is m.Phase.CLOSED]
    assert all(not m.ALLOWED[(role, m.Phase.CLOSED)] for role in m.Role)


def test_each_row_is_a_message_allowed_in_its_phase_or_one_the_role_sends():
    for role, phase, msg_type in m.TRANSITIONS:
        name = m.NAMES[msg_type]
        if received_by(role, msg_type):
            assert m.allowed(role, phase, msg_type), f"{role.value}: {name} in {phase.value}"
        else:
            assert sent_by(role, msg_type), f"{role.value} never sends {name}"


@pytest.mark.parametrize("role", list(m.Role), ids=lambda r: r.value)
def test_a_received_message_that_moves_the_phase_has_a_row_wherever_it_may_arrive(role):
    """Otherwise it would leave the phase alone in one phase and move it in another."""
    movers = {msg for r, _, msg in m.TRANSITIONS if r is role and received_by(role, msg)}
    for phase in PHASES[role] - {m.Phase.CLOSED}:
        for msg_type in movers:
            if m.allowed(role, phase, msg_type):
                assert (role, phase, msg_type) in m.TRANSITIONS, (phase, m.NAMES[msg_type])


@pytest.mark.parametrize("core", [ServerConnection, ClientConnection])
def test_bulk_data_short_path_ends_where_the_tables_do(core):
    """Connection.next_event hands a role's session data out without the phase tables:
    each such message must be one the tables allow in INTERACTIVE, that keeps the phase."""
    assert core.bulk_data
    for msg_type in core.bulk_data:
        assert received_by(core.role, msg_type)
        assert m.allowed(core.role, m.Phase.INTERACTIVE, msg_type)
        assert m.next_phase(core.role, m.Phase.INTERACTIVE, msg_type) is m.Phase.INTERACTIVE


def test_disconnect_closes_every_phase():
    for role, phase in m.ALLOWED:
        if phase is not m.Phase.CLOSED:
            assert m.next_phase(role, phase, m.SSH_MSG_DISCONNECT) is m.Phase.CLOSED


def test_only_advance_assigns_the_phase():
    """The acceptance grep: one assignment of ``.phase`` in the whole SSH-1 package."""
    hits = []
    for path in sorted((ROOT / "protocols" / "ssh1").glob("*.py")):
        for line in path.read_text().splitlines():
            if re.search(r"\.phase\s*(=(?!=)|:[^=]*=)", line):
                hits.append((path.name, line.strip()))
    assert hits == [("connection.py", "self.phase = m.next_phase(self.role, self.phase, msg_type)")]


# ---------------------------------------------------------------- both cores, one session
def awaiting_kinds(*values):
    for value in values:
        assert value is None or (isinstance(value, m.Awaiting) and not isinstance(value, str))


class Wire:
    """A client core wired to a server core; ``check`` states both phases after a step."""

    def __init__(self) -> None:
        self.client = ClientConnection(("3des",))
        self.server = ServerConnection(host_key(), server_key(), ("3des",))

    def to_client(self) -> list[ev.Event]:
        self.client.receive_data(self.server.data_to_send())
        return drain(self.client)

    def to_server(self) -> list[ev.Event]:
        self.server.receive_data(self.client.data_to_send())
        return drain(self.server)

    def check(self, server: m.Phase, client: m.Phase, pending=None, awaiting=None) -> None:
        awaiting_kinds(self.server.pending, self.client.pending, self.client.awaiting)
        assert (self.server.phase, self.client.phase) == (server, client)
        assert self.server.pending is pending
        assert self.client.awaiting is awaiting


def test_a_whole_session_moves_both_cores_as_the_table_says():
    P, A = m.Phase, m.Awaiting
    w = Wire()
    w.check(P.SESSION_KEY, P.PUBLIC_KEY)  # the server's constructor sent its keys
    w.to_client()
    assert w.client.pending is A.HOST_KEY
    w.client.send_session_key()
    w.check(P.SESSION_KEY, P.REPLY, awaiting=A.SESSION_KEY)
    w.to_server()
    w.check(P.USER, P.REPLY, awaiting=A.SESSION_KEY)  # our SUCCESS moved the server
    assert w.to_client() == [ev.RequestAnswered("session-key", True)]
    w.client.send_user(b"alice")
    w.to_server()
    w.check(P.USER, P.REPLY, pending=A.USER, awaiting=A.USER)
    w.server.send_failure()
    w.check(P.AUTH, P.REPLY, awaiting=A.USER)
    w.to_client()
    # RSA: the key is "authorised", the challenge answered, and then refused anyway
    w.client.send_rsa(user_key().public_key().public_numbers().n)
    w.to_server()
    w.check(P.AUTH, P.REPLY, pending=A.RSA, awaiting=A.RSA)
    numbers = user_key().public_key().public_numbers()
    value, _ = w.server.make_rsa_challenge(numbers.e, numbers.n)
    w.server.send_rsa_challenge(value)
    w.check(P.AUTH_RSA, P.REPLY, awaiting=A.RSA)
    [challenge] = w.to_client()
    w.check(P.AUTH_RSA, P.REPLY, awaiting=A.RSA_CHALLENGE)
    w.client.answer_rsa_challenge(user_key(), challenge.value)
    w.to_server()
    w.check(P.AUTH_RSA, P.REPLY, pending=A.AUTH, awaiting=A.RSA_RESPONSE)
    w.server.send_failure()
    w.check(P.AUTH, P.REPLY, awaiting=A.RSA_RESPONSE)
    w.to_client()
    w.client.send_password(b"pw")
    w.to_server()
    w.check(P.AUTH, P.REPLY, pending=A.AUTH, awaiting=A.PASSWORD)
    w.server.send_success()
    w.check(P.PREPARATORY, P.REPLY, awaiting=A.PASSWORD)
    w.to_client()
    w.client.request_compression(6)
    w.to_server()
    w.check(P.PREPARATORY, P.REPLY, pending=A.COMPRESSION, awaiting=A.COMPRESSION)
    w.server.send_success()
    assert w.to_client() == [ev.RequestAnswered("compression", True)]
    w.client.request_pty(PtyRequest("vt100", WindowSize(24, 80)))
    w.to_server()
    w.check(P.PREPARATORY, P.REPLY, pending=A.REQUEST, awaiting=A.PTY)
    w.server.send_failure()
    w.check(P.PREPARATORY, P.REPLY, awaiting=A.PTY)
    assert w.to_client() == [ev.RequestAnswered("pty", False)]
    w.client.exec_shell()
    w.check(P.PREPARATORY, P.INTERACTIVE)
    assert w.to_server() == [ev.ExecShell()]
    w.check(P.INTERACTIVE, P.INTERACTIVE)
    w.server.send_exit_status(3)
    w.check(P.CLOSING, P.INTERACTIVE)
    assert w.to_client() == [ev.ExitStatus(3)]
    w.check(P.CLOSING, P.CLOSED)
    assert w.to_server() == [ev.ExitConfirmed()]
    w.check(P.CLOSED, P.CLOSED)


def test_success_to_the_user_name_skips_authentication():
    w = Wire()
    w.to_client()
    w.client.send_session_key()
    w.to_server()
    w.to_client()
    w.client.send_user(b"guest")
    w.to_server()
    w.server.send_success()
    w.check(m.Phase.PREPARATORY, m.Phase.REPLY, awaiting=m.Awaiting.USER)


# ---------------------------------------------------------------- the peer out of order
def server_in(phase: m.Phase) -> tuple[ServerConnection, MiniClient]:
    """A server core driven by the test client into ``phase``, every reply read."""
    server = ServerConnection(host_key(), server_key(), ("3des",))
    client = MiniClient()
    [(_, payload)] = client.feed(server.data_to_send())
    client.parse_public_key(payload)

    def send(msg_type: int, payload: bytes = b"") -> None:
        server.receive_data(client.packet(msg_type, payload))
        drain(server)

    def session_key() -> None:
        server.receive_data(client.session_key_packet())
        drain(server)

    def user_refused() -> None:
        send(m.SSH_CMSG_USER, string(b"u"))
        server.send_failure()

    def rsa_challenged() -> None:
        modulus = user_key().public_key().public_numbers().n
        send(m.SSH_CMSG_AUTH_RSA, Writer().mpint(modulus).getvalue())
        server.send_rsa_challenge(12345)

    def rsa_refused() -> None:
        send(m.SSH_CMSG_AUTH_RSA_RESPONSE, bytes(16))
        server.send_failure()

    def password_accepted() -> None:
        send(m.SSH_CMSG_AUTH_PASSWORD, string(b"pw"))
        server.send_success()

    path = [
        (m.Phase.SESSION_KEY, lambda: None),
        (m.Phase.USER, session_key),
        (m.Phase.AUTH, user_refused),
        (m.Phase.AUTH_RSA, rsa_challenged),
        (m.Phase.AUTH, rsa_refused),
        (m.Phase.PREPARATORY, password_accepted),
        (m.Phase.INTERACTIVE, lambda: send(m.SSH_CMSG_EXEC_SHELL)),
        (m.Phase.CLOSING, lambda: server.send_exit_status(0)),
    ]
    for reached, step in path:
        step()
        client.feed(server.data_to_send())
        assert server.phase is reached and server.pending is None
        if reached is phase:
            return server, client
    raise AssertionError(f"no way to {phase}")


def refused(conn, events, reply_packets, expected: str) -> None:
    """The connection failed with ``expected`` in its reason, told the peer so, and is closed."""
    assert [type(e) for e in events] == [ev.ConnectionFailed], events
    assert expected in events[0].reason
    assert conn.closed and conn.pending is None
    assert reply_packets[-1][0] == m.SSH_MSG_DISCONNECT
    assert expected in Reader(reply_packets[-1][1]).string().decode()
    assert conn.next_event() is ev.CLOSED


SERVER_PHASES = sorted(PHASES[SERVER] - {m.Phase.PUBLIC_KEY, m.Phase.CLOSED}, key=lambda p: p.value)


@pytest.mark.parametrize("phase", SERVER_PHASES, ids=lambda p: p.value)
def test_a_client_message_out_of_its_phase_disconnects_the_server(phase):
    for msg_type in sorted(m.NAMES):
        if not received_by(SERVER, msg_type) or m.allowed(SERVER, phase, msg_type):
            continue
        server, client = server_in(phase)
        server.receive_data(client.packet(msg_type, b""))
        events = drain(server)
        expected = f"{m.NAMES[msg_type]} not allowed in phase {phase.value}"
        refused(server, events, client.feed(server.data_to_send()), expected)


def test_nothing_more_is_decoded_while_a_reply_is_owed():
    server, client = server_in(m.Phase.PREPARATORY)
    server.receive_data(client.packet(m.SSH_CMSG_AGENT_REQUEST_FORWARDING))
    assert drain(server) == [ev.AgentForwardingRequested()]
    assert server.pending is m.Awaiting.REQUEST
    server.receive_data(client.packet(m.SSH_CMSG_AGENT_REQUEST_FORWARDING))
    assert server.next_event() is ev.PAUSED  # nothing is decoded while a reply is owed
    server.send_success()
    client.feed(server.data_to_send())
    assert drain(server) == [ev.AgentForwardingRequested()]  # the second, now in turn
    server.receive_data(client.packet(m.SSH_CMSG_EXEC_SHELL))
    server.send_failure()
    client.feed(server.data_to_send())
    assert drain(server) == [ev.ExecShell()]


def client_in(phase: m.Phase) -> tuple[ClientConnection, ServerConnection]:
    w = Wire()
    if phase is not m.Phase.PUBLIC_KEY:
        w.to_client()
        w.client.send_session_key()
        w.to_server()
        w.to_client()
    if phase is m.Phase.INTERACTIVE:
        w.client.send_user(b"guest")
        w.to_server()
        w.server.send_success()
        w.to_client()
        w.client.exec_shell()
        w.to_server()
    assert w.client.phase is phase and w.client.pending is None
    return w.client, w.server


@pytest.mark.parametrize(
    "phase", [m.Phase.PUBLIC_KEY, m.Phase.REPLY, m.Phase.INTERACTIVE], ids=lambda p: p.value
)
def test_a_server_message_out_of_its_phase_disconnects_the_client(phase):
    for msg_type in sorted(m.NAMES):
        if not received_by(CLIENT, msg_type) or m.allowed(CLIENT, phase, msg_type):
            continue
        client, server = client_in(phase)
        if phase is m.Phase.PUBLIC_KEY:  # before the server's keys: in clear
            server.data_to_send()
            client.receive_data(PacketEncoder().encode(msg_type))
        else:  # the server core as a raw, hostile sender
            server._send(msg_type)
            client.receive_data(server.data_to_send())
        expected = f"{m.NAMES[msg_type]} not allowed in phase {phase.value}"
        events = drain(client)
        assert [type(e) for e in events] == [ev.ConnectionFailed] and expected in events[0].reason
        assert client.closed and client.pending is None and client.next_event() is ev.CLOSED
        server.receive_data(client.data_to_send())
        [told] = drain(server)
        assert isinstance(told, ev.PeerDisconnected) and expected in told.reason


# ---------------------------------------------------------------- our caller out of order
def assert_refused_call(conn, call) -> None:
    before = (conn.phase, conn.pending, conn.packets_out)
    with pytest.raises(RuntimeError):
        call()
    assert (conn.phase, conn.pending, conn.packets_out) == before
    assert conn.data_to_send() == b""


def test_server_calls_out_of_order_raise_and_send_nothing():
    server, _ = server_in(m.Phase.SESSION_KEY)
    server.data_to_send()
    for call in (server.send_success, server.send_failure, lambda: server.send_rsa_challenge(1),
                 lambda: server.send_stdout(b"x"), lambda: server.send_exit_status(0)):
        assert_refused_call(server, call)
    server, client = server_in(m.Phase.AUTH)
    server.receive_data(client.packet(m.SSH_CMSG_AUTH_PASSWORD, string(b"pw")))
    drain(server)
    assert_refused_call(server, lambda: server.send_rsa_challenge(1))  # not an RSA request
    server, _ = server_in(m.Phase.PREPARATORY)
    for call in (server.send_failure, lambda: server.send_exit_status(0),
                 lambda: server.send_channel_data(0, b"x")):
        assert_refused_call(server, call)


def test_client_calls_out_of_order_raise_and_send_nothing():
    client, _ = client_in(m.Phase.PUBLIC_KEY)
    for call in (client.send_session_key, lambda: client.send_user(b"u"), client.exec_shell,
                 lambda: client.send_stdin(b"x")):
        assert_refused_call(client, call)
    client, _ = client_in(m.Phase.REPLY)
    client.send_user(b"u")
    client.data_to_send()
    for call in (lambda: client.send_password(b"pw"), client.exec_shell,
                 lambda: client.answer_rsa_challenge(user_key(), 1)):
        assert_refused_call(client, call)
    client, _ = client_in(m.Phase.INTERACTIVE)
    client.data_to_send()
    for call in (client.send_session_key, lambda: client.send_user(b"u"), client.exec_shell):
        assert_refused_call(client, call)

