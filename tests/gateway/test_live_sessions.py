"""The live-session registry in memory: sessions routed by the Router appear in its list
with what ``sessions list`` shows, leave it when they end, and ``kill`` ends one (client
told and closed, target closed) with a SESSION_KILLED event naming the operator."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway import events
from gateway.config import parse_config
from gateway.live_sessions import (
    DEFAULT_KILL_MESSAGE,
    MAX_MESSAGE_CHARS,
    ISessionRegistry,
    KillResult,
    LiveSessions,
    Operator,
    SessionSummary,
    clean_message,
)
from gateway.routing import Router
from gateway.session_tap import TERMINATED_STATUS, ISessionTap
from protocols.flow import FlowRecorder
from protocols.session import ExitInfo, PtyRequest, SessionRequest, WindowSize
from tests.support.doubles import FakeSessionClient, FakeTarget, RecordingTap
from tests.support.gateway_helpers import LOCAL_ACCESS, ROUTED_TARGETS, fast_hash

CONFIG = (
    f"""
[users.alice]
password = "{fast_hash("pw")}"
targets = ["sw1"]

[users.erin]
password = "{fast_hash("pw")}"
{LOCAL_ACCESS}"""
    + ROUTED_TARGETS
)
PTY = PtyRequest("xterm", WindowSize(24, 80))
ROOT = Operator("root", 0, 4242)


@implementer(ISessionTap)
class RecorderTap(RecordingTap):
    """A RecordingTap that, like the recorder's tap (first in line), names a recording."""

    def session_started(self, session):
        session.recording = f"/state/recordings/{session.info.session_id}.cast"
        return super().session_started(session)


@pytest.fixture
def logged():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def router(*taps):
    config = parse_config(CONFIG)
    targets = {name: FakeTarget(name, takes_password=name != "local") for name in config.targets}
    targets["local"] = FakeTarget("local", takes_password=False)
    routed = Router(config, targets, Clock())
    routed.session_taps = list(taps)
    return routed, targets


def listed(registry: LiveSessions) -> list[SessionSummary]:
    result = []
    registry.list().addCallback(result.extend)
    return result


def killed(registry: LiveSessions, session_id: str, message: str | None = None) -> KillResult:
    [result] = _results(registry.kill(session_id, ROOT, message))
    return result


def _results(d):
    out = []
    d.addCallback(out.append)
    return out


def test_the_registry_is_a_session_tap_behind_the_registry_interface():
    registry = LiveSessions()
    assert verifyObject(ISessionTap, registry) and verifyObject(ISessionRegistry, registry)


def test_an_open_session_is_listed_with_what_an_operator_needs():
    recorder, registry = RecorderTap(), LiveSessions()
    routed, targets = router(recorder, registry)
    flow = FlowRecorder("server", "192.0.2.7:40000", "ssh1")
    client = FakeSessionClient()
    client.flow_id = flow.id
    session = routed.open_session("alice", SessionRequest(pty=PTY), client, target="sw1")
    [opened] = targets["sw1"].opened
    opened.client.write_stdout(b"switch> ")
    session.write_stdin(b"show ver\r")
    [summary] = listed(registry)
    assert (summary.user, summary.source, summary.front_protocol) == (
        "alice", "192.0.2.7:40000", "ssh1"
    )  # fmt: skip
    assert (summary.target, summary.target_protocol, summary.pty) == ("sw1", "ssh1", True)
    assert (summary.bytes_in, summary.bytes_out) == (9, 8)
    assert summary.recording == f"/state/recordings/{summary.id}.cast"
    assert summary.id == recorder.sessions[0].info.session_id and summary.started > 0
    assert SessionSummary.from_json(summary.to_json()) == summary


def test_a_session_leaves_the_list_when_it_ends_either_way():
    registry = LiveSessions()
    routed, targets = router(registry)
    first = routed.open_session("alice", SessionRequest(), FakeSessionClient(), target="sw1")
    routed.open_session("erin", SessionRequest(command=b"id"), FakeSessionClient())
    assert [(s.user, s.target, s.command) for s in listed(registry)] == [
        ("alice", "sw1", None),
        ("erin", "local", "id"),
    ]
    first.close()  # the client left
    targets["local"].opened[0].client.exited(ExitInfo(status=0))  # the program ended
    assert listed(registry) == [] and registry.sessions == {}


def test_kill_tells_the_client_closes_the_target_and_records_who(logged):
    tap, registry = RecordingTap(), LiveSessions()
    routed, targets = router(tap, registry)
    client = FakeSessionClient()
    routed.open_session("alice", SessionRequest(pty=PTY), client, target="sw1")
    [opened] = targets["sw1"].opened
    [summary] = listed(registry)
    result = killed(registry, summary.id)
    assert result == KillResult(summary, killed=True)
    assert f"sshgateway: {DEFAULT_KILL_MESSAGE}".encode() in client.err
    assert client.exit.status == TERMINATED_STATUS and opened.closed
    assert tap.sessions[0].terminated_by == "root"
    assert tap.observers[0].calls[-1] == ("ended", ExitInfo(TERMINATED_STATUS, message=DEFAULT_KILL_MESSAGE))
    assert listed(registry) == []
    [event] = [e for e in logged if events.event_of(e) == events.SESSION_KILLED]
    assert (event["session"], event["user"], event["target"]) == (summary.id, "alice", "sw1")
    assert (event["by"], event["by_uid"], event["by_pid"]) == ("root", 0, 4242)
    assert event["client_message"] == DEFAULT_KILL_MESSAGE
    assert formatEvent(event) == (
        f"session {summary.id} of alice to sw1 ended by root (uid 0, pid 4242): "
        f"{DEFAULT_KILL_MESSAGE}"
    )


def test_kill_with_a_message_of_the_operators():
    registry = LiveSessions()
    routed, _ = router(registry)
    client = FakeSessionClient()
    routed.open_session("erin", SessionRequest(pty=PTY), client)
    [summary] = listed(registry)
    assert killed(registry, summary.id, "maintenance at 18:00, back soon").killed
    assert b"\r\nsshgateway: maintenance at 18:00, back soon\r\n" in client.err


def test_kill_of_an_unknown_or_ended_session_does_nothing(logged):
    registry = LiveSessions()
    routed, _ = router(registry)
    routed.open_session("alice", SessionRequest(), FakeSessionClient(), target="sw1")
    assert killed(registry, "no-such-id") == KillResult(None, killed=False)
    [live] = registry.sessions.values()
    live.ended = True  # ended while the request was on its way
    assert killed(registry, live.info.session_id).killed is False
    assert not [e for e in logged if events.event_of(e) == events.SESSION_KILLED]


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (None, DEFAULT_KILL_MESSAGE),
        ("", DEFAULT_KILL_MESSAGE),
        ("\x1b[2J\x1b]0;pwned\x07", "[2J ]0;pwned"),  # no escape reaches the user's terminal
        ("line one\r\nline two\ttabbed", "line one line two tabbed"),
        ("\x00\x1b\x7f", DEFAULT_KILL_MESSAGE),
        ("ünïcode stays", "ünïcode stays"),
        ("x" * 1000, "x" * MAX_MESSAGE_CHARS),
    ],
)
def test_an_operators_message_is_one_short_printable_line(message, shown):
    assert clean_message(message) == shown
