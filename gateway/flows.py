"""Where flow records go: JSON lines under ``<state_dir>/flows/``, rotated by size.

One line per finished connection leg in ``flows.jsonl``, rotated by size (the shared
writer, gateway.jsonl: ``flows.jsonl.1`` ... ``.<keep>``). Records are small and written
once per leg, from the reactor thread, so a plain append is enough; a failing disk is
logged and counted, never raised into a connection's close. The reader side, for
``sshgateway flows``, is :class:`tools.flows.store.FlowStore`.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.jsonl import RotatingJSONLines
from gateway.routing import split_login
from protocols.flow import FlowRecorder

FLOWS_DIR = "flows"
FLOWS_FILE = "flows.jsonl"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 5


def flows_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / FLOWS_DIR


class FlowWriter(RotatingJSONLines):
    """Appends flow records to ``<directory>/flows.jsonl`` with size-based rotation."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        super().__init__(directory, FLOWS_FILE, max_bytes, keep, what="flows")

    def write_flow(self, flow: FlowRecorder) -> None:
        """Write a finished leg (closing it first if its owner has not)."""
        flow.close()
        record = flow.to_dict()
        if record["role"] == "server" and record["user"]:
            # A client leg's user is the gateway user: the front ends note the login name
            # (``alice+sw1`` on SSH-2, on SSH-1 until the login succeeds); the routed
            # target is in "target".
            record["user"] = split_login(record["user"])[0]
        self.write(record)


__all__ = ["FLOWS_DIR", "FLOWS_FILE", "FlowWriter", "flows_dir"]
