"""The recordings of one gateway: the ``*.cast`` files of its recordings directory (and of
its subdirectories, one level down), each known by its ID, the file name without
``.cast``; finding one by its ID, a unique prefix of one, or a path to a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tools.flows.records import safe_text

SUFFIX = ".cast"
MAX_FILES = 100_000


class StoreError(Exception):
    """A user-facing error of the recordings commands (unknown or ambiguous ID...)."""


@dataclass(frozen=True)
class Entry:
    id: str
    path: Path
    size: int
    mtime: float


@dataclass
class RecordingStore:
    directory: Path

    def entries(self) -> list[Entry]:
        """Every recording file, oldest first (by modification time, then ID)."""
        found: list[Entry] = []
        self._scan(self.directory, found, depth=0)
        return sorted(found, key=lambda e: (e.mtime, e.id))

    def _scan(self, directory: Path, found: list[Entry], depth: int) -> None:
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if len(found) >= MAX_FILES:
                        return
                    if entry.name.startswith("."):
                        continue  # a recorder's or an editor's temporary file
                    if entry.is_dir(follow_symlinks=False) and depth == 0:
                        self._scan(Path(entry.path), found, depth + 1)
                    elif entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found.append(
                            Entry(entry.name[: -len(SUFFIX)], Path(entry.path), st.st_size,
                                  st.st_mtime)
                        )
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"{directory}: {e.strerror or e}") from None

    def find(self, wanted: str) -> Entry:
        """The recording ``wanted`` names: a path to a file, an ID, or a unique prefix."""
        if os.sep in wanted or wanted.endswith(SUFFIX):
            path = Path(wanted)
            if path.is_file():
                st = path.stat()
                return Entry(path.name.removesuffix(SUFFIX), path, st.st_size, st.st_mtime)
        entries = self.entries()
        for entry in entries:
            if entry.id == wanted:
                return entry
        matches = [e for e in entries if e.id.startswith(wanted)]
        shown = safe_text(wanted, 64)
        if not matches:
            raise StoreError(f"no recording {shown!r} in {self.directory}")
        if len(matches) > 1:
            some = ", ".join(e.id for e in matches[:5])
            raise StoreError(f"recording ID {shown!r} is ambiguous: {some}, ...")
        return matches[0]
