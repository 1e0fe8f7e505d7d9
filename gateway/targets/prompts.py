"""A question a device asks during its login (an SSH-2 keyboard-interactive prompt the
gateway cannot answer itself: a one-time code, a second factor), put to the user in their
own session before it opens.

The user's terminal is raw (the client has a pty, and the device would echo): this module
does the little line editing a login prompt needs — it echoes what is typed unless the
prompt is hidden, takes Backspace/DEL and ^U, ends the answer at CR or LF, and takes ^C
or ^D on an empty line as "cancel". The bridge (gateway.targets.bridge) feeds it the
client's input and writes what it returns to the client's stderr.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer

from gateway.upstream_errors import UpstreamFailure

MAX_ANSWER = 1024  # bytes of one answer; more typed is dropped
MAX_PROMPT = 400  # characters of a device's prompt (and instruction) shown

_ERASE = b"\x08 \x08"


def shown_prompt(text: str) -> bytes:
    """A device's prompt made safe for the user's terminal: printable characters only,
    lines ended by CR LF, bounded."""
    lines = ["".join(c for c in line if c.isprintable()) for line in text[:MAX_PROMPT].splitlines()]
    return "\r\n".join(lines).encode("utf-8", "replace")


class TerminalQuestion:
    """One prompt: :meth:`feed` it the user's bytes; ``deferred`` fires with the answer
    (str), or fails with UpstreamFailure when the user cancels."""

    def __init__(self, echo: bool, write: Callable[[bytes], None]) -> None:
        self.echo = echo
        self.write = write
        self.answer = bytearray()
        self.deferred: defer.Deferred = defer.Deferred()

    @property
    def done(self) -> bool:
        return self.deferred.called

    def feed(self, data: bytes) -> bytes:
        """Take the user's bytes; returns what follows the answer's end (typed ahead for
        the session), or b"" while the answer goes on."""
        for index in range(len(data)):
            byte = data[index : index + 1]
            if byte in (b"\r", b"\n"):
                self.write(b"\r\n")
                self.deferred.callback(self.answer.decode("utf-8", "replace"))
                rest = data[index + 1 :]
                return rest[1:] if byte == b"\r" and rest[:1] == b"\n" else rest
            if byte in (b"\x7f", b"\x08"):
                self._erase_last()
            elif byte == b"\x15":  # ^U
                while self.answer:
                    self._erase_last()
            elif byte in (b"\x03", b"\x04") and not self.answer:  # ^C, ^D
                self.write(b"\r\n")
                self.deferred.errback(UpstreamFailure("login cancelled at the device's prompt"))
                return data[index + 1 :]
            elif byte[0] >= 0x20 and len(self.answer) < MAX_ANSWER:
                self.answer += byte
                if self.echo:
                    self.write(byte)
        return b""

    def cancel(self, why: str) -> None:
        if not self.done:
            self.deferred.errback(UpstreamFailure(why))

    def _erase_last(self) -> None:
        if not self.answer:
            return
        # One character, however many UTF-8 bytes it took.
        while self.answer and (self.answer[-1] & 0xC0) == 0x80:
            del self.answer[-1]
        del self.answer[-1:]
        if self.echo:
            self.write(_ERASE)
