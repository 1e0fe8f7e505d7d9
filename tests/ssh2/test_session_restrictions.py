"""The login's SessionRestrictions (from its key's authorized_keys options) where SSH-2
requests arrive: a refused pty-req is a want-reply failure and the session goes on
without a pty; agent and X11 requests and port forwarding are refused, each with a log
line giving the reason."""

from __future__ import annotations

import struct

import pytest
from twisted.conch.ssh import common, connection
from twisted.logger import globalLogPublisher

from protocols.session import SessionRestrictions
from tests.support.gateway_helpers import LogCapture
from tests.support.ssh2.harness import ClientSession, FakePortal, wire

NO_PTY = SessionRestrictions(pty=False, origin="keys:4")
RESTRICTED = SessionRestrictions(
    pty=False, port_forwarding=False, agent_forwarding=False, x11_forwarding=False, origin="keys:7"
)


@pytest.fixture
def logs():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


def pty_req() -> bytes:
    return common.NS(b"xterm") + struct.pack(">4L", 80, 24, 0, 0) + common.NS(b"")


def test_pty_refused_and_the_session_goes_on_without_one(logs):
    w = wire(portal=FakePortal(restrictions=NO_PTY))
    session = w.open_session()
    session.request(b"pty-req", pty_req())
    session.request(b"exec", common.NS(b"tty"))
    w.flush()
    assert session.replies == [False, True]
    target = w.portal.users["alice"].targets[-1]
    assert target.request.pty is None and target.request.command == b"tty"
    assert "refused pty: pty is not permitted by the key's options (keys:4)" in logs.text()


def test_pty_granted_without_restrictions():
    w = wire()
    session = w.open_session()
    session.request(b"pty-req", pty_req())
    session.request(b"shell")
    w.flush()
    assert session.replies == [True, True]
    assert w.portal.users["alice"].targets[-1].request.pty is not None


def test_agent_and_x11_requests_refused_with_the_reason(logs):
    w = wire(portal=FakePortal(restrictions=RESTRICTED))
    session = w.open_session()
    x11 = b"\x00" + common.NS(b"MIT-MAGIC-COOKIE-1") + common.NS(b"00ff") + struct.pack(">L", 0)
    session.request(b"x11-req", x11)
    session.request(b"auth-agent-req@openssh.com")
    w.flush()
    assert session.replies == [False, False]
    assert "refused x11-forwarding: x11-forwarding is not permitted" in logs.text()
    assert "refused agent-forwarding: agent-forwarding is not permitted" in logs.text()


def test_port_forwarding_refused_in_one_place(logs):
    w = wire(portal=FakePortal(restrictions=RESTRICTED))
    replies = []
    d = w.conn.sendGlobalRequest(
        b"tcpip-forward", common.NS(b"127.0.0.1") + struct.pack(">L", 8080), wantReply=True
    )
    d.addCallbacks(lambda _: replies.append(True), lambda _: replies.append(False))

    failed = []

    class Forward(ClientSession):
        name = b"direct-tcpip"

        def openFailed(self, reason):
            failed.append(reason)

    w.conn.openChannel(Forward(conn=w.conn))
    w.flush()
    assert replies == [False]
    assert [f.data for f in failed] == [connection.OPEN_ADMINISTRATIVELY_PROHIBITED]
    assert logs.text().count("port-forwarding is not permitted by the key's options (keys:7)") == 2
    # The connection is fine: a session still opens.
    assert w.open_session().opened


def test_port_forwarding_refused_without_restrictions_too(logs):
    w = wire()
    d = w.conn.sendGlobalRequest(
        b"tcpip-forward", common.NS(b"127.0.0.1") + struct.pack(">L", 8080), wantReply=True
    )
    replies = []
    d.addCallbacks(lambda _: replies.append(True), lambda _: replies.append(False))
    w.flush()
    assert replies == [False]
    assert "tcpip-forward is not offered over SSH-2" in logs.text()
