"""OS accounts and root-only resources for the privilege-separation tests.

These tests need root (to create accounts, bind ports below 1024, switch users): without
it they skip with the reason, and fail under ``CI=true``, like a missing peer.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.peers import in_ci, require_peer

# Unprivileged accounts the tests create (or reuse): the gateway runs as RUN_AS, local
# programs run as LOCAL_USER.
RUN_AS = "gwrun"
LOCAL_USER = "gwtest"


def require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "needs root: creates OS accounts, binds a port below 1024 and switches users"
    if in_ci():
        pytest.fail(message + " (CI=true: not being root is a failure)")
    pytest.skip(message)


def ensure_account(name: str) -> pwd.struct_passwd:
    """The account ``name``, created (no home, shell /bin/sh) if it does not exist."""
    require_root()
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        pytest.fail("useradd is missing (Debian package passwd)")
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/bin/sh", name],
        check=True, capture_output=True,
    )  # fmt: skip
    return pwd.getpwnam(name)


def free_low_port(host: str = "127.0.0.1") -> int:
    """A port below 1024 that nothing listens on now (tried by binding, in random order)."""
    candidates = list(range(600, 1024))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below 1024 on " + host)


@contextlib.contextmanager
def shared_workdir() -> Iterator[Path]:
    """A directory every account can reach (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="sshgw-privsep-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def interpreter_reachable_by(account: str) -> Iterator[None]:
    """Let ``account`` reach this Python installation for the test's duration.

    On a developer machine the interpreter may live under a private home (pyenv in
    /root, mode 0700); a gateway that drops to ``account`` must still import from it.
    Directories on the way that others cannot traverse get o+x (traverse, not list),
    and their modes back afterwards."""
    changed: dict[Path, int] = {}
    paths = {Path(sys.executable).resolve(), Path(os.__file__).resolve(), Path(__file__).resolve()}
    try:
        for path in paths:
            for directory in reversed(path.parents):
                mode = stat.S_IMODE(directory.stat().st_mode)
                if not mode & stat.S_IXOTH and directory not in changed:
                    changed[directory] = mode
                    directory.chmod(mode | stat.S_IXOTH)
        yield
    finally:
        for directory, mode in changed.items():
            directory.chmod(mode)


def process_user(pid: int) -> str:
    """The user ``ps`` shows for ``pid``."""
    return subprocess.run(
        ["ps", "-o", "user=", "-p", str(pid)], capture_output=True, text=True, check=True
    ).stdout.strip()


def parent_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[1])


@contextlib.contextmanager
def os_account(name: str) -> Iterator[pwd.struct_passwd]:
    """The account ``name``, created with a home directory (shell /bin/sh) if it does not
    exist, and removed afterwards only if made here (another test run may have made it
    meanwhile: then it is theirs to remove)."""
    require_root()
    require_peer("useradd", "userdel")
    created = False
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--comment", "sshgateway tests",
             name],
            capture_output=True, text=True,
        )  # fmt: skip
        created = made.returncode == 0
        entry = pwd.getpwnam(name)
    try:
        yield entry
    finally:
        if created:
            subprocess.run(["userdel", "--remove", name], capture_output=True)
