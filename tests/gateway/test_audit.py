"""The audit trail in memory: the observer and its file (rotation, write errors), syslog
over a real datagram socket, the events each part of the gateway emits (logins, sessions,
host keys, penalties, reloads, weak legs), and the weak-algorithm table."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.internet.task import Clock
from twisted.logger import Logger, globalLogPublisher
from zope.interface.verify import verifyObject

from gateway.audit import AuditTap, AuditTrail, SyslogSink, audit_record
from gateway.auth import build_portal, run_inline
from gateway.config import AuditConfig, parse_config
from gateway.events import EVENT_KEY, LOGIN, emit
from gateway.jsonl import WRITE_ERROR_KEY
from gateway.known_hosts import HostKeyChanged, HostKeyUnknown, KnownHosts
from gateway.penalties import AUTHFAIL, MemoryPenaltyBook, PenaltyRules
from gateway.routing import Router
from gateway.session_tap import ISessionTap
from gateway.weak_algorithms import weak_choices, weak_table_markdown
from protocols.auth import LoginContext
from protocols.flow import FlowRecorder
from protocols.session import ExitInfo, IGatewayUser, PtyRequest, SessionRequest, WindowSize
from tests.support.doubles import FakeSessionClient, FakeTarget, RecordingTap
from tests.support.gateway_helpers import (
    LOCAL_ACCESS,
    ROUTED_TARGETS,
    ed25519_key,
    failure_of,
    fast_hash,
    pk,
    result_of,
)

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def events():
    """Every gateway event logged while the test runs."""
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if EVENT_KEY in event:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def names(events) -> list[str]:
    return [e[EVENT_KEY] for e in events]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the observer and its file ----------------------------------------------------------------


def test_a_gateway_event_becomes_one_line_with_time_event_and_fields(tmp_path):
    trail = AuditTrail(tmp_path, AuditConfig())
    log = Logger(observer=trail)
    emit(log, LOGIN, "x {user}", user="alice", method="password", source="192.0.2.1:5")
    log.info("an ordinary line {user}", user="bob")  # not audited
    [record] = read_lines(tmp_path / "audit" / "audit.jsonl")
    assert list(record)[:2] == ["time", "event"]
    assert record["event"] == "login" and record["user"] == "alice"
    assert record["method"] == "password" and record["source"] == "192.0.2.1:5"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", record["time"])
    assert not any(k.startswith("log_") for k in record) and EVENT_KEY not in record
    assert (tmp_path / "audit").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "audit" / "audit.jsonl").stat().st_mode & 0o777 == 0o600


def test_audit_record_of_an_ordinary_event_is_none():
    assert audit_record({"log_format": "hi", "log_time": 0.0}) is None


def test_the_file_rotates_like_the_flow_records(tmp_path):
    trail = AuditTrail(tmp_path, AuditConfig(max_bytes=4096, keep=2))
    log = Logger(observer=trail)
    for i in range(60):
        emit(log, LOGIN, "x", user=f"u{i:02d}", pad="x" * 200)
    directory = tmp_path / "audit"
    assert sorted(p.name for p in directory.iterdir()) == [
        "audit.jsonl",
        "audit.jsonl.1",
        "audit.jsonl.2",
    ]
    assert all(p.stat().st_size <= 4096 for p in directory.iterdir())
    newest = read_lines(directory / "audit.jsonl")
    assert newest[-1]["user"] == "u59"


def test_a_write_error_is_logged_and_counted_never_raised(tmp_path, events):
    (tmp_path / "audit").write_text("a file where the directory should be")
    trail = AuditTrail(tmp_path, AuditConfig())
    errors: list[dict] = []
    globalLogPublisher.addObserver(errors.append)
    try:
        emit(Logger(observer=trail), LOGIN, "x", user="alice")
        emit(Logger(observer=trail), LOGIN, "x", user="bob")
    finally:
        globalLogPublisher.removeObserver(errors.append)
    assert trail.write_errors == 2
    assert [e[WRITE_ERROR_KEY] for e in errors if WRITE_ERROR_KEY in e] == ["audit", "audit"]


def test_disabled_writes_no_file(tmp_path):
    trail = AuditTrail(tmp_path, AuditConfig(enabled=False))
    emit(Logger(observer=trail), LOGIN, "x", user="alice")
    assert not (tmp_path / "audit").exists()


def test_a_reload_applies_new_settings_and_keeps_the_error_count(tmp_path):
    (tmp_path / "audit").write_text("not a directory")
    trail = AuditTrail(tmp_path, AuditConfig())
    emit(Logger(observer=trail), LOGIN, "x", user="alice")
    trail.configure(AuditConfig(enabled=False))
    assert trail.write_errors == 1 and trail.writer is None


# --- syslog -------------------------------------------------------------------------------------


@pytest.fixture
def syslog_socket(tmp_path):
    path = str(tmp_path / "dev-log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    yield path, server
    server.close()


def test_syslog_gets_each_event_as_json_with_facility_and_severity(tmp_path, syslog_socket):
    path, server = syslog_socket
    trail = AuditTrail(
        tmp_path, AuditConfig(syslog=True, syslog_facility="authpriv"), syslog_path=path
    )
    log = Logger(observer=trail)
    emit(log, LOGIN, "x", user="alice", method="publickey")
    emit(log, "login_failed", "x", user="mallory", method="password")
    first, second = server.recv(65536).decode(), server.recv(65536).decode()
    # authpriv (10) * 8 + info (6) = 86; warning (4) = 84
    m = re.fullmatch(r"<86>\w{3} [ \d]\d \d\d:\d\d:\d\d sshgateway-audit\[\d+\]: (\{.*\})", first)
    assert m and json.loads(m.group(1))["user"] == "alice"
    assert second.startswith("<84>") and '"event":"login_failed"' in second
    assert trail.write_errors == 0


def test_a_missing_syslog_socket_is_counted_and_never_raised(tmp_path):
    sink = SyslogSink("auth", str(tmp_path / "no-such-socket"))
    assert sink.send({"event": "login"}) is False
    assert sink.send({"event": "login"}) is False
    assert sink.errors == 2


# --- logins -------------------------------------------------------------------------------------


@pytest.fixture
def portal(tmp_path):
    keys_file = tmp_path / "keys"
    key = ed25519_key()
    keys_file.write_text(key.public().toString("OPENSSH").decode() + "\n")
    keys_file.chmod(0o600)
    config = parse_config(
        f'[users.alice]\npassword = "{fast_hash("alice-pw")}"\n'
        f'authorized_keys = "{keys_file}"\n{LOCAL_ACCESS}',
        base=tmp_path,
    )
    built = build_portal(config, FakeTarget("router"), blocking=run_inline)
    built.test_key = key
    return built


def login(portal, credentials, method="password", protocol="ssh2"):
    context = LoginContext(
        protocol=protocol, peer="192.0.2.9:40000", client_version="SSH-2.0-OpenSSH_9.6"
    )
    context.begin(getattr(credentials, "username", b"").decode(), method)
    return portal.login(credentials, context, IGatewayUser)


def test_a_login_is_audited_with_user_method_source_protocol_and_client(portal, events):
    result_of(login(portal, UsernamePassword(b"alice+sw1", b"alice-pw")))
    [event] = events
    record = audit_record(event)
    assert record["event"] == "login"
    assert {k: record[k] for k in ("user", "method", "source", "protocol", "client_version")} == {
        "user": "alice",
        "method": "password",
        "source": "192.0.2.9:40000",
        "protocol": "ssh2",
        "client_version": "SSH-2.0-OpenSSH_9.6",
    }


def test_a_failed_login_looks_the_same_for_known_and_unknown_users(portal, events):
    failure_of(login(portal, UsernamePassword(b"alice", b"wrong-secret-1")))
    failure_of(login(portal, UsernamePassword(b"nobody-here", b"wrong-secret-2")))
    known, unknown = (audit_record(e) for e in events)
    assert known["event"] == unknown["event"] == "login_failed"
    assert set(known) == set(unknown)
    assert (known["user"], unknown["user"]) == ("alice", "nobody-here")
    text = json.dumps([known, unknown])
    assert "wrong-secret" not in text and "alice-pw" not in text


def test_a_key_query_is_no_outcome_and_a_signed_key_login_is(portal, events):
    failure_of(login(portal, pk(b"alice", portal.test_key, sign=False), "publickey"))
    assert events == []
    result_of(login(portal, pk(b"alice", portal.test_key), "publickey"))
    [record] = [audit_record(e) for e in events]
    assert record["event"] == "login" and record["method"] == "publickey"
    assert record["key_algorithm"] == "ssh-ed25519"


def test_a_hostile_login_name_is_bounded_and_printable(portal, events):
    failure_of(login(portal, UsernamePassword(b"\x1b[31m" + b"x" * 500, b"pw")))
    user = audit_record(events[0])["user"]
    assert user.startswith("?[31m") and len(user) <= 67


# --- sessions -----------------------------------------------------------------------------------


def test_the_tap_provides_its_interface():
    assert verifyObject(ISessionTap, AuditTap())


class NamingRecorder(RecordingTap):
    """The recorder's tap as the audit tap sees it: it runs first and names the file."""

    def session_started(self, session):
        session.recording = "/state/recordings/f-1.cast"
        return super().session_started(session)


SESSION_CONFIG = (
    f"""
[users.alice]
password = "{fast_hash("pw")}"
targets = ["sw1"]
"""
    + ROUTED_TARGETS
)


def open_session(request: SessionRequest, *taps):
    config = parse_config(SESSION_CONFIG)
    targets = {name: FakeTarget(name, takes_password=name != "local") for name in config.targets}
    routed = Router(config, targets, Clock())
    routed.session_taps = list(taps)
    flow = FlowRecorder("server", "192.0.2.7:40000", "ssh1")
    flow.negotiated["cipher"] = "3des"
    client = FakeSessionClient()
    client.flow_id = flow.id
    session = routed.open_session("alice", request, client, target="sw1")
    [opened] = targets["sw1"].opened
    return session, opened, flow


def test_session_start_and_end_name_command_pty_recording_exit_and_bytes(events):
    session, opened, flow = open_session(
        SessionRequest(command=b"show version"), NamingRecorder(), AuditTap()
    )
    opened.client.write_stdout(b"v1.0\n")
    session.write_stdin(b"y")
    opened.client.exited(ExitInfo(status=0))
    records = [audit_record(e) for e in events]
    start, *weak, end = records
    assert start["event"] == "session_start" and end["event"] == "session_end"
    for record in (start, end):
        assert record["user"] == "alice" and record["target"] == "sw1"
        assert record["command"] == "show version" and record["pty"] is False
        assert record["recording"] == "/state/recordings/f-1.cast"
        assert record["protocol"] == "ssh1" and record["flow_id"] == flow.id
        assert record["session"] == start["session"]
    assert (end["exit_status"], end["bytes_out"], end["bytes_in"]) == (0, 5, 1)
    # the client leg is SSH-1 with 3DES: two weak choices, each one event
    assert [(w["leg"], w["what"], w["algorithm"]) for w in weak] == [
        ("client", "protocol", "ssh1"),
        ("client", "cipher", "3des"),
    ]
    assert all(w["user"] == "alice" and w["session"] == start["session"] for w in weak)


def test_a_shell_whose_client_left_ends_without_a_status(events):
    session, _, _ = open_session(
        SessionRequest(pty=PtyRequest("xterm", WindowSize(24, 80))), AuditTap()
    )
    session.close()
    end = audit_record(events[-1])
    assert end["event"] == "session_end" and end["exit_status"] is None
    assert end["pty"] is True and end["command"] is None and end["recording"] is None


# --- host keys, penalties ---------------------------------------------------------------------


def test_host_keys_first_seen_changed_and_refused(tmp_path, events):
    known = KnownHosts(tmp_path / "known_hosts")
    first, other = ed25519_key(), ed25519_key()
    known.check_ssh2("10.0.0.5", 22, first, "accept-new", target="sw2").record()
    with pytest.raises(HostKeyChanged):
        known.check_ssh2("10.0.0.5", 22, other, "accept-new", target="sw2")
    with pytest.raises(HostKeyUnknown):
        known.check_ssh2("10.0.0.6", 22, other, "strict", target="sw3")
    seen, changed, refused = (audit_record(e) for e in events)
    assert seen["event"] == "host_key_first_seen" and seen["target"] == "sw2"
    assert changed["event"] == "host_key_changed" and changed["result"] == "refused"
    assert changed["pinned"] == f"{tmp_path / 'known_hosts'}:1"
    assert changed["fingerprint"].startswith("SHA256:") and changed["port"] == 22
    assert refused["event"] == "host_key_refused" and refused["reason"] == "unknown (strict)"
    assert refused["target"] == "sw3"


def test_each_penalty_applied_is_audited(events):
    clock = Clock()
    clock.advance(1000)
    book = MemoryPenaltyBook(PenaltyRules({AUTHFAIL: 10.0}, minimum=15.0, maximum=60.0), clock)
    book.penalise("192.0.2.1", AUTHFAIL)
    book.penalise("192.0.2.1", AUTHFAIL)
    first, second = (audit_record(e) for e in events)
    assert (first["source"], first["kind"], first["seconds"], first["refused"]) == (
        "192.0.2.1",
        AUTHFAIL,
        10.0,
        False,
    )
    assert second["remaining"] == 20.0 and second["refused"] is True


# --- weak algorithms ------------------------------------------------------------------------------


def test_modern_ssh2_is_not_weak():
    assert (
        weak_choices(
            "ssh2",
            {
                "kex": "curve25519-sha256",
                "host_key_algorithm": "ssh-ed25519",
                "cipher_c2s": "chacha20-poly1305@openssh.com",
                "cipher_s2c": "chacha20-poly1305@openssh.com",
                "mac_c2s": "implicit",
                "mac_s2c": "implicit",
            },
        )
        == []
    )


def test_legacy_ssh2_names_each_weak_choice_once():
    found = weak_choices(
        "ssh2",
        {
            "kex": "diffie-hellman-group1-sha1",
            "host_key_algorithm": "ssh-rsa",
            "cipher_c2s": "aes128-cbc",
            "cipher_s2c": "aes128-cbc",
            "mac_c2s": "hmac-sha1",
            "mac_s2c": "hmac-md5",
        },
    )
    assert [(c.what, c.algorithm) for c in found] == [
        ("cipher", "aes128-cbc"),
        ("kex", "diffie-hellman-group1-sha1"),
        ("host_key_algorithm", "ssh-rsa"),
        ("mac", "hmac-sha1"),
        ("mac", "hmac-md5"),
    ]
    assert [c.what for c in weak_choices("ssh2", {"cipher_c2s": "twofish-cbc"})] == ["cipher"]


def test_ssh1_is_weak_at_all_and_telnet_too():
    assert [c.algorithm for c in weak_choices("ssh1", {"cipher": "blowfish"})] == [
        "ssh1",
        "blowfish",
    ]
    assert [c.what for c in weak_choices("telnet", {})] == ["protocol"]


def test_the_readme_shows_the_weak_table():
    assert weak_table_markdown() in README.read_text(), "paste weak_table_markdown() into README"


# --- the service: observing from start to stop, reloads ---------------------------------------


def test_the_service_audits_reloads_while_it_runs_and_stops_observing_after(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from gateway.config import load_config
    from gateway.service import make_service

    path = tmp_path / "gw.toml"
    path.write_text(
        f'listen = ["tcp:0:interface=127.0.0.1"]\nstate_dir = "{tmp_path / "state"}"\n'
        f'shutdown_grace = 1\n[users.alice]\npassword = "{fast_hash("pw")}"\n{LOCAL_ACCESS}'
    )
    top = make_service(load_config(path), MemoryReactorClock())
    top.startService()
    assert top.reload() is True
    path.write_text("listen = [\n")
    assert top.reload() is False
    top.stopService()
    emit(Logger(), LOGIN, "after the stop", user="late")
    records = read_lines(tmp_path / "state" / "audit" / "audit.jsonl")
    assert [(r["event"], r["result"]) for r in records] == [
        ("config_reload", "loaded"),
        ("config_reload", "refused"),
    ]
    assert records[0]["source"] == str(path) and "gw.toml:" in records[1]["reason"]
