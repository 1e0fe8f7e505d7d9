"""Issue 13, session recording, end to end with real peers:

- an interactive ``ssh -tt alice+dev1@gw`` (an SSH-1 device: the gateway's own SSH-1
  server in a second process) and ``plink -1 -t alice+host2@gw`` (a real sshd device) in a
  real terminal (tmux) each leave an asciicast v2 file with the window change in it, and
  ``asciinema play`` (Debian's) replays it: its screen shows the session's output;
- with a read-only recordings directory and a full one (a 64 KiB tmpfs), sessions of both
  fronts still work and the log carries the ``recording_truncated`` event.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.clients import (
    PASSWORD,
    base_config,
    hash_password,
    plink1_argv,
    ssh1_fingerprint,
    ssh2_device,
    ssh_argv,
)
from tests.support.gateway_process import GatewayProcess, local_access
from tests.support.peers import require_peer
from tests.support.terminal import TmuxTerminal, wait_for

pytestmark = pytest.mark.peer

DEVICE_PASSWORD = "device secret 42"


@pytest.fixture(scope="module")
def gw(tmp_path_factory, authorized_keys):
    """A gateway in front of dev1 (an SSH-1 device) and host2 (an sshd), recording."""
    work = tmp_path_factory.mktemp("recording")
    device_config = {
        "protocols": ["1"],
        "users": {"admin": {"password": hash_password(DEVICE_PASSWORD), **local_access()}},
        "ssh1": {"ciphers": ["blowfish", "3des"]},
        "auth": {"failure_delay": 0.2},
    }
    (work / "dev1").mkdir()
    with (
        GatewayProcess(work / "dev1", device_config) as dev1,
        ssh2_device(work) as (_, host2),
    ):
        dev1_target = {
            "protocol": "ssh1", "host": "127.0.0.1", "port": dev1.port, "username": "admin",
            "password": DEVICE_PASSWORD, "ciphers": ["blowfish", "3des"],
        }  # fmt: skip
        config = base_config(hash_password(), authorized_keys,
                             targets={"dev1": dev1_target, "host2": host2})  # fmt: skip
        config["users"]["alice"]["targets"] = ["local", "dev1", "host2"]
        config["ssh1"] = {"ciphers": ["blowfish", "3des"]}
        (work / "gw").mkdir()
        with GatewayProcess(work / "gw", config) as process:
            process.fingerprint = ssh1_fingerprint(process)
            yield process


def recordings(gw: GatewayProcess) -> Path:
    return Path(gw.config["state_dir"]) / "recordings"


def read_cast(path: Path) -> tuple[dict, list[list]]:
    lines = path.read_bytes().decode("utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def new_cast(gw: GatewayProcess, before: set[Path], title: str) -> Path:
    """The recording that appeared since ``before`` with ``title``, once it is complete
    (the session's end is written within a second)."""
    found: list[Path] = []

    def appeared() -> bool:
        found[:] = [
            p for p in set(recordings(gw).glob("*.cast")) - before
            if read_cast(p)[0].get("title") == title
        ]  # fmt: skip
        return len(found) == 1

    assert wait_for(appeared), (title, gw.log_text()[-3000:])
    return found[0]


def interactive_session(gw: GatewayProcess, argv: list[str], title: str) -> Path:
    """Run ``argv`` (a client opening a shell with a pty) in an 80x24 terminal: a command
    whose output is recognisable, a window change to 100x30 (checked from inside with
    ``stty size``), ``exit``. Returns the session's recording."""
    before = set(recordings(gw).glob("*.cast"))
    with TmuxTerminal(argv, 80, 24) as term:
        term.type("echo REC_$((6*7))_DONE")
        assert term.wait_for("REC_42_DONE"), term.screen() + gw.log_text()[-3000:]
        term.resize(100, 30)
        term.type("stty size")
        assert term.wait_for("30 100"), term.screen()
        term.type("exit")
        assert wait_for(term.program_ended), term.screen()
    return new_cast(gw, before, title)


def played(path: Path) -> str:
    """What ``asciinema play`` writes for ``path`` with no terminal (it then just plays)."""
    asciinema = require_peer("asciinema")["asciinema"]
    result = subprocess.run(
        [asciinema, "play", "-i", "0.1", str(path)],
        capture_output=True, text=True, timeout=60, start_new_session=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_recorded_and_replayed(path: Path) -> None:
    header, events = read_cast(path)
    assert header["version"] == 2 and (header["width"], header["height"]) == (80, 24)
    assert header["env"]["TERM"]  # tmux's terminal type, as the client sent it
    assert "command" not in header
    assert [e for e in events if e[1:] == ["r", "100x30"]], events
    output = "".join(e[2] for e in events if e[1] == "o")
    assert "REC_42_DONE" in output and "30 100" in output
    times = [e[0] for e in events]
    assert times == sorted(times)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    # Debian's asciinema replays it: the screen shows what the session showed.
    asciinema = require_peer("asciinema")["asciinema"]
    player = ["sh", "-c", f"{asciinema} play -i 0.2 {path}; echo PLAYER_EXIT=$?; sleep 60"]
    with TmuxTerminal(player, 100, 30) as term:
        assert term.wait_for("PLAYER_EXIT=0", 60), term.screen()
        screen = term.screen()
    assert "REC_42_DONE" in screen and "30 100" in screen, screen


def test_openssh_tty_session_to_an_ssh1_device_is_recorded_and_replays(gw, client_keys):
    argv = ssh_argv(gw, client_keys["ed25519"], "-tt", user="alice+dev1")
    path = interactive_session(gw, argv, "alice -> dev1")
    assert_recorded_and_replayed(path)
    # input is off: what was typed reached the file only as the device's echo (output)
    assert not [e for e in read_cast(path)[1] if e[1] == "i"]


def test_plink1_tty_session_to_an_sshd_device_is_recorded_and_replays(gw):
    plink = require_peer("plink")["plink"]
    argv = [plink, "-1", "-batch", "-hostkey", gw.fingerprint, "-P", str(gw.port),
            "-pw", PASSWORD, "-t", "alice+host2@127.0.0.1"]  # fmt: skip
    path = interactive_session(gw, argv, "alice -> host2")
    assert_recorded_and_replayed(path)


def test_exec_sessions_of_both_fronts_have_the_command_and_marked_stderr(gw, client_keys):
    before = set(recordings(gw).glob("*.cast"))
    command = "echo out; echo err >&2; exit 3"
    result = subprocess.run(
        ssh_argv(gw, client_keys["ed25519"], command, user="alice+host2"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (3, "out\n"), result.stderr
    header, events = read_cast(new_cast(gw, before, f"alice -> host2: {command}"))
    assert header["command"] == command
    assert [e[1:] for e in events] == [["o", "out\n"], ["m", "stderr"], ["o", "err\n"]]
    assert played(new_cast(gw, before, f"alice -> host2: {command}")) == "out\nerr\n"
    before = set(recordings(gw).glob("*.cast"))
    result = subprocess.run(
        plink1_argv(gw, "echo via-ssh1", user="alice+dev1", fingerprint=gw.fingerprint),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout == "via-ssh1\n", result.stderr
    header, events = read_cast(new_cast(gw, before, "alice -> dev1: echo via-ssh1"))
    assert header["command"] == "echo via-ssh1" and ["o", "via-ssh1\n"] in [e[1:] for e in events]


# --- a recordings directory that is read-only or full ---------------------------------------


class Tmpfs:
    """A small tmpfs mounted for the test (root only), unmounted afterwards."""

    def __init__(self, where: Path, options: str) -> None:
        self.where = where
        self.options = options

    def __enter__(self) -> Path:
        if os.geteuid() != 0:
            pytest.fail("mounting a tmpfs needs root (the recording acceptance tests do)")
        self.where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", self.options, "tmpfs", str(self.where)],
                       check=True, timeout=30)  # fmt: skip
        return self.where

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.where)], timeout=30, check=False)


def small_disk_gateway(work: Path, authorized_keys: Path, directory: Path) -> GatewayProcess:
    config = base_config(hash_password(), authorized_keys)
    config["recording"] = {"dir": str(directory)}
    config["ssh1"] = {"ciphers": ["blowfish", "3des"]}
    return GatewayProcess(work, config)


def sessions_still_work(gw: GatewayProcess, key: Path, command: str) -> bytes:
    """Run ``command`` on local through both fronts; returns what the SSH-2 one printed."""
    result = subprocess.run(ssh_argv(gw, key, command), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ssh1 = subprocess.run(plink1_argv(gw, command), capture_output=True, timeout=60)
    assert ssh1.returncode == 0 and ssh1.stdout == result.stdout, ssh1.stderr
    return result.stdout


def test_a_read_only_recordings_dir_leaves_sessions_working_and_says_so(
    tmp_path, authorized_keys, client_keys
):
    with Tmpfs(tmp_path / "ro", "ro,size=64k") as directory:
        with small_disk_gateway(tmp_path, authorized_keys, directory) as gw:
            out = sessions_still_work(gw, client_keys["ed25519"], "echo still here")
            assert out == b"still here\n"
            assert wait_for(lambda: gw.log_text().count("truncated: cannot create") >= 2), (
                gw.log_text()[-3000:]
            )
            assert "Read-only file system" in gw.log_text()
        assert list(directory.iterdir()) == []


def test_a_full_recordings_disk_leaves_sessions_working_and_says_so(
    tmp_path, authorized_keys, client_keys
):
    with Tmpfs(tmp_path / "full", "size=64k") as directory:
        # Leave a few pages: the start of the session fits, the rest does not.
        filler = directory / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        os.truncate(filler, filler.stat().st_size - 3 * 4096)
        with small_disk_gateway(tmp_path, authorized_keys, directory) as gw:
            command = "echo first; sleep 1.5; seq 1 50000"
            out = sessions_still_work(gw, client_keys["ed25519"], command)
            expected = b"first\n" + b"".join(b"%d\n" % n for n in range(1, 50001))
            assert hashlib.sha256(out).digest() == hashlib.sha256(expected).digest()
            assert wait_for(lambda: "truncated: cannot write: No space left" in gw.log_text()), (
                gw.log_text()[-3000:]
            )
        casts = list(directory.glob("*.cast"))
        assert casts
        for path in casts:  # cut back to whole lines: each file still reads and plays
            header, events = read_cast(path)
            assert header["version"] == 2
            assert ["o", "first\n"] in [e[1:] for e in events]
            assert any(e[1] == "m" and e[2].startswith("truncated: ") for e in events)
            assert played(path).startswith("first\n")
