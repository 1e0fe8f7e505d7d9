"""The gateway client's SSH-2 connection service and its one session channel: pty-req
with the client's terminal, then exec, shell or a subsystem (the client's sftp, relayed);
output to the sink, input from the bridge with flow control both ways
(:class:`UpstreamSession`), and the exit status or signal. The upstream may not open
channels towards us (no forwarding)."""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch.ssh import channel, common, connection, session, transport
from twisted.python.failure import Failure

from protocols.session import ExitInfo, WindowSize
from protocols.ssh2.channel_data import ChannelDataPackets
from protocols.ssh2.client_state import ClientAttempt, SSH2ClientError, log, short
from protocols.ssh2.logs import quiet_logger

_conch_log = quiet_logger("gateway.targets.ssh2.conch")

LOCAL_WINDOW = 256 * 1024  # what the upstream may send before we grant more
LOCAL_MAX_PACKET = 32 * 1024
MAX_SEND_PACKET = 32 * 1024


class ClientConnection(ChannelDataPackets, connection.SSHConnection):
    _log = _conch_log

    def __init__(self, attempt: ClientAttempt) -> None:
        super().__init__()
        self.attempt = attempt

    def serviceStarted(self) -> None:
        super().serviceStarted()
        chan = SessionChannel(self.attempt, conn=self)
        self.attempt.channel = chan
        self.openChannel(chan)

    def data_refused(self, channel: Any) -> None:
        log.info("ssh2 upstream {name}: data beyond window or packet size", name=self.attempt.name)

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        # Held back while the bridge cannot take output: the upstream then stops once
        # the window we already granted is used up.
        if getattr(channel, "output_paused", False):
            return
        super().adjustWindow(channel, bytesToAdd)

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        # The upstream may not open channels towards the gateway (no forwarding).
        try:
            _kind, rest = common.getNS(packet)
            (sender,) = struct.unpack(">L", rest[:4])
        except Exception:
            self.transport.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad channel open")
            return
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
            + common.NS(b"not allowed")
            + common.NS(b""),
        )


class SessionChannel(channel.SSHChannel):
    _log = _conch_log
    name = b"session"

    def __init__(self, attempt: ClientAttempt, conn: ClientConnection) -> None:
        super().__init__(localWindow=LOCAL_WINDOW, localMaxPacket=LOCAL_MAX_PACKET, conn=conn)
        self.attempt = attempt
        self.output_paused = False
        self.input_paused = False
        self.exit: ExitInfo | None = None
        self.close_received = False
        self.eof_pending = False

    # -- opening -----------------------------------------------------------------------

    def channelOpen(self, specificData: bytes) -> None:
        # A server announcing a zero or huge packet size must not make us send empty
        # or giant packets.
        self.remoteMaxPacket = max(256, min(self.remoteMaxPacket, MAX_SEND_PACKET))
        request = self.attempt.request
        pty = request.pty
        if pty is None:
            self._start(None)
            return
        size = pty.size
        modes = (
            b"".join(
                struct.pack(">BL", op, value)
                for op, value in pty.modes
                if 0 < op < 160 and 0 <= value <= 0xFFFFFFFF  # RFC 4254 section 8
            )
            + b"\x00"
        )
        data = session.packRequest_pty_req(
            pty.term.encode("ascii", "replace"),
            (size.rows, size.cols, size.xpixel, size.ypixel),
            modes,
        )
        d = self.conn.sendRequest(self, b"pty-req", data, wantReply=True)
        d.addBoth(self._start)

    def _start(self, result: Any) -> None:
        if self.localClosed or self.attempt.deferred.called:
            return  # the channel or the connection went while pty-req was pending
        if isinstance(result, Failure):
            # OpenSSH's client carries on without a terminal; so do we.
            log.info("ssh2 upstream {name}: pty request refused", name=self.attempt.name)
        if self.attempt.flow is not None and self.attempt.request.pty is not None:
            self.attempt.flow.request("pty-req", "failure" if isinstance(result, Failure) else "success")
        request = self.attempt.request
        if request.subsystem is not None:
            # Relayed as asked: the device's own server (its sftp-server) speaks to the
            # client, through this channel and its windows, as exec output does.
            d = self.conn.sendRequest(
                self, b"subsystem", common.NS(request.subsystem.encode("utf-8")), wantReply=True
            )
        elif request.command is None:
            d = self.conn.sendRequest(self, b"shell", b"", wantReply=True)
        else:
            d = self.conn.sendRequest(self, b"exec", common.NS(request.command), wantReply=True)
        d.addCallbacks(self._started, self._refused)

    def _flow_exec(self, result: str) -> None:
        if self.attempt.flow is not None:
            request = self.attempt.request
            if request.subsystem is not None:
                name = f"subsystem {request.subsystem}"
            else:
                name = "shell" if request.command is None else "exec"
            self.attempt.flow.request(name, result)

    def _started(self, _: Any) -> None:
        self._flow_exec("success")
        upstream = UpstreamSession(self)
        self.attempt.opened(upstream)

    def _refused(self, failure: Failure) -> None:
        self._flow_exec("failure")
        request = self.attempt.request
        if request.subsystem is not None:
            what = f"{short(request.subsystem.encode('utf-8'))} subsystem"
        else:
            what = "shell" if request.command is None else "command"
        self.attempt.fail(SSH2ClientError(f"upstream refused to start the {what}"))
        self.attempt.drop()

    def openFailed(self, reason: Any) -> None:
        text = short(getattr(reason, "desc", b"") or str(reason))
        self.attempt.fail(SSH2ClientError(f"upstream refused the session ({text})"))
        self.attempt.drop()

    # -- data --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self.attempt.finished:
            self.attempt.sink.stdout(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        if dataType == connection.EXTENDED_DATA_STDERR and not self.attempt.finished:
            self.attempt.sink.stderr(data)

    def eofReceived(self) -> None:
        if not self.attempt.finished:
            self.attempt.sink.eof()

    def send_eof_when_flushed(self) -> None:
        # Conch sends EOF at once, ahead of input still waiting for window; the
        # upstream would then drop that input.
        self.eof_pending = True
        self._maybe_eof()

    def _maybe_eof(self) -> None:
        if self.eof_pending and not self.buf and not self.localClosed:
            self.eof_pending = False
            self.conn.sendEOF(self)

    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        self._maybe_eof()

    def stopWriting(self) -> None:
        # The upstream's window is used up: hold the client's input.
        if not self.input_paused and not self.attempt.finished:
            self.input_paused = True
            self.attempt.sink.pause_input()

    def startWriting(self) -> None:
        if self.input_paused and not self.attempt.finished:
            self.input_paused = False
            self.attempt.sink.resume_input()

    def request_exit_status(self, data: bytes) -> int:
        if len(data) != 4:
            return 0
        (status,) = struct.unpack(">L", data)
        self.exit = ExitInfo(status=status & 0xFF)
        if self.attempt.flow is not None:
            self.attempt.flow.exit(self.exit.status)
        return 1

    def request_exit_signal(self, data: bytes) -> int:
        try:
            name, rest = common.getNS(data)
            core = rest[:1] not in (b"", b"\x00")
            message, _ = common.getNS(rest[1:])
        except Exception:
            return 0
        signame = short(name)[:32]
        if signame.startswith("SIG"):
            signame = signame[3:]
        self.exit = ExitInfo(signal=signame, core_dumped=core, message=short(message))
        if self.attempt.flow is not None:
            self.attempt.flow.exit(None, signame)
        return 1

    def closeReceived(self) -> None:
        self.close_received = True
        # The upstream will never grant window again. Conch's loseConnection waits for
        # its buffer to drain before answering the close, so input still waiting for
        # window (a client still sending when the program exited) would hang the
        # session: it has nowhere to go, drop it.
        self.buf = b""
        self.extBuf = []
        self.eof_pending = False
        super().closeReceived()

    def closed(self) -> None:
        attempt = self.attempt
        if attempt.phase != "open":
            if not attempt.deferred.called:
                attempt.fail(SSH2ClientError("upstream closed the session before it started"))
                attempt.drop()
            return
        if not self.close_received:
            return  # the connection went: connection_lost reports it
        if not attempt.finished:
            attempt.finished = True
            attempt.sink.exited(self.exit or ExitInfo(status=255))
        # One session per upstream connection: it ends with the channel.
        if attempt.transport is not None:
            attempt.transport.hang_up()


class UpstreamSession:
    """The open session, as the bridge drives it."""

    def __init__(self, chan: SessionChannel) -> None:
        self.channel = chan
        self.conn = chan.conn
        transport_ = chan.attempt.transport
        assert transport_ is not None
        self.description = transport_.description()
        self.algorithms = transport_.negotiated_algorithms()

    def write(self, data: bytes) -> None:
        if not self.channel.localClosed and not self.channel.closing:
            self.channel.write(data)

    def send_eof(self) -> None:
        self.channel.send_eof_when_flushed()

    def resize(self, size: WindowSize) -> None:
        if not self.channel.localClosed:
            geometry = (size.rows, size.cols, size.xpixel, size.ypixel)
            self.conn.sendRequest(
                self.channel, b"window-change", session.packRequest_window_change(geometry)
            )

    def send_signal(self, name: str) -> None:
        if self.channel.localClosed or not (name.isascii() and name.isalnum()) or len(name) > 16:
            return
        self.conn.sendRequest(self.channel, b"signal", common.NS(name.encode("ascii")))

    def close(self) -> None:
        attempt = self.channel.attempt
        attempt.finished = True
        attempt.drop()

    def pauseProducing(self) -> None:
        self.channel.output_paused = True

    def resumeProducing(self) -> None:
        chan = self.channel
        if not chan.output_paused:
            return
        chan.output_paused = False
        owed = chan.localWindowSize - chan.localWindowLeft
        if owed > 0 and not chan.localClosed:
            self.conn.adjustWindow(chan, owed)
