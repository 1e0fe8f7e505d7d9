"""The local target against real processes, pipes and ptys.

Each test runs a private epoll reactor (never the global one, never run()) by iterating it
until a condition holds or a deadline passes, so no test can hang. Children are reaped through
pidfds, which is why no SIGCHLD handler is needed here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IPushProducer
from zope.interface.verify import verifyObject

from gateway.targets import fdio, ttymodes
from gateway.targets.lifeline import SessionGuard
from gateway.targets.local import LocalSession, LocalTarget
from protocols.session import ExitInfo, ISessionTarget, PtyRequest, SessionRequest, WindowSize
from tests.support.doubles import FakeProducer
from tests.support.gateway_helpers import OWN_ACCOUNT

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 10.0
ME = OWN_ACCOUNT  # the sessions here run as the account running the tests


class FakeClient:
    """An ISessionClient that records everything, optionally pausing after ``pause_after``."""

    def __init__(self, pause_after: int | None = None) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.events: list[str] = []
        self.exit: ExitInfo | None = None
        self.producer: object = None
        self.pause_after = pause_after
        self.paused = False
        self.calls_after_close = 0
        self.closed = False

    def _note(self, event: str) -> None:
        if self.closed:
            self.calls_after_close += 1
        if not self.events or self.events[-1] != event:
            self.events.append(event)

    def write_stdout(self, data: bytes) -> None:
        self._note("out")
        self.stdout += data
        self._maybe_pause()

    def write_stderr(self, data: bytes) -> None:
        self._note("err")
        self.stderr += data
        self._maybe_pause()

    def _maybe_pause(self) -> None:
        total = len(self.stdout) + len(self.stderr)
        if self.pause_after is not None and total >= self.pause_after and not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def resume(self, pause_after: int | None = None) -> None:
        self.pause_after = pause_after
        self.paused = False
        self.producer.resumeProducing()

    def send_eof(self) -> None:
        self._note("eof")

    def exited(self, info: ExitInfo) -> None:
        self._note("exit")
        self.exit = info

    def registerProducer(self, producer: object, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


class InputProducer(FakeProducer):
    """The front end's input side: pushes ``chunk`` while not paused."""

    def __init__(self, session: LocalSession, chunk: int = 64 * 1024) -> None:
        super().__init__()
        self.session = session
        self.chunk = b"i" * chunk
        self.sent = 0

    def stopProducing(self) -> None:
        super().stopProducing()
        self.paused = True  # a stopped producer pushes nothing more

    def pump(self, limit: int) -> None:
        while not self.paused and self.sent < limit:
            self.session.write_stdin(self.chunk)
            self.sent += len(self.chunk)


@pytest.fixture
def reactor() -> Iterator[EPollReactor]:
    r = EPollReactor()
    yield r
    for call in r.getDelayedCalls():
        call.cancel()
    r.removeAll()
    r._poller.close()
    waker = r.waker
    for fd in (getattr(waker, "i", None), getattr(waker, "o", None)):
        if isinstance(fd, int):
            os.close(fd)


@pytest.fixture
def guard() -> Iterator[SessionGuard]:
    """A lifeline guard of the test's own, running before the test counts descriptors."""
    guard = SessionGuard(grace=0.3)
    assert guard.start()
    yield guard
    guard.close()


@pytest.fixture
def target(reactor: EPollReactor, guard: SessionGuard) -> LocalTarget:
    return LocalTarget(reactor, kill_grace=0.3, guard=guard)


def spin(reactor: EPollReactor, until: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        reactor.iterate(0.02)


def spin_for(reactor: EPollReactor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reactor.iterate(0.02)


def run(
    reactor: EPollReactor,
    target: LocalTarget,
    request: SessionRequest,
    stdin: bytes = b"",
    eof: bool = True,
) -> FakeClient:
    client = FakeClient()
    session = target.open_session("alice", request, client, os_user=ME)
    if stdin:
        session.write_stdin(stdin)
    if eof:
        session.close_stdin()
    spin(reactor, lambda: client.exit is not None)
    return client


def pty(rows: int = 24, cols: int = 80, modes: tuple[tuple[int, int], ...] = ()) -> PtyRequest:
    return PtyRequest("xterm-256color", WindowSize(rows, cols), modes)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def is_reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


# ---- commands without a pty ----------------------------------------------------------


def test_interfaces(reactor, target):
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=b"true"), client, os_user=ME)
    verifyObject(ISessionTarget, session)
    verifyObject(IPushProducer, client.producer)
    spin(reactor, lambda: client.exit is not None)


def test_command_stdout_stderr_and_status(reactor, target):
    client = run(reactor, target, SessionRequest(command=b"echo hi; echo err >&2; exit 3"))
    assert bytes(client.stdout) == b"hi\n"
    assert bytes(client.stderr) == b"err\n"
    assert client.exit == ExitInfo(status=3)
    assert client.events[-2:] == ["eof", "exit"]
    assert client.producer is None  # unregistered before EOF


def test_environment_and_directory_are_clean(reactor, target, monkeypatch):
    monkeypatch.setenv("SSHGATEWAY_SECRET_TEST", "leak")
    request = SessionRequest(command=b"pwd; env", env={"LANG": "C.UTF-8", "BAD=NAME": "x"})
    client = run(reactor, target, request)
    lines = bytes(client.stdout).decode().splitlines()
    home = os.path.expanduser("~")
    assert lines[0] == os.path.realpath(home)
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert env["HOME"] == home
    assert env["LANG"] == "C.UTF-8"
    assert env["PATH"] and env["SHELL"] and env["USER"] == env["LOGNAME"]
    assert "TERM" not in env
    assert "SSHGATEWAY_SECRET_TEST" not in env
    assert "BAD" not in env


def test_signal_exit(reactor, target):
    client = run(reactor, target, SessionRequest(command=b"kill -TERM $$"))
    assert client.exit is not None
    assert client.exit.signal == "TERM" and client.exit.status is None
    assert client.exit.as_status() == 128 + signal.SIGTERM


def test_send_signal(reactor, target):
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=b"exec sleep 30"), client, os_user=ME)
    session.send_signal("NOSUCHSIGNAL")  # refused, not fatal
    session.send_signal("INT")
    spin(reactor, lambda: client.exit is not None)
    assert client.exit == ExitInfo(signal="INT")


def test_stdin_and_eof_through_cat(reactor, target):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=b"cat"), client, os_user=ME)
    for i in range(0, len(payload), 100_000):
        session.write_stdin(payload[i : i + 100_000])
    session.close_stdin()
    spin(reactor, lambda: client.exit is not None)
    assert bytes(client.stdout) == payload
    assert client.exit == ExitInfo(status=0)


def test_program_that_ignores_stdin(reactor, target):
    # The program exits without reading: pending input is dropped, the session still ends.
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=b"exec 0<&-; exit 7"), client, os_user=ME)
    session.write_stdin(b"x" * 1_000_000)
    spin(reactor, lambda: client.exit is not None)
    session.write_stdin(b"more")  # after the end: ignored
    session.close_stdin()
    assert client.exit == ExitInfo(status=7)


def test_start_failure_is_reported_not_raised(reactor, target, monkeypatch):
    import pwd

    from gateway.targets import local

    real = pwd.getpwuid(os.getuid())
    fake = pwd.struct_passwd(
        (real.pw_name, "x", real.pw_uid, real.pw_gid, "", real.pw_dir, "/nonexistent/shell")
    )
    monkeypatch.setattr(local, "find_account", lambda name: fake)
    before = open_fds()
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=b"true"), client, os_user=ME)
    assert client.events == []  # nothing happens inside open_session
    spin(reactor, lambda: client.exit is not None)
    assert client.exit == ExitInfo(status=127)
    assert b"cannot start session" in client.stderr
    assert client.events == ["err", "eof", "exit"]
    session.write_stdin(b"ignored")
    session.close()
    assert open_fds() == before


# ---- pty sessions --------------------------------------------------------------------


def test_pty_tty_size_and_term(reactor, target):
    request = SessionRequest(command=b"tty; stty size; echo $TERM", pty=pty(33, 101))
    client = run(reactor, target, request, eof=False)
    lines = bytes(client.stdout).decode().split("\r\n")
    assert lines[0].startswith("/dev/pts/")
    assert lines[1] == "33 101"
    assert lines[2] == "xterm-256color"
    assert client.exit == ExitInfo(status=0)
    assert client.stderr == b""


def test_pty_odd_terminal_type_falls_back(reactor, target):
    request = SessionRequest(command=b"echo $TERM", pty=PtyRequest("x\0y", WindowSize(24, 80)))
    client = run(reactor, target, request, eof=False)
    assert bytes(client.stdout) == b"dumb\r\n"
    assert client.exit == ExitInfo(status=0)


def test_pty_resize_reaches_program(reactor, target):
    script = b"trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done"
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=script, pty=pty()), client, os_user=ME)
    spin(reactor, lambda: b"ready" in client.stdout)
    session.resize(WindowSize(50, 132))
    spin(reactor, lambda: client.exit is not None)
    assert b"50 132" in client.stdout
    assert client.exit == ExitInfo(status=0)


def test_pty_login_shell(reactor, target):
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(pty=pty()), client, os_user=ME)
    session.write_stdin(b'echo "[$0]"; tty; exit 4\n')
    spin(reactor, lambda: client.exit is not None)
    output = bytes(client.stdout).decode(errors="replace")
    assert "[-" in output  # argv[0] starts with "-": a login shell
    assert "/dev/pts/" in output
    assert client.exit == ExitInfo(status=4)


def test_pty_modes_applied(reactor, target):
    modes = ((53, 0), (2, 255), (1, 3), (128, 9600), (129, 9600), (999, 1))
    request = SessionRequest(command=b"stty -a", pty=pty(modes=modes))
    client = run(reactor, target, request, eof=False)
    out = bytes(client.stdout).decode()
    assert "-echo " in out
    assert "quit = <undef>" in out
    assert "intr = ^C" in out
    assert "speed 9600 baud" in out


def test_pty_eof_in_canonical_mode_ends_cat(reactor, target):
    request = SessionRequest(command=b"stty -echo; echo ready; cat; echo cat-done", pty=pty())
    client = FakeClient()
    session = target.open_session("alice", request, client, os_user=ME)
    spin(reactor, lambda: b"ready" in client.stdout)
    session.write_stdin(b"line\npartial")  # a partial last line needs two EOF characters
    session.close_stdin()
    spin(reactor, lambda: client.exit is not None)
    assert b"line\r\npartial" in client.stdout
    assert b"cat-done" in client.stdout
    assert client.exit == ExitInfo(status=0)


def test_pty_eof_not_injected_in_raw_mode(reactor, target):
    # In raw mode ^D is a keystroke, not an end of file: the program must not receive one.
    script = b"stty raw -echo; echo ready; head -c 2 | od -An -tx1; echo done"
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=script, pty=pty()), client, os_user=ME)
    spin(reactor, lambda: b"ready" in client.stdout)
    session.write_stdin(b"a")
    session.close_stdin()
    spin_for(reactor, 0.5)
    assert client.exit is None
    assert b"04" not in client.stdout
    session.close()


@pytest.mark.parametrize("use_pty", [False, True], ids=["pipes", "pty"])
def test_output_queued_at_exit_is_delivered(reactor, target, use_pty):
    # The child writes and exits while the client is paused: what it left in the pipe or the
    # terminal must still arrive after resuming, and only then the exit.
    command = b"printf a; sleep 0.2; head -c 2000 /dev/zero; exit 9"
    request = SessionRequest(command=command, pty=pty() if use_pty else None)
    client = FakeClient(pause_after=1)
    session = target.open_session("alice", request, client, os_user=ME)
    spin(reactor, lambda: session.ended)
    assert bytes(client.stdout) == b"a"
    assert client.exit is None
    client.resume()
    spin(reactor, lambda: client.exit is not None)
    assert bytes(client.stdout) == b"a" + bytes(2000)
    assert client.exit == ExitInfo(status=9)


def test_pty_background_holder_does_not_keep_session(reactor, target):
    # A background process that ignores the hang-up keeps the terminal open; like sshd, the
    # session ends with the shell anyway.
    script = b"(trap '' HUP; exec sleep 5) & echo started"
    request = SessionRequest(command=script, pty=pty())
    started = time.monotonic()
    client = run(reactor, target, request, eof=False)
    assert time.monotonic() - started < 4
    assert b"started" in client.stdout
    assert client.exit == ExitInfo(status=0)


def test_pty_endless_background_writer_does_not_keep_session(reactor, target):
    script = b"(trap '' HUP; exec yes) & sleep 0.2; echo; echo started"
    client = run(reactor, target, SessionRequest(command=script, pty=pty()), eof=False)
    assert b"started" in client.stdout
    assert client.exit == ExitInfo(status=0)


# ---- flow control --------------------------------------------------------------------


@pytest.mark.parametrize("use_pty", [False, True], ids=["pipes", "pty"])
def test_paused_output_stops_reading(reactor, target, use_pty):
    limit = 1024 * 1024
    client = FakeClient(pause_after=limit)
    request = SessionRequest(command=b"exec yes", pty=pty() if use_pty else None)
    session = target.open_session("alice", request, client, os_user=ME)
    spin(reactor, lambda: client.paused)
    received = len(client.stdout)
    assert received < limit + target.read_chunk
    spin_for(reactor, 0.5)
    # Nothing more was read, so nothing was buffered: the child is blocked on a full pipe.
    assert len(client.stdout) == received
    assert client.exit is None
    assert not is_reaped(session.pid)
    client.resume(pause_after=received + limit)
    spin(reactor, lambda: client.paused)
    assert len(client.stdout) > received
    pid = session.pid
    session.close()
    client.closed = True
    spin(reactor, lambda: is_reaped(pid))
    spin_for(reactor, 0.1)
    assert client.calls_after_close == 0


def test_client_may_pause_while_registering(reactor, target):
    class PausingClient(FakeClient):
        def registerProducer(self, producer, streaming):
            super().registerProducer(producer, streaming)
            self.paused = True
            producer.pauseProducing()

    client = PausingClient()
    session = target.open_session("alice", SessionRequest(command=b"echo hi"), client, os_user=ME)
    spin(reactor, lambda: session.ended)
    assert client.stdout == b"" and client.exit is None
    client.resume()
    spin(reactor, lambda: client.exit is not None)
    assert client.stdout == b"hi\n"


def test_input_backpressure_pauses_front_end(reactor, target):
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=b"exec cat >/dev/null"), client, os_user=ME)
    producer = InputProducer(session)
    session.registerProducer(producer, True)
    os.kill(session.pid, signal.SIGSTOP)  # the program stops reading
    try:
        producer.pump(limit=64 * 1024 * 1024)
        spin(reactor, lambda: producer.paused)
        assert producer.pauses == 1
        assert producer.sent < 64 * 1024 * 1024
        assert session.stdin_buffered <= fdio.HIGH_WATER + len(producer.chunk)
        spin_for(reactor, 0.2)
        assert producer.paused
    finally:
        os.kill(session.pid, signal.SIGCONT)
    spin(reactor, lambda: not producer.paused)
    assert producer.resumes == 1
    assert session.stdin_buffered < fdio.LOW_WATER
    producer.pump(limit=producer.sent + 4 * 1024 * 1024)
    spin(reactor, lambda: session.stdin_buffered == 0)
    session.unregisterProducer()
    session.close_stdin()
    spin(reactor, lambda: client.exit is not None)
    assert client.exit == ExitInfo(status=0)


def test_pull_producer_is_asked_for_more(reactor, target):
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=b"wc -c"), client, os_user=ME)
    asked: list[int] = []

    class Pull:
        def resumeProducing(self) -> None:
            asked.append(1)
            if len(asked) <= 20:
                session.write_stdin(b"x" * 1000)
            elif len(asked) == 21:
                session.unregisterProducer()
                session.close_stdin()

        def stopProducing(self) -> None:
            pass

    session.registerProducer(Pull(), False)
    spin(reactor, lambda: client.exit is not None)
    assert bytes(client.stdout).strip() == b"20000"


# ---- ending the session from the gateway side ------------------------------------------


@pytest.mark.parametrize("use_pty", [False, True], ids=["pipes", "pty"])
def test_close_hangs_up(reactor, guard, use_pty):
    target = LocalTarget(reactor, kill_grace=30, guard=guard)  # so that only the hang-up can end it in time
    before = open_fds()
    client = FakeClient()
    request = SessionRequest(command=b"echo ready; exec sleep 30", pty=pty() if use_pty else None)
    session = target.open_session("alice", request, client, os_user=ME)
    spin(reactor, lambda: b"ready" in client.stdout)
    pid = session.pid
    reaped = session.when_reaped()
    session.close()
    client.closed = True
    spin(reactor, lambda: reaped.called)
    assert is_reaped(pid)
    assert client.calls_after_close == 0
    assert target.sessions == set()
    assert open_fds() == before


def test_close_kills_what_ignores_hangup(reactor, target):
    before = open_fds()
    client = FakeClient()
    request = SessionRequest(command=b"trap '' HUP; echo ready; exec sleep 30")
    session = target.open_session("alice", request, client, os_user=ME)
    spin(reactor, lambda: b"ready" in client.stdout)
    pid = session.pid
    reaped = session.when_reaped()
    started = time.monotonic()
    session.close()
    session.close()  # idempotent
    spin(reactor, lambda: reaped.called)
    assert time.monotonic() - started >= target.kill_grace * 0.9
    assert is_reaped(pid)
    assert open_fds() == before


def live(pid: int) -> bool:
    """Whether ``pid`` is a live process (not a zombie): for processes that are not ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


# A background child that ignores the hang-up and reports its pid once it does.
IGNORES_HUP = b"sh -c 'trap \"\" HUP; echo $$; exec sleep 30' & "


@pytest.mark.parametrize("leader", ["waits", "exited"])
def test_close_kills_the_background_of_the_group(reactor, target, guard, leader):
    # The client goes away: the shell dies of the hang-up (or had already ended, its
    # background child still holding the output), the child ignores the hang-up. Nothing of
    # the session's group may be left, and its leader stays unreaped until the kill.
    command = IGNORES_HUP + (b"wait" if leader == "waits" else b"exit 0")
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=command), client, os_user=ME)
    spin(reactor, lambda: client.stdout.endswith(b"\n"))
    child = int(client.stdout)
    assert session.pid in guard.groups
    if leader == "exited":
        spin(reactor, lambda: session.ended)
        spin_for(reactor, 0.1)
        assert not is_reaped(session.pid)  # a zombie: the group id stays the session's
        assert client.exit is None  # the output is still open
    reaped = session.when_reaped()
    session.close()
    client.closed = True
    spin(reactor, lambda: reaped.called)
    assert is_reaped(session.pid)
    spin(reactor, lambda: not live(child), timeout=2)
    assert session.pid not in guard.groups


def test_hung_up_group_is_released_without_waiting_for_the_kill(reactor, guard):
    # The shell dies of the hang-up, its background child half a second later: once
    # nothing is left to kill, the session is released, without waiting for the kill.
    target = LocalTarget(reactor, kill_grace=30, guard=guard)
    client = FakeClient()
    slow_to_die = (
        "import signal, sys, time; "
        "signal.signal(signal.SIGHUP, lambda *_: (time.sleep(0.5), sys.exit(0))); "
        "print('ready', flush=True); time.sleep(30)"
    )
    command = f"{sys.executable} -c \"{slow_to_die}\" & wait".encode()
    session = target.open_session("alice", SessionRequest(command=command), client, os_user=ME)
    spin(reactor, lambda: b"ready" in client.stdout)
    reaped = session.when_reaped()
    session.close()
    spin(reactor, lambda: reaped.called, timeout=5)
    assert is_reaped(session.pid)
    assert guard.groups == set()


def test_finished_session_leaves_a_detached_background_process(reactor, target, guard):
    # Like sshd: a program that put something in the background with its own output is
    # done when it exits; what it left is not killed when the front end then closes.
    client = FakeClient()
    command = b"sleep 30 >/dev/null 2>&1 & echo $!"
    session = target.open_session("alice", SessionRequest(command=command), client, os_user=ME)
    session.close_stdin()
    spin(reactor, lambda: client.exit is not None)
    child = int(client.stdout)
    try:
        assert client.exit == ExitInfo(status=0)
        assert is_reaped(session.pid)
        assert guard.groups == set()
        session.close()
        spin_for(reactor, 0.3)
        assert live(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_close_all(reactor, target):
    sessions = [
        target.open_session("alice", SessionRequest(command=b"exec sleep 30"), FakeClient(), os_user=ME)
        for _ in range(3)
    ]
    done = target.close_all()
    spin(reactor, lambda: done.called)
    assert all(is_reaped(s.pid) for s in sessions)
    assert target.sessions == set()


def test_close_all_does_not_wait_forever(reactor, guard):
    target = LocalTarget(reactor, kill_grace=0.1, guard=guard)
    session = target.open_session("alice", SessionRequest(command=b"exec sleep 30"), FakeClient(), os_user=ME)
    session.when_reaped = lambda: defer.Deferred()  # as if the child never died
    done = target.close_all()
    spin(reactor, lambda: done.called, timeout=5)


def test_null_byte_in_command_is_a_failed_start(reactor, target):
    client = run(reactor, target, SessionRequest(command=b"echo a\0b"))
    assert client.exit is not None and client.exit.status not in (None, 0)
    assert client.stderr.startswith(b"sshgateway: cannot start session")


def test_stop_producing_closes(reactor, target):
    client = FakeClient()
    session = target.open_session("alice", SessionRequest(command=b"exec sleep 30"), client, os_user=ME)
    reaped = session.when_reaped()
    client.producer.stopProducing()
    spin(reactor, lambda: reaped.called)
    assert is_reaped(session.pid)


def test_without_pidfd_falls_back_to_twisted_reaping(tmp_path):
    # The fallback needs the reactor's SIGCHLD handling, i.e. a running reactor: use a child.
    script = textwrap.dedent(
        """
        import os, pwd, sys
        from twisted.internet import reactor
        from gateway.targets import reaper
        from gateway.targets.local import LocalTarget
        from protocols.session import SessionRequest

        reaper._open_pidfd = lambda pid: None
        result = {}

        class Client:
            def write_stdout(self, data): result.setdefault("out", b""); result["out"] += data
            def write_stderr(self, data): pass
            def send_eof(self): pass
            def exited(self, info): result["exit"] = info; reactor.stop()
            def registerProducer(self, p, s): pass
            def unregisterProducer(self): pass

        reactor.callWhenRunning(
            LocalTarget(reactor).open_session, "u", SessionRequest(command=b"echo hi; exit 4"),
            Client(), os_user=pwd.getpwuid(os.geteuid()).pw_name)
        reactor.callLater(8, reactor.stop)
        reactor.run()
        print(result.get("out"), result.get("exit"))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, env=env
    )
    assert "b'hi\\n' ExitInfo(status=4" in out.stdout, out.stderr


# ---- terminal mode tables --------------------------------------------------------------


@pytest.fixture
def terminal() -> Iterator[int]:
    master, slave = os.openpty()
    yield slave
    os.close(slave)
    os.close(master)


def test_mode_tables():
    # Linux ptys force CS8 and no parity, so the character-size logic is checked on a list.
    attrs = [0, 0, termios.CS8 | termios.CREAD, 0, termios.B38400, termios.B38400, [b"\x00"] * 32]
    updated = ttymodes.updated_attributes(
        attrs, [(91, 0), (90, 1), (36, 1), (72, 1), (51, 1), (5, 4), (2, 255), (128, 9600)]
    )
    assert updated[2] & termios.CSIZE == termios.CS7
    assert updated[2] & termios.CREAD
    assert updated[0] & termios.ICRNL
    assert updated[1] & termios.ONLCR
    assert updated[3] & termios.ICANON
    assert updated[4] == termios.B9600 and updated[5] == termios.B38400
    assert updated[6][termios.VEOF] == b"\x04"
    assert updated[6][termios.VQUIT] == b"\x00"
    assert attrs[2] & termios.CSIZE == termios.CS8  # the input is not modified
    again = ttymodes.updated_attributes(
        updated, [(91, 1), (36, 0), (1, 300), (129, 12345), (77, 1)]
    )
    assert again[2] & termios.CSIZE == termios.CS8
    assert not again[0] & termios.ICRNL
    assert again[6][termios.VINTR] == b"\x00"  # out-of-range value ignored
    assert again[5] == termios.B38400  # unknown speed ignored


def test_apply_modes_on_a_terminal(terminal):
    ttymodes.apply_modes(terminal, [(36, 0), (72, 1), (53, 0), (5, 255), (1, 3)])
    attrs = termios.tcgetattr(terminal)
    assert not attrs[0] & termios.ICRNL
    assert attrs[1] & termios.ONLCR
    assert not attrs[3] & termios.ECHO
    assert attrs[6][termios.VEOF] == b"\x00"  # disabled
    assert attrs[6][termios.VINTR] == b"\x03"


def test_eof_sequence(terminal):
    ttymodes.apply_modes(terminal, [(51, 1), (5, 4), (36, 1)])
    assert ttymodes.eof_sequence(terminal, None) == b"\x04"
    assert ttymodes.eof_sequence(terminal, ord("\n")) == b"\x04"
    assert ttymodes.eof_sequence(terminal, ord("\r")) == b"\x04"
    assert ttymodes.eof_sequence(terminal, ord("x")) == b"\x04\x04"
    ttymodes.apply_modes(terminal, [(51, 0)])
    assert ttymodes.eof_sequence(terminal, None) == b""
