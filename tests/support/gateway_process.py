"""A real gateway in a subprocess (``twistd -n sshgateway --config …``) for real-peer tests.

Listens on port 0 and learns the port from the gateway's "listening on" log line, so
tests never collide on fixed ports. Every wait is bounded.
"""

from __future__ import annotations

import os
import pwd
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"sshgateway listening on tcp:([0-9.]+):(\d+)")

TWISTD = ["-c", "from twisted.scripts.twistd import run; run()"]


def local_access() -> dict:
    """The ``[users.NAME]`` keys that let a user reach ``local``, as the OS account running
    the tests (nothing is granted by default)."""
    return {"targets": ["local"], "os_user": pwd.getpwuid(os.geteuid()).pw_name}


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def render_toml(config: dict) -> str:
    """Enough TOML for test configs: scalars and lists at the top, then tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict]] = []

    def walk(prefix: str, table: dict) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                tables.append((f"{prefix}{key}", value))
            else:
                lines.append(f"{key} = {toml_value(value)}")

    walk("", config)
    while tables:
        name, table = tables.pop(0)
        lines.append(f"\n[{name}]")
        nested: list[tuple[str, dict]] = []
        for key, value in table.items():
            if isinstance(value, dict):
                nested.append((f"{name}.{key}", value))
            else:
                lines.append(f"{key} = {toml_value(value)}")
        tables[0:0] = nested
    return "\n".join(lines) + "\n"


class GatewayProcess:
    def __init__(
        self,
        workdir: Path,
        config: dict,
        nofile: int | None = None,
        twistd_args: tuple[str, ...] = (),
        prelude: str = "",
    ) -> None:
        self.workdir = workdir
        # Python statements run in the gateway's process before twistd starts (a test
        # device that stands in different keys); empty for the gateway as it is.
        self.prelude = prelude
        self.nofile = nofile  # the gateway's file descriptor limit (soft and hard), if set
        self.twistd_args = tuple(twistd_args)  # before the plugin name (--uid, --gid)
        self.config = dict(config)
        self.config.setdefault("listen", ["tcp:0:interface=127.0.0.1"])
        self.config.setdefault("state_dir", str(workdir / "state"))
        # stop() sends SIGTERM: sessions still open get this long before the gateway exits.
        self.config.setdefault("shutdown_grace", 3)
        self.config_path = workdir / "gateway.toml"
        self.output: list[str] = []
        self.port: int | None = None
        self.process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        self.config_path.write_text(render_toml(self.config))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"{self.prelude}\n{TWISTD[1]}", "-n", "--pidfile=",
             "--logfile=-", *self.twistd_args,
             "sshgateway",
             "--config", str(self.config_path)],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=self._limit_files if self.nofile is not None else None,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError("gateway did not start:\n" + self.log_text())
        return self

    def _limit_files(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            match = _LISTENING.search(line)
            if match and self.port is None:
                self.port = int(match.group(2))
                self._ready.set()
        self._ready.set()

    def log_text(self) -> str:
        return "".join(self.output)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.output):
                found = regex.search(line)
                if found:
                    return found
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n{self.log_text()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is None:
            self.assert_no_traceback()

    def assert_no_traceback(self) -> None:
        """Whatever the peers did, the gateway must have handled it: a traceback in its
        log is an unhandled error (hostile input ends in a logged reason, never this)."""
        text = self.log_text()
        for marker in ("Traceback (most recent call last)", "Unhandled Error"):
            if marker in text:
                start = text.index(marker)
                raise AssertionError(f"the gateway logged an error:\n{text[max(0, start - 2000):start + 3000]}")
