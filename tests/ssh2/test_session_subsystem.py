"""The SSH-2 ``subsystem`` request on a session channel, in memory: a known subsystem
(sftp) starts the session with the name in the request and no command, an unknown one is
refused at the request with a log line, with or without want-reply, and the flow record
names the subsystem asked for."""

from __future__ import annotations

import pytest
from twisted.conch.ssh import common
from twisted.logger import formatEvent, globalLogPublisher

from protocols.flow import FlowRecorder
from tests.support.ssh2.harness import exit_info, wire


def logged_in(**kw):
    w = wire(password=b"secret", **kw)
    assert w.conn.started
    return w


@pytest.fixture
def logs():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: "\n".join(formatEvent(e) for e in events)
    globalLogPublisher.removeObserver(events.append)


def test_sftp_subsystem_starts_the_session_with_the_name_and_no_command():
    w = logged_in()
    session = w.open_session()
    session.request(b"subsystem", common.NS(b"sftp"))
    w.flush()
    assert session.replies == [True]
    target = w.portal.users["alice"].targets[-1]
    assert target.request.subsystem == "sftp"
    assert target.request.command is None
    # The channel then carries bytes both ways like any session.
    session.write(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03")  # SSH_FXP_INIT v3
    w.flush()
    assert bytes(target.stdin) == b"\x00\x00\x00\x05\x01\x00\x00\x00\x03"
    target.client.write_stdout(b"\x00\x00\x00\x05\x02\x00\x00\x00\x03")
    target.client.exited(exit_info(0))
    w.flush()
    assert bytes(session.out) == b"\x00\x00\x00\x05\x02\x00\x00\x00\x03"
    assert session.exit_status == 0


def test_sftp_subsystem_without_want_reply_starts_too():
    w = logged_in()
    session = w.open_session()
    session.request(b"subsystem", common.NS(b"sftp"), want_reply=False)
    w.flush()
    assert session.replies == []
    target = w.portal.users["alice"].targets[-1]
    assert target.request.subsystem == "sftp"


def test_unknown_subsystem_is_refused_at_the_request_with_a_log_line(logs):
    w = logged_in()
    session = w.open_session()
    session.request(b"subsystem", common.NS(b"netconf\x1b[2J"))
    w.flush()
    assert session.replies == [False]
    assert w.portal.users["alice"].targets == []
    assert "refused subsystem 'netconf?[2J': unknown subsystem" in logs()
    # The channel stays usable: the client may still ask for something else.
    session.request(b"subsystem", common.NS(b"sftp"))
    w.flush()
    assert session.replies == [False, True]


def test_unknown_subsystem_without_want_reply_starts_nothing():
    w = logged_in()
    session = w.open_session()
    session.request(b"subsystem", common.NS(b"x11"), want_reply=False)
    w.flush()
    assert session.replies == []
    assert w.portal.users["alice"].targets == []
    assert not session.is_closed


def test_subsystem_after_exec_and_exec_after_subsystem_are_refused():
    w = logged_in()
    session = w.open_session()
    session.request(b"subsystem", common.NS(b"sftp"))
    session.request(b"exec", common.NS(b"id"))
    session.request(b"subsystem", common.NS(b"sftp"))
    w.flush()
    assert session.replies == [True, False, False]
    assert len(w.portal.users["alice"].targets) == 1


def test_malformed_subsystem_request_is_refused_not_fatal():
    w = logged_in()
    session = w.open_session()
    session.request(b"subsystem", b"\x00\x00\x10\x00sftp")  # length beyond the packet
    session.request(b"subsystem", common.NS(b"s" * 65))  # longer than any name we know
    w.flush()
    assert session.replies == [False, False]
    assert w.client.disconnect is None
    assert w.portal.users["alice"].targets == []


def test_the_flow_record_names_the_subsystem():
    w = logged_in()
    w.record.flow = flow = FlowRecorder("client", "127.0.0.1:50000", "ssh2")
    try:
        session = w.open_session()
        session.request(b"subsystem", common.NS(b"nope"))
        session.request(b"subsystem", common.NS(b"sftp"))
        w.flush()
    finally:
        flow.close()
    assert [(r["name"], r["result"]) for r in flow.requests] == [
        ("subsystem nope", "failure"),
        ("subsystem sftp", "success"),
    ]
