"""Benchmark plumbing: start the gateway and a reference OpenSSH sshd on loopback, run
real clients against each, and time them. Not part of the test suite. Both servers are
logged in to as the same name (:mod:`bench.account`); CPU time is read by :mod:`bench.cpu`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cpu import reaping  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402


def which(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin")
    if path is None:
        raise SystemExit(f"bench needs {name!r} (apt-get install openssh-client openssh-server)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_user_key(workdir: Path) -> Path:
    key = workdir / "id_ed25519"
    subprocess.run(
        [which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
    )
    return key


def sshd_config_text(
    port: int, host_key: Path, authorized: Path, ciphers: str, macs: str, kex: str
) -> str:
    """The reference sshd's config: only the benchmark's algorithms, no reverse DNS, no
    rc files, and never a root login (a login as root times root's shell start-up)."""
    return (
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPidFile none\nUsePAM no\nStrictModes no\n"
        f"PermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"UseDNS no\nPermitUserRC no\nPrintMotd no\nPrintLastLog no\n"
        f"Ciphers {ciphers}\nMACs {macs}\n"
        f"KexAlgorithms {kex}\nMaxStartups 100\nMaxSessions 1000\nLogLevel ERROR\n"
    )


@contextmanager
def openssh_server(workdir: Path, user_key: Path, ciphers: str, macs: str, kex: str):
    """A throwaway sshd on a loopback port, to log in to as the account from
    :func:`bench.account.bench_account`. Yields (port, pid): the pid is a reaper's
    (:func:`bench.cpu.reaping`) around the listener, so that the CPU time of every
    per-connection process, orphaned or not, ends up in its tree."""
    host_key = workdir / "sshd_host_ed25519"
    subprocess.run(
        [which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True
    )
    authorized = workdir / "sshd_authorized_keys"
    authorized.write_text(Path(str(user_key) + ".pub").read_text())
    # sshd reads the keys as the account logging in: let it through the work directory.
    authorized.chmod(0o644)
    workdir.chmod(0o711)
    port = free_port()
    config = workdir / "sshd_config"
    config.write_text(sshd_config_text(port, host_key, authorized, ciphers, macs, kex))
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        reaping([which("sshd"), "-D", "-e", "-f", str(config)]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def gateway_config(
    login: str,
    authorized: Path,
    ciphers: str,
    macs: str,
    kex: str,
    os_user: str | None = None,
    workers: int = 1,
    targets: dict | None = None,
) -> dict:
    """An SSH-2 gateway whose one user, ``login``, runs commands with the local target as
    OS account ``os_user`` (default: the account named ``login``, as sshd would), served by
    ``workers`` processes; ``targets`` (name -> target table) are reachable too."""
    config = {
        "workers": workers,
        "protocols": ["2"],
        "users": {login: {"authorized_keys": str(authorized),
                          "targets": ["local", *(targets or {})],
                          "os_user": os_user or login}},
        "ssh2": {"ciphers": [ciphers], "macs": [macs], "kex": [kex]},
        # As the sshd it is compared with (MaxStartups 100): 16 clients logging in at
        # once would otherwise meet the default 10:30:100's random early drop.
        "limits": {"max_startups": "100"},
    }
    if targets:
        config["targets"] = targets
    return config


def profiling_prelude(stats: Path) -> str:
    """Python run in the gateway before twistd: cProfile on the main (reactor) thread,
    timed by that thread's CPU clock, its stats written to ``stats`` at exit. twistd's own
    ``--profile`` times with the wall clock, which on a loaded machine charges whatever
    ran when the process was preempted (a socket ``send`` that wakes the client, above all)
    and counts time the process did not have."""
    return (
        "import atexit, cProfile, time\n"
        "_bench_profile = cProfile.Profile(time.thread_time)\n"
        f"atexit.register(lambda: (_bench_profile.disable(), "
        f"_bench_profile.dump_stats({str(stats)!r})))\n"
        "_bench_profile.enable()\n"
    )


@contextmanager
def gateway_server(
    workdir: Path,
    user_key: Path,
    login: str,
    ciphers: str,
    macs: str,
    kex: str,
    workers: int = 1,
    targets: dict | None = None,
    profile: Path | None = None,
    tables: dict | None = None,
):
    """Yields (port, pid of the gateway, which reaps its local target's commands; with
    ``workers`` > 1 the parent, whose tree holds the workers). With ``profile``, the
    reactor thread runs under cProfile (:func:`profiling_prelude`) and its stats are
    written there when the gateway stops. ``tables`` (name -> table) are added to the
    config (``{"recording": {"enabled": False}}``, say)."""
    authorized = workdir / "gw_authorized_keys"
    authorized.write_text(Path(str(user_key) + ".pub").read_text())
    config = gateway_config(login, authorized, ciphers, macs, kex, workers=workers,
                            targets=targets)
    config.update(tables or {})
    prelude = profiling_prelude(profile) if profile is not None else ""
    with GatewayProcess(workdir, config, prelude=prelude) as gw:
        for number in range(1, workers + 1 if workers > 1 else 1):
            gw.wait_for_log(rf"\[worker {number}\] sshgateway listening on", timeout=120)
        yield gw.port, gw.pid


def ssh_argv(port: int, key: Path, user: str, *command: str, cipher: str, mac: str) -> list[str]:
    return [
        which("ssh"), "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i", str(key),
        "-o", "IdentitiesOnly=yes", "-c", cipher, "-m", mac, "-p", str(port),
        f"{user}@127.0.0.1", *command,
    ]


def tree_private_kib(pid: int) -> int:
    """Private memory (clean + dirty) of a process and all its descendants (sshd forks
    per client). Not PSS: a process's proportional share of libc and libcrypto falls as
    more processes map them, so 100 ssh clients on the same machine would make the
    gateway's PSS shrink."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            for line in rollup.splitlines():
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            pids.extend(int(c) for c in children)
        except (OSError, StopIteration):
            continue
    return total


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="sshgw-bench-"))
