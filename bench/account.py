"""The OS account the benchmarks log in to sshd as: one with no shell start-up files.

Debian's bash reads ``/etc/bash.bashrc`` and ``~/.bashrc`` whenever ``SSH_CLIENT`` is set,
even for ``bash -c true``; logged in as root, a benchmark of sshd would time root's shell
start-up (pyenv here: 0.14-0.24 s a login) instead of sshd. So, when run as root, the
benchmarks log in as ``sshgw-bench``, created on first use with an empty home and the same
shell as the gateway's own user, so that both servers start the same shell binary for a
command and neither reads a start-up file. The gateway's ``local`` target runs commands as
that same account too (its ``os_user``), in an environment built like sshd's (with
``SSH_CLIENT``, so bash looks for the same files); the gateway's login name for the
benchmarks is the account's name too.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_ACCOUNT = "sshgw-bench"
BENCH_HOME = Path("/var/lib") / BENCH_ACCOUNT
# What a shell or sshd may run before a command: bash's files (``.profile`` for sh and
# for bash as a login shell), the user's and the system's sshd rc.
USER_STARTUP_FILES = (".bashrc", ".bash_profile", ".bash_login", ".profile", ".ssh/rc")
SYSTEM_SSHRC = Path("/etc/ssh/sshrc")


@dataclass(frozen=True)
class Account:
    name: str
    home: Path
    shell: str


def startup_files(home: Path, system_rc: Path = SYSTEM_SSHRC) -> list[Path]:
    """Start-up files that would run before a command for an account with this home."""
    found = [home / name for name in USER_STARTUP_FILES if (home / name).exists()]
    return found + ([system_rc] if system_rc.exists() else [])


def gateway_user_shell() -> str:
    """The shell the gateway's local target runs commands with (its own OS user's)."""
    return pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"


def shadow_password_locked(shadow_text: str, name: str) -> bool:
    """Whether ``name``'s password field starts with ``!`` (locked): sshd without PAM
    refuses such an account even for a key login. ``*`` (no password) is fine."""
    for line in shadow_text.splitlines():
        fields = line.split(":")
        if fields[0] == name and len(fields) > 1:
            return fields[1].startswith("!")
    return False


def bench_account() -> Account:
    """The account to log in to sshd as (see the module's docstring)."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        account = Account(me.pw_name, Path(me.pw_dir), me.pw_shell or "/bin/sh")
        found = startup_files(account.home)
        if found:
            print(f"bench: not root, so sshd logs in as {account.name}; these run at every "
                  f"login and are timed with sshd: {', '.join(map(str, found))}",
                  file=sys.stderr)
        return account
    try:
        entry = pwd.getpwnam(BENCH_ACCOUNT)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", str(BENCH_HOME), "--shell", gateway_user_shell(),
             "--password", "*", "--comment", "sshgateway benchmarks", BENCH_ACCOUNT],
            check=True,
        )
        entry = pwd.getpwnam(BENCH_ACCOUNT)
    account = Account(entry.pw_name, Path(entry.pw_dir), entry.pw_shell or "/bin/sh")
    if not account.home.exists():
        account.home.mkdir(mode=0o755, parents=True)
        os.chown(account.home, entry.pw_uid, entry.pw_gid)
    if shadow_password_locked(Path("/etc/shadow").read_text(), account.name):
        subprocess.run(["usermod", "--password", "*", account.name], check=True)
    found = startup_files(account.home)
    if found:
        raise SystemExit(f"bench: {account.name} must have no start-up files (they would be "
                         f"timed with sshd): {', '.join(map(str, found))}")
    if account.shell != gateway_user_shell():
        print(f"bench: {account.name}'s shell is {account.shell}, the gateway's local target "
              f"uses {gateway_user_shell()}", file=sys.stderr)
    return account
