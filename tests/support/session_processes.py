"""Processes of a ``local`` session run through a real gateway: a command that leaves
grandchildren in the background (one ignoring the hang-up), and what it takes to watch
them go (shared by the session-lifetime tests with and without a privilege drop)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support.clients import ssh_argv
from tests.support.gateway_process import GatewayProcess

# The shell reports itself and two background children: a plain one and one that ignores
# SIGHUP (so a hang-up alone cannot end it; it reports itself once it does), then waits.
COMMAND = "echo $$; sleep 300 & echo $!; sh -c 'trap \"\" HUP; echo $$; exec sleep 301' & wait"


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its parent is not)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after ``timeout`` seconds (empty once all are gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def start_session(gw: GatewayProcess, key: Path) -> tuple[subprocess.Popen, list[int]]:
    client = subprocess.Popen(
        ssh_argv(gw, key, COMMAND),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids = []
    for _ in range(3):
        line = client.stdout.readline()
        assert line.strip().isdigit(), (line, gw.log_text()[-3000:])
        pids.append(int(line))
    assert all(alive(pid) for pid in pids)
    return client, pids


def cleanup(client: subprocess.Popen, pids: list[int]) -> None:
    client.kill()
    client.wait(10)
    for pid in pids:  # only what a failed test left, known by its process group
        fields = stat_fields(pid)
        if fields is not None and alive(pid) and int(fields[2]) == pids[0]:
            os.kill(pid, signal.SIGKILL)
