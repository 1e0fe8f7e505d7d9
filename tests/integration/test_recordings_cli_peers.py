"""``sshgateway recordings`` on what a real gateway recorded (issue 13): sessions of both
fronts (OpenSSH ``ssh``, with and without a terminal, a window change included, and
``plink -1 -t``) are listed with their user, target, command and no truncation; ``show``
summarizes each (the marked stderr, the window change); ``export`` writes a file that
Debian's ``asciinema`` replays, byte for byte what ``play`` writes; ``play`` in a real
terminal (tmux) shows the session."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.casts import after_a_moment, assert_ended_with, run
from tests.support.clients import keyed_config, plink1_argv, ssh_argv
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tests.support.terminal import TmuxTerminal, wait_for

pytestmark = pytest.mark.peer

SSHGATEWAY = str(Path(sys.executable).parent / "sshgateway")
TTY_COMMAND = "printf 'hello from the device\\n'; sleep 0.2; printf 'second line\\n'"
STDERR_COMMAND = "echo out-line; echo err-line >&2; exit 3"
RESIZE_COMMAND = "trap 'stty size' WINCH; stty size; for i in $(seq 40); do sleep 0.1; done"


def listed(gw: GatewayProcess) -> list[dict]:
    status, out, err = run("list", "--state-dir", gw.config["state_dir"], "--format", "json")
    assert status == 0, err
    return json.loads(out)["recordings"]


def wait_for_recordings(gw: GatewayProcess, count: int) -> list[dict]:
    """The recordings, once there are ``count`` and none has grown for 1.5 s (the recorder
    writes the end of a session within a second)."""
    assert wait_for(lambda: len(listed(gw)) >= count), listed(gw)
    sizes = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = [(r["id"], r["size"]) for r in listed(gw)]
        if now == sizes:
            break
        sizes = now
        time.sleep(1.5)
    return listed(gw)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A gateway that recorded four sessions; yields it and its recordings by kind."""
    work = tmp_path_factory.mktemp("recordings-cli")
    config, key = keyed_config(work)
    with GatewayProcess(work, config) as gw:
        done = subprocess.run(ssh_argv(gw, key, "-tt", TTY_COMMAND), capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 0 and b"hello from the device" in done.stdout
        done = subprocess.run(ssh_argv(gw, key, STDERR_COMMAND), capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 3 and done.stderr == b"err-line\n"
        done = subprocess.run(plink1_argv(gw, "-t", "echo from-plink"), capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 0 and b"from-plink" in done.stdout
        # A terminal session whose window changes while it runs.
        with TmuxTerminal(ssh_argv(gw, key, "-tt", RESIZE_COMMAND)) as terminal:
            assert terminal.wait_for("24 80"), terminal.screen()
            time.sleep(0.5)
            terminal.resize(100, 30)
            assert terminal.wait_for("30 100"), terminal.screen()
            assert wait_for(terminal.program_ended, 30), terminal.screen()
        items = wait_for_recordings(gw, 4)
        by_command = {item["command"]: item for item in items}
        yield gw, by_command


def test_list_names_every_session_with_user_target_and_command(recorded):
    gw, by_command = recorded
    assert set(by_command) == {TTY_COMMAND, STDERR_COMMAND, "echo from-plink", RESIZE_COMMAND}
    for item in by_command.values():
        assert item["user"] == "alice" and item["target"] == "local"
        assert item["truncated"] is False and item["size"] > 100
        assert item["id"].startswith("f-") and item["file"].endswith(item["id"] + ".cast")
    assert by_command[TTY_COMMAND]["duration"] >= 0.2
    assert by_command[RESIZE_COMMAND]["duration"] >= 0.5  # "30 100" came after the resize
    status, out, _ = run("list", "--state-dir", gw.config["state_dir"])
    rows = out.splitlines()[1:]
    assert len(rows) == 4
    assert all(row.split()[3:5] == ["alice", "local"] for row in rows), out
    assert any(row.endswith("exec: echo from-plink") for row in rows), out


def test_show_summarizes_the_stderr_and_the_window_change(recorded):
    gw, by_command = recorded
    state = gw.config["state_dir"]
    status, out, err = run("show", "--state-dir", state, by_command[STDERR_COMMAND]["id"])
    assert status == 0 and err == ""
    assert f"session    exec: {STDERR_COMMAND}" in out
    assert "output     18 characters (9 on stderr); input not recorded" in out
    # An ID shortened to the connection's flow id (one session on the connection).
    flow_id = by_command[RESIZE_COMMAND]["id"].split(".")[0]
    status, out, err = run("show", "--state-dir", state, flow_id, "--format", "json")
    shown = json.loads(out)
    assert status == 0 and shown["window_changes"] == ["100x30"], out
    assert shown["header"]["width"] == 80 and shown["header"]["height"] == 24


def test_asciinema_replays_the_export_as_play_writes_it(recorded, tmp_path):
    gw, by_command = recorded
    tools = require_peer("asciinema")
    exported = tmp_path / "tty.cast"
    status, _, err = run("export", "--state-dir", gw.config["state_dir"],
                         by_command[TTY_COMMAND]["id"], "-o", str(exported))
    assert status == 0 and err == ""
    original = Path(by_command[TTY_COMMAND]["file"]).read_bytes()
    assert exported.read_bytes() == original  # a whole recording is exported as it is
    played = subprocess.run([SSHGATEWAY, "recordings", "play", "--speed", "100",
                             str(exported)], capture_output=True, timeout=60)
    assert played.returncode == 0 and b"hello from the device\r\nsecond line\r\n" in played.stdout
    with TmuxTerminal(after_a_moment([tools["asciinema"], "play", str(exported)])) as terminal:
        assert_ended_with(terminal, 0)
        screen = terminal.all_lines()
    assert "hello from the device" in screen and "second line" in screen


def test_play_in_a_terminal_shows_the_session(recorded):
    gw, by_command = recorded
    argv = [SSHGATEWAY, "recordings", "play", "--state-dir", gw.config["state_dir"],
            by_command["echo from-plink"]["id"]]
    with TmuxTerminal(after_a_moment(argv)) as terminal:
        assert_ended_with(terminal, 0)
        screen = terminal.all_lines()
    assert "from-plink" in screen and "Traceback" not in screen
