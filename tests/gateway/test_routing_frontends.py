"""user+target through the real front ends, in memory: the SSH-2 front end (Conch's client
over iosim) and the SSH-1 front end (the mini client over a StringTransport), with the real
portal and Router in front of fake targets."""

from __future__ import annotations

import pytest
from twisted.conch.ssh import common
from twisted.internet.task import Clock

from gateway.auth import build_portal, run_inline
from gateway.config import parse_config
from gateway.routing import Router
from protocols.auth import AuthLimits
from protocols.session import ExitInfo
from protocols.ssh1 import messages as m
from protocols.ssh1.wire import Reader
from tests.support.doubles import fake_targets
from tests.support.gateway_helpers import OWN_ACCOUNT, ROUTED_TARGETS, fast_hash
from tests.support.ssh1.minclient import string
from tests.support.ssh1.server_rig import SSH1ServerRig
from tests.support.ssh2.harness import wire

CONFIG = (
    f"""
[users.alice]
password = "{fast_hash("alice-pw")}"
targets = ["local", "sw1", "tn"]
os_user = "{OWN_ACCOUNT}"
"""
    + ROUTED_TARGETS
)


class Gateway:
    def __init__(self):
        self.config = parse_config(CONFIG)
        self.clock = Clock()
        self.targets = fake_targets(self.config.targets)
        self.router = Router(self.config, self.targets, self.clock)
        self.portal = build_portal(self.config, self.router, blocking=run_inline)

    def opened(self):
        return [s for t in self.targets.values() for s in t.opened]


@pytest.fixture
def gw():
    return Gateway()


# --- SSH-2 ---------------------------------------------------------------------------------


def ssh2_exec(gw, user, command=b"show version"):
    w = wire(portal=gw.portal, user=user, password=b"alice-pw", limits=AuthLimits(failure_delay=0))
    assert w.conn.started
    session = w.open_session()
    session.request(b"exec", common.NS(command))
    w.flush()
    return w, session


def test_ssh2_login_as_user_plus_target(gw):
    w, session = ssh2_exec(gw, b"alice+sw1")
    [opened] = gw.opened()
    assert (opened.target, opened.username, opened.kwargs) == ("sw1", "alice", {})
    assert opened.request.command == b"show version"
    opened.client.write_stdout(b"IOS 12.1\n")
    opened.client.exited(ExitInfo(status=0))
    w.flush()
    assert session.out == b"IOS 12.1\n" and session.exit_status == 0


def test_ssh2_pass_through(gw):
    ssh2_exec(gw, b"alice+tn")
    [opened] = gw.opened()
    assert opened.kwargs == {"password": "alice-pw"}


@pytest.mark.parametrize("target", [b"secret", b"ghost"])
def test_ssh2_refusal(gw, target):
    w, session = ssh2_exec(gw, b"alice+" + target)
    assert session.replies == [True]  # the login and the request both succeeded
    gw.clock.advance(0)
    w.flush()
    assert session.err == b"sshgateway: target '" + target + b"' is not available to alice\r\n"
    assert session.exit_status == 255 and session.is_closed and not gw.opened()


def test_ssh2_menu(gw):
    w = wire(portal=gw.portal, user=b"alice", password=b"alice-pw")
    session = w.open_session()
    pty = common.NS(b"xterm") + b"\0\0\0\x50\0\0\0\x18\0\0\0\0\0\0\0\0" + common.NS(b"")
    session.request(b"pty-req", pty)
    session.request(b"shell")
    w.flush()
    gw.clock.advance(0)
    w.flush()
    assert b"  2) sw1\r\n" in session.out
    w.conn.sendData(session, b"2\r")
    w.flush()
    [opened] = gw.opened()
    assert opened.target == "sw1" and opened.request.pty.size.cols == 80
    w.conn.sendData(session, b"ls\r")
    w.flush()
    assert opened.stdin == b"ls\r"


# --- SSH-1 ---------------------------------------------------------------------------------


class SSH1(SSH1ServerRig):
    def __init__(self, gw):
        super().__init__(gw.portal, limits=AuthLimits(failure_delay=0))

    def login(self, user, password=b"alice-pw"):
        return super().login(user, password)


def test_ssh1_login_as_user_plus_target(gw):
    h = SSH1(gw)
    assert h.login(b"alice+sw1") == [(m.SSH_SMSG_SUCCESS, b"")]
    h.send(m.SSH_CMSG_EXEC_CMD, string(b"show run"))
    [opened] = gw.opened()
    assert (opened.target, opened.username, opened.request.command) == ("sw1", "alice", b"show run")


def test_ssh1_refusal_and_wrong_password(gw):
    h = SSH1(gw)
    assert h.login(b"alice+secret", b"wrong") == []
    h.clock.advance(0)  # failures answer after the (here zero) failure delay
    assert h.received() == [(m.SSH_SMSG_FAILURE, b"")]
    assert h.send(m.SSH_CMSG_AUTH_PASSWORD, string(b"alice-pw")) == [(m.SSH_SMSG_SUCCESS, b"")]
    h.send(m.SSH_CMSG_EXEC_CMD, string(b"id"))
    gw.clock.advance(0)
    replies = h.received()
    stderr = b"".join(Reader(p).string() for t, p in replies if t == m.SSH_SMSG_STDERR_DATA)
    assert stderr == b"sshgateway: target 'secret' is not available to alice\r\n"
    assert replies[-1] == (m.SSH_SMSG_EXITSTATUS, (255).to_bytes(4, "big"))
    assert not gw.opened()
