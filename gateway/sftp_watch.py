"""A passive SFTP observer: which files a relayed SFTP session moved, for the flow record.

On ``local`` (sftp-server) and on SSH-2 devices (the subsystem relayed) the gateway passes
the SFTP stream through unchanged; this module watches it on the way, so that the client
leg's flow notes each file as the gateway's own SFTP server does for SSH-1 devices
(``FlowRecorder.file``: direction, the path the user chose, bytes moved, result; never
contents). It owns the SFTP v3 parsing for that (draft-ietf-secsh-filexfer-02) and the taps
that feed it (:func:`watch_session`).

:class:`SftpWatch` is fed the client->server and server->client bytes separately. It never
buffers a payload: per direction it keeps at most one packet's leading fields (at most
``HEADER_CAP`` bytes, the longest being OPEN's path) and skips the rest by counting.
Anything malformed or unexpected (a packet longer than ``MAX_PACKET``, a version other
than 3, more than ``MAX_PENDING`` requests in flight or ``MAX_HANDLES`` files open) makes it
stop watching that session, with one log line; the stream itself is never touched.

What is counted: ``put`` (an OPEN with WRITE in its pflags), the data of each WRITE the
server acknowledged with STATUS OK; ``get`` (OPEN with READ only), the bytes of each DATA
reply to a READ, i.e. what the client was sent (retries count again; reads past the end
add nothing). A file is noted when its CLOSE is answered, when its OPEN fails (size 0 and
the server's status), or when the session ends with it still open ("not closed").
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from protocols.session import ExitInfo, ISessionClient, ISessionTarget, WindowSize

log = Logger()

SFTP_VERSION = 3
MAX_PACKET = 256 * 1024 + 1024  # OpenSSH's sftp-server limit (256 KiB) and room for a header
MAX_PATH = 64 * 1024
MAX_HANDLE = 256  # "MUST NOT be longer than 256 bytes" (filexfer-02, 3.)
MAX_PENDING = 4096  # requests awaiting their reply (OpenSSH's clients keep 64 in flight)
MAX_HANDLES = 1024  # files open at once

FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 1, 2, 3, 4, 5, 6
FXP_STATUS, FXP_HANDLE, FXP_DATA = 101, 102, 103
FXF_READ, FXF_WRITE = 0x01, 0x02
FX_OK, FX_EOF = 0, 1

STATUS_TEXT = {
    1: "end of file",
    2: "no such file",
    3: "permission denied",
    4: "failure",
    5: "bad message",
    6: "no connection",
    7: "connection lost",
    8: "operation unsupported",
}

# The leading fields kept of each packet type (after its length and type); other types
# are skipped whole. Strings are bounded by what their field may hold.
_HANDLE_FIELD = 4 + MAX_HANDLE
HEADER_CAP = {
    FXP_INIT: 4,
    FXP_VERSION: 4,
    FXP_OPEN: 4 + 4 + MAX_PATH + 4,
    FXP_CLOSE: 4 + _HANDLE_FIELD,
    FXP_READ: 4 + _HANDLE_FIELD + 8 + 4,
    FXP_WRITE: 4 + _HANDLE_FIELD + 8 + 4,
    FXP_STATUS: 4 + 4,
    FXP_HANDLE: 4 + _HANDLE_FIELD,
    FXP_DATA: 4 + 4,
}

OnFile = Callable[[str, str, int, str], None]  # direction, path, size, result


class _GiveUp(Exception):
    """The stream is not what the watcher understands: stop watching it."""


class _Fields:
    """Reads the kept leading fields of one packet; running past them is malformed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def uint32(self) -> int:
        if self.at + 4 > len(self.data):
            raise _GiveUp("a packet shorter than its fields")
        (value,) = struct.unpack_from(">I", self.data, self.at)
        self.at += 4
        return int(value)

    def uint64(self) -> int:
        if self.at + 8 > len(self.data):
            raise _GiveUp("a packet shorter than its fields")
        (value,) = struct.unpack_from(">Q", self.data, self.at)
        self.at += 8
        return int(value)

    def string(self, limit: int) -> bytes:
        size = self.uint32()
        if size > limit:
            raise _GiveUp(f"a string of {size} bytes where at most {limit} are expected")
        if self.at + size > len(self.data):
            raise _GiveUp("a packet shorter than its fields")
        value = self.data[self.at : self.at + size]
        self.at += size
        return value


class _Reader:
    """One direction's packet framing: the length and type, the kept fields, a skip count."""

    def __init__(self, on_packet: Callable[[int, int, bytes], None]) -> None:
        self.on_packet = on_packet  # (type, body length, kept fields)
        self.prefix = bytearray()  # the 5 bytes of length and type being read
        self.kept = bytearray()
        self.want = 0  # fields still to keep of the current packet
        self.skip = 0  # bytes of the current packet to pass over
        self.kind = 0
        self.body = 0

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:
                step = min(self.skip, end - pos)
                self.skip -= step
                pos += step
            elif self.want:
                step = min(self.want, end - pos)
                self.kept += data[pos : pos + step]
                self.want -= step
                pos += step
                if not self.want:
                    self._kept_all()
            else:
                step = min(5 - len(self.prefix), end - pos)
                self.prefix += data[pos : pos + step]
                pos += step
                if len(self.prefix) == 5:
                    self._start_packet()

    def _start_packet(self) -> None:
        length, kind = struct.unpack(">IB", bytes(self.prefix))
        self.prefix.clear()
        if length < 1 or length > MAX_PACKET:
            raise _GiveUp(f"a packet of {length} bytes")
        self.kind, self.body = kind, length - 1
        self.want = min(self.body, HEADER_CAP.get(kind, 0))
        self.kept.clear()
        if not self.want:
            self._kept_all()

    def _kept_all(self) -> None:
        kept = bytes(self.kept)
        self.kept.clear()
        self.skip = self.body - len(kept)
        self.on_packet(self.kind, self.body, kept)


@dataclass
class _File:
    direction: str  # "get" or "put"
    path: str
    size: int = 0
    error: str | None = None


class SftpWatch:
    """Watches one SFTP session; calls ``on_file`` for each file it saw moved. ``label``
    names the session in the one log line written if it stops watching."""

    def __init__(self, on_file: OnFile, label: str = "-") -> None:
        self.on_file = on_file
        self.label = label
        self.stopped: str | None = None
        self._client = _Reader(self._client_packet)
        self._server = _Reader(self._server_packet)
        self._client_started = self._server_started = False
        # request id -> what answers it: ("open", _File) / ("read"|"write"|"close", handle, n)
        self._pending: dict[int, tuple[Any, ...]] = {}
        self._files: dict[bytes, _File] = {}

    # -- feeding --------------------------------------------------------------------------

    def client_bytes(self, data: bytes) -> None:
        """Bytes the client sent towards the server."""
        self._feed(self._client, data)

    def server_bytes(self, data: bytes) -> None:
        """Bytes the server sent towards the client."""
        self._feed(self._server, data)

    def finish(self) -> None:
        """The session is over: files still open are noted as not closed."""
        if self.stopped is None:
            files, self._files = self._files, {}
            for file in files.values():
                self._note(file, file.error or "not closed")
        self.stopped = self.stopped or "finished"

    def _feed(self, reader: _Reader, data: bytes) -> None:
        if self.stopped is not None:
            return
        try:
            reader.feed(data)
        except _GiveUp as reason:
            self._stop(str(reason))
        except Exception as error:  # a watcher bug must never reach the stream
            self._stop(f"{type(error).__name__}: {error}")

    def _stop(self, reason: str) -> None:
        self.stopped = reason
        self._pending.clear()
        self._files.clear()
        log.info("sftp-watch: {label}: stopped watching the SFTP stream: {reason}",
                 label=self.label, reason=reason)  # fmt: skip

    # -- packets --------------------------------------------------------------------------

    def _client_packet(self, kind: int, body: int, kept: bytes) -> None:
        fields = _Fields(kept)
        if not self._client_started:
            if kind != FXP_INIT:
                raise _GiveUp(f"the client's first packet is of type {kind}, not INIT")
            self._client_started = True
            return
        if kind == FXP_OPEN:
            request = fields.uint32()
            path = fields.string(MAX_PATH)
            pflags = fields.uint32()
            if pflags & FXF_WRITE:
                direction = "put"
            elif pflags & FXF_READ:
                direction = "get"
            else:
                return
            self._expect(request, ("open", _File(direction, path.decode("utf-8", "replace"))))
        elif kind in (FXP_READ, FXP_WRITE, FXP_CLOSE):
            request = fields.uint32()
            handle = fields.string(MAX_HANDLE)
            if handle not in self._files:
                return
            if kind == FXP_CLOSE:
                self._expect(request, ("close", handle, 0))
            elif kind == FXP_READ:
                self._expect(request, ("read", handle, 0))
            else:
                fields.uint64()
                size = fields.uint32()
                if fields.at + size > body:
                    raise _GiveUp("a WRITE whose data runs past its packet")
                self._expect(request, ("write", handle, size))

    def _server_packet(self, kind: int, body: int, kept: bytes) -> None:
        fields = _Fields(kept)
        if not self._server_started:
            if kind != FXP_VERSION:
                raise _GiveUp(f"the server's first packet is of type {kind}, not VERSION")
            version = fields.uint32()
            if version != SFTP_VERSION:
                raise _GiveUp(f"SFTP version {version}")
            self._server_started = True
            return
        if kind not in (FXP_STATUS, FXP_HANDLE, FXP_DATA):
            return
        pending = self._pending.pop(fields.uint32(), None)
        if pending is None:
            return  # a reply to a request not watched (stat, readdir...)
        what = pending[0]
        if what == "open":
            file = pending[1]
            if kind == FXP_HANDLE:
                handle = fields.string(MAX_HANDLE)
                if len(self._files) >= MAX_HANDLES:
                    raise _GiveUp(f"more than {MAX_HANDLES} files open")
                self._files[handle] = file
            elif kind == FXP_STATUS:
                self._note(file, _status_text(fields.uint32()))
            return
        _, handle, size = pending
        file = self._files.get(handle)
        if file is None:
            return
        if what == "read":
            if kind == FXP_DATA:
                length = fields.uint32()
                if length > body - fields.at:
                    raise _GiveUp("a DATA reply whose data runs past its packet")
                file.size += length
            elif kind == FXP_STATUS:
                code = fields.uint32()
                if code not in (FX_OK, FX_EOF):
                    file.error = file.error or _status_text(code)
        elif what == "write" and kind == FXP_STATUS:
            code = fields.uint32()
            if code == FX_OK:
                file.size += size
            else:
                file.error = file.error or _status_text(code)
        elif what == "close" and kind == FXP_STATUS:
            del self._files[handle]
            code = fields.uint32()
            self._note(file, file.error or _status_text(code))

    def _expect(self, request: int, what: tuple[Any, ...]) -> None:
        if len(self._pending) >= MAX_PENDING:
            raise _GiveUp(f"more than {MAX_PENDING} requests awaiting a reply")
        self._pending[request] = what

    def _note(self, file: _File, result: str) -> None:
        log.info("sftp-watch: {label}: {direction} {path}: {size} bytes, {result}",
                 label=self.label, direction=file.direction, path=file.path,
                 size=file.size, result=result)  # fmt: skip
        self.on_file(file.direction, file.path, file.size, result)


def _status_text(code: int) -> str:
    return "ok" if code == FX_OK else STATUS_TEXT.get(code, f"status {code}")


# -- the taps --------------------------------------------------------------------------------


@implementer(ISessionClient)
class WatchedClient:
    """The session's client, unchanged, with the server's output shown to the watcher.
    Other attributes (``flow_id``, ``description``...) are the client's own."""

    def __init__(self, client: ISessionClient, watch: SftpWatch) -> None:
        self._client = client
        self._watch = watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def write_stdout(self, data: bytes) -> None:
        self._watch.server_bytes(data)
        self._client.write_stdout(data)

    def write_stderr(self, data: bytes) -> None:
        self._client.write_stderr(data)

    def send_eof(self) -> None:
        self._client.send_eof()

    def exited(self, info: ExitInfo) -> None:
        self._watch.finish()
        self._client.exited(info)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self._client.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._client.unregisterProducer()


@implementer(ISessionTarget)
class WatchedTarget:
    """The session's target, unchanged, with the client's input shown to the watcher."""

    def __init__(self, target: ISessionTarget, watch: SftpWatch) -> None:
        self._target = target
        self._watch = watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def write_stdin(self, data: bytes) -> None:
        self._watch.client_bytes(data)
        self._target.write_stdin(data)

    def close_stdin(self) -> None:
        self._target.close_stdin()

    def resize(self, size: WindowSize) -> None:
        self._target.resize(size)

    def send_signal(self, name: str) -> None:
        self._target.send_signal(name)

    def close(self) -> None:
        self._target.close()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self._target.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._target.unregisterProducer()


def watch_session(
    client: ISessionClient,
    start: Callable[[ISessionClient], ISessionTarget],
    on_file: OnFile,
    label: str = "-",
) -> ISessionTarget:
    """Start a relayed SFTP session with ``start(client)`` behind the taps: what it moves is
    passed to ``on_file``; the bytes and every call go through unchanged."""
    watch = SftpWatch(on_file, label)
    return WatchedTarget(start(WatchedClient(client, watch)), watch)
