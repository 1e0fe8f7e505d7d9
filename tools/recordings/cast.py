"""One asciicast v2 file, read as input like any other: the header checked field by field
(:class:`Header`), and the events streamed line by line, bounded (:func:`events`), so that a
recording of any size is never held in memory. :func:`summarize` is the one pass over the
events that ``list`` and ``show`` report from.

Tolerance, because the files come from a recorder that may have been killed, from other
asciicast writers (``asciinema rec``), or from a newer recorder: header keys this reader
does not know are kept as they are; events with codes it does not know are counted and
passed over; a line that is not an event (not JSON, not ``[time, code, data]``) is skipped
with a note, and so is a last line cut off by a crash.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tools.flows.records import safe_text
from tools.jsonl_store import bounded_lines

# The recorder writes events of at most a few tens of KiB; a line far longer than any event
# it writes is not one of its events, and is skipped without being held whole.
MAX_LINE_BYTES = 16 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_ENV = 50
MAX_NOTES = 20

OUTPUT = "o"
INPUT = "i"
RESIZE = "r"
MARKER = "m"
# The gateway's recorder writes a session's stderr as an "o" event (players show it where
# the client saw it) right after a marker with this label.
STDERR_LABEL = "stderr"
# The label (then ": REASON") of the marker the recorder writes where events went missing
# (disk full or too slow): the session went on, the recording lost events there.
TRUNCATED_LABEL = "truncated"

# Header keys shown under their own names; the rest are "other keys".
KNOWN_HEADER_KEYS = (
    "version",
    "width",
    "height",
    "timestamp",
    "duration",
    "idle_time_limit",
    "command",
    "title",
    "env",
    "theme",
)


_GATEWAY_TITLE = re.compile(r"([^\s>]+) -> ([^\s:]+)(?::|\Z)")


class CastError(Exception):
    """A file that is not an asciicast v2 recording at all (its header is unreadable)."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _size(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 100_000:
        return None
    return value


@dataclass
class Header:
    """The header line, each field checked; ``raw`` is the decoded object as written."""

    raw: dict[str, Any]
    width: int | None
    height: int | None
    timestamp: float | None
    duration: float | None
    idle_time_limit: float | None
    title: str | None
    command: str | None
    env: dict[str, str]

    def meta(self, *names: str) -> str | None:
        """The first of ``names`` the header carries as text (bounded, made printable):
        looked up at the top level and in an ``sshgateway`` object, where a recorder may
        put what the standard has no key for (user, target, session id)."""
        nested = self.raw.get("sshgateway")
        for name in names:
            for source in (self.raw, nested if isinstance(nested, dict) else {}):
                text = safe_text(source.get(name))
                if text:
                    return text
        return None

    @property
    def user(self) -> str | None:
        return self.meta("user", "username") or self._from_title(1)

    @property
    def target(self) -> str | None:
        return self.meta("target") or self._from_title(2)

    def _from_title(self, group: int) -> str | None:
        # The gateway's recorder titles a recording "USER -> TARGET" (": COMMAND" after it
        # for an exec session).
        found = _GATEWAY_TITLE.match(self.title or "")
        return found.group(group) if found else None

    def other_keys(self) -> dict[str, Any]:
        return {k: v for k, v in self.raw.items() if k not in KNOWN_HEADER_KEYS}


def parse_header(line: bytes) -> Header:
    """The header line of a v2 file; :class:`CastError` when it is not one."""
    try:
        raw = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CastError("the first line is not a JSON header") from None
    if not isinstance(raw, dict):
        raise CastError("the first line is not a JSON object")
    if raw.get("version") != 2:
        version = safe_text(raw.get("version"), 20)
        raise CastError(f"not asciicast v2 (version {version or 'missing'})")
    env = raw.get("env")
    checked_env: dict[str, str] = {}
    if isinstance(env, dict):
        for key, value in list(env.items())[:MAX_ENV]:
            text = safe_text(value)
            if isinstance(key, str) and text is not None:
                checked_env[safe_text(key, 64) or "?"] = text
    return Header(
        raw=raw,
        width=_size(raw.get("width")),
        height=_size(raw.get("height")),
        timestamp=_number(raw.get("timestamp")),
        duration=_number(raw.get("duration")),
        idle_time_limit=_number(raw.get("idle_time_limit")),
        title=safe_text(raw.get("title")),
        command=safe_text(raw.get("command"), 1000),
        env=checked_env,
    )


@dataclass(frozen=True)
class Event:
    time: float
    code: str
    data: Any  # a str for "o", "i", "m", "r"; anything for codes this reader does not know


def is_truncation_mark(event: Event) -> bool:
    return (
        event.code == MARKER
        and isinstance(event.data, str)
        and event.data.lower().startswith(TRUNCATED_LABEL)
    )


def _event(decoded: Any) -> Event | None:
    # Exactly three items, as the format says: players unpack them so (asciinema 2 fails on
    # any other count), and export must never hand them a line they fail on.
    if not isinstance(decoded, list) or len(decoded) != 3:
        return None
    time, code, data = decoded
    seconds = _number(time)
    if seconds is None or seconds < 0 or not isinstance(code, str) or not code:
        return None
    return Event(seconds, code, data)


@dataclass
class CastFile:
    """One recording file, opened for reading; notes say what had to be skipped."""

    path: Path
    notes: list[str] = field(default_factory=list)

    def _note(self, note: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(note)

    def _open(self) -> BinaryIO:
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise CastError(f"{self.path}: {e.strerror or e}") from None

    def header(self) -> Header:
        return parse_header(self.header_line())

    def header_line(self) -> bytes:
        """The header line as written (what ``export`` copies)."""
        with self._open() as f:
            return self._read_header_line(f)

    def _read_header_line(self, f: BinaryIO) -> bytes:
        line = f.readline(MAX_HEADER_BYTES + 1)
        if len(line) > MAX_HEADER_BYTES:
            raise CastError("the header line is too long")
        if not line.strip():
            raise CastError("the file is empty")
        parse_header(line)
        return line

    def _event_lines(self) -> Iterator[tuple[int, bytes]]:
        """Each line after the header (number, bytes with the newline when there)."""
        with self._open() as f:
            self._read_header_line(f)
            for number, line in bounded_lines(f, MAX_LINE_BYTES, first=2):
                if line is None:
                    self._note(f"line {number}: longer than {MAX_LINE_BYTES} bytes, skipped")
                    continue
                yield number, line

    def events(self) -> Iterator[tuple[Event, bytes]]:
        """Each event with its line as written; lines that are not events are noted."""
        for number, line in self._event_lines():
            if not line.strip():
                continue
            try:
                event = _event(json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, ValueError, RecursionError):
                event = None
                if not line.endswith(b"\n"):
                    self._note(f"line {number}: the last line is cut off (a crash?), skipped")
                    continue
            if event is None:
                self._note(f"line {number}: not an event, skipped")
                continue
            yield event, line


@dataclass
class Summary:
    """What one pass over the events found."""

    events: Counter[str] = field(default_factory=Counter)
    last_time: float = 0.0
    output_chars: int = 0  # stderr included
    stderr_chars: int = 0
    input_chars: int = 0
    sizes: list[str] = field(default_factory=list)  # each "r" event's "COLSxROWS", first 20
    markers: list[tuple[float, str]] = field(default_factory=list)  # first 20, not stderr's
    truncated_at: float | None = None  # the recorder's first truncation mark
    truncated_reason: str | None = None

    @property
    def truncated(self) -> bool:
        return self.truncated_at is not None


def summarize(cast: CastFile) -> Summary:
    summary = Summary()
    stderr_next = False
    for event, _ in cast.events():
        summary.events[event.code] += 1
        summary.last_time = max(summary.last_time, event.time)
        text = event.data if isinstance(event.data, str) else ""
        if event.code == OUTPUT:
            summary.output_chars += len(text)
            if stderr_next:
                summary.stderr_chars += len(text)
        elif event.code == INPUT:
            summary.input_chars += len(text)
        elif event.code == RESIZE and len(summary.sizes) < 20:
            summary.sizes.append(safe_text(text, 20) or "?")
        elif event.code == MARKER and text != STDERR_LABEL:
            if is_truncation_mark(event) and summary.truncated_at is None:
                summary.truncated_at = event.time
                reason = text[len(TRUNCATED_LABEL):].lstrip(": ")
                summary.truncated_reason = safe_text(reason) or None
            if len(summary.markers) < 20:
                summary.markers.append((event.time, safe_text(text) or ""))
        stderr_next = event.code == MARKER and text == STDERR_LABEL
    return summary
