"""Non-blocking file descriptor I/O for local sessions: a large-chunk reader and a
watermarked writer, both plain reactor descriptors.

Twisted's own process pipes read 8 KiB per wake-up, and their write buffer resumes its
producer only once it is completely empty. Here a reader takes up to ``chunk`` bytes
per read (the pipes are enlarged to match, see ``enlarge_pipe``) and a writer pauses its
producer above a high-water mark and resumes it below a low one, so input flows without
stop-start chatter and memory per session stays bounded both ways.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

READ_CHUNK = 256 * 1024
PIPE_SIZE = 256 * 1024
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

# Errors that mean "the other side is gone" rather than a bug: a pty master reports EIO
# once every slave descriptor is closed.
_GONE = {errno.EIO, errno.EPIPE, errno.ECONNRESET, errno.ENXIO}


def enlarge_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Ask for a pipe buffer of ``size`` bytes; a refusal just keeps the default."""
    setter = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setter is None:
        return
    try:
        fcntl.fcntl(fd, setter, size)
    except OSError:
        pass


def set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


class _Descriptor:
    """What the reader and the writer share: a non-blocking ``fd`` owned until closed
    (then -1), named in the reactor's log lines."""

    def __init__(self, reactor: Any, fd: int, name: str) -> None:
        self._reactor = reactor
        self.fd = fd
        self.name = name
        set_nonblocking(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"LocalSession {self.name}"

    def _close_fd(self) -> None:
        if not self.closed:
            fd, self.fd = self.fd, -1
            os.close(fd)


@implementer(IReadDescriptor)
class ChunkReader(_Descriptor):
    """Reads ``fd`` while started and hands every chunk to ``deliver``.

    ``on_eof`` is called once, after the last chunk, when the descriptor reached end of file
    (or an error that means the writer is gone); the descriptor is closed by then.
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        deliver: Callable[[bytes], None],
        on_eof: Callable[[ChunkReader], None],
        name: str,
        chunk: int = READ_CHUNK,
    ) -> None:
        super().__init__(reactor, fd, name)
        self._deliver = deliver
        self._on_eof = on_eof
        self._chunk = chunk
        self.reading = False

    # IReadDescriptor
    def doRead(self) -> None:
        # One read per wake-up keeps sessions fair; the chunk is as large as the pipe.
        self.read_once()
        return None

    def connectionLost(self, reason: object) -> None:
        # The reactor saw a hang-up with nothing left to read, or doRead failed.
        self.reading = False
        self._finish()

    # control
    def start(self) -> None:
        if not self.closed and not self.reading:
            self.reading = True
            self._reactor.addReader(self)

    def stop(self) -> None:
        if self.reading:
            self.reading = False
            self._reactor.removeReader(self)

    def read_once(self) -> int:
        """Read one chunk; returns its size, 0 when nothing was there (EAGAIN) or at EOF."""
        if self.closed:
            return 0
        try:
            data = os.read(self.fd, self._chunk)  # EINTR is retried by Python itself
        except BlockingIOError:
            return 0
        except OSError as e:
            if e.errno not in _GONE:
                log.warn("read from {name} failed: {error}", name=self.name, error=e)
            data = b""
        if not data:
            self.close()
            return 0
        self._deliver(data)
        return len(data)

    def close(self) -> None:
        """Stop reading and close the descriptor; reports EOF if not done yet."""
        self.stop()
        self._finish()

    def discard(self) -> None:
        """Close without reporting EOF (the session is being torn down)."""
        self._on_eof = _ignore
        self.close()

    def _finish(self) -> None:
        if self.closed:
            return
        self._close_fd()
        callback, self._on_eof = self._on_eof, _ignore
        callback(self)


def _ignore(*args: object) -> None:
    pass


@implementer(IWriteDescriptor)
class WatermarkWriter(_Descriptor):
    """Buffers writes to ``fd`` and flow-controls the producer that feeds it.

    The producer is paused when more than ``high`` bytes wait and resumed once fewer than
    ``low`` do. When the reader of ``fd`` goes away, pending and further data is dropped —
    a program that stopped reading its input must not make the gateway hold the client's.

    ``eof_tail(fd, last_byte)``, if given, is asked at EOF (once the buffer drained) for bytes to
    write before the descriptor is closed; a terminal needs that, a pipe does not.
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        name: str,
        high: int = HIGH_WATER,
        low: int = LOW_WATER,
        eof_tail: Callable[[int, int | None], bytes] | None = None,
    ) -> None:
        super().__init__(reactor, fd, name)
        self._high = high
        self._low = low
        self._pending: deque[memoryview] = deque()
        self.buffered = 0
        self._writing = False
        self._closing = False
        self._eof_tail = eof_tail
        self.last_byte: int | None = None
        self.producer: Any = None
        self._streaming = True
        self.producer_paused = False
        self._pull_call: Any = None

    # IWriteDescriptor
    def doWrite(self) -> None:
        self._flush()
        return None

    def connectionLost(self, reason: object) -> None:
        self._writing = False
        self._gone()

    # producer/consumer
    def register_producer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self._streaming = streaming
        self.producer_paused = False
        if streaming:
            if self.buffered > self._high:
                self._pause()
        else:
            self._resume()

    def unregister_producer(self) -> None:
        self.producer = None
        self.producer_paused = False
        if self._pull_call is not None and self._pull_call.active():
            self._pull_call.cancel()
        self._pull_call = None

    # data
    def write(self, data: bytes) -> None:
        if self.closed or self._closing or not data:
            return
        self.last_byte = data[-1]
        self._queue(data)

    def close_when_flushed(self) -> None:
        """EOF: close ``fd`` once everything buffered has been written."""
        if self.closed or self._closing:
            return
        self._closing = True
        if not self._pending:
            self._at_eof()

    def discard(self) -> None:
        """Drop everything and close now."""
        self._pending.clear()
        self.buffered = 0
        self._eof_tail = None
        self.unregister_producer()
        self._release()

    def _queue(self, data: bytes) -> None:
        self._pending.append(memoryview(bytes(data)))
        self.buffered += len(data)
        # Writing at once saves a trip through the reactor for the common small write.
        if not self._writing:
            self._flush()
        if self.buffered > self._high:
            self._pause()

    def _flush(self) -> None:
        while self._pending and not self.closed:
            head = self._pending[0]
            try:
                written = os.write(self.fd, head)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno not in _GONE:
                    log.warn("write to {name} failed: {error}", name=self.name, error=e)
                self._gone()
                return
            self.buffered -= written
            if written == len(head):
                self._pending.popleft()
            else:
                self._pending[0] = head[written:]
        if self.closed:
            return
        if self._pending and not self._writing:
            self._writing = True
            self._reactor.addWriter(self)
        elif not self._pending and self._writing:
            self._writing = False
            self._reactor.removeWriter(self)
        if self.buffered < self._low:
            self._resume()
        if not self._pending and self._closing:
            self._at_eof()

    def _at_eof(self) -> None:
        tail_for, self._eof_tail = self._eof_tail, None
        if tail_for is not None:
            tail = b""
            try:
                tail = tail_for(self.fd, self.last_byte)
            except OSError as e:
                log.debug("no EOF for {name}: {error}", name=self.name, error=e)
            if tail:
                self._queue(tail)
                return
        if not self._pending:
            self._release()

    def _gone(self) -> None:
        # The reader went away: drop the data, let the producer run (into the void) so the
        # front end is not stuck waiting for a resume that would never come.
        self._pending.clear()
        self.buffered = 0
        self._eof_tail = None
        self._release()
        self._resume()

    def _release(self) -> None:
        if self._writing:
            self._writing = False
            self._reactor.removeWriter(self)
        self._close_fd()

    def _pause(self) -> None:
        if self.producer is not None and self._streaming and not self.producer_paused:
            self.producer_paused = True
            self.producer.pauseProducing()

    def _resume(self) -> None:
        if self.producer is None:
            return
        if self._streaming:
            if self.producer_paused:
                self.producer_paused = False
                self.producer.resumeProducing()
        elif self._pull_call is None:
            # A pull producer writes from inside resumeProducing; asking from the reactor
            # instead of from write() keeps that from recursing.
            self._pull_call = self._reactor.callLater(0, self._pull)

    def _pull(self) -> None:
        self._pull_call = None
        if self.producer is not None and not self._streaming and self.buffered < self._low:
            self.producer.resumeProducing()
