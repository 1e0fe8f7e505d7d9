"""``sshgateway audit`` in this process: filters, times, rotated files, formats, and
hostile records."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.audit import AuditTrail
from gateway.config import AuditConfig
from gateway.events import LOGIN, LOGIN_FAILED, SESSION_START, WEAK_LEG
from tools import cli
from tools.audit import AuditError, parse_time


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(["audit", *argv], stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def record(event: str, minutes_ago: float, **fields) -> dict:
    when = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat(timespec="microseconds")
    return {"time": when, "event": event, **fields}


def write(state, *records, name="audit.jsonl", raw: bytes = b""):
    directory = state / "audit"
    directory.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in records).encode() + raw
    (directory / name).write_bytes(data)


@pytest.fixture
def state(tmp_path):
    write(
        tmp_path,
        record(LOGIN, 200, user="alice", method="password", source="192.0.2.1:5"),
        record(SESSION_START, 199, user="alice", target="dev1", command="uname -a"),
        name="audit.jsonl.1",
    )
    write(
        tmp_path,
        record(LOGIN_FAILED, 30, user="mallory", method="password"),
        record(LOGIN, 20, user="bob", method="publickey"),
        record(WEAK_LEG, 19, user="alice", target="dev1", leg="upstream", algorithm="3des"),
        record(SESSION_START, 10, user="bob", target="host2", command=None),
    )
    return tmp_path


def events_of(out: str) -> list[tuple[str, str]]:
    return [(r["event"], r.get("user")) for r in json.loads(out)]


def test_all_records_oldest_first_rotated_files_included(state):
    status, out, err = run("--state-dir", str(state), "--format", "json")
    assert status == 0 and err == ""
    assert events_of(out) == [
        (LOGIN, "alice"),
        (SESSION_START, "alice"),
        (LOGIN_FAILED, "mallory"),
        (LOGIN, "bob"),
        (WEAK_LEG, "alice"),
        (SESSION_START, "bob"),
    ]


def test_filters_by_user_target_and_event(state):
    _, out, _ = run("--state-dir", str(state), "--format", "json", "--user", "alice")
    assert [e for e, _ in events_of(out)] == [LOGIN, SESSION_START, WEAK_LEG]
    _, out, _ = run("--state-dir", str(state), "--format", "json", "--target", "host2")
    assert events_of(out) == [(SESSION_START, "bob")]
    _, out, _ = run(
        "--state-dir", str(state), "--format", "json", "--event", LOGIN, "--event", LOGIN_FAILED
    )
    assert [u for _, u in events_of(out)] == ["alice", "mallory", "bob"]


def test_filters_by_time_relative_and_iso(state):
    _, out, _ = run("--state-dir", str(state), "--format", "json", "--since", "1h")
    assert len(events_of(out)) == 4
    until = (datetime.now(UTC) - timedelta(minutes=25)).isoformat()
    _, out, _ = run("--state-dir", str(state), "--format", "json", "--until", until)
    assert [u for _, u in events_of(out)] == ["alice", "alice", "mallory"]
    _, out, _ = run("--state-dir", str(state), "--format", "json", "--since", "25m", "--limit", "1")
    assert events_of(out) == [(SESSION_START, "bob")]


def test_parse_time():
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert parse_time("90s", now) == now - timedelta(seconds=90)
    assert parse_time("2d", now) == now - timedelta(days=2)
    assert parse_time("2026-12-03T10:00", now) == datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    assert parse_time("2026-12-03T10:00:00Z", now).tzinfo is not None
    with pytest.raises(AuditError):
        parse_time("yesterday", now)


def test_text_format_one_line_each_leading_fields_first(state):
    status, out, _ = run("--state-dir", str(state), "--user", "alice")
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 3
    assert "login" in lines[0] and "user=alice" in lines[0] and "method=password" in lines[0]
    assert 'command="uname -a"' in lines[1]
    assert lines[0].index("user=") < lines[0].index("source=") < lines[0].index("method=")


def test_hostile_records_are_skipped_or_escaped(tmp_path):
    write(
        tmp_path,
        record(LOGIN_FAILED, 1, user="\x1b[2Jevil\u202e", method="password"),
        raw=b"not json\n[1]\n" + b'{"event": "login"}\n',
    )
    status, out, err = run("--state-dir", str(tmp_path))
    assert status == 0
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b[2Jevil" in out
    assert err.count("note:") == 3


def test_errors_are_one_line_and_status_1(tmp_path):
    status, _, err = run("--state-dir", str(tmp_path / "nope"))
    assert status == 1 and "does not exist" in err
    status, _, err = run("--state-dir", str(tmp_path), "--event", "logn")
    assert status == 1 and "unknown event type 'logn'" in err
    status, _, err = run("--state-dir", str(tmp_path), "--since", "last tuesday")
    assert status == 1 and "neither an ISO time" in err


def test_no_records_yet(tmp_path):
    status, out, _ = run("--state-dir", str(tmp_path))
    assert status == 0 and out.startswith("no audit records match")
    assert run("--state-dir", str(tmp_path), "--format", "json")[1] == "[]\n"


def test_reads_what_the_trail_writes(tmp_path):
    from twisted.logger import Logger

    from gateway.events import emit

    log = Logger(observer=AuditTrail(tmp_path, AuditConfig()))
    emit(log, LOGIN, "x", user="alice", method="password", source="::1", protocol="ssh1")
    _, out, _ = run("--state-dir", str(tmp_path), "--format", "json", "--since", "1m")
    [only] = json.loads(out)
    assert only["user"] == "alice" and only["protocol"] == "ssh1"
