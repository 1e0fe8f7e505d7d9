"""Privilege separation: what happens between binding the listening endpoints as root and
serving as an unprivileged account.

The gateway is built (host keys read) and its endpoints bound while it is still root
(``privilegedStartService``); then it becomes the account named by ``run_as``, or twistd
makes it ``--uid``/``--gid`` itself. Before that, :meth:`PrivilegeDrop.prepare` makes the
state directory (and its subdirectories, the flow records' included) the account's, so
that it can still write there, and, when the gateway is root, starts the privileged
spawner (gateway.targets.spawner), the only part that keeps root: it starts ``local``
programs as the configured ``os_user`` accounts, and as nobody else.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from gateway.hostkeys import ED25519_FILE, RSA_FILE, SSH1_FILE, ensure_state_dir

log = Logger()

# Read as root before the drop, never again: they keep their owner (and mode 0600).
HOST_KEY_FILES = frozenset({ED25519_FILE, RSA_FILE, SSH1_FILE})


class PrivilegeError(Exception):
    """The privilege drop cannot be done as configured (the message says why)."""


@dataclass(frozen=True)
class Account:
    """An OS account the gateway runs as: its ids as initgroups() would set them."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def account_named(name: str) -> Account:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"no such account {name!r}") from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, _groups(entry.pw_name, entry.pw_gid))


def account_with_uid(uid: int, gid: int | None = None) -> Account:
    """The account twistd's ``--uid``/``--gid`` switch to (gid: the account's own)."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        # twistd can switch to a uid without a name; it then has no supplementary groups.
        return Account(str(uid), uid, gid if gid is not None else uid, ())
    gid = entry.pw_gid if gid is None else gid
    return Account(entry.pw_name, uid, gid, _groups(entry.pw_name, gid))


def _groups(name: str, gid: int) -> tuple[int, ...]:
    return tuple(os.getgrouplist(name, gid))


def run_as_problem(name: str) -> str | None:
    """What is wrong with ``run_as = name`` for a gateway started by this process's user
    (for the config check): an unknown account, or another account without root."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return f"no such account {name!r}"
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        return (
            f"only a gateway started as root can run as {name!r}; "
            f"this one would run as {pwd.getpwuid(os.geteuid()).pw_name!r}"
        )
    return None


def local_accounts(config: Any) -> set[str]:
    """The accounts ``local`` programs may run as: the users' ``os_user`` names."""
    return {
        user.os_user
        for user in getattr(config, "users", {}).values()
        if getattr(user, "os_user", None)
    }


class PrivilegeDrop:
    """The drop to ``account``: ``self_drop`` when the gateway does it (``run_as``), not
    when twistd does it after ``privilegedStartService`` (``--uid``/``--gid``)."""

    def __init__(
        self,
        account: Account,
        state_dir: Path,
        *,
        self_drop: bool,
        local_accounts: Iterable[str] = (),
        flows_dir: Path | None = None,
    ) -> None:
        self.account = account
        self.state_dir = Path(state_dir)
        self.self_drop = self_drop
        self.local_accounts = set(local_accounts)
        self.flows_dir = flows_dir

    @property
    def needed(self) -> bool:
        """Whether there is anything to drop (root becoming another account)."""
        return os.geteuid() == 0 and self.account.uid != 0

    def prepare(self) -> None:
        """As root: give the state directory to the account."""
        ensure_state_dir(self.state_dir)
        if self.flows_dir is not None:
            self.flows_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        give_tree(self.state_dir, self.account.uid, self.account.gid, keep=HOST_KEY_FILES)

    def spawner_accounts(self) -> tuple[set[str], bool]:
        """The accounts the spawner may start programs as, and whether uid 0 is one: the
        configured ``os_user`` accounts, and the gateway's own (what it could run anyway)."""
        accounts = self.local_accounts | {self.account.name}
        allow_root = any(_uid_of(name) == 0 for name in self.local_accounts)
        return accounts, allow_root

    def drop(self) -> None:
        """Become the account for good: groups, gid, uid (real, effective and saved)."""
        account = self.account
        os.setgroups(list(account.groups))
        os.setresgid(account.gid, account.gid, account.gid)
        os.setresuid(account.uid, account.uid, account.uid)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # pragma: no cover - the kernel would have to ignore setresuid
            raise PrivilegeError("root could be regained after the privilege drop")
        os.environ.update(HOME=_home_of(account.name), USER=account.name, LOGNAME=account.name)
        log.info(
            "running as {name} (uid {uid}, gid {gid})",
            name=account.name,
            uid=account.uid,
            gid=account.gid,
        )

    def check_dropped(self) -> None:
        """After the drop (ours or twistd's): what the account cannot read is a start-up
        error (code imported later would fail at random), what it cannot write a warning."""
        unreadable = unreadable_code()
        if unreadable is not None:
            raise PrivilegeError(
                f"{self.account.name} cannot read {unreadable}: the Python installation and "
                "the gateway's code must be readable by the run_as account"
            )
        if not os.access(self.state_dir, os.W_OK | os.X_OK):
            log.warn(
                "{name} cannot write to the state directory {path} (can it reach it?): "
                "flow records and pinned host keys will fail",
                name=self.account.name,
                path=str(self.state_dir),
            )


def unreadable_code() -> str | None:
    """A directory Python imports from that this process cannot read, if any."""
    import gateway
    import twisted

    for module in (os, twisted, gateway):
        directory = os.path.dirname(os.path.abspath(module.__file__ or ""))
        if not os.access(directory, os.R_OK | os.X_OK):
            return directory
    return None


def _uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _home_of(name: str) -> str:
    try:
        return pwd.getpwnam(name).pw_dir
    except KeyError:
        return "/"


def give_tree(root: Path, uid: int, gid: int, keep: Iterable[str] = ()) -> None:
    """Make ``root`` and everything under it belong to uid:gid (modes unchanged), except
    the files named in ``keep`` at the top. Symbolic links are neither followed nor
    changed: a link planted in the state directory cannot make root chown elsewhere."""
    kept = set(keep)
    _give(root, uid, gid)
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            if Path(directory) == root and name in kept:
                continue
            _give(Path(directory) / name, uid, gid)


def _give(path: Path, uid: int, gid: int) -> None:
    st = path.lstat()
    if (st.st_uid, st.st_gid) != (uid, gid) and not path.is_symlink():
        os.chown(path, uid, gid, follow_symlinks=False)
