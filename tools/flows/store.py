"""The flow records under one state directory: ``<state_dir>/flows/flows.jsonl`` and its
rotations (``.1``, ``.2``, ...), read oldest first, line by line and bounded; a line that is
too long, not JSON or not a flow is skipped with a note, never held in memory whole. Finding
a flow by its ID or a unique prefix, and the upstream legs that link to it.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.flows import FLOWS_DIR, FLOWS_FILE
from tools.flows.records import MAX_LIST, Flow, is_flow_record, parse_flow, safe_text

# The recorder keeps each record far below this (at most 1000 message entries); anything
# longer is not one of its records and is skipped without being held in memory.
MAX_LINE_BYTES = 1 << 20
MAX_FILES = 1000
MAX_NOTES = 20
_ROTATED = re.compile(re.escape(FLOWS_FILE) + r"(?:\.(\d{1,6}))?\Z")


class FlowError(Exception):
    """A user-facing error of the flows commands (unknown or ambiguous ID, no records)."""


@dataclass
class FlowStore:
    """The flow records under one state directory; reading notes what it had to skip."""

    directory: Path
    notes: list[str] = field(default_factory=list)
    _skipped: int = 0

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str]) -> FlowStore:
        return cls(Path(state_dir) / FLOWS_DIR)

    def files(self) -> list[Path]:
        """Record files, oldest first (``flows.jsonl.N`` with the highest N first)."""
        try:
            names = [e.name for e in os.scandir(self.directory) if e.is_file()]
        except FileNotFoundError:
            return []
        except OSError as e:
            self._note(f"{self.directory}: {e.strerror or e}")
            return []
        numbered = []
        for name in names:
            m = _ROTATED.match(name)
            if m:
                numbered.append((int(m.group(1) or 0), name))
        numbered.sort(reverse=True)
        return [self.directory / name for _, name in numbered[-MAX_FILES:]]

    def _note(self, note: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(note)
        else:
            self._skipped += 1

    def finish_notes(self) -> list[str]:
        if self._skipped:
            return [*self.notes, f"... and {self._skipped} more"]
        return list(self.notes)

    def _lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        try:
            f = open(path, "rb")
        except OSError as e:
            self._note(f"{path}: {e.strerror or e}")
            return
        with f:
            number = 0
            while True:
                line = f.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                number += 1
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    # Too long to be a record: drop the rest of it without keeping it.
                    while line and not line.endswith(b"\n"):
                        line = f.readline(MAX_LINE_BYTES)
                    self._note(
                        f"{path.name}:{number}: line longer than {MAX_LINE_BYTES} bytes, skipped"
                    )
                    continue
                yield number, line

    def raw_records(self) -> Iterator[dict[str, Any]]:
        """Every decoded flow record, in the order written (oldest file and line first).

        Only the cheap check is made here; commands turn into :class:`Flow` just the
        records they show, so that listing many large records stays quick.
        """
        for path in self.files():
            for number, line in self._lines(path):
                if not line.strip():
                    continue
                try:
                    decoded = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    self._note(f"{path.name}:{number}: not a JSON line, skipped")
                    continue
                if not is_flow_record(decoded):
                    self._note(f"{path.name}:{number}: not a flow record, skipped")
                    continue
                yield decoded

    def records(self) -> Iterator[Flow]:
        """Every flow, in the order written."""
        for record in self.raw_records():
            flow = parse_flow(record)
            if flow is not None:
                yield flow

    def recent(self, limit: int) -> list[Flow]:
        """The ``limit`` most recently written flows, newest first."""
        last: deque[dict[str, Any]] = deque(maxlen=max(limit, 0))
        last.extend(self.raw_records())
        flows = [f for f in map(parse_flow, last) if f is not None]
        epoch = datetime.min.replace(tzinfo=UTC)
        return sorted(flows, key=lambda f: (f.started or epoch, f.id), reverse=True)

    def find(self, wanted: str) -> tuple[Flow, list[Flow]]:
        """The flow whose ID is ``wanted`` or starts with it, and the legs that link to it."""
        exact: dict[str, Any] | None = None
        matches: dict[str, dict[str, Any]] = {}
        linked: list[dict[str, Any]] = []
        for record in self.raw_records():
            flow_id, link = record["id"], record.get("link")
            if flow_id == wanted:
                exact = record
            elif flow_id.startswith(wanted) and len(matches) < 10:
                matches[flow_id] = record
            if isinstance(link, str) and link.startswith(wanted) and len(linked) < MAX_LIST:
                linked.append(record)
        if exact is None:
            if not matches:
                raise FlowError(f"no flow {safe_text(wanted, 64)!r} in {self.directory}")
            if len(matches) > 1:
                some = ", ".join(sorted(matches)[:5])
                raise FlowError(f"flow ID {safe_text(wanted, 64)!r} is ambiguous: {some}, ...")
            (exact,) = matches.values()
        flow = parse_flow(exact)
        assert flow is not None  # raw_records() checked it
        legs = [f for f in map(parse_flow, linked) if f is not None and f.link == flow.id]
        return flow, legs
