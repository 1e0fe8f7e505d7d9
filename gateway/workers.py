"""Worker processes (``workers = N``): N reactor processes serving the same endpoints,
and the parent that supervises them.

Mechanism: the parent binds every endpoint itself (in ``privilegedStartService``, as one
process does: before the privilege drop, systemd's sockets and ``haproxy:`` endpoints
included), stops accepting on them, and hands the listening sockets to each worker as
inherited file descriptors (``spawnProcess(childFDs=...)``); a worker (``python -m
gateway.worker``) adopts them (``adoptStreamPort``) and the kernel gives each new
connection to whichever worker accepts it first. SO_REUSEPORT was not used: each worker
would bind for itself, which needs the privileges the parent has dropped and cannot work
for sockets systemd passes.

The parent (:class:`WorkerSupervisor`, a child service of the gateway) starts the workers,
relays their log lines into its own log tagged ``[worker N]``, restarts a worker that dies
(after a delay that doubles while it keeps dying, :class:`Backoff`), passes SIGHUP on
(each worker reloads its config) and SIGTERM (each worker drains, gateway.lifecycle) and
waits for them at stop. Only the parent talks to systemd (sd_notify).

The host keys go to each worker on its stdin (:func:`host_keys_message`), from the parent's
memory: after a privilege drop the key files stay root's, and a worker never reads them.

Process creation is behind :class:`IWorkerSpawner`, so the supervision logic is tested
with a fake spawner and a Clock.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

log = Logger()

# Restart delays: the first restart after FIRST_DELAY, doubling while the worker keeps
# dying within STABLE_AFTER of its start, never more than MAX_DELAY.
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
STABLE_AFTER = 10.0

# Environment that belongs to the parent alone: systemd's socket passing (the parent
# took the sockets) and its notification socket (READY comes from the parent only).
PARENT_ONLY_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC")


class IWorkerSpawner(Interface):
    """Starts one worker process."""

    def spawn(protocol: ProcessProtocol, number: int, listen_fds: Mapping[str, int]) -> Any:
        """Start worker ``number`` serving the listening sockets ``listen_fds`` (endpoint
        description -> the parent's file descriptor), connected to ``protocol``; returns
        its process transport (``pid``, ``signalProcess``)."""


@implementer(IWorkerSpawner)
class ProcessWorkerSpawner:
    """Starts ``python -m gateway.worker`` with the listening sockets as fds 3, 4, ..."""

    def __init__(self, reactor: Any, config_path: Path | None, host_keys: Any = None) -> None:
        self.reactor = reactor
        self.config_path = config_path
        self.host_keys = host_keys_message(host_keys) if host_keys is not None else b""

    def spawn(self, protocol: ProcessProtocol, number: int, listen_fds: Mapping[str, int]) -> Any:
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        in_child: dict[str, int] = {}
        for index, (description, fd) in enumerate(listen_fds.items()):
            child_fds[3 + index] = fd
            in_child[description] = 3 + index
        args = [sys.executable, "-m", "gateway.worker", "--number", str(number)]
        args += ["--listen-fds", json.dumps(in_child)]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        env = {k: v for k, v in os.environ.items() if k not in PARENT_ONLY_ENV}
        # The worker imports the gateway from where the parent did.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        process = self.reactor.spawnProcess(protocol, sys.executable, args, env, childFDs=child_fds)
        if self.host_keys:
            process.writeToChild(0, self.host_keys)
        process.closeStdin()
        return process


class WorkerProtocol(ProcessProtocol):
    """One worker's pipes: its log lines (stdout, stderr) and its end, to the supervisor."""

    def __init__(self, supervisor: WorkerSupervisor, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self._buffers: dict[int, bytes] = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._buffers.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._buffers[childFD] = rest[-65536:]
        for line in lines:
            self.supervisor.worker_said(self.number, line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        for rest in self._buffers.values():
            if rest:
                self.supervisor.worker_said(self.number, rest.decode("utf-8", "replace"))
        self.supervisor.worker_ended(self.number, reason)


def relay_line(number: int, line: str) -> None:
    """Log a worker's line (``LEVEL text``, gateway.worker writes them) in the parent."""
    level_name, _, text = line.partition(" ")
    try:
        level = LogLevel.levelWithName(level_name)
    except Exception:  # not one of ours (a crash's stderr): log it as it is
        level, text = LogLevel.info, line
    log.emit(level, "[worker {worker}] {line}", worker=number, line=text)


@dataclass
class Backoff:
    """The delay before restarting a worker that died ``failures`` times in a row."""

    first: float = FIRST_DELAY
    maximum: float = MAX_DELAY
    stable_after: float = STABLE_AFTER

    def delay(self, failures: int) -> float:
        return min(self.maximum, self.first * 2 ** max(0, failures - 1))


@dataclass
class Worker:
    number: int
    process: Any = None
    started: float = 0.0
    failures: int = 0  # deaths in a row, each within Backoff.stable_after of its start
    restart: Any = None  # the pending restart's delayed call
    pid: int | None = None  # kept after the end (the transport forgets it)
    ended: list[defer.Deferred[None]] = field(default_factory=list)


class WorkerSupervisor(service.Service):
    """Starts ``count`` workers, restarts those that die, passes signals on (see the
    module docstring). ``listen_fds()`` gives the listening sockets at start."""

    def __init__(
        self,
        count: int,
        spawner: IWorkerSpawner,
        clock: Any,
        listen_fds: Callable[[], Mapping[str, int]],
        backoff: Backoff | None = None,
    ) -> None:
        self.count = count
        self.spawner = spawner
        self.clock = clock
        self.listen_fds = listen_fds
        self.backoff = backoff or Backoff()
        self.workers: dict[int, Worker] = {n: Worker(n) for n in range(1, count + 1)}
        self.stopping = False

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        log.info("starting {count} worker processes", count=self.count)
        for worker in self.workers.values():
            self._spawn(worker)

    def _spawn(self, worker: Worker) -> None:
        worker.restart = None
        worker.started = self.clock.seconds()
        worker.process = self.spawner.spawn(
            WorkerProtocol(self, worker.number), worker.number, dict(self.listen_fds())
        )
        worker.pid = getattr(worker.process, "pid", None)
        log.info("worker {worker} started (pid {pid})", worker=worker.number, pid=worker.pid)

    # -- what the workers tell ---------------------------------------------------------

    def worker_said(self, number: int, line: str) -> None:
        relay_line(number, line)

    def worker_ended(self, number: int, reason: Failure) -> None:
        worker = self.workers[number]
        pid = worker.pid
        worker.process = None
        how = exit_text(reason)
        waiting, worker.ended = worker.ended, []
        for ended in waiting:
            ended.callback(None)
        if self.stopping:
            log.info("worker {worker} (pid {pid}) {how}", worker=number, pid=pid, how=how)
            return
        lived = self.clock.seconds() - worker.started
        worker.failures = 1 if lived >= self.backoff.stable_after else worker.failures + 1
        delay = self.backoff.delay(worker.failures)
        log.error(
            "worker {worker} (pid {pid}) {how} after {lived:.1f} s; restarting it in {delay:g} s",
            worker=number,
            pid=pid,
            how=how,
            lived=lived,
            delay=delay,
        )
        worker.restart = self.clock.callLater(delay, self._spawn, worker)

    # -- signals -----------------------------------------------------------------------

    def signal_all(self, signame: str) -> None:
        """Send ``signame`` ("HUP", "TERM", "KILL") to every running worker."""
        for worker in self.workers.values():
            if worker.process is not None:
                try:
                    worker.process.signalProcess(signame)
                except (ProcessExitedAlready, OSError):
                    pass

    def reload(self) -> None:
        """SIGHUP: every worker re-reads the config file."""
        self.signal_all("HUP")

    def stopService(self) -> defer.Deferred[Any]:
        """SIGTERM to every worker (each drains its connections); fires when all ended."""
        super().stopService()
        self.stopping = True
        waits = []
        for worker in self.workers.values():
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
            if worker.process is not None:
                ended: defer.Deferred[None] = defer.Deferred()
                worker.ended.append(ended)
                waits.append(ended)
        self.signal_all("TERM")
        return defer.gatherResults(waits, consumeErrors=True)

    def now(self) -> None:
        """A second stop signal: the workers end at once too (theirs is a second one)."""
        self.signal_all("TERM")


def host_keys_message(host_keys: Any) -> bytes:
    """The gateway's host keys (gateway.hostkeys.HostKeys) as one JSON document, for a
    worker's stdin."""
    from cryptography.hazmat.primitives import serialization

    from gateway.hostkeys import RSA_ALGORITHMS

    ssh1_pem = host_keys.ssh1.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    document = {
        "ed25519": host_keys.ssh2[b"ssh-ed25519"].toString("openssh").decode("ascii"),
        "rsa": host_keys.ssh2[RSA_ALGORITHMS[0]].toString("openssh").decode("ascii"),
        "ssh1": ssh1_pem.decode("ascii"),
        "paths": {name: str(path) for name, path in host_keys.paths.items()},
    }
    return json.dumps(document).encode("ascii")


def host_keys_from_message(message: bytes) -> Any:
    """The HostKeys of :func:`host_keys_message` (in the worker)."""
    from cryptography.hazmat.primitives import serialization
    from twisted.conch.ssh import keys

    from gateway.hostkeys import RSA_ALGORITHMS, HostKeys

    document = json.loads(message)
    rsa_key = keys.Key.fromString(document["rsa"].encode("ascii"))
    ssh2 = {b"ssh-ed25519": keys.Key.fromString(document["ed25519"].encode("ascii"))}
    ssh2.update({name: rsa_key for name in RSA_ALGORITHMS})
    ssh1 = serialization.load_pem_private_key(document["ssh1"].encode("ascii"), password=None)
    paths = {name: Path(path) for name, path in document["paths"].items()}
    return HostKeys(ssh2=ssh2, ssh1=ssh1, paths=paths)


def exit_text(reason: Failure) -> str:
    """How a process ended, in words: "exited with status 0", "was killed by SIGKILL"."""
    if reason.check(ProcessDone):
        return "exited with status 0"
    value = reason.value
    signal_number = getattr(value, "signal", None)
    if signal_number:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = str(signal_number)
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


__all__ = [
    "Backoff",
    "IWorkerSpawner",
    "ProcessWorkerSpawner",
    "WorkerProtocol",
    "WorkerSupervisor",
    "exit_text",
    "host_keys_from_message",
    "host_keys_message",
    "relay_line",
]
