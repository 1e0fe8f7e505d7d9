"""A real dropbear server for tests (Debian's ``dropbear-bin``): a device with only the keys
and algorithms given, on a free loopback port, logging in as root.

dropbear has no option for its authorized_keys file: it reads ``~/.ssh/authorized_keys``
of the account. To leave the real /root alone, dropbear runs in a private mount namespace
(``unshare -m``) where a throwaway directory is bind-mounted over /root; nothing outside
that namespace sees it. Its algorithm lists are fixed at build time (2022.83 here: kex
curve25519, ecdh, group14-sha256/sha1; host keys ssh-dss, ssh-rsa, rsa-sha2-256;
chacha20-poly1305, aes-ctr; hmac-sha1, hmac-sha2-256); the client side picks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.peers import require_peer
from tests.support.sshd import free_port, start_listening, stop_process_group


class DropbearServer:
    """``with DropbearServer(workdir, [user_pub, ...], ("dss",)) as db:`` -> ``db.port``."""

    def __init__(
        self, workdir: Path, authorized: list[Path], host_key_types: tuple[str, ...] = ("dss",)
    ) -> None:
        tools = require_peer("dropbear", "dropbearkey", "unshare")
        self.dropbear, self.unshare = tools["dropbear"], tools["unshare"]
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.host_keys = []
        for kind in host_key_types:
            path = workdir / f"host_{kind}"
            subprocess.run(
                [tools["dropbearkey"], "-t", kind, "-f", str(path)],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            self.host_keys.append(path)
        self.home = workdir / "home"
        (self.home / ".ssh").mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        (self.home / ".ssh").chmod(0o700)
        keys = self.home / ".ssh" / "authorized_keys"
        keys.write_text("".join(Path(str(p)).read_text() for p in authorized))
        keys.chmod(0o600)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.port = free_port()
        argv = [self.dropbear, "-F", "-E", "-s", "-p", f"127.0.0.1:{self.port}"]
        argv += [arg for key in self.host_keys for arg in ("-r", str(key))]
        argv += ["-P", str(self.workdir / "dropbear.pid")]
        mounts = f'mount --bind "{self.home}" /root'
        self.proc = start_listening(
            [self.unshare, "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", *argv],
            self.port,
            self.workdir / "dropbear.log",
            "dropbear",
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process_group(proc)

    def __enter__(self) -> DropbearServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
