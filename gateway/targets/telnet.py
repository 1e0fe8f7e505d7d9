"""The ``telnet`` upstream target: a session on a device that speaks only telnet.

Built on ``twisted.conch.telnet``: ``Telnet``'s option state machine (RFC 1143's Q method)
does the negotiation, and :class:`_DeviceProtocol` (a ``TelnetProtocol``) decides which
options to take. The data plane — IAC unescaping, NVT end-of-line, subnegotiation bounds —
is our own parser in :class:`_DeviceTransport`, because Conch's byte-at-a-time loop is slow,
turns CR LF into a bare LF, knows nothing of BINARY mode and raises on unknown commands.

Options (tables ``_LOCAL_OPTIONS`` / ``_REMOTE_OPTIONS``; every other one is refused):

- SGA and BINARY both ways, always (BINARY keeps the session 8-bit clean: an NVT telnetd
  strips the top bit of what it is sent); TERMINAL-TYPE (the client's TERM, or ``dumb``
  without a pty); NAWS with the client's window size, sent again on every resize.
- ECHO from the device only with a client pty: the client's own terminal is raw and the
  device echoes. Without a pty (a command, or piped input) it is refused; a device whose
  terminal echoes anyway (inetutils telnetd's does) has the echo of a command line
  removed when ``shell_prompt`` is set.

End of line. Towards the device, outside BINARY (RFC 854): a lone CR goes as CR NUL and a
lone LF as CR LF. From the device: with a client pty, BINARY data is passed as is, and NVT's
CR LF / CR NUL become ``\r\n`` / ``\r``. Without a client pty, CR LF (NVT's newline, or
the device pty's onlcr in BINARY) becomes the ``\n`` a program reading ``ssh host cmd``
output expects; so does CR NUL LF, which inetutils telnetd sends for a CR LF split by a
pty read. 0xFF is doubled (IAC IAC) in data both ways.

Login automation: with ``login_prompt`` / ``password_prompt`` configured, received output
is matched (a 4 KiB window) against them and answered with the upstream username and
password plus the device's Enter. The login dialog is not shown to the client; the session
opens once the last configured prompt has been answered (at once without prompts). A prompt
that never comes fails the connection shortly before the bridge's connect timeout, with a
message naming the prompt. Telnet has no way to tell a refused login: the device's
"Login incorrect" is what the user then sees.

Telnet has no exec, no stderr and no exit status. The convention here: for a command, the
gateway types the command line and then ``exit`` (each with Enter) once logged in, passes
the output back, and reports exit status 0 when the device closes the connection cleanly
(a reset is a failure, status 255). Typed at once, ``exit`` can end the shell while output
is still in the device's pty, and some telnetds (inetutils among them) then hang up
without sending it, so a slow client can lose the tail. With ``shell_prompt`` configured
the command is framed by prompts instead: the gateway waits for the first prompt, types
the command, passes its output (without the echo of the command line and without the
prompts; whole lines at once, the unfinished last line when it is done), and types
``exit`` only when the next prompt ends the output.

Exit status, opt-in (``exit_status = "posix"``, with ``shell_prompt``): when the prompt
after the command shows it done, the gateway types ``echo MARKER$?`` (MARKER has a random
part per session), takes the status from the line the shell prints, drops that exchange
(its echo, the marker line, the prompt) from the output, then types ``exit``; the session
ends with that status. A device that hangs up before the marker is answered (the command
ended the shell) still reports 0.

A shell session is passed through; client EOF on a shell without a pty sends ^D (end of
file for the device's terminal). SIGINT is sent as telnet IP; other signals have no telnet
equivalent and are dropped.

Flow control: the bridge pausing us stops reading the TCP socket; a full TCP send buffer
pauses the client's input (a producer registered on the transport).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

from twisted.conch import telnet as t
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IPushProducer, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.targets import TargetConfig
from gateway.targets.bridge import (
    IUpstreamSession,
    UpstreamFailure,
    UpstreamSink,
    UpstreamTarget,
    upstream_credentials,
)
from protocols.flow import C2S, S2C, FlowRecorder
from protocols.session import ExitInfo, SessionRequest, WindowSize

log = Logger()

PROMPT_WINDOW = 4096  # bytes of recent output the login prompts are matched against
MAX_SUBNEGOTIATION = 1024  # far above any option we take (NAWS: 4 bytes, TTYPE: ~40)
MAX_NEGOTIATIONS = 4096  # option commands + subnegotiations a device may send per session
MAX_TERM_LENGTH = 40  # RFC 1091's longest registered name
# Share of connect_timeout after which a missing prompt fails with its own message, so it
# beats the bridge's generic "no session within ..." one.
LOGIN_TIMEOUT_SHARE = 0.9

# exit_status = "posix": the marker the status line starts with (plus a random part).
STATUS_MARKER = b"SSHGW-EXIT-"
MAX_STATUS_REPLY = 4096  # bytes read after the marker command before giving up on it

# Options twisted.conch.telnet has no names for.
BINARY = b"\x00"  # RFC 856
TTYPE = b"\x18"  # RFC 1091
TTYPE_IS, TTYPE_SEND = b"\x00", b"\x01"
# The commands followed by an option byte. Every other command (NOP, DM, BRK, AO, AYT, EC,
# EL, GA, EOR, and undefined ones) carries nothing for us and is ignored, as RFC 854 asks.
_OPTION_VERBS = frozenset((t.WILL, t.WONT, t.DO, t.DONT))

# Names in flow records ("IAC DO TTYPE"); other options by number.
_FLOW_VERBS = {t.WILL: "WILL", t.WONT: "WONT", t.DO: "DO", t.DONT: "DONT", t.SB: "SB"}
_FLOW_OPTIONS = {
    BINARY: "BINARY", t.ECHO: "ECHO", t.SGA: "SGA", TTYPE: "TTYPE", t.NAWS: "NAWS",
    b"\x05": "STATUS", b"\x20": "TSPEED", b"\x21": "LFLOW", b"\x22": "LINEMODE",
    b"\x23": "XDISPLOC", b"\x24": "OLD-ENVIRON", b"\x25": "AUTHENTICATION",
    b"\x26": "ENCRYPT", b"\x27": "NEW-ENVIRON",
}  # fmt: skip


def flow_command_name(verb: bytes, option: bytes) -> str:
    """``IAC DO TTYPE`` for a command with an option byte."""
    shown = _FLOW_OPTIONS.get(option) or f"OPTION-{option[0] if option else 0}"
    return f"IAC {_FLOW_VERBS.get(verb, 'CMD-' + str(verb[0] if verb else 0))} {shown}"


def _pty(request: SessionRequest) -> bool:
    return request.pty is not None


# What we agree to do ourselves (the device says DO x), and what we let the device do (it
# says WILL x). The predicate decides per session.
_LOCAL_OPTIONS: dict[bytes, Callable[[SessionRequest], bool]] = {
    t.SGA: lambda request: True,
    TTYPE: lambda request: True,
    t.NAWS: _pty,
    BINARY: lambda request: True,
}
_REMOTE_OPTIONS: dict[bytes, Callable[[SessionRequest], bool]] = {
    t.SGA: lambda request: True,
    t.ECHO: _pty,
    BINARY: lambda request: True,
}
_OPTION_NAMES = {t.SGA: "sga", TTYPE: "ttype", t.NAWS: "naws", BINARY: "binary", t.ECHO: "echo"}


def terminal_type(request: SessionRequest) -> bytes:
    """What TERMINAL-TYPE reports: the client's TERM, bounded to printable ASCII."""
    term = request.pty.term if request.pty is not None else ""
    cleaned = "".join(c for c in term if c.isascii() and c.isprintable() and c != " ")
    return (cleaned[:MAX_TERM_LENGTH] or "dumb").encode("ascii")


def naws_payload(size: WindowSize) -> bytes:
    """RFC 1073: width then height, 16 bits each (IAC doubling is the transport's job)."""
    cols = max(0, min(size.cols, 0xFFFF))
    rows = max(0, min(size.rows, 0xFFFF))
    return cols.to_bytes(2, "big") + rows.to_bytes(2, "big")


class _ProtocolViolation(Exception):
    pass


class _DeviceTransport(t.TelnetTransport):
    """TelnetTransport with our own data-plane parser and encoder (see module docstring)."""

    _NVT_SPECIAL = re.compile(rb"[\xff\r]")
    _BINARY_SPECIAL = re.compile(rb"\xff")
    _OUT_NVT = re.compile(rb"\r\n|\r|\n")

    def __init__(self, protocolFactory: Callable[[], Any]) -> None:
        super().__init__(protocolFactory)
        self._parse_state = "data"
        self._verb = b""
        self._sub = bytearray()
        self._negotiations = 0
        self._sent_cr = False  # the last byte sent was a CR already followed by NUL
        self.flow: FlowRecorder | None = None  # this leg's flow recorder, when recording

    # -- options as seen by the data plane ------------------------------------------

    def _remote_enabled(self, option: bytes) -> bool:
        state = self.options.get(option)
        return state is not None and state.him.state == "yes"

    def _local_enabled(self, option: bytes) -> bool:
        state = self.options.get(option)
        return state is not None and state.us.state == "yes"

    # -- received bytes -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.protocol is None or self.protocol.violation is not None:
            return  # already tearing down
        try:
            self._parse(data)
        except _ProtocolViolation as e:
            log.warn("telnet device {peer}: {reason}; disconnecting", peer=self._peer(), reason=e)
            if self.protocol is not None:
                self.protocol.protocol_violation(str(e))
            # Abort: a hostile device that does not read would keep a graceful close
            # waiting for our send buffer to drain forever.
            self.transport.abortConnection()

    def _parse(self, data: bytes) -> None:
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            state = self._parse_state
            if state == "data":
                binary = self._remote_enabled(BINARY)
                raw = binary and not self.protocol.fold_newlines
                special = (self._BINARY_SPECIAL if raw else self._NVT_SPECIAL).search(data, pos)
                stop = end if special is None else special.start()
                if stop > pos:
                    out.append(data[pos:stop])
                if special is None:
                    break
                self._parse_state = "iac" if data[stop] == 0xFF else "cr"
                pos = stop + 1
                continue
            byte = data[pos : pos + 1]
            pos += 1
            if state == "cr":
                self._parse_state = "data"
                if byte == b"\n":
                    out.append(self.protocol.newline)
                elif byte == b"\x00" and self._remote_enabled(BINARY):
                    out.append(b"\r\x00")  # in BINARY the NUL is just data
                elif byte == b"\x00" and self.protocol.fold_newlines:
                    # NVT's bare CR; but telnetds split a CR LF at a pty read boundary into
                    # CR NUL, LF: wait for the next byte before calling it bare.
                    self._parse_state = "cr-nul"
                elif byte == b"\x00":
                    out.append(b"\r")  # NVT's bare CR
                elif byte == b"\r":
                    out.append(b"\r")
                    self._parse_state = "cr"
                elif byte == t.IAC:
                    out.append(b"\r")
                    self._parse_state = "iac"
                else:  # not NVT, but the intent is plain: a CR, then the byte
                    out.append(b"\r" + byte)
            elif state == "cr-nul":
                self._parse_state = "data"
                if byte == b"\n":
                    out.append(self.protocol.newline)
                else:
                    out.append(b"\r")
                    pos -= 1  # an ordinary byte (or IAC, or CR): the data state takes it
            elif state == "iac":
                self._parse_state = "data"
                if byte == t.IAC:
                    out.append(byte)
                elif byte in _OPTION_VERBS:
                    self._verb, self._parse_state = byte, "option"
                elif byte == t.SB:
                    self._sub.clear()
                    self._parse_state = "sb"
            elif state == "option":
                self._parse_state = "data"
                self._flush(out)
                self._count()
                if self.flow is not None:
                    self.flow.packet(S2C, flow_command_name(self._verb, byte), 3)
                self.commandReceived(self._verb, byte)
            elif state == "sb":
                if byte == t.IAC:
                    self._parse_state = "sb-iac"
                else:
                    self._sub_append(byte)
            elif state == "sb-iac":
                if byte == t.SE:
                    self._parse_state = "data"
                    self._flush(out)
                    self._count()
                    sub, self._sub = bytes(self._sub), bytearray()
                    if self.flow is not None:
                        self.flow.packet(S2C, flow_command_name(t.SB, sub[:1]), len(sub) + 4)
                    if sub:
                        self.protocol.subnegotiation(sub[:1], sub[1:])
                else:
                    # IAC IAC is a data 0xFF; anything else after IAC inside SB is
                    # malformed, kept as data for the option handler to reject.
                    self._parse_state = "sb"
                    self._sub_append(byte)
            if self.protocol is None:  # the protocol lost the connection mid-parse
                return
        self._flush(out)

    def _sub_append(self, byte: bytes) -> None:
        if len(self._sub) >= MAX_SUBNEGOTIATION:
            raise _ProtocolViolation(
                f"telnet subnegotiation longer than {MAX_SUBNEGOTIATION} bytes"
            )
        self._sub += byte

    def _count(self) -> None:
        self._negotiations += 1
        if self._negotiations > MAX_NEGOTIATIONS:
            raise _ProtocolViolation(f"more than {MAX_NEGOTIATIONS} telnet option negotiations")

    def _flush(self, out: list[bytes]) -> None:
        if out and self.protocol is not None:
            data = b"".join(out)
            out.clear()
            if self.flow is not None:
                self.flow.packet(S2C, "data", len(data))  # size only, never the bytes
            self.protocol.dataReceived(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._parse_state in ("cr", "cr-nul") and self.protocol is not None:
            self._parse_state = "data"
            self.protocol.dataReceived(b"\r")  # the stream ended on a CR
        super().connectionLost(reason)

    # -- Telnet hooks -------------------------------------------------------------

    def commandReceived(self, command: bytes, argument: bytes | None) -> None:
        super().commandReceived(command, argument)
        if self.protocol is not None:
            self.protocol.options_changed()

    # -- bytes we send --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Data for the device: IAC doubled; NVT end of line unless we are in BINARY."""
        if not data or self.transport is None:
            return
        data = data.replace(b"\xff", b"\xff\xff")
        if not self._local_enabled(BINARY):
            if self._sent_cr and data[:1] == b"\n":
                data = data[1:]  # the LF of a CR LF split across two writes
            self._sent_cr = data[-1:] == b"\r"
            data = self._OUT_NVT.sub(lambda m: b"\r\0" if m.group() == b"\r" else b"\r\n", data)
        if self.flow is not None:
            self.flow.packet(C2S, "data", len(data))  # size only, never the bytes
        self.transport.write(data)

    def send_command(self, command: bytes) -> None:
        self._write(t.IAC + command)

    def _write(self, data: bytes) -> None:
        # Conch sends every option command and subnegotiation through here.
        if self.flow is not None and data[:1] == t.IAC and len(data) >= 3:
            self.flow.packet(C2S, flow_command_name(data[1:2], data[2:3]), len(data))
        self.transport.write(data)

    def _peer(self) -> str:
        try:
            peer = self.transport.getPeer()
            return f"{peer.host}:{peer.port}"
        except Exception:
            return "?"


@implementer(IPushProducer)
class _InputThrottle:
    """Registered on the TCP transport: a full send buffer pauses the client's input."""

    def __init__(self, sink: UpstreamSink) -> None:
        self.sink = sink

    def pauseProducing(self) -> None:
        self.sink.pause_input()

    def resumeProducing(self) -> None:
        self.sink.resume_input()

    def stopProducing(self) -> None:
        pass


@implementer(t.ITelnetProtocol, IUpstreamSession)
class _DeviceProtocol(t.TelnetProtocol):
    """One telnet session: negotiation policy, login automation, the IUpstreamSession."""

    transport: _DeviceTransport

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt
        self.request = attempt.request
        self.sink = attempt.sink
        # Without a client terminal, the device's CR LF (NVT's newline, or its pty's
        # onlcr in BINARY) becomes the \n a program reading the output expects.
        self.fold_newlines = self.request.pty is None
        self.newline = b"\n" if self.fold_newlines else b"\r\n"
        self.size = self.request.pty.size if self.request.pty is not None else None
        self.phase = attempt.first_phase()
        self.window = bytearray()
        self.opened = False
        self.closed = False
        self.violation: str | None = None
        self._naws_sent: WindowSize | None = None
        self._ttype_replies = 0
        self.running = False  # a command between prompts (shell_prompt set), not yet done
        self.held = bytearray()  # its unfinished last line
        self.echo: bytes | None = None  # the command line, until its echo has been looked for
        # exit_status = "posix": the marker's reply so far, and the status it gave.
        self.status_reply: bytearray | None = None
        self.exit_status = 0

    # -- connection ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.attempt.session = self
        self.transport.transport.registerProducer(_InputThrottle(self.sink), True)
        # Ask for what we want rather than wait: many devices only offer on request.
        self._ask(self.transport.do, t.SGA)
        self._ask(self.transport.will, TTYPE)
        if self.size is not None:
            self._ask(self.transport.will, t.NAWS)
        # Twisted negotiates one direction of an option at a time: WILL BINARY once the
        # device has answered DO BINARY.
        self.transport.do(BINARY).addBoth(self._offer_binary)
        if self.phase == "open":
            self._open()

    def _offer_binary(self, _: object) -> None:
        if not self.closed and not self.transport._local_enabled(BINARY):
            self._ask(self.transport.will, BINARY)

    def _ask(self, request: Callable[[bytes], defer.Deferred], option: bytes) -> None:
        # A refusal (or the connection closing first) is an answer, not an error.
        request(option).addErrback(lambda _: None)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.closed:
            return
        self.closed = True
        self._finish_flow(reason)
        if not self.opened:
            if self.violation is not None:
                self.attempt.fail(f"device protocol error: {self.violation}")
            else:
                self.attempt.fail(self._lost_reason(reason, "login"))
            return
        name = self.attempt.config.name
        if self.violation is not None:
            self.sink.failed(f"{name}: device protocol error: {self.violation}")
        elif reason.check(error.ConnectionDone):
            if self.held:  # the command ended the shell itself: no prompt came
                self.sink.stdout(bytes(self.held))
                self.held.clear()
            self.sink.eof()
            self.sink.exited(ExitInfo(status=self.exit_status))
        else:
            self.sink.failed(f"{name}: {self._lost_reason(reason, 'session')}")

    def _finish_flow(self, reason: Failure) -> None:
        attempt = self.attempt
        flow, attempt.flow = attempt.flow, None
        if flow is None:
            return
        if self.violation is not None:
            flow.close(f"device protocol error: {self.violation}")
        else:
            flow.close(self._lost_reason(reason, "session" if self.opened else "login"))
        if attempt.flow_done is not None:
            attempt.flow_done(flow)

    def _lost_reason(self, reason: Failure, during: str) -> str:
        if reason.check(error.ConnectionDone):
            return f"connection closed by the device during {during}"
        return f"connection to the device lost during {during} ({reason.getErrorMessage()})"

    def protocol_violation(self, message: str) -> None:
        self.violation = message

    # -- options --------------------------------------------------------------------

    def enableLocal(self, option: bytes) -> bool:
        allowed = _LOCAL_OPTIONS.get(option)
        return allowed is not None and allowed(self.request)

    def enableRemote(self, option: bytes) -> bool:
        allowed = _REMOTE_OPTIONS.get(option)
        return allowed is not None and allowed(self.request)

    def disableLocal(self, option: bytes) -> None:
        if option == t.NAWS:
            self._naws_sent = None

    def disableRemote(self, option: bytes) -> None:
        pass

    def options_changed(self) -> None:
        # Called after each option command, once Telnet has written its reply: only then
        # may a NAWS subnegotiation follow a WILL NAWS.
        if self.size is not None and self.size != self._naws_sent:
            self._send_naws(self.size)

    def _send_naws(self, size: WindowSize) -> None:
        if self.transport._local_enabled(t.NAWS):
            self.transport.requestNegotiation(t.NAWS, naws_payload(size))
            self._naws_sent = size

    def subnegotiation(self, option: bytes, data: bytes) -> None:
        if option == TTYPE and data[:1] == TTYPE_SEND and self.transport._local_enabled(TTYPE):
            # RFC 1091 lets the server cycle through a list by asking again; we have one
            # name, so a device asking forever gets a bounded number of answers.
            self._ttype_replies += 1
            if self._ttype_replies <= 8:
                self.transport.requestNegotiation(TTYPE, TTYPE_IS + terminal_type(self.request))

    # -- received data ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        if self.opened:
            if self.attempt.shell_re is None:
                self.sink.stdout(data)
            else:
                self._command_output(data)
            return
        self.window += data
        del self.window[:-PROMPT_WINDOW]
        self._login_step()

    def _login_step(self) -> None:
        if self.phase == "login" and self.attempt.login_re.search(self.window):
            self._answer(self.attempt.username)
            self.phase = "password" if self.attempt.password_re is not None else self.attempt.after_login()
        elif self.phase == "password" and self.attempt.password_re.search(self.window):
            password = self.attempt.password
            if password is None:
                self.attempt.fail("no password to answer the device's prompt")
                self.abort()
                return
            self._answer(password)
            self.phase = self.attempt.after_login()
        elif self.phase == "shell" and self._prompt_at_end(self.window) is not None:
            self.phase = "open"
        if self.phase == "open":
            self._open()

    def _answer(self, text: str) -> None:
        self.window.clear()
        self.transport.write(text.encode("utf-8") + self._enter())

    def _enter(self) -> bytes:
        # In BINARY the device's terminal gets the bytes as typed (Enter is CR); in NVT a
        # CR LF is the end of line the device's telnetd folds into one CR.
        return b"\r" if self.transport._local_enabled(BINARY) else b"\r\n"

    def _prompt_at_end(self, data: bytes | bytearray) -> int | None:
        """Where the shell prompt starts if ``data`` ends with it, else None."""
        shell_re = self.attempt.shell_re
        found = shell_re.search(data) if shell_re is not None else None
        return found.start() if found is not None else None

    def _open(self) -> None:
        if self.opened:
            return
        self.opened = True
        self.window = bytearray()
        if self.request.command is not None:
            enter = self._enter()
            if self.attempt.shell_re is not None:
                # ``exit`` waits for the next prompt: typed now, the shell could end (and
                # some telnetds hang up) before the command's output has been read.
                self.running = True
                self.echo = self.request.command
                self.transport.write(self.request.command + enter)
            else:
                self.transport.write(self.request.command + enter + b"exit" + enter)
        self.attempt.opened(self)

    def _command_output(self, data: bytes) -> None:
        """Output of a command run between two shell prompts: whole lines pass at once;
        the unfinished last line waits, since the next prompt would stand there."""
        if self.status_reply is not None:
            self._status_output(data)
            return
        if not self.running:
            return  # after ``exit``: the device's goodbye is not the command's output
        data = bytes(self.held) + data
        cut = data.rfind(b"\n") + 1
        complete, self.held = data[:cut], bytearray(data[cut:])
        if self.echo is not None and complete:
            # The device's terminal echoes what we typed at its prompt: not output.
            end = complete.find(b"\n")
            if complete[:end].rstrip(b"\r") == self.echo:
                complete = complete[end + 1 :]
            self.echo = None
        prompt = self._prompt_at_end(self.held)
        if prompt is not None:
            complete += bytes(self.held[:prompt])
            self.held.clear()
            self.running = False
            if self.attempt.status_marker is not None:
                # The shell's $? is still the command's: ask for it before ``exit``.
                self.status_reply = bytearray()
                self.transport.write(b"echo " + self.attempt.status_marker + b"$?" + self._enter())
            else:
                self.transport.write(b"exit" + self._enter())
        elif len(self.held) > PROMPT_WINDOW:  # too long for a prompt line
            complete += bytes(self.held)
            self.held.clear()
        if complete:
            self.sink.stdout(complete)

    def _status_output(self, data: bytes) -> None:
        """The reply to the marker command, up to the next prompt: never shown."""
        reply = self.status_reply
        assert reply is not None
        reply += data
        if self._prompt_at_end(reply) is None and len(reply) <= MAX_STATUS_REPLY:
            return
        marker = re.escape(self.attempt.status_marker or b"")
        found = re.search(rb"(?m)^" + marker + rb"(\d{1,3})\r?$", reply)
        if found is not None:
            self.exit_status = int(found.group(1))
        else:
            log.warn(
                "telnet device {where}: no exit status after the marker command; reporting 0",
                where=self.attempt.where,
            )
        self.status_reply = None
        self.transport.write(b"exit" + self._enter())

    # -- IUpstreamSession ---------------------------------------------------------------

    @property
    def description(self) -> str:
        if self.transport is None:
            return "telnet"
        ours, theirs = [], []
        for option, name in _OPTION_NAMES.items():
            state = self.transport.options.get(option)
            if state is not None and state.us.state == "yes":
                ours.append(name)
            if state is not None and state.him.state == "yes":
                theirs.append(name)
        return (
            f"telnet {self.transport._peer()} "
            f"options: us=[{','.join(ours)}] them=[{','.join(theirs)}]"
        )

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def send_eof(self) -> None:
        if not self.closed and self.request.pty is None and self.request.command is None:
            self.transport.write(b"\x04")

    def resize(self, size: WindowSize) -> None:
        self.size = size
        if not self.closed:
            self._send_naws(size)

    def send_signal(self, name: str) -> None:
        if self.closed:
            return
        if name == "INT":
            self.transport.send_command(t.IP)
        else:
            log.debug("telnet has no way to send SIG{name}; dropped", name=name)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.abort()

    def abort(self) -> None:
        # Not loseConnection: that waits for the device to read what we still have queued,
        # forever if it never does. Telnet has no graceful close to lose.
        if self.transport is not None and self.transport.transport is not None:
            self.transport.transport.abortConnection()

    def pauseProducing(self) -> None:
        if not self.closed:
            self.transport.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.closed:
            self.transport.transport.resumeProducing()


class _Factory(protocol.ClientFactory):
    noisy = False

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt

    def buildProtocol(self, addr: Any) -> _DeviceTransport:
        transport = _DeviceTransport(lambda: _DeviceProtocol(self.attempt))
        transport.factory = self
        transport.flow = self.attempt.flow
        return transport

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.attempt.connect_failed(reason)


_CONNECT_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (error.ConnectionRefusedError, "connection refused by {where}"),
    (error.DNSLookupError, "cannot resolve {host}"),
    (error.TimeoutError, "timed out connecting to {where}"),
    (error.NoRouteError, "{where} is unreachable"),
)


class _Attempt:
    """One connection attempt: the connector's Deferred, its canceller and the login timer."""

    def __init__(
        self,
        reactor: Any,
        config: TargetConfig,
        request: SessionRequest,
        sink: UpstreamSink,
        *,
        username: str,
        password: str | None,
        login_re: re.Pattern[bytes] | None,
        password_re: re.Pattern[bytes] | None,
        shell_re: re.Pattern[bytes] | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.request = request
        self.sink = sink
        self.username = username
        self.password = password
        self.login_re = login_re
        self.password_re = password_re
        # Only a command waits for the shell's prompt; a shell session shows everything.
        self.shell_re = shell_re if request.command is not None else None
        # exit_status = "posix" (needs the prompt): the marker the status line starts with.
        self.status_marker: bytes | None = None
        if self.shell_re is not None and config.exit_status == "posix":
            self.status_marker = STATUS_MARKER + secrets.token_hex(4).encode("ascii") + b":"
        self.result: defer.Deferred = defer.Deferred(self._cancel)
        self.where = f"{config.host}:{config.port}"
        self.connector: Any = None
        self.session: _DeviceProtocol | None = None
        self.login_timer: Any = None
        self.flow: FlowRecorder | None = None
        self.flow_done: Callable[[FlowRecorder], None] | None = None

    def first_phase(self) -> str:
        if self.login_re is not None:
            return "login"
        if self.password_re is not None:
            return "password"
        return self.after_login()

    def after_login(self) -> str:
        return "shell" if self.shell_re is not None else "open"

    def start(self) -> defer.Deferred:
        timeout = self.config.connect_timeout * LOGIN_TIMEOUT_SHARE
        self.connector = self.reactor.connectTCP(
            self.config.host, self.config.port, _Factory(self), timeout=timeout
        )
        if self.first_phase() != "open":
            self.login_timer = self.reactor.callLater(timeout, self._login_timed_out)
        return self.result

    def _settled(self) -> bool:
        if self.login_timer is not None and self.login_timer.active():
            self.login_timer.cancel()
        self.login_timer = None
        return self.result.called

    def connect_failed(self, reason: Failure) -> None:
        for kind, text in _CONNECT_ERRORS:
            if reason.check(kind):
                message = text.format(where=self.where, host=self.config.host)
                break
        else:
            message = f"cannot connect to {self.where} ({reason.getErrorMessage()})"
        self.fail(message)

    def fail(self, message: str) -> None:
        if not self._settled():
            self.result.errback(UpstreamFailure(message))

    def opened(self, session: _DeviceProtocol) -> None:
        if self._settled():
            session.close()
            return
        self.result.callback(session)

    def _login_timed_out(self) -> None:
        self.login_timer = None
        session = self._current_session()
        phase = session.phase if session is not None else "connect"
        if phase == "connect":
            self.fail(f"timed out connecting to {self.where}")
        else:
            self.fail(f"{phase} prompt never seen from {self.where}")
        if session is not None:
            session.close()
        elif self.connector is not None:
            self.connector.disconnect()

    def _current_session(self) -> _DeviceProtocol | None:
        return self.session

    def _cancel(self, result: defer.Deferred) -> None:
        self._settled()
        session = self._current_session()
        if session is not None:
            session.close()
        elif self.connector is not None:
            self.connector.disconnect()


class TelnetTarget(UpstreamTarget):
    """Upstream telnet device; ``open_session`` returns a BridgeSession."""

    def __init__(
        self,
        reactor: IReactorTCP | IReactorTime | Any,
        config: TargetConfig,
        known_hosts: Any = None,
    ) -> None:
        # known_hosts: telnet has no host key; accepted for the common target signature.
        super().__init__(reactor, config)
        self.login_re = self._compile(config.login_prompt)
        self.password_re = self._compile(config.password_prompt)
        # The prompt must end the output received so far (a prompt inside a line of the
        # command's output is not one).
        self.shell_re = (
            None
            if config.shell_prompt is None
            else re.compile(b"(?:" + config.shell_prompt.encode("utf-8") + b")\\Z")
        )

    @staticmethod
    def _compile(pattern: str | None) -> re.Pattern[bytes] | None:
        return None if pattern is None else re.compile(pattern.encode("utf-8"))

    def connector(
        self, username: str, password: str | None
    ) -> Callable[[SessionRequest, UpstreamSink], defer.Deferred]:
        """``connect(request, sink)`` for the bridge, with the upstream credentials bound."""
        config = self.config
        login, secret = upstream_credentials(config, username, password)

        def connect(request: SessionRequest, sink: UpstreamSink) -> defer.Deferred:
            attempt = _Attempt(
                self.reactor, config, request, sink,
                username=login, password=secret,
                login_re=self.login_re, password_re=self.password_re,
                shell_re=self.shell_re,
            )  # fmt: skip
            attempt.flow = self.new_flow(sink, login)
            attempt.flow_done = self.flow_done
            return attempt.start()

        return connect

