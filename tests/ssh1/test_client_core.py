"""The SSH-1 client core (protocols.ssh1.client_connection) in memory: against the
server core for whole exchanges, and against hand-made hostile server packets."""

from __future__ import annotations

import functools

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.session import PtyRequest, WindowSize
from protocols.ssh1 import events as ev
from protocols.ssh1 import keyfile, keys
from protocols.ssh1 import messages as m
from protocols.ssh1.client_connection import ClientConnection
from protocols.ssh1.packet import PacketDecoder, PacketEncoder
from protocols.ssh1.server_connection import ServerConnection
from protocols.ssh1.wire import Reader, Writer
from tests.support.ssh1.minclient import (
    FUZZ_EXAMPLES,
    HUGE_EXPONENT_KEY,
    host_key,
    public_key_payload,
    server_key,
    small_key,
    user_key,
)


def drain(conn) -> list[ev.Event]:
    out = []
    while True:
        event = conn.next_event()
        if event in (ev.NEED_DATA, ev.PAUSED, ev.CLOSED):
            return out
        out.append(event)


class Pair:
    """A client core wired to a server core."""

    def __init__(self, cipher_preference=("3des", "blowfish"), offered=("3des", "blowfish"),
                 host=None, server=None):
        self.client = ClientConnection(cipher_preference)
        self.server = ServerConnection(host or host_key(), server or server_key(), offered)

    def to_client(self) -> list[ev.Event]:
        self.client.receive_data(self.server.data_to_send())
        return drain(self.client)

    def to_server(self) -> list[ev.Event]:
        self.server.receive_data(self.client.data_to_send())
        return drain(self.server)

    def key_exchange(self) -> ev.PublicKeyReceived:
        [pk] = self.to_client()
        self.client.send_session_key()
        [accepted] = self.to_server()
        assert isinstance(accepted, ev.SessionKeyAccepted)
        assert self.to_client() == [ev.RequestAnswered("session-key", True)]
        return pk

    def login(self, password=b"secret") -> None:
        self.key_exchange()
        self.client.send_user(b"alice")
        assert self.to_server() == [ev.UserRequested(b"alice")]
        self.server.send_failure()
        assert self.to_client() == [ev.RequestAnswered("user", False)]
        self.client.send_password(password)
        [auth] = self.to_server()
        assert auth.password == password
        self.server.send_success()
        assert self.to_client() == [ev.RequestAnswered("password", True)]


@pytest.mark.parametrize("cipher", ["3des", "blowfish", "des", "none"])
def test_whole_session_each_cipher(cipher):
    pair = Pair(cipher_preference=(cipher,), offered=("3des", "blowfish", "des", "none"))
    pk = pair.key_exchange()
    assert pk.cipher == pair.client.cipher == pair.server.cipher == cipher
    assert pair.client.session_id == pair.server.session_id
    pair.client.send_user(b"alice")
    assert pair.to_server() == [ev.UserRequested(b"alice")]
    pair.server.send_success()  # no authentication needed
    assert pair.to_client() == [ev.RequestAnswered("user", True)]
    pair.client.exec_command(b"cat")
    pair.client.send_stdin(b"x" * 40000)
    pair.client.send_eof()
    events = pair.to_server()
    assert events[0] == ev.ExecCommand(b"cat")
    assert b"".join(e.data for e in events if isinstance(e, ev.StdinData)) == b"x" * 40000
    assert events[-1] == ev.StdinEOF()
    pair.server.send_stdout(b"out")
    pair.server.send_stderr(b"err")
    pair.server.send_exit_status(7)
    assert pair.to_client() == [ev.StdoutData(b"out"), ev.StderrData(b"err"), ev.ExitStatus(7)]
    assert pair.client.closed
    assert pair.to_server() == [ev.ExitConfirmed()]


def test_cipher_chosen_by_our_preference_among_offered():
    pair = Pair(cipher_preference=("des", "blowfish", "3des"), offered=("3des", "blowfish"))
    assert pair.key_exchange().cipher == "blowfish"


def test_no_common_cipher_fails():
    pair = Pair(cipher_preference=("des",), offered=("3des", "blowfish"))
    [failed] = pair.to_client()
    assert isinstance(failed, ev.ConnectionFailed) and "no common cipher" in failed.reason
    assert pair.client.closed


def test_password_login_compression_pty_shell_window():
    pair = Pair()
    pair.login()
    pair.client.request_compression(6)
    assert pair.to_server() == [ev.CompressionRequested(6)]
    pair.server.send_success()
    assert pair.to_client() == [ev.RequestAnswered("compression", True)]
    pty = PtyRequest("vt100", WindowSize(24, 80, 640, 480), ((128, 38400), (129, 9600), (3, 127)))
    pair.client.request_pty(pty)
    assert pair.to_server() == [ev.PtyRequested(pty)]
    pair.server.send_failure()
    assert pair.to_client() == [ev.RequestAnswered("pty", False)]
    pair.client.exec_shell()
    pair.client.send_window_size(WindowSize(50, 132))
    pair.client.send_stdin(b"ls\n")
    assert pair.to_server() == [
        ev.ExecShell(), ev.WindowChanged(WindowSize(50, 132)), ev.StdinData(b"ls\n")
    ]
    pair.server.send_stdout(b"a" * 100000)
    out = pair.to_client()
    assert b"".join(e.data for e in out) == b"a" * 100000
    assert pair.client.compression_level == 6


def test_rsa_login():
    pair = Pair()
    pair.key_exchange()
    pair.client.send_user(b"alice")
    pair.to_server()
    pair.server.send_failure()
    pair.to_client()
    key = user_key()
    e, n = keys.public_numbers(key)
    pair.client.send_rsa(n)
    assert pair.to_server() == [ev.RSAAuth(n)]
    value, expected = pair.server.make_rsa_challenge(e, n)
    pair.server.send_rsa_challenge(value)
    [challenge] = pair.to_client()
    assert challenge == ev.RSAChallengeReceived(value)
    pair.client.answer_rsa_challenge(key, value)
    [response] = pair.to_server()
    assert response == ev.RSAResponse(expected)
    pair.server.send_success()
    assert pair.to_client() == [ev.RequestAnswered("rsa-response", True)]


def test_undecryptable_rsa_challenge_disconnects():
    pair = Pair()
    pair.key_exchange()
    pair.client.send_user(b"alice")
    pair.to_server()
    pair.server.send_failure()
    pair.to_client()
    key = user_key()
    n = keys.public_numbers(key)[1]
    pair.client.send_rsa(n)
    pair.to_server()
    pair.server.send_rsa_challenge(n + 2)  # not below the modulus: cannot be ours
    [challenge] = pair.to_client()
    pair.client.answer_rsa_challenge(key, challenge.value)
    assert pair.client.closed
    assert "could not be decrypted" in pair.client.close_reason
    [event] = pair.to_server()
    assert isinstance(event, ev.PeerDisconnected)


def test_rsa_key_refused():
    pair = Pair()
    pair.key_exchange()
    pair.client.send_user(b"alice")
    pair.to_server()
    pair.server.send_failure()
    pair.to_client()
    pair.client.send_rsa(keys.public_numbers(user_key())[1])
    pair.to_server()
    pair.server.send_failure()
    assert pair.to_client() == [ev.RequestAnswered("rsa", False)]


def test_legacy_small_keys_accepted_with_warnings():
    # The server core insists on the 128-bit gap too; 768 vs 512 keeps it.
    pair = Pair(host=small_key(768), server=small_key(512))
    pk = pair.key_exchange()
    assert any("weak 512-bit server key" in w for w in pk.warnings)
    assert any("weak 768-bit host key" in w for w in pk.warnings)


def test_1024_host_key_with_512_server_key():
    pair = Pair(host=host_key_1024(), server=small_key(512))
    pair.login()


@pytest.mark.parametrize(
    "host_bits, server_bits",
    [
        (1024, 384),  # a server key derived from the host key's size in bytes (issue 15)
        (768, 512),  # old Cisco IOS
        (512, 384),
        (384, 512),  # either key may be the smaller one
        (768, 384),
    ],
)
def test_keys_under_512_bits_accepted_with_warnings(host_bits, server_bits):
    # Before issue 15 the core refused any key under 512 bits and any pair closer than
    # 128 bits; PuTTY reaches such devices, so we do.
    host = small_key(host_bits) if host_bits < 1024 else host_key_1024()
    pair = Pair(host=host, server=small_key(server_bits))
    pk = pair.key_exchange()
    assert f"weak {server_bits}-bit server key" in pk.warnings
    assert f"weak {host_bits}-bit host key" in pk.warnings
    assert not any("padding" in w for w in pk.warnings)  # standard PKCS#1 blocks fit


def unpad(key: rsa.RSAPrivateKey, value: int, size: int) -> tuple[int, bytes]:
    """Raw RSA decryption of a PKCS#1 type-2 block (as a lenient device does it): the
    length of its nonzero padding, and the data."""
    numbers = key.private_numbers()
    block = pow(value, numbers.d, numbers.public_numbers.n).to_bytes(size, "big")
    assert block[:2] == b"\0\2"
    end = block.index(b"\0", 2)
    assert all(block[2:end])
    return end - 2, block[end + 1 :]


def test_short_padding_sent_as_putty_sends_it():
    # A 320-bit server key leaves 40 - 32 - 3 = 5 bytes for padding, not the 8 RFC 8017
    # asks for (and cryptography insists on): the block is built as PuTTY builds it.
    server, host = small_key(320), host_key_1024()
    client = ClientConnection(random=lambda n: b"\x07" * n)  # session key and padding
    client.receive_data(PacketEncoder().encode(m.SSH_SMSG_PUBLIC_KEY, public_key_payload(
        server=keys.public_numbers(server), host=keys.public_numbers(host)
    )))  # fmt: skip
    [pk] = drain(client)
    assert (
        "server key leaves room for 5 bytes of PKCS#1 padding, not 8: sent as PuTTY sends it"
        in pk.warnings
    )
    client.send_session_key()
    decoder = PacketDecoder()
    decoder.feed(client.data_to_send())  # the session key travels in clear
    msg_type, body = decoder.next_packet()
    assert msg_type == m.SSH_CMSG_SESSION_KEY
    reader = Reader(body)
    reader.raw(1 + 8)  # cipher, cookie
    outer_padding, inner = unpad(host, reader.mpint(), 128)
    assert outer_padding == 128 - 40 - 3
    inner_padding, mixed = unpad(server, int.from_bytes(inner, "big"), 40)
    assert inner_padding == 5
    sid = keys.session_id(keys.public_numbers(host)[1], keys.public_numbers(server)[1], b"c" * 8)
    assert bytes(a ^ b for a, b in zip(mixed[:16], sid, strict=True)) + mixed[16:] == b"\x07" * 32


@pytest.mark.parametrize("small_bits, room", [(288, 1), (296, 2), (336, 7), (344, 8)])
def test_padding_room_from_putty_down_to_one_byte(small_bits, room):
    assert keys.session_key_padding(keys.public_numbers(small_key(small_bits))[1], 1 << 1023) == (
        room, 128 - small_bits // 8 - 3
    )  # fmt: skip


@functools.cache
def host_key_1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)


# ------------------------------------------------------------------ hostile servers


def feed(payload: bytes, msg_type: int = m.SSH_SMSG_PUBLIC_KEY) -> tuple[ClientConnection, list]:
    client = ClientConnection()
    client.receive_data(PacketEncoder().encode(msg_type, payload))
    return client, drain(client)


def failure_reason(events) -> str:
    assert events and isinstance(events[-1], ev.ConnectionFailed), events
    return events[-1].reason


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        # 35 bytes: no room for the 32-byte session key and PKCS#1's 00 02 PS 00
        (dict(server=(65537, (1 << 279) | 1)), "server key of 280 bits is too small to carry"),
        (dict(host=(3, (1 << 9000) | 1)), "exceeds 8192"),
        (dict(host=(65537, 1 << 2047)), "host key modulus is even"),
        (dict(server=(1, None)), "server key has an unusable public exponent"),
        (dict(server=(65536, None)), "unusable public exponent"),
        (dict(host=(65537, keys.public_numbers(server_key())[1] * 3 | 1)), "too close in size"),
        (dict(mask=1 << 1), "no common cipher"),
        (dict(mask=0), "no common cipher"),
        (dict(trailing=b"x"), "trailing"),
        # Odd e < n, but OpenSSL refuses to encrypt with a public exponent over 64 bits
        # once the modulus is over 3072 bits: as host key (the outer encryption) or as
        # server key.
        (dict(host=HUGE_EXPONENT_KEY), "cannot be used for RSA encryption"),
        (dict(server=HUGE_EXPONENT_KEY, host=(65537, None)), "cannot be used for RSA"),
    ],
)
def test_hostile_public_key_refused(kwargs, reason):
    if "too close in size" in reason:
        # a host key only a byte larger than the server key: no room for its padding
        sn = keys.public_numbers(server_key())[1]
        kwargs = dict(host=(65537, (sn << 3) | 1))
    client, events = feed(public_key_payload(**kwargs))
    assert reason in failure_reason(events)
    assert client.closed
    # our DISCONNECT carries the reason, in clear at this stage
    assert client.data_to_send()


def test_truncated_public_key_refused():
    payload = public_key_payload()
    for cut in (0, 5, 8, 12, 100, len(payload) - 1):
        client, events = feed(payload[:cut])
        assert "truncated" in failure_reason(events)


def test_misstated_key_size_is_a_warning():
    client, [pk] = feed(public_key_payload(server_bits=4096))
    assert any("server says its server key has 4096 bits" in w for w in pk.warnings)


def test_nothing_decoded_until_host_key_verified():
    client = ClientConnection()
    enc = PacketEncoder()
    client.receive_data(enc.encode(m.SSH_SMSG_PUBLIC_KEY, public_key_payload()))
    client.receive_data(enc.encode(m.SSH_SMSG_SUCCESS))
    [pk] = drain(client)
    assert isinstance(pk, ev.PublicKeyReceived)
    assert client.next_event() is ev.PAUSED
    client.send_disconnect("host key refused")
    assert client.closed


@pytest.mark.parametrize(
    "msg_type, payload, reason",
    [
        (m.SSH_SMSG_SUCCESS, b"", "SMSG_SUCCESS not allowed in phase public-key"),
        (m.SSH_SMSG_STDOUT_DATA, b"\0\0\0\1x", "not allowed"),
        (99, b"", "unknown message type 99"),
        (m.SSH_CMSG_USER, b"\0\0\0\0", "not allowed"),
    ],
)
def test_out_of_order_before_key_exchange(msg_type, payload, reason):
    client, events = feed(payload, msg_type)
    assert reason in failure_reason(events)


def after_login() -> Pair:
    pair = Pair()
    pair.login()
    return pair


def test_unexpected_success_after_key_exchange():
    pair = Pair()
    pair.key_exchange()
    pair.server._send(m.SSH_SMSG_SUCCESS)
    assert "unexpected SMSG_SUCCESS" in failure_reason(pair.to_client())


def test_challenge_without_rsa_request():
    pair = after_login()
    pair.client.send_password(b"again")  # awaiting "password"
    pair.server._send(m.SSH_SMSG_AUTH_RSA_CHALLENGE, Writer().mpint(12345).getvalue())
    assert "RSA challenge without" in failure_reason(pair.to_client())


def test_stdout_before_exec_refused():
    pair = after_login()
    pair.server.phase = m.Phase.INTERACTIVE
    pair.server.send_stdout(b"early")
    assert "SMSG_STDOUT_DATA not allowed in phase reply" in failure_reason(pair.to_client())


def interactive() -> Pair:
    pair = after_login()
    pair.client.exec_shell()
    pair.to_server()
    return pair


def test_unasked_forward_opens_refused():
    pair = interactive()
    pair.server.send_agent_open(5)
    pair.server.send_x11_open(6)
    assert pair.to_client() == [ev.ForwardRefused("agent"), ev.ForwardRefused("x11")]
    assert pair.to_server() == [ev.ChannelOpenFailed(5), ev.ChannelOpenFailed(6)]


def test_channel_data_for_no_channel_fails():
    pair = interactive()
    pair.server.send_channel_data(3, b"x")
    assert "no channel was ever opened" in failure_reason(pair.to_client())


def test_server_disconnect_reported():
    pair = interactive()
    pair.server.send_disconnect("bye \x1b[31mred")
    [event] = pair.to_client()
    assert event == ev.PeerDisconnected("bye ?[31mred")


def test_oversized_output_string_and_bad_crc():
    pair = interactive()
    data = bytearray(pair.server._encoder.encode(m.SSH_SMSG_STDOUT_DATA, b"\0\0\0\5hello"))
    data[-1] ^= 1
    pair.client.receive_data(bytes(data))
    assert "CRC" in failure_reason(drain(pair.client))


def test_exit_status_with_trailing_bytes_fails_without_confirmation():
    pair = interactive()
    pair.server._send(m.SSH_SMSG_EXITSTATUS, b"\0\0\0\1extra")
    assert "trailing" in failure_reason(pair.to_client())


def test_api_misuse_raises():
    client = ClientConnection()
    with pytest.raises(RuntimeError):
        client.send_session_key()
    with pytest.raises(RuntimeError):
        client.send_stdin(b"x")
    with pytest.raises(ValueError):
        ClientConnection(("aes",))


@settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(st.tuples(st.integers(0, 50), st.binary(max_size=64)), max_size=6))
def test_fuzz_client_interactive(packets):
    pair = interactive()
    for msg_type, payload in packets:
        pair.server._send(msg_type, payload)
    pair.client.receive_data(pair.server.data_to_send())
    for _ in range(20):
        event = pair.client.next_event()
        if event in (ev.NEED_DATA, ev.CLOSED):
            break
    assert pair.client.next_event() in (ev.NEED_DATA, ev.CLOSED)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(max_size=2048), st.integers(1, 64))
def test_fuzz_client_raw_bytes(data, step):
    client = ClientConnection()
    for start in range(0, len(data), step):
        client.receive_data(data[start : start + step])
        while (event := client.next_event()) not in (ev.NEED_DATA, ev.PAUSED, ev.CLOSED):
            assert isinstance(event, ev.Event)
    assert client.data_to_send() is not None


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_public_key_payload(payload):
    client, events = feed(payload)
    assert all(isinstance(e, ev.Event) for e in events)


# ------------------------------------------------------------------ key files


def test_key_file_round_trip_and_refusals():
    key = user_key()
    data = keyfile.dump_private_key(key, "comment")
    loaded, comment = keyfile.load_private_key(data)
    assert comment == "comment"
    assert keys.public_numbers(loaded) == keys.public_numbers(key)
    assert loaded.private_numbers().d == key.private_numbers().d
    with pytest.raises(ValueError, match="not an SSH-1 private key"):
        keyfile.load_private_key(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    encrypted = bytearray(data)
    encrypted[len(keyfile.MAGIC)] = 3
    with pytest.raises(ValueError, match="passphrase"):
        keyfile.load_private_key(bytes(encrypted))
    for cut in (40, 60, 200, len(data) - 40):
        with pytest.raises(ValueError, match="corrupt"):
            keyfile.load_private_key(data[:cut])


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_key_file(tail):
    try:
        keyfile.load_private_key(keyfile.MAGIC + tail)
    except ValueError:
        pass
