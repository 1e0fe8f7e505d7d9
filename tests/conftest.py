"""Test-run hygiene shared by every test.

Tests that run ``local`` sessions as root start the root account's shell, and on this
kind of machine root's ~/.bashrc runs ``pyenv init``, which takes a lock file while it
rehashes. A session killed at that moment (tests kill sessions on purpose) leaves the lock
behind, and every later root shell then waits 60 s for it. Before each test a lock older
than a few seconds, with no pyenv running, is removed. The lasting fix is to run those
sessions as a dedicated account with no start-up files, as the benchmarks do.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

PYENV_LOCK = Path(os.path.expanduser("~")) / ".pyenv" / "shims" / ".pyenv-shim"
STALE_AFTER = 5.0


def _pyenv_running() -> bool:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path("/proc", pid, "cmdline").read_bytes()
        except OSError:
            continue
        if b"pyenv" in cmdline.split(b"\0", 1)[0] or b"/pyenv" in cmdline:
            return True
    return False


@pytest.fixture(autouse=True)
def _no_stale_pyenv_lock() -> None:
    try:
        age = time.time() - PYENV_LOCK.stat().st_mtime
    except OSError:
        return
    if age > STALE_AFTER and not _pyenv_running():
        PYENV_LOCK.unlink(missing_ok=True)
