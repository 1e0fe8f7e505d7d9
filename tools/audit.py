"""``sshgateway audit``: the audit trail (gateway.audit) filtered by user, target, time and
event type, as text or JSON.

Reads ``<state_dir>/audit/audit.jsonl`` and its rotations, oldest first (tools.jsonl_store:
bounded lines, anything that is not an audit record skipped with a note on stderr). Times
are ISO 8601 (UTC unless they carry an offset; a date alone is its midnight) or relative to
now: ``90s``, ``15m``, ``1h``, ``2d``, ``1w``. Text output escapes control characters (the
records hold names that clients chose); JSON output is the records as written, in a list.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TextIO

from gateway.audit import AUDIT_FILE, audit_dir
from gateway.config import ConfigError, load_config
from gateway.events import EVENT_NAMES
from tools.flows.records import safe_text
from tools.jsonl_store import JSONLinesStore

_RELATIVE = re.compile(r"(\d{1,9})([smhdw])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Fields the text line shows first, in this order; the rest follow by name.
_LEADING = ("user", "target", "source", "method", "protocol", "session", "command")
_MAX_VALUE = 200


class _IO(Protocol):
    stdout: TextIO
    stderr: TextIO


class AuditError(Exception):
    """A user-facing error of ``sshgateway audit`` (bad option value, no state directory)."""


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """``text`` as an aware datetime: ISO 8601 (naive means UTC) or ``N[smhdw]`` ago."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(text.strip())
    if m:
        return now - timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(
            f"{safe_text(text, 64)!r} is neither an ISO time (2026-12-03T14:00) nor a "
            "relative one (90s, 15m, 1h, 2d, 1w)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def record_time(record: dict[str, Any]) -> datetime | None:
    value = record.get("time")
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class AuditStore(JSONLinesStore):
    """The audit records of one state directory."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, AUDIT_FILE)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every audit record (an object with a string ``event`` and a ``time``), in the
        order written."""
        for path, number, decoded in self.objects():
            if (
                not isinstance(decoded, dict)
                or not isinstance(decoded.get("event"), str)
                or record_time(decoded) is None
            ):
                self._note(f"{path.name}:{number}: not an audit record, skipped")
                continue
            yield decoded


def select(
    records: Iterable[dict[str, Any]],
    *,
    users: Iterable[str] = (),
    targets: Iterable[str] = (),
    events: Iterable[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """The records that pass every filter given (each list: any of its values)."""
    users, targets, events = set(users), set(targets), set(events)
    for record in records:
        if users and record.get("user") not in users:
            continue
        if targets and record.get("target") not in targets:
            continue
        if events and record.get("event") not in events:
            continue
        when = record_time(record)
        if since is not None and (when is None or when < since):
            continue
        if until is not None and (when is None or when > until):
            continue
        yield record


def _value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=True)
    text = safe_text(value, _MAX_VALUE)
    if text is None:
        return "-"
    return json.dumps(text) if (" " in text or not text) else text


def text_line(record: dict[str, Any]) -> str:
    """One record for a terminal: time, event, then ``key=value`` fields."""
    time = safe_text(record.get("time"), 64) or "-"
    event = safe_text(record.get("event"), 64) or "-"
    keys = [k for k in _LEADING if k in record]
    keys += sorted(k for k in record if k not in keys and k not in ("time", "event"))
    fields = " ".join(
        f"{safe_text(k, 64)}={_value(record[k])}" for k in keys if record[k] is not None
    )
    return f"{time}  {event:<19} {fields}".rstrip()


def setup_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Show the audit trail (logins, sessions, host keys, penalties, reloads, weak legs), "
        "filtered. Times: ISO 8601 (UTC unless an offset is given) or relative (90s, 15m, "
        "1h, 2d, 1w ago)."
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--state-dir", help="the gateway's state directory")
    source.add_argument("--config", help="a config file (its state_dir is used)")
    p.add_argument("--user", action="append", default=[], help="only this user (repeatable)")
    p.add_argument("--target", action="append", default=[], help="only this target (repeatable)")
    p.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="TYPE",
        help=f"only events of this type (repeatable): {', '.join(EVENT_NAMES)}",
    )
    p.add_argument("--since", help="from this time on")
    p.add_argument("--until", help="up to this time")
    p.add_argument("--limit", type=int, help="only the last N records that match")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")


def run(args: argparse.Namespace, io: _IO) -> int:
    """Run ``sshgateway audit``; returns the exit status."""
    try:
        text, notes = _run(args)
    except (AuditError, ConfigError) as e:
        print(f"sshgateway audit: {e}", file=io.stderr)
        return 1
    for note in notes:
        print(f"sshgateway audit: note: {note}", file=io.stderr)
    io.stdout.write(text)
    return 0


def _run(args: argparse.Namespace) -> tuple[str, list[str]]:
    state_dir = Path(args.state_dir) if args.state_dir else load_config(args.config).state_dir
    if not state_dir.is_dir():
        why = "is not a directory" if state_dir.exists() else "does not exist"
        raise AuditError(f"state directory {safe_text(str(state_dir))} {why}")
    unknown = [e for e in args.event if e not in EVENT_NAMES]
    if unknown:
        raise AuditError(
            f"unknown event type {safe_text(unknown[0], 64)!r}; one of {', '.join(EVENT_NAMES)}"
        )
    if args.limit is not None and args.limit < 1:
        raise AuditError("--limit must be at least 1")
    now = datetime.now(UTC)
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    store = AuditStore(audit_dir(state_dir))
    chosen: deque[dict[str, Any]] = deque(maxlen=args.limit)
    chosen.extend(
        select(
            store.records(),
            users=args.user,
            targets=args.target,
            events=args.event,
            since=since,
            until=until,
        )
    )
    notes = store.finish_notes()
    if args.format == "json":
        return json.dumps(list(chosen), indent=2, ensure_ascii=True) + "\n", notes
    if not chosen:
        return f"no audit records match in {store.directory}\n", notes
    return "".join(text_line(record) + "\n" for record in chosen), notes


__all__ = ["AuditStore", "parse_time", "run", "select", "setup_parser", "text_line"]
