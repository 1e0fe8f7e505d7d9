"""The ``local`` target: run the command, or the login shell, on the gateway host as the
user's OS account (its ``os_user``), with or without a pty, with flow control in both
directions.

What runs is decided first, as a :class:`gateway.targets.launch.LaunchSpec`
(:func:`launch_spec`): the account's uid, gid, supplementary groups (as initgroups() sets
them), home and shell from the passwd database, and a clean environment built the way
OpenSSH's sshd builds it (:func:`session_environment`). Then it is started: as that account
when the gateway runs as root, else (only the gateway's own account is possible then) as the
gateway itself.

One LocalSession per session. It owns the child's descriptors: stdin/stdout/stderr pipes, or a
pty master (read through one descriptor, written through a dup of it, so that reading and
writing can be switched on and off independently). Output is read in large chunks and handed
to the front end, which pauses the session's output producer while its client cannot take
more — the child then blocks on a full pipe instead of the gateway buffering. Input is
buffered up to a high-water mark, above which the front end's producer is paused.

The session ends, towards the front end, with ``send_eof`` once every output descriptor has
reached end of file and ``exited`` once the child has also ended. With a pty, what remains
readable when the child exits is drained and then the terminal is let go, since only
background processes that ignored the hang-up can still be holding it (as with OpenSSH).

Lifetime: each session is a session and process group of its own, led by the child. Until
the session is over the leader is not reaped (a zombie once it ends), so its group id stays
its own. When the client goes away first (``close``) the whole group gets SIGHUP and
SIGCONT, and SIGKILL ``kill_grace`` seconds later for whatever is still in it, background
processes that ignore the hang-up included. If the gateway itself dies, the lifeline's
guard process does the same (gateway.targets.lifeline). A session that ended normally
leaves alone what it started in the background and no longer holds its output.

The program is started by the target's launcher (gateway.targets.launchers): from this
process, or, once the gateway has dropped its privileges, by the privileged spawner, which
then keeps the leader's zombie and ends the groups if the gateway dies.
"""

from __future__ import annotations

import os
import pwd
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.targets import fdio, ttymodes
from gateway.targets.launch import LaunchSpec
from gateway.targets.launchers import IChild, ILauncher, InProcessLauncher
from gateway.targets.lifeline import SessionGuard, shared_guard
from gateway.targets.spawner import group_has_others
from protocols.session import (
    ConnectionAddresses,
    ExitInfo,
    ISessionClient,
    ISessionTarget,
    SessionRequest,
    WindowSize,
)

log = Logger()

# sshd's PATH (as Debian builds it): root's has the sbin directories, everyone else's not.
SUPERUSER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"
MAIL_DIR = "/var/mail"
KILL_GRACE = 2.0
# After a hang-up, how often to look whether the ended leader's group has emptied (so that
# it is reaped without waiting for the kill when nothing is left).
GROUP_POLL = 0.1

# The signals RFC 4254 section 6.10 names; anything else a client asks for is refused.
SSH_SIGNALS: dict[str, int] = {
    name: int(getattr(signal, "SIG" + name))
    for name in (
        "ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL",
        "PIPE", "QUIT", "SEGV", "TERM", "USR1", "USR2",
    )
}  # fmt: skip

# After the child exits, read at most this much still-queued terminal output: a background
# process that keeps writing must not keep the reactor in the drain loop.
_PTY_DRAIN_LIMIT = 4 * 1024 * 1024


class LocalTarget:
    """Runs sessions as local processes. One instance serves the whole gateway."""

    def __init__(
        self,
        reactor: Any,
        *,
        kill_grace: float = KILL_GRACE,
        path: str | None = None,
        read_chunk: int = fdio.READ_CHUNK,
        high_water: int = fdio.HIGH_WATER,
        low_water: int = fdio.LOW_WATER,
        guard: SessionGuard | None = None,
        launcher: ILauncher | None = None,
    ) -> None:
        self.reactor = reactor
        # Ends the sessions' process groups should the gateway die (shared by default).
        self.guard = guard if guard is not None else shared_guard()
        # Starts the programs: from this process, or (after a privilege drop) through the
        # privileged spawner, which the service sets here before the drop.
        self.launcher: ILauncher = (
            launcher if launcher is not None else InProcessLauncher(reactor, self.guard)
        )
        self.kill_grace = kill_grace
        self.path = path  # None: sshd's, by account (SUPERUSER_PATH for uid 0, else USER_PATH)
        self.read_chunk = read_chunk
        self.high_water = high_water
        self.low_water = low_water
        self.sessions: set[LocalSession] = set()

    def open_session(
        self, username: str, request: SessionRequest, client: ISessionClient, *, os_user: str
    ) -> ISessionTarget:
        """Start ``request`` for gateway user ``username`` as OS account ``os_user``; never
        raises for a failed start (the client gets a one-line reason on stderr and a
        non-zero exit instead)."""
        session = LocalSession(self, username, request, client, os_user=os_user)
        session.start()
        return session

    def close_all(self) -> defer.Deferred[None]:
        """Hang up every session (for service shutdown).

        Fires once all children are reaped, or a second after the kill — a process stuck in
        the kernel must not stop the gateway from shutting down (the guard deals with what
        is left once the gateway has exited).
        """
        sessions = list(self.sessions)
        waits = [session.when_reaped() for session in sessions]
        for session in sessions:
            session.close()
        done: defer.Deferred[Any] = defer.gatherResults(waits, consumeErrors=True)
        done.addTimeout(self.kill_grace + 1.0, self.reactor)
        done.addErrback(lambda failure: log.warn("some local sessions did not end in time"))
        return done.addCallback(lambda _: None)

    def _forget(self, session: LocalSession) -> None:
        self.sessions.discard(session)


class NoSuchAccount(LookupError):
    """``os_user`` names no account in the passwd database (any more)."""


def find_account(name: str) -> pwd.struct_passwd:
    """The passwd entry of OS account ``name``, read afresh for every session (as sshd)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise NoSuchAccount(f"no OS account named {name!r}") from None


def default_path(account: pwd.struct_passwd) -> str:
    return SUPERUSER_PATH if account.pw_uid == 0 else USER_PATH


def session_environment(
    account: pwd.struct_passwd,
    shell: str,
    path: str,
    request: SessionRequest,
    tty: str | None = None,
) -> dict[str, str]:
    """The program's whole environment, in sshd's order (session.c do_setup_env): the
    client's variables (already through the allow-list) first, then what sshd sets,
    which the client cannot override."""
    env: dict[str, str] = {}
    for name, value in request.env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            log.info("dropping malformed environment variable from client")
            continue
        env[name] = value
    env.update(
        USER=account.pw_name,
        LOGNAME=account.pw_name,
        HOME=account.pw_dir,
        PATH=path,
        MAIL=f"{MAIL_DIR}/{account.pw_name}",
        SHELL=shell,
    )
    zone = os.environ.get("TZ")
    if zone:
        env["TZ"] = zone  # sshd passes its own TZ on
    if request.pty is not None:
        term = request.pty.term
        # A terminal type is a short name; anything else is not worth failing the start for.
        env["TERM"] = term if 0 < len(term) <= 64 and term.isprintable() else "dumb"
    if request.addresses is not None:
        env.update(connection_variables(request.addresses))
    if tty is not None:
        env["SSH_TTY"] = tty
    return env


def connection_variables(addresses: ConnectionAddresses) -> dict[str, str]:
    """``SSH_CLIENT`` ("client-ip client-port server-port") and ``SSH_CONNECTION``
    ("client-ip client-port server-ip server-port"), as sshd writes them."""
    client = f"{addresses.client_host} {addresses.client_port}"
    return {
        "SSH_CLIENT": f"{client} {addresses.server_port}",
        "SSH_CONNECTION": f"{client} {addresses.server_host} {addresses.server_port}",
    }


def launch_spec(
    account: pwd.struct_passwd,
    request: SessionRequest,
    path: str | None = None,
    *,
    tty: str | None = None,
) -> LaunchSpec:
    """How to start ``request`` as ``account``: its shell runs the command (``shell -c``)
    or, without one, is the login shell; in its home directory ("/" when that is missing);
    ``tty`` is the pty's name, when there is one. ``path`` None: sshd's PATH."""
    shell = account.pw_shell or "/bin/sh"
    shell_name = os.path.basename(shell)
    if request.command is None:
        # A leading "-" in argv[0] is how every shell learns it is a login shell.
        argv: tuple[str | bytes, ...] = ("-" + shell_name,)
    else:
        argv = (shell_name, "-c", request.command)
    return LaunchSpec(
        executable=shell,
        argv=argv,
        env=session_environment(account, shell, path or default_path(account), request, tty=tty),
        cwd=account.pw_dir if os.path.isdir(account.pw_dir) else "/",
        login=account.pw_name,
        uid=account.pw_uid,
        gid=account.pw_gid,
        groups=tuple(os.getgrouplist(account.pw_name, account.pw_gid)),
        pty=request.pty is not None,
    )






@implementer(IPushProducer)
class _OutputProducer:
    """What the session registers on its client: pausing it stops reading the child."""

    def __init__(self, session: LocalSession) -> None:
        self._session = session

    def pauseProducing(self) -> None:
        self._session._pause_output()

    def resumeProducing(self) -> None:
        self._session._resume_output()

    def stopProducing(self) -> None:
        self._session.close()


@implementer(ISessionTarget)
class LocalSession:
    """One local process behind one session."""

    def __init__(
        self,
        target: LocalTarget,
        username: str,
        request: SessionRequest,
        client: ISessionClient,
        *,
        os_user: str,
    ) -> None:
        self._target = target
        self._reactor = target.reactor
        self.username = username
        self.os_user = os_user
        self.request = request
        self._client = client
        self.pid: int | None = None
        self.tty_name: str | None = None
        self._watcher: IChild | None = None  # the started program
        self._readers: list[fdio.ChunkReader] = []
        self._pty: fdio.ChunkReader | None = None
        self._stdin: fdio.WatermarkWriter | None = None
        self._output_producer = _OutputProducer(self)
        self._paused = False
        self._exit: ExitInfo | None = None
        self._eof_sent = False
        self._finished = False
        self._closed = False
        self._released = False  # the leader is reaped: its group id is no longer ours
        self._kill_call: Any = None
        self._group_poll: Any = None
        self._drain_call: Any = None
        self._reaped_waiters: list[defer.Deferred[None]] = []

    # ---- start -------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._spawn()
        except Exception as e:  # any failure to start is reported, never raised
            self._fail_to_start(e)
            return
        self._target.sessions.add(self)
        log.info(
            "local session for {user}: pid {pid} as {account}, {kind}{tty}",
            user=self.username,
            pid=self.pid,
            account=self.os_user,
            kind="shell" if self.request.command is None else "command",
            tty=f" on {self.tty_name}" if self.tty_name else "",
        )
        self._client.registerProducer(self._output_producer, True)
        if not self._paused:  # the client may have paused us inside registerProducer
            for reader in self._readers:
                reader.start()

    def _spawn(self) -> None:
        account = find_account(self.os_user)
        opened: list[int] = []
        child_ends: list[int] = []

        def fds(pair: tuple[int, int]) -> tuple[int, int]:
            opened.extend(pair)
            return pair

        def close_child_ends() -> None:
            # The child has its copies now; ours would keep the pipes (or the terminal) open.
            for fd in child_ends:
                os.close(fd)
                opened.remove(fd)
            child_ends.clear()

        def start(spec: LaunchSpec, stdin: int, stdout: int, stderr: int) -> None:
            self._watcher = self._target.launcher.launch(
                spec, stdin, stdout, stderr, self._process_exited
            )
            close_child_ends()

        try:
            if self.request.pty is None:
                stdin_r, stdin_w = fds(os.pipe())
                stdout_r, stdout_w = fds(os.pipe())
                stderr_r, stderr_w = fds(os.pipe())
                # Only the bulk directions get big pipes: pipe memory counts against a
                # per-user limit (fs.pipe-user-pages-soft) beyond which new pipes are tiny.
                for fd in (stdin_w, stdout_r):
                    fdio.enlarge_pipe(fd)
                child_ends = [stdin_r, stdout_w, stderr_w]
                spec = launch_spec(account, self.request, self._target.path)
                start(spec, stdin_r, stdout_w, stderr_w)
                self._readers = [
                    self._reader(stdout_r, self._client.write_stdout, "stdout"),
                    self._reader(stderr_r, self._client.write_stderr, "stderr"),
                ]
                self._stdin = self._writer(stdin_w, None)
            else:
                master, slave = fds(os.openpty())
                self.tty_name = os.ttyname(slave)
                ttymodes.set_window_size(slave, self.request.pty.size)
                ttymodes.apply_modes(slave, self.request.pty.modes)
                writer_fd = os.dup(master)
                opened.append(writer_fd)
                child_ends = [slave]
                spec = launch_spec(account, self.request, self._target.path, tty=self.tty_name)
                start(spec, slave, slave, slave)
                # Output and errors share the terminal, so all of it is stdout.
                self._pty = self._reader(master, self._client.write_stdout, "pty")
                self._readers = [self._pty]
                self._stdin = self._writer(writer_fd, ttymodes.eof_sequence)
        except BaseException:
            if self._watcher is not None:
                # Started, but we cannot talk to it: do not leave it running (it is
                # released once it has ended: see _process_exited).
                self._watcher.signal_group(signal.SIGKILL)
            for fd in opened:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._readers = []
            self._stdin = None
            self._pty = None
            raise
        assert self._watcher is not None
        self.pid = self._watcher.pid

    def _reader(self, fd: int, deliver: Callable[[bytes], None], name: str) -> fdio.ChunkReader:
        return fdio.ChunkReader(
            self._reactor, fd, deliver, self._output_eof, name, chunk=self._target.read_chunk
        )

    def _writer(
        self, fd: int, eof_tail: Callable[[int, int | None], bytes] | None
    ) -> fdio.WatermarkWriter:
        return fdio.WatermarkWriter(
            self._reactor,
            fd,
            "stdin",
            high=self._target.high_water,
            low=self._target.low_water,
            eof_tail=eof_tail,
        )

    def _fail_to_start(self, error: Exception) -> None:
        if isinstance(error, FileNotFoundError):
            status = 127
        elif isinstance(error, PermissionError):
            status = 126
        else:
            status = 1
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        log.warn(
            "local session for {user} could not start: {reason}", user=self.username, reason=reason
        )
        self._finished = True

        def report() -> None:
            if self._closed:
                return
            self._client.write_stderr(f"sshgateway: cannot start session: {reason}\r\n".encode())
            self._client.send_eof()
            self._client.exited(ExitInfo(status=status))

        # The front end has not even got this session object back yet.
        self._reactor.callLater(0, report)
        self._notify_reaped()

    # ---- ISessionTarget ----------------------------------------------------------------

    def write_stdin(self, data: bytes) -> None:
        if self._stdin is not None and not self._closed:
            self._stdin.write(data)

    def close_stdin(self) -> None:
        if self._stdin is not None and not self._closed:
            self._stdin.close_when_flushed()

    def resize(self, size: WindowSize) -> None:
        if self._pty is None or self._pty.closed:
            return
        try:
            ttymodes.set_window_size(self._pty.fd, size)
        except OSError as e:
            log.debug("resize failed: {error}", error=e)

    def send_signal(self, name: str) -> None:
        number = SSH_SIGNALS.get(name.removeprefix("SIG"))
        if number is None:
            log.info("ignoring request for unknown signal {name!r}", name=name[:32])
            return
        if self._watcher is not None and not self._closed:
            self._watcher.send_signal(number)

    def close(self) -> None:
        """Client gone: hang up, kill after the grace period, release everything."""
        if self._closed:
            return
        self._closed = True
        self._target._forget(self)
        self._cancel_drain()
        for reader in self._readers:
            reader.discard()
        if self._stdin is not None:
            self._stdin.discard()
        watcher = self._watcher
        if watcher is not None and not watcher.reaped:
            # Closing the pty master already hangs up its foreground group; the signal also
            # reaches pipe sessions and anything the shell put in the background.
            watcher.signal_group(signal.SIGHUP)
            watcher.signal_group(signal.SIGCONT)
            self._kill_call = self._reactor.callLater(self._target.kill_grace, self._kill)
            if watcher.exited:
                self._release_when_group_empty()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        if self._stdin is not None and not self._stdin.closed:
            self._stdin.register_producer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._stdin is not None:
            self._stdin.unregister_producer()

    # ---- extras ------------------------------------------------------------------------

    def when_reaped(self) -> defer.Deferred[None]:
        """Fires once the child has been reaped (at once if it already was)."""
        if self._watcher is None or self._released:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._reaped_waiters.append(waiter)
        return waiter

    @property
    def ended(self) -> bool:
        """Whether the child has ended (it may be unreaped still: see the module doc)."""
        return self._exit is not None

    @property
    def stdin_buffered(self) -> int:
        return self._stdin.buffered if self._stdin is not None else 0

    # ---- output flow control ------------------------------------------------------------

    def _pause_output(self) -> None:
        if self._paused:
            return
        self._paused = True
        self._cancel_drain()
        for reader in self._readers:
            reader.stop()

    def _resume_output(self) -> None:
        if not self._paused or self._closed:
            return
        self._paused = False
        for reader in self._readers:
            reader.start()
        if self._exit is not None and self._pty is not None and not self._pty.closed:
            # Nothing may wake the reader again (the terminal can still be held open by a
            # background process), so finish draining from the reactor.
            self._drain_call = self._reactor.callLater(0, self._drain_pty)

    def _cancel_drain(self) -> None:
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None

    def _drain_pty(self) -> None:
        self._drain_call = None
        reader = self._pty
        if reader is None or reader.closed or self._paused or self._closed:
            return
        budget = _PTY_DRAIN_LIMIT
        while not self._paused and not reader.closed and budget > 0:
            got = reader.read_once()
            if not got:
                break
            budget -= got
        if not self._paused and not reader.closed:
            # Empty (or endless) after the child ended: the rest belongs to background
            # processes the session does not wait for.
            reader.close()

    def _output_eof(self, reader: fdio.ChunkReader) -> None:
        if all(r.closed for r in self._readers):
            self._maybe_finish()

    # ---- the end ------------------------------------------------------------------------

    def _process_exited(self, info: ExitInfo) -> None:
        if self._finished:  # killed after a failed start
            self._release_pid()
            return
        self._exit = info
        log.info(
            "local session for {user}: pid {pid} ended ({how})",
            user=self.username,
            pid=self.pid,
            how=f"status {info.status}" if info.status is not None else f"signal {info.signal}",
        )
        if self._closed:
            # Hung up by close(): the group is done once nothing else is left in it (or
            # once the kill has been sent); until then the zombie keeps the group id ours.
            if self._kill_call is None:
                self._release_pid()  # killed already
            else:
                self._release_when_group_empty()
            return
        if self._watcher is not None and self._watcher.reaped:
            self._release_pid()  # reaped already (fallback mode, or reaped elsewhere)
        if self._pty is not None and not self._pty.closed and not self._paused:
            self._drain_pty()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._closed or self._finished:
            return
        if not self._eof_sent and all(r.closed for r in self._readers):
            self._eof_sent = True
            self._client.unregisterProducer()
            self._client.send_eof()
        if self._eof_sent and self._exit is not None:
            self._finished = True
            self._target._forget(self)
            if self._stdin is not None:
                self._stdin.discard()
            # Over: what the program left in the background is not the session's any more.
            self._release_pid()
            self._client.exited(self._exit)

    def _kill(self) -> None:
        self._kill_call = None
        watcher = self._watcher
        if watcher is not None and not watcher.reaped:
            what = "its process group" if watcher.exited else f"pid {self.pid}"
            log.info("{what} ignored the hang-up; killing it", what=what)
            watcher.signal_group(signal.SIGKILL)
            if watcher.exited:
                self._release_pid()

    def _release_when_group_empty(self) -> None:
        """Release the ended leader once nothing else is left in its group (else the kill
        at the end of the grace period does)."""
        self._group_poll = None
        if self._released:
            return
        if group_has_others(self.pid, self.pid):
            self._group_poll = self._reactor.callLater(GROUP_POLL, self._release_when_group_empty)
        else:
            self._release_pid()

    def _release_pid(self) -> None:
        """Reap the ended leader: its group is no longer the session's to signal."""
        if self._released:
            return
        self._released = True
        for call in (self._kill_call, self._group_poll):
            if call is not None and call.active():
                call.cancel()
        self._kill_call = self._group_poll = None
        if self._watcher is not None:
            self._watcher.reap()
        self._notify_reaped()

    def _notify_reaped(self) -> None:
        waiters, self._reaped_waiters = self._reaped_waiters, []
        for waiter in waiters:
            waiter.callback(None)
