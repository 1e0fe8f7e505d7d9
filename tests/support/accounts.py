"""A throwaway OS account for tests that run ``local`` sessions as another user: made with
useradd (home, ``/bin/sh``) when missing, removed afterwards only if made here. Needs root:
otherwise the test is skipped with the reason, and under ``CI=true`` that is a failure."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.peers import in_ci, require_peer


def require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "starting local sessions as another account needs the gateway to run as root"
    if in_ci():
        pytest.fail(message + " (CI=true: not running as root is a failure)")
    pytest.skip(message + "; run the tests as root")


@contextmanager
def os_account(name: str) -> Iterator[pwd.struct_passwd]:
    """The account ``name`` (created with a home directory if it does not exist)."""
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
        # Another test run may have made it meanwhile: then it is theirs to remove.
        entry = pwd.getpwnam(name)
    try:
        yield entry
    finally:
        if created:
            subprocess.run(["userdel", "--remove", name], capture_output=True)
