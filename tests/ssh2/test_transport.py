"""Key exchange after a handoff, the algorithms offered, DH groups, hostile packets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from twisted.conch.ssh import _kex, common, transport
from twisted.internet.testing import StringTransport

from protocols.ssh2 import moduli
from protocols.ssh2.settings import SSH2Settings
from protocols.ssh2.transport import NoAlgorithms, offered_algorithms
from tests.support.ssh2.harness import (
    SERVER_LINE,
    MiniDispatcher,
    fresh_transport,
    host_keys,
    plain_packet,
    wire,
)


def kexinit_lists(payload: bytes) -> list[list[bytes]]:
    strings = common.getNS(payload[17:], 10)[:-1]
    return [s.split(b",") if s else [] for s in strings]


def test_key_exchange_completes_behind_a_199_banner():
    w = wire(login=False)
    assert w.client.secure
    assert w.client.otherVersionString == SERVER_LINE
    assert w.transport.ourVersionString == SERVER_LINE
    assert w.record.protocol == "ssh2"
    assert w.record.algorithms["kex"] == "curve25519-sha256"
    assert w.record.algorithms["cipher_in"] == "aes256-ctr"
    assert w.record.algorithms["mac_out"] == "hmac-sha2-512"
    assert w.record.algorithms["hostkey"] in ("ssh-ed25519", "rsa-sha2-512")


def test_exchange_hash_uses_the_line_the_dispatcher_sent():
    """If the transport hashed any other server line the client's signature check fails."""

    class LyingDispatcher(MiniDispatcher):
        def dataReceived(self, data: bytes) -> None:
            if self.inner is None and b"\n" in self.buffer + data:
                line, rest = (self.buffer + data).split(b"\n", 1)
                self.inner = self.factory.build_protocol(
                    self.record, b"SSH-2.0-sshgateway_0.1.0", line.rstrip(b"\r")
                )
                self.inner.makeConnection(self.transport)
                self.inner.dataReceived(rest)
                return
            super().dataReceived(data)

    import tests.support.ssh2.harness as h

    original = h.MiniDispatcher
    h.MiniDispatcher = LyingDispatcher
    try:
        w = wire(login=False)
    finally:
        h.MiniDispatcher = original
    assert not w.client.secure


def test_kexinit_offers_exactly_the_configured_algorithms_in_order():
    w = wire(login=False)
    lists = kexinit_lists(w.transport.ourKexInitPayload)
    kex, hostkeys, enc_cs, enc_sc, mac_cs, mac_sc, comp_cs, comp_sc, _, _ = lists
    expected_kex = [k.encode() for k in SSH2Settings().kex if k.encode() in _kex.getSupportedKeyExchanges()]
    assert kex == expected_kex + [b"kex-strict-s-v00@openssh.com", b"ext-info-s"]
    assert hostkeys == [b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256"]
    assert enc_cs == enc_sc == [n.encode() for n in SSH2Settings().ciphers]
    assert enc_cs[:3] == [b"chacha20-poly1305@openssh.com", b"aes256-gcm@openssh.com",
                          b"aes128-gcm@openssh.com"]  # fmt: skip
    assert mac_cs == mac_sc == [n.encode() for n in SSH2Settings().macs]
    assert mac_cs[:2] == [b"hmac-sha2-512-etm@openssh.com", b"hmac-sha2-256-etm@openssh.com"]
    assert comp_cs == comp_sc == [b"none"]


def test_legacy_algorithms_only_when_listed():
    settings = SSH2Settings(
        kex=("diffie-hellman-group14-sha1",),
        host_key_algorithms=("ssh-rsa",),
        ciphers=("aes128-cbc",),
        macs=("hmac-sha1",),
    )
    offered = offered_algorithms(settings, {b"ssh-rsa": host_keys()[b"rsa-sha2-512"]}, {})
    assert offered["kex"] == [b"diffie-hellman-group14-sha1"]
    assert offered["host_key"] == [b"ssh-rsa"]
    assert offered["cipher"] == [b"aes128-cbc"]
    assert offered["mac"] == [b"hmac-sha1"]


def test_host_key_algorithms_need_a_host_key():
    ed_only = {b"ssh-ed25519": host_keys()[b"ssh-ed25519"]}
    offered = offered_algorithms(SSH2Settings(), ed_only, moduli.rfc3526_groups())
    assert offered["host_key"] == [b"ssh-ed25519"]
    with pytest.raises(NoAlgorithms):
        offered_algorithms(SSH2Settings(host_key_algorithms=("rsa-sha2-256",)), ed_only, {})


def test_group_exchange_never_offered_without_groups():
    offered = offered_algorithms(SSH2Settings(), host_keys(), {})
    assert b"diffie-hellman-group-exchange-sha256" not in offered["kex"]
    with pytest.raises(NoAlgorithms):
        offered_algorithms(
            SSH2Settings(kex=("diffie-hellman-group-exchange-sha256",)), host_keys(), {}
        )


def test_group_exchange_with_conch_client_gets_at_least_2048_bits():
    w = wire(
        settings=SSH2Settings(kex=("diffie-hellman-group-exchange-sha256",)),
        login=False,
        client_kex=[b"diffie-hellman-group-exchange-sha256"],
    )
    assert w.client.secure
    assert w.record.algorithms["kex"] == "diffie-hellman-group-exchange-sha256"
    assert w.transport.p.bit_length() >= 2048


def test_handoff_sends_no_version_line_and_sets_nodelay():
    class Recording(StringTransport):
        nodelay = None

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.nodelay = enabled

    w = wire(login=False)
    proto = w.factory.build_protocol(w.record, SERVER_LINE, b"SSH-2.0-OpenSSH_9.2")
    t = Recording()
    proto.makeConnection(t)
    out = t.value()
    assert not out.startswith(b"SSH-")
    assert out[5] == transport.MSG_KEXINIT
    assert t.nodelay is True


def test_rfc3526_groups():
    from twisted.conch.ssh._kex import _DHGroup14SHA1

    groups = moduli.rfc3526_groups()
    assert groups[2048] == [(2, _DHGroup14SHA1.prime)]
    for bits, [(g, p)] in groups.items():
        assert g == 2 and p.bit_length() == bits
        assert p % 2**64 == 2**64 - 1  # low 64 bits are all ones by construction
    p = groups[3072][0][1]
    assert pow(2, p - 1, p) == 1  # Fermat witness on the computed 3072-bit prime


def test_moduli_parsing_and_choice(tmp_path):
    p2048 = moduli.rfc3526_prime(2048)
    p3072 = moduli.rfc3526_prime(3072)
    text = "\n".join(
        [
            "# comment",
            f"20220714110357 2 6 100 2047 2 {p2048:X}",
            f"20220714110357 2 6 100 3071 5 {p3072:X}",
            "20220714110357 2 6 100 1023 2 " + "F" * 256,  # too small
            f"20220714110357 1 6 100 2047 2 {p2048:X}",  # not a safe prime
            "garbage line",
            f"20220714110357 2 6 100 4095 2 {p2048:X}",  # size does not match the modulus
        ]
    )
    groups = moduli.parse_moduli(text)
    assert groups == {2048: [(2, p2048)], 3072: [(5, p3072)]}
    assert moduli.choose_group(groups, 1024, 2048, 8192) == (2, p2048)
    assert moduli.choose_group(groups, 2048, 3000, 8192) == (5, p3072)
    assert moduli.choose_group(groups, 2048, 8192, 8192) == (5, p3072)
    assert moduli.choose_group(groups, 512, 1024, 1024) is None
    path = tmp_path / "moduli"
    path.write_text(text)
    assert moduli.load_groups(path) == groups
    assert moduli.load_groups(tmp_path / "missing") == moduli.rfc3526_groups()


def test_service_request_before_key_exchange_is_a_protocol_error():
    w = wire(login=False)
    proto = w.factory.build_protocol(w.record, SERVER_LINE, b"SSH-2.0-x")
    t = StringTransport()
    proto.makeConnection(t)
    # An unencrypted SERVICE_REQUEST packet (block size 8).
    payload = bytes([transport.MSG_SERVICE_REQUEST]) + common.NS(b"ssh-userauth")
    pad = 8 - (5 + len(payload)) % 8 or 8
    pad = pad + 8 if pad < 4 else pad
    packet = struct.pack(">LB", 1 + len(payload) + pad, pad) + payload + b"\0" * pad
    proto.dataReceived(packet)
    assert t.disconnecting
    assert "service request before key exchange" in w.record.close_reason


@pytest.mark.parametrize(
    "message, payload",
    [
        (94, b"\x00\x00"),  # CHANNEL_DATA before any service
        (50, b"\xff\xff\xff\xff"),  # USERAUTH_REQUEST before the service was accepted
    ],
)
def test_messages_above_transport_before_service_disconnect(message, payload):
    w = wire(login=False)
    w.client.sendPacket(message, payload)
    w.flush()
    assert w.client.disconnect is not None
    assert w.client.disconnect[0] == transport.DISCONNECT_PROTOCOL_ERROR
    assert w.record.close_reason


def test_truncated_packet_after_login_is_a_clean_disconnect():
    from tests.support.ssh2.harness import user_key

    w = wire(key=user_key(), password=None)
    assert w.conn.started
    w.client.sendPacket(98, b"\x00\x00")  # CHANNEL_REQUEST cut short
    w.flush()
    assert w.client.disconnect[0] == transport.DISCONNECT_PROTOCOL_ERROR
    assert w.record.close_reason == "malformed or unexpected packet"


def test_oversized_packet_length_disconnects():
    w = wire(login=False)
    proto = w.factory.build_protocol(w.record, SERVER_LINE, b"SSH-2.0-x")
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(struct.pack(">LB", 0x7FFFFFF0, 4) + b"\0" * 11)
    assert t.disconnecting
    assert "bad packet length" in w.record.close_reason


def test_compression_inflater_is_bounded():
    import zlib

    from protocols.ssh2.transport import _BoundedInflater

    bomb = zlib.compressobj()
    data = bomb.compress(b"\0" * (4 * 1024 * 1024)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(ValueError):
        _BoundedInflater(256 * 1024).decompress(data)


@pytest.mark.parametrize(
    "packet, reason",
    [
        (plain_packet(b"\x02", padding=2, length=1 + 1 + 2 + 4), "bad packet padding"),
        (plain_packet(b"\x02\x00\x00", length=13), "bad packet padding or length"),
        (struct.pack(">LB", 12, 11) + b"\0" * 11, "bad packet padding or length"),
    ],
)
def test_bad_padding_or_length_disconnects(packet, reason):
    w, proto, t = fresh_transport()
    proto.dataReceived(packet)
    assert t.disconnecting
    assert w.record.close_reason.startswith("bad packet")


def test_bad_mac_disconnects():
    from tests.support.ssh2.harness import user_key

    w = wire(key=user_key(), password=None)
    w.client.sendIgnore(b"x" * 40)
    raw = bytearray(w.client.transport.stream.pop())
    raw[-1] ^= 1  # flip one bit of the MAC
    w.client.transport.stream.append(bytes(raw))
    w.flush()
    assert w.client.disconnect[0] == transport.DISCONNECT_MAC_ERROR
    assert w.record.close_reason == "bad MAC"


def test_data_after_disconnect_is_ignored():
    w, proto, t = fresh_transport()
    proto.dataReceived(struct.pack(">LB", 0x7FFFFFF0, 4) + b"\0" * 11)
    written = t.value()
    proto.dataReceived(b"more bytes" * 100)
    assert t.value() == written


def test_packets_split_at_every_byte_are_reassembled():
    w, proto, t = fresh_transport()
    packet = plain_packet(bytes([transport.MSG_IGNORE]) + common.NS(b"hello"))
    for i in range(len(packet)):
        proto.dataReceived(packet[i : i + 1])
    assert not t.disconnecting
    assert proto.incomingPacketSequence == 1




# -- fuzzing: what "never raises" means ------------------------------------------------------
#
# SSH2ServerTransport.dataReceived catches every exception a packet handler raises (and
# disconnects), so "the call did not raise" proves nothing. A fuzz input passes only if
#   * no failure was logged: no event carries ``log_failure`` (the catch-all logs one),
#     and
#   * everything the server wrote is well-formed plaintext packets (no NEWKEYS can happen
#     without a real key exchange), our KEXINIT first, and then either
#       - closed cleanly: the transport is disconnecting, the last packet written is the one
#         and only MSG_DISCONNECT, with a known reason code and a non-empty description,
#         and the record's close_reason is that description; or
#       - closed by the client: it sent a well-formed DISCONNECT, we wrote none, the
#         transport is disconnecting and close_reason says "client disconnected: ..."; or
#       - still open and consistent: no DISCONNECT written, no close_reason, the transport
#         not disconnecting, and less than one maximum-size packet of input buffered.

# Inputs on which Conch's own handlers raise (a truncated body, or a method-specific key
# exchange message before any KEXINIT chose a method), keyed by what they raised in
# Conch: (exception type, the ssh_* handler, the innermost function). The transport
# refuses each before or around the handler, with no traceback logged.
CONCH_HANDLER_RAISES: dict[tuple[str, str, str], tuple[int, bytes]] = {
    ("error", "ssh_DISCONNECT", "ssh_DISCONNECT"): (transport.MSG_DISCONNECT, b""),
    ("error", "ssh_DISCONNECT", "getNS"): (transport.MSG_DISCONNECT, b"\0\0\0\x02\0"),
    ("error", "ssh_UNIMPLEMENTED", "ssh_UNIMPLEMENTED"): (transport.MSG_UNIMPLEMENTED, b""),
    ("TypeError", "ssh_DEBUG", "ssh_DEBUG"): (transport.MSG_DEBUG, b""),
    ("error", "ssh_DEBUG", "getNS"): (transport.MSG_DEBUG, b"\0"),
    ("error", "ssh_EXT_INFO", "ssh_EXT_INFO"): (transport.MSG_EXT_INFO, b""),
    ("error", "ssh_EXT_INFO", "getNS"): (transport.MSG_EXT_INFO, b"\0\0\0\1"),
    ("error", "ssh_KEXINIT", "getNS"): (transport.MSG_KEXINIT, b"\0" * 16),
    ("AttributeError", "ssh_KEX_DH_GEX_REQUEST_OLD", "kexAlg"): (30, b"\0\0\0\0"),
    ("AttributeError", "ssh_KEX_DH_GEX_INIT", "kexAlg"): (32, b"\0\0\0\0"),
    ("AttributeError", "ssh_KEX_DH_GEX_REQUEST", "kexAlg"): (34, b"\0" * 12),
}


def _failure_key(failure) -> tuple[str, str, str]:
    names = [frame[0] for frame in failure.frames]
    handler = next((name for name in names if name.startswith("ssh_")), "")
    return failure.type.__name__, handler, names[-1] if names else ""


def _logged_failures(events: list[dict], allowed=frozenset()) -> list[str]:
    from twisted.logger import formatEvent

    return [
        f"{_failure_key(e['log_failure'])}: {formatEvent(e)}\n{e['log_failure'].getTraceback()}"
        for e in events
        if e.get("log_failure") is not None and _failure_key(e["log_failure"]) not in allowed
    ]


def _plain_packets(data: bytes) -> list[tuple[int, bytes]]:
    """Every (message number, body) in unencrypted server output; asserts the framing."""
    packets = []
    while data:
        assert len(data) >= 5, f"truncated packet header {data!r}"
        length, padding = struct.unpack(">LB", data[:5])
        assert (4 + length) % 8 == 0 and 4 <= padding < length, (length, padding)
        payload = data[5 : 4 + length - padding]
        assert len(data) >= 4 + length and payload, "truncated or empty packet"
        packets.append((payload[0], payload[1:]))
        data = data[4 + length :]
    return packets


def assert_clean_outcome(w, proto, t: StringTransport, events: list[dict]) -> str:
    """The fuzz invariant above; returns "closed", "closed by the client" or "open"."""
    from protocols.ssh2.transport import MAX_PACKET_LENGTH

    failures = _logged_failures(events, allowed=())
    assert not failures, "a failure was logged:\n" + "\n".join(failures)
    packets = _plain_packets(t.value())
    assert packets and packets[0][0] == transport.MSG_KEXINIT
    disconnects = [i for i, (number, _) in enumerate(packets) if number == transport.MSG_DISCONNECT]
    if t.disconnecting and not disconnects:
        assert w.record.close_reason.startswith("client disconnected: "), w.record.close_reason
        assert proto._disconnecting
        return "closed by the client"
    if t.disconnecting:
        assert disconnects == [len(packets) - 1], "closed without exactly one final DISCONNECT"
        body = packets[-1][1]
        code = struct.unpack(">L", body[:4])[0]
        description = common.getNS(body[4:])[0].decode("utf-8")
        assert 1 <= code <= 15 and description, (code, description)
        assert w.record.close_reason == description
        return "closed"
    assert not disconnects and not w.record.close_reason
    assert not proto._disconnecting
    assert len(proto._inbuf) < MAX_PACKET_LENGTH + 4
    return "open"


@pytest.fixture
def log_events():
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.mark.parametrize("key", sorted(CONCH_HANDLER_RAISES), ids=lambda key: "-".join(key))
def test_input_that_conch_chokes_on_is_refused_without_a_traceback(log_events, key):
    message, body = CONCH_HANDLER_RAISES[key]
    w, proto, t = fresh_transport()
    log_events.clear()
    proto.dataReceived(plain_packet(bytes([message]) + body))
    assert not _logged_failures(log_events)
    assert assert_clean_outcome(w, proto, t, log_events) == "closed"


# Raw bytes, and well-framed packets with an arbitrary message number and body, so that
# the handlers behind the framing checks are reached as well.
_chunks = st.lists(
    st.one_of(
        st.binary(min_size=0, max_size=300),
        st.builds(
            lambda number, body: plain_packet(bytes([number]) + body),
            st.integers(0, 255),
            st.binary(max_size=200),
        ),
    ),
    max_size=8,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_chunks)
def test_arbitrary_bytes_never_raise(log_events, chunks):
    w, proto, t = fresh_transport()
    log_events.clear()  # only what the fuzz input causes (the harness's own kex ran above)
    for chunk in chunks:
        proto.dataReceived(chunk)  # wait for more, or disconnect cleanly
    event(assert_clean_outcome(w, proto, t, log_events))
    proto.connectionLost(None)
    assert not _logged_failures(log_events, allowed=())


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.integers(min_value=0, max_value=255), st.binary(max_size=200))
@example(transport.MSG_DISCONNECT, struct.pack(">L", 11) + common.NS(b"bye") + common.NS(b""))
def test_arbitrary_messages_in_valid_packets_never_raise(log_events, message, body):
    w, proto, t = fresh_transport()
    log_events.clear()  # only what the fuzz input causes (the harness's own kex ran above)
    proto.dataReceived(plain_packet(bytes([message]) + body))
    event(assert_clean_outcome(w, proto, t, log_events))
    proto.connectionLost(None)
    assert not _logged_failures(log_events, allowed=())


def test_legacy_group14_key_exchange_when_opted_in():
    w = wire(
        settings=SSH2Settings(kex=("diffie-hellman-group14-sha1",)),
        login=False,
        client_kex=[b"diffie-hellman-group14-sha1"],
    )
    assert w.client.secure
    assert w.record.algorithms["kex"] == "diffie-hellman-group14-sha1"


@pytest.mark.parametrize("value", [0, 1, "p-1", "p"])
def test_degenerate_client_dh_values_are_refused(value):
    w = wire(
        settings=SSH2Settings(kex=("diffie-hellman-group-exchange-sha256",)),
        login=False,
        client_kex=[b"diffie-hellman-group-exchange-sha256"],
    )
    proto = w.transport
    proto.p, proto.g = moduli.rfc3526_prime(2048), 2
    proto._startEphemeralDH()
    e = {"p-1": proto.p - 1, "p": proto.p}.get(value, value)
    with pytest.raises(ValueError):
        proto._finishEphemeralDH(e)


def test_client_without_a_configured_cipher_is_refused():
    import tests.support.ssh2.harness as h

    class OldClient(h.ClientTransport):
        supportedCiphers = [b"aes128-cbc", b"3des-cbc"]

    original = h.ClientTransport
    h.ClientTransport = OldClient
    try:
        w = wire(login=False)
    finally:
        h.ClientTransport = original
    assert not w.client.secure
    assert w.record.close_reason == "couldn't match all kex parts"


def test_zlib_compression_when_enabled():
    import tests.support.ssh2.harness as h

    class ZlibClient(h.ClientTransport):
        supportedCompressions = [b"zlib"]

    original = h.ClientTransport
    h.ClientTransport = ZlibClient
    try:
        w = wire(settings=SSH2Settings(compression=True), password=b"secret")
    finally:
        h.ClientTransport = original
    assert w.record.algorithms["comp_in"] == w.record.algorithms["comp_out"] == "zlib"
    assert w.conn.started
    session = w.open_session()
    session.request(b"exec", common.NS(b"cat"))
    w.flush()
    target = w.portal.users["alice"].targets[-1]
    session.write(b"a" * 100_000)
    target.client.write_stdout(b"b" * 100_000)
    w.flush()
    assert bytes(target.stdin) == b"a" * 100_000
    assert bytes(session.out) == b"b" * 100_000
