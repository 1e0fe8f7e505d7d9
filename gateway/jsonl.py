"""Rotating JSON-lines files: the one writer behind the flow records (gateway.flows) and
the audit trail (gateway.audit).

One JSON object per line, appended to ``<directory>/<name>``; when the next line would take
the file past ``max_bytes`` it becomes ``<name>.1`` (the older ones move up one,
``<name>.<keep>`` is dropped). The directory is made 0700 and the files 0600 on first
write. Lines are small and written whole with one ``write`` on an ``O_APPEND`` descriptor,
from the reactor thread: a local append of a few hundred bytes, which does not hold the
reactor up; a failing disk (full, read-only, gone) is logged and counted in
``write_errors``, never raised to the caller, whose connection or login goes on.

Several processes may append to the same file (worker processes, gateway.workers): each
line is one ``write`` on an ``O_APPEND`` descriptor, and the size check, the rotation and
the write happen under an exclusive ``flock`` on the directory itself (no lock file to
list or clean up), so that two processes never rotate the same file twice (which would
drop a generation) nor write into a file another has just moved away.

With a shared store (gateway.store) every record is also handed to
:attr:`RotatingJSONLines.mirror`, which queues it for the database; the local file stays.

The error's log event carries ``write_error`` = the writer's ``what`` ("flows", "audit"),
a stable key for whoever counts such errors (the metrics) without parsing the text.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from twisted.logger import Logger

log = Logger()

# The log event key that marks a failed write, with the writer's ``what`` as its value.
WRITE_ERROR_KEY = "write_error"


class RotatingJSONLines:
    """Appends JSON lines to ``<directory>/<name>`` with size-based rotation."""

    # Set by the shared store while it runs: called with (what, record) for every record.
    mirror: ClassVar[Callable[[str, dict[str, Any]], None] | None] = None

    def __init__(
        self,
        directory: str | os.PathLike[str],
        name: str,
        max_bytes: int,
        keep: int,
        *,
        what: str,
    ) -> None:
        if max_bytes < 1 or keep < 0:
            raise ValueError("max_bytes must be positive and keep not negative")
        self.directory = Path(directory)
        self.name = name
        self.path = self.directory / name
        self.max_bytes = max_bytes
        self.keep = keep
        self.what = what
        self.write_errors = 0
        self._ready = False

    def write(self, record: dict[str, Any]) -> bool:
        """Append ``record`` as one line; False (logged, counted) when it could not be."""
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")
        mirror = RotatingJSONLines.mirror
        if mirror is not None:
            mirror(self.what, record)  # queues only: never raises, never waits
        try:
            self._prepare()
            # The directory's descriptor, opened for each line as the file is (no
            # descriptor kept by writers a reload replaces); closing it drops the lock.
            lock = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                written = self._append(line)
            finally:
                os.close(lock)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes): disk full?")
        except OSError as exc:
            self.write_errors += 1
            log.error(
                "cannot write {write_error} record to {path}: {error}",
                path=str(self.path),
                error=exc,
                **{WRITE_ERROR_KEY: self.what},
            )
            return False
        return True

    def _append(self, line: bytes) -> int:
        """Rotate if ``line`` does not fit, then append it (under the lock)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self.max_bytes:
            self._rotate()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            return os.write(fd, line)
        finally:
            os.close(fd)

    def _prepare(self) -> None:
        if not self._ready:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._ready = True

    def _rotate(self) -> None:
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
            return
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.name}.1"))


__all__ = ["WRITE_ERROR_KEY", "RotatingJSONLines"]
