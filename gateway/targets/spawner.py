"""The small processes that keep a local session's processes in hand: the privileged
spawner, the lifeline guard, and what the gateway shares with them (starting a program,
ending process groups, the spawner's messages).

Standard library only, and importable without the rest of the gateway: both processes run
this file as ``python -I -S spawner.py guard|serve ...`` (no site, no environment, no
gateway code), so they start fast and hold nothing of the gateway (no host keys, no
listening sockets, no Twisted).

The guard (``guard GRACE``): the gateway, when it starts local programs itself, writes
"+PGID" / "-PGID" lines to the guard's stdin; at end of file (the gateway is gone) every
group still listed is ended (:func:`end_groups`). See gateway.targets.lifeline.

The spawner (``serve --fd N --allow NAME ... [--allow-root]``): started as root before the
gateway drops its privileges, it starts local session programs on the unprivileged
gateway's request, over a SOCK_SEQPACKET unix socket (one JSON message per packet, at most
:data:`MAX_MESSAGE` bytes). Requests:

- ``launch``: a LaunchSpec's fields and exactly three descriptors (SCM_RIGHTS: the child's
  stdin, stdout and stderr; the pty slave three times). The account must be one of those
  allowed at start (``--allow``, the configured ``os_user`` accounts), uid 0 only with
  ``--allow-root``, and uid, gid and groups must be the account's own (from the passwd and
  group databases, not from the request). The program starts in a session of its own (the
  pty as its controlling terminal, owned by the account as sshd does); the reply is
  ``started`` with the pid, or ``failed`` with the errno.
- ``signal``: a signal to one of its children, or to that child's process group.
- ``release``: reap an ended child. Until then the ended leader is kept as a zombie, so
  its pid, and so its group id, cannot be given to another process while the gateway
  may still signal the group.

It reports ``exited`` (with the status) when a child ends. Whatever it cannot parse or will
not do is refused with a ``refused`` reply and a line on its stderr; it never starts a
program as an account it was not given. When the gateway goes away (end of file on the
socket) it ends every group of its live sessions, as the guard does, and exits.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import selectors
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

# One request or reply; a launch with a large environment still fits easily.
MAX_MESSAGE = 64 * 1024
FDS_PER_LAUNCH = 3
MAX_ARGV = 1024
MAX_ENV = 1024
MAX_GROUPS = 1024
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged"
# Without pidfds the spawner looks for ended children this often.
EXIT_POLL = 0.2
LAUNCH_FIELDS = frozenset(
    {"op", "id", "executable", "argv", "env", "cwd", "login", "uid", "gid", "groups", "pty"}
)


# ---- ending process groups (the guard, the spawner) -------------------------------------


def signal_groups(groups: set[int], number: int) -> None:
    """Send ``number`` to every group; a group that is gone is dropped from the set."""
    for group in list(groups):
        try:
            os.killpg(group, number)
        except (ProcessLookupError, PermissionError):
            groups.discard(group)


def end_groups(
    groups: set[int], grace: float, settle: Callable[[set[int]], None] | None = None
) -> None:
    """Hang up every group (SIGHUP, then SIGCONT for stopped ones), wait up to ``grace``
    seconds for them to go, then SIGKILL what is left. ``settle``, if given, is called
    while waiting to drop the groups that are done although a signal would still reach
    them (the spawner's ended leaders, which only it can reap)."""
    signal_groups(groups, signal.SIGHUP)
    signal_groups(groups, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        time.sleep(0.05)
        if settle is not None:
            settle(groups)
        signal_groups(groups, 0)
    signal_groups(groups, signal.SIGKILL)


def group_has_others(pgid: int, leader: int) -> bool:
    """Whether a live process other than ``leader`` is in process group ``pgid``.

    Read from /proc (Linux); where it cannot be read, the answer is True, so that a caller
    waiting for the group to empty falls back to its timeout.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    wanted = str(pgid).encode()
    for name in entries:
        if not name.isdigit() or int(name) == leader:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == wanted and fields[0] not in (b"Z", b"X"):
            return True
    return False


def guard_main(grace: float) -> None:
    """The lifeline guard: track "+PGID"/"-PGID" lines on stdin, end the groups at EOF."""
    groups: set[int] = set()
    pending = b""
    while True:
        try:
            chunk = os.read(0, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                group = int(line[1:])
            except ValueError:
                continue
            if line[:1] == b"+" and group > 1:
                groups.add(group)
            elif line[:1] == b"-":
                groups.discard(group)
    end_groups(groups, grace)


# ---- starting a program (in the gateway, or in the spawner) -----------------------------


def _child_setup(cwd: str, pty: bool) -> Callable[[], None]:
    """What the child does between fork and exec, after setsid() and the uid change."""

    def setup() -> None:
        # The account's own rights decide whether it may enter its directory (as with
        # sshd, one it cannot enter is replaced by "/").
        try:
            os.chdir(cwd)
        except OSError:
            os.chdir("/")
        if pty:
            # Make the pty (already on fd 0) the controlling terminal of the new session,
            # so job control, ^C and SIGWINCH work.
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    return setup


def _give_terminal(fd: int, uid: int, gid: int) -> None:
    """The terminal belongs to the account while its session runs, as sshd arranges it:
    owner the account, group ``tty`` (mode 0620, so ``write`` works), else 0600."""
    try:
        import grp

        tty_gid, mode = grp.getgrnam("tty").gr_gid, 0o620
    except (ImportError, KeyError):
        tty_gid, mode = gid, 0o600
    os.fchown(fd, uid, tty_gid)
    os.fchmod(fd, mode)


def start_program(
    *,
    executable: str,
    argv: Sequence[str | bytes],
    env: Mapping[str, str],
    cwd: str,
    uid: int,
    gid: int,
    groups: Sequence[int],
    pty: bool,
    stdin: int,
    stdout: int,
    stderr: int,
) -> subprocess.Popen[bytes]:
    """Start a session program in a session and process group of its own (its pid is the
    group id), with exactly ``env``, in ``cwd`` (or "/" if the account cannot enter it). As root it becomes ``uid``/``gid``/``groups`` first;
    otherwise it can only run as the caller's own uid. Raises OSError (or ValueError for a
    NUL in an argument) when it cannot start; the caller owns the returned Popen and must
    keep it until the child is reaped (a dropped Popen reaps its child by itself)."""
    ids: dict[str, Any] = {}
    if os.geteuid() == 0:
        ids = {"user": uid, "group": gid, "extra_groups": list(groups)}
        if pty:
            _give_terminal(stdin, uid, gid)
    elif uid != os.geteuid():
        raise PermissionError(errno.EPERM, f"only root can start a program as uid {uid}")
    return subprocess.Popen(
        list(argv),
        executable=executable,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env),
        close_fds=True,
        restore_signals=True,
        start_new_session=True,
        preexec_fn=_child_setup(cwd, pty),
        **ids,
    )


# ---- messages -------------------------------------------------------------------------


class RequestError(ValueError):
    """A request the spawner refuses; the message says why (for its log and the reply)."""


def encode(message: Mapping[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes is larger than {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> dict[str, Any]:
    """One message: a JSON object with a string ``op``. Raises RequestError."""
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RequestError("not a JSON message") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise RequestError("not a message (an object with an op)")
    return message


def launch_request(request_id: int, spec: Any) -> dict[str, Any]:
    """The launch message for a LaunchSpec (argv items as file-system strings)."""
    return {
        "op": "launch",
        "id": request_id,
        "executable": spec.executable,
        "argv": [os.fsdecode(arg) for arg in spec.argv],
        "env": dict(spec.env),
        "cwd": spec.cwd,
        "login": spec.login,
        "uid": spec.uid,
        "gid": spec.gid,
        "groups": list(spec.groups),
        "pty": spec.pty,
    }


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _text(message: Mapping[str, Any], name: str, limit: int = 4096) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise RequestError(f"{name}: must be a non-empty string of at most {limit} characters")
    return value


def _identifier(message: Mapping[str, Any], name: str) -> int:
    value = message.get(name)
    if not _is_int(value, 0, MAX_ID):
        raise RequestError(f"{name}: must be an id from 0 to {MAX_ID}")
    return value


def parse_launch(message: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a launch request, checked for shape (not for permission: see
    :func:`check_account`). Raises RequestError naming the first bad field."""
    unknown = set(message) - LAUNCH_FIELDS
    if unknown:
        raise RequestError(f"unknown field {sorted(unknown)[0][:32]!r}")
    if not _is_int(message.get("id"), 0, 2**53):
        raise RequestError("id: must be a non-negative integer")
    argv = message.get("argv")
    if (
        not isinstance(argv, list)
        or not 1 <= len(argv) <= MAX_ARGV
        or not all(isinstance(arg, str) for arg in argv)
    ):
        raise RequestError(f"argv: must be a list of 1 to {MAX_ARGV} strings")
    env = message.get("env")
    if (
        not isinstance(env, dict)
        or len(env) > MAX_ENV
        or not all(isinstance(value, str) for value in env.values())
    ):
        raise RequestError(f"env: must map at most {MAX_ENV} names to strings")
    groups = message.get("groups")
    if (
        not isinstance(groups, list)
        or len(groups) > MAX_GROUPS
        or not all(_is_int(group, 0, MAX_ID) for group in groups)
    ):
        raise RequestError(f"groups: must be a list of at most {MAX_GROUPS} group ids")
    if not isinstance(message.get("pty"), bool):
        raise RequestError("pty: must be true or false")
    return {
        "id": message["id"],
        "executable": _text(message, "executable"),
        "argv": [os.fsencode(arg) for arg in argv],
        "env": env,
        "cwd": _text(message, "cwd"),
        "login": _text(message, "login", 256),
        "uid": _identifier(message, "uid"),
        "gid": _identifier(message, "gid"),
        "groups": tuple(groups),
        "pty": message["pty"],
    }


def check_account(fields: Mapping[str, Any], allowed: Iterable[str], allow_root: bool) -> None:
    """Refuse (RequestError) an account the spawner was not given at start, uid 0 unless
    allowed explicitly, and uid, gid or groups that are not the account's own."""
    login = fields["login"]
    if login not in set(allowed):
        raise RequestError(f"account {login[:64]!r} is not one the gateway may start programs as")
    try:
        account = pwd.getpwnam(login)
    except KeyError:
        raise RequestError(f"account {login[:64]!r} does not exist") from None
    if fields["uid"] != account.pw_uid or fields["gid"] != account.pw_gid:
        raise RequestError(f"uid/gid {fields['uid']}/{fields['gid']} are not {login}'s")
    if account.pw_uid == 0 and not allow_root:
        raise RequestError("uid 0 is not allowed")
    own_groups = set(os.getgrouplist(login, account.pw_gid))
    if not set(fields["groups"]) <= own_groups:
        raise RequestError(f"groups {sorted(set(fields['groups']) - own_groups)} are not {login}'s")


def exit_message(pid: int, result: os.waitid_result) -> dict[str, Any]:
    if result.si_code == os.CLD_EXITED:
        return {"op": "exited", "pid": pid, "status": result.si_status}
    return {
        "op": "exited",
        "pid": pid,
        "signal": result.si_status,
        "core": result.si_code == os.CLD_DUMPED,
    }


# ---- the spawner ------------------------------------------------------------------------


# Linux's Unix98 pseudo-terminal slaves (/dev/pts/N): the only terminals it gives away.
_PTS_MAJORS = range(136, 144)


def _one_pseudo_terminal(fds: Sequence[int]) -> bool:
    try:
        devices = {os.fstat(fd).st_rdev for fd in fds}
    except OSError:
        return False
    if len(devices) != 1 or not all(os.isatty(fd) for fd in fds):
        return False
    return os.major(devices.pop()) in _PTS_MAJORS


class _Child:
    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int | None) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pidfd = pidfd
        self.watched = pidfd is not None  # registered with the selector
        self.exited = False


def _log_to_stderr(line: str) -> None:
    try:
        os.write(2, (line + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


class Spawner:
    """The spawner's state and request handling; :meth:`serve` is its main loop."""

    def __init__(
        self,
        sock: socket.socket,
        allowed: Iterable[str],
        allow_root: bool = False,
        grace: float = 2.0,
        log: Callable[[str], None] = _log_to_stderr,
    ) -> None:
        self.sock = sock
        self.allowed = frozenset(allowed)
        self.allow_root = allow_root
        self.grace = grace
        self.log = log
        self.children: dict[int, _Child] = {}
        self.selector = selectors.DefaultSelector()

    # requests

    def handle(self, data: bytes, fds: Sequence[int], flags: int = 0) -> list[dict[str, Any]]:
        """Act on one packet; returns the replies. Every received descriptor is closed."""
        request_id = None
        try:
            if flags & socket.MSG_TRUNC:
                raise RequestError(f"message larger than {MAX_MESSAGE} bytes")
            if flags & socket.MSG_CTRUNC:
                raise RequestError("too many descriptors")
            message = decode(data)
            if _is_int(message.get("id"), 0, 2**53):
                request_id = message["id"]
            op = message["op"]
            if op == "launch":
                return [self._launch(message, fds)]
            if fds:
                raise RequestError(f"{op[:32]!r} takes no descriptors")
            if op == "signal":
                self._signal(message)
            elif op == "release":
                self._release(message)
            else:
                raise RequestError(f"unknown op {op[:32]!r}")
            return []
        except RequestError as e:
            self.log(f"sshgateway spawner: refused request: {e}")
            return [{"op": "refused", "id": request_id, "error": str(e)}]
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _launch(self, message: Mapping[str, Any], fds: Sequence[int]) -> dict[str, Any]:
        fields = parse_launch(message)
        if len(fds) != FDS_PER_LAUNCH:
            raise RequestError(f"launch takes {FDS_PER_LAUNCH} descriptors, got {len(fds)}")
        check_account(fields, self.allowed, self.allow_root)
        if fields["pty"] and not _one_pseudo_terminal(fds):
            raise RequestError("pty: the descriptors are not one pseudo-terminal")
        request_id, login = fields.pop("id"), fields.pop("login")
        try:
            popen = start_program(**fields, stdin=fds[0], stdout=fds[1], stderr=fds[2])
        except OSError as e:
            self.log(f"sshgateway spawner: cannot start a program as {login}: {e.strerror}")
            return {"op": "failed", "id": request_id, "errno": e.errno or 0, "error": e.strerror}
        except (ValueError, TypeError) as e:
            return {"op": "failed", "id": request_id, "errno": 0, "error": str(e)[:200]}
        try:
            pidfd: int | None = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            pidfd = None  # polled instead
        child = _Child(popen, pidfd)
        self.children[child.pid] = child
        if pidfd is not None:
            self.selector.register(pidfd, selectors.EVENT_READ, child)
        return {"op": "started", "id": request_id, "pid": child.pid}

    def _child(self, message: Mapping[str, Any]) -> _Child:
        pid = message.get("pid")
        child = self.children.get(pid) if _is_int(pid, 1, 2**31) else None
        if child is None:
            raise RequestError(f"pid {str(pid)[:16]} is not a session of this spawner")
        return child

    def _signal(self, message: Mapping[str, Any]) -> None:
        child = self._child(message)
        number = message.get("signal")
        if not _is_int(number, 1, signal.NSIG - 1):
            raise RequestError("signal: must be a signal number")
        if not isinstance(message.get("group", False), bool):
            raise RequestError("group: must be true or false")
        if message.get("group"):
            try:
                os.killpg(child.pid, number)
                return
            except (ProcessLookupError, PermissionError):
                pass
        if not child.exited:
            try:
                os.kill(child.pid, number)
            except ProcessLookupError:
                pass

    def _release(self, message: Mapping[str, Any]) -> None:
        child = self._child(message)
        if not child.exited:
            raise RequestError(f"pid {child.pid} has not ended")
        self._reap(child)

    # children

    def check_exit(self, child: _Child) -> dict[str, Any] | None:
        """The exit report of an ended child (once), its zombie kept; None while it runs."""
        if child.exited:
            return None
        try:
            result = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            result = None
        if result is None or result.si_pid == 0:
            return None
        child.exited = True
        self._unwatch(child)
        return exit_message(child.pid, result)

    def _unwatch(self, child: _Child) -> None:
        if child.pidfd is not None and child.watched:
            child.watched = False
            self.selector.unregister(child.pidfd)

    def _reap(self, child: _Child) -> None:
        """Reap an ended (or killed) child: its pid, and group id, are free again."""
        self.children.pop(child.pid, None)
        self._unwatch(child)
        try:
            _, status = os.waitpid(child.pid, 0)
            # The Popen is dropped now: with a return code it never waits for the pid.
            child.popen.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            child.popen.returncode = -1
        if child.pidfd is not None:
            os.close(child.pidfd)
            child.pidfd = None

    def _settle(self, groups: set[int]) -> None:
        # While ending the groups: an ended leader whose group has emptied is reaped.
        for pid in list(groups):
            child = self.children.get(pid)
            if child is None:
                groups.discard(pid)
                continue
            self.check_exit(child)
            if child.exited and not group_has_others(pid, pid):
                self._reap(child)
                groups.discard(pid)

    def end_all(self) -> None:
        """The gateway is gone: end every session's group, reap every child."""
        end_groups(set(self.children), self.grace, self._settle)
        for child in list(self.children.values()):
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap(child)

    # the loop

    def send(self, reply: Mapping[str, Any]) -> bool:
        try:
            self.sock.send(encode(reply))
        except OSError:
            return False
        return True

    def serve(self) -> None:
        self.selector.register(self.sock, selectors.EVENT_READ, None)
        running = True
        while running:
            polled = [c for c in self.children.values() if c.pidfd is None and not c.exited]
            try:
                ready = self.selector.select(EXIT_POLL if polled else None)
            except InterruptedError:
                continue
            reports = [self.check_exit(child) for child in polled]
            for key, _ in ready:
                if key.data is not None:
                    reports.append(self.check_exit(key.data))
                    continue
                try:
                    data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, FDS_PER_LAUNCH)
                except InterruptedError:
                    continue
                except OSError:
                    data, fds, flags = b"", [], 0
                if not data and not fds:
                    running = False  # the gateway is gone
                    break
                for reply in self.handle(data, fds, flags):
                    running = self.send(reply) and running
            for report in reports:
                if report is not None:
                    running = self.send(report) and running
        self.end_all()


def serve_main(args: list[str]) -> None:
    fd, grace, allowed, allow_root = -1, 2.0, [], False
    while args:
        flag = args.pop(0)
        if flag == "--fd":
            fd = int(args.pop(0))
        elif flag == "--grace":
            grace = float(args.pop(0))
        elif flag == "--allow":
            allowed.append(args.pop(0))
        elif flag == "--allow-root":
            allow_root = True
        else:
            raise SystemExit(f"sshgateway spawner: unknown argument {flag!r}")
    # No signal is ignored here: an ignored signal would stay ignored in the programs it
    # starts. The gateway starts it in a session of its own, out of reach of a terminal.
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    Spawner(sock, allowed, allow_root, grace).serve()


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[1] == "guard":
        guard_main(float(argv[2]))
    elif len(argv) >= 2 and argv[1] == "serve":
        serve_main(argv[2:])
    else:
        raise SystemExit("usage: spawner.py guard GRACE | serve --fd N [--allow NAME]...")


if __name__ == "__main__":
    main(sys.argv)
