"""Drive a real client in a real terminal (tmux) and watch a window change arrive."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

from tests.support.peers import require_peer


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def size_report_script(marker: Path) -> str:
    """A remote shell script that writes `stty size` now and on every SIGWINCH."""
    return (
        f"trap 'stty size > {marker}.new; mv {marker}.new {marker}' WINCH; "
        f"stty size > {marker}.new; mv {marker}.new {marker}; "
        "for i in $(seq 300); do sleep 0.1; done"
    )


def assert_window_change_reaches(argv: list[str], marker: Path) -> None:
    """Run ``argv`` (a client whose remote command is size_report_script(marker)) in an
    80x24 tmux window, resize it to 100x30 and wait for the program to see both sizes."""
    tools = require_peer("tmux")
    session = f"sshgw{os.getpid()}{time.monotonic_ns() % 100000}"
    subprocess.run(
        [tools["tmux"], "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
         shlex.join(argv)],
        check=True, timeout=30,
    )
    try:
        assert wait_for(lambda: marker.exists() and marker.read_text().strip() == "24 80")
        subprocess.run(
            [tools["tmux"], "resize-window", "-t", session, "-x", "100", "-y", "30"],
            check=True, timeout=30,
        )
        assert wait_for(lambda: marker.exists() and marker.read_text().strip() == "30 100")
    finally:
        subprocess.run([tools["tmux"], "kill-session", "-t", session], timeout=30,
                       capture_output=True)


class TmuxTerminal:
    """A program in a detached tmux session of a given size: type into it, resize it, read
    its screen. Use as a context manager (the session is killed on exit). Each one has a
    tmux server of its own (``-L``): tests running at the same time never share one (a
    server exits with its last session, under a client still connecting to it)."""

    def __init__(self, argv: list[str], width: int = 80, height: int = 24) -> None:
        self.tmux = require_peer("tmux")["tmux"]
        self.name = f"sshgw{os.getpid()}-{time.monotonic_ns()}"
        self.argv = argv
        self.width, self.height = width, height

    def __enter__(self) -> TmuxTerminal:
        self._tmux("new-session", "-d", "-s", self.name, "-x", str(self.width),
                   "-y", str(self.height), shlex.join(self.argv))  # fmt: skip
        # Keep the window (and its last screen) when the program ends.
        self._tmux("set-option", "-t", self.name, "remain-on-exit", "on")
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([self.tmux, "-L", self.name, "kill-server"], timeout=30,
                       capture_output=True)  # fmt: skip

    def _tmux(self, *args: str) -> str:
        result = subprocess.run([self.tmux, "-L", self.name, "-f", "/dev/null", *args],
                                timeout=30, capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, f"tmux {shlex.join(args)}: {result.stderr}"
        return result.stdout

    def type(self, text: str) -> None:
        """Type ``text`` and Enter."""
        self._tmux("send-keys", "-t", self.name, "-l", text)
        self._tmux("send-keys", "-t", self.name, "Enter")

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", self.name, "-x", str(width), "-y", str(height))

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name)

    def wait_for(self, text: str, timeout: float = 20.0) -> bool:
        return wait_for(lambda: text in self.screen(), timeout)

    def program_ended(self) -> bool:
        return self._tmux("display-message", "-p", "-t", self.name, "#{pane_dead}").strip() == "1"
