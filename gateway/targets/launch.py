"""What it takes to start one ``local`` session program, decided before anything forks.

:class:`LaunchSpec` is the one value passed from the part that decides *what* runs (the
account, the command line, the environment: :mod:`gateway.targets.local`) to the part
that starts it (in-process, or through the privileged spawner when the gateway has dropped
its privileges). Plain data, so that it can cross a process boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchSpec:
    executable: str  # the program to exec (the account's shell)
    argv: tuple[str | bytes, ...]  # argv[0] first ("-bash" for a login shell)
    env: Mapping[str, str]  # the whole environment; nothing is inherited
    cwd: str
    login: str  # the OS account's name
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, as initgroups() would set them
    pty: bool  # fds 0-2 are a terminal that must become the controlling terminal
