"""Reading rotated JSON-lines files (gateway.jsonl writes them): ``<directory>/<name>`` and
its rotations ``<name>.1``, ``<name>.2``... read oldest first, line by line and bounded. A
line that is too long or not a JSON object is skipped with a note, never held in memory
whole; the live file's last line, while it has no newline yet, is a record being appended
and is left for the next read. The flow records (tools.flows.store) and the audit trail (tools.audit) read their
files through :class:`JSONLinesStore`. With a shared store (``[store] url``, gateway.store)
they read the database's append-only table instead, which holds every instance's records.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gateway.store.database import RECORD_TABLES

# The writers keep every line far below this; anything longer is not one of their records
# and is skipped without being held in memory.
MAX_LINE_BYTES = 1 << 20
MAX_FILES = 1000
MAX_NOTES = 20


def bounded_lines(f: BinaryIO, max_bytes: int, first: int = 1) -> Iterator[tuple[int, bytes | None]]:
    """Each line of ``f`` with its number (from ``first``) and its bytes, the newline
    included when there. A line longer than ``max_bytes`` is read through without being
    held and given as None: it is too long to be a record."""
    number = first - 1
    while True:
        line = f.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = f.readline(max_bytes)
            yield number, None
            continue
        yield number, line


class StoreReadError(Exception):
    """The shared store's table could not be read (one line, for the command's error)."""


@dataclass
class JSONLinesStore:
    """The rotated files of one JSON-lines log; reading notes what it had to skip."""

    directory: Path
    name: str
    notes: list[str] = field(default_factory=list)
    _skipped: int = 0
    # (url, what): read the shared store's table of ``what`` ("flows", "audit") instead.
    database: tuple[str, str] | None = None

    def use_database(self, url: str, what: str) -> None:
        self.database = (url, what)
        self.directory = Path(f"[store] {RECORD_TABLES[what]}")

    def files(self) -> list[Path]:
        """Record files, oldest first (``NAME.N`` with the highest N first)."""
        rotated = re.compile(re.escape(self.name) + r"(?:\.(\d{1,6}))?\Z")
        try:
            names = [e.name for e in os.scandir(self.directory) if e.is_file()]
        except FileNotFoundError:
            return []
        except OSError as e:
            self._note(f"{self.directory}: {e.strerror or e}")
            return []
        numbered = []
        for name in names:
            m = rotated.match(name)
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
            for number, line in bounded_lines(f, MAX_LINE_BYTES):
                if line is None:
                    self._note(
                        f"{path.name}:{number}: line longer than {MAX_LINE_BYTES} bytes, skipped"
                    )
                    continue
                if not line.endswith(b"\n") and path.name == self.name:
                    # The live file's last line without its newline: a record the gateway
                    # is appending right now (a reader can see the write half done).
                    return
                yield number, line

    def objects(self) -> Iterator[tuple[Path, int, Any]]:
        """Every decoded line (file, line number, value), in the order written; a line that
        is not JSON is skipped with a note."""
        if self.database is not None:
            yield from self._database_objects(*self.database)
            return
        for path in self.files():
            for number, line in self._lines(path):
                if not line.strip():
                    continue
                try:
                    decoded = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    self._note(f"{path.name}:{number}: not a JSON line, skipped")
                    continue
                yield path, number, decoded

    def _database_objects(self, url: str, what: str) -> Iterator[tuple[Path, int, Any]]:
        """The table's records in the order written, streamed (a server-side cursor)."""
        import psycopg

        from gateway.store.database import connect

        table = RECORD_TABLES[what]
        try:
            with connect(url) as conn, conn.transaction():
                cursor = conn.cursor(name="sshgateway_records")
                cursor.itersize = 1000
                cursor.execute(f"SELECT seq, record FROM {table} ORDER BY seq")
                for seq, record in cursor:
                    yield Path(table), int(seq), record
        except psycopg.Error as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StoreReadError(f"cannot read {table} from the store: {reason}") from None


__all__ = ["MAX_LINE_BYTES", "JSONLinesStore", "StoreReadError"]
