"""The shared upstream bridge, in memory with a fake connector and a Clock."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.targets.bridge import (
    ANSWER_TIMEOUT,
    FAILURE_STATUS,
    MAX_PENDING_INPUT,
    BridgeSession,
    UpstreamFailure,
)
from protocols.session import ExitInfo, PtyRequest, SessionRequest, WindowSize
from tests.support.doubles import FakeProducer, FakeSessionClient, FakeUpstream


def bridge(idle=None, timeout=10.0, request=None):
    clock, client, pending = Clock(), FakeSessionClient(), defer.Deferred()
    sinks = []

    def connect(request, sink):
        sinks.append(sink)
        return pending

    request = request or SessionRequest(command=b"x")
    session = BridgeSession(clock, client, request, connect,
                            username="alice", target="dev1", connect_timeout=timeout,
                            idle_timeout=idle)
    return session, client, pending, sinks[0], clock


def test_input_held_until_open_then_flushed_in_order():
    session, client, pending, sink, _ = bridge()
    session.write_stdin(b"abc")
    session.resize(WindowSize(30, 100))
    session.close_stdin()
    upstream = FakeUpstream()
    pending.callback(upstream)
    assert upstream.written == b"abc" and upstream.eof and upstream.sizes == [WindowSize(30, 100)]
    sink.stdout(b"out")
    sink.stderr(b"err")
    sink.exited(ExitInfo(status=7))
    assert (client.out, client.err, client.eof, client.exit) == (b"out", b"err", True, ExitInfo(7))
    assert upstream.closed


def test_pending_input_is_bounded_by_pausing_the_front_end():
    session, client, pending, sink, _ = bridge()
    producer = FakeProducer()
    session.registerProducer(producer, True)
    session.write_stdin(b"x" * (MAX_PENDING_INPUT + 1))
    assert producer.paused
    pending.callback(FakeUpstream())
    assert not producer.paused


def test_connect_failure_is_one_line_and_status_255():
    session, client, pending, sink, _ = bridge()
    pending.errback(UpstreamFailure("connection refused"))
    assert client.err == b"sshgateway: dev1: connection refused\r\n"
    assert client.exit == ExitInfo(status=FAILURE_STATUS) and client.eof


def test_connect_timeout_cancels_and_reports():
    session, client, pending, sink, clock = bridge(timeout=5)
    clock.advance(5)
    assert b"no session within 5 s" in client.err
    assert client.exit.status == FAILURE_STATUS
    assert pending.called  # cancelled


def test_a_slow_login_shows_progress_then_the_session():
    # An HP iLO takes up to 90 s to log in: the user sees the gateway waiting.
    session, client, pending, sink, clock = bridge(timeout=90)
    clock.advance(4.9)
    assert client.err == b""
    clock.advance(0.1)
    assert client.err == b"sshgateway: waiting for dev1 (5 s; gives up after 90 s)\r\n"
    clock.advance(15)
    assert client.err.endswith(b"sshgateway: waiting for dev1 (20 s; gives up after 90 s)\r\n")
    clock.pump([1] * 45)
    assert client.err.count(b"waiting for dev1") == 5  # 5, 20, 35, 50, 65 s
    pending.callback(FakeUpstream())
    clock.advance(30)
    assert client.err.count(b"waiting for dev1") == 5 and client.exit is None
    assert not clock.getDelayedCalls()  # the 90 s timeout went with the open session


def test_progress_stops_at_the_timeout_and_quick_logins_see_none():
    session, client, pending, sink, clock = bridge(timeout=30)
    clock.pump([1] * 30)
    lines = bytes(client.err).decode().splitlines()
    assert lines == [
        "sshgateway: waiting for dev1 (5 s; gives up after 30 s)",
        "sshgateway: waiting for dev1 (20 s; gives up after 30 s)",
        "sshgateway: dev1: no session within 30 s",
    ]
    assert not clock.getDelayedCalls()
    session, client, pending, sink, clock = bridge(timeout=90)
    clock.advance(4)
    pending.callback(FakeUpstream())
    clock.pump([1] * 100)
    assert client.err == b""


def test_a_device_question_is_put_to_the_user_and_the_connect_timeout_waits():
    pty = PtyRequest(term="vt100", size=WindowSize(24, 80))
    session, client, pending, sink, clock = bridge(timeout=10, request=SessionRequest(pty=pty))
    clock.advance(4)
    session.write_stdin(b"12")  # typed ahead, before the question
    answers = []
    sink.ask("Code: ", False).addBoth(answers.append)
    assert client.err == b"Code: " and answers == []
    clock.advance(100)  # the user takes their time: no timeout, no progress lines
    assert client.exit is None and client.err == b"Code: "
    session.write_stdin(b"34\rdate\r")
    assert answers == ["1234"] and client.err == b"Code: \r\n"
    clock.advance(5.9)
    assert client.exit is None
    clock.advance(0.1)  # the 6 s left of the connect timeout
    assert client.err.endswith(b"no session within 10 s\r\n")


def test_a_device_question_after_the_answer_keeps_the_rest_for_the_session():
    pty = PtyRequest(term="vt100", size=WindowSize(24, 80))
    session, client, pending, sink, clock = bridge(request=SessionRequest(pty=pty))
    answers = []
    sink.ask("Code: ", True).addBoth(answers.append)
    session.write_stdin(b"7\rls\r")
    upstream = FakeUpstream()
    pending.callback(upstream)
    assert answers == ["7"] and upstream.written == b"ls\r"


def test_a_device_question_without_a_pty_or_unanswered_fails():
    session, client, pending, sink, clock = bridge()
    failures = []
    sink.ask("Code: ", False).addErrback(failures.append)
    assert "connect with a terminal (ssh -t)" in failures[0].getErrorMessage()
    assert client.err == b""
    pty = PtyRequest(term="vt100", size=WindowSize(24, 80))
    session, client, pending, sink, clock = bridge(request=SessionRequest(pty=pty))
    sink.ask("Code: ", False).addErrback(failures.append)
    clock.advance(ANSWER_TIMEOUT)
    assert failures[1].getErrorMessage() == f"no answer within {ANSWER_TIMEOUT:g} s"
    sink.ask("Code: ", False).addErrback(failures.append)
    session.close()  # the client went away meanwhile
    assert failures[2].getErrorMessage() == "session closed"


def test_output_pause_reaches_upstream_even_before_open():
    session, client, pending, sink, _ = bridge()
    client.producer.pauseProducing()
    upstream = FakeUpstream()
    pending.callback(upstream)
    assert upstream.paused
    client.producer.resumeProducing()
    assert not upstream.paused


def paused_front_end():
    """An open bridge whose upstream has asked to pause the front end's input: the
    session, the upstream sink and the front end's producer."""
    session, client, pending, sink, _ = bridge()
    producer = FakeProducer()
    session.registerProducer(producer, True)
    pending.callback(FakeUpstream())
    sink.pause_input()
    assert producer.paused
    return session, sink, producer


def test_upstream_back_pressure_pauses_front_end():
    _, sink, producer = paused_front_end()
    sink.resume_input()
    assert not producer.paused


def test_idle_timeout():
    session, client, pending, sink, clock = bridge(idle=30)
    upstream = FakeUpstream()
    pending.callback(upstream)
    clock.advance(20)
    sink.stdout(b"x")
    clock.advance(20)
    assert client.exit is None
    clock.advance(11)
    assert b"idle for 30 s" in client.err and upstream.closed


def test_reset_mid_session_and_calls_after_end_are_ignored():
    session, client, pending, sink, _ = bridge()
    pending.callback(FakeUpstream())
    sink.failed("connection reset by upstream")
    sink.stdout(b"late")
    sink.exited(ExitInfo(status=0))
    assert client.out == b"" and client.exit.status == FAILURE_STATUS


def test_client_close_tears_down_quietly():
    session, client, pending, sink, _ = bridge()
    upstream = FakeUpstream()
    pending.callback(upstream)
    session.close()
    assert upstream.closed and client.exit is None


def test_input_resumed_when_the_session_ends_while_paused():
    session, sink, producer = paused_front_end()
    sink.exited(ExitInfo(status=0))
    assert not producer.paused  # the front end must read on to see the exit confirmation
    session.write_stdin(b"late input is dropped")
