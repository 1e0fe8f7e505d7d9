"""``sshgateway recordings`` against the real asciicast implementation (Debian's asciinema):
files made by ``asciinema rec`` read right, what ``play`` writes is what ``asciinema cat``
writes, ``asciinema play`` replays what ``export`` writes (a crash's cut-off file
included, which asciinema itself refuses), and ``play`` in a real terminal (tmux) shows
the session and stops cleanly on Ctrl-C."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.support.casts import after_a_moment, assert_ended_with, header, run, write_cast
from tests.support.peers import require_peer
from tests.support.terminal import TmuxTerminal

pytestmark = pytest.mark.peer

SSHGATEWAY = str(Path(sys.executable).parent / "sshgateway")
SCRIPT = (
    "printf 'first line\\n'; sleep 0.2; printf 'on stderr\\n' >&2; sleep 0.3; "
    "printf '\\033[1mbold\\033[0m caf\\303\\251 \\342\\226\\210\\n'; sleep 0.2; printf last"
)


def asciinema_rec(path: Path, command: str, *extra: str) -> Path:
    tools = require_peer("asciinema")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [tools["asciinema"], "rec", "-q", "--cols", "90", "--rows", "20", *extra, "-c", command,
         str(path)],
        stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=60,
    )
    return path


def asciinema_cat(path: Path) -> subprocess.CompletedProcess[bytes]:
    """``asciinema cat PATH``: its stdout as a pipe, exactly, while it has the terminal it
    insists on opening (/dev/tty) on a pty of its own."""
    tools = require_peer("asciinema")
    controller, terminal = os.openpty()

    def take_the_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        return subprocess.run(
            [tools["asciinema"], "cat", str(path)], stdin=terminal, capture_output=True,
            start_new_session=True, preexec_fn=take_the_terminal, timeout=60,
        )
    finally:
        os.close(controller)
        os.close(terminal)


def test_a_file_asciinema_rec_made_lists_and_shows(tmp_path):
    path = asciinema_rec(tmp_path / "recordings" / "rec-1.cast", SCRIPT, "-t", "a demo",
                         "-i", "2.5")
    recorded = path.read_text().splitlines()
    last_time = json.loads(recorded[-1])[0]
    status, out, err = run("list", "--state-dir", str(tmp_path), "--format", "json")
    assert status == 0 and err == ""
    (item,) = json.loads(out)["recordings"]
    assert item["id"] == "rec-1" and item["width"] == 90 and item["height"] == 20
    assert item["title"] == "a demo" and item["truncated"] is False
    assert item["duration"] == round(last_time, 3) and item["duration"] >= 0.6
    status, out, err = run("show", "--state-dir", str(tmp_path), "rec-1")
    assert status == 0 and err == ""
    assert "title      a demo" in out and "terminal   90x20" in out
    assert f"events     {len(recorded) - 1} 'o'" in out
    assert "input not recorded" in out


def test_play_writes_what_asciinema_cat_writes(tmp_path):
    path = asciinema_rec(tmp_path / "rec.cast", SCRIPT)
    cat = asciinema_cat(path)
    assert cat.returncode == 0 and b"first line" in cat.stdout
    played = subprocess.run([SSHGATEWAY, "recordings", "play", "--speed", "50", str(path)],
                            capture_output=True, timeout=60)
    assert played.returncode == 0 and played.stderr == b""
    assert played.stdout == cat.stdout


def test_input_events_of_asciinema_rec_stdin_are_counted_not_played(tmp_path):
    # asciinema records input only from a terminal: run it in tmux and type.
    require_peer("asciinema")
    path = tmp_path / "typed.cast"
    with TmuxTerminal(["asciinema", "rec", "-q", "--stdin", "-c",
                       "printf 'ready> '; read -r line; echo got=$line", str(path)]) as terminal:
        assert terminal.wait_for("ready>"), terminal.screen()
        terminal.type("hello")
        assert_ended_with(terminal, 0)
    status, out, _ = run("show", str(path), "--format", "json")
    shown = json.loads(out)
    assert status == 0 and shown["events"]["i"] >= 1 and shown["input_chars"] >= 6
    played = subprocess.run([SSHGATEWAY, "recordings", "play", "--speed", "50", str(path)],
                            capture_output=True, timeout=60)
    assert played.stdout == asciinema_cat(path).stdout  # input is not replayed


def crash_cut_recording(directory: Path) -> Path:
    """A gateway-style recording (unknown header keys, stderr and marker events) whose
    last line was cut off by a crash."""
    return write_cast(
        directory / "recordings" / "s-crash.cast",
        header(width=70, height=12, title="alice -> dev1", x_future={"k": [1]}),
        [[0.1, "o", "\x1b[1mrecorded\x1b[0m screen\r\n"], [0.3, "r", "100x30"],
         [0.4, "m", "stderr"], [0.4, "o", "an error line\r\n"], [0.5, "m", "a mark"],
         [0.55, "x", [1, 2]], [0.6, "o", "the end\r\n"]],
        tail='[0.9, "o", "half a li',
    )


def test_asciinema_plays_what_export_writes_from_a_crash_cut_file(tmp_path):
    source = crash_cut_recording(tmp_path)
    assert asciinema_cat(source).returncode != 0  # asciinema itself fails on the cut line
    exported = tmp_path / "exported.cast"
    status, _, err = run("export", "--state-dir", str(tmp_path), "s-crash", "-o", str(exported))
    assert status == 0 and "the last line is cut off" in err
    cat = asciinema_cat(exported)
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == b"\x1b[1mrecorded\x1b[0m screen\r\nan error line\r\nthe end\r\n"
    tools = require_peer("asciinema")
    with TmuxTerminal(after_a_moment([tools["asciinema"], "play", str(exported)]), width=70,
                      height=12) as terminal:
        assert_ended_with(terminal, 0)
        text = terminal.all_lines()
    assert "recorded screen" in text and "an error line" in text and "the end" in text
    assert "half a li" not in text


def test_play_in_a_terminal_shows_the_session(tmp_path):
    crash_cut_recording(tmp_path)
    argv = [SSHGATEWAY, "recordings", "play", "--state-dir", str(tmp_path), "s-crash"]
    with TmuxTerminal(after_a_moment(argv), width=70, height=12) as terminal:
        assert_ended_with(terminal, 0)
        text = terminal.all_lines()
    assert "recorded screen" in text and "an error line" in text and "the end" in text
    assert "Traceback" not in text


def test_ctrl_c_stops_play_in_a_terminal(tmp_path):
    long_pause = write_cast(tmp_path / "long.cast", header(),
                            [[0.1, "o", "\x1b[31mbefore the pause\r\n"],
                             [600.0, "o", "after the pause\r\n"]])
    with TmuxTerminal([SSHGATEWAY, "recordings", "play", str(long_pause)]) as terminal:
        assert terminal.wait_for("before the pause"), terminal.screen()
        terminal.keys("typed while playing")
        terminal.keys("C-c")
        assert_ended_with(terminal, 130)
        text = terminal.all_lines()
    assert "sshgateway recordings: stopped" in text
    assert "Traceback" not in text and "after the pause" not in text
    assert "typed while playing" not in text  # not echoed over the replay
