"""CPU time a server spends under a benchmark: the server process and every descendant,
read from ``/proc/PID/stat``. The one place the benchmarks account for CPU.

Rates swing by 2x on a shared machine; the CPU time a server spends per login or per GiB
moves far less, so every benchmark that measures a server prints it beside the rate.

A process's own time is ``utime + stime`` (all its threads); the time of the children it
has already waited for is ``cutime + cstime`` (which already holds their own reaped
children). Summing ``own + reaped`` over every live process of a tree therefore counts
each CPU second exactly once, whether a child is still running or was reaped in between
(the gateway reaps the commands of its local target). A process orphaned inside the tree
is reparented outside it and its time lost, unless the server runs under a child
subreaper: :func:`reaping` (sshd needs it, see there). Checked against a cpuacct cgroup
around each server: the two agree within a few clock ticks.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30


@dataclass(frozen=True)
class ProcTimes:
    """One process's line of ``/proc/PID/stat``, the parts CPU accounting needs (ticks)."""

    pid: int
    ppid: int
    own: int  # utime + stime
    reaped: int  # cutime + cstime: children it has waited for, with their descendants


def parse_stat(text: str) -> ProcTimes:
    """``/proc/PID/stat`` -> ProcTimes. The command name (field 2) is in parentheses and
    may itself hold spaces and parentheses, so the fields are counted after the last ')'."""
    pid = int(text[: text.index(" ")])
    fields = text[text.rindex(")") + 1 :].split()
    # fields[0] is field 3 (state): field N of proc(5) is fields[N - 3].
    ppid, utime, stime, cutime, cstime = (int(fields[n - 3]) for n in (4, 14, 15, 16, 17))
    return ProcTimes(pid, ppid, utime + stime, cutime + cstime)


def read_processes(proc: Path = PROC) -> dict[int, ProcTimes]:
    """Every process's times, by pid. Processes that exit while being read are skipped:
    their time is by then in their parent's ``reaped``."""
    table: dict[int, ProcTimes] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            times = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        table[times.pid] = times
    return table


def tree(table: Mapping[int, ProcTimes], roots: Iterable[int]) -> set[int]:
    """The pids of ``roots`` (those still alive) and all their descendants."""
    children: dict[int, list[int]] = {}
    for times in table.values():
        children.setdefault(times.ppid, []).append(times.pid)
    found: set[int] = set()
    pending = [pid for pid in roots if pid in table]
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, ()))
    return found


def tree_ticks(table: Mapping[int, ProcTimes], roots: Iterable[int]) -> int:
    """Clock ticks spent by ``roots`` and their descendants, living and reaped."""
    return sum(table[pid].own + table[pid].reaped for pid in tree(table, roots))


class CpuMeter:
    """``with CpuMeter(pid) as cpu: ...`` then ``cpu.seconds``: CPU seconds the process
    trees under ``roots`` spent inside the block.

    On leaving, it first waits (up to ``settle``) until every process that appeared in
    the trees meanwhile has gone: sshd's per-connection processes finish after the client
    has its answer, and their time only reaches the listener once they are reaped.
    """

    def __init__(self, *roots: int, proc: Path = PROC, settle: float = 10.0) -> None:
        self.roots = roots
        self.proc = proc
        self.settle = settle
        self.seconds = math.nan
        self.settled = False  # whether every new process was gone before the reading
        self._start_pids: set[int] = set()
        self._start_ticks = 0

    def __enter__(self) -> CpuMeter:
        table = read_processes(self.proc)
        self._start_pids = tree(table, self.roots)
        self._start_ticks = tree_ticks(table, self.roots)
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + self.settle
        while True:
            table = read_processes(self.proc)
            running = tree(table, self.roots) - self._start_pids
            self.settled = not running
            if self.settled or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not self.settled:
            print(f"bench.cpu: {len(running)} new processes under {self.roots} still running "
                  f"after {self.settle} s; only their time so far is counted", file=sys.stderr)
        self.seconds = (tree_ticks(table, self.roots) - self._start_ticks) / CLOCK_TICKS


def per_gib(seconds: float, nbytes: int) -> float:
    """CPU seconds per GiB moved."""
    return seconds * GIB / nbytes if nbytes else math.nan


def per_login_ms(seconds: float, logins: int) -> float:
    """CPU milliseconds per login."""
    return seconds * 1000 / logins if logins else math.nan


def ratio(ours: float, reference: float) -> float:
    """``ours / reference``; NaN when there is no reference to compare with."""
    return ours / reference if reference and not math.isnan(reference) else math.nan


PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def reaping(argv: list[str]) -> list[str]:
    """``argv`` run under :func:`run_reaping`: start a server this way when it leaves
    orphans behind, so that their time still reaches the tree's root. sshd does: once a
    session ends, the privilege-separation monitor exits without waiting for the session
    process, which is reparented away from the listener with its CPU time (90% of a bulk
    transfer's, as a cgroup's accounting shows)."""
    return [sys.executable, str(Path(__file__).resolve()), *argv]


def run_reaping(argv: list[str]) -> int:
    """Run ``argv`` as a child subreaper: orphans in its tree are reparented to this
    process, which reaps them (adding their time to its ``cutime``). Signals that stop a
    server are passed on; returns the exit status of ``argv``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    server = os.posix_spawnp(argv[0], argv, os.environ)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: os.kill(server, signum))
    while True:
        pid, status = os.wait()
        if pid == server:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(run_reaping(sys.argv[1:]))
