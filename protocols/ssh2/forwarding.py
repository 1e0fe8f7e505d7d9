"""The SSH-2 ``direct-tcpip`` channel (RFC 4254 section 7.2): a byte stream between the
client and whatever the gateway connects it to (``ssh -J``, ``ssh -W``, ``-L``).

Owns the channel's wire form (:func:`parse_direct_tcpip`) and :class:`ForwardChannel`,
which is the :class:`ISessionClient` of the forward's :class:`ISessionTarget` (the
gateway's TCP leg), so flow control runs as for sessions: the target's output producer
is paused while the client's window is used up or the connection's TCP buffer is full,
and the window granted to the client is held back while the target pauses our input.
No data is buffered beyond one window either way. Whether a destination may be reached
is decided by the avatar (``open_forward``), not here.
"""

from __future__ import annotations

from typing import Any

from twisted.conch.ssh import channel as conch_channel
from twisted.logger import Logger
from zope.interface import implementer

from protocols.session import ExitInfo, ISessionClient, ISessionTarget
from protocols.ssh2.logs import quiet_logger
from protocols.ssh2.wire import Reader, WireError

log = Logger()

MAX_HOST = 255


def parse_direct_tcpip(data: bytes) -> tuple[str, int, str, int]:
    """The channel-open data: (host to connect, port, originator address, port).
    Raises WireError on anything malformed."""
    reader = Reader(data)
    host = reader.string(MAX_HOST)
    port = reader.uint32()
    origin = reader.string(MAX_HOST)
    origin_port = reader.uint32()
    reader.end()
    try:
        host_text = host.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError("host is not UTF-8") from e
    if not host_text or not host_text.isprintable() or not 0 < port < 65536:
        raise WireError("bad host or port")
    return host_text, port, origin.decode("utf-8", "replace"), origin_port


@implementer(ISessionClient)
class ForwardChannel(conch_channel.SSHChannel):
    name = b"direct-tcpip"
    _log = quiet_logger(__name__ + ".conch")

    def __init__(
        self,
        destination: str,
        flow: Any,
        *,
        localWindow: int,
        localMaxPacket: int,
        remoteWindow: int,
        remoteMaxPacket: int,
    ) -> None:
        super().__init__(
            localWindow=localWindow,
            localMaxPacket=localMaxPacket,
            remoteWindow=remoteWindow,
            remoteMaxPacket=remoteMaxPacket,
        )
        self.destination = destination
        self._flow = flow  # the outer connection's flow recorder, or None
        self.target: ISessionTarget | None = None
        self.input_paused = False  # read by GatewayConnection.adjustWindow
        self._output: Any = None
        self._window_blocked = False
        self._tcp_blocked = False
        self._output_paused = False
        self._eof_wanted = False
        self._eof_sent = False
        self._done = False

    def logPrefix(self) -> str:
        return f"direct-tcpip {self.destination}"

    def attach(self, target: ISessionTarget) -> None:
        """The forward's target, once the avatar has opened it: it gets our input as its
        producer, to pause while it cannot take more (or is not connected yet)."""
        self.target = target
        target.registerProducer(self, True)

    def channelOpen(self, specificData: bytes) -> None:
        # The target may have ended before the channel was confirmed (a connection that
        # failed at once): finish now that the channel can be closed.
        self._maybe_finish()

    # -- client -> target ----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.target is not None:
            self.target.write_stdin(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        pass  # direct-tcpip carries no extended data

    def eofReceived(self) -> None:
        if self.target is not None:
            self.target.close_stdin()

    def closed(self) -> None:
        target, self.target = self.target, None
        self._output = None
        if target is not None:
            try:
                target.close()
            except Exception:
                log.failure("ssh2: error closing a forward")

    # -- IPushProducer: client input, paused by the target -------------------------------------

    def pauseProducing(self) -> None:
        self.input_paused = True

    def resumeProducing(self) -> None:
        self.input_paused = False
        if self.conn is None or self.localClosed or self.remoteClosed:
            return
        if self.localWindowLeft < self.localWindowSize // 2:
            self.conn.adjustWindow(self, self.localWindowSize - self.localWindowLeft)

    def stopProducing(self) -> None:
        self.input_paused = True

    # -- ISessionClient: target -> client ------------------------------------------------------

    @property
    def description(self) -> str:
        record = getattr(getattr(self.conn, "transport", None), "record", None)
        return record.describe() if record is not None else "ssh2"

    @property
    def peer(self) -> str:
        """The outer connection's peer, as its log lines name it."""
        record = getattr(getattr(self.conn, "transport", None), "record", None)
        return record.peer if record is not None else "-"

    def outer_addresses(self) -> tuple[Any, Any] | None:
        """``(getPeer(), getHost())`` of the outer connection's socket, or None."""
        tcp = getattr(getattr(self.conn, "transport", None), "transport", None)
        if tcp is None or not hasattr(tcp, "getPeer") or not hasattr(tcp, "getHost"):
            return None
        return tcp.getPeer(), tcp.getHost()

    @property
    def flow_id(self) -> str | None:
        """The id of the outer connection's flow record (the forward's record links to it)."""
        return self._flow.id if self._flow is not None else None

    def write_stdout(self, data: bytes) -> None:
        if data and not self.localClosed and not self._eof_wanted:
            self.write(data)

    def write_stderr(self, data: bytes) -> None:
        pass  # a forward has no error stream

    def send_eof(self) -> None:
        self._eof_wanted = True
        self._maybe_finish()

    def exited(self, info: ExitInfo) -> None:
        self._eof_wanted = True
        self._done = True
        self._maybe_finish()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._output = producer
        self._output_paused = False
        self._update_output()

    def unregisterProducer(self) -> None:
        self._output = None

    # Conch calls these when the client's window is used up / open again.
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
        paused = self._window_blocked or self._tcp_blocked
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
        """EOF, then close, once the output buffered for the client's window is out."""
        if self.conn is None or self.localClosed or self.buf:
            return
        if self._eof_wanted and not self._eof_sent:
            self._eof_sent = True
            self.conn.sendEOF(self)
        if self._done:
            self.loseConnection()


__all__ = ["ForwardChannel", "parse_direct_tcpip"]
