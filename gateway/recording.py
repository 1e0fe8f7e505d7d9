"""Session recordings: every session but SFTP/subsystem ones, as an asciicast v2 file.

The recorder is a session tap (gateway.session_tap): :class:`RecordingTap` gives each
session the config wants recorded (:func:`wants_recording`) a :class:`Recording`, which
turns what the client saw into asciicast v2 lines (https://docs.asciinema.org/manual/
asciicast/v2/), the format ``asciinema play`` replays:

- the header: ``version`` 2, ``width``/``height`` (the pty's, else 80x24), ``timestamp``,
  ``title`` (``user -> target``, with ``: command`` for an exec session), ``command`` (exec
  sessions), ``env`` (``TERM``, ``SHELL`` when known);
- ``[t, "o", text]``: output; stderr output is an ``"o"`` event too (players show it where
  the client saw it), right after a marker ``[t, "m", "stderr"]`` that says so;
- ``[t, "i", text]``: input, only with ``[recording] input = true``;
- ``[t, "r", "COLSxROWS"]``: a window change;
- ``[t, "m", "truncated: REASON"]``: events were lost here (see below).

Output is not one event per packet: consecutive chunks of one stream (stdout or stderr)
within :data:`COALESCE_INTERVAL` (10 ms) of the first, up to :data:`COALESCE_BYTES`, are
one event timed at its first chunk; any other event (input, window change, the other
stream, the end) closes the batch first, so the order is kept. A player shows each event at
once: output is replayed at most 10 ms early, under a frame at 60 Hz. Encoding a batch at a
time (not each 4 KiB pty read) is what keeps the recorder's cost within its budget.

Output is bytes, asciicast is text: each stream goes through an incremental UTF-8 decoder
with replacement, so a character split across two writes survives and invalid bytes show
as U+FFFD; the file is valid UTF-8 JSON lines whatever the session sent.

Writing never blocks the session. Events wait in memory per recording (at most
:data:`BUFFER_LIMIT` bytes, waiting and being written together, and the open batch of
output) and are handed, at most a
second after they happened (sooner once :data:`FLUSH_BYTES` wait), to one background
thread (:class:`BackgroundWriter`) that appends them to the file; one write per recording
is with the thread at a time. A crash loses at most the last second. When the limit is
reached (the disk is slower than the session) events are dropped until the writer has
caught up; when a write fails (disk full, read-only, permission) the file is cut back to
its last whole line. Either way the session goes on, the file gets a ``truncated`` marker
where events are missing (when the disk takes it), and a ``RECORDING_TRUNCATED`` gateway
event (gateway.events) says so once per recording. A file that cannot be created at all is
not recorded, with the same event.

Retention (:func:`apply_retention`): at start and hourly, on the writer thread, finished
recordings older than ``max_age_days`` are deleted, then the oldest until the rest take no
more than ``max_total_bytes``.
"""

from __future__ import annotations

import codecs
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Collection
from contextlib import suppress
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from gateway.events import RECORDING_TRUNCATED, emit
from gateway.session_tap import ISessionObserver, ISessionTap, LiveSession, SessionInfo
from protocols.session import ExitInfo, WindowSize

log = Logger()

RECORDINGS_DIR = "recordings"
CAST_SUFFIX = ".cast"
# Events reach the writer no later than this after they happened (what a crash can lose).
FLUSH_INTERVAL = 1.0
# ... and sooner once this much waits, so that a busy session writes in steady chunks.
# Each hand-over to the writer thread costs a thread wake-up and a reactor wake-up: at
# 64 KiB a bulk transfer through a pty cost 1.52x the CPU of no recording, at 1 MiB 1.15x
# (bench.recording, 64 MiB, same run).
FLUSH_BYTES = 1024 * 1024
# Per recording: bytes waiting or being written. Beyond it, events are dropped.
BUFFER_LIMIT = 4 * 1024 * 1024
# Output chunks of one stream that follow each other within this many seconds of the first
# are one event (timed at the first), up to COALESCE_BYTES: a pty hands the gateway 4 KiB
# at a time, and encoding each alone cost more than the goal of 5% allows (see README).
# Players show an event at once, so within a batch output appears up to 10 ms early: less
# than a frame at 60 Hz (16.7 ms).
COALESCE_INTERVAL = 0.010
COALESCE_BYTES = 64 * 1024
RETENTION_INTERVAL = 3600.0
DEFAULT_WIDTH, DEFAULT_HEIGHT = 80, 24
# The labels of the marker events ("m") the recorder writes.
STDERR_MARKER = "stderr"
TRUNCATED_MARKER = "truncated"
# How long stopping waits for the writer thread to finish what it was given.
STOP_TIMEOUT = 10.0

# The most buffers one writev takes (POSIX guarantees 16; Linux takes 1024).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


# --- what is recorded, where ----------------------------------------------------------------


def recordings_dir(config: Any) -> Path:
    """``[recording] dir``, else ``<state_dir>/recordings``."""
    directory = config.recording.dir
    return Path(directory) if directory is not None else Path(config.state_dir) / RECORDINGS_DIR


def wants_recording(config: Any, info: SessionInfo) -> bool:
    """Whether the session is recorded: never a subsystem (SFTP) session or a jump-host
    forward (the client's own encrypted SSH); else ``record``
    of the user or the target when either says ``true``, else ``false`` when either says
    so, else ``[recording] enabled``. (``true`` wins: a setting that asks for a recording
    is never overruled by one that does not.)"""
    if info.subsystem is not None or info.forward is not None:
        return False
    user = config.users.get(info.username)
    target = config.targets.get(info.target)
    choices = {getattr(user, "record", None), getattr(target, "record", None)}
    if True in choices:
        return True
    if False in choices:
        return False
    return bool(config.recording.enabled)


def cast_name(info: SessionInfo) -> str:
    """``<flow id>.<session id>.cast`` (a connection can carry several sessions), or
    ``<session id>.cast`` for a session with no client flow."""
    parts = [info.flow_id, info.session_id] if info.flow_id else [info.session_id]
    return ".".join(_UNSAFE_NAME.sub("_", part) for part in parts) + CAST_SUFFIX


def cast_title(info: SessionInfo) -> str:
    title = f"{info.username} -> {info.target}"
    command = info.command_text
    return f"{title}: {command}" if command is not None else title


def cast_header(info: SessionInfo, shell: str | None = None) -> dict[str, Any]:
    """The asciicast v2 header of the session's recording."""
    size = info.pty.size if info.pty is not None else None
    header: dict[str, Any] = {
        "version": 2,
        "width": (size.cols if size is not None and size.cols > 0 else DEFAULT_WIDTH),
        "height": (size.rows if size is not None and size.rows > 0 else DEFAULT_HEIGHT),
        "timestamp": int(info.started or time.time()),
        "title": cast_title(info),
    }
    if info.command is not None:
        header["command"] = info.command_text
    env = {}
    if info.pty is not None and info.pty.term:
        env["TERM"] = info.pty.term
    shell = info.env.get("SHELL") or shell
    if shell:
        env["SHELL"] = shell
    header["env"] = env
    return header


def header_line(header: dict[str, Any]) -> bytes:
    # ASCII: whatever the names hold, the header reads back as it was written.
    return (json.dumps(header, ensure_ascii=True) + "\n").encode("ascii")


def event_line(at: float, code: str, text: str) -> bytes:
    """One event: ``[time, code, text]`` (time in seconds since the start, 6 decimals)."""
    return f"[{at:.6f}, {json.dumps(code)}, {json.dumps(text, ensure_ascii=False)}]\n".encode()


# Terminal output is mostly ASCII text with a few control characters. For such a chunk the
# event line is made from the bytes in a few C passes, escaped as json.dumps escapes them:
# json.dumps alone cost 3.8 CPU s/GiB of pty output, most of the recorder's cost. Any
# other control character, or any byte past ASCII, takes the decoder and json.dumps.
_FAST_ESCAPES = (
    (b"\\", b"\\\\"),  # first: the escapes below add backslashes
    (b'"', b'\\"'),
    (b"\n", b"\\n"),
    (b"\r", b"\\r"),
    (b"\t", b"\\t"),
    (b"\x08", b"\\b"),
    (b"\x1b", b"\\u001b"),
)
_OTHER_CONTROLS = bytes(c for c in range(0x20) if c not in b"\n\r\t\x08\x1b")
_OTHER_CONTROL_BYTES = tuple(bytes([c]) for c in _OTHER_CONTROLS)
# From this size on, looking for each other control character (memchr, 27 passes) is
# cheaper than one translate pass (64 KiB: 0.37 against 0.66 CPU s/GiB); below, not.
_SEARCH_FROM = 16 * 1024


def ascii_escaped(data: bytes) -> bytes | None:
    """``data`` as the inside of a JSON string (escaped as json.dumps escapes it) when it
    is ASCII whose only control characters are newline, carriage return, tab, backspace
    and escape; None for any other ``data``."""
    if not data.isascii():
        return None
    if len(data) >= _SEARCH_FROM:
        for control in _OTHER_CONTROL_BYTES:
            if control in data:
                return None
    elif len(data.translate(None, _OTHER_CONTROLS)) != len(data):
        return None
    for raw, escaped in _FAST_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def event_start(at: float, code: str) -> bytes:
    """What comes before an event's escaped text: ``[time, "code", "``."""
    return b'[%.6f, "%s", "' % (at, code.encode("ascii"))


EVENT_END = b'"]\n'


def ascii_event_line(at: float, code: str, data: bytes) -> bytes | None:
    """``event_line(at, code, data.decode())`` for the ``data`` :func:`ascii_escaped`
    takes; None for any other ``data``."""
    escaped = ascii_escaped(data)
    return None if escaped is None else event_start(at, code) + escaped + EVENT_END


def _local_shell(config: Any, info: SessionInfo) -> str | None:
    """The login shell of a ``local`` session's OS account (what it runs), if known."""
    if info.target_protocol != "local":
        return None
    user = config.users.get(info.username)
    os_user = getattr(user, "os_user", None)
    if not os_user:
        return None
    import pwd

    try:
        return pwd.getpwnam(os_user).pw_shell or None
    except KeyError:
        return None


# --- the file, on the writer thread ---------------------------------------------------------


class CastFile:
    """One recording's file, used only from the writer thread: created mode 0600 (its
    directory 0700), appended to whole lines at a time. A failed append cuts the file back
    to its last whole line, so it stays a valid asciicast file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._size = 0  # bytes of whole lines in the file

    def create(self, header: bytes) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            self.append(header)
        except OSError:
            # No header: nothing that could be played; leave no file.
            self.close()
            with suppress(OSError):
                self.path.unlink()
            raise

    def append(self, data: bytes | list[bytes]) -> None:
        """Append ``data``: bytes, or pieces written in order (os.writev, so that they
        are never joined in memory)."""
        if self._fd is None:
            raise OSError(9, "the recording file is not open")
        views = [memoryview(piece) for piece in ([data] if isinstance(data, bytes) else data)]
        size = sum(len(view) for view in views)
        try:
            while views:
                written = self._write(self._fd, views[:_IOV_MAX])
                done = 0
                while done < len(views) and written >= len(views[done]):
                    written -= len(views[done])
                    done += 1
                del views[:done]
                if written:
                    views[0] = views[0][written:]
        except OSError:
            with suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += size

    def _write(self, fd: int, buffers: list[memoryview]) -> int:
        return os.writev(fd, buffers)

    def finish(self, data: bytes | list[bytes], marker: bytes) -> None:
        """Append the last ``data`` and close. When that fails, ``marker`` (a truncated
        marker line) is tried instead, the file closed, and the error raised."""
        try:
            if data:
                self.append(data)
        except OSError:
            with suppress(OSError):
                self.append(marker)
            raise
        finally:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


# --- the writer thread ----------------------------------------------------------------------


class IBackgroundWriter(Interface):
    """Runs file work off the reactor thread, in the order it was given."""

    def run(work: Callable[..., Any], *args: Any) -> Deferred:
        """Call ``work(*args)`` away from the reactor; the Deferred fires in the reactor
        thread with its result or failure."""

    def stop() -> None:
        """Finish what was given (within a bound) and stop."""


@implementer(IBackgroundWriter)
class BackgroundWriter:
    """One daemon thread working through a queue. The queue holds at most one write per
    recording (and its last one) plus the retention sweeps: :class:`Recording` waits for
    its write to finish before it hands over the next."""

    def __init__(self, reactor: Any, name: str = "sshgateway-recordings") -> None:
        self._reactor = reactor
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, work: Callable[..., Any], *args: Any) -> Deferred:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        done: Deferred = Deferred()
        self._queue.put((work, args, done))
        return done

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            work, args, done = item
            try:
                result = work(*args)
            except BaseException:
                self._reactor.callFromThread(done.errback, Failure())
            else:
                self._reactor.callFromThread(done.callback, result)

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(STOP_TIMEOUT)
            self._thread = None


# --- one session's recording, on the reactor thread -----------------------------------------


@implementer(ISessionObserver)
class Recording:
    """Records one session (an ISessionObserver): encodes its events, buffers them with a
    bound, and hands them to the writer. Nothing here blocks or raises into the session."""

    def __init__(
        self,
        session: LiveSession,
        path: Path,
        header: dict[str, Any],
        *,
        reactor: Any,
        writer: Any,
        record_input: bool = False,
        limit: int = BUFFER_LIMIT,
        file_factory: Callable[[Path], Any] = CastFile,
        on_closed: Callable[[Recording], None] = lambda recording: None,
    ) -> None:
        self.session = session
        self.path = path
        self.record_input = record_input
        self.truncated: str | None = None  # why events were first lost, if they were
        self.closed = False  # the file is closed (or was never created)
        self._reactor = reactor
        self._writer = writer
        self._limit = limit
        self._on_closed = on_closed
        self._start = reactor.seconds()
        self._decoders: dict[str, Any] = {}
        # Output not yet encoded: consecutive chunks of one stream (see COALESCE_INTERVAL).
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batch_at = 0.0  # when its first chunk came (reactor.seconds())
        self._batch_stream = "o"  # "o" stdout, "e" stderr
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._in_flight = 0  # bytes with the writer
        self._busy = True  # a write is with the writer (first: the file's creation)
        self._dropping = False  # over the limit: dropping until the writer catches up
        self._gap: bytes | None = None  # the truncated marker for where events went missing
        self._broken = False  # no file: nothing more is written
        self._created = False  # the file exists with its header
        self._ended = False
        self._timer: Any = None
        self._file = file_factory(path)
        writer.run(self._file.create, header_line(header)).addCallbacks(self._written, self._failed)

    # ISessionObserver

    def output(self, data: bytes, stderr: bool) -> None:
        # Per packet: only kept, as it came; encoded a batch at a time (_close_batch).
        if self._broken or self._ended or self._dropping or not data:
            return
        now = self._reactor.seconds()
        stream = "e" if stderr else "o"
        batch = self._batch
        if batch and (stream != self._batch_stream or now - self._batch_at > COALESCE_INTERVAL):
            self._close_batch()
        if not batch:
            self._batch_at = now
            self._batch_stream = stream
        batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= COALESCE_BYTES:
            self._close_batch()
        elif self._timer is None:
            self._timer = self._reactor.callLater(FLUSH_INTERVAL, self._flush)

    def input(self, data: bytes) -> None:
        if self.record_input:
            self._close_batch()
            text = self._decode("i", data)
            if text:
                self._add("i", text)

    def resized(self, size: WindowSize) -> None:
        self._close_batch()
        self._add("r", f"{size.cols}x{size.rows}")

    def ended(self, info: ExitInfo | None) -> None:
        self._close_batch()
        for stream in tuple(self._decoders):
            tail = self._decode(stream, b"", final=True)
            if tail:
                if stream == "e":
                    self._add("m", STDERR_MARKER)
                self._add("i" if stream == "i" else "o", tail)
        self._ended = True
        self._cancel_timer()
        if self._broken:
            self._close()
            return
        # The last write goes to the writer at once, even behind one still running: the
        # writer keeps the order, and at shutdown nothing waits for a callback.
        data, _ = self._take()
        marker = self._marker_line("the last events could not be written")
        self._writer.run(self._file.finish, data, marker).addCallbacks(
            lambda _: self._close(), self._failed_at_end
        )

    # events into the buffer

    def _now(self) -> float:
        return max(0.0, self._reactor.seconds() - self._start)

    def _close_batch(self) -> None:
        """Turn the output kept since the batch began into one event (timed when it began),
        after a stderr marker for stderr output."""
        batch = self._batch
        if not batch:
            return
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        self._batch_bytes = 0
        stream = self._batch_stream
        at = max(0.0, self._batch_at - self._start)
        escaped = None if self._midway(stream) else ascii_escaped(data)
        if escaped is None:
            text = self._decode(stream, data)
            if not text:
                return
        if stream == "e":
            self._add_line(event_line(at, "m", STDERR_MARKER))
        if escaped is None:
            self._add_line(event_line(at, "o", text))
        else:
            # in three pieces: they are joined once, with the rest of the write (_take)
            self._add_line(event_start(at, "o"), escaped, EVENT_END)

    def _midway(self, stream: str) -> bool:
        """Whether the stream's decoder holds the first bytes of a character."""
        decoder = self._decoders.get(stream)
        return decoder is not None and decoder.getstate()[0] != b""

    def _decode(self, stream: str, data: bytes, final: bool = False) -> str:
        decoder = self._decoders.get(stream)
        if decoder is None:
            decoder = self._decoders[stream] = codecs.getincrementaldecoder("utf-8")("replace")
        return decoder.decode(data, final)

    def _add(self, code: str, text: str) -> None:
        if self._broken or self._ended or self._dropping:
            return
        self._add_line(event_line(self._now(), code, text))

    def _add_line(self, *pieces: bytes) -> None:
        """Add one event line (given whole, or in pieces)."""
        if self._broken or self._ended or self._dropping:
            return
        size = sum(map(len, pieces)) if len(pieces) > 1 else len(pieces[0])
        if self._pending_bytes + self._in_flight + size > self._limit:
            self._dropping = True
            self._lose(f"the disk is too slow: more than {self._limit} bytes waited to be written")
            if not self._busy and self._timer is None:
                # Nothing with the writer to catch up with: the marker's write ends the gap.
                self._timer = self._reactor.callLater(FLUSH_INTERVAL, self._flush)
            return
        self._pending += pieces
        self._pending_bytes += size
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()
        elif self._timer is None:
            self._timer = self._reactor.callLater(FLUSH_INTERVAL, self._flush)

    def _marker_line(self, reason: str) -> bytes:
        return event_line(self._now(), "m", f"{TRUNCATED_MARKER}: {reason}")

    def _lose(self, reason: str) -> None:
        """Events are lost from now: the next write starts with a marker saying so, and
        the first loss of the recording is reported."""
        if self._gap is None:
            self._gap = self._marker_line(reason)
        if self.truncated is None:
            self.truncated = reason
            info = self.session.info
            emit(
                log,
                RECORDING_TRUNCATED,
                "session {session}: recording {recording} truncated: {reason}",
                session=info.session_id,
                recording=str(self.path),
                reason=reason,
                user=info.username,
                target=info.target,
            )

    def _take(self) -> tuple[list[bytes], int]:
        """What waits, in pieces (the file writes them with one writev: no join, no big
        buffer made and freed per write), and its size."""
        pieces, size = self._pending, self._pending_bytes
        if self._gap is not None:
            pieces.insert(0, self._gap)
            size += len(self._gap)
            self._gap = None
        self._pending = []
        self._pending_bytes = 0
        return pieces, size

    # the buffer to the writer

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        self._cancel_timer()
        self._close_batch()
        if self._busy or self._broken or self._ended or not (self._pending or self._gap):
            return  # (a busy writer's completion flushes what waits)
        data, self._in_flight = self._take()
        self._busy = True
        self._writer.run(self._file.append, data).addCallbacks(self._written, self._failed)

    def _written(self, _: object) -> None:
        self._created = True
        self._busy = False
        self._in_flight = 0
        self._dropping = False  # caught up: recording resumes, after the marker
        if self._ended:
            return
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()
        elif (self._pending or self._gap or self._batch) and self._timer is None:
            self._timer = self._reactor.callLater(FLUSH_INTERVAL, self._flush)

    def _failed(self, failure: Failure) -> None:
        self._busy = False
        self._in_flight = 0
        self._dropping = False  # the writer is idle again: what follows waits for the retry
        reason = _reason(failure)
        if not self._created:
            # The file could not be created (read-only, no permission, full): no recording.
            self._broken = True
            self._pending, self._pending_bytes = [], 0
            self._batch.clear()
            self._batch_bytes = 0
            self._lose(f"cannot create the file: {reason}")
            if self._ended:
                self._close()
            return
        self._lose(f"cannot write: {reason}")
        # What waits is tried again at the next flush, after the marker.
        if not self._ended and self._timer is None:
            self._timer = self._reactor.callLater(FLUSH_INTERVAL, self._flush)

    def _failed_at_end(self, failure: Failure) -> None:
        if not self._broken:
            self._lose(f"cannot write: {_reason(failure)}")
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_closed(self)


def _reason(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, OSError):
        return error.strerror or str(error)
    log.failure("recording writer failed", failure)
    return repr(error)


# --- retention ------------------------------------------------------------------------------


def apply_retention(
    directory: Path,
    max_age: float,
    max_total: int,
    keep: Collection[Path] = (),
    now: float | None = None,
) -> list[Path]:
    """Delete recordings (``*.cast`` in ``directory``) older than ``max_age`` seconds, then
    the oldest until the rest take at most ``max_total`` bytes (0: no such limit), sparing
    ``keep`` (the ones being written). Returns what was deleted. Runs on the writer thread."""
    now = time.time() if now is None else now
    spared = {Path(p) for p in keep}
    files: list[tuple[float, int, Path]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.endswith(CAST_SUFFIX):
            continue
        try:
            stat = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        files.append((stat.st_mtime, stat.st_size, Path(entry.path)))
    files.sort()
    removed: list[Path] = []
    total = sum(size for _, size, _ in files)
    for mtime, size, path in files:
        if path in spared:
            continue
        too_old = max_age > 0 and now - mtime > max_age
        too_much = max_total > 0 and total > max_total
        if not (too_old or too_much):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("cannot delete old recording {path}: {error}", path=str(path), error=e)
            continue
        total -= size
        removed.append(path)
    return removed


# --- the tap ------------------------------------------------------------------------------


@implementer(ISessionTap)
class RecordingTap:
    """Gives each session the config wants recorded its :class:`Recording` (and sets
    ``session.recording`` to the file), and applies retention at start and hourly."""

    def __init__(
        self,
        config: Any,
        reactor: Any,
        writer: Any = None,
        *,
        limit: int = BUFFER_LIMIT,
        file_factory: Callable[[Path], Any] = CastFile,
    ) -> None:
        self.config = config
        self._reactor = reactor
        self.writer = writer if writer is not None else BackgroundWriter(reactor)
        self._limit = limit
        self._file_factory = file_factory
        self.recordings: set[Recording] = set()  # not yet closed
        self._retention: LoopingCall | None = None

    def reconfigure(self, config: Any) -> None:
        self.config = config

    def start(self) -> None:
        """Apply retention now and every RETENTION_INTERVAL (once the reactor runs)."""
        if self._retention is None:
            self._retention = LoopingCall(self.enforce_retention)
            self._retention.clock = self._reactor
            self._retention.start(RETENTION_INTERVAL, now=True)

    def stop(self) -> None:
        if self._retention is not None and self._retention.running:
            self._retention.stop()
        self.writer.stop()

    def session_started(self, session: LiveSession) -> Recording | None:
        info = session.info
        if not wants_recording(self.config, info):
            return None
        path = recordings_dir(self.config) / cast_name(info)
        header = cast_header(info, _local_shell(self.config, info))
        recording = Recording(
            session,
            path,
            header,
            reactor=self._reactor,
            writer=self.writer,
            record_input=self.config.recording.input,
            limit=self._limit,
            file_factory=self._file_factory,
            on_closed=self.recordings.discard,
        )
        if not recording.closed:
            self.recordings.add(recording)
        session.recording = str(path)
        return recording

    def enforce_retention(self) -> Deferred | None:
        settings = self.config.recording
        max_age = settings.max_age_days * 86400.0
        if max_age <= 0 and settings.max_total_bytes <= 0:
            return None
        keep = [recording.path for recording in self.recordings]
        done = self.writer.run(
            apply_retention, recordings_dir(self.config), max_age, settings.max_total_bytes, keep
        )
        done.addCallbacks(self._retained, self._retention_failed)
        return done

    def _retained(self, removed: list[Path]) -> None:
        if removed:
            log.info("recordings: deleted {count} old recording(s) (retention)", count=len(removed))

    def _retention_failed(self, failure: Failure) -> None:
        log.failure("recordings: retention failed", failure)


__all__ = [
    "BUFFER_LIMIT",
    "BackgroundWriter",
    "CastFile",
    "IBackgroundWriter",
    "Recording",
    "RecordingTap",
    "apply_retention",
    "cast_header",
    "cast_name",
    "recordings_dir",
    "wants_recording",
]
