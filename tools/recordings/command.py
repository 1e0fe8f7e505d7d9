"""``sshgateway recordings list|show|play|export``: the options, finding the recordings
directory (``--state-dir``, the config that names it, or ``--dir``), and running a
subcommand. Notes on skipped lines go to stderr. Returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO

from gateway.config import ConfigError, load_config
from gateway.recording import RECORDINGS_DIR, recordings_dir
from tools.flows.records import safe_text
from tools.recordings.cast import CastError, CastFile, Header, Summary, summarize
from tools.recordings.player import Timing, play
from tools.recordings.store import Entry, RecordingStore, StoreError

DEFAULT_LIMIT = 20
EXIT_INTERRUPTED = 130


class _IO(Protocol):
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO


class CommandError(Exception):
    """A user-facing error: printed on stderr, exit status 1."""


def setup_parser(p: argparse.ArgumentParser) -> None:
    """``sshgateway recordings``: the subcommands and their options."""
    p.description = (
        "Read the session recordings the gateway writes (asciicast v2, one .cast file per "
        "session): list them, show one's header and summary, replay one in the terminal, "
        "or export one for `asciinema play` and other asciicast players."
    )
    sub = p.add_subparsers(dest="recordings_command", required=True, metavar="SUBCOMMAND")

    def common(q: argparse.ArgumentParser, needs_source: bool = False) -> None:
        source = q.add_mutually_exclusive_group(required=needs_source)
        source.add_argument("--state-dir", help="the gateway's state directory")
        source.add_argument(
            "--config", help="a config file (its [recording] dir, or its state_dir, is used)"
        )
        source.add_argument("--dir", help="a directory of .cast files (e.g. copied elsewhere)")

    def recording(q: argparse.ArgumentParser) -> None:
        common(q)
        q.add_argument(
            "id",
            help="a recording ID (the file name without .cast) or a unique prefix of one; "
            "or the path of a .cast file",
        )

    q = sub.add_parser("list", help="recent recordings, newest first")
    common(q, needs_source=True)
    q.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    q.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="how many (default 20)")
    q = sub.add_parser("show", help="one recording's header and a summary of its events")
    recording(q)
    q.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    q = sub.add_parser(
        "play",
        help="replay a recording in this terminal",
        description="Write a recording's output to this terminal with its timing. Ctrl-C "
        "stops. The output is replayed as it was recorded, escape sequences included.",
    )
    recording(q)
    q.add_argument("--speed", type=float, default=1.0, help="speed factor (2: twice as fast)")
    q.add_argument(
        "--max-idle",
        type=float,
        metavar="SECONDS",
        help="cut every longer pause to this (default: the header's idle_time_limit)",
    )
    q = sub.add_parser(
        "export",
        help="write a recording as a .cast file",
        description="Write a recording as an asciicast v2 file (to stdout, or -o FILE, "
        "created 0600: a recording may hold what was typed). Lines that are not events "
        "(the cut-off last line of a crash) are left out, so that any asciicast player "
        "reads the result.",
    )
    recording(q)
    q.add_argument("-o", "--output", help="write to this file instead of stdout")


def recordings_directory(args: argparse.Namespace) -> Path:
    """Where the recordings are: ``--dir``, ``<state_dir>/recordings``, or what the config
    says (its ``[recording] dir``, else its state directory's ``recordings``)."""
    if args.dir:
        return Path(args.dir)
    if args.state_dir:
        state_dir = Path(args.state_dir)
        if not state_dir.is_dir():
            why = "is not a directory" if state_dir.exists() else "does not exist"
            raise CommandError(f"state directory {safe_text(str(state_dir))} {why}")
        return state_dir / RECORDINGS_DIR
    try:
        return recordings_dir(load_config(args.config))
    except ConfigError as e:
        raise CommandError(str(e)) from None


def run(args: argparse.Namespace, io: _IO) -> int:
    """Run ``sshgateway recordings ...``; returns the exit status."""
    casts: list[CastFile] = []
    try:
        status = _dispatch(args, io, casts)
    except (CommandError, StoreError, CastError) as e:
        _print_notes(casts, io)
        print(f"sshgateway recordings: {e}", file=io.stderr)
        return 1
    _print_notes(casts, io)
    return status


def _print_notes(casts: list[CastFile], io: _IO) -> None:
    for cast in casts:
        for note in cast.notes:
            print(f"sshgateway recordings: note: {cast.path.name}: {note}", file=io.stderr)


def _store(args: argparse.Namespace) -> RecordingStore:
    return RecordingStore(recordings_directory(args))


def _find(args: argparse.Namespace) -> Entry:
    if not (args.dir or args.state_dir or args.config):
        path = Path(args.id)
        if not path.is_file():
            raise CommandError(
                f"{safe_text(args.id, 64)!r} is not a file: give --state-dir, --config or "
                "--dir to find a recording by ID"
            )
        return RecordingStore(path.parent).find(str(path))
    return _store(args).find(args.id)


def _dispatch(args: argparse.Namespace, io: _IO, casts: list[CastFile]) -> int:
    command = args.recordings_command
    if command == "list":
        if args.limit < 1:
            raise CommandError("--limit must be at least 1")
        return _list(_store(args), args, io, casts)
    entry = _find(args)
    cast = CastFile(entry.path)
    casts.append(cast)
    if command == "show":
        header = cast.header()
        summary = summarize(cast)
        if args.format == "json":
            io.stdout.write(_dumps(_show_json(entry, header, summary, cast)))
        else:
            io.stdout.write(_show_text(entry, header, summary))
        return 0
    if command == "play":
        return _play(cast, args, io)
    return _export(cast, args, io)


# -- list ------------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=True) + "\n"


def _started(header: Header, entry: Entry) -> datetime:
    seconds = header.timestamp if header.timestamp is not None else entry.mtime
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.fromtimestamp(entry.mtime, UTC)


def _duration(header: Header, summary: Summary) -> float:
    return max(header.duration or 0.0, summary.last_time)


def _byte_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    raise AssertionError


def _secs(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _what(command: str | None) -> str:
    return f"exec: {command}" if command else "shell"


def _list_item(entry: Entry, header: Header | None, summary: Summary | None,
               error: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": safe_text(entry.id), "file": str(entry.path),
                            "size": entry.size}
    if header is None or summary is None:
        item["error"] = error
        return item
    item.update(
        user=header.user,
        target=header.target,
        started=_started(header, entry).isoformat(),
        duration=round(_duration(header, summary), 3),
        truncated=summary.truncated,
        command=header.command,
        title=header.title,
        width=header.width,
        height=header.height,
    )
    return item


def _list(store: RecordingStore, args: argparse.Namespace, io: _IO,
          casts: list[CastFile]) -> int:
    entries = store.entries()[-args.limit:][::-1]
    items = []
    for entry in entries:
        cast = CastFile(entry.path)
        casts.append(cast)
        try:
            header = cast.header()
            summary = summarize(cast)
        except CastError as e:
            items.append(_list_item(entry, None, None, str(e)))
            continue
        items.append(_list_item(entry, header, summary, None))
    if args.format == "json":
        io.stdout.write(_dumps({"directory": str(store.directory), "recordings": items}))
        return 0
    if not items:
        io.stdout.write(f"no recordings in {safe_text(str(store.directory))}\n")
        return 0
    rows = [("ID", "STARTED (UTC)", "USER", "TARGET", "DURATION", "SIZE", "TRUNCATED", "WHAT")]
    for item in items:
        if "error" in item:
            rows.append((item["id"], "?", "?", "?", "?", _byte_size(item["size"]), "?",
                         f"unreadable: {item['error']}"))
            continue
        rows.append((
            item["id"],
            item["started"][:19].replace("T", " "),
            item["user"] or "?",
            item["target"] or "?",
            _secs(item["duration"]),
            _byte_size(item["size"]),
            "yes" if item["truncated"] else "no",
            safe_text(_what(item["command"]), 40) or "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  "
             + row[-1] for row in rows]
    io.stdout.write("\n".join(line.rstrip() for line in lines) + "\n")
    return 0


# -- show ------------------------------------------------------------------------------------


def _show_json(entry: Entry, header: Header, summary: Summary, cast: CastFile) -> dict[str, Any]:
    return {
        "id": safe_text(entry.id),
        "file": str(entry.path),
        "size": entry.size,
        "header": header.raw,
        "user": header.user,
        "target": header.target,
        "started": _started(header, entry).isoformat(),
        "duration": round(_duration(header, summary), 3),
        "events": dict(summary.events),
        "output_chars": summary.output_chars,
        "stderr_chars": summary.stderr_chars,
        "input_chars": summary.input_chars,
        "window_changes": summary.sizes,
        "markers": [{"time": t, "label": label} for t, label in summary.markers],
        "truncated": summary.truncated,
        "truncated_at": summary.truncated_at,
        "truncated_reason": summary.truncated_reason,
        "notes": list(cast.notes),
    }


def _show_text(entry: Entry, header: Header, summary: Summary) -> str:
    size = f"{header.width}x{header.height}" if header.width and header.height else "?"
    lines = [
        f"recording {safe_text(entry.id)}",
        f"  file       {safe_text(str(entry.path))} ({_byte_size(entry.size)})",
        f"  started    {_started(header, entry).strftime('%Y-%m-%d %H:%M:%S')} UTC",
        f"  duration   {_secs(_duration(header, summary))}",
        f"  user       {header.user or '?'}",
        f"  target     {header.target or '?'}",
        f"  session    {_what(header.command)}",
        f"  title      {header.title or '-'}",
        f"  terminal   {size}",
    ]
    for key, value in sorted(header.env.items()):
        lines.append(f"  env        {key}={value}")
    for key, value in sorted(header.other_keys().items()):
        shown = safe_text(json.dumps(value, ensure_ascii=True, sort_keys=True), 200)
        lines.append(f"  {safe_text(key, 40)}: {shown}")
    counts = ", ".join(f"{n} {safe_text(code, 8)!r}" for code, n in sorted(summary.events.items()))
    lines.append(f"  events     {counts or 'none'}")
    lines.append(
        f"  output     {summary.output_chars} characters"
        + (f" ({summary.stderr_chars} on stderr)" if summary.stderr_chars else "")
        + (f"; input {summary.input_chars} characters recorded" if summary.events.get("i")
           else "; input not recorded")
    )
    if summary.sizes:
        lines.append(f"  resized    {', '.join(summary.sizes)}")
    for t, label in summary.markers:
        lines.append(f"  marker     {t:.3f}s {label}")
    if summary.truncated_at is not None:
        lines.append(
            f"  TRUNCATED  events lost from {summary.truncated_at:.3f}s"
            f" ({summary.truncated_reason or 'no reason given'}); the session went on"
        )
    return "\n".join(lines) + "\n"


# -- play and export -------------------------------------------------------------------------


@contextmanager
def _quiet_terminal(stdin: TextIO):
    """While playing, keys typed are not echoed over the replay; Ctrl-C still interrupts."""
    try:
        import termios

        fd = stdin.fileno()
        if not os.isatty(fd):
            raise OSError
        saved = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError, AttributeError):
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~(termios.ECHO | termios.ICANON)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _writer(out: TextIO):
    buffer: BinaryIO | None = getattr(out, "buffer", None)

    def write(text: str) -> None:
        if buffer is not None:
            buffer.write(text.encode("utf-8", "replace"))
            buffer.flush()
        else:
            out.write(text)
            out.flush()

    return write


def _play(cast: CastFile, args: argparse.Namespace, io: _IO) -> int:
    if not args.speed > 0:
        raise CommandError("--speed must be more than 0")
    if args.max_idle is not None and not args.max_idle > 0:
        raise CommandError("--max-idle must be more than 0")
    header = cast.header()
    max_idle = args.max_idle if args.max_idle is not None else header.idle_time_limit
    if io.stdout.isatty() and header.width and header.height:
        columns, rows = shutil.get_terminal_size()
        if columns < header.width or rows < header.height:
            print(
                f"sshgateway recordings: note: recorded at {header.width}x{header.height}, "
                f"this terminal is {columns}x{rows}",
                file=io.stderr,
            )
    timing = Timing(speed=args.speed, max_idle=max_idle if max_idle and max_idle > 0 else None)
    write = _writer(io.stdout)
    events = (event for event, _ in cast.events())
    try:
        with _quiet_terminal(io.stdin):
            play(events, write, timing)
    except KeyboardInterrupt:
        try:
            write("\x1b[0m\r\n")  # leave the terminal's colours as they were
        except OSError:
            pass
        print("sshgateway recordings: stopped", file=io.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (play ... | head): stop quietly, as cat does.
        _silence_stdout()
        return 0
    return 0


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _export(cast: CastFile, args: argparse.Namespace, io: _IO) -> int:
    header_line = cast.header_line()
    if args.output:
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise CommandError(f"{args.output}: {e.strerror or e}") from None
        with os.fdopen(fd, "wb") as out:
            _copy_events(cast, header_line, out)
        return 0
    out = getattr(io.stdout, "buffer", None)
    if out is None:
        raise CommandError("export needs a binary stdout, or -o FILE")
    try:
        _copy_events(cast, header_line, out)
        out.flush()
    except BrokenPipeError:
        _silence_stdout()
    return 0


def _copy_events(cast: CastFile, header_line: bytes, out: BinaryIO) -> None:
    out.write(header_line if header_line.endswith(b"\n") else header_line + b"\n")
    for _, line in cast.events():
        out.write(line if line.endswith(b"\n") else line + b"\n")
