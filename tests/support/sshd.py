"""A real OpenSSH sshd for tests: Debian's openssh-server on a free loopback port, with its
own config, host keys, authorized_keys and sftp-server, logging in as the current user
(root in CI: ``PermitRootLogin yes``).

Password logins without touching the system's accounts: with ``root_password`` the sshd
runs in a private mount namespace (``unshare -m``) where a throwaway shadow file is
bind-mounted over /etc/shadow, and with ``pam=True`` a minimal pam_unix-only service
file over /etc/pam.d/sshd (so keyboard-interactive goes through PAM). Nothing outside
that namespace sees either file.

Also :func:`fresh_reactor` / :func:`run_until`: tests drive the gateway side with a
private reactor (the global one cannot be restarted between tests).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.peers import require_peer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sftp_server() -> str:
    """The sftp-server sshd runs for ``subsystem sftp`` (as Debian's sshd_config has it;
    sshd's built-in one where the package puts it elsewhere)."""
    for path in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server"):
        if os.access(path, os.X_OK):
            return path
    return "internal-sftp"


def start_listening(argv: list[str], port: int, log: Path, name: str) -> subprocess.Popen:
    """Start a server (its own session, stderr appended to ``log``) and return once it
    accepts TCP connections on loopback ``port``; raise with its log if it exits or is not
    listening within 10 s."""
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process_group(proc)
                raise RuntimeError(f"{name} did not start: " + log.read_text()) from None
            time.sleep(0.05)


def stop_process_group(proc: subprocess.Popen | None) -> None:
    """SIGTERM to a server started by :func:`start_listening` and everything in its
    process group (a listener and its per-connection children), then reap it."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    proc.wait(10)


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A passphrase-less OpenSSH key pair at ``path`` / ``path.pub``."""
    tool = require_peer("ssh-keygen")["ssh-keygen"]
    extra = ["-b", "2048"] if kind == "rsa" else []
    if path.exists():
        path.unlink()
        Path(str(path) + ".pub").unlink(missing_ok=True)
    subprocess.run(
        [tool, "-q", "-t", kind, *extra, "-N", "", "-C", "", "-f", str(path)],
        check=True,
        timeout=60,
    )
    return path


class OpenSSHServer:
    """``with OpenSSHServer(workdir, [user_pub, ...]) as sshd:`` -> ``sshd.port``."""

    def __init__(
        self,
        workdir: Path,
        authorized: list[Path],
        host_key_types: tuple[str, ...] = ("ed25519",),
        extra_config: str = "",
        root_password: str | None = None,
        pam: bool = False,
    ) -> None:
        self.sshd = require_peer("sshd")["sshd"]
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.host_keys = [keygen(workdir / f"host_{kind}", kind) for kind in host_key_types]
        self.authorized = workdir / "authorized_keys"
        self.authorized.write_text("".join(Path(str(p)).read_text() for p in authorized))
        self.extra_config = extra_config
        self.root_password = root_password
        self.pam = pam
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def host_public(self, index: int = 0) -> str:
        return Path(str(self.host_keys[index]) + ".pub").read_text().strip()

    def new_host_keys(self) -> None:
        """Replace the host keys (takes effect at the next :meth:`start`)."""
        self.host_keys = [keygen(p, p.name.removeprefix("host_")) for p in self.host_keys]

    def start(self) -> None:
        self.port = self.port or free_port()
        config = self.workdir / "sshd_config"
        # sshd keeps the first value of a keyword: the caller's settings go first.
        config.write_text(
            self.extra_config
            + f"Port {self.port}\nListenAddress 127.0.0.1\n"
            + "".join(f"HostKey {k}\n" for k in self.host_keys)
            + f"AuthorizedKeysFile {self.authorized}\nPidFile none\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nAcceptEnv NOTHING\nLogLevel ERROR\n"
            "PermitEmptyPasswords no\n"
            "MaxStartups 50\nMaxSessions 50\n"
            f"Subsystem sftp {sftp_server()}\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        argv = [self.sshd, "-D", "-e", "-f", str(config)]
        if self.root_password is not None:
            argv = self._namespaced(argv)
        self.proc = start_listening(argv, self.port, self.workdir / "sshd.log", "sshd")

    def _namespaced(self, argv: list[str]) -> list[str]:
        tools = require_peer("unshare", "openssl")
        hashed = subprocess.run(
            [tools["openssl"], "passwd", "-6", "-stdin"],
            input=self.root_password,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        shadow = self.workdir / "shadow"
        shadow.write_text(f"root:{hashed}:20000:0:99999:7:::\n")
        shadow.chmod(0o600)
        mounts = f'mount --bind "{shadow}" /etc/shadow'
        if self.pam:
            service = self.workdir / "pam-sshd"
            service.write_text(
                "auth required pam_unix.so\naccount required pam_unix.so\n"
                "session required pam_unix.so\npassword required pam_unix.so\n"
            )
            mounts += f' && mount --bind "{service}" /etc/pam.d/sshd'
        return [tools["unshare"], "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", *argv]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process_group(proc)

    def __enter__(self) -> OpenSSHServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes the handshake into
    the backlog) but never says anything: the upstream that hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def fresh_reactor():
    from twisted.internet.epollreactor import EPollReactor

    return EPollReactor()


def close_reactor(reactor) -> None:
    for call in reactor.getDelayedCalls():
        call.cancel()
    reactor.removeAll()
    reactor._poller.close()
    waker = reactor.waker
    for fd in (getattr(waker, "i", None), getattr(waker, "o", None)):
        if isinstance(fd, int):
            with contextlib.suppress(OSError):
                os.close(fd)


def run_until(reactor, done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        reactor.iterate(0.01)
    return True
