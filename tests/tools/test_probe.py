"""``sshgateway probe`` in memory: the SSH_SMSG_PUBLIC_KEY reading with hostile input,
the SSH-1 and SSH-2 probe connections fed bytes through StringTransport, the per-host
deadline on a Clock, targets, and the json / csv / text reports. (The KEXINIT parser's
tests are tests/ssh2/test_kexinit.py.)"""

from __future__ import annotations

import csv
import io
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.conch.ssh import keys as conch_keys
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from protocols.ssh1 import messages as m1
from protocols.ssh1.keys import ssh1_fingerprint
from protocols.ssh1.packet import PacketEncoder
from protocols.ssh1.wire import Writer
from protocols.ssh2.kexinit import parse_kexinit
from tests.support.ssh2.kexinit_payloads import GOOD_LISTS, kexinit_body
from tools.probe import login as probe_login
from tools.probe.hosts import probe_host, probe_hosts
from tools.probe.keys import host_key_from_blob, ssh1_sha256_fingerprint
from tools.probe.login import RECORD_WAIT, login
from tools.probe.output import format_csv, format_json, format_text
from tools.probe.progress import ProgressBar
from tools.probe.report import Credentials, HostKey, HostReport, SSH1Result, SSH2Result
from tools.probe.ssh1 import REFUSAL_WAIT, ProbeError, SSH1Attempt, parse_ssh1_public_key
from tools.probe.ssh2 import SSH2Attempt, key_types
from tools.probe.targets import parse_target, read_targets

# The parser reads numbers, it does not factor them: odd moduli of the right size do.
HOST_KEY = rsa.RSAPublicNumbers(65537, (1 << 1023) + 12345)
SERVER_KEY = rsa.RSAPublicNumbers(65537, (1 << 767) + 9999)


def public_key_payload(
    host=(HOST_KEY.e, HOST_KEY.n),
    server=(SERVER_KEY.e, SERVER_KEY.n),
    host_bits=None,
    server_bits=None,
    flags=0,
    ciphers=(1 << 3) | (1 << 6),
    auth=(1 << 2) | (1 << 3),
) -> bytes:
    w = Writer().raw(b"C" * 8)
    w.uint32(server[1].bit_length() if server_bits is None else server_bits)
    w.mpint(server[0]).mpint(server[1])
    w.uint32(host[1].bit_length() if host_bits is None else host_bits)
    w.mpint(host[0]).mpint(host[1])
    return w.uint32(flags).uint32(ciphers).uint32(auth).getvalue()


# ------------------------------------------------------------------ targets
@pytest.mark.parametrize(
    "text, expected",
    [
        ("example.org", ("example.org", 22)),
        ("10.0.0.1:2222", ("10.0.0.1", 2222)),
        ("[::1]:2200", ("::1", 2200)),
        ("[fe80::1]", ("fe80::1", 22)),
        ("::1", ("::1", 22)),
    ],
)
def test_parse_target(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["", "host:0", "host:70000", "host:x", "[::1", "[::1]x", "a b"])
def test_parse_target_rejects(text):
    with pytest.raises(ValueError):
        parse_target(text)


# ------------------------------------------------------------------ SSH-1 parser
def test_public_key_decoded():
    offer = parse_ssh1_public_key(public_key_payload(flags=2))
    assert offer.host_key_bits == 1024 and offer.server_key_bits == 768
    assert offer.host_key_md5 == ssh1_fingerprint(HOST_KEY.e, HOST_KEY.n)
    assert offer.host_key_sha256.startswith("SHA256:") and len(offer.host_key_sha256) == 50
    assert offer.ciphers == ["3des", "blowfish"]
    assert offer.auth == ["rsa", "password"]
    assert offer.flags == ["host-in-fwd-open"]
    assert offer.warnings == ["weak 768-bit server key"]


def test_public_key_unknown_bits_shown_as_numbers():
    offer = parse_ssh1_public_key(public_key_payload(ciphers=1 << 20, auth=1 << 9, flags=8))
    assert offer.ciphers == ["cipher 20"] and offer.auth == ["auth 9"] and offer.flags == ["flag 8"]


def test_public_key_bogus_sizes_are_warnings():
    payload = public_key_payload(host_bits=4096, server_bits=0, host=(4, HOST_KEY.n))
    offer = parse_ssh1_public_key(payload)
    assert offer.host_key_announced_bits == 4096 and offer.host_key_bits == 1024
    assert "host key: announced 4096 bits, has 1024" in offer.warnings
    assert "server key: announced 0 bits, has 768" in offer.warnings
    assert "host key is not a usable RSA key" in offer.warnings


def test_public_key_keys_too_close_is_a_warning():
    offer = parse_ssh1_public_key(public_key_payload(server=(HOST_KEY.e, HOST_KEY.n)))
    assert any("differ by less than 128 bits" in w for w in offer.warnings)


@pytest.mark.parametrize("cut", [0, 5, 8, 12, 40, 150, -4, -1])
def test_public_key_truncated(cut):
    payload = public_key_payload()
    with pytest.raises(ProbeError):
        parse_ssh1_public_key(payload[:cut])


def test_public_key_oversized_modulus_refused_before_allocation():
    huge = Writer().raw(b"C" * 8).uint32(1024).getvalue() + struct.pack(">H", 60000)
    with pytest.raises(ProbeError):
        parse_ssh1_public_key(huge + b"\xff" * 100)


def test_ssh1_sha256_matches_openssh_rule():
    # OpenSSH hashes modulus then exponent as bare magnitudes for rsa1 keys.
    import base64
    import hashlib

    from protocols.ssh1.wire import int_to_bytes

    want = hashlib.sha256(int_to_bytes(HOST_KEY.n) + int_to_bytes(HOST_KEY.e)).digest()
    assert ssh1_sha256_fingerprint(HOST_KEY.e, HOST_KEY.n) == (
        "SHA256:" + base64.b64encode(want).decode().rstrip("=")
    )


# ------------------------------------------------------------------ SSH-1 connection
def ssh1_attempt():
    clock = Clock()
    attempt = SSH1Attempt(clock)
    transport = StringTransport()
    attempt.makeConnection(transport)
    return attempt, transport, clock


def finish(attempt, transport):
    if transport.disconnecting:
        attempt.connectionLost(Failure(error.ConnectionDone()))
    return attempt


def test_ssh1_attempt_reads_public_key_and_says_goodbye():
    attempt, transport, _ = ssh1_attempt()
    packet = PacketEncoder().encode(m1.SSH_SMSG_PUBLIC_KEY, public_key_payload())
    data = b"SSH-1.99-test\r\n" + packet
    for i in range(len(data)):  # byte by byte: framing never matters
        attempt.dataReceived(data[i : i + 1])
    assert transport.disconnecting
    sent = transport.value()
    assert sent.startswith(b"SSH-1.5-sshgateway_probe\n")
    assert b"probe finished" in sent  # SSH_MSG_DISCONNECT, in clear text
    result = finish(attempt, transport).result()
    assert result.available is True and result.offer.host_key_bits == 1024
    assert attempt.identification == "SSH-1.99-test"
    assert attempt.finished.called


def test_ssh1_attempt_banner_then_version():
    attempt, transport, _ = ssh1_attempt()
    attempt.dataReceived(b"Welcome\r\nto the device\r\nSSH-1.5-dev\n")
    assert attempt.identification == "SSH-1.5-dev" and not transport.disconnecting


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"x" * 300, "overlong identification line"),
        (b"banner\n" * 17, "no SSH identification line"),
        (b"SSH-one-two\n", "malformed identification line"),
        (b"SSH-1.5-x\n" + b"\xff\xff\xff\xff", "bad SSH-1 packet"),
        (b"SSH-1.5-x\n" + PacketEncoder().encode(m1.SSH_SMSG_SUCCESS, b""), "expected SSH_SMSG"),
        (b"SSH-1.5-x\n" + PacketEncoder().encode(m1.SSH_SMSG_PUBLIC_KEY, b"short"), "malformed"),
        (b"SSH-1.2-x\n", "older than any client"),
    ],
)
def test_ssh1_attempt_hostile_input(data, reason):
    attempt, transport, _ = ssh1_attempt()
    attempt.dataReceived(data)
    assert transport.disconnecting
    assert reason in attempt.error
    finish(attempt, transport)
    assert attempt.finished.called


def test_ssh1_attempt_server_disconnect():
    attempt, transport, _ = ssh1_attempt()
    text = Writer().string(b"SSH-1 is disabled").getvalue()
    attempt.dataReceived(b"SSH-1.5-x\n" + PacketEncoder().encode(m1.SSH_MSG_DISCONNECT, text))
    result = finish(attempt, transport).result()
    assert result.available is False and "SSH-1 is disabled" in result.reason


def test_ssh1_attempt_ignores_a_few_ignore_packets_only():
    attempt, transport, _ = ssh1_attempt()
    ignore = PacketEncoder().encode(m1.SSH_MSG_IGNORE, Writer().string(b"").getvalue())
    attempt.dataReceived(b"SSH-1.5-x\n" + ignore * 20)
    assert transport.disconnecting and "expected SSH_SMSG_PUBLIC_KEY" in attempt.error


def test_ssh1_attempt_against_ssh2_server():
    attempt, transport, clock = ssh1_attempt()
    attempt.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
    attempt.dataReceived(b"Protocol major versions differ.\n")
    assert not transport.disconnecting
    clock.advance(REFUSAL_WAIT)  # a server that does not hang up is left
    assert transport.disconnecting
    result = finish(attempt, transport).result()
    assert result.available is False
    assert "SSH-2.0 only" in result.reason and "major versions differ" in result.reason


def test_ssh1_attempt_closed_before_identification():
    attempt, transport, _ = ssh1_attempt()
    attempt.connectionLost(Failure(error.ConnectionDone()))
    assert attempt.result().available is None
    assert "before the identification" in attempt.error


# ------------------------------------------------------------------ SSH-2 connection
def ssh2_attempt(algorithms=None):
    attempt = SSH2Attempt(algorithms)
    transport = StringTransport()
    attempt.makeConnection(transport)
    return attempt, transport


def ssh2_packet(payload: bytes) -> bytes:
    pad = 8 - (len(payload) + 5) % 8
    pad += 8 if pad < 4 else 0
    return struct.pack(">IB", len(payload) + 1 + pad, pad) + payload + b"\x00" * pad


def test_ssh2_attempt_sends_version_and_kexinit():
    attempt, transport = ssh2_attempt(["ssh-ed25519"])
    sent = transport.value()
    assert sent.startswith(b"SSH-2.0-sshgateway_probe\r\n")
    assert b"ssh-ed25519" in sent and b"rsa-sha2-512" not in sent


def test_ssh2_attempt_reads_kexinit():
    attempt, transport = ssh2_attempt()
    attempt.dataReceived(b"SSH-2.0-srv\r\n" + ssh2_packet(b"\x14" + kexinit_body()))
    assert attempt.identification == "SSH-2.0-srv"
    assert attempt.kexinit.host_key_algorithms == ["ssh-ed25519", "rsa-sha2-512"]
    assert attempt.error is None and not transport.disconnecting  # now in key exchange


@pytest.mark.parametrize(
    "body",
    [
        kexinit_body()[:30],
        b"K" * 16 + struct.pack(">I", 0x7FFFFFFF),
        kexinit_body([b"\xff\xfe", *GOOD_LISTS[1:]]),
    ],
)
def test_ssh2_attempt_hostile_kexinit(body):
    attempt, transport = ssh2_attempt()
    attempt.dataReceived(b"SSH-2.0-srv\r\n" + ssh2_packet(b"\x14" + body))
    assert "malformed SSH2_MSG_KEXINIT" in attempt.error
    assert transport.disconnecting
    attempt.connectionLost(Failure(error.ConnectionDone()))
    assert attempt.finished.called


def test_ssh2_attempt_hostile_packet_length():
    attempt, transport = ssh2_attempt()
    attempt.dataReceived(b"SSH-2.0-srv\r\n" + struct.pack(">I", 0x7FFFFFFF) + b"\x00" * 60)
    assert transport.disconnecting and attempt.error


def test_ssh2_attempt_against_ssh1_server():
    attempt, transport = ssh2_attempt()
    attempt.dataReceived(b"SSH-1.5-legacy\n")
    assert attempt.ssh1_only and attempt.identification == "SSH-1.5-legacy"
    attempt.connectionLost(Failure(error.ConnectionDone()))
    result = attempt.result()
    assert result.available is False and "SSH-1.5 only" in result.reason


def test_ssh2_attempt_overlong_version_area():
    attempt, transport = ssh2_attempt()
    attempt.dataReceived(b"x" * 5000)
    assert transport.disconnecting


def test_host_key_from_blob():
    key = conch_keys.Key.fromString(
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOBFhEuPl3dHnB9mrRjyXiX9Y5FoScWiQ1C/WsNZw5Zc"
    )
    hk = host_key_from_blob("ssh-ed25519", key.blob())
    assert (hk.type, hk.bits) == ("ssh-ed25519", 256)
    from gateway.hostkeys import ssh2_fingerprint

    assert hk.fingerprint == ssh2_fingerprint(key)
    bad = host_key_from_blob("ssh-rsa", b"\x00\x00\x00\x07ssh-rsa\xff")
    assert bad.type == "unreadable" and bad.bits is None and bad.fingerprint.startswith("SHA256:")


def test_key_types_one_exchange_per_key():
    k = parse_kexinit(
        kexinit_body([GOOD_LISTS[0], ["rsa-sha2-512", "ssh-ed25519", "rsa-sha2-256", "ssh-rsa",
                                      "ssh-ed25519-cert-v01@openssh.com", "x-unknown"],
                      *GOOD_LISTS[2:]])
    )  # fmt: skip
    assert key_types(k) == [("ssh-rsa", "rsa-sha2-512"), ("ssh-ed25519", "ssh-ed25519")]


# ------------------------------------------------------------------ deadlines and hosts
def never_connects(reactor, host, port, protocol, timeout):
    return defer.Deferred()


def refuses(reactor, host, port, protocol, timeout):
    return defer.fail(error.ConnectionRefusedError())


def connects_silently(reactor, host, port, protocol, timeout):
    transport = StringTransport()
    transport.abortConnection = lambda: protocol.connectionLost(Failure(error.ConnectionAborted()))
    protocol.makeConnection(transport)
    return defer.succeed(protocol)


@pytest.mark.parametrize("connect", [never_connects, connects_silently])
def test_probe_host_times_out(connect):
    clock = Clock()
    d = probe_host(clock, "10.9.9.9:22", timeout=5, connect=connect)
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.1)
    report = d.result
    assert report.status == "timeout" and report.duration == 5
    assert report.ssh1.available is None and report.ssh2.available is None
    assert not clock.getDelayedCalls()


def test_probe_host_refused():
    clock = Clock()
    report = probe_host(clock, "10.9.9.9:2222", timeout=5, connect=refuses).result
    assert (report.status, report.port, report.error) == ("refused", 2222, "connection refused")
    assert not clock.getDelayedCalls()


def test_probe_host_bad_target():
    report = probe_host(Clock(), "host:99999").result
    assert report.status == "error" and "port" in report.error


def test_probe_hosts_respects_concurrency_and_order():
    clock = Clock()
    running = []
    peak = [0]

    def tracked(reactor, host, port, protocol, timeout):
        running.append(host)
        peak[0] = max(peak[0], len(set(running)))
        d = defer.Deferred()

        def fail():
            running.remove(host)
            d.errback(error.ConnectionRefusedError())

        clock.callLater(1, fail)
        return d

    seen = []
    targets = [f"10.0.0.{i}" for i in range(7)]
    d = probe_hosts(clock, targets, 5, concurrency=3, connect=tracked,
                          progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    clock.pump([1] * 5)
    reports = d.result
    assert [r.host for r in reports] == targets
    assert peak[0] == 3
    assert seen[-1] == (7, 7)


# ------------------------------------------------------------------ output
def sample_reports():
    ok = HostReport("gw:2222", "gw", 2222, status="ok", identification="SSH-1.99-x",
                          protocols=["ssh1", "ssh2"], duration=0.05)  # fmt: skip
    ok.ssh1 = SSH1Result(True, None, parse_ssh1_public_key(public_key_payload()))
    ok.ssh2 = SSH2Result(True, None, parse_kexinit(kexinit_body()),
                               [HostKey("ssh-ed25519", "ssh-ed25519", 256, "SHA256:abc", True)])  # fmt: skip
    down = HostReport("down", "down", 22, status="refused", error="connection refused")
    return [ok, down]


def test_json_output_parses():
    data = json.loads(format_json(sample_reports()))
    assert data[0]["ssh1"]["offer"]["host_key_bits"] == 1024
    assert data[0]["ssh2"]["host_keys"][0]["fingerprint"] == "SHA256:abc"
    assert data[1]["status"] == "refused" and data[1]["ssh1"]["available"] is None


def test_csv_output_parses():
    rows = list(csv.DictReader(io.StringIO(format_csv(sample_reports()))))
    assert rows[0]["protocols"] == "ssh1 ssh2" and rows[0]["ssh1_ciphers"] == "3des blowfish"
    assert rows[0]["ssh2_host_keys"] == "ssh-ed25519 256 SHA256:abc"
    assert rows[1]["status"] == "refused" and rows[1]["ssh1_host_key_bits"] == ""


def test_text_output():
    text = format_text(sample_reports())
    assert "SSH-1 host key   1024 bits" in text and "down:22  refused" in text


def test_progress_bar():
    out = io.StringIO()
    bar = ProgressBar(out, Clock(), width=10)
    bar(1, 2)
    bar(2, 2)
    assert "[#####.....] 1/2" in out.getvalue() and out.getvalue().endswith("\n")


def test_progress_bar_elapsed_time_advances_while_a_host_stays_silent():
    """Issue 9, item 15: the bar was redrawn only when a host finished, so a silent host
    showed ``0s`` for its whole wait. It is now redrawn every second as well."""
    clock = Clock()
    out = io.StringIO()
    bar = ProgressBar(out, clock, width=10)
    d = probe_hosts(clock, ["10.9.9.9"], 5, connect=never_connects, progress=bar)
    clock.pump([1] * 4)
    drawn = out.getvalue().split("\r")[1:]
    assert drawn == [f"probe [..........] 0/1 {s}s" for s in range(5)]
    clock.advance(1)
    assert d.result[0].status == "timeout"
    assert out.getvalue().endswith("\rprobe [##########] 1/1 5s\n")
    # Done: the bar stops ticking (nothing left to redraw, nothing left on the clock).
    assert not clock.getDelayedCalls()
    clock.advance(10)
    assert out.getvalue().endswith("1/1 5s\n")


def test_cli_rejects_bad_targets():
    from tools.cli import main

    err = io.StringIO()
    assert main(["probe", "host:0"], stdout=io.StringIO(), stderr=err) == 2
    assert "port" in err.getvalue()
    assert main(["probe"], stdout=io.StringIO(), stderr=err) == 2


# ------------------------------------------------------------------ logging in (glue)
class FakeFlow:
    id = "f-20261121T000000Z-00000000"


class FakeTarget:
    """Stands in for an upstream target: ``behaviour`` decides what its connector does."""

    def __init__(self, clock, behaviour):
        self.clock = clock
        self.behaviour = behaviour
        self.flows = None
        self.closed = False

    def flow_done(self, flow):
        pass

    def connector(self, username, password):
        def connect(request, sink):
            assert request.command == b"true"
            return self.behaviour(self, sink)

        return connect

    def close(self):
        self.closed = True


def exits(target, sink):
    from protocols.session import ExitInfo

    target.clock.callLater(1, sink.exited, ExitInfo(status=0))
    target.clock.callLater(1.5, target.flow_done, FakeFlow())  # connection gone a bit later
    return defer.succeed(target)


def hangs(target, sink):
    return defer.Deferred(lambda d: None)


def refused(target, sink):
    raise RuntimeError("no credentials configured for this target")


def ok_report():
    report = HostReport("h", "h", 22, status="ok", protocols=["ssh1"])
    report.ssh1 = SSH1Result(True, None, parse_ssh1_public_key(public_key_payload()))
    return report


@pytest.mark.parametrize(
    "behaviour, after, expected",
    [
        (exits, 1.5, (True, 0, "f-20261121T000000Z-00000000", None)),
        (hangs, 5, (False, None, None, "no exit status within 5 s")),
        (refused, RECORD_WAIT, (False, None, None, "no credentials configured for this target")),
    ],
)  # fmt: skip
def test_login_outcomes(monkeypatch, behaviour, after, expected):
    clock = Clock()
    target = FakeTarget(clock, behaviour)
    monkeypatch.setattr(probe_login, "_make_target", lambda *a: target)
    creds = Credentials("alice", "secret")
    out = []
    login(clock, ok_report(), "ssh1", creds, 5).addBoth(out.append)
    clock.advance(after - 0.01)
    assert out == []
    clock.advance(0.01)
    (r,) = out
    assert (r.ok, r.exit_status, r.flow_id, r.error) == expected
    assert not clock.getDelayedCalls()


def test_login_without_a_pinned_key():
    report = HostReport("h", "h", 22, status="ok", protocols=["ssh2"])
    r = login(Clock(), report, "ssh2", Credentials("alice", "pw"), 5).result
    assert not r.ok and "no host key to pin" in r.error


def test_credentials_never_shown():
    assert "hunter2" not in repr(Credentials("alice", "hunter2"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--user", "alice"], "--user needs --password or --key"),
        (["--password", "x"], "need --user"),
        (["--key", "k"], "need --user"),
    ],
)
def test_cli_login_options(argv, message):
    from tools.cli import main

    err = io.StringIO()
    assert main(["probe", *argv, "host"], stdout=io.StringIO(), stderr=err) == 2
    assert message in err.getvalue()


def test_ssh2_attempt_offers_legacy_group1_last():
    attempt, transport = ssh2_attempt()
    sent = transport.value()
    kex = sent[sent.index(b"curve25519-sha256") :].split(b"\x00")[0]
    assert b"diffie-hellman-group14-sha1,diffie-hellman-group1-sha1" in kex


def test_hosts_file(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# inventory\n10.0.0.1\n\n  10.0.0.2:2222  # the old switch\n[::1]:22\n")
    assert read_targets(str(path)) == ["10.0.0.1", "10.0.0.2:2222", "[::1]:22"]
    from tools.cli import main

    path.write_text("10.0.0.1\nhost:0\n")
    err = io.StringIO()
    assert main(["probe", "--hosts-file", str(path)], stdout=io.StringIO(), stderr=err) == 2
    assert "host:0" in err.getvalue()
