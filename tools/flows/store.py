"""The flow records under one state directory: ``<state_dir>/flows/flows.jsonl`` and its
rotations (``.1``, ``.2``, ...), read as tools.jsonl_store reads them (oldest first, bounded;
a line that is too long, not JSON or not a flow is skipped with a note). Finding a flow by
its ID or a unique prefix, and the upstream legs that link to it.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.flows import FLOWS_DIR, FLOWS_FILE
from tools.flows.records import MAX_LIST, Flow, is_flow_record, parse_flow, safe_text
from tools.jsonl_store import JSONLinesStore


class FlowError(Exception):
    """A user-facing error of the flows commands (unknown or ambiguous ID, no records)."""


@dataclass
class FlowStore(JSONLinesStore):
    """The flow records under one state directory; reading notes what it had to skip."""

    name: str = FLOWS_FILE

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str]) -> FlowStore:
        return cls(Path(state_dir) / FLOWS_DIR)

    def raw_records(self) -> Iterator[dict[str, Any]]:
        """Every decoded flow record, in the order written (oldest file and line first).

        Only the cheap check is made here; commands turn into :class:`Flow` just the
        records they show, so that listing many large records stays quick.
        """
        for path, number, decoded in self.objects():
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
