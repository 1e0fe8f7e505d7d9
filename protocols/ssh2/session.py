"""The SSH-2 "session" channel, glued to the shared session model.

One :class:`SessionChannel` per session channel: it collects pty-req and env, starts the
target on shell, exec or subsystem through ``IGatewayUser.open_session`` (a subsystem the
gateway does not know is refused at the request; what serves a known one is the Router's
choice), and then carries data, EOF, window changes, signals and the exit status between
client and target. It is the target's ISessionClient, and an IPushProducer for the target
(client input).

Flow control, both ways:
- out: Conch's channel buffers writes beyond the client's window without limit; when the
  window is exhausted (Conch calls ``stopWriting``) the target's output producer is
  paused, and resumed when the client grants more window (``startWriting``);
- in: while the target has paused us (its program does not read stdin) the connection
  holds back WINDOW_ADJUST, so the client stops sending once the window is used up.

A client may close the channel before the program has ended: PuTTY and OpenSSH with
ControlMaster send CLOSE as soon as EOF has gone both ways. Like sshd, the channel then
still waits for the program and sends its exit-status (or exit-signal) before its own
CLOSE; the program gets EOF on its input and its further output is dropped (and read, so
that it never blocks on it). Only a program that has not ended after EXIT_STATUS_WAIT
seconds is stopped (the target is closed: a local program is hung up, then killed) and the
channel closed without a status. This holds for every target, local and upstream alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.conch.ssh import channel as conch_channel
from twisted.conch.ssh import connection
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from protocols.session import (
    AGENT_FORWARDING,
    PTY,
    X11_FORWARDING,
    ExitInfo,
    IGatewayUser,
    ISessionClient,
    ISessionTarget,
    PtyRequest,
    SessionRequest,
    WindowSize,
    addresses_of,
)
from protocols.session_values import KNOWN_SUBSYSTEMS
from protocols.ssh2.logs import quiet_logger
from protocols.ssh2.wire import Reader, WireError, string, u32

log = Logger()

MAX_TERM = 256
MAX_MODES = 4096  # at most ~800 encoded modes; RFC 4254 defines fewer than 100
MAX_COMMAND = 256 * 1024
MAX_ENV_NAME = 256
MAX_ENV_VALUE = 32 * 1024
MAX_ENV_VARS = 64
MAX_SIGNAL = 32
MAX_SUBSYSTEM = 64
MAX_DIMENSION = 0xFFFF  # struct winsize holds unsigned shorts

# After the client closed the channel, how long the program may take to end before it is
# stopped and the channel closed without an exit status. Long enough for a program that
# closed its output before its last work (`exec >log 2>&1; ...; exit 3`), short enough that
# one that never ends does not hold the client (which waits for our CLOSE) for long.
EXIT_STATUS_WAIT = 10.0

# Terminal mode opcodes RFC 4254 section 8 defines (plus IUTF8, 42, RFC 8160).
KNOWN_MODES = frozenset(
    [*range(1, 19), *range(30, 43), *range(50, 63), *range(70, 76), *range(90, 94), 128, 129]
)


def parse_modes(encoded: bytes) -> tuple[tuple[int, int], ...]:
    """Encoded terminal modes -> (opcode, value) pairs; unknown opcodes are dropped."""
    reader = Reader(encoded)
    modes = []
    while reader.remaining():
        opcode = reader.byte()
        if opcode == 0 or opcode >= 160:  # TTY_OP_END; 160+ are undefined and end parsing
            break
        value = reader.uint32()
        if opcode in KNOWN_MODES:
            modes.append((opcode, value))
    return tuple(modes)


def _printable(text: str) -> str:
    # A name from the client, for the log and the flow record: no control characters.
    return "".join(c if c.isprintable() else "?" for c in text[:MAX_SUBSYSTEM])


def _size(reader: Reader) -> WindowSize:
    cols, rows, xpixel, ypixel = (min(reader.uint32(), MAX_DIMENSION) for _ in range(4))
    return WindowSize(rows=rows, cols=cols, xpixel=xpixel, ypixel=ypixel)


@implementer(ISessionClient, IPushProducer)
class SessionChannel(conch_channel.SSHChannel):
    name = b"session"
    _log = quiet_logger(__name__ + ".conch")

    def __init__(
        self,
        user: IGatewayUser,
        remoteWindow: int,
        remoteMaxPacket: int,
        settings: Any,
        clock: IReactorTime,
    ) -> None:
        super().__init__(
            localWindow=settings.channel_window,
            localMaxPacket=settings.channel_max_packet,
            remoteWindow=remoteWindow,
            remoteMaxPacket=remoteMaxPacket,
        )
        self.user = user
        self.clock = clock
        self.request = SessionRequest()
        self.target: ISessionTarget | None = None
        self.started = False
        self._start_after_reply = False
        self._eof_from_client = False
        self._output: Any = None  # the target's output producer
        self.input_paused = False  # read by GatewayConnection.adjustWindow
        self._input_stopped = False
        self._eof_wanted = False
        self._eof_sent = False
        self._exit: ExitInfo | None = None
        self._exit_sent = False
        # The client closed the channel; we wait (bounded) for the program's exit.
        self._client_closed = False
        self._exit_wait: IDelayedCall | None = None
        # The target's output is paused while either the client's window is used up or
        # the connection's TCP send buffer is full.
        self._window_blocked = False
        self._tcp_blocked = False
        self._output_paused = False
        self._subsystem_asked = ""  # the name in the last subsystem request, for the record

    def logPrefix(self) -> str:
        return f"SSHChannel session ({self.id})"

    def channelOpen(self, specificData: bytes) -> None:
        self._tcp_blocked = bool(getattr(self.conn.transport, "tcp_paused", False))

    # -- channel requests -----------------------------------------------------------------

    def requestReceived(self, requestType: bytes, data: bytes) -> bool:
        handler = self._requests.get(requestType)
        flow = self._flow()
        if handler is None:
            log.debug("ssh2: unsupported channel request {type!r}", type=requestType)
            if flow is not None:
                flow.request(requestType[:64].decode("ascii", "replace"), "failure")
            return False
        ok = handler(self, Reader(data))
        if flow is not None:
            name = requestType.decode("ascii")
            if requestType == b"subsystem":
                # The record names the subsystem asked for ("subsystem sftp").
                name += " " + _printable(self._subsystem_asked)
            flow.request(name, "success" if ok else "failure")
        return ok

    def _flow(self) -> Any:
        """The connection's flow recorder, or None when recording is off."""
        record = getattr(getattr(self.conn, "transport", None), "record", None)
        return getattr(record, "flow", None)

    def _pty_req(self, reader: Reader) -> bool:
        term = reader.text(MAX_TERM)
        size = _size(reader)
        modes = parse_modes(reader.string(MAX_MODES))
        reader.end()
        if self.started or self.request.pty is not None:
            return False
        if self._restricted(PTY):
            return False  # the session goes on without a pty, as with sshd
        self.request.pty = PtyRequest(term=term, size=size, modes=modes)
        return True

    def _restricted(self, feature: str) -> bool:
        """Whether the login's restrictions refuse ``feature`` (logged with the reason)."""
        why = self.user.restrictions.refusal(feature)
        if why is not None:
            log.info(
                "ssh2: {peer}: channel {id}: refused {feature}: {why}",
                peer=self._peer(),
                id=self.id,
                feature=feature,
                why=why,
            )
        return why is not None

    def _peer(self) -> str:
        record = getattr(getattr(self.conn, "transport", None), "record", None)
        return record.peer if record is not None else "-"

    def _forwarding_req(self, feature: str, reader: Reader) -> bool:
        # Agent and X11 forwarding are not offered over SSH-2; a login whose key forbids
        # them says so in the log, so that the refusal's reason is on record.
        reader.rest()
        if not self._restricted(feature):
            log.debug("ssh2: {feature} is not offered over SSH-2", feature=feature)
        return False

    def _env(self, reader: Reader) -> bool:
        name = reader.text(MAX_ENV_NAME)
        raw = reader.string(MAX_ENV_VALUE)
        reader.end()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            return False
        if self.started or "\0" in value or "=" in name or not name:
            return False
        if len(self.request.env) >= MAX_ENV_VARS or not self.user.env_allowed(name):
            return False
        self.request.env[name] = value
        return True

    def _shell(self, reader: Reader) -> bool:
        reader.end()
        return self._prepare(None)

    def _exec(self, reader: Reader) -> bool:
        command = reader.string(MAX_COMMAND)
        reader.end()
        return self._prepare(command)

    def _subsystem(self, reader: Reader) -> bool:
        raw = reader.string(MAX_SUBSYSTEM)
        reader.end()
        name = self._subsystem_asked = raw.decode("utf-8", "replace")
        if name not in KNOWN_SUBSYSTEMS:
            # As sshd: a subsystem nobody serves fails the request (the client says
            # "subsystem request failed on channel N").
            log.info(
                "ssh2: {peer}: channel {id}: refused subsystem {name!r}: unknown subsystem",
                peer=self._peer(),
                id=self.id,
                name=_printable(name),
            )
            return False
        # What serves it (a program on the gateway host, the device's own, or nothing on
        # a device that has none) is the Router's choice once the session starts.
        return self._prepare(None, subsystem=name)

    def _prepare(self, command: bytes | None, *, subsystem: str | None = None) -> bool:
        if self.started or self.closing or self.localClosed:
            return False
        self.started = True
        self.request.command = command
        self.request.subsystem = subsystem
        # The connection's two ends, for the program's SSH_CLIENT and SSH_CONNECTION.
        self.request.addresses = addresses_of(
            getattr(getattr(self.conn, "transport", None), "transport", None)
        )
        # Start only after the reply went out: a program that fails at once must not
        # close the channel before the client has its CHANNEL_SUCCESS.
        self._start_after_reply = True
        return True

    def _window_change(self, reader: Reader) -> bool:
        size = _size(reader)
        reader.end()
        if self.target is not None:
            self.target.resize(size)
        elif self.request.pty is not None:
            pty = self.request.pty
            self.request.pty = PtyRequest(term=pty.term, size=size, modes=pty.modes)
        return True

    def _signal(self, reader: Reader) -> bool:
        name = reader.text(MAX_SIGNAL)
        reader.end()
        if self.target is None:
            return False
        self.target.send_signal(name)
        return True

    _requests: dict[bytes, Callable[[SessionChannel, Reader], bool]] = {
        b"pty-req": _pty_req,
        b"env": _env,
        b"shell": _shell,
        b"exec": _exec,
        b"subsystem": _subsystem,
        b"window-change": _window_change,
        b"signal": _signal,
        b"x11-req": lambda self, reader: self._forwarding_req(X11_FORWARDING, reader),
        b"auth-agent-req@openssh.com": lambda self, reader: self._forwarding_req(
            AGENT_FORWARDING, reader
        ),
    }

    def request_answered(self) -> None:
        """Called by GatewayConnection once the reply to a request has been sent."""
        if not self._start_after_reply:
            return
        self._start_after_reply = False
        try:
            target = self.user.open_session(self.request, self)
        except Exception:
            log.failure("ssh2: open_session failed")
            self.write_stderr(b"gateway: the session could not be started\r\n")
            self.exited(ExitInfo(status=255))
            return
        if self.localClosed or self._exit is not None:
            # The target ended (or the client left) while starting.
            self.target = target
            if self.localClosed:
                self._release()
            return
        self.target = target
        target.registerProducer(self, True)
        if self._eof_from_client:
            target.close_stdin()

    # -- client -> target -----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.target is not None and not self._input_stopped:
            self.target.write_stdin(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        pass  # clients have no stderr to send

    def eofReceived(self) -> None:
        self._eof_from_client = True
        if self.target is not None:
            self.target.close_stdin()

    def closeReceived(self) -> None:
        # The client will read nothing more: drop what is buffered. Its CLOSE does not end
        # the program: wait for the exit status, so that it goes out before our CLOSE.
        self.buf = b""
        self.extBuf = []
        self._client_closed = True
        if self.localClosed:
            return  # our CLOSE crossed theirs
        if self.target is None or self._exit is not None:
            # Nothing runs (never started, or the start failed), or it has ended already.
            if self._exit is None:
                self.conn.sendClose(self)
            else:
                self._maybe_finish()
            return
        if not self._eof_from_client:
            self._eof_from_client = True
            self.target.close_stdin()
        self._update_output()  # read on, and drop, what the program still writes
        self._exit_wait = self.clock.callLater(EXIT_STATUS_WAIT, self._exit_wait_expired)

    def _exit_wait_expired(self) -> None:
        self._exit_wait = None
        if self.localClosed:
            return
        log.info(
            "ssh2: channel {id}: no exit status {wait:g} s after the client closed; "
            "stopping the program",
            id=self.id,
            wait=EXIT_STATUS_WAIT,
        )
        self._release()
        self.conn.sendClose(self)

    def closed(self) -> None:
        if self._exit_wait is not None and self._exit_wait.active():
            self._exit_wait.cancel()
        self._exit_wait = None
        self._release()

    def _release(self) -> None:
        target, self.target = self.target, None
        self._output = None
        if target is not None:
            try:
                target.close()
            except Exception:
                log.failure("ssh2: error closing a session target")

    # -- IPushProducer: client input, paused by the target --------------------------------

    def pauseProducing(self) -> None:
        self.input_paused = True

    def resumeProducing(self) -> None:
        self.input_paused = False
        self._grant_window()

    def stopProducing(self) -> None:
        # The target reads no more input; keep the window open and discard what comes.
        self._input_stopped = True
        self.input_paused = False
        self._grant_window()

    def _grant_window(self) -> None:
        if self.conn is None or self.localClosed or self.remoteClosed:
            return
        if self.localWindowLeft < self.localWindowSize // 2:
            self.conn.adjustWindow(self, self.localWindowSize - self.localWindowLeft)

    # -- ISessionClient: target -> client -------------------------------------------------

    @property
    def description(self) -> str:
        record = getattr(getattr(self.conn, "transport", None), "record", None)
        return record.describe() if record is not None else "ssh2"

    @property
    def flow_id(self) -> str | None:
        """The id of this connection's flow record (upstream legs link to it)."""
        flow = self._flow()
        return flow.id if flow is not None else None

    def write_stdout(self, data: bytes) -> None:
        if data and not self.localClosed and not self._eof_wanted and not self._client_closed:
            self.write(data)

    def write_stderr(self, data: bytes) -> None:
        if data and not self.localClosed and not self._eof_wanted and not self._client_closed:
            self.writeExtended(connection.EXTENDED_DATA_STDERR, data)

    def send_eof(self) -> None:
        self._eof_wanted = True
        self._maybe_finish()

    def exited(self, info: ExitInfo) -> None:
        if self._exit is not None:
            return
        self._exit = info
        self._eof_wanted = True
        self._maybe_finish()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._output = producer
        self._output_paused = False
        self._update_output()

    def unregisterProducer(self) -> None:
        self._output = None

    # Conch calls these when the client's window is exhausted / open again.
    def stopWriting(self) -> None:
        self._window_blocked = True
        self._update_output()

    def startWriting(self) -> None:
        self._window_blocked = False
        self._update_output()

    def set_tcp_paused(self, paused: bool) -> None:
        """Called by the transport when the TCP send buffer fills up or drains."""
        self._tcp_blocked = paused
        self._update_output()

    def _update_output(self) -> None:
        # Output after the client's CLOSE is dropped, so nothing holds it back.
        paused = (self._window_blocked or self._tcp_blocked) and not self._client_closed
        if self._output is None or paused == self._output_paused:
            return
        self._output_paused = paused
        if paused:
            self._output.pauseProducing()
        else:
            self._output.resumeProducing()

    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        """EOF, exit status and close, in that order, once buffered output is out."""
        if self.localClosed or self.buf or self.extBuf:
            return
        if self._eof_wanted and not self._eof_sent and not self._client_closed:
            self._eof_sent = True
            self.conn.sendEOF(self)
        if self._exit is not None and not self._exit_sent:
            self._exit_sent = True
            info = self._exit
            flow = self._flow()
            if flow is not None:
                flow.exit(info.status if info.signal is None else None, info.signal)
                flow.next_stage("close")
            if info.signal is not None:
                payload = (
                    string(info.signal.encode("ascii", "replace"))
                    + (b"\x01" if info.core_dumped else b"\x00")
                    + string(info.message.encode("utf-8", "replace"))
                    + string(b"")
                )
                self.conn.sendRequest(self, b"exit-signal", payload)
            else:
                status = info.status if info.status is not None else 255
                self.conn.sendRequest(self, b"exit-status", u32(status & 0xFFFFFFFF))
            self.loseConnection()


__all__ = ["SessionChannel", "parse_modes", "WireError"]
