"""Hand-made asciicast v2 files for the recordings commands' tests, and running
``sshgateway recordings`` in this process."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

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


def after_a_moment(argv: list[str]) -> list[str]:
    """``argv``, started half a second late: a program that ends at once may otherwise
    write before tmux has set its window up, and its first lines never show."""
    return ["sh", "-c", 'sleep 0.5; exec "$@"', "sh", *argv]


def assert_ended_with(terminal: Any, status: int) -> None:
    """The program in ``terminal`` (a tests.support.terminal.TmuxTerminal) ended, with
    ``status`` if tmux tells it: the pane can be dead while its status stays empty."""
    assert wait_for(terminal.program_ended, 30), terminal.all_lines()
    wait_for(lambda: terminal.exit_status() is not None, 3)
    assert terminal.exit_status() in (status, None), (terminal.exit_status(), terminal.all_lines())
