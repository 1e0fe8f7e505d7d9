"""Real gateway processes started the way an operator starts them, for the operations
tests: with extra ``twistd sshgateway`` options (``--log-format json``), under systemd's
``systemd-socket-activate``, or run once to see how start-up fails.

:class:`tests.support.gateway_process.GatewayProcess` does the rest (reading the log,
stopping the process group, checking for tracebacks).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.gateway_process import REPO, TWISTD, GatewayProcess, render_toml
from tests.support.peers import require_peer

# Puts the socket (fd argv[1]) on fd 3 and execs argv[2:] with LISTEN_FDS=1 and its own
# pid (which exec keeps) as LISTEN_PID: how systemd hands a socket to a program.
_HAND_OVER = (
    "import os, sys; fd = int(sys.argv[1]); "
    "fd != 3 and (os.dup2(fd, 3), os.close(fd)); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)
_ACTIVATOR_READY = re.compile(r"Listening on [^ ]+:(\d+) as 3\.")


def gateway_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        env.pop(name, None)
    return env


def twistd_argv(config_path: Path, *plugin_args: str) -> list[str]:
    """``twistd -n sshgateway --config FILE ...`` from this checkout, logging to stdout."""
    return [
        sys.executable, *TWISTD, "-n", "--pidfile=", "--logfile=-", "sshgateway",
        "--config", str(config_path), *plugin_args,
    ]  # fmt: skip


def run_once(
    workdir: Path, config: dict, *plugin_args: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Start a gateway that is expected not to start; its exit status and output."""
    config = dict(config)
    config.setdefault("state_dir", str(workdir / "state"))
    path = workdir / "gateway.toml"
    path.write_text(render_toml(config))
    return subprocess.run(
        [*prefix, *twistd_argv(path, *plugin_args)],
        cwd=workdir, env=gateway_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


class OptionsGateway(GatewayProcess):
    """A GatewayProcess with options after ``twistd sshgateway`` (e.g. ``--log-format``)."""

    def __init__(self, workdir: Path, config: dict, *plugin_args: str) -> None:
        super().__init__(workdir, config)
        self.plugin_args = plugin_args
        self.extra_env: dict[str, str] = {}  # e.g. NOTIFY_SOCKET, which gateway_env drops

    def argv(self) -> list[str]:
        return twistd_argv(self.config_path, *self.plugin_args)

    def start(self, timeout: float = 60.0) -> OptionsGateway:
        self.config_path.write_text(render_toml(self.config))
        self.process = subprocess.Popen(
            self.argv(), cwd=self.workdir, env={**gateway_env(), **self.extra_env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, **self.popen_extra(),
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        if not self.wait_started(timeout):
            self.stop()
            raise RuntimeError("gateway did not start:\n" + self.log_text())
        return self

    def popen_extra(self) -> dict:
        return {}

    def wait_started(self, timeout: float) -> bool:
        return self._ready.wait(timeout) and self.port is not None


class SocketActivatedGateway(OptionsGateway):
    """The gateway under ``systemd-socket-activate``, on a listening socket the test bound
    (port 0: no fixed port, no race between choosing a port and binding it).

    systemd-socket-activate passes on the sockets it was itself given (LISTEN_FDS, as
    systemd gives them to it): it takes ours as fd 3, waits for the first connection, then
    execs the gateway with LISTEN_FDS=1, LISTEN_PID and, with ``fdname``,
    LISTEN_FDNAMES, exactly as systemd starts a socket-activated service. Until that first
    connection there is no gateway process: :meth:`start` returns once the activator
    listens, with ``port`` the socket's."""

    def __init__(self, workdir: Path, config: dict, fdname: str | None = None) -> None:
        super().__init__(workdir, config)
        self.fdname = fdname
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.inode = os.fstat(self.listener.fileno()).st_ino

    def argv(self) -> list[str]:
        activator = require_peer("systemd-socket-activate")["systemd-socket-activate"]
        fd = self.listener.fileno()
        names = [f"--fdname={self.fdname}"] if self.fdname else []
        # The activator gives the program a fresh environment: pass ours on by name.
        names += [f"--setenv={name}" for name in self.extra_env]
        return [sys.executable, "-c", _HAND_OVER, str(fd), activator, *names, *super().argv()]

    def popen_extra(self) -> dict:
        return {"pass_fds": (self.listener.fileno(),)}

    def wait_started(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.output):
                found = _ACTIVATOR_READY.search(line)
                if found:
                    assert int(found.group(1)) == self.listener.getsockname()[1], line
                    self.port = int(found.group(1))
                    self.listener.close()  # the activator holds it now
                    return True
            if self.process is not None and self.process.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        super().stop()
        self.listener.close()
