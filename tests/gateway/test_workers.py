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


# --- one /metrics summing the workers' (gateway.worker_metrics) ----------------------------


def _exposition(logins: float, active: float) -> str:
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    registry = CollectorRegistry()
    Counter("sshgateway_logins", "Logins", ["result"], registry=registry).labels("success").inc(
        logins
    )
    Gauge("sshgateway_sessions_active", "Open", registry=registry).set(active)
    return generate_latest(registry).decode()


def _samples(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_expositions_are_summed_by_name_and_labels():
    from gateway.worker_metrics import sum_expositions

    summed = _samples(sum_expositions([_exposition(3, 1), _exposition(4, 2)]).decode())
    assert summed[("sshgateway_logins_total", (("result", "success"),))] == 7
    assert summed[("sshgateway_sessions_active", ())] == 3


def test_the_parent_resource_sums_the_workers_that_answer_and_logs_the_others(logged):
    from prometheus_client import CollectorRegistry
    from twisted.internet import defer

    from gateway.worker_metrics import SummedMetricsResource

    answers = {"w1": _exposition(5, 0), "w2": None}

    def fetch(reactor, path):
        text = answers[path]
        return defer.succeed(text) if text is not None else defer.fail(OSError("refused"))

    resource = SummedMetricsResource(None, CollectorRegistry(), lambda: ["w1", "w2"], fetch)
    body = []
    resource.collect().addCallback(body.append)
    assert _samples(body[0].decode())[("sshgateway_logins_total", (("result", "success"),))] == 5
    assert any("worker socket w2 did not answer" in t for t in text_of(logged))


def test_a_worker_serves_its_metrics_on_its_own_socket(tmp_path):
    from dataclasses import replace

    from gateway.config import MetricsConfig, default_config
    from gateway.worker import worker_config

    config = replace(
        default_config(),
        state_dir=tmp_path,
        workers=2,
        run_as="nobody",
        metrics=MetricsConfig(listen="tcp:0"),
    )
    mine = worker_config(config, 2)
    assert (mine.workers, mine.run_as) == (1, None)
    assert mine.metrics.listen == f"unix:{tmp_path}/workers/metrics-2.sock:mode=600"
    off = worker_config(replace(config, metrics=MetricsConfig()), 2)
    assert off.metrics.listen is None


def test_the_host_keys_reach_a_worker_whole(tmp_path):
    from gateway.hostkeys import load_or_create_host_keys
    from gateway.workers import host_keys_from_message, host_keys_message

    keys = load_or_create_host_keys(tmp_path)
    copy = host_keys_from_message(host_keys_message(keys))
    assert copy.infos() == keys.infos()
    assert copy.ssh2[b"rsa-sha2-256"].toString("openssh") == keys.ssh2[b"ssh-rsa"].toString(
        "openssh"
    )
    assert copy.ssh1.private_numbers() == keys.ssh1.private_numbers()
