"""The client side of the rcp protocol, which ``scp -f PATH`` (send a file to us) and
``scp -t PATH`` (take a file from us) speak on the device: sans-I/O state machines, bytes
in, events and reply bytes out, every line and count bounded.

The protocol, as OpenSSH's scp.c implements it (one regular file, no ``-r``/``-p`` on the
wire except that a ``-r`` source may announce a directory):

- ``scp -f`` (:class:`RcpSink` is our side): we send ``\\0``; the source sends
  ``C<mode> <size> <name>\\n`` (or ``D...`` for a directory with ``-r``, ``T...`` times
  with ``-p``, or ``\\x01``/``\\x02`` + message + ``\\n`` for an error / fatal error); we
  ack with ``\\0``; it sends exactly ``size`` bytes, then one status byte (``\\0``, or an
  error byte and a message line); we ack with ``\\0``.
- ``scp -t`` (:class:`RcpSource` is our side): the sink sends ``\\0`` when ready; we send
  the ``C`` line; it acks; we send the data and a ``\\0``; it acks (or answers an error
  line, e.g. ``\\x01scp: /x: Permission denied\\n``).

Any other byte where a status is due is read, as scp does, as the start of an error line
(a shell banner or ``No match.`` before the device's scp started).
"""

from __future__ import annotations

from dataclasses import dataclass

# A control or error line longer than this is a protocol violation (scp's own buffer is
# 2048 bytes; a name can be a whole PATH_MAX).
MAX_LINE = 8192
MAX_FILE_SIZE = (1 << 63) - 1
# What we pass on of a device's error message.
MAX_MESSAGE = 512


class RcpProtocolError(Exception):
    """The device's side broke the protocol (the transfer cannot go on)."""


@dataclass(frozen=True)
class FileHeader:
    """``C<mode> <size> <name>``: a regular file follows."""

    mode: int
    size: int
    name: bytes


@dataclass(frozen=True)
class DirectoryHeader:
    """``D<mode> 0 <name>``: a directory (only from a ``-r`` source)."""

    mode: int
    name: bytes


@dataclass(frozen=True)
class FileData:
    data: bytes


@dataclass(frozen=True)
class FileDone:
    """All of the file's bytes arrived and the source said they are good."""


@dataclass(frozen=True)
class RemoteError:
    """An error line from the device's scp (``fatal``: it will exit)."""

    message: str
    fatal: bool


@dataclass(frozen=True)
class Ready:
    """(RcpSource) The sink accepted the header: send the file's bytes now."""


@dataclass(frozen=True)
class Stored:
    """(RcpSource) The sink acknowledged the data: the file is written."""


Event = FileHeader | DirectoryHeader | FileData | FileDone | RemoteError | Ready | Stored


def message_text(line: bytes) -> str:
    """A device's error line as text: decoded leniently, printable, bounded."""
    text = line.decode("utf-8", "replace").strip()
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:MAX_MESSAGE]


def parse_header(line: bytes, *, check_name: bool = True) -> FileHeader | DirectoryHeader:
    """A ``C``/``D`` line without its newline; RcpProtocolError if malformed.
    ``check_name``: refuse a name that is not one plain path component (the name is kept
    only by a caller that stores the file; ``scp -r -f /`` announces ``/`` with none)."""
    kind, rest = line[:1], line[1:]
    parts = rest.split(b" ", 2)
    if len(parts) != 3:
        raise RcpProtocolError("malformed header line")
    mode_text, size_text, name = parts
    if not (1 <= len(mode_text) <= 5 and all(48 <= c <= 55 for c in mode_text)):
        raise RcpProtocolError("malformed mode in header line")
    if not (1 <= len(size_text) <= 19 and size_text.isdigit()):
        raise RcpProtocolError("malformed size in header line")
    mode, size = int(mode_text, 8) & 0o7777, int(size_text)
    if size > MAX_FILE_SIZE:
        raise RcpProtocolError("size out of range in header line")
    if check_name and (not name or b"/" in name or name in (b".", b"..")):
        raise RcpProtocolError("unsafe file name in header line")
    if kind == b"D":
        return DirectoryHeader(mode, name)
    return FileHeader(mode, size, name)


class _StatusReader:
    """Reads one status: ``\\0``, or an error byte followed by a line (bounded)."""

    def __init__(self) -> None:
        self.line: bytearray | None = None
        self.first = 0

    def feed(self, data: bytes, at: int) -> tuple[int, RemoteError | bool | None]:
        """Consume from ``data[at:]``: (new position, True for OK, a RemoteError, or
        None when more bytes are needed)."""
        if self.line is None:
            if at >= len(data):
                return at, None
            self.first = data[at]
            at += 1
            if self.first == 0:
                return at, True
            self.line = bytearray() if self.first in (1, 2) else bytearray([self.first])
        end = data.find(b"\n", at)
        chunk = data[at:] if end < 0 else data[at:end]
        if len(self.line) + len(chunk) > MAX_LINE:
            raise RcpProtocolError("error line too long")
        self.line += chunk
        if end < 0:
            return len(data), None
        error = RemoteError(message_text(bytes(self.line)), fatal=self.first != 1)
        self.line = None
        return end + 1, error


class RcpSink:
    """Our side of ``scp -f``: call :meth:`start`, send :meth:`data_to_send` to the
    device, and :meth:`feed` it the device's output. A caller that only wants the header
    (a stat) passes ``header_only``: the header is not acknowledged, so no data follows."""

    _HEADER, _DATA, _STATUS, _DONE = range(4)

    def __init__(self, *, header_only: bool = False) -> None:
        self.header_only = header_only
        self._state = self._HEADER
        self._line = bytearray()
        self._remaining = 0
        self._status = _StatusReader()
        self._out = bytearray()
        self.header: FileHeader | DirectoryHeader | None = None

    def start(self) -> None:
        self._out += b"\0"

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    @property
    def in_file(self) -> bool:
        """A file's header was accepted and its data or final status is still due."""
        return self._state in (self._DATA, self._STATUS)

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        at = 0
        while at < len(data) and self._state != self._DONE:
            if self._state == self._HEADER:
                at = self._feed_header(data, at, events)
            elif self._state == self._DATA:
                take = min(self._remaining, len(data) - at)
                events.append(FileData(data[at : at + take]))
                at += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._STATUS
            else:
                at, status = self._status.feed(data, at)
                if status is True:
                    self._out += b"\0"
                    events.append(FileDone())
                    self._state = self._DONE
                elif status is not None:
                    events.append(status)
                    self._state = self._DONE
        if at < len(data) and not (events and isinstance(events[-1], RemoteError)):
            raise RcpProtocolError("data after the end of the transfer")
        return events

    def _feed_header(self, data: bytes, at: int, events: list[Event]) -> int:
        end = data.find(b"\n", at)
        chunk = data[at:] if end < 0 else data[at:end]
        if len(self._line) + len(chunk) > MAX_LINE:
            raise RcpProtocolError("control line too long")
        self._line += chunk
        if end < 0:
            return len(data)
        line, self._line = bytes(self._line), bytearray()
        kind = line[:1]
        if kind in (b"\x01", b"\x02"):
            events.append(RemoteError(message_text(line[1:]), fatal=kind == b"\x02"))
            if kind == b"\x02":
                self._state = self._DONE
        elif kind == b"T":
            self._out += b"\0"  # times (a -p source): we keep none
        elif kind in (b"C", b"D"):
            header = parse_header(line, check_name=not self.header_only)
            self.header = header
            events.append(header)
            if isinstance(header, DirectoryHeader) or self.header_only:
                self._state = self._DONE
            else:
                self._out += b"\0"
                self._remaining = header.size
                self._state = self._DATA if header.size else self._STATUS
        elif self.header is None:
            # What a shell prints before scp runs ("No match.", a banner): scp itself
            # shows such a first line as the error.
            events.append(RemoteError(message_text(line), fatal=True))
            self._state = self._DONE
        else:
            raise RcpProtocolError("expected a control line")
        return end + 1


class RcpSource:
    """Our side of ``scp -t``: :meth:`feed` it the device's output; on Ready the caller
    sends exactly ``size`` bytes and then calls :meth:`end_of_data`; Stored means the
    device has the file. A RemoteError ends the transfer."""

    _READY, _HEADER_ACK, _SENDING, _DATA_ACK, _DONE = range(5)

    def __init__(self, mode: int, size: int, name: bytes) -> None:
        if not name or b"/" in name or b"\n" in name or name in (b".", b".."):
            raise ValueError("unsafe file name for scp")
        if not 0 <= size <= MAX_FILE_SIZE:
            raise ValueError("file size out of range")
        self._header = b"C%04o %d %s\n" % (mode & 0o7777, size, name)
        self._state = self._READY
        self._status = _StatusReader()
        self._out = bytearray()

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    @property
    def awaiting_data(self) -> bool:
        """Ready came and end_of_data has not been called yet."""
        return self._state == self._SENDING

    def end_of_data(self) -> None:
        if self._state != self._SENDING:
            raise RuntimeError("end_of_data before Ready")
        self._out += b"\0"
        self._state = self._DATA_ACK

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        at = 0
        while at < len(data) and self._state != self._DONE:
            if self._state == self._SENDING:
                raise RcpProtocolError("unexpected output from the device during the data")
            at, status = self._status.feed(data, at)
            if status is None:
                continue
            if status is not True:
                events.append(status)
                self._state = self._DONE
            elif self._state == self._READY:
                self._out += self._header
                self._state = self._HEADER_ACK
            elif self._state == self._HEADER_ACK:
                events.append(Ready())
                self._state = self._SENDING
            else:
                events.append(Stored())
                self._state = self._DONE
        if at < len(data) and not (events and isinstance(events[-1], RemoteError)):
            raise RcpProtocolError("data after the end of the transfer")
        return events


__all__ = [
    "MAX_LINE",
    "DirectoryHeader",
    "FileData",
    "FileDone",
    "FileHeader",
    "RcpProtocolError",
    "RcpSink",
    "RcpSource",
    "Ready",
    "RemoteError",
    "Stored",
    "message_text",
    "parse_header",
]
