"""The privileged spawner (gateway.targets.spawner) and the gateway's end of it
(gateway.targets.launchers.SpawnerLauncher).

First its request handling in memory, with hostile input: every request it cannot parse or
will not do gets a ``refused`` reply and one log line, never an exception, and every
descriptor it was sent is closed. Then, as root, a real spawner process behind a real
LocalTarget: programs run as the test account (``gwtest``), end with their group on
hang-up, and are ended when the gateway's end of the socket goes away.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from twisted.internet.epollreactor import EPollReactor
from zope.interface.verify import verifyObject

from gateway.targets import spawner
from gateway.targets.launch import LaunchSpec
from gateway.targets.launchers import IChild, ILauncher, InProcessLauncher, SpawnerLauncher
from gateway.targets.lifeline import SessionGuard
from gateway.targets.local import LocalTarget
from protocols.session import ExitInfo, PtyRequest, SessionRequest, WindowSize
from tests.support.accounts import LOCAL_USER, ensure_account, require_root
from tests.support.doubles import FakeSessionClient
from tests.support.session_processes import alive

DEADLINE = 10.0


# ---- request handling in memory ---------------------------------------------------------


@pytest.fixture
def handler() -> Iterator[tuple[spawner.Spawner, list[str]]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lines: list[str] = []
    me = pwd.getpwuid(os.getuid()).pw_name
    # Its own account only (uid 0 too when the tests run as root: named explicitly).
    yield spawner.Spawner(ours, [me], allow_root=os.getuid() == 0, log=lines.append), lines
    ours.close()
    theirs.close()


def my_launch(**changes) -> dict:
    me = pwd.getpwuid(os.getuid())
    message = {
        "op": "launch",
        "id": 7,
        "executable": "/bin/sh",
        "argv": ["sh", "-c", "exit 0"],
        "env": {"PATH": "/usr/bin:/bin"},
        "cwd": "/",
        "login": me.pw_name,
        "uid": me.pw_uid,
        "gid": me.pw_gid,
        "groups": list(os.getgrouplist(me.pw_name, me.pw_gid)),
        "pty": False,
    }
    message.update(changes)
    return {k: v for k, v in message.items() if v is not DROP}


DROP = object()


def pipe_fds(count: int = 3) -> list[int]:
    fds = []
    for _ in range((count + 1) // 2):
        fds.extend(os.pipe())
    for extra in fds[count:]:
        os.close(extra)
    return fds[:count]


def is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def refused(handler, data: bytes, fds: list[int] | None = None, flags: int = 0) -> str:
    """Hand ``data`` to the spawner; it must refuse with one log line and close the fds."""
    spawner_, lines = handler
    fds = fds if fds is not None else []
    children = dict(spawner_.children)
    replies = spawner_.handle(data, fds, flags)
    assert [r["op"] for r in replies] == ["refused"], replies
    assert len(lines) == 1 and lines[0].startswith("sshgateway spawner: refused request: ")
    assert all(is_closed(fd) for fd in fds)
    assert spawner_.children == children  # nothing started, nothing released
    lines.clear()
    return replies[0]["error"]


NOT_MESSAGES = [
    b"",
    b"\xff\xfe{",
    b"not json",
    b"[1, 2]",
    b'"launch"',
    b'{"op": 5}',
    b'{"id": 1}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"op": "launch", "id": 1, "argv": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


@pytest.mark.parametrize("data", NOT_MESSAGES, ids=range(len(NOT_MESSAGES)))
def test_what_is_not_a_message_is_refused(handler, data):
    refused(handler, data, pipe_fds())


NOBODY = pwd.getpwnam("nobody")
BAD_LAUNCHES = {
    "unknown field": {"shell": "/bin/sh"},
    "id not a number": {"id": "7"},
    "negative id": {"id": -1},
    "argv empty": {"argv": []},
    "argv not a list": {"argv": "sh -c id"},
    "argv with a number": {"argv": ["sh", 5]},
    "argv too long": {"argv": ["x"] * (spawner.MAX_ARGV + 1)},
    "env with a number": {"env": {"A": 1}},
    "env a list": {"env": ["A=1"]},
    "no executable": {"executable": DROP},
    "empty executable": {"executable": ""},
    "huge executable": {"executable": "/" * 5000},
    "cwd a number": {"cwd": 0},
    "uid true": {"uid": True},
    "uid negative": {"uid": -1},
    "uid too large": {"uid": 2**40},
    "gid missing": {"gid": DROP},
    "groups with a string": {"groups": ["0"]},
    "groups too many": {"groups": [1] * (spawner.MAX_GROUPS + 1)},
    "pty not a bool": {"pty": "yes"},
    "not an allowed account": {
        "login": "nobody",
        "uid": NOBODY.pw_uid,
        "gid": NOBODY.pw_gid,
        "groups": [],
    },
    "unknown account": {"login": "no-such-account-xyz"},
}


@pytest.mark.parametrize("changes", BAD_LAUNCHES.values(), ids=BAD_LAUNCHES.keys())
def test_malformed_launches_are_refused(handler, changes):
    refused(handler, json.dumps(my_launch(**changes)).encode(), pipe_fds())


def test_uid_gid_and_groups_must_be_the_accounts_own(handler):
    me = pwd.getpwuid(os.getuid())
    other_uid = next(u for u in range(1, 65000) if u != me.pw_uid)
    for changes in (
        {"uid": other_uid},
        {"gid": me.pw_gid + 1},
        {"groups": [*os.getgrouplist(me.pw_name, me.pw_gid), 4242]},
    ):
        error = refused(handler, json.dumps(my_launch(**changes)).encode(), pipe_fds())
        assert "not" in error


def test_uid_0_only_when_allowed_explicitly():
    root = {"login": "root", "uid": 0, "gid": 0, "groups": list(os.getgrouplist("root", 0))}
    fields = spawner.parse_launch(my_launch(**root))
    with pytest.raises(spawner.RequestError, match="uid 0"):
        spawner.check_account(fields, ["root"], allow_root=False)
    spawner.check_account(fields, ["root"], allow_root=True)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_a_launch_needs_three_descriptors(handler, count):
    assert "descriptors" in refused(handler, json.dumps(my_launch()).encode(), pipe_fds(count))


def test_a_pty_launch_needs_one_pseudo_terminal(handler):
    launch = json.dumps(my_launch(pty=True)).encode()
    assert "pseudo-terminal" in refused(handler, launch, pipe_fds())
    (master1, slave1), (master2, slave2) = os.openpty(), os.openpty()
    try:
        refused(handler, launch, [os.dup(slave1), os.dup(slave1), os.dup(slave2)])
    finally:
        for fd in (master1, slave1, master2, slave2):
            os.close(fd)


def test_a_real_terminal_is_never_given_away(handler):
    try:
        console = os.open("/dev/tty0", os.O_RDWR | os.O_NOCTTY)
    except OSError as e:
        pytest.skip(f"cannot open /dev/tty0 here: {e.strerror}")
    before = os.fstat(console)
    refused(
        handler,
        json.dumps(my_launch(pty=True)).encode(),
        [console, os.dup(console), os.dup(console)],
    )
    after = os.stat("/dev/tty0")
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)


@pytest.mark.parametrize("flag", ["MSG_TRUNC", "MSG_CTRUNC"])
def test_truncated_messages_are_refused(handler, flag):
    refused(handler, json.dumps(my_launch()).encode(), pipe_fds(), getattr(socket, flag))


OTHER_REQUESTS = {
    "unknown op": {"op": "setuid", "uid": 0},
    "signal a stranger": {"op": "signal", "pid": 1, "signal": 9},
    "signal without pid": {"op": "signal", "signal": 9},
    "signal a pid string": {"op": "signal", "pid": "1", "signal": 9},
    "release a stranger": {"op": "release", "pid": 1},
}


@pytest.mark.parametrize("message", OTHER_REQUESTS.values(), ids=OTHER_REQUESTS.keys())
def test_other_requests_only_for_its_own_children(handler, message):
    refused(handler, json.dumps(message).encode())


def test_requests_other_than_launch_take_no_descriptors(handler):
    refused(handler, json.dumps({"op": "release", "pid": 1}).encode(), pipe_fds(1))


def test_a_started_child_can_be_signalled_and_released_only_properly(handler):
    spawner_, lines = handler
    fds = pipe_fds()
    [reply] = spawner_.handle(
        json.dumps(my_launch(argv=["sh", "-c", "exec sleep 30"])).encode(), fds
    )
    assert reply["op"] == "started" and all(is_closed(fd) for fd in fds)
    pid = reply["pid"]
    try:
        for bad in (0, 65, -9, "9", True):
            refused(handler, json.dumps({"op": "signal", "pid": pid, "signal": bad}).encode())
        refused(handler, json.dumps({"op": "release", "pid": pid}).encode())  # still running
        message = {"op": "signal", "pid": pid, "signal": 15, "group": True}
        assert spawner_.handle(json.dumps(message).encode(), []) == []
        child = spawner_.children[pid]
        deadline = time.monotonic() + DEADLINE
        report = None
        while report is None and time.monotonic() < deadline:
            report = spawner_.check_exit(child)
            time.sleep(0.02)
        assert report == {"op": "exited", "pid": pid, "signal": 15, "core": False}
        assert spawner_.handle(json.dumps({"op": "release", "pid": pid}).encode(), []) == []
        assert pid not in spawner_.children
        assert lines == []
    finally:
        spawner_.end_all()


def test_the_spawner_needs_only_the_standard_library():
    # It runs as root under python -I -S: no site-packages, none of the gateway's code.
    import ast
    import sys

    tree = ast.parse(open(spawner.__file__).read())
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    names |= {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert {name.split(".")[0] for name in names} - {"__future__"} <= sys.stdlib_module_names


def test_guard_and_spawner_share_the_group_ending():
    # One place for the logic: the guard's program is this module's guard mode.
    from gateway.targets import lifeline

    assert lifeline.GUARD_COMMAND[-2:] == (spawner.__file__, "guard")


# ---- a real spawner, as root -------------------------------------------------------------


@pytest.fixture
def reactor() -> Iterator[EPollReactor]:
    r = EPollReactor()
    yield r
    for call in r.getDelayedCalls():
        call.cancel()
    r.removeAll()
    r._poller.close()
    for fd in (getattr(r.waker, "i", None), getattr(r.waker, "o", None)):
        if isinstance(fd, int):
            os.close(fd)


@pytest.fixture
def account() -> pwd.struct_passwd:
    require_root()
    return ensure_account(LOCAL_USER)


@pytest.fixture
def launcher(reactor, account) -> Iterator[SpawnerLauncher]:
    started = SpawnerLauncher.start(reactor, [account.pw_name], grace=0.3)
    yield started
    started.close()


@pytest.fixture
def target(reactor, launcher, account) -> LocalTarget:
    return LocalTarget(reactor, kill_grace=0.3, launcher=launcher, guard=SessionGuard())


def spin(reactor, until: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        reactor.iterate(0.02)


def run(
    reactor, target, command: bytes, pty: PtyRequest | None = None, os_user: str = LOCAL_USER
) -> FakeSessionClient:
    client = FakeSessionClient()
    request = SessionRequest(command=command, pty=pty)
    session = target.open_session("alice", request, client, os_user=os_user)
    session.close_stdin()
    spin(reactor, lambda: client.exit is not None)
    return client


def test_interfaces(reactor, launcher):
    assert verifyObject(ILauncher, launcher)
    assert verifyObject(ILauncher, InProcessLauncher(reactor, SessionGuard()))


def test_program_runs_as_the_account(reactor, target, launcher, account):
    client = run(reactor, target, b"id -un; id -G; echo $PPID; exit 3")
    name, groups, parent = client.out.decode().splitlines()
    assert name == account.pw_name
    assert sorted(map(int, groups.split())) == sorted(
        set(os.getgrouplist(account.pw_name, account.pw_gid))
    )
    assert int(parent) == launcher.process.pid
    assert client.exit == ExitInfo(status=3)


def test_pty_belongs_to_the_account(reactor, target, account):
    pty = PtyRequest("xterm", WindowSize(24, 80), ())
    client = run(reactor, target, b'stat -c %U "$(tty)"; tty >/dev/null && echo ctty', pty)
    assert client.out.split() == [account.pw_name.encode(), b"ctty"]


def test_signal_reaches_the_program(reactor, target):
    client = FakeSessionClient()
    session = target.open_session(
        "alice", SessionRequest(command=b"echo ready; exec sleep 30"), client, os_user=LOCAL_USER
    )
    spin(reactor, lambda: b"ready" in client.out)
    session.send_signal("TERM")
    spin(reactor, lambda: client.exit is not None)
    assert client.exit.signal == "TERM"


IGNORES_HUP = b"sh -c 'trap \"\" HUP; echo $$; exec sleep 30' & wait"


def test_hang_up_ends_the_group(reactor, target):
    client = FakeSessionClient()
    session = target.open_session(
        "alice", SessionRequest(command=IGNORES_HUP), client, os_user=LOCAL_USER
    )
    spin(reactor, lambda: client.out.endswith(b"\n"))
    child = int(client.out)
    reaped = session.when_reaped()
    session.close()
    spin(reactor, lambda: reaped.called)
    spin(reactor, lambda: not alive(child), timeout=2)
    assert target.sessions == set()


def test_gateway_gone_ends_every_group(reactor, target, launcher):
    client = FakeSessionClient()
    session = target.open_session(
        "alice", SessionRequest(command=IGNORES_HUP), client, os_user=LOCAL_USER
    )
    spin(reactor, lambda: client.out.endswith(b"\n"))
    child = int(client.out)
    leader = session.pid
    launcher.close()  # the spawner sees end of file, as when the gateway dies
    assert not alive(child) and not alive(leader)
    assert launcher.process.returncode == 0


def test_refused_account_is_a_failed_start(reactor, launcher):
    target = LocalTarget(reactor, launcher=launcher, guard=SessionGuard())
    client = run(reactor, target, b"id", os_user="root")
    assert client.exit == ExitInfo(status=126)
    assert b"spawner refused" in client.err


def test_missing_program_is_a_failed_start(reactor, launcher, account):
    spec = LaunchSpec(
        "/nonexistent/program", ("x",), {}, "/", account.pw_name, account.pw_uid,
        account.pw_gid, (), False,
    )  # fmt: skip
    fds = pipe_fds()
    try:
        with pytest.raises(FileNotFoundError):
            launcher.launch(spec, *fds, lambda info: None)
    finally:
        for fd in fds:
            os.close(fd)


def test_spawner_death_ends_its_sessions_and_later_starts_fail(reactor, target, launcher):
    client = FakeSessionClient()
    session = target.open_session(
        "alice", SessionRequest(command=b"exec sleep 30"), client, os_user=LOCAL_USER
    )
    assert verifyObject(IChild, session._watcher)
    os.kill(launcher.process.pid, signal.SIGKILL)
    launcher.process.wait(5)
    spin(reactor, lambda: launcher.broken)
    later = run(reactor, target, b"true")
    assert later.exit.status not in (None, 0)
    assert b"spawner is gone" in later.err
    # Its program is an orphan the unprivileged gateway cannot end (root here can): once
    # its output closes, the session ends with the status lost.
    os.kill(session.pid, signal.SIGKILL)
    spin(reactor, lambda: client.exit is not None)
    assert client.exit.status == 255


def test_directory_is_entered_with_the_accounts_rights(reactor, launcher, account, tmp_path):
    # Entered after the uid change, as sshd does: a directory the account may not enter
    # (pytest's, root's 0700) is replaced by "/".
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    spec = LaunchSpec(
        "/bin/sh", ("sh", "-c", "pwd"), {"PATH": "/usr/bin:/bin"}, str(private),
        account.pw_name, account.pw_uid, account.pw_gid, (), False,
    )  # fmt: skip
    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    ended: list[ExitInfo] = []
    try:
        child = launcher.launch(spec, null, write_end, write_end, ended.append)
    finally:
        os.close(write_end)
        os.close(null)
    with os.fdopen(read_end, "rb") as output:
        assert output.read() == b"/\n"
    spin(reactor, lambda: bool(ended))
    child.reap()


# ---- the gateway's end, against a scripted spawner -----------------------------------------


@pytest.fixture
def scripted() -> Iterator[tuple[SpawnerLauncher, socket.socket]]:
    from twisted.internet.testing import MemoryReactorClock

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.settimeout(5)  # a missing message fails the test, never hangs it
    launcher = SpawnerLauncher(MemoryReactorClock(), ours, timeout=0.2)
    yield launcher, theirs
    launcher.close()
    theirs.close()


def any_spec() -> LaunchSpec:
    return LaunchSpec("/bin/sh", ("sh",), {}, "/", "x", 1000, 1000, (), False)


def test_a_silent_spawner_is_a_failed_start_not_a_hang(scripted):
    launcher, _ = scripted
    fds = pipe_fds()
    try:
        with pytest.raises(OSError, match="did not answer"):
            launcher.launch(any_spec(), *fds, lambda info: None)
    finally:
        for fd in fds:
            os.close(fd)


def test_exit_reports_reach_the_session_and_garbage_is_ignored(scripted):
    launcher, theirs = scripted
    theirs.send(json.dumps({"op": "started", "id": 1, "pid": 4242}).encode())
    ended: list[ExitInfo] = []
    fds = pipe_fds()
    try:
        child = launcher.launch(any_spec(), *fds, ended.append)
    finally:
        for fd in fds:
            os.close(fd)
    request, sent, _, _ = socket.recv_fds(theirs, spawner.MAX_MESSAGE, 3)
    assert json.loads(request)["op"] == "launch" and len(sent) == 3
    for fd in sent:
        os.close(fd)
    theirs.send(b"\xff not json")
    theirs.send(json.dumps({"op": "exited", "pid": 999, "status": 1}).encode())  # not ours
    theirs.send(json.dumps({"op": "exited", "pid": 4242, "signal": 9}).encode())
    launcher.doRead()
    assert ended == [ExitInfo(signal="KILL")]
    assert child.exited and not child.reaped
    assert child.signal_group(signal.SIGHUP)  # the zombie still holds the group id
    child.reap()
    assert not child.signal_group(signal.SIGHUP)
    sent_ops = [json.loads(theirs.recv(spawner.MAX_MESSAGE)) for _ in range(2)]
    assert sent_ops == [
        {"op": "signal", "pid": 4242, "signal": signal.SIGHUP, "group": True},
        {"op": "release", "pid": 4242},
    ]


def test_a_vanished_spawner_ends_its_sessions(scripted):
    launcher, theirs = scripted
    theirs.send(json.dumps({"op": "started", "id": 1, "pid": 4242}).encode())
    ended: list[ExitInfo] = []
    fds = pipe_fds()
    try:
        child = launcher.launch(any_spec(), *fds, ended.append)
    finally:
        for fd in fds:
            os.close(fd)
    theirs.close()
    launcher.doRead()
    assert [info.status for info in ended] == [255]
    assert child.reaped and launcher.broken
    with pytest.raises(OSError, match="gone"):
        launcher.launch(any_spec(), 0, 1, 2, ended.append)


def test_a_late_answer_is_ended(scripted):
    launcher, theirs = scripted
    fds = pipe_fds()
    try:
        with pytest.raises(OSError, match="did not answer"):
            launcher.launch(any_spec(), *fds, lambda info: None)
    finally:
        for fd in fds:
            os.close(fd)
    for fd in socket.recv_fds(theirs, spawner.MAX_MESSAGE, 3)[1]:
        os.close(fd)
    theirs.send(json.dumps({"op": "started", "id": 1, "pid": 4242}).encode())
    launcher.doRead()
    kill = {"op": "signal", "pid": 4242, "signal": signal.SIGKILL, "group": True}
    assert json.loads(theirs.recv(spawner.MAX_MESSAGE)) == kill
    theirs.send(json.dumps({"op": "exited", "pid": 4242, "signal": 9}).encode())
    launcher.doRead()
    assert json.loads(theirs.recv(spawner.MAX_MESSAGE)) == {"op": "release", "pid": 4242}
    assert launcher.children == {}
