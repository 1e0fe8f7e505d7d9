"""How a local session's program is started and watched: one interface, two ways.

:class:`InProcessLauncher` starts the program from the gateway process itself (the gateway
has not dropped its privileges: not root, or root without ``run_as``/``twistd --uid``),
watches it with a pidfd (gateway.targets.reaper) and lists its group with the lifeline
guard (gateway.targets.lifeline). :class:`SpawnerLauncher` asks the privileged spawner
(gateway.targets.spawner), started before the privilege drop, which does all of that on
the other side of a unix socket.

Both hand back an :class:`IChild`, through which :class:`gateway.targets.local.LocalSession`
signals the program or its process group and, once the session is done with the group,
releases the ended leader (reaping it: until then its zombie keeps the group id from being
reused).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from gateway.targets import spawner as spawner_program
from gateway.targets.launch import LaunchSpec
from gateway.targets.lifeline import GUARD_GRACE, SessionGuard
from gateway.targets.reaper import ExitWatcher, returncode, signal_name
from protocols.session import ExitInfo

log = Logger()

# How long the reactor waits for the spawner's answer to a launch (a fork and an exec).
LAUNCH_TIMEOUT = 10.0


class IChild(Interface):
    """A started session program, leader of its own process group (pgid == pid)."""

    pid = Attribute("the program's pid, which is also its process group id")
    exited = Attribute("whether it has ended (the exit callback has been called)")
    reaped = Attribute("whether its pid is released: its group must not be signalled now")

    def send_signal(number: int) -> bool:
        """Signal the program itself; False if it has ended."""

    def signal_group(number: int) -> bool:
        """Signal its process group; False once released."""

    def reap() -> None:
        """Release the ended leader (a no-op before it ended, or once done)."""


class ILauncher(Interface):
    def launch(
        spec: LaunchSpec, stdin: int, stdout: int, stderr: int, on_exit: Callable[[ExitInfo], None]
    ) -> IChild:
        """Start ``spec`` with the given descriptors as fds 0-2 (the caller keeps its own
        copies: close them after). ``on_exit`` is called, from the reactor, once it ends.
        Raises OSError (FileNotFoundError, PermissionError, ...) or ValueError when it
        cannot start."""


def _start_arguments(spec: LaunchSpec) -> dict[str, Any]:
    fields = dataclasses.asdict(spec)
    del fields["login"]
    return fields


@implementer(IChild)
class InProcessChild:
    """A program the gateway started itself: a pidfd watcher and the guard's entry."""

    def __init__(
        self,
        reactor: Any,
        popen: subprocess.Popen[bytes],
        guard: SessionGuard,
        on_exit: Callable[[ExitInfo], None],
    ) -> None:
        self.pid = popen.pid
        self._popen = popen
        self._guard = guard
        self._on_exit = on_exit
        self._watcher = ExitWatcher(reactor, self.pid, self._exited)
        guard.register(self.pid)

    @property
    def exited(self) -> bool:
        return self._watcher.exited

    @property
    def reaped(self) -> bool:
        return self._watcher.reaped

    def send_signal(self, number: int) -> bool:
        return self._watcher.send_signal(number)

    def signal_group(self, number: int) -> bool:
        return self._watcher.signal_group(number)

    def reap(self) -> None:
        self._watcher.reap()
        if self._watcher.reaped:
            self._guard.unregister(self.pid)

    def _exited(self, info: ExitInfo) -> None:
        # The watcher reaps it; tell Popen so that it never waits for that pid itself.
        self._popen.returncode = returncode(info)
        self._on_exit(info)


@implementer(ILauncher)
class InProcessLauncher:
    """Starts programs from the gateway process (no privilege drop)."""

    def __init__(self, reactor: Any, guard: SessionGuard) -> None:
        self.reactor = reactor
        self.guard = guard

    def launch(
        self,
        spec: LaunchSpec,
        stdin: int,
        stdout: int,
        stderr: int,
        on_exit: Callable[[ExitInfo], None],
    ) -> InProcessChild:
        popen = spawner_program.start_program(
            **_start_arguments(spec), stdin=stdin, stdout=stdout, stderr=stderr
        )
        try:
            return InProcessChild(self.reactor, popen, self.guard, on_exit)
        except BaseException:
            popen.kill()  # started, but unwatched: do not leave it running
            popen.wait()
            raise


@implementer(IChild)
class RemoteChild:
    """A program the spawner started; every operation is a message to it."""

    def __init__(
        self, launcher: SpawnerLauncher, pid: int, on_exit: Callable[[ExitInfo], None]
    ) -> None:
        self.pid = pid
        self._launcher = launcher
        self._on_exit: Callable[[ExitInfo], None] | None = on_exit
        self.exited = False
        self.reaped = False

    def send_signal(self, number: int) -> bool:
        if self.exited:
            return False
        return self._launcher._send({"op": "signal", "pid": self.pid, "signal": number})

    def signal_group(self, number: int) -> bool:
        if self.reaped:
            return False
        message = {"op": "signal", "pid": self.pid, "signal": number, "group": True}
        return self._launcher._send(message)

    def reap(self) -> None:
        if self.reaped or not self.exited:
            return
        self.reaped = True
        self._launcher._forget(self)
        self._launcher._send({"op": "release", "pid": self.pid})

    def _exited(self, info: ExitInfo, reaped: bool = False) -> None:
        if self.exited:
            return
        self.exited = True
        self.reaped = self.reaped or reaped
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is not None:
            on_exit(info)


def _exit_info(message: dict[str, Any]) -> ExitInfo:
    status = message.get("status")
    if isinstance(status, int):
        return ExitInfo(status=status)
    number = message.get("signal")
    return ExitInfo(
        signal=signal_name(number) if isinstance(number, int) else "KILL",
        core_dumped=message.get("core") is True,
    )


@implementer(ILauncher, IReadDescriptor)
class SpawnerLauncher:
    """The gateway's end of the spawner's socket.

    A launch waits (at most ``timeout`` seconds) for the spawner's answer; everything else
    the spawner sends (exit reports, refusals) is read by the reactor. If the spawner goes
    away, every session it started is reported ended (status 255) and no new one starts.
    """

    def __init__(
        self,
        reactor: Any,
        sock: socket.socket,
        process: subprocess.Popen[bytes] | None = None,
        timeout: float = LAUNCH_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.sock = sock
        self.process = process
        self.timeout = timeout
        self.children: dict[int, RemoteChild] = {}
        self.broken = False
        self._next_id = 1
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        sock.setblocking(False)
        reactor.addReader(self)

    @classmethod
    def start(
        cls,
        reactor: Any,
        accounts: Iterable[str],
        allow_root: bool = False,
        grace: float = GUARD_GRACE,
    ) -> SpawnerLauncher:
        """Start the spawner process (run this as root, before dropping privileges); it
        starts programs only as ``accounts`` (uid 0 only with ``allow_root``)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable or "python3", "-I", "-S", spawner_program.__file__, "serve"]
        command += ["--fd", str(theirs.fileno()), "--grace", repr(grace)]
        for account in sorted(set(accounts)):
            command += ["--allow", account]
        if allow_root:
            command.append("--allow-root")
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None,  # its refusals go to the gateway's stderr
                pass_fds=(theirs.fileno(),),
                cwd="/",
                env={},
                close_fds=True,
                start_new_session=True,  # no terminal's signals, no group signals to it
            )
        finally:
            theirs.close()
        ours.set_inheritable(False)
        log.info(
            "started the session spawner (pid {pid}) for accounts {accounts}",
            pid=process.pid,
            accounts=", ".join(sorted(set(accounts))) or "(none)",
        )
        return cls(reactor, ours, process)

    # ---- ILauncher ----------------------------------------------------------------------

    def launch(
        self,
        spec: LaunchSpec,
        stdin: int,
        stdout: int,
        stderr: int,
        on_exit: Callable[[ExitInfo], None],
    ) -> RemoteChild:
        if self.broken:
            raise OSError(errno.EPIPE, "the session spawner is gone")
        request_id, self._next_id = self._next_id, self._next_id + 1
        data = spawner_program.encode(spawner_program.launch_request(request_id, spec))
        try:
            socket.send_fds(self.sock, [data], [stdin, stdout, stderr])
        except BlockingIOError:
            raise OSError(errno.EAGAIN, "the session spawner is not taking requests") from None
        except OSError as e:
            self._gone(f"cannot reach it: {e.strerror}")
            raise OSError(errno.EPIPE, "the session spawner is gone") from None
        reply = self._wait_for_reply(request_id)
        op = reply.get("op")
        if op == "started" and isinstance(reply.get("pid"), int):
            child = RemoteChild(self, reply["pid"], on_exit)
            self.children[child.pid] = child
            return child
        error = str(reply.get("error") or "no reason given")[:200]
        if op == "refused":
            raise PermissionError(errno.EPERM, f"the session spawner refused: {error}")
        number = reply.get("errno")
        if isinstance(number, int) and number > 0:
            raise OSError(number, error)
        raise ValueError(error)

    def close(self) -> None:
        """Let the spawner go (it ends what is left, as when the gateway dies); for tests
        and embedders, the gateway's own exit does this by itself."""
        if not self.broken:
            self.broken = True
            self.reactor.removeReader(self)
            self.sock.close()
        if self.process is not None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # ---- messages -----------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> bool:
        if self.broken:
            return False
        try:
            self.sock.send(spawner_program.encode(message))
        except BlockingIOError:
            log.warn("the session spawner is not taking requests; dropped {op}", op=message["op"])
            return False
        except OSError as e:
            self._gone(f"cannot reach it: {e.strerror}")
            return False
        return True

    def _wait_for_reply(self, request_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._receive()
            if message is None:
                if self.broken:
                    raise OSError(errno.EPIPE, "the session spawner is gone")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OSError(errno.ETIMEDOUT, "the session spawner did not answer")
                select.select([self.sock], [], [], left)
                continue
            if message.get("id") == request_id and message.get("op") != "exited":
                if self._pending:
                    self.reactor.callLater(0, self._dispatch_pending)
                return message
            self._pending.append(message)

    def _receive(self) -> dict[str, Any] | None:
        """One message from the spawner, or None when none is there (or it is gone)."""
        if self.broken:
            return None
        try:
            data = self.sock.recv(spawner_program.MAX_MESSAGE)
        except BlockingIOError:
            return None
        except OSError as e:
            self._gone(f"read failed: {e.strerror}")
            return None
        if not data:
            self._gone("it ended")
            return None
        try:
            return spawner_program.decode(data)
        except spawner_program.RequestError:
            log.warn("unreadable message from the session spawner ignored")
            return {"op": "unreadable"}

    def _dispatch_pending(self) -> None:
        while self._pending:
            message = self._pending.popleft()
            op = message.get("op")
            if op == "exited":
                child = self.children.get(message.get("pid", 0))
                if child is not None:
                    child._exited(_exit_info(message))
            elif op == "refused":
                log.warn(
                    "the session spawner refused a request: {error}", error=message.get("error")
                )
            elif op == "started" and isinstance(message.get("pid"), int):
                self._end_late_start(message["pid"])

    def _end_late_start(self, pid: int) -> None:
        # The answer to a launch given up on (timed out): nobody reads that program.
        log.warn("the session spawner started pid {pid} too late; ending it", pid=pid)

        def reap(info: ExitInfo) -> None:
            late.reap()

        late = RemoteChild(self, pid, reap)
        self.children[pid] = late
        late.signal_group(signal.SIGKILL)

    def _forget(self, child: RemoteChild) -> None:
        self.children.pop(child.pid, None)

    def _gone(self, why: str) -> None:
        if self.broken:
            return
        self.broken = True
        self.reactor.removeReader(self)
        self.sock.close()
        log.error(
            "the session spawner is gone ({why}): local sessions cannot start any more", why=why
        )
        children, self.children = list(self.children.values()), {}
        for child in children:
            child._exited(ExitInfo(status=255, message="the session spawner is gone"), reaped=True)

    # ---- IReadDescriptor ----------------------------------------------------------------

    def fileno(self) -> int:
        return -1 if self.broken else self.sock.fileno()

    def logPrefix(self) -> str:
        return "SessionSpawner"

    def doRead(self) -> None:
        while True:
            message = self._receive()
            if message is None:
                break
            self._pending.append(message)
        self._dispatch_pending()
        return None

    def connectionLost(self, reason: object) -> None:
        self._gone("the reactor let go of it")
