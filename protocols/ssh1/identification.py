"""The server's identification line as an SSH client reads it: text lines before it are
skipped, up to a bound, every line is bounded before it is kept, and the version numbers
are read from it. No Twisted, no gateway imports.

Used by the SSH-1 client and by ``sshgateway probe``, which both talk to servers that may
be hostile or broken.
"""

from __future__ import annotations

import re

from protocols.ssh1.wire import ProtocolError

MAX_LINE = 255  # bytes of an identification line, without its CR LF
MAX_BANNER_LINES = 16  # text lines a server may send before its identification
_VERSION = re.compile(rb"^SSH-(\d{1,4})\.(\d{1,4})-")


class IdentificationError(ProtocolError):
    """No identification line can come; ``reason`` completes "the server sent ..."."""


class IdentificationReader:
    """Feed it bytes until it returns the server's identification line."""

    def __init__(self) -> None:
        self._buffer = b""
        self._banner_lines = 0

    def feed(self, data: bytes) -> tuple[bytes, int] | None:
        """The identification line (without CR LF) and the bytes it took on the wire,
        once it has come; None while more is needed. Raises :class:`IdentificationError`."""
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise IdentificationError("an overlong identification line")
                return None
            line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1 :]
            if len(line) > MAX_LINE:
                raise IdentificationError("an overlong identification line")
            if line.startswith(b"SSH-"):
                return line, end + 1
            self._banner_lines += 1
            if self._banner_lines > MAX_BANNER_LINES:
                raise IdentificationError("no SSH identification line")

    def rest(self) -> bytes:
        """What came after the identification line (the protocol's first bytes)."""
        rest, self._buffer = self._buffer, b""
        return rest


def parse_version(line: bytes) -> tuple[int, int] | None:
    """(major, minor) of an identification line; None when it is malformed."""
    match = _VERSION.match(line)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))
