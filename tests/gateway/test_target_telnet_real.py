"""The telnet target against a real telnet server: Debian's inetutils telnetd.

Each test drives TelnetTarget.open_session (the BridgeSession and the connector) with a
private reactor on loopback; the device is tests.support.telnetd.TelnetDaemon.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from gateway.targets import TargetConfig
from gateway.targets.telnet import TelnetTarget
from protocols.session import PtyRequest, SessionRequest, WindowSize
from tests.support.doubles import FakeSessionClient
from tests.support.telnetd import SHELL_PROMPT, TelnetDaemon, fresh_reactor, run_until, stop_reactor

pytestmark = pytest.mark.peer

USER, PASSWORD = "admin", "dev pass 'quoted' 42"


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    with TelnetDaemon(tmp_path_factory.mktemp("telnetd"), USER, PASSWORD) as daemon:
        yield daemon


@pytest.fixture
def reactor():
    r = fresh_reactor()
    yield r
    stop_reactor(r)


def config(port: int, **overrides) -> TargetConfig:
    settings = dict(
        name="dev", protocol="telnet", host="127.0.0.1", port=port, username=USER,
        password=PASSWORD, login_prompt=r"login: $", password_prompt=r"Password: ?$",
        connect_timeout=10.0,
    )  # fmt: skip
    settings.update(overrides)
    return TargetConfig(**settings)


def open_session(reactor, cfg: TargetConfig, request: SessionRequest, **kw):
    client = FakeSessionClient()
    session = TelnetTarget(reactor, cfg, None).open_session("alice", request, client, **kw)
    return client, session


def wait_for(reactor, client: FakeSessionClient, pattern: bytes, timeout: float = 10.0) -> None:
    ok = run_until(reactor, lambda: re.search(pattern, client.out) or client.exit, timeout)
    assert ok and re.search(pattern, client.out), (client.out, client.err, client.exit)


def pty(rows: int = 24, cols: int = 80, term: str = "xterm-256color") -> PtyRequest:
    return PtyRequest(term=term, size=WindowSize(rows=rows, cols=cols))


def test_shell_with_pty_logs_in_and_reports_terminal(device, reactor):
    """Acceptance: login answered from the config, a shell, TERM via TTYPE, size via NAWS."""
    client, session = open_session(
        reactor, config(device.port), SessionRequest(pty=pty(rows=33, cols=101))
    )
    wait_for(reactor, client, re.escape(SHELL_PROMPT.encode()))
    assert b"login:" not in client.out and b"Password" not in client.out
    assert session.upstream is not None and "binary" in session.upstream.description
    session.write_stdin(b"echo T=$TERM; stty size\r")
    wait_for(reactor, client, rb"33 101\r\n")
    assert b"T=xterm-256color\r\n" in client.out
    # Window change: NAWS goes out and the device's terminal follows.
    session.resize(WindowSize(rows=40, cols=132))
    session.write_stdin(b"stty size\r")
    wait_for(reactor, client, rb"40 132\r\n")
    # 8-bit clean both ways in BINARY: 0xFF is IAC-doubled on the wire.
    session.write_stdin(b"echo 'in\xffput'; printf 'out\\377put\\n'\r")
    wait_for(reactor, client, rb"out\xffput\r\n")
    assert b"in\xffput\r\n" in client.out
    session.write_stdin(b"exit\r")
    assert run_until(reactor, lambda: client.exit is not None, 10)
    assert client.exit.status == 0 and client.eof and client.err == b""


def test_exec_style_command(device, reactor):
    client, session = open_session(
        reactor, config(device.port), SessionRequest(command=b"echo hi; echo 'x\xffy'")
    )
    assert run_until(reactor, lambda: client.exit is not None, 15), client.out
    assert client.exit.status == 0, client.err
    # No pty: the device's echo is refused and CR LF arrives as \n; 0xFF went through
    # IAC doubling both ways.
    assert b"hi\n" in client.out and b"x\xffy\n" in client.out
    assert b"\r" not in client.out.split(SHELL_PROMPT.encode(), 1)[1]
    assert b"echo hi" not in client.out


def test_paused_client_stops_reading_the_device(device, reactor):
    # A shell rather than a command: telnetd drops what is still queued in its pty when the
    # shell exits, so a command's tail could be lost to the typed "exit" (see the module).
    size = 2_000_000
    client, session = open_session(reactor, config(device.port), SessionRequest())
    session.write_stdin(f"head -c {size} /dev/zero | tr '\\0' a; echo; echo END\n".encode())
    wait_for(reactor, client, rb"a{1000}")
    client.producer.pauseProducing()  # the front end's client stopped reading
    before = len(client.out)
    assert before < size // 2
    run_until(reactor, lambda: False, 1.0)
    assert len(client.out) - before <= 64 * 1024
    client.producer.resumeProducing()
    wait_for(reactor, client, rb"END\n", timeout=30)
    assert client.out.count(b"a") == size
    session.close_stdin()  # ^D: the device's shell exits
    assert run_until(reactor, lambda: client.exit is not None, 10)
    assert client.exit.status == 0


def test_pass_through_password(device, reactor):
    cfg = config(device.port, password=None, credentials="pass-through")
    client, session = open_session(
        reactor, cfg, SessionRequest(command=b"echo ok"), password=PASSWORD
    )
    assert run_until(reactor, lambda: client.exit is not None, 15)
    assert b"ok\n" in client.out and client.exit.status == 0


def test_wrong_password_shows_device_refusal(device, reactor):
    client, session = open_session(
        reactor, config(device.port, password="wrong"), SessionRequest(command=b"echo no")
    )
    assert run_until(reactor, lambda: client.exit is not None, 15)
    assert b"Login incorrect" in client.out and b"no\n" not in client.out


def test_login_prompt_never_seen_times_out(device, reactor):
    started = time.monotonic()
    cfg = config(device.port, login_prompt=r"Username:", connect_timeout=2.0)
    client, session = open_session(reactor, cfg, SessionRequest(command=b"true"))
    assert run_until(reactor, lambda: client.exit is not None, 10)
    assert client.exit.status == 255
    assert b"dev: login prompt never seen" in client.err
    assert time.monotonic() - started < 4


def test_refused_port(reactor):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client, session = open_session(reactor, config(port), SessionRequest(command=b"true"))
    assert run_until(reactor, lambda: client.exit is not None, 10)
    assert client.exit.status == 255
    assert client.err == f"sshgateway: dev: connection refused by 127.0.0.1:{port}\r\n".encode()


def test_silent_server_times_out(reactor):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        started = time.monotonic()
        cfg = config(sock.getsockname()[1], connect_timeout=1.0)
        client, session = open_session(reactor, cfg, SessionRequest())
        assert run_until(reactor, lambda: client.exit is not None, 10)
    assert client.exit.status == 255
    assert b"login prompt never seen" in client.err
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("command", "output", "status"),
    [
        (b"echo out; sh -c 'exit 7'", b"out\n", 7),
        (b"echo out; true", b"out\n", 0),
        # As the shell reports a signal (and says so: telnet has no separate stderr).
        (b"echo out; sh -c 'kill -TERM $$'", b"out\nTerminated\n", 143),
    ],
)
def test_posix_exit_status_from_the_device_shell(device, reactor, command, output, status):
    cfg = config(device.port, shell_prompt=r"dev\$ ", exit_status="posix")
    client, _ = open_session(reactor, cfg, SessionRequest(command=command))
    assert run_until(reactor, lambda: client.exit is not None, 15), client.out
    assert (bytes(client.out), client.exit.status) == (output, status), client.err
    # The default is unchanged: the device hanging up reports 0.
    client, _ = open_session(
        reactor, config(device.port, shell_prompt=r"dev\$ "), SessionRequest(command=command)
    )
    assert run_until(reactor, lambda: client.exit is not None, 15), client.out
    assert (bytes(client.out), client.exit.status) == (output, 0), client.err
