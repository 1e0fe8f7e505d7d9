"""The server-role state machine, driven byte by byte by the test-only client:
a whole session, then every malformed-input case from issue 3, then fuzzing."""

from __future__ import annotations

import os
import random
import struct
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.flow import C2S, FlowRecorder
from protocols.ssh1 import events as ev
from protocols.ssh1 import messages as m
from protocols.ssh1.server_connection import ServerConnection
from protocols.ssh1.wire import Reader, Writer
from tests.support.ssh1.minclient import (
    FUZZ_EXAMPLES,
    MiniClient,
    crc_attack_positions,
    drain,
    host_key,
    server_key,
    string,
)


def new_server(ciphers=("3des", "blowfish")) -> tuple[ServerConnection, MiniClient]:
    server = ServerConnection(host_key(), server_key(), ciphers)
    client = MiniClient()
    [(msg_type, payload)] = client.feed(server.data_to_send())
    assert msg_type == m.SSH_SMSG_PUBLIC_KEY
    client.parse_public_key(payload)
    return server, client


def exchange(server, client, data: bytes):
    server.receive_data(data)
    events = drain(server)
    return events, client.feed(server.data_to_send())


def exchange_clear(server, data: bytes):
    """For failures before keys: the DISCONNECT goes out in clear."""
    server.receive_data(data)
    events = drain(server)
    return events, MiniClient().feed(server.data_to_send())


def keyed(cipher="3des", ciphers=("3des", "blowfish")):
    server, client = new_server(ciphers)
    events, replies = exchange(server, client, client.session_key_packet(cipher))
    assert events == [ev.SessionKeyAccepted(cipher, 0)]
    assert replies == [(m.SSH_SMSG_SUCCESS, b"")]
    return server, client


def logged_in(cipher="3des", ciphers=("3des", "blowfish")):
    server, client = keyed(cipher, ciphers)
    events, _ = exchange(server, client, client.packet(m.SSH_CMSG_USER, string(b"alice")))
    assert events == [ev.UserRequested(b"alice")]
    server.send_failure()
    events, replies = exchange(
        server, client, client.packet(m.SSH_CMSG_AUTH_PASSWORD, string(b"pw"))
    )
    assert events == [ev.PasswordAuth(b"pw")]
    server.send_success()
    assert client.feed(server.data_to_send()) == [(m.SSH_SMSG_SUCCESS, b"")]
    return server, client


def assert_failed(server, client, events, replies, reason_part: str):
    assert events and isinstance(events[-1], ev.ConnectionFailed), events
    assert reason_part in events[-1].reason
    assert server.closed
    assert replies and replies[-1][0] == m.SSH_MSG_DISCONNECT
    assert reason_part in Reader(replies[-1][1]).string().decode()
    server.receive_data(b"more")  # ignored once closed
    assert server.next_event() is ev.CLOSED


def interactive(cipher: str = "blowfish", ciphers=("3des", "blowfish")):
    """A server core after login and EXEC_CMD, and the client talking to it."""
    server, client = logged_in(cipher, ciphers)
    exchange(server, client, client.packet(m.SSH_CMSG_EXEC_CMD, string(b"cat")))
    return server, client


def test_a_run_of_small_stdin_packets_is_one_event_in_order():
    """plink sends 512-byte packets: every whole one already received comes out as one
    StdinData, and what follows the run keeps its place after it."""
    server, client = interactive()
    parts = [os.urandom(512) for _ in range(20)]
    wire = b"".join(client.packet(m.SSH_CMSG_STDIN_DATA, string(p)) for p in parts)
    wire += client.packet(m.SSH_CMSG_EOF) + client.packet(m.SSH_CMSG_STDIN_DATA, string(b"late"))
    events, _ = exchange(server, client, wire)
    assert events == [ev.StdinData(b"".join(parts)), ev.StdinEOF(), ev.StdinData(b"late")]
    assert server.packets_in == 2 + 1 + 1 + 22  # user, password, exec, then these


def test_a_run_of_data_packets_is_recorded_as_its_packets():
    """The run is taken in one loop and told to the flow recorder once, with the count:
    the record is the one packet-by-packet delivery gives (count, bytes, stage)."""
    records = {}
    for size in (1, 20):  # one packet per read, then the whole run in one read
        server, client = interactive()
        flow = FlowRecorder("server", "peer", "1")
        server.on_packet_in = partial(flow.packet, C2S)
        before = server.packets_in
        wires = [client.packet(m.SSH_CMSG_STDIN_DATA, string(os.urandom(512))) for _ in range(20)]
        wires.append(client.packet(m.SSH_CMSG_EOF))
        data = b""
        for start in range(0, len(wires), size):
            server.receive_data(b"".join(wires[start : start + size]))
            data += b"".join(e.data for e in drain(server) if isinstance(e, ev.StdinData))
        assert len(data) == 20 * 512
        records[size] = [(d, name, nbytes, count) for _, d, name, nbytes, _, count in flow.messages]
        assert records[size] == [
            (C2S, "SSH_CMSG_STDIN_DATA", sum(map(len, wires[:20])), 20),
            (C2S, "SSH_CMSG_EOF", len(wires[20]), 1),
        ]
        assert flow.bytes[C2S] == sum(map(len, wires))
        assert server.packets_in == before + 21
    assert records[1] == records[20]


def test_a_bad_packet_after_a_run_fails_after_the_good_data():
    server, client = interactive()
    good = client.packet(m.SSH_CMSG_STDIN_DATA, string(b"a" * 512)) * 1
    good += client.packet(m.SSH_CMSG_STDIN_DATA, string(b"b" * 512))
    bad = bytearray(client.packet(m.SSH_CMSG_STDIN_DATA, string(b"c" * 512)))
    bad[-1] ^= 1  # the CRC no longer matches
    events, replies = exchange(server, client, good + bytes(bad))
    assert events[0] == ev.StdinData(b"a" * 512 + b"b" * 512)
    assert_failed(server, client, events, replies, "CRC")


def test_a_malformed_data_packet_after_a_run_fails_after_the_good_data():
    server, client = interactive()
    good = client.packet(m.SSH_CMSG_STDIN_DATA, string(b"a" * 100))
    bad = client.packet(m.SSH_CMSG_STDIN_DATA, string(b"b" * 100) + b"extra")
    events, replies = exchange(server, client, good + bad)
    assert events[0] == ev.StdinData(b"a" * 100)
    assert_failed(server, client, events, replies, "")


# ---------------------------------------------------------------- happy paths
def test_public_key_message():
    server, client = new_server(("3des", "blowfish", "des"))
    pk = client.public_key
    assert pk["ciphers"] == (1 << 3) | (1 << 6) | (1 << 2)
    assert pk["auths"] == (1 << 2) | (1 << 3)
    assert pk["bits"] == (1024, 2048)
    assert server.phase is m.Phase.SESSION_KEY


@pytest.mark.parametrize("cipher", ["3des", "blowfish", "des", "none"])
def test_full_session(cipher):
    server, client = new_server(("3des", "blowfish", "des", "none"))
    exchange(server, client, client.session_key_packet(cipher))
    events, _ = exchange(server, client, client.packet(m.SSH_CMSG_USER, string(b"bob")))
    server.send_failure()
    events, _ = exchange(server, client, client.packet(m.SSH_CMSG_AUTH_PASSWORD, string(b"x")))
    server.send_success()
    client.feed(server.data_to_send())
    pty = (
        Writer().string(b"xterm").uint32(24).uint32(80).uint32(0).uint32(0)
        .raw(b"\x01\x03\xc0\x00\x00\x96\x00\x00").getvalue()
    )
    events, _ = exchange(server, client, client.packet(m.SSH_CMSG_REQUEST_PTY, pty))
    [pty_event] = events
    assert pty_event.pty.term == "xterm" and pty_event.pty.size.cols == 80
    assert pty_event.pty.modes == ((1, 3), (128, 38400))
    server.send_success()
    events, _ = exchange(server, client, client.packet(m.SSH_CMSG_REQUEST_COMPRESSION, struct.pack(">I", 6)))
    assert events == [ev.CompressionRequested(6)]
    server.send_success()
    assert client.feed(server.data_to_send())[-1] == (m.SSH_SMSG_SUCCESS, b"")
    client.encoder.start_compression(6)
    client.decoder.start_decompression()
    events, _ = exchange(server, client, client.packet(m.SSH_CMSG_EXEC_CMD, string(b"cat")))
    assert events == [ev.ExecCommand(b"cat")]
    data = os.urandom(100_000)
    events, _ = exchange(
        server, client,
        client.packet(m.SSH_CMSG_STDIN_DATA, string(data))
        + client.packet(m.SSH_CMSG_WINDOW_SIZE, struct.pack(">4I", 50, 132, 0, 0))
        + client.packet(m.SSH_CMSG_EOF),
    )
    assert events == [ev.StdinData(data), ev.WindowChanged(ev.WindowSize(50, 132, 0, 0)), ev.StdinEOF()]
    server.send_stdout(data)
    server.send_stderr(b"err")
    server.send_exit_status(5)
    replies = client.feed(server.data_to_send())
    out = b"".join(Reader(p).string() for t, p in replies if t == m.SSH_SMSG_STDOUT_DATA)
    assert out == data
    assert replies[-2] == (m.SSH_SMSG_STDERR_DATA, string(b"err"))
    assert replies[-1] == (m.SSH_SMSG_EXITSTATUS, struct.pack(">I", 5))
    events, _ = exchange(server, client, client.packet(m.SSH_CMSG_EXIT_CONFIRMATION))
    assert events == [ev.ExitConfirmed()]
    assert server.closed and server.close_reason == "session finished"


def test_rsa_auth_flow():
    server, client = keyed()
    exchange(server, client, client.packet(m.SSH_CMSG_USER, string(b"alice")))
    server.send_failure()
    from protocols.ssh1 import keys
    from tests.support.ssh1.minclient import user_key

    e, n = keys.public_numbers(user_key())
    events, _ = exchange(server, client, client.packet(m.SSH_CMSG_AUTH_RSA, Writer().mpint(n).getvalue()))
    assert events == [ev.RSAAuth(n)]
    value, expected = server.make_rsa_challenge(e, n)
    server.send_rsa_challenge(value)
    replies = client.feed(server.data_to_send())
    assert replies[-1][0] == m.SSH_SMSG_AUTH_RSA_CHALLENGE
    challenge = keys.decrypt_challenge(user_key(), Reader(replies[-1][1]).mpint())
    response = keys.challenge_response(challenge, client.session_id)
    events, _ = exchange(server, client, client.packet(m.SSH_CMSG_AUTH_RSA_RESPONSE, response))
    assert events == [ev.RSAResponse(response)] and response == expected
    server.send_success()
    assert server.phase is m.Phase.PREPARATORY


def test_unsupported_auth_and_ignore_debug():
    server, client = keyed()
    exchange(server, client, client.packet(m.SSH_CMSG_USER, string(b"alice")))
    server.send_failure()
    events, _ = exchange(
        server, client,
        client.packet(m.SSH_MSG_IGNORE, string(b"junk"))
        + client.packet(m.SSH_MSG_DEBUG, string(b"hello"))
        + client.packet(m.SSH_CMSG_AUTH_RHOSTS, string(b"root")),
    )
    assert events == [ev.DebugMessage(b"hello"), ev.UnsupportedAuth("rhosts")]
    server.send_failure()
    assert server.phase is m.Phase.AUTH


def test_pending_request_blocks_decoding():
    server, client = keyed()
    server.receive_data(client.packet(m.SSH_CMSG_USER, string(b"a")) + client.packet(m.SSH_MSG_IGNORE, string(b"")))
    assert server.next_event() == ev.UserRequested(b"a")
    assert server.next_event() is ev.PAUSED
    server.send_failure()
    assert server.next_event() is ev.NEED_DATA


def test_peer_disconnect():
    server, client = keyed()
    events, _ = exchange(server, client, client.packet(m.SSH_MSG_DISCONNECT, string(b"bye\x07")))
    assert events == [ev.PeerDisconnected("bye?")]
    assert server.closed


def test_password_repr_hides_secret():
    assert "hunter2" not in repr(ev.PasswordAuth(b"hunter2"))


# ---------------------------------------------------------------- malformed input
def test_wrong_cookie():
    server, client = new_server()
    events, replies = exchange_clear(server, client.session_key_packet(cookie=b"\0" * 8))
    assert_failed(server, client, events, replies, "cookie")


def test_cipher_not_offered():
    server, client = new_server(("3des",))
    events, replies = exchange_clear(server, client.session_key_packet("blowfish"))
    assert_failed(server, client, events, replies, "not offered")


def test_unknown_cipher_number():
    server, client = new_server()
    events, replies = exchange_clear(server, client.session_key_packet(number=5))
    assert_failed(server, client, events, replies, "not offered")


def test_undecryptable_session_key_is_not_observable():
    server, client = new_server()
    server.receive_data(client.session_key_packet(value=12345))
    # Accepted as if fine: the server answers SUCCESS under a key the client cannot know...
    assert drain(server) == [ev.SessionKeyAccepted("3des", 0)]
    assert len(server.data_to_send()) == 4 + 8  # one encrypted SUCCESS, as normal
    # ...and the client's next packet then fails as an ordinary integrity error.
    server.receive_data(client.packet(m.SSH_CMSG_USER, string(b"a")))
    events = drain(server)
    assert isinstance(events[-1], ev.ConnectionFailed) and "CRC" in events[-1].reason


@pytest.mark.parametrize("length", [0, 4, 256 * 1024 + 1, 0x7FFFFFFF])
def test_bad_length(length):
    server, client = keyed()
    server.receive_data(struct.pack(">I", length))
    events = drain(server)
    assert_failed(server, client, events, client.feed(server.data_to_send()), "packet length")


def test_bad_crc_encrypted():
    server, client = keyed()
    wire = bytearray(client.packet(m.SSH_CMSG_USER, string(b"alice")))
    wire[-1] ^= 0x40
    events, replies = exchange(server, client, bytes(wire))
    assert_failed(server, client, events, replies, "CRC")


def test_bad_padding_encrypted():
    """Padding is random, so a tampered padding shows as a CRC failure."""
    server, client = keyed()
    wire = bytearray(client.packet(m.SSH_CMSG_USER, string(b"alice")))
    wire[5] ^= 0x01  # inside the first (padding) block of ciphertext
    events, replies = exchange(server, client, bytes(wire))
    assert_failed(server, client, events, replies, "CRC")


def test_bad_padding_in_clear():
    server, client = new_server()
    wire = bytearray(client.session_key_packet())
    wire[4] ^= 0x01  # padding byte; the CRC no longer matches
    events, replies = exchange_clear(server, bytes(wire))
    assert isinstance(events[-1], ev.ConnectionFailed) and "CRC" in events[-1].reason
    assert replies[-1][0] == m.SSH_MSG_DISCONNECT


def test_unknown_message():
    server, client = keyed()
    events, replies = exchange(server, client, client.packet(200, b""))
    assert_failed(server, client, events, replies, "unknown message type 200")


@pytest.mark.parametrize(
    "msg_type, payload",
    [
        (m.SSH_CMSG_EXEC_SHELL, b""),
        (m.SSH_CMSG_AUTH_PASSWORD, string(b"pw")),
        (m.SSH_CMSG_STDIN_DATA, string(b"x")),
        (m.SSH_SMSG_SUCCESS, b""),
        (m.SSH_CMSG_SESSION_KEY, b""),
        (m.SSH_CMSG_EXIT_CONFIRMATION, b""),
    ],
)
def test_out_of_phase(msg_type, payload):
    server, client = keyed()  # phase USER
    events, replies = exchange(server, client, client.packet(msg_type, payload))
    assert_failed(server, client, events, replies, "not allowed in phase user")


def test_out_of_phase_while_pending():
    server, client = keyed()
    server.receive_data(client.packet(m.SSH_CMSG_USER, string(b"a")) + client.packet(m.SSH_CMSG_USER, string(b"b")))
    assert server.next_event() == ev.UserRequested(b"a")
    server.send_failure()
    events = drain(server)
    assert_failed(server, client, events, client.feed(server.data_to_send()), "not allowed in phase auth")


def test_exec_before_auth():
    server, client = keyed()
    exchange(server, client, client.packet(m.SSH_CMSG_USER, string(b"a")))
    server.send_failure()
    events, replies = exchange(server, client, client.packet(m.SSH_CMSG_EXEC_CMD, string(b"id")))
    assert_failed(server, client, events, replies, "not allowed in phase auth")


@pytest.mark.parametrize(
    "msg_type, payload",
    [
        (m.SSH_CMSG_USER, b"\x00\x00\x00\x09ali"),
        (m.SSH_CMSG_USER, b"\x00\x00"),
        (m.SSH_CMSG_USER, string(b"a") + b"trailing"),
        (m.SSH_CMSG_USER, b"\x7f\xff\xff\xff"),
    ],
)
def test_truncated_or_malformed_fields(msg_type, payload):
    server, client = keyed()
    events, replies = exchange(server, client, client.packet(msg_type, payload))
    assert_failed(server, client, events, replies, "SSH_CMSG_USER")


def test_truncated_session_key():
    server, client = new_server()
    events, replies = exchange_clear(server, client.packet(m.SSH_CMSG_SESSION_KEY, b"\x03abc"))
    assert_failed(server, client, events, replies, "truncated")


def test_attack_detected():
    server, client = keyed()
    positions = crc_attack_positions(40)
    repeated = os.urandom(8)
    body = b"".join(repeated if i in positions else os.urandom(8) for i in range(40))
    events, replies = exchange(server, client, struct.pack(">I", len(body) - 1) + body)
    assert_failed(server, client, events, replies, "compensation attack")


def test_flood_while_pending():
    server, client = keyed()
    server.receive_data(client.packet(m.SSH_CMSG_USER, string(b"a")))
    assert server.next_event() == ev.UserRequested(b"a")
    for _ in range(40):
        server.receive_data(client.packet(m.SSH_MSG_IGNORE, string(bytes(20000))))
    events = drain(server)
    assert isinstance(events[-1], ev.ConnectionFailed) and "too much" in events[-1].reason


def test_app_misuse_raises():
    server, client = keyed()
    with pytest.raises(RuntimeError):
        server.send_success()
    with pytest.raises(RuntimeError):
        server.send_stdout(b"x")


def test_bad_compression_level_refused_by_app():
    server, client = logged_in()
    events, _ = exchange(server, client, client.packet(m.SSH_CMSG_REQUEST_COMPRESSION, struct.pack(">I", 42)))
    assert not server.valid_compression_level()
    with pytest.raises(ValueError):
        server.send_success()
    server.send_failure()
    assert client.feed(server.data_to_send()) == [(m.SSH_SMSG_FAILURE, b"")]


# ---------------------------------------------------------------- fuzzing
_NO_ESCAPE = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def _outcome_ok(server):
    events = drain(server)
    for event in events:
        assert isinstance(event, ev.Event)
    server.data_to_send()


@_NO_ESCAPE
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes_before_keys(data):
    server, _ = new_server()
    server.receive_data(data)
    _outcome_ok(server)


@_NO_ESCAPE
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=8))
def test_fuzz_random_packets_after_keys(packets):
    server, client = keyed()
    for msg_type, payload in packets:
        server.receive_data(client.packet(msg_type, payload))
        events = drain(server)
        if server.pending is not None:
            server.send_failure()
            events += drain(server)
        for event in events:
            assert isinstance(event, ev.Event)
        server.data_to_send()


def test_fuzz_mutated_valid_streams():
    """Seeded: take a valid client stream and flip, drop, duplicate or splice bytes."""
    rng = random.Random(1234)
    for round_ in range(300):
        server, client = new_server(("3des", "blowfish", "des", "none"))
        cipher = rng.choice(["3des", "blowfish", "des", "none"])
        stream = client.session_key_packet(cipher)
        stream += client.packet(m.SSH_CMSG_USER, string(b"user"))
        stream += client.packet(m.SSH_CMSG_AUTH_PASSWORD, string(b"pass"))
        stream += client.packet(m.SSH_CMSG_EXEC_SHELL)
        stream += client.packet(m.SSH_CMSG_STDIN_DATA, string(os.urandom(rng.randrange(100))))
        data = bytearray(stream)
        for _ in range(rng.randrange(1, 5)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                del data[pos : pos + rng.randrange(1, 16)]
            elif op == 2:
                data[pos:pos] = data[pos : pos + rng.randrange(1, 16)]
            else:
                data[pos:pos] = os.urandom(rng.randrange(1, 16))
        # Feed in random chunk sizes, answering every request as a server would.
        pos = 0
        while pos < len(data) and not server.closed:
            step = rng.randrange(1, 200)
            server.receive_data(bytes(data[pos : pos + step]))
            pos += step
            for _ in range(10):
                drain(server)
                if server.pending is None:
                    break
                server.send_failure() if rng.random() < 0.5 else server.send_success()
            server.data_to_send()
        assert round_ >= 0
