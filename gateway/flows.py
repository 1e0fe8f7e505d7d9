"""Where flow records go: JSON lines under ``<state_dir>/flows/``, rotated by size.

One line per finished connection leg in ``flows.jsonl``; when the next line would take
the file past ``max_bytes`` it becomes ``flows.jsonl.1`` (the older ones move up one,
``flows.jsonl.<keep>`` is dropped). Records are small and written once per leg, from
the reactor thread, so a plain append is enough; a failing disk is logged, never raised
into a connection's close. The reader side, for ``sshgateway flows``, is
:class:`tools.flows.store.FlowStore`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from gateway.routing import split_login
from protocols.flow import FlowRecorder

log = Logger()

FLOWS_DIR = "flows"
FLOWS_FILE = "flows.jsonl"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 5


def flows_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / FLOWS_DIR


class FlowWriter:
    """Appends flow records to ``<directory>/flows.jsonl`` with size-based rotation."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        if max_bytes < 1 or keep < 0:
            raise ValueError("max_bytes must be positive and keep not negative")
        self.directory = Path(directory)
        self.path = self.directory / FLOWS_FILE
        self.max_bytes = max_bytes
        self.keep = keep
        self._ready = False

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

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")
        try:
            self._prepare()
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error(
                "cannot write flow record to {path}: {error}",
                path=str(self.path),
                error=exc,
                write_error="flows",  # counted by the metrics
            )

    def _prepare(self) -> None:
        if not self._ready:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._ready = True

    def _rotate(self) -> None:
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
            return
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{FLOWS_FILE}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{FLOWS_FILE}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{FLOWS_FILE}.1"))


__all__ = ["FLOWS_DIR", "FLOWS_FILE", "FlowWriter", "flows_dir"]
