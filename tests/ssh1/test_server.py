"""The Twisted SSH-1 server in memory: StringTransport, Clock, a fake target, and the
test-only client. Login, session, back-pressure, forwarding policy, timers, records."""

from __future__ import annotations

import os
import struct

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from protocols.auth import AuthLimits
from protocols.session import ExitInfo, WindowSize
from protocols.ssh1 import keys
from protocols.ssh1 import messages as m
from protocols.ssh1.server import SSH1ServerFactory
from protocols.ssh1.settings import SSH1Settings
from protocols.ssh1.wire import Reader, Writer
from tests.support.doubles import FakeProducer, Realm, RSAChecker
from tests.support.ssh1.minclient import (
    FUZZ_EXAMPLES,
    MiniClient,
    host_key,
    server_key,
    string,
    user_key,
)
from tests.support.ssh1.server_rig import DEFAULT_LIMITS, DEFAULT_SETTINGS, SSH1ServerRig


class Harness(SSH1ServerRig):
    """The server in front of a Realm of fake sessions: alice (password "secret" or the
    test user key) and twostep (refused by policy)."""

    def __init__(self, settings=DEFAULT_SETTINGS, limits=DEFAULT_LIMITS, client_version=b"SSH-1.5-t"):
        self.realm = Realm()
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret", twostep=b"secret")
        rsa_checker = RSAChecker({b"alice": keys.public_numbers(user_key())})
        portal = Portal(self.realm, [checker, rsa_checker])
        super().__init__(portal, settings, limits, client_version)

    def login(self, user=b"alice", password=b"secret"):
        return super().login(user, password)


@pytest.fixture
def logs():
    captured = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


def text(logs) -> str:
    from twisted.logger import formatEvent

    return "\n".join(formatEvent(e) for e in logs)


def test_password_login_and_session():
    h = Harness()
    assert h.login() == [(m.SSH_SMSG_SUCCESS, b"")]
    assert h.record.auth_result == "success" and h.record.user == "alice"
    pty = Writer().string(b"vt100").uint32(24).uint32(80).uint32(0).uint32(0).raw(b"\0").getvalue()
    assert h.send(m.SSH_CMSG_REQUEST_PTY, pty) == [(m.SSH_SMSG_SUCCESS, b"")]
    assert h.send(m.SSH_CMSG_X11_REQUEST_FORWARDING, string(b"MIT") + string(b"c")) == [
        (m.SSH_SMSG_FAILURE, b"")
    ]
    assert h.send(m.SSH_CMSG_AGENT_REQUEST_FORWARDING) == [(m.SSH_SMSG_FAILURE, b"")]
    assert h.send(m.SSH_CMSG_PORT_FORWARD_REQUEST, struct.pack(">I", 80) + string(b"h") + struct.pack(">I", 80)) == [
        (m.SSH_SMSG_FAILURE, b"")
    ]
    assert h.send(m.SSH_CMSG_MAX_PACKET_SIZE, struct.pack(">I", 8192)) == [(m.SSH_SMSG_SUCCESS, b"")]
    assert h.send(m.SSH_CMSG_EXEC_CMD, string(b"cat")) == []
    target = h.realm.avatars[0].targets[0]
    assert target.request.command == b"cat" and target.request.pty.term == "vt100"
    h.send(m.SSH_CMSG_STDIN_DATA, string(b"abc"))
    h.send(m.SSH_CMSG_WINDOW_SIZE, struct.pack(">4I", 30, 100, 0, 0))
    h.send(m.SSH_CMSG_EOF)
    assert target.stdin_writes == [b"abc"] and target.eof and target.sizes == [WindowSize(30, 100, 0, 0)]
    target.client.write_stdout(b"x" * 20000)
    target.client.write_stderr(b"oops")
    target.client.send_eof()
    target.client.exited(ExitInfo(status=3))
    replies = h.received()
    stdout = b"".join(Reader(p).string() for t, p in replies if t == m.SSH_SMSG_STDOUT_DATA)
    assert stdout == b"x" * 20000
    assert max(len(p) for t, p in replies) <= 8192  # max packet size honoured
    assert replies[-1] == (m.SSH_SMSG_EXITSTATUS, struct.pack(">I", 3))
    h.send(m.SSH_CMSG_EXIT_CONFIRMATION)
    assert h.transport.disconnecting
    h.protocol.connectionLost(None)
    assert h.record.close_reason == "session finished"
    assert target.closed and h.realm.logouts == 1
    assert h.record.algorithms == {
        "compression": "none", "host_key_bits": "2048", "server_key_bits": "1024", "cipher": "3des",
    }



def test_the_request_carries_the_connections_addresses():
    # What the local target turns into SSH_CLIENT and SSH_CONNECTION: the client connection's
    # two ends as its transport reports them.
    from twisted.internet.address import IPv4Address

    from protocols.session import ConnectionAddresses

    h = Harness()
    h.transport.peerAddr = IPv4Address("TCP", "192.0.2.7", 50123)
    h.transport.hostAddr = IPv4Address("TCP", "198.51.100.1", 2222)
    h.login()
    h.send(m.SSH_CMSG_EXEC_CMD, string(b"echo $SSH_CLIENT"))
    target = h.realm.avatars[0].targets[0]
    assert target.request.addresses == ConnectionAddresses("192.0.2.7", 50123, "198.51.100.1", 2222)

def test_signal_exit_status():
    h = Harness()
    h.login()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    target = h.realm.avatars[0].targets[0]
    assert target.request.command is None
    target.client.exited(ExitInfo(signal="TERM"))
    assert h.received() == [(m.SSH_SMSG_EXITSTATUS, struct.pack(">I", 128 + 15))]


def test_exit_confirmation_timeout(logs):
    h = Harness()
    h.login()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    h.realm.avatars[0].targets[0].client.exited(ExitInfo(status=0))
    h.received()
    h.clock.advance(31)
    assert h.received()[-1][0] == m.SSH_MSG_DISCONNECT
    assert h.transport.disconnecting


def test_wrong_password_and_unknown_user_look_the_same():
    answers = []
    for user, password in ((b"alice", b"wrong"), (b"nobody", b"wrong")):
        h = Harness()
        assert h.login(user, password) == []  # nothing before the failure delay
        h.clock.advance(0.99)
        assert h.received() == []
        h.clock.advance(0.01)
        answers.append(h.received())
        assert h.record.auth_result == "failure"
    assert answers[0] == answers[1] == [(m.SSH_SMSG_FAILURE, b"")]


def test_password_works_after_failure():
    h = Harness()
    h.login(password=b"wrong")
    h.clock.advance(1)
    assert h.received() == [(m.SSH_SMSG_FAILURE, b"")]
    assert h.send(m.SSH_CMSG_AUTH_PASSWORD, string(b"secret")) == [(m.SSH_SMSG_SUCCESS, b"")]


def test_attempt_limit_disconnects():
    h = Harness(limits=AuthLimits(max_attempts=2, failure_delay=0.5))
    h.login(password=b"bad")
    h.clock.advance(1)
    assert h.received() == [(m.SSH_SMSG_FAILURE, b"")]
    h.send(m.SSH_CMSG_AUTH_PASSWORD, string(b"bad"))
    h.clock.advance(1)
    [(msg_type, payload)] = h.received()
    assert msg_type == m.SSH_MSG_DISCONNECT
    assert b"too many authentication failures" in payload
    assert h.transport.disconnecting


def test_grace_time(logs):
    h = Harness(limits=AuthLimits(grace_time=10))
    h.key_exchange()
    h.clock.advance(10)
    [(msg_type, payload)] = h.received()
    assert msg_type == m.SSH_MSG_DISCONNECT and b"grace time" in payload
    assert h.transport.disconnecting
    assert "login grace time exceeded" in text(logs)


def test_grace_time_before_key_exchange_disconnects_in_clear():
    h = Harness(limits=AuthLimits(grace_time=5))
    h.clock.advance(5)
    assert MiniClient().feed(h.transport.value())[-1][0] == m.SSH_MSG_DISCONNECT


def test_two_step_policy_refused_and_logged(logs):
    h = Harness()
    h.login(user=b"twostep")
    h.clock.advance(1)
    assert h.received() == [(m.SSH_SMSG_FAILURE, b"")]
    assert "SSH-1 cannot do two-step authentication" in text(logs)
    assert "secret" not in text(logs)


def test_rsa_login():
    h = Harness()
    h.key_exchange()
    h.send(m.SSH_CMSG_USER, string(b"alice"))
    e, n = keys.public_numbers(user_key())
    [(msg_type, payload)] = h.send(m.SSH_CMSG_AUTH_RSA, Writer().mpint(n).getvalue())
    assert msg_type == m.SSH_SMSG_AUTH_RSA_CHALLENGE
    challenge = keys.decrypt_challenge(user_key(), Reader(payload).mpint())
    response = keys.challenge_response(challenge, h.client.session_id)
    assert h.send(m.SSH_CMSG_AUTH_RSA_RESPONSE, response) == [(m.SSH_SMSG_SUCCESS, b"")]
    assert h.record.auth_method == "publickey" and h.record.auth_result == "success"


def test_rsa_wrong_response_and_unlisted_key():
    h = Harness()
    h.key_exchange()
    h.send(m.SSH_CMSG_USER, string(b"alice"))
    e, n = keys.public_numbers(user_key())
    h.send(m.SSH_CMSG_AUTH_RSA, Writer().mpint(n).getvalue())
    assert h.send(m.SSH_CMSG_AUTH_RSA_RESPONSE, bytes(16)) == []
    h.clock.advance(1)
    assert h.received() == [(m.SSH_SMSG_FAILURE, b"")]
    # An unlisted key gets FAILURE, no challenge.
    assert h.send(m.SSH_CMSG_AUTH_RSA, Writer().mpint(n + 2).getvalue()) == []
    h.clock.advance(1)
    assert h.received() == [(m.SSH_SMSG_FAILURE, b"")]
    assert h.send(m.SSH_CMSG_AUTH_PASSWORD, string(b"secret")) == [(m.SSH_SMSG_SUCCESS, b"")]


def test_rhosts_refused(logs):
    h = Harness()
    h.key_exchange()
    h.send(m.SSH_CMSG_USER, string(b"alice"))
    assert h.send(m.SSH_CMSG_AUTH_RHOSTS, string(b"root")) == [(m.SSH_SMSG_FAILURE, b"")]
    assert "refused rhosts" in text(logs)


def test_compression():
    h = Harness()
    h.login()
    assert h.send(m.SSH_CMSG_REQUEST_COMPRESSION, struct.pack(">I", 0)) == [(m.SSH_SMSG_FAILURE, b"")]
    assert h.send(m.SSH_CMSG_REQUEST_COMPRESSION, struct.pack(">I", 9)) == [(m.SSH_SMSG_SUCCESS, b"")]
    h.client.encoder.start_compression(9)
    h.client.decoder.start_decompression()
    h.send(m.SSH_CMSG_EXEC_CMD, string(b"x"))
    target = h.realm.avatars[0].targets[0]
    target.client.write_stdout(b"a" * 100000)
    wire = h.transport.value()
    assert len(wire) < 5000
    replies = h.received()
    assert b"".join(Reader(p).string() for t, p in replies) == b"a" * 100000
    assert h.record.algorithms["compression"] == "zlib-9"


def wire_bodies(data: bytes) -> list[int]:
    """The size of each SSH-1 packet's body (padding to CRC) in a stream of packets; its
    length field is sent in clear."""
    sizes, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        body = length + 8 - length % 8
        sizes.append(body)
        pos += 4 + body
    assert pos == len(data)
    return sizes


@pytest.mark.parametrize("compress", [False, True])
def test_data_packets_fit_putty_input_limit(compress):
    """PuTTY waits for a whole packet before decoding it, but stops reading its socket
    while more than 32768 bytes wait: a packet body over 32768 bytes can stall it for
    good (plink -1 downloads stalled with 32 KiB of data per packet). Stdout, stderr and
    forwarded data, incompressible data through compression too, stay below that."""
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    h = Harness(settings=SSH1Settings(permit_open=("127.0.0.1:7000",)))
    h.factory.clock = reactor
    h.login()
    if compress:
        assert h.send(m.SSH_CMSG_REQUEST_COMPRESSION, struct.pack(">I", 6)) == [
            (m.SSH_SMSG_SUCCESS, b"")
        ]
        h.client.encoder.start_compression(6)
        h.client.decoder.start_decompression()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    target = h.realm.avatars[0].targets[0]
    h.send(m.SSH_MSG_PORT_OPEN, port_open(5, 7000))
    reactor.advance(0)
    forward = reactor.tcpClients[0][2].buildProtocol(None)
    forward.makeConnection(StringTransport())
    h.received()
    output = os.urandom(200_000)
    target.client.write_stdout(output)
    target.client.write_stderr(output)
    forward.dataReceived(output)
    sizes = wire_bodies(h.transport.value())
    assert len(sizes) >= 3 * 200_000 // 32768
    assert max(sizes) <= 32768


def test_back_pressure_both_ways():
    h = Harness()
    h.login()
    h.send(m.SSH_CMSG_EXEC_CMD, string(b"cat"))
    target = h.realm.avatars[0].targets[0]
    # The program stops reading stdin: we stop reading from the client...
    target.producer.pauseProducing()
    assert h.transport.producerState == "paused"
    h.protocol.dataReceived(h.client.packet(m.SSH_CMSG_STDIN_DATA, string(b"later")))
    assert target.stdin_writes == []  # buffered, not delivered while paused
    target.producer.resumeProducing()
    assert h.transport.producerState == "producing"
    assert target.stdin_writes == [b"later"]
    # ...and when the client's TCP buffer is full, the program's output source pauses.
    output = FakeProducer()
    target.client.registerProducer(output, True)
    h.transport.producer.pauseProducing()
    assert output.paused
    # A client that does not read gets nothing more read from it either (as sshd does).
    assert h.transport.producerState == "paused"
    h.transport.producer.resumeProducing()
    assert not output.paused
    assert h.transport.producerState == "producing"
    target.client.unregisterProducer()


def test_exit_resumes_paused_input():
    h = Harness()
    h.login()
    h.send(m.SSH_CMSG_EXEC_CMD, string(b"cat"))
    target = h.realm.avatars[0].targets[0]
    target.producer.pauseProducing()
    target.client.exited(ExitInfo(status=0))
    h.received()
    h.send(m.SSH_CMSG_EXIT_CONFIRMATION)
    assert h.transport.disconnecting


def test_port_open_refused_by_default(logs):
    h = Harness()
    h.login()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    open_msg = Writer().uint32(7).string(b"127.0.0.1").uint32(22).getvalue()
    assert h.send(m.SSH_MSG_PORT_OPEN, open_msg) == [
        (m.SSH_MSG_CHANNEL_OPEN_FAILURE, struct.pack(">I", 7))
    ]
    assert "refused port forward to 127.0.0.1:22" in text(logs)


PUTTY = b"SSH-1.5-PuTTY_Release_0.78"


def port_open(channel: int, port: int, host: bytes = b"127.0.0.1") -> bytes:
    return Writer().uint32(channel).string(host).uint32(port).getvalue()


def test_port_open_before_the_session_refused_and_session_kept(logs):
    """plink -1 -N -L: no shell or command ever starts, yet the client opens forwards in the
    preparatory phase. Each is refused, a permitted destination too (SSH-1 forwards only
    within a session); the connection stays, and a session can still start. (SMSG_FAILURE
    is no answer here: plink takes a FAILURE it did not ask for as fatal, "Received
    SSH1_SMSG_FAILURE with no outstanding request".)"""
    h = Harness(settings=SSH1Settings(permit_open=("127.0.0.1:7000",)))
    h.login()
    for channel, port in ((3, 7000), (4, 22)):
        assert h.send(m.SSH_MSG_PORT_OPEN, port_open(channel, port)) == [
            (m.SSH_MSG_CHANNEL_OPEN_FAILURE, struct.pack(">I", channel))
        ]
    assert not h.transport.disconnecting
    logged = text(logs)
    assert "refused port forward to 127.0.0.1:7000: no shell or command started yet" in logged
    assert "refused port forward to 127.0.0.1:22: no shell or command started yet" in logged
    # still the preparatory phase: requests are answered, then the session starts
    assert h.send(m.SSH_CMSG_AGENT_REQUEST_FORWARDING) == [(m.SSH_SMSG_FAILURE, b"")]
    assert h.send(m.SSH_CMSG_EXEC_SHELL) == []
    assert h.realm.avatars[0].targets[0].request.command is None
    assert not h.transport.disconnecting and not h.record.close_reason


def test_putty_refused_by_open_and_close(logs):
    """PuTTY aborts on CHANNEL_OPEN_FAILURE (it frees the channel twice): its refusals are
    a confirmation and an immediate CLOSE; its data for the channel is dropped, its CLOSE
    confirmed. Before the session (plink -N) and within it alike."""
    h = Harness(settings=SSH1Settings(permit_open=("127.0.0.1:7000",)), client_version=PUTTY)
    h.login()
    assert h.send(m.SSH_MSG_PORT_OPEN, port_open(3, 7000)) == [
        (m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">II", 3, 0)),
        (m.SSH_MSG_CHANNEL_CLOSE, struct.pack(">I", 3)),
    ]
    assert h.send(m.SSH_MSG_CHANNEL_DATA, Writer().uint32(0).string(b"x").getvalue()) == []
    assert h.send(m.SSH_MSG_CHANNEL_CLOSE, struct.pack(">I", 0)) == [
        (m.SSH_MSG_CHANNEL_CLOSE_CONFIRMATION, struct.pack(">I", 3))
    ]
    assert h.send(m.SSH_MSG_CHANNEL_CLOSE_CONFIRMATION, struct.pack(">I", 0)) == []
    assert "refused port forward to 127.0.0.1:7000: no shell or command" in text(logs)
    assert h.send(m.SSH_CMSG_EXEC_CMD, string(b"cat")) == []
    assert h.send(m.SSH_MSG_PORT_OPEN, port_open(4, 22)) == [
        (m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">II", 4, 1)),
        (m.SSH_MSG_CHANNEL_CLOSE, struct.pack(">I", 4)),
    ]
    # the confirmation may cross our CLOSE: either order ends the channel
    assert h.send(m.SSH_MSG_CHANNEL_CLOSE_CONFIRMATION, struct.pack(">I", 1)) == []
    assert h.send(m.SSH_MSG_CHANNEL_CLOSE, struct.pack(">I", 1)) == []
    assert "refused port forward to 127.0.0.1:22" in text(logs)
    assert not h.protocol._channels and not h.transport.disconnecting


def test_putty_refusals_left_open_are_bounded():
    """A client that never closes refused channels holds at most MAX_FORWARDS of them;
    past that it gets CHANNEL_OPEN_FAILURE, which costs us nothing to keep."""
    from protocols.ssh1.server import MAX_FORWARDS

    h = Harness(client_version=PUTTY)
    h.login()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    for channel in range(MAX_FORWARDS):
        assert h.send(m.SSH_MSG_PORT_OPEN, port_open(channel, 22))[0][0] == (
            m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION
        )
    assert h.send(m.SSH_MSG_PORT_OPEN, port_open(99, 22)) == [
        (m.SSH_MSG_CHANNEL_OPEN_FAILURE, struct.pack(">I", 99))
    ]
    assert len(h.protocol._channels) == MAX_FORWARDS


def test_data_for_unknown_channel_disconnects():
    h = Harness()
    h.login()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    replies = h.send(m.SSH_MSG_CHANNEL_DATA, Writer().uint32(3).string(b"x").getvalue())
    assert replies[-1][0] == m.SSH_MSG_DISCONNECT


def test_protocol_error_logged_and_closed(logs):
    h = Harness()
    h.key_exchange()
    replies = h.send(m.SSH_CMSG_EXEC_SHELL)
    assert replies[-1][0] == m.SSH_MSG_DISCONNECT
    assert h.transport.disconnecting
    assert "not allowed in phase user" in text(logs)
    assert "not allowed" in h.record.close_reason


def test_connection_lost_mid_auth_is_quiet():
    h = Harness()
    h.login(password=b"wrong")
    h.protocol.connectionLost(None)
    h.clock.advance(5)  # the delayed failure must not touch the closed connection
    assert h.transport.value() == b""


def test_server_key_rotation_only_when_used():
    h = Harness(settings=SSH1Settings(server_key_lifetime=100))
    assert h.generated == 1 and h.factory.server_key_generations == 1
    h.clock.advance(100)  # used by the harness connection
    assert h.generated == 2
    h.clock.advance(100)  # unused since
    assert h.generated == 2
    calls = len(h.clock.getDelayedCalls())
    h.factory.stop()
    assert len(h.clock.getDelayedCalls()) == calls - 1


def test_host_key_size_gap_enforced():
    with pytest.raises(ValueError, match="at least 128 bits"):
        SSH1ServerFactory(
            None, host_key(), SSH1Settings(server_key_bits=2000), AuthLimits(), Clock(),
            key_generator=lambda bits: server_key(),
        )


def test_only_configured_ciphers_offered():
    h = Harness(settings=SSH1Settings(ciphers=("blowfish",)))
    assert h.client.public_key["ciphers"] == 1 << 6


# ---------------------------------------------------------------- fuzzing the whole server
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_RELEVANT = sorted(
    m.PREPARATORY_REQUESTS
    | m.ALLOWED[(m.Role.SERVER, m.Phase.CLOSING)]
    | {m.SSH_CMSG_EXEC_SHELL, m.SSH_CMSG_EXEC_CMD, m.SSH_MSG_IGNORE, m.SSH_MSG_DEBUG}
)


# What a fuzz input may end in. Every input passes only if
#   * no failure was logged (no event carries ``log_failure``: an internal error, an
#     unhandled Deferred error, a handler's traceback), and everything the server wrote
#     decodes as packets for the client; and then either
#   * closed with a reason: the transport is closing, the core's phase is CLOSED, and
#       - the server's last packet is its one SSH_MSG_DISCONNECT, whose reason is readable
#         (non-empty printable UTF-8) and is the record's close_reason, or
#       - the client sent a well-formed DISCONNECT: the server wrote none and the record
#         says "peer disconnected: ..."; or
#   * still open and consistent: not closing, the core in one of ``open_phases`` and not
#     failed, no DISCONNECT written, no close_reason, nothing left unsent, and at most BUFFER_LIMIT
#     bytes of the client's input buffered.


def assert_clean_outcome(h, written, events, open_phases) -> str:
    """The invariant above for rig ``h``, given every packet the server ``written`` so
    far; returns "closed", "closed by the client" or "open"."""
    from protocols.ssh1.connection import BUFFER_LIMIT

    failures = [e for e in events if e.get("log_failure") is not None]
    assert not failures, "a failure was logged:\n" + "\n".join(
        text([e]) + "\n" + e["log_failure"].getTraceback() for e in failures
    )
    core = h.protocol.core
    disconnects = [i for i, (t, _) in enumerate(written) if t == m.SSH_MSG_DISCONNECT]
    if h.transport.disconnecting:
        assert core.closed and h.protocol.done
        if not disconnects:
            assert h.record.close_reason.startswith("peer disconnected: "), h.record.close_reason
            return "closed by the client"
        assert disconnects == [len(written) - 1], "DISCONNECT is not the last packet"
        reader = Reader(written[-1][1])
        reason = reader.string().decode("utf-8")
        reader.end()
        assert reason and reason.isprintable(), reason
        assert h.record.close_reason == reason
        return "closed"
    assert not disconnects and not h.record.close_reason
    assert not core.closed and not core.close_reason and not h.protocol.done
    assert core.phase in open_phases, core.phase
    assert not core._out, "queued output was never written"
    assert core._decoder.buffered <= BUFFER_LIMIT
    return "open"


_AFTER_LOGIN = {m.Phase.PREPARATORY, m.Phase.INTERACTIVE, m.Phase.CLOSING}
_BEFORE_LOGIN = {m.Phase.PUBLIC_KEY, m.Phase.SESSION_KEY, m.Phase.USER, m.Phase.AUTH, m.Phase.AUTH_RSA}


@settings(max_examples=FUZZ_EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(_RELEVANT), st.integers(0, 255)),
            st.one_of(
                st.binary(max_size=200),
                # Well-formed-looking fields: a uint32 or two, and a string.
                st.builds(
                    lambda a, b, text: struct.pack(">II", a, b) + string(text),
                    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=50),
                ),
                st.builds(lambda text: string(text), st.binary(max_size=100)),
            ),
        ),
        max_size=12,
    ),
    st.integers(0, 3),
)
@example([(m.SSH_MSG_IGNORE, string(b"x"))], 1)  # stays open
@example([(m.SSH_MSG_DISCONNECT, string(b"bye"))], 0)  # closed by the client
def test_fuzz_server_after_login(logs, packets, splits):
    h = Harness()
    h.login()
    logs.clear()  # only what the fuzz input causes
    written = []
    for msg_type, payload in packets:
        wire = h.client.packet(msg_type, payload)
        step = max(1, len(wire) // (splits + 1))
        for i in range(0, len(wire), step):
            h.protocol.dataReceived(wire[i : i + step])
        h.clock.advance(2)
        written += h.received()
        outcome = assert_clean_outcome(h, written, logs, _AFTER_LOGIN)
        if outcome != "open":
            break
    event(outcome if packets else "no packets")
    h.protocol.connectionLost(None)
    h.clock.advance(100)
    assert not [e for e in logs if e.get("log_failure") is not None]


@settings(max_examples=FUZZ_EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=3000))
def test_fuzz_server_raw_bytes(logs, data):
    h = Harness()
    logs.clear()
    h.protocol.dataReceived(data)
    written = h.received()
    event(assert_clean_outcome(h, written, logs, _BEFORE_LOGIN))
    h.clock.advance(200)
    written += h.received()
    # A protocol error, or the grace time at the latest.
    assert assert_clean_outcome(h, written, logs, _BEFORE_LOGIN) != "open"
    h.protocol.connectionLost(None)
    assert not [e for e in logs if e.get("log_failure") is not None]


def test_port_forward_to_allowed_destination():
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    h = Harness(settings=SSH1Settings(permit_open=("127.0.0.1:7000",)))
    h.factory.clock = reactor  # the endpoint needs IReactorTCP; timers stay on h.clock
    h.login()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    open_msg = Writer().uint32(5).string(b"127.0.0.1").uint32(7000).getvalue()
    assert h.send(m.SSH_MSG_PORT_OPEN, open_msg) == []  # nothing until the socket connects
    reactor.advance(0)
    [(host, port, factory, _timeout, _bind)] = reactor.tcpClients
    assert (host, port) == ("127.0.0.1", 7000)
    socket_side = StringTransport()
    forward = factory.buildProtocol(None)
    forward.makeConnection(socket_side)
    assert h.received() == [(m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">II", 5, 0))]
    # client -> destination
    h.send(m.SSH_MSG_CHANNEL_DATA, Writer().uint32(0).string(b"ping").getvalue())
    assert socket_side.value() == b"ping"
    # destination -> client, paused together with everything else when the client is full
    forward.dataReceived(b"pong")
    assert h.received() == [(m.SSH_MSG_CHANNEL_DATA, struct.pack(">I", 5) + string(b"pong"))]
    h.transport.producer.pauseProducing()
    assert socket_side.producerState == "paused"
    h.transport.producer.resumeProducing()
    assert socket_side.producerState == "producing"
    # a full destination stops reading from the client
    socket_side.producer.pauseProducing()
    assert h.transport.producerState == "paused"
    socket_side.producer.resumeProducing()
    assert h.transport.producerState == "producing"
    # the destination closes: CLOSE to the client, which confirms
    forward.connectionLost(None)
    assert h.received() == [(m.SSH_MSG_CHANNEL_CLOSE, struct.pack(">I", 5))]
    h.send(m.SSH_MSG_CHANNEL_CLOSE_CONFIRMATION, struct.pack(">I", 0))
    # late messages for the closed channel are ignored, not fatal
    assert h.send(m.SSH_MSG_CHANNEL_DATA, Writer().uint32(0).string(b"late").getvalue()) == []
    assert not h.transport.disconnecting


@pytest.mark.parametrize(
    "client_version, answer",
    [
        (b"SSH-1.5-t", [(m.SSH_MSG_CHANNEL_OPEN_FAILURE, struct.pack(">I", 5))]),
        (PUTTY, [(m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">II", 5, 0)),
                 (m.SSH_MSG_CHANNEL_CLOSE, struct.pack(">I", 5))]),
    ],
)  # fmt: skip
def test_port_forward_whose_destination_refuses(logs, client_version, answer):
    from twisted.internet.error import ConnectionRefusedError
    from twisted.internet.testing import MemoryReactorClock
    from twisted.python.failure import Failure

    reactor = MemoryReactorClock()
    h = Harness(settings=SSH1Settings(permit_open=("127.0.0.1:7000",)), client_version=client_version)
    h.factory.clock = reactor
    h.login()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    assert h.send(m.SSH_MSG_PORT_OPEN, port_open(5, 7000)) == []
    reactor.advance(0)
    connector_factory = reactor.tcpClients[0][2]
    connector_factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    reactor.advance(1)
    assert h.received() == answer
    assert "port forward to 127.0.0.1:7000 failed" in text(logs)
    if client_version == PUTTY:
        assert h.send(m.SSH_MSG_CHANNEL_CLOSE, struct.pack(">I", 0)) == [
            (m.SSH_MSG_CHANNEL_CLOSE_CONFIRMATION, struct.pack(">I", 5))
        ]
    assert not h.protocol._channels and not h.transport.disconnecting


def test_port_forward_closed_by_client():
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    h = Harness(settings=SSH1Settings(permit_open=("localhost:7000",)))
    h.factory.clock = reactor
    h.login()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    h.send(m.SSH_MSG_PORT_OPEN, Writer().uint32(9).string(b"localhost").uint32(7000).getvalue())
    reactor.advance(0)
    factory = reactor.tcpClients[0][2]
    socket_side = StringTransport()
    forward = factory.buildProtocol(None)
    forward.makeConnection(socket_side)
    h.received()
    assert h.send(m.SSH_MSG_CHANNEL_CLOSE, struct.pack(">I", 0)) == [
        (m.SSH_MSG_CHANNEL_CLOSE_CONFIRMATION, struct.pack(">I", 9))
    ]
    assert socket_side.disconnecting
    forward.connectionLost(None)
    assert h.received() == []  # no second CLOSE


def test_connection_lost_during_rsa_challenge_leaves_no_timers():
    h = Harness()
    h.key_exchange()
    h.send(m.SSH_CMSG_USER, string(b"alice"))
    e, n = keys.public_numbers(user_key())
    [(msg_type, _)] = h.send(m.SSH_CMSG_AUTH_RSA, Writer().mpint(n).getvalue())
    assert msg_type == m.SSH_SMSG_AUTH_RSA_CHALLENGE
    h.protocol.connectionLost(None)
    h.factory.stop()
    assert [c for c in h.clock.getDelayedCalls() if c.active()] == []


def _agent_harness(allow=True, client_version=b"SSH-1.5-t"):
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    h = Harness(settings=SSH1Settings(allow_agent_forwarding=allow))
    h.protocol.client_version = client_version
    h.factory.clock = reactor
    h.login()
    return h, reactor


def test_agent_forwarding_refused_by_default(logs):
    h, reactor = _agent_harness(allow=False)
    assert h.send(m.SSH_CMSG_AGENT_REQUEST_FORWARDING) == [(m.SSH_SMSG_FAILURE, b"")]
    assert reactor.unixServers == []
    assert "refused agent forwarding (not allowed)" in text(logs)


def test_agent_forwarding_not_offered_to_13_clients():
    h, reactor = _agent_harness(client_version=b"SSH-1.3-old")
    assert h.send(m.SSH_CMSG_AGENT_REQUEST_FORWARDING) == [(m.SSH_SMSG_FAILURE, b"")]


def test_agent_forwarding_relays():
    import os

    h, reactor = _agent_harness()
    assert h.send(m.SSH_CMSG_AGENT_REQUEST_FORWARDING) == [(m.SSH_SMSG_SUCCESS, b"")]
    [(path, factory, _backlog, mode, _pid)] = reactor.unixServers
    assert mode == 0o600 and os.stat(os.path.dirname(path)).st_mode & 0o077 == 0
    h.send(m.SSH_CMSG_EXEC_SHELL)
    target = h.realm.avatars[0].targets[0]
    assert target.request.env["SSH_AUTH_SOCK"] == path
    # The program connects: we ask the client for a channel and read nothing meanwhile.
    program = StringTransport()
    agent = factory.buildProtocol(None)
    agent.makeConnection(program)
    assert program.producerState == "paused"
    assert h.received() == [(m.SSH_SMSG_AGENT_OPEN, struct.pack(">I", 0))]
    h.send(m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">II", 0, 44))
    assert program.producerState == "producing"
    agent.dataReceived(b"\x00\x00\x00\x01\x0b")  # an agent request
    assert h.received() == [(m.SSH_MSG_CHANNEL_DATA, struct.pack(">I", 44) + string(b"\x00\x00\x00\x01\x0b"))]
    h.send(m.SSH_MSG_CHANNEL_DATA, Writer().uint32(0).string(b"answer").getvalue())
    assert program.value() == b"answer"
    agent.connectionLost(None)
    assert h.received() == [(m.SSH_MSG_CHANNEL_CLOSE, struct.pack(">I", 44))]
    h.send(m.SSH_MSG_CHANNEL_CLOSE_CONFIRMATION, struct.pack(">I", 0))
    # A refused channel closes the program's connection.
    agent2 = factory.buildProtocol(None)
    program2 = StringTransport()
    agent2.makeConnection(program2)
    assert h.received() == [(m.SSH_SMSG_AGENT_OPEN, struct.pack(">I", 1))]
    h.send(m.SSH_MSG_CHANNEL_OPEN_FAILURE, struct.pack(">I", 1))
    assert program2.disconnecting
    assert not h.transport.disconnecting
    h.protocol.connectionLost(None)
    assert not os.path.exists(os.path.dirname(path))


def test_unsolicited_channel_confirmation_disconnects():
    h, reactor = _agent_harness()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    replies = h.send(m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">II", 3, 4))
    assert replies[-1][0] == m.SSH_MSG_DISCONNECT


def test_x11_forwarding_refused_by_default(logs):
    h, reactor = _agent_harness(allow=False)
    request = string(b"MIT-MAGIC-COOKIE-1") + string(b"00ff" * 8)
    assert h.send(m.SSH_CMSG_X11_REQUEST_FORWARDING, request) == [(m.SSH_SMSG_FAILURE, b"")]
    assert "refused X11 forwarding (not allowed)" in text(logs)
    assert "00ff" not in text(logs)


def test_x11_forwarding_relays():
    import os

    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    h = Harness(settings=SSH1Settings(allow_x11_forwarding=True))
    h.factory.clock = reactor
    h.login()
    bad = string(b"XDM-AUTHORIZATION-1") + string(b"00")
    assert h.send(m.SSH_CMSG_X11_REQUEST_FORWARDING, bad) == [(m.SSH_SMSG_FAILURE, b"")]
    request = string(b"MIT-MAGIC-COOKIE-1") + string(b"0a1b" * 8) + struct.pack(">I", 2)
    assert h.send(m.SSH_CMSG_X11_REQUEST_FORWARDING, request) == [(m.SSH_SMSG_SUCCESS, b"")]
    [(port, factory, _backlog, interface)] = reactor.tcpServers
    assert port == 6010 and interface == "127.0.0.1"
    h.send(m.SSH_CMSG_EXEC_SHELL)
    env = h.realm.avatars[0].targets[0].request.env
    assert env["DISPLAY"] == "localhost:10.2"
    xauth = open(env["XAUTHORITY"], "rb").read()
    assert b"MIT-MAGIC-COOKIE-1" in xauth and bytes.fromhex("0a1b" * 8) in xauth
    assert os.stat(env["XAUTHORITY"]).st_mode & 0o077 == 0
    program = StringTransport()
    x_client = factory.buildProtocol(None)
    x_client.makeConnection(program)
    assert h.received() == [(m.SSH_SMSG_X11_OPEN, struct.pack(">I", 0))]
    h.send(m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">II", 0, 7))
    x_client.dataReceived(b"l\0setup")
    assert h.received() == [(m.SSH_MSG_CHANNEL_DATA, struct.pack(">I", 7) + string(b"l\0setup"))]
    h.protocol.connectionLost(None)
    assert not os.path.exists(env["XAUTHORITY"])


def test_shutdown_drain_hook_tells_the_session_then_disconnects():
    """IDrainable: no session before EXEC; after it the message goes out as STDERR_DATA,
    and the clean close is an SMSG_DISCONNECT with the reason."""
    from zope.interface.verify import verifyObject

    from protocols.handoff import IDrainable

    h = Harness()
    assert verifyObject(IDrainable, h.protocol)
    h.login()
    assert not h.protocol.has_session()
    h.send(m.SSH_CMSG_EXEC_SHELL)
    assert h.protocol.has_session()
    h.protocol.tell_sessions("gateway going down")
    assert h.received() == [(m.SSH_SMSG_STDERR_DATA, string(b"gateway going down\r\n"))]
    h.protocol.disconnect_by_application("going down")
    assert h.received() == [(m.SSH_MSG_DISCONNECT, string(b"going down"))]
    assert h.transport.disconnecting and h.record.close_reason == "going down"


# --- the login's restrictions (its key's authorized_keys options) ------------------------------


def _restricted_harness(**restricted):
    from twisted.internet.testing import MemoryReactorClock

    from protocols.session import SessionRestrictions

    reactor = MemoryReactorClock()
    settings = SSH1Settings(
        permit_open=("127.0.0.1:7000",), allow_agent_forwarding=True, allow_x11_forwarding=True
    )
    h = Harness(settings=settings)
    h.realm.restrictions = SessionRestrictions(origin="keys:2", **restricted)
    h.factory.clock = reactor
    h.login()
    return h, reactor


PTY_REQUEST = Writer().string(b"vt100").uint32(24).uint32(80).uint32(0).uint32(0).raw(b"\0").getvalue()


def test_pty_refused_by_restrictions_and_the_session_goes_on(logs):
    h, _ = _restricted_harness(pty=False)
    assert h.send(m.SSH_CMSG_REQUEST_PTY, PTY_REQUEST) == [(m.SSH_SMSG_FAILURE, b"")]
    assert h.send(m.SSH_CMSG_EXEC_CMD, string(b"tty")) == []
    target = h.realm.avatars[0].targets[0]
    assert target.request.pty is None and target.request.command == b"tty"
    assert "refused pty: pty is not permitted by the key's options (keys:2)" in text(logs)
    assert not h.transport.disconnecting


def test_agent_and_x11_refused_by_restrictions_though_settings_allow_them(logs):
    h, reactor = _restricted_harness(agent_forwarding=False, x11_forwarding=False)
    assert h.send(m.SSH_CMSG_AGENT_REQUEST_FORWARDING) == [(m.SSH_SMSG_FAILURE, b"")]
    x11 = string(b"MIT-MAGIC-COOKIE-1") + string(b"00ff" * 8)
    assert h.send(m.SSH_CMSG_X11_REQUEST_FORWARDING, x11) == [(m.SSH_SMSG_FAILURE, b"")]
    assert reactor.unixServers == [] and reactor.tcpServers == []
    assert "refused agent forwarding (agent-forwarding is not permitted" in text(logs)
    assert "refused X11 forwarding (x11-forwarding is not permitted" in text(logs)


@pytest.mark.parametrize("client_version", [b"SSH-1.5-t", PUTTY])
def test_port_forwarding_refused_by_restrictions(logs, client_version):
    h, reactor = _restricted_harness(port_forwarding=False)
    h.protocol._refuse_by_closing = b"PuTTY" in client_version
    remote = struct.pack(">I", 8080) + string(b"127.0.0.1") + struct.pack(">I", 7000)
    assert h.send(m.SSH_CMSG_PORT_FORWARD_REQUEST, remote) == [(m.SSH_SMSG_FAILURE, b"")]
    h.send(m.SSH_CMSG_EXEC_SHELL)
    replies = h.send(m.SSH_MSG_PORT_OPEN, port_open(5, 7000))  # a permit_open destination
    if client_version == PUTTY:  # confirmed and closed at once: PuTTY aborts on a FAILURE
        assert [t for t, _ in replies] == [m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION, m.SSH_MSG_CHANNEL_CLOSE]
    else:
        assert replies == [(m.SSH_MSG_CHANNEL_OPEN_FAILURE, struct.pack(">I", 5))]
    assert reactor.tcpClients == []
    logged = text(logs)
    assert "refused remote port forwarding (port-forwarding is not permitted" in logged
    assert "refused port forward to 127.0.0.1:7000: port-forwarding is not permitted" in logged
    assert not h.transport.disconnecting


def test_unrestricted_login_keeps_what_the_settings_allow():
    h, reactor = _restricted_harness()
    assert h.send(m.SSH_CMSG_REQUEST_PTY, PTY_REQUEST) == [(m.SSH_SMSG_SUCCESS, b"")]
    assert h.send(m.SSH_CMSG_AGENT_REQUEST_FORWARDING) == [(m.SSH_SMSG_SUCCESS, b"")]
    h.send(m.SSH_CMSG_EXEC_SHELL)
    assert h.send(m.SSH_MSG_PORT_OPEN, port_open(5, 7000)) == []
    reactor.advance(0)
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 7000)]
    h.protocol.connectionLost(None)
