"""The lifeline guard against real processes: when the gateway's end of the pipe closes
(as it does when the gateway dies), every group still listed is hung up, then killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gateway.targets.lifeline import SessionGuard


def live(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class Group:
    """A session leader of our own (so the test reaps it) with a child that ignores SIGHUP."""

    def __init__(self) -> None:
        self.leader = subprocess.Popen(
            ["sh", "-c", "sh -c 'trap \"\" HUP; echo $$; exec sleep 60' & wait"],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.child = int(self.leader.stdout.readline())

    @property
    def pgid(self) -> int:
        return self.leader.pid

    def gone(self) -> bool:
        return self.leader.poll() is not None and not live(self.child)

    def cleanup(self) -> None:
        if self.leader.poll() is None:
            os.killpg(self.pgid, signal.SIGKILL)
        elif live(self.child):
            os.kill(self.child, signal.SIGKILL)
        self.leader.wait(5)
        self.leader.stdout.close()


@pytest.fixture
def groups():
    made: list[Group] = []
    yield lambda: made.append(Group()) or made[-1]
    for group in made:
        group.cleanup()


def test_listed_groups_are_ended_when_the_gateway_end_closes(groups):
    guard = SessionGuard(grace=0.3)
    one, two = groups(), groups()
    guard.register(one.pgid)
    guard.register(two.pgid)
    started = time.monotonic()
    guard.close()  # the pipe's end closes, as when the gateway dies
    assert wait_until(lambda: one.gone() and two.gone())
    assert time.monotonic() - started >= 0.25  # the hang-up first, SIGKILL after the grace


def test_unlisted_group_is_left_alone(groups):
    guard = SessionGuard(grace=0.1)
    kept, ended = groups(), groups()
    guard.register(kept.pgid)
    guard.register(ended.pgid)
    guard.unregister(kept.pgid)
    guard.unregister(kept.pgid)  # twice is harmless
    guard.close()
    assert wait_until(ended.gone)
    time.sleep(0.3)
    assert kept.leader.poll() is None and live(kept.child)


def test_a_dead_guard_is_replaced_and_told_every_group(groups):
    guard = SessionGuard(grace=0.1)
    first, second = groups(), groups()
    guard.register(first.pgid)
    old = guard.pid
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: not live(old))
    guard.register(second.pgid)
    assert guard.pid not in (None, old)
    guard.close()
    assert wait_until(lambda: first.gone() and second.gone())


def test_guard_that_cannot_start_is_not_fatal(monkeypatch, groups):
    def refuse(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    guard = SessionGuard(grace=0.1)
    group = groups()
    monkeypatch.setattr(subprocess, "Popen", refuse)
    guard.register(group.pgid)
    assert guard.pid is None
    monkeypatch.undo()
    guard.register(group.pgid)  # the next session tries again, with every group
    assert guard.pid is not None
    guard.close()
    assert wait_until(group.gone)
