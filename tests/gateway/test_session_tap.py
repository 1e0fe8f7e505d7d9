"""Session taps in memory: what observers see of a session routed by the Router, the
operator's terminate, and that a broken observer never breaks the session."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from gateway import audit, live_sessions, metrics
from gateway.config import parse_config
from gateway.routing import Router
from gateway.session_tap import TERMINATED_STATUS, EndObserver, ISessionObserver, TappedTarget
from gateway.store import recordings as store_recordings
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


def router(*taps):
    config = parse_config(CONFIG)
    targets = {name: FakeTarget(name, takes_password=name != "local") for name in config.targets}
    targets["local"] = FakeTarget("local", takes_password=False)
    routed = Router(config, targets, Clock())
    routed.session_taps = list(taps)
    return routed, targets


PTY = PtyRequest("xterm", WindowSize(24, 80))


def test_observers_see_output_input_resize_and_the_end():
    tap = RecordingTap()
    routed, targets = router(tap)
    client = FakeSessionClient()
    session = routed.open_session("alice", SessionRequest(pty=PTY), client, target="sw1")
    [opened] = targets["sw1"].opened
    opened.client.write_stdout(b"hello")
    opened.client.write_stderr(b"oops")
    session.write_stdin(b"ls\r")
    session.resize(WindowSize(50, 132))
    opened.client.exited(ExitInfo(status=3))
    [live] = tap.sessions
    assert live.info.username == "alice" and live.info.target == "sw1"
    assert live.info.target_protocol == "ssh1" and live.info.pty == PTY
    assert tap.observers[0].calls == [
        ("output", b"hello", False),
        ("output", b"oops", True),
        ("input", b"ls\r"),
        ("resized", WindowSize(50, 132)),
        ("ended", ExitInfo(status=3)),
    ]
    assert (live.bytes_to_client, live.bytes_from_client) == (9, 3)
    # the session itself is untouched
    assert client.out == b"hello" and client.err == b"oops" and client.exit == ExitInfo(status=3)
    assert opened.stdin == b"ls\r" and WindowSize(50, 132) in opened.sizes


def test_the_info_names_the_front_protocol_source_and_command():
    tap = RecordingTap()
    routed, _ = router(tap)
    flow = FlowRecorder("server", "192.0.2.7:40000", "ssh2")
    client = FakeSessionClient()
    client.flow_id = flow.id
    routed.open_session("alice", SessionRequest(command=b"show run \xff"), client, target="sw1")
    info = tap.sessions[0].info
    assert (info.front_protocol, info.source, info.flow_id) == ("ssh2", "192.0.2.7:40000", flow.id)
    assert info.command_text == "show run \\xff" and info.pty is None


def test_a_client_that_leaves_first_ends_the_session_with_none():
    tap = RecordingTap()
    routed, _ = router(tap)
    session = routed.open_session("alice", SessionRequest(), FakeSessionClient(), target="sw1")
    session.close()
    session.close()
    assert tap.observers[0].calls == [("ended", None)]


def test_terminate_tells_the_client_closes_the_target_and_ignores_the_late_exit():
    tap = RecordingTap()
    routed, targets = router(tap)
    client = FakeSessionClient()
    routed.open_session("alice", SessionRequest(pty=PTY), client, target="sw1")
    [opened] = targets["sw1"].opened
    [live] = tap.sessions
    assert live.terminate("session ended by admin", by="admin")
    assert b"sshgateway: session ended by admin" in client.err
    assert client.exit.status == TERMINATED_STATUS and opened.closed
    assert live.terminated_by == "admin"
    opened.client.exited(ExitInfo(status=0))  # the target's own exit after its close
    opened.client.write_stdout(b"late")
    assert client.exit.status == TERMINATED_STATUS and b"late" not in client.out
    # the recording shows the message too
    assert [c[0] for c in tap.observers[0].calls] == ["output", "ended"]
    assert not live.terminate("again")


def test_a_failing_observer_is_detached_and_the_session_goes_on():
    broken, good = RecordingTap(fail_on="output"), RecordingTap()
    routed, targets = router(broken, good)
    client = FakeSessionClient()
    routed.open_session("alice", SessionRequest(), client, target="sw1")
    [opened] = targets["sw1"].opened
    opened.client.write_stdout(b"one")
    opened.client.write_stdout(b"two")
    assert client.out == b"onetwo"
    assert broken.observers[0].calls == [("output", b"one", False)]
    assert [c[1] for c in good.observers[0].calls] == [b"one", b"two"]


def test_with_no_observer_the_session_is_not_wrapped():
    routed, targets = router(RecordingTap(watch=False))
    session = routed.open_session("alice", SessionRequest(), FakeSessionClient(), target="sw1")
    assert not isinstance(session, TappedTarget)
    assert session is targets["sw1"].opened[0]


def test_local_and_subsystem_sessions_are_tapped_too():
    tap = RecordingTap()
    routed, _ = router(tap)
    routed.open_session("erin", SessionRequest(command=b"id"), FakeSessionClient())
    assert tap.sessions[0].info.target == "local"
    assert tap.sessions[0].info.target_protocol == "local"


def test_a_target_that_raises_at_start_still_ends_the_session_for_the_observers():
    # The front ends catch it and end the client themselves; the observers (a gauge of
    # open sessions, the live-session list) must hear of the end too.
    tap = RecordingTap()
    routed, targets = router(tap)

    def broken(*args, **kwargs):
        raise RuntimeError("target bug")

    targets["sw1"].open_session = broken
    with pytest.raises(RuntimeError, match="target bug"):  # the front end reports it
        routed.open_session("alice", SessionRequest(), FakeSessionClient(), target="sw1")
    assert tap.observers[0].calls == [("ended", None)] and tap.sessions[0].ended


class _EndOnly(EndObserver):
    """An end-only observer that would notice any per-packet call reaching it."""

    def __init__(self, fail_at_end: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail_at_end = fail_at_end

    def output(self, data: bytes, stderr: bool) -> None:
        self.calls.append(("output", data, stderr))

    def input(self, data: bytes) -> None:
        self.calls.append(("input", data))

    def resized(self, size: WindowSize) -> None:
        self.calls.append(("resized", size))

    def ended(self, info: ExitInfo | None) -> None:
        self.calls.append(("ended", info))
        if self.fail_at_end:
            raise RuntimeError("observer bug at the end")


class _EndOnlyTap:
    def __init__(self, observer: EndObserver) -> None:
        self.observer = observer

    def session_started(self, session):
        return self.observer


def test_an_end_only_observer_is_not_called_per_packet_but_hears_the_end():
    end_only, watching = _EndOnly(), RecordingTap()
    routed, targets = router(_EndOnlyTap(end_only), watching)
    client = FakeSessionClient()
    session = routed.open_session("alice", SessionRequest(pty=PTY), client, target="sw1")
    [opened] = targets["sw1"].opened
    opened.client.write_stdout(b"out")
    opened.client.write_stderr(b"err")
    session.write_stdin(b"in")
    session.resize(WindowSize(50, 132))
    opened.client.exited(ExitInfo(status=0))
    assert end_only.calls == [("ended", ExitInfo(status=0))]
    assert [c[0] for c in watching.observers[0].calls] == [
        "output",
        "output",
        "input",
        "resized",
        "ended",
    ]
    assert client.out == b"out" and client.err == b"err" and opened.stdin == b"in"


def test_a_session_with_only_end_observers_still_counts_its_bytes():
    end_only = _EndOnly()
    routed, targets = router(_EndOnlyTap(end_only))
    session = routed.open_session("alice", SessionRequest(), FakeSessionClient(), target="sw1")
    [opened] = targets["sw1"].opened
    opened.client.write_stdout(b"12345")
    session.write_stdin(b"12")
    session.close()
    assert end_only.calls == [("ended", None)]
    assert (session._session.bytes_to_client, session._session.bytes_from_client) == (5, 2)


def test_an_observer_that_fails_on_data_is_detached_from_the_end_too():
    broken, good = RecordingTap(fail_on="output"), RecordingTap()
    routed, targets = router(broken, good)
    routed.open_session("alice", SessionRequest(), FakeSessionClient(), target="sw1")
    [opened] = targets["sw1"].opened
    opened.client.write_stdout(b"one")
    opened.client.exited(ExitInfo(status=0))
    assert broken.observers[0].calls == [("output", b"one", False)]
    assert good.observers[0].calls[-1] == ("ended", ExitInfo(status=0))


def test_an_end_observer_that_fails_at_the_end_leaves_the_others_their_end():
    broken, good = _EndOnly(fail_at_end=True), RecordingTap()
    routed, targets = router(_EndOnlyTap(broken), good)
    client = FakeSessionClient()
    routed.open_session("alice", SessionRequest(), client, target="sw1")
    [opened] = targets["sw1"].opened
    opened.client.exited(ExitInfo(status=4))
    assert broken.calls == [("ended", ExitInfo(status=4))]
    assert good.observers[0].calls == [("ended", ExitInfo(status=4))]
    assert client.exit == ExitInfo(status=4)


@pytest.mark.parametrize(
    "observer",
    [
        audit._SessionEnd(None),
        metrics._SessionEnd(None, None, ("ssh2", "ssh1")),
        live_sessions._Registered(None, None),
        store_recordings._Indexed(None, None),
    ],
    ids=["audit", "metrics", "live_sessions", "store_recordings"],
)
def test_the_end_only_observers_of_the_tree_are_session_observers_left_out_of_the_data(observer):
    assert verifyObject(ISessionObserver, observer)
    assert isinstance(observer, EndObserver) and observer.wants_data is False
