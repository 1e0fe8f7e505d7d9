"""SFTP served by the gateway itself in front of a device that has only scp (an SSH-1
device: SSH-1 has no subsystems, but its scp runs over exec).

:class:`SftpOverScpSession` is the ISessionTarget of a ``subsystem sftp`` session: the
client's SFTP packets arrive as stdin, the replies go out as stdout. Conch's
``FileTransferServer`` does the SFTP wire format; this module frames its input (every
packet length bounded before anything is kept), and answers its ISFTPServer calls with
scp commands on the device, opened through the ``open_exec(command, client)`` factory it
is given (so it knows nothing of routing or credentials):

- open for read -> ``scp -f PATH``; reads are served in order from a bounded window (the
  device is paused past it); a read at another offset than the next one is refused with
  SSH_FX_OP_UNSUPPORTED;
- open for write (create + truncate) -> the upload is spooled (bounded; in memory, or a
  0600 temporary file under ``spool_dir``) and sent at close with ``scp -t PATH``, since
  scp needs the size first; writes must be sequential;
- stat/lstat -> the ``C``/``D`` line of ``scp -r -f PATH`` (then the transfer is dropped);
  fstat -> what the open handle knows; realpath -> the path normalised ("." is the
  device's login directory, answered as ".");
- everything else -> SSH_FX_OP_UNSUPPORTED. The README's "SFTP to SSH-1 devices" section
  lists exactly what is answered how.

Device errors (scp's ``\\x01``/``\\x02`` lines, or its stderr when it exits) become SFTP
status replies carrying the device's message. Each finished transfer is reported to the
``on_transfer`` callable (path, direction, size; never contents) and logged.
"""

from __future__ import annotations

import posixpath
import re
import stat
import struct
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.filetransfer import (
    FX_BAD_MESSAGE,
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPError,
)
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.targets import rcp
from protocols.session import ExitInfo, ISessionClient, ISessionTarget, WindowSize

log = Logger()

# An SFTP packet longer than this ends the session (OpenSSH's sftp-server: 256 KiB).
MAX_PACKET = 256 * 1024
# Longest read answered in one reply (a longer request gets this much, as sftp-server).
MAX_READ = MAX_PACKET - 1024
# Bytes of a download held ahead of the client's reads before the device is paused, and
# the most held at all (a device that ignores the pause fails the transfer).
READ_WINDOW = 1024 * 1024
READ_HARD_LIMIT = 4 * READ_WINDOW
# Outstanding reads per handle (paramiko's prefetch asks for a whole file at once).
MAX_QUEUED_READS = 8192
# Uploads are spooled in memory up to this size, then in a temporary file (if allowed).
SPOOL_IN_MEMORY = 1024 * 1024
DEFAULT_MAX_UPLOAD = 64 * 1024 * 1024
# Chunks in which a spooled upload is written to the device.
SEND_CHUNK = 32 * 1024
# scp commands one SFTP session may run on the device at once (OpenSSH's scp and sftp use
# one or two: a stat, then the transfer); more is a client opening files without end.
MAX_DEVICE_COMMANDS = 4
# How much of a device command's stderr is kept for an error message.
MAX_STDERR = 4096

OpenExec = Callable[[bytes, ISessionClient], ISessionTarget]

_SAFE_PATH = re.compile(rb"[A-Za-z0-9_./:@%+=,-]+")


@dataclass(frozen=True)
class Transfer:
    """One finished (or failed) file transfer, for the flow record and the log."""

    direction: str  # "get" or "put"
    path: str
    size: int
    result: str  # "ok" or the error message


def quote_path(path: bytes) -> bytes:
    """``path`` as one word for the device's shell (POSIX quoting; plain when safe).
    ``~/`` is the login directory, where scp starts: dropped, since quoting would keep
    the shell from expanding it."""
    while path.startswith(b"~/"):
        path = path[2:].lstrip(b"/") or b"."
    if path.startswith(b"-"):
        path = b"./" + path  # never an option to the device's scp
    if _SAFE_PATH.fullmatch(path):
        return path
    return b"'" + path.replace(b"'", b"'\\''") + b"'"


def _checked_path(path: bytes) -> bytes:
    if not path or b"\0" in path or b"\n" in path or b"\r" in path:
        raise _status(FX_NO_SUCH_FILE, "no such path")
    return path


def _text(path: bytes) -> str:
    return path.decode("utf-8", "replace")


def _status(code: int, message: str) -> SFTPError:
    """An SFTP status error; Conch sends its message with networkString (ASCII only)."""
    return SFTPError(code, message.encode("ascii", "replace").decode("ascii"))


def _error_from(message: str) -> SFTPError:
    """An SFTP status for a device's error message (scp words it as strerror does)."""
    lowered = message.lower()
    if "no such file" in lowered:
        code = FX_NO_SUCH_FILE
    elif "permission denied" in lowered:
        code = FX_PERMISSION_DENIED
    else:
        code = FX_FAILURE
    return _status(code, message or "scp failed")


def _attrs(header: rcp.FileHeader | rcp.DirectoryHeader) -> dict[str, int]:
    if isinstance(header, rcp.DirectoryHeader):
        return {"size": 0, "permissions": stat.S_IFDIR | header.mode}
    return {"size": header.size, "permissions": stat.S_IFREG | header.mode}


@implementer(ISessionClient, IPushProducer)
class DeviceCommand:
    """One scp command on the device: the ISessionClient its exec session writes to, and
    the producer of our input to it. Output goes to ``on_output``; the end (with the
    device's stderr or exit status as the reason) to ``on_end``."""

    description = "sftp-over-scp"

    def __init__(
        self,
        open_exec: OpenExec,
        command: bytes,
        on_output: Callable[[bytes], None],
        on_end: Callable[[ExitInfo, str], None],
    ) -> None:
        self.command = command
        self._on_output = on_output
        self._on_end = on_end
        self.stderr = bytearray()
        self.device_producer: Any = None
        self.output_paused = False
        self.input_paused = False
        self.on_input_resumed: Callable[[], None] | None = None
        self.ended = False
        self._open_exec = open_exec
        self.target: ISessionTarget | None = None
        self._early = bytearray()

    def start(self) -> None:
        """Open the exec session (apart from __init__: the device may answer at once)."""
        self.target = self._open_exec(self.command, self)
        self.target.registerProducer(self, True)
        early, self._early = bytes(self._early), bytearray()
        self.write(early)

    # ISessionClient: the device's output
    def write_stdout(self, data: bytes) -> None:
        if not self.ended:
            self._on_output(data)

    def write_stderr(self, data: bytes) -> None:
        room = MAX_STDERR - len(self.stderr)
        if room > 0:
            self.stderr += data[:room]

    def send_eof(self) -> None:
        pass

    def exited(self, info: ExitInfo) -> None:
        if self.ended:
            return
        self.ended = True
        self._on_end(info, self.reason(info))

    def reason(self, info: ExitInfo) -> str:
        lines = [line for line in rcp.message_text(bytes(self.stderr)).splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
        if info.message:
            return info.message
        return f"scp on the device exited with status {info.as_status()}"

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.device_producer = producer
        if self.output_paused:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.device_producer = None

    def pause_output(self) -> None:
        if not self.output_paused:
            self.output_paused = True
            if self.device_producer is not None:
                self.device_producer.pauseProducing()

    def resume_output(self) -> None:
        if self.output_paused:
            self.output_paused = False
            if self.device_producer is not None:
                self.device_producer.resumeProducing()

    # IPushProducer: our input to the device
    def pauseProducing(self) -> None:
        self.input_paused = True

    def resumeProducing(self) -> None:
        self.input_paused = False
        if self.on_input_resumed is not None:
            self.on_input_resumed()

    def stopProducing(self) -> None:
        self.input_paused = True

    def write(self, data: bytes) -> None:
        if not data or self.ended:
            return
        if self.target is None:
            self._early += data  # answering output that came before open_exec returned
        else:
            self.target.write_stdin(data)

    def finish_input(self) -> None:
        if not self.ended and self.target is not None:
            self.target.close_stdin()

    def abort(self) -> None:
        """Stop the command (the transfer is abandoned or over)."""
        if not self.ended:
            self.ended = True
            if self.target is not None:
                self.target.unregisterProducer()
                self.target.close()


class _Fetch:
    """``scp -f`` (or ``scp -r -f`` for a stat) on the device: the header as a Deferred,
    then the data as a bounded, sequentially read stream."""

    def __init__(
        self, open_exec: OpenExec, path: bytes, *, probe: bool = False, front_paused: bool = False
    ) -> None:
        self.path = path
        self.probe = probe
        self.header: defer.Deferred = defer.Deferred()
        self.file_header: rcp.FileHeader | None = None
        self.buffer = bytearray()
        self.reads: deque[tuple[int, defer.Deferred]] = deque()
        self.complete = False
        self.error: SFTPError | None = None
        self.front_paused = front_paused
        self._sink = rcp.RcpSink(header_only=probe)
        flags = b"-r -f " if probe else b"-f "
        self.delivered = 0
        self.device = DeviceCommand(
            open_exec, b"scp " + flags + quote_path(path), self._output, self._ended
        )
        if front_paused:
            self.device.pause_output()
        self.device.start()
        self._sink.start()
        self.device.write(self._sink.data_to_send())

    def _output(self, data: bytes) -> None:
        try:
            events = self._sink.feed(data)
        except rcp.RcpProtocolError as exc:
            log.info(
                "sftp-over-scp: {path}: device broke the rcp protocol: {why}",
                path=_text(self.path),
                why=str(exc),
            )
            self._fail(_status(FX_FAILURE, f"scp protocol error from the device: {exc}"))
            return
        self.device.write(self._sink.data_to_send())
        for event in events:
            if self.error is not None:
                return
            if isinstance(event, rcp.RemoteError):
                self._fail(_error_from(event.message))
            elif isinstance(event, rcp.DirectoryHeader):
                if self.probe:
                    self._got_header(event)
                else:
                    self._fail(_status(FX_FAILURE, f"{_text(self.path)}: is a directory"))
            elif isinstance(event, rcp.FileHeader):
                self.file_header = event
                self._got_header(event)
                if self.probe:
                    return
            elif isinstance(event, rcp.FileData):
                self.buffer += event.data
                if len(self.buffer) > READ_HARD_LIMIT:
                    self._fail(SFTPError(FX_FAILURE, "device sent too far ahead of the reads"))
                    return
            elif isinstance(event, rcp.FileDone):
                self.complete = True
                self.device.finish_input()
        self._serve()

    def _got_header(self, header: rcp.FileHeader | rcp.DirectoryHeader) -> None:
        if self.probe:
            self.device.abort()
        if not self.header.called:
            self.header.callback(header)

    def _ended(self, info: ExitInfo, reason: str) -> None:
        if self.complete or (self.probe and self.header.called):
            return
        if self._sink.in_file:
            reason = f"the device ended the transfer early ({reason})"
        self._fail(_error_from(reason))

    def _fail(self, error: SFTPError) -> None:
        if self.error is not None:
            return
        self.error = error
        self.device.abort()
        self.buffer.clear()
        if not self.header.called:
            self.header.errback(error)
        reads, self.reads = self.reads, deque()
        for _length, waiting in reads:
            waiting.errback(error)

    def read(self, length: int) -> defer.Deferred:
        waiting: defer.Deferred = defer.Deferred()
        self.reads.append((length, waiting))
        self._serve()
        return waiting

    def _serve(self) -> None:
        while self.reads and self.error is None:
            length, waiting = self.reads[0]
            if len(self.buffer) < length:
                break
            if not self.complete and self._ends_file(length):
                # The last bytes wait for scp's final status: a source that hit a read
                # error pads the file out and says so only there.
                break
            self.reads.popleft()
            data = bytes(self.buffer[:length])
            del self.buffer[:length]
            self.delivered += length
            waiting.callback(data)
        self.flow()

    def _ends_file(self, length: int) -> bool:
        header = self.file_header
        return header is not None and self.delivered + length >= header.size

    def flow(self) -> None:
        need = self.reads[0][0] if self.reads else 0
        if self.front_paused or (len(self.buffer) >= READ_WINDOW and len(self.buffer) >= need):
            self.device.pause_output()
        else:
            self.device.resume_output()

    def close(self) -> None:
        self.device.abort()
        self.buffer.clear()


@implementer(ISFTPFile)
class ReadHandle:
    """An SFTP handle on a file being fetched with ``scp -f``."""

    def __init__(self, server: ScpFileSystem, fetch: _Fetch, header: rcp.FileHeader) -> None:
        self.server = server
        self.fetch = fetch
        self.size = header.size
        self.attrs = _attrs(header)
        self.next_offset = 0
        self.closed = False

    def readChunk(self, offset: int, length: int) -> Any:
        if self.fetch.error is not None:
            raise self.fetch.error
        if offset >= self.size:
            raise EOFError()
        if offset != self.next_offset:
            raise _status(
                FX_OP_UNSUPPORTED, "only sequential reads are supported (scp has no seek)"
            )
        if len(self.fetch.reads) >= MAX_QUEUED_READS:
            raise _status(FX_FAILURE, "too many outstanding reads")
        length = min(length, MAX_READ, self.size - offset)
        self.next_offset = offset + length
        return self.fetch.read(length)

    def writeChunk(self, offset: int, data: bytes) -> None:
        raise _status(FX_PERMISSION_DENIED, "file is open for reading")

    def getAttrs(self) -> dict[str, int]:
        return dict(self.attrs)

    def setAttrs(self, attrs: dict[str, Any]) -> None:
        raise _status(FX_OP_UNSUPPORTED, "setting attributes is not supported over scp")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        result = "ok" if self.fetch.complete else "closed before the end"
        if self.fetch.error is not None:
            result = self.fetch.error.message
        self.fetch.close()
        self.server.finished(
            self, Transfer("get", _text(self.fetch.path), self.fetch.delivered, result)
        )


@implementer(ISFTPFile)
class WriteHandle:
    """An SFTP handle on an upload: spooled, then sent with ``scp -t`` at close."""

    def __init__(self, server: ScpFileSystem, path: bytes, mode: int) -> None:
        self.server = server
        self.path = path
        self.mode = mode
        self.size = 0
        self.spool: IO[bytes] = tempfile.SpooledTemporaryFile(
            max_size=SPOOL_IN_MEMORY if server.spool_dir is not None else server.max_upload + 1,
            dir=server.spool_dir,
        )
        self.truncated = True
        self.closing: defer.Deferred | None = None
        self.device: DeviceCommand | None = None
        self.source: rcp.RcpSource | None = None
        self.to_send = 0
        self.error: SFTPError | None = None
        self._pumping = False

    def readChunk(self, offset: int, length: int) -> None:
        raise _status(FX_PERMISSION_DENIED, "file is open for writing")

    def writeChunk(self, offset: int, data: bytes) -> None:
        if self.closing is not None:
            raise _status(FX_FAILURE, "file is being closed")
        if offset != self.size:
            raise _status(
                FX_OP_UNSUPPORTED, "only sequential writes are supported (scp has no seek)"
            )
        if self.server.spooled() + len(data) > self.server.max_upload:
            raise _status(
                FX_FAILURE,
                f"upload larger than the gateway's limit of {self.server.max_upload} bytes",
            )
        self.spool.write(data)
        self.size += len(data)

    def getAttrs(self) -> dict[str, int]:
        return {"size": self.size, "permissions": stat.S_IFREG | self.mode}

    def setAttrs(self, attrs: dict[str, Any]) -> None:
        if set(attrs) - {"permissions", "size"}:
            raise _status(
                FX_OP_UNSUPPORTED, "only the permissions of a new file can be set over scp"
            )
        if "size" in attrs:
            if attrs["size"] != self.size:
                raise _status(FX_OP_UNSUPPORTED, "scp cannot truncate or extend a file")
            self.truncated = True
        if "permissions" in attrs:
            self.mode = attrs["permissions"] & 0o7777

    def close(self) -> defer.Deferred:
        if self.closing is not None:
            return self.closing
        self.closing = defer.Deferred()
        if not self.truncated:
            self._done(
                _status(
                    FX_OP_UNSUPPORTED,
                    "scp can only replace a whole file: open it with truncate (nothing sent)",
                )
            )
            return self.closing
        try:
            self.source = rcp.RcpSource(
                self.mode, self.size, posixpath.basename(self.path.rstrip(b"/"))
            )
        except ValueError as exc:
            self._done(_status(FX_FAILURE, f"cannot send {_text(self.path)} with scp: {exc}"))
            return self.closing
        self.spool.seek(0)
        self.to_send = self.size
        self.device = DeviceCommand(
            self.server.counted_exec, b"scp -t " + quote_path(self.path), self._output, self._ended
        )
        self.device.on_input_resumed = self._pump
        try:
            self.device.start()
        except SFTPError as error:
            self._done(error)
        return self.closing

    def _output(self, data: bytes) -> None:
        assert self.source is not None and self.device is not None
        try:
            events = self.source.feed(data)
        except rcp.RcpProtocolError as exc:
            self._done(_status(FX_FAILURE, f"scp protocol error from the device: {exc}"))
            return
        self.device.write(self.source.data_to_send())
        for event in events:
            if isinstance(event, rcp.RemoteError):
                self._done(_error_from(event.message))
                return
            if isinstance(event, rcp.Ready):
                self._pump()
            elif isinstance(event, rcp.Stored):
                self.device.finish_input()

    def _pump(self) -> None:
        """Send the spool to the device while it takes it."""
        device, source = self.device, self.source
        if self._pumping or device is None or source is None or self.error is not None:
            return
        self._pumping = True
        try:
            while self.to_send and not device.input_paused and not device.ended:
                chunk = self.spool.read(min(SEND_CHUNK, self.to_send))
                if not chunk:
                    self._done(SFTPError(FX_FAILURE, "upload spool ended early"))
                    return
                self.to_send -= len(chunk)
                device.write(chunk)
            if self.to_send == 0 and source.awaiting_data:
                source.end_of_data()
                device.write(source.data_to_send())
        finally:
            self._pumping = False

    def _ended(self, info: ExitInfo, reason: str) -> None:
        if self.source is not None and self.source.done and self.error is None and info.status == 0:
            self._done(None)
        else:
            self._done(_error_from(reason))

    def _done(self, error: SFTPError | None) -> None:
        if self.closing is None or self.closing.called:
            return
        self.error = error
        if self.device is not None:
            self.device.abort()
        self.spool.close()
        self.server.finished(
            self,
            Transfer("put", _text(self.path), self.size, "ok" if error is None else error.message),
        )
        if error is None:
            self.closing.callback(None)
        else:
            self.closing.errback(error)

    def abort(self) -> None:
        """The session ended with the file still open: nothing is sent."""
        if self.device is not None:
            self.device.abort()
        if self.closing is not None and not self.closing.called:
            self.closing.errback(SFTPError(FX_FAILURE, "session closed"))
            self.closing.addErrback(lambda _: None)
        self.spool.close()


@implementer(ISFTPServer)
class ScpFileSystem:
    """The ISFTPServer Conch's FileTransferServer calls, answered with scp on the device."""

    avatar = None

    def __init__(
        self,
        open_exec: OpenExec,
        *,
        max_upload: int = DEFAULT_MAX_UPLOAD,
        spool_dir: Path | None = None,
        on_transfer: Callable[[Transfer], None] | None = None,
    ) -> None:
        self.open_exec = open_exec
        self.max_upload = max_upload
        self.spool_dir = spool_dir
        self.on_transfer = on_transfer
        self.handles: set[Any] = set()
        self.fetches: set[_Fetch] = set()  # stats and opens waiting for their header
        self.running: list[Any] = []  # the DeviceCommands started
        self.front_paused = False

    def counted_exec(self, command: bytes, client: ISessionClient) -> ISessionTarget:
        """open_exec, within MAX_DEVICE_COMMANDS running at once."""
        self.running = [device for device in self.running if not device.ended]
        if len(self.running) >= MAX_DEVICE_COMMANDS:
            raise _status(FX_FAILURE, "too many transfers at once on this session")
        self.running.append(client)
        return self.open_exec(command, client)

    def spooled(self) -> int:
        """Bytes of uploads held by this session (all bounded together by max_upload)."""
        return sum(h.size for h in self.handles if isinstance(h, WriteHandle) and h.closing is None)

    def finished(self, handle: Any, transfer: Transfer) -> None:
        self.handles.discard(handle)
        log.info(
            "sftp-over-scp: {direction} {path}: {size} bytes, {result}",
            direction=transfer.direction,
            path=transfer.path,
            size=transfer.size,
            result=transfer.result,
        )
        if self.on_transfer is not None:
            self.on_transfer(transfer)

    def set_front_paused(self, paused: bool) -> None:
        self.front_paused = paused
        fetches = [h.fetch for h in self.handles if isinstance(h, ReadHandle)]
        for fetch in fetches + list(self.fetches):  # opened, and still opening
            fetch.front_paused = paused
            fetch.flow()

    def close_all(self) -> None:
        for fetch in list(self.fetches):
            fetch.close()
        self.fetches.clear()
        for handle in list(self.handles):
            if isinstance(handle, WriteHandle):
                handle.abort()
            else:
                handle.close()
        self.handles.clear()

    # ISFTPServer
    def gotVersion(self, otherVersion: int, extData: dict) -> dict:
        return {}

    def openFile(self, filename: bytes, flags: int, attrs: dict[str, Any]) -> Any:
        path = _checked_path(filename)
        if flags & (FXF_READ | FXF_WRITE) == FXF_READ:
            return self._open_read(path)
        if flags & FXF_READ or flags & (FXF_APPEND | FXF_EXCL):
            raise _status(FX_OP_UNSUPPORTED, "scp can only read a whole file or write a new one")
        if not flags & FXF_CREAT:
            raise _status(FX_OP_UNSUPPORTED, "scp can only write a file whole (create)")
        handle = WriteHandle(self, path, attrs.get("permissions", 0o644) & 0o7777)
        # Without TRUNC the client means to keep what it does not overwrite, which scp
        # cannot do -- unless it then cuts the file to what it wrote (OpenSSH scp 9's
        # in-place upload: fsetstat size), which makes it a whole-file replace after all.
        handle.truncated = bool(flags & FXF_TRUNC)
        self.handles.add(handle)
        return handle

    def _open_read(self, path: bytes) -> defer.Deferred:
        fetch = _Fetch(self.counted_exec, path, front_paused=self.front_paused)
        self.fetches.add(fetch)

        def opened(header: rcp.FileHeader) -> ReadHandle:
            self.fetches.discard(fetch)
            if fetch.error is not None:
                raise fetch.error
            handle = ReadHandle(self, fetch, header)
            self.handles.add(handle)
            fetch.flow()
            return handle

        def failed(failure: Any) -> Any:
            self.fetches.discard(fetch)
            return failure

        return fetch.header.addCallbacks(opened, failed)

    def getAttrs(self, path: bytes, followLinks: bool) -> Any:
        path = _checked_path(path)
        if self.realPath(path) in (b".", b"~"):
            return {"size": 0, "permissions": stat.S_IFDIR | 0o755}
        probe = _Fetch(self.counted_exec, path, probe=True)
        self.fetches.add(probe)

        def done(result: Any) -> Any:
            self.fetches.discard(probe)
            probe.close()
            return result

        return probe.header.addBoth(done).addCallback(_attrs)

    def realPath(self, path: bytes) -> bytes:
        if b"\0" in path or b"\n" in path:
            raise _status(FX_NO_SUCH_FILE, "no such path")
        if path in (b"", b".", b"~", b"~/"):
            return b"."
        normal = posixpath.normpath(path)
        if normal.startswith(b"//"):
            normal = b"/" + normal.lstrip(b"/")
        return normal

    def _unsupported(self, *args: Any) -> None:
        raise _status(FX_OP_UNSUPPORTED, "not supported by the gateway's SFTP over scp")

    removeFile = renameFile = makeDirectory = removeDirectory = _unsupported
    openDirectory = setAttrs = readLink = makeLink = extendedRequest = _unsupported


class _BoundedFileTransferServer(filetransfer.FileTransferServer):
    """Conch's server with input framing that bounds every packet and never lets a
    malformed one pass silently: it gets SSH_FX_BAD_MESSAGE (Conch would only log a
    traceback and leave the client waiting)."""

    def __init__(self, avatar: ScpFileSystem, on_violation: Callable[[str], None]) -> None:
        super().__init__(avatar=avatar)
        self._input = bytearray()
        self._on_violation = on_violation
        self.broken = False

    def dataReceived(self, data: bytes) -> None:
        if self.broken:
            return
        self._input += data
        while len(self._input) >= 4:
            (length,) = struct.unpack("!L", self._input[:4])
            if length < 5 or length > MAX_PACKET:
                self.broken = True
                self._on_violation(f"SFTP packet length {length} out of bounds")
                return
            if len(self._input) < 4 + length:
                return
            packet = bytes(self._input[4 : 4 + length])
            del self._input[: 4 + length]
            self._dispatch(packet)

    def _dispatch(self, packet: bytes) -> None:
        kind, body = packet[0], packet[1:]
        request_id = struct.unpack("!L", body[:4])[0]
        name = self.packetTypes.get(kind)
        handler = getattr(self, f"packet_{name}", None) if name else None
        if handler is None:
            self._sendStatus(body[:4], FX_OP_UNSUPPORTED, b"operation not supported")
            return
        try:
            handler(body)
        except Exception as exc:  # malformed packet: struct.error, AssertionError, ValueError
            log.info(
                "sftp-over-scp: malformed {name} packet: {why}", name=name, why=repr(exc)[:200]
            )
            if name == "INIT":
                self.broken = True
                self._on_violation("malformed SFTP INIT packet")
            else:
                self._sendStatus(struct.pack("!L", request_id), FX_BAD_MESSAGE, b"malformed packet")

    def connectionLost(self, reason: Any = None) -> None:
        # Not Conch's: that would "close" (send) half-written uploads.
        self.connected = False
        self.openFiles = {}
        self.openDirs = {}


@implementer(IPushProducer)
class _FrontProducer:
    """Registered on the client: a client that cannot take more output pauses the
    downloads (which pause their device)."""

    def __init__(self, fs: ScpFileSystem) -> None:
        self.fs = fs

    def pauseProducing(self) -> None:
        self.fs.set_front_paused(True)

    def resumeProducing(self) -> None:
        self.fs.set_front_paused(False)

    def stopProducing(self) -> None:
        self.fs.set_front_paused(True)


class _ClientTransport:
    """What Conch's protocol writes to: the client's stdout."""

    def __init__(self, session: SftpOverScpSession) -> None:
        self.session = session

    def write(self, data: bytes) -> None:
        if not self.session.ended:
            self.session.client.write_stdout(data)

    def loseConnection(self) -> None:
        self.session.end(1, "sftp session closed")


@implementer(ISessionTarget)
class SftpOverScpSession:
    """The ``subsystem sftp`` session of one client in front of an scp-only device."""

    def __init__(
        self,
        client: ISessionClient,
        open_exec: OpenExec,
        *,
        max_upload: int = DEFAULT_MAX_UPLOAD,
        spool_dir: Path | None = None,
        on_transfer: Callable[[Transfer], None] | None = None,
    ) -> None:
        self.client = client
        self.ended = False
        self.fs = ScpFileSystem(
            open_exec, max_upload=max_upload, spool_dir=spool_dir, on_transfer=on_transfer
        )
        self.protocol = _BoundedFileTransferServer(self.fs, self._violation)
        self.protocol.makeConnection(_ClientTransport(self))
        self.front_producer: Any = None
        client.registerProducer(_FrontProducer(self.fs), True)

    def _violation(self, reason: str) -> None:
        log.info("sftp-over-scp: closing the session: {reason}", reason=reason)
        self.client.write_stderr(f"sftp: {reason}\r\n".encode())
        self.end(1, reason)

    def end(self, status: int, message: str = "") -> None:
        if self.ended:
            return
        self.ended = True
        self.fs.close_all()
        self.protocol.connectionLost()
        self.client.unregisterProducer()
        self.client.send_eof()
        self.client.exited(ExitInfo(status=status, message=message))

    # ISessionTarget
    def write_stdin(self, data: bytes) -> None:
        if not self.ended:
            self.protocol.dataReceived(data)

    def close_stdin(self) -> None:
        self.end(0)

    def resize(self, size: WindowSize) -> None:
        pass

    def send_signal(self, name: str) -> None:
        pass

    def close(self) -> None:
        if not self.ended:
            self.ended = True
            self.fs.close_all()
            self.protocol.connectionLost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.front_producer = producer

    def unregisterProducer(self) -> None:
        self.front_producer = None


def sftp_over_scp(
    open_exec: OpenExec,
    *,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    spool_dir: Path | None = None,
    on_transfer: Callable[[Transfer], None] | None = None,
) -> Callable[[ISessionClient], SftpOverScpSession]:
    """The one call to plug in: a function that starts the SFTP session for a client.

    For an SSH-1 target, e.g.::

        start = sftp_over_scp(
            lambda command, client: target.open_session(
                username, SessionRequest(command=command), client, password=password
            ),
            spool_dir=state_dir,
            on_transfer=note_in_the_flow,
        )
        session = start(client)  # the ISessionTarget of the "subsystem sftp" request
    """

    def start(client: ISessionClient) -> SftpOverScpSession:
        return SftpOverScpSession(
            client, open_exec, max_upload=max_upload, spool_dir=spool_dir, on_transfer=on_transfer
        )

    return start


__all__ = [
    "DeviceCommand",
    "ScpFileSystem",
    "SftpOverScpSession",
    "Transfer",
    "quote_path",
    "sftp_over_scp",
]
