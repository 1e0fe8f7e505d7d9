"""The lifeline: a small guard process that ends the local sessions' process groups when
the gateway dies without doing so itself (SIGKILL, a crash, the OOM killer).

Each local session runs in a session and process group of its own (its leader's pid is
the group id). When the gateway starts local programs itself (it has not dropped its
privileges) the guard watches them; after a privilege drop the privileged spawner starts
them and watches them the same way (gateway.targets.spawner). The gateway tells the guard, through a pipe, which groups are live ("+PGID"
when a session starts, "-PGID" once its leader is reaped). The guard does nothing but read
that pipe; when it reads end of file — the gateway is gone, since only the gateway holds
the write end — it sends every group still listed SIGHUP and SIGCONT, then SIGKILL to
what is left after ``grace`` seconds, and exits.

Why not PR_SET_PDEATHSIG: it reaches only the direct child (the shell), never what the
shell started in the background, and it fires when the forking *thread* ends, not the
process. A process that puts itself in a new process group or session (a daemon, setsid)
leaves the session's group and is not followed, as with OpenSSH.

One guard serves the whole gateway process (:func:`shared_guard`); it is started with the
first session, so after twistd has daemonised, and restarted if it dies.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.logger import Logger

from gateway.targets import spawner

log = Logger()

# How long the guard waits between the hang-up and SIGKILL (the local target's own grace).
GUARD_GRACE = 2.0

# The guard's program (gateway.targets.spawner, shared with the privileged spawner, which
# ends its sessions' groups the same way): only the standard library, started with -I -S
# (no site, no environment), so it starts fast and holds nothing of the gateway.
GUARD_COMMAND = (sys.executable or "python3", "-I", "-S", spawner.__file__, "guard")


class SessionGuard:
    """The gateway's end of the lifeline: :meth:`register` and :meth:`unregister` the
    process groups of live sessions. Never raises: without a guard, sessions still run,
    with a warning in the log."""

    def __init__(self, grace: float = GUARD_GRACE) -> None:
        self.grace = grace
        self.groups: set[int] = set()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The guard process's pid (None while none is running)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> bool:
        """Start the guard if it is not running, and give it every live group."""
        if self._running():
            return True
        self._discard_process()
        try:
            self._process = subprocess.Popen(
                [*GUARD_COMMAND, repr(self.grace)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                close_fds=True,
                start_new_session=True,  # no terminal's signals, no group signals to us
            )
        except OSError as e:
            log.warn(
                "cannot start the session guard ({error}): local sessions will not be "
                "ended if the gateway dies",
                error=e,
            )
            self._process = None
            return False
        assert self._process.stdin is not None
        os.set_blocking(self._process.stdin.fileno(), False)
        if self.groups:
            return self._write(b"".join(b"+%d\n" % group for group in sorted(self.groups)))
        return True

    def register(self, pgid: int) -> None:
        """A session's process group is live: end it if the gateway dies."""
        self.groups.add(pgid)
        self._send(b"+%d\n" % pgid)

    def unregister(self, pgid: int) -> None:
        """The group's leader is reaped: the group id may be reused, leave it alone."""
        if pgid in self.groups:
            self.groups.discard(pgid)
            self._send(b"-%d\n" % pgid)

    def close(self) -> None:
        """Let the guard go as if the gateway had ended (it acts on the groups still listed)
        and reap it. For tests and embedders; the gateway's own exit does this by itself."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(self.grace + 5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _send(self, line: bytes) -> None:
        if not self._running():
            self.start()  # sends every group, this one included
            return
        if not self._write(line):
            # The guard died or stopped reading: replace it.
            log.warn("the session guard stopped taking updates; restarting it")
            self._discard_process(kill=True)
            self.start()

    def _write(self, data: bytes) -> bool:
        assert self._process is not None and self._process.stdin is not None
        try:
            written = os.write(self._process.stdin.fileno(), data)
        except (BrokenPipeError, BlockingIOError):
            return False
        return written == len(data)

    def _running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _discard_process(self, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if kill and process.poll() is None:
            process.kill()
        if process.stdin is not None:
            process.stdin.close()
        if process.poll() is None:
            try:
                process.wait(1)
            except subprocess.TimeoutExpired:
                pass
        else:
            log.warn("the session guard ended ({code}); restarting it", code=process.returncode)


_shared: SessionGuard | None = None


def shared_guard() -> SessionGuard:
    """The one guard of this gateway process."""
    global _shared
    if _shared is None:
        _shared = SessionGuard()
    return _shared
