"""Noticing that a child process ended, and how: a pidfd watched by the reactor.

A pidfd becomes readable when its process exits and waitid(P_PIDFD) reaps exactly that
process, so no SIGCHLD handler is needed (the reactor need not be run()), no other child of
the gateway is touched, and a recycled pid can never be signalled or reaped by mistake.
Where pidfds are missing (not Linux, or a seccomp filter refuses them) the watcher falls back
to Twisted's own reaper registry, which relies on the running reactor's SIGCHLD handling.

With a pidfd the ended child is not reaped at once: its status is read (WNOWAIT) and the
zombie is kept until the owner calls :meth:`ExitWatcher.reap`. A session leader's zombie
keeps its pid, and so its process group id, from being given to anyone else, so the
group (what the leader left running in the background) can still be signalled safely.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import process as _twisted_process
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from protocols.session import ExitInfo

log = Logger()


def signal_name(number: int) -> str:
    """``SIGTERM`` -> ``"TERM"``; a signal without a name becomes its number."""
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return str(number)


def exit_info_from_waitid(result: os.waitid_result) -> ExitInfo:
    if result.si_code == os.CLD_EXITED:
        return ExitInfo(status=result.si_status)
    return ExitInfo(
        signal=signal_name(result.si_status), core_dumped=result.si_code == os.CLD_DUMPED
    )


def exit_info_from_status(status: int) -> ExitInfo:
    if os.WIFSIGNALED(status):
        return ExitInfo(signal=signal_name(os.WTERMSIG(status)), core_dumped=os.WCOREDUMP(status))
    return ExitInfo(status=os.WEXITSTATUS(status))


def returncode(info: ExitInfo) -> int:
    """The same outcome in subprocess.Popen's convention (negative signal number)."""
    if info.status is not None:
        return info.status
    number = getattr(signal, "SIG" + (info.signal or ""), None)
    return -int(number) if number is not None else -1


def _open_pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None or not hasattr(os, "P_PIDFD"):
        return None
    try:
        return opener(pid)
    except OSError as e:
        log.info("pidfd_open unavailable ({error}); using SIGCHLD reaping", error=e)
        return None


@implementer(IReadDescriptor)
class ExitWatcher:
    """Calls ``on_exit(ExitInfo)`` once, from the reactor, when child ``pid`` has ended.

    ``exited``: the child ended (its status is known). ``reaped``: its pid is released, so
    neither it nor its process group may be signalled any more. With a pidfd the two are
    apart until :meth:`reap`; in the fallback mode Twisted reaps at once.
    """

    def __init__(self, reactor: Any, pid: int, on_exit: Callable[[ExitInfo], None]) -> None:
        self._reactor = reactor
        self.pid = pid
        self._on_exit: Callable[[ExitInfo], None] | None = on_exit
        self.exited = False
        self.reaped = False
        self._watching = False
        self._pidfd = _open_pidfd(pid)
        if self._pidfd is not None:
            reactor.addReader(self)
            self._watching = True
        else:
            # Twisted reaps at once if the child already ended, so defer that report to
            # keep on_exit from running inside our caller.
            reactor.callLater(0, _twisted_process.registerReapProcessHandler, pid, self)

    def send_signal(self, number: int) -> bool:
        """Signal the child itself; False if it is already gone."""
        if self.exited:
            return False
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, number)
            else:
                os.kill(self.pid, number)
        except ProcessLookupError:
            return False
        return True

    def signal_group(self, number: int) -> bool:
        """Signal the child's process group (it is a session leader, so pgid == pid).

        Only while the leader is unreaped (running, or a zombie kept by the pidfd): until
        then its pid, and so the group id, cannot have been given to anyone else.
        """
        if self.reaped:
            return False
        try:
            os.killpg(self.pid, number)
        except (ProcessLookupError, PermissionError):
            return self.send_signal(number)
        return True

    def reap(self) -> None:
        """Release the ended child's pid (a no-op before it ended, or once done)."""
        if self.reaped or not self.exited:
            return
        self.reaped = True
        if self._pidfd is not None:
            try:
                os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
            except ChildProcessError:
                pass  # reaped elsewhere
        self._close_pidfd()

    # IReadDescriptor (pidfd mode)
    def fileno(self) -> int:
        return self._pidfd if self._pidfd is not None else -1

    def logPrefix(self) -> str:
        return f"LocalSession pid {self.pid}"

    def doRead(self) -> None:
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            # Someone else reaped it (a stray waitpid(-1)); the status is lost.
            log.warn("child {pid} was reaped elsewhere", pid=self.pid)
            self.reaped = True
            self._exited(ExitInfo(status=255, message="exit status lost"))
            return None
        if result is None:
            return None
        self._exited(exit_info_from_waitid(result))
        return None

    def connectionLost(self, reason: object) -> None:
        # The reactor let go of us (removeAll at shutdown): nothing will read the pidfd.
        self._watching = False
        if not self.exited:
            self._close_pidfd()

    # Twisted reaper registry protocol (fallback mode)
    def reapProcess(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8
        if pid:
            self.processEnded(status)

    def processEnded(self, status: int) -> None:
        if _twisted_process.reapProcessHandlers.get(self.pid) is self:
            _twisted_process.unregisterReapProcessHandler(self.pid, self)
        self.reaped = True
        self._exited(exit_info_from_status(status))

    def _exited(self, info: ExitInfo) -> None:
        if self.exited:
            return
        self.exited = True
        self._stop_watching()
        if self.reaped:
            self._close_pidfd()
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is not None:
            on_exit(info)

    def _stop_watching(self) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeReader(self)

    def _close_pidfd(self) -> None:
        self._stop_watching()
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            os.close(fd)
