"""Hand-made asciicast v2 files for the recordings commands' tests, running
``sshgateway recordings`` in this process, and watching a player's screen in tmux."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.peers import require_peer
from tests.support.terminal import wait_for
from tools import cli


def header(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"version": 2, "width": 80, "height": 24, "timestamp": 1796310000}
    base.update(fields)
    return base


def write_cast(
    path: Path, head: dict[str, Any], events: list[list[Any]], tail: str = ""
) -> Path:
    """A .cast file: the header, one line per event, then ``tail`` as it is (e.g. the
    cut-off last line of a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(head)] + [json.dumps(e) for e in events]
    path.write_text("\n".join(lines) + "\n" + tail, encoding="utf-8")
    return path


def shell_session(path: Path, **fields: Any) -> Path:
    """alice's shell on dev1 as the gateway's recorder writes it: a prompt, a command typed
    and its output, a window change, stderr (marked), and the exit."""
    head = header(title="alice -> dev1", env={"TERM": "xterm"}, **fields)
    return write_cast(path, head, [
        [0.05, "o", "dev1$ "],
        [1.2, "i", "ls\r"],
        [1.21, "o", "ls\r\nREADME  notes.txt\r\n"],
        [2.0, "r", "100x30"],
        [2.5, "m", "stderr"],
        [2.5, "o", "ls: cannot open x\r\n"],
        [3.0, "o", "dev1$ exit\r\n"],
    ])


def run(*argv: str) -> tuple[int, str, str]:
    """``sshgateway recordings ARGV...`` in this process: its status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(["recordings", *argv], stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


class Screen:
    """A command running in a detached tmux window of a fixed size, whose screen can be
    read as text."""

    def __init__(self, argv: list[str], width: int = 80, height: int = 24) -> None:
        self.tmux = require_peer("tmux")["tmux"]
        self.name = f"sshgwrec{os.getpid()}{time.monotonic_ns() % 1000000}"
        # remain-on-exit keeps the window (and its last screen) after the command ends.
        subprocess.run(
            [self.tmux, "new-session", "-d", "-s", self.name, "-x", str(width), "-y",
             str(height), "sleep 0.3; " + shlex.join(argv) + "; echo EXIT=$?; sleep 60"],
            check=True, timeout=30,
        )

    def text(self) -> str:
        done = subprocess.run(
            [self.tmux, "capture-pane", "-p", "-t", self.name],
            capture_output=True, text=True, timeout=30,
        )
        return done.stdout

    def wait_for_text(self, wanted: str, timeout: float = 20.0) -> str:
        if not wait_for(lambda: wanted in self.text(), timeout):
            raise AssertionError(f"{wanted!r} never shown; the screen:\n{self.text()}")
        return self.text()

    def keys(self, *keys: str) -> None:
        subprocess.run([self.tmux, "send-keys", "-t", self.name, *keys], check=True, timeout=30)

    def close(self) -> None:
        subprocess.run([self.tmux, "kill-session", "-t", self.name], capture_output=True,
                       timeout=30)

    def __enter__(self) -> Screen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
