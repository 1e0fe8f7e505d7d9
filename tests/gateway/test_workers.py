"""The worker supervisor (gateway.workers) in memory: a fake spawner and a Clock.

Starting N workers with the parent's sockets, restarting one that dies after a delay that
doubles while it keeps dying, passing SIGHUP and SIGTERM on, waiting for every worker at
stop, and relaying each worker's log lines tagged with its number."""

from __future__ import annotations

import signal

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from zope.interface.verify import verifyObject

from gateway.config import cores, parse_config
from gateway.workers import (
    Backoff,
    IWorkerSpawner,
    ProcessWorkerSpawner,
    WorkerSupervisor,
    exit_text,
)
from tests.support.doubles import FakeWorkerSpawner

FDS = {"tcp:2222": 7, "haproxy:tcp:2223": 8}


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def text_of(events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


def started(count: int = 2, backoff: Backoff | None = None):
    clock = Clock()
    spawner = FakeWorkerSpawner()
    supervisor = WorkerSupervisor(count, spawner, clock, lambda: FDS, backoff)
    supervisor.startService()
    return supervisor, spawner, clock


def test_the_real_spawner_provides_the_interface():
    assert verifyObject(IWorkerSpawner, ProcessWorkerSpawner(object(), None))


def test_starts_every_worker_with_the_listening_sockets():
    supervisor, spawner, _ = started(3)
    assert sorted(spawner.running()) == [1, 2, 3]
    assert all(p.listen_fds == FDS for p in spawner.processes)


def test_a_worker_that_dies_is_restarted_after_the_backoff(logged):
    supervisor, spawner, clock = started(2)
    victim = spawner.running()[1]
    clock.advance(60)  # it ran long enough to count as stable
    victim.end(signal=signal.SIGKILL)
    assert sorted(spawner.running()) == [2]
    assert any("worker 1 (pid 1000) was killed by SIGKILL" in t for t in text_of(logged))
    clock.advance(Backoff().first - 0.01)
    assert sorted(spawner.running()) == [2]
    clock.advance(0.02)
    assert sorted(spawner.running()) == [1, 2]
    assert spawner.running()[1].listen_fds == FDS


def test_the_delay_doubles_while_a_worker_keeps_dying_and_resets_once_it_runs():
    backoff = Backoff(first=1.0, maximum=8.0, stable_after=10.0)
    supervisor, spawner, clock = started(1, backoff)
    delays = []
    for _ in range(5):
        spawner.running()[1].end(status=3)
        delay = supervisor.workers[1].restart.getTime() - clock.seconds()
        delays.append(delay)
        clock.advance(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    clock.advance(30)  # this one lives: its next death starts over
    spawner.running()[1].end(status=3)
    assert supervisor.workers[1].restart.getTime() - clock.seconds() == 1.0


def test_sighup_and_sigterm_are_passed_on():
    supervisor, spawner, _ = started(2)
    supervisor.reload()
    assert [p.signals for p in spawner.processes] == [["HUP"], ["HUP"]]
    supervisor.now()
    assert [p.signals for p in spawner.processes] == [["HUP", "TERM"], ["HUP", "TERM"]]


def test_stop_waits_for_every_worker_and_restarts_none():
    supervisor, spawner, clock = started(2)
    first, second = spawner.processes
    done = supervisor.stopService()
    assert first.signals == ["TERM"] and second.signals == ["TERM"]
    fired = []
    done.addCallback(fired.append)
    first.end()
    assert not fired
    second.end(status=0)
    assert fired
    clock.advance(120)
    assert spawner.running() == {} and len(spawner.processes) == 2


def test_stop_cancels_a_pending_restart():
    supervisor, spawner, clock = started(1)
    spawner.running()[1].end(status=1)
    fired = []
    supervisor.stopService().addCallback(fired.append)
    assert fired  # nothing was running
    clock.advance(60)
    assert len(spawner.processes) == 1


def test_worker_lines_are_logged_tagged_with_the_worker_number(logged):
    supervisor, spawner, _ = started(2)
    spawner.running()[2].say(b"info sshgateway listening on tcp:127.0.0.1:2222\nerror some")
    spawner.running()[2].say(b"thing broke\n")
    spawner.running()[1].say(b"Traceback (most recent call last):\n", fd=2)
    relayed = [
        (e["log_level"], t) for e, t in zip(logged, text_of(logged), strict=True) if "[worker" in t
    ]
    assert relayed == [
        (LogLevel.info, "[worker 2] sshgateway listening on tcp:127.0.0.1:2222"),
        (LogLevel.error, "[worker 2] something broke"),
        (LogLevel.info, "[worker 1] Traceback (most recent call last):"),
    ]


def test_exit_text():
    from twisted.internet.error import ProcessDone, ProcessTerminated
    from twisted.python.failure import Failure

    assert exit_text(Failure(ProcessDone(0))) == "exited with status 0"
    assert exit_text(Failure(ProcessTerminated(2, None))) == "exited with status 2"
    assert exit_text(Failure(ProcessTerminated(None, 9))) == "was killed by SIGKILL"


@pytest.mark.parametrize(
    ("text", "workers"), [("", 1), ("workers = 3", 3), ('workers = "auto"', cores())]
)
def test_workers_key(text, workers):
    from tests.gateway.test_config import VALID_USER as user

    assert parse_config(text + "\n" + user).workers == workers


@pytest.mark.parametrize("text", ["workers = 0", 'workers = "many"', "workers = true"])
def test_workers_key_refuses(text):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="workers"):
        parse_config(text + "\n")
