"""The telnet target in memory: negotiation, login automation, NVT/IAC, flow control,
failures and hostile devices, with MemoryReactorClock and StringTransport."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.targets import TargetConfig
from gateway.targets.telnet import (
    LOGIN_TIMEOUT_SHARE,
    MAX_NEGOTIATIONS,
    MAX_SUBNEGOTIATION,
    TelnetTarget,
    naws_payload,
    terminal_type,
)
from protocols.session import PtyRequest, SessionRequest, WindowSize
from tests.support.doubles import FakeProducer, FakeSessionClient

IAC, DONT, DO, WONT, WILL, SB, SE, IP = b"\xff", b"\xfe", b"\xfd", b"\xfc", b"\xfb", b"\xfa", b"\xf0", b"\xf4"  # fmt: skip
BINARY, ECHO, SGA, TTYPE, NAWS = b"\x00", b"\x01", b"\x03", b"\x18", b"\x1f"
INITIAL = IAC + DO + SGA + IAC + WILL + TTYPE + IAC + WILL + NAWS + IAC + DO + BINARY


def config(**overrides) -> TargetConfig:
    settings = dict(
        name="dev", protocol="telnet", host="192.0.2.5", port=23, username="admin",
        password="s3cret", connect_timeout=10.0,
    )  # fmt: skip
    settings.update(overrides)
    return TargetConfig(**settings)


def pty(term: str = "vt220", rows: int = 24, cols: int = 80) -> PtyRequest:
    return PtyRequest(term=term, size=WindowSize(rows=rows, cols=cols))


class Harness:
    """A TelnetTarget session whose device side is a StringTransport."""

    def __init__(self, request: SessionRequest, cfg: TargetConfig | None = None, **kw):
        self.reactor = MemoryReactorClock()
        self.client = FakeSessionClient()
        self.cfg = cfg or config()
        self.session = TelnetTarget(self.reactor, self.cfg, None).open_session(
            "alice", request, self.client, **kw
        )
        host, port, self.factory, self.timeout, _ = self.reactor.tcpClients[0]
        assert (host, port) == (self.cfg.host, self.cfg.port)
        self.wire = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        self.telnet = None

    def connect(self) -> Harness:
        self.telnet = self.factory.buildProtocol(None)
        self.telnet.makeConnection(self.wire)
        return self

    def sent(self) -> bytes:
        data = self.wire.value()
        self.wire.clear()
        return data

    def device(self, data: bytes) -> None:
        self.telnet.dataReceived(data)

    def negotiate_binary(self) -> None:
        """The device agrees to BINARY both ways."""
        self.device(IAC + WILL + BINARY + IAC + DO + BINARY)

    def lose(self, reason=error.ConnectionDone) -> None:
        self.telnet.connectionLost(Failure(reason()))


def opened(request: SessionRequest, **cfg) -> Harness:
    h = Harness(request, config(**cfg)).connect()
    assert h.session.upstream is not None
    return h


# -- pure helpers ------------------------------------------------------------------


def test_terminal_type_bounded_and_defaulted():
    assert terminal_type(SessionRequest()) == b"dumb"
    assert terminal_type(SessionRequest(pty=pty("xterm-256color"))) == b"xterm-256color"
    assert terminal_type(SessionRequest(pty=pty("a b\x1b[" + "x" * 100))) == b"ab[" + b"x" * 37


def test_naws_payload_clamps():
    assert naws_payload(WindowSize(rows=24, cols=80)) == b"\x00\x50\x00\x18"
    assert naws_payload(WindowSize(rows=70000, cols=-1)) == b"\x00\x00\xff\xff"


# -- negotiation -------------------------------------------------------------------


def test_initial_requests_and_refusals():
    h = opened(SessionRequest(pty=pty()))
    assert h.sent() == INITIAL
    # Things we never take: AUTHENTICATION, ENCRYPT, NEW-ENVIRON, LINEMODE, DO ECHO.
    h.device(IAC + WILL + b"\x25" + IAC + WILL + b"\x26" + IAC + DO + b"\x27")
    h.device(IAC + DO + b"\x22" + IAC + DO + ECHO)
    assert h.sent() == (
        IAC + DONT + b"\x25" + IAC + DONT + b"\x26" + IAC + WONT + b"\x27"
        + IAC + WONT + b"\x22" + IAC + WONT + ECHO
    )  # fmt: skip


def test_binary_both_ways_one_direction_at_a_time():
    h = opened(SessionRequest())
    h.sent()
    h.device(IAC + WILL + BINARY)
    assert h.sent() == IAC + WILL + BINARY
    h.device(IAC + DO + BINARY)
    assert h.sent() == b""
    assert "us=[binary] them=[binary]" in h.session.upstream.description
    # A device that refuses to send binary still gets our offer.
    h = opened(SessionRequest())
    h.sent()
    h.device(IAC + WONT + BINARY)
    assert h.sent() == IAC + WILL + BINARY


def test_echo_taken_only_with_a_pty():
    h = opened(SessionRequest(pty=pty()))
    h.sent()
    h.device(IAC + WILL + ECHO + IAC + WILL + SGA)
    assert h.sent() == IAC + DO + ECHO
    h = opened(SessionRequest(command=b"show version"))
    h.sent()
    h.device(IAC + WILL + ECHO)
    assert h.sent() == IAC + DONT + ECHO


def test_terminal_type_and_window_size():
    h = opened(SessionRequest(pty=pty("vt220", rows=24, cols=255)))
    h.sent()
    h.device(IAC + DO + TTYPE + IAC + DO + NAWS)
    # cols 255 is 0xff: doubled inside the subnegotiation.
    assert h.sent() == IAC + SB + NAWS + b"\x00\xff\xff\x00\x18" + IAC + SE
    h.device(IAC + SB + TTYPE + b"\x01" + IAC + SE)
    assert h.sent() == IAC + SB + TTYPE + b"\x00vt220" + IAC + SE
    h.session.resize(WindowSize(rows=50, cols=132))
    assert h.sent() == IAC + SB + NAWS + b"\x00\x84\x00\x32" + IAC + SE
    assert "naws" in h.session.upstream.description
    assert "ttype" in h.session.upstream.description


def test_unsolicited_do_naws_sends_size_after_will():
    h = Harness(SessionRequest(pty=pty(rows=30, cols=100))).connect()
    h.sent()
    h.device(IAC + DONT + NAWS)  # refused our offer...
    assert h.sent() == b""
    h.device(IAC + DO + NAWS)  # ...then asked for it: WILL first, then the size
    assert h.sent() == IAC + WILL + NAWS + IAC + SB + NAWS + b"\x00\x64\x00\x1e" + IAC + SE


def test_resize_before_naws_is_remembered():
    h = opened(SessionRequest(pty=pty()))
    h.sent()
    h.device(IAC + DONT + NAWS)
    h.session.resize(WindowSize(rows=10, cols=20))
    assert h.sent() == b""
    h.device(IAC + DO + NAWS)
    assert h.sent().endswith(IAC + SB + NAWS + b"\x00\x14\x00\x0a" + IAC + SE)


def test_ttype_answers_are_bounded():
    h = opened(SessionRequest())
    h.device(IAC + DO + TTYPE)
    h.sent()
    h.device((IAC + SB + TTYPE + b"\x01" + IAC + SE) * 50)
    assert h.sent().count(b"dumb") == 8


# -- data plane --------------------------------------------------------------------


def test_nvt_output_without_pty_folds_newlines():
    h = opened(SessionRequest())
    h.device(b"a\r\nb\r\x00c\xff\xffd\r")
    h.device(b"\ne\r\r\nf")
    assert h.client.out == b"a\nb\rc\xffd\ne\r\nf"


def test_cr_nul_lf_split_by_the_device_is_still_a_newline():
    """inetutils telnetd, at a pty read boundary, sends CR LF as CR NUL then LF."""
    h = opened(SessionRequest(command=b"seq"))
    h.device(b"1\r\x00")
    h.device(b"\n2\r\x00x\r\x00\r\x00\n3\r")
    h.lose()
    assert h.client.out == b"1\n2\rx\r\n3\r"  # a bare CR stays one; the last one too


def test_nvt_output_with_pty_keeps_crlf():
    h = opened(SessionRequest(pty=pty()))
    h.device(b"a\r\nb\r\x00c")
    assert h.client.out == b"a\r\nb\rc"


def test_binary_output_with_pty_is_raw():
    h = opened(SessionRequest(pty=pty()))
    h.negotiate_binary()
    h.device(b"a\r\x00b\r\nc\xff\xff\x00")
    assert h.client.out == b"a\r\x00b\r\nc\xff\x00"


def test_binary_output_without_pty_still_folds_crlf():
    h = opened(SessionRequest())
    h.negotiate_binary()
    h.device(b"a\r\nb\r\x00c")
    assert h.client.out == b"a\nb\r\x00c"


def test_nvt_input_encoding():
    h = opened(SessionRequest(pty=pty()))
    h.sent()
    h.session.write_stdin(b"a\rb\nc\r\nd\xff")
    h.session.write_stdin(b"e\r")
    h.session.write_stdin(b"\nf")  # the LF of a split CR LF is not a second newline
    assert h.sent() == b"a\r\x00b\r\nc\r\nd\xff\xffe\r\x00f"


def test_binary_input_is_raw_but_iac_doubled():
    h = opened(SessionRequest(pty=pty()))
    h.negotiate_binary()
    h.sent()
    h.session.write_stdin(b"a\rb\n\xff\x00")
    assert h.sent() == b"a\rb\n\xff\xff\x00"


def test_commands_in_data_are_not_data():
    h = opened(SessionRequest())
    h.device(b"x" + IAC + b"\xf1" + b"y" + IAC + b"\xf9" + IAC + b"\x01" + b"z")  # NOP, GA, junk
    h.device(IAC + SB + IAC + SE + b"w")  # empty subnegotiation
    h.device(IAC + SB + b"\x99abc" + IAC + SE + b"v")  # unknown option's subnegotiation
    assert h.client.out == b"xyzwv"


# -- login automation and exec ---------------------------------------------------------


def test_login_prompts_answered_and_dialog_hidden():
    cfg = config(login_prompt=r"[Uu]sername: ?$", password_prompt=r"[Pp]assword: ?$")
    h = Harness(SessionRequest(command=b"show run"), cfg).connect()
    h.sent()
    h.device(b"Welcome\r\nUser")
    assert h.sent() == b"" and h.session.upstream is None
    h.device(b"name: ")
    assert h.sent() == b"admin\r\n"
    h.device(b"admin\r\nPassword: ")
    # The session opens once the password is sent; the command and "exit" follow.
    assert h.sent() == b"s3cret\r\nshow run\r\nexit\r\n"
    assert h.session.upstream is not None
    h.device(b"\r\nhostname sw1\r\nrouter> ")
    h.lose()
    assert h.client.out == b"\nhostname sw1\nrouter> "
    assert h.client.exit.status == 0 and h.client.eof and h.client.err == b""


def test_shell_prompt_frames_a_command_and_exit_waits_for_it():
    cfg = config(login_prompt=r"login: $", password_prompt=r"Password: $", shell_prompt=r"sw1[>#] ?")
    h = Harness(SessionRequest(command=b"show ver"), cfg).connect()
    h.sent()
    h.device(b"login: ")
    h.device(b"admin\r\nPassword: ")
    assert h.sent() == b"admin\r\ns3cret\r\n"
    assert h.session.upstream is None  # not open before the shell's prompt
    h.device(b"\r\nLast login: never\r\nsw1> ")
    assert h.sent() == b"show ver\r\n"  # the command alone: no exit yet
    assert h.session.upstream is not None
    h.device(b"show ver\r\nVersion 1.0\r\nUptime 3 d")  # the echo, then output
    assert h.client.out == b"Version 1.0\n"  # the unfinished line waits
    h.device(b"ays\r\nsw1> ")
    assert h.client.out == b"Version 1.0\nUptime 3 days\n"  # no banner, no prompts
    assert h.sent() == b"exit\r\n"  # only now
    h.device(b"exit\r\nlogout\r\n")  # the device's goodbye is not output
    h.lose()
    assert h.client.out == b"Version 1.0\nUptime 3 days\n"
    assert h.client.exit.status == 0


def test_posix_exit_status_is_asked_for_after_the_command():
    cfg = config(shell_prompt=r"sw1[>#] ?", exit_status="posix")
    h = Harness(SessionRequest(command=b"false"), cfg).connect()
    h.sent()  # the option negotiation
    h.device(b"sw1> ")
    assert h.sent() == b"false\r\n"
    h.device(b"false\r\nno\r\nsw1> ")
    ask = h.sent()
    marker = re.fullmatch(rb"echo (SSHGW-EXIT-[0-9a-f]{8}:)\$\?\r\n", ask)
    assert marker is not None, ask
    # The device echoes the marker command (no number: "$?"), then answers it; output
    # that mimics a marker without the session's random part is just output.
    h.device(ask + b"SSHGW-EXIT-00000000:0\r\n" + marker.group(1) + b"1\r\nsw1")
    assert h.sent() == b""  # the prompt is not complete yet
    h.device(b"> ")
    assert h.sent() == b"exit\r\n"
    h.device(b"exit\r\n")
    h.lose()
    assert h.client.out == b"no\n"  # neither the marker exchange nor the prompts
    assert h.client.exit.status == 1


def test_posix_exit_status_without_an_answer_is_0():
    cfg = config(shell_prompt=r"\$ ", exit_status="posix")
    h = Harness(SessionRequest(command=b"cmd"), cfg).connect()
    h.sent()
    h.device(b"$ ")
    h.device(b"cmd\r\nout\r\n$ ")
    assert h.sent().startswith(b"cmd\r\necho SSHGW-EXIT-")
    h.device(b"sh: syntax error\r\n$ ")  # a shell that is not POSIX
    assert h.sent() == b"exit\r\n"
    h.lose()
    assert (h.client.out, h.client.exit.status) == (b"out\n", 0)


def test_shell_prompt_inside_a_line_is_output():
    h = Harness(SessionRequest(command=b"cmd"), config(shell_prompt=r"\$ ")).connect()
    h.device(b"$ ")
    h.sent()
    h.device(b"cost: 5$ each\r\npartial")  # "$ " in the middle of a line
    h.device(b" end$ ")  # output without a final newline, then the prompt
    assert h.client.out == b"cost: 5$ each\npartial end"
    assert h.sent() == b"exit\r\n"


def test_only_the_echo_of_the_command_is_dropped():
    h = Harness(SessionRequest(command=b"ls"), config(shell_prompt=r"\$ ")).connect()
    h.device(b"$ ")
    h.device(b"a\r\nls\r\n$ ")  # a device that does not echo; "ls" is output here
    assert h.client.out == b"a\nls\n"


def test_a_command_that_ends_the_shell_keeps_its_last_line():
    h = Harness(SessionRequest(command=b"echo bye; exit 3"), config(shell_prompt=r"\$ ")).connect()
    h.device(b"$ ")
    h.device(b"bye\r\nno newline")
    h.lose()
    assert h.client.out == b"bye\nno newline"
    assert h.sent().endswith(b"echo bye; exit 3\r\n")


def test_shell_prompt_never_seen():
    h = Harness(SessionRequest(command=b"cmd"), config(shell_prompt=r"\$ ")).connect()
    h.device(b"Welcome\r\n")
    h.reactor.advance(10.0 * LOGIN_TIMEOUT_SHARE)
    assert h.client.err == (
        b"sshgateway: waiting for dev (9 s; gives up after 10 s)\r\n"  # the bridge's progress
        b"sshgateway: dev: shell prompt never seen from 192.0.2.5:23\r\n"
    )


def test_shell_prompt_does_not_change_a_shell_session():
    h = Harness(SessionRequest(pty=pty()), config(shell_prompt=r"\$ ")).connect()
    assert h.session.upstream is not None  # opened at once
    h.device(b"motd\r\n$ ")
    assert h.client.out == b"motd\r\n$ "


def test_login_in_binary_mode_uses_cr():
    cfg = config(login_prompt="login: ", password_prompt=None, username=None)
    h = Harness(SessionRequest(pty=pty()), cfg).connect()
    h.negotiate_binary()
    h.sent()
    h.device(b"login: ")
    assert h.sent() == b"alice\r"  # no configured username: the gateway user's name
    assert h.session.upstream is not None


def test_pass_through_password():
    cfg = config(password=None, credentials="pass-through", password_prompt="Password:")
    h = Harness(SessionRequest(), cfg, password="gateway pw").connect()
    h.sent()
    h.device(b"Password:")
    assert h.sent() == b"gateway pw\r\n"


def test_password_prompt_without_password_fails():
    cfg = config(password=None, password_prompt="Password:")
    h = Harness(SessionRequest(), cfg).connect()
    h.device(b"Password:")
    assert h.client.exit.status == 255
    assert h.client.err == b"sshgateway: dev: no password to answer the device's prompt\r\n"
    assert h.wire.disconnecting


def test_prompt_matching_window_is_bounded():
    cfg = config(login_prompt="login:")
    h = Harness(SessionRequest(), cfg).connect()
    h.device(b"x" * 1_000_000)
    proto = h.telnet.protocol
    assert len(proto.window) <= 4096
    h.device(b"login:")
    assert proto.opened


def test_login_prompt_never_seen():
    h = Harness(SessionRequest(), config(login_prompt="login:")).connect()
    h.device(b"Welcome, but no prompt")
    h.reactor.advance(10.0 * LOGIN_TIMEOUT_SHARE)
    assert h.client.exit.status == 255
    assert h.client.err.endswith(b"\r\nsshgateway: dev: login prompt never seen from 192.0.2.5:23\r\n")
    assert h.wire.disconnecting
    assert h.client.out == b""


def test_password_prompt_never_seen():
    cfg = config(login_prompt="login:", password_prompt="Password:")
    h = Harness(SessionRequest(), cfg).connect()
    h.device(b"login:")
    h.reactor.advance(9.0)
    assert b"password prompt never seen" in h.client.err


def test_closed_during_login():
    h = Harness(SessionRequest(), config(login_prompt="login:")).connect()
    h.lose()
    assert h.client.exit.status == 255
    assert h.client.err == b"sshgateway: dev: connection closed by the device during login\r\n"


# -- connection failures -----------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (error.ConnectionRefusedError(), "connection refused by 192.0.2.5:23"),
        (error.TimeoutError(), "timed out connecting to 192.0.2.5:23"),
        (error.DNSLookupError(), "cannot resolve 192.0.2.5"),
        (error.NoRouteError(), "192.0.2.5:23 is unreachable"),
        (error.ConnectError("boom"), "cannot connect to 192.0.2.5:23 (An error occurred while connecting: boom.)"),
    ],
)  # fmt: skip
def test_connect_failures(reason, message):
    h = Harness(SessionRequest())
    h.factory.clientConnectionFailed(None, Failure(reason))
    assert h.client.exit.status == 255
    assert h.client.err == f"sshgateway: dev: {message}\r\n".encode()


def test_tcp_timeout_is_within_connect_timeout():
    h = Harness(SessionRequest())
    assert h.timeout == pytest.approx(10.0 * LOGIN_TIMEOUT_SHARE)


def test_bridge_timeout_cancels_connecting():
    h = Harness(SessionRequest())
    h.reactor.advance(10.0)
    assert h.client.exit.status == 255
    assert b"no session within 10 s" in h.client.err
    connector = h.reactor.connectors[0]
    assert connector._disconnected


def test_reset_mid_session_is_a_failure():
    h = opened(SessionRequest())
    h.device(b"partial")
    h.lose(error.ConnectionLost)
    assert h.client.out == b"partial"
    assert h.client.exit.status == 255
    assert h.client.err.startswith(b"sshgateway: dev: connection to the device lost during session")


# -- session operations ------------------------------------------------------------


def test_signal_int_is_telnet_ip_others_dropped():
    h = opened(SessionRequest(pty=pty()))
    h.sent()
    h.session.send_signal("INT")
    h.session.send_signal("TERM")
    assert h.sent() == IAC + IP


def test_eof_on_pipe_shell_sends_ctrl_d_only_there():
    h = opened(SessionRequest())
    h.sent()
    h.session.close_stdin()
    assert h.sent() == b"\x04"
    h = opened(SessionRequest(pty=pty()))
    h.sent()
    h.session.close_stdin()
    assert h.sent() == b""


def test_client_close_drops_the_connection_quietly():
    h = opened(SessionRequest())
    h.session.close()
    assert h.wire.disconnecting
    h.device(b"late output")
    h.lose()
    assert h.client.out == b"" and h.client.exit is None


def test_flow_control_both_ways():
    h = opened(SessionRequest())
    front = FakeProducer()
    h.session.registerProducer(front, True)
    # The front end cannot take more output: stop reading the device.
    h.session.pauseProducing()
    assert h.wire.producerState == "paused"
    h.session.resumeProducing()
    assert h.wire.producerState == "producing"
    # The device does not read: the transport pauses our producer, which pauses the client.
    h.wire.producer.pauseProducing()
    assert front.paused
    h.wire.producer.resumeProducing()
    assert not front.paused


# -- hostile devices ---------------------------------------------------------------


def test_oversized_subnegotiation_disconnects():
    h = opened(SessionRequest())
    h.device(IAC + SB + TTYPE + b"x" * (MAX_SUBNEGOTIATION + 10))
    assert h.wire.disconnecting
    h.lose()
    assert h.client.exit.status == 255
    assert b"device protocol error: telnet subnegotiation longer than" in h.client.err


def test_negotiation_flood_disconnects():
    h = opened(SessionRequest())
    h.device((IAC + WILL + b"\x25") * (MAX_NEGOTIATIONS + 1))
    assert h.wire.disconnecting
    assert len(h.wire.value()) <= 3 * MAX_NEGOTIATIONS + len(INITIAL)


def test_protocol_error_during_login():
    h = Harness(SessionRequest(), config(login_prompt="login:")).connect()
    h.device(IAC + SB + b"y" * (MAX_SUBNEGOTIATION + 1))
    h.lose()
    assert b"device protocol error" in h.client.err and h.client.exit.status == 255


_TOKENS = st.sampled_from(
    [IAC, WILL, WONT, DO, DONT, SB, SE, IP, BINARY, ECHO, SGA, TTYPE, NAWS, b"\r", b"\n",
     b"\x00", b"text", b"login: ", b"Password: ", b"$ ", b"cmd", b"\x01", b"\xf1"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(_TOKENS | st.binary(max_size=16), max_size=12).map(b"".join), max_size=12),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_arbitrary_device_bytes_never_raise(chunks, with_pty, with_login, command_with_prompt):
    prompts = {"login_prompt": "login: ", "password_prompt": "Password: "} if with_login else {}
    if command_with_prompt:  # a command framed by shell prompts ("$ " is among the tokens)
        prompts["shell_prompt"] = r"\$ "
    request = SessionRequest(
        pty=pty() if with_pty else None, command=b"cmd" if command_with_prompt else None
    )
    h = Harness(request, config(**prompts)).connect()
    for chunk in chunks:
        h.device(chunk)
        h.session.write_stdin(chunk)
    h.lose()
    assert h.client.exit is not None
