"""authorized_keys options against real clients and a real gateway process: OpenSSH's
``ssh`` (SSH-2), PuTTY's ``plink -1`` and OpenSSH 7.5's ``ssh1`` (SSH-1) with the same
option lines in front of their keys. One gateway serves the module; each test rewrites
alice's authorized_keys, which the gateway re-reads when it changes."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.clients import (
    keyed_config,
    plink1_argv,
    ssh1_argv,
    ssh1_fingerprint,
    ssh_argv,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer

pytestmark = pytest.mark.peer

_stamps = itertools.count(1)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """An SSH-1 key from puttygen (for plink -1) and one from ssh-keygen1 (for ssh1)."""
    tools = require_peer("puttygen", "ssh-keygen1")
    d = tmp_path_factory.mktemp("ssh1-keys")
    putty = d / "putty.rsa1"
    subprocess.run(
        [tools["puttygen"], "-t", "rsa1", "-b", "2048", "-o", str(putty),
         "--new-passphrase", "/dev/null"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    openssh = d / "openssh.rsa1"
    subprocess.run(
        [tools["ssh-keygen1"], "-q", "-t", "rsa1", "-N", "", "-f", str(openssh)],
        check=True, timeout=120,
    )  # fmt: skip
    return {"putty": putty, "openssh": openssh}


@pytest.fixture(scope="module")
def gw(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("keyopts-gateway")
    config, key = keyed_config(d)
    authorized = Path(config["users"]["alice"]["authorized_keys"])
    tools = require_peer("puttygen")
    putty_line = subprocess.run(
        [tools["puttygen"], str(keys["putty"]), "-O", "public"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    with GatewayProcess(d, config) as process:
        process.key = key
        process.authorized = authorized
        process.lines = {
            "ssh2": Path(str(key) + ".pub").read_text().strip(),
            "putty": putty_line,
            "openssh1": Path(str(keys["openssh"]) + ".pub").read_text().strip(),
        }
        process.fingerprint = ssh1_fingerprint(process)
        yield process


def set_options(gw, options: str) -> None:
    """Every key of alice's, with ``options`` in front (none when empty)."""
    prefix = f"{options} " if options else ""
    gw.authorized.write_text("".join(f"{prefix}{line}\n" for line in gw.lines.values()))
    gw.authorized.chmod(0o600)
    # A new mtime every time, whatever the file system's clock resolution.
    stamp = 10**18 + next(_stamps) * 10**9
    os.utime(gw.authorized, ns=(stamp, stamp))


def ssh(gw, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ssh_argv(gw, gw.key, *args), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def plink1(gw, keys, *args: str) -> subprocess.CompletedProcess:
    argv = plink1_argv(gw, "-i", str(keys["putty"]), *args, password=None,
                       fingerprint=gw.fingerprint)  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def ssh1(gw, keys, tmp_path, *args: str) -> subprocess.CompletedProcess:
    argv, env = ssh1_argv(gw, tmp_path, "ssh1", "-o", "BatchMode=yes",
                          "-i", str(keys["openssh"]), *args)  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL
    )


# --- SSH-2: OpenSSH ---------------------------------------------------------------------------


@pytest.fixture
def drop_dir():
    """A directory the session's program can write to whichever account it runs as."""
    path = Path(tempfile.mkdtemp(prefix="sshgateway-keyopts-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tty_over_ssh(gw, drop_dir: Path) -> tuple[subprocess.CompletedProcess, str]:
    """``ssh -tt ... tty``, the answer written to a file as OpenSSH's regression suite
    does (key-options.sh). A plain ``ssh -tt`` closes the channel when the pty it forced
    is refused ("PTY allocation request failed", exit 255, output dropped; OpenSSH 9.2
    against its own sshd does the same) and may leave before the command ran, whose
    program the gateway then hangs up; through a ControlMaster connection, which stays
    up, the command always runs and its answer is certain."""
    out = drop_dir / "tty"
    control = drop_dir / f"control-{next(_stamps)}"
    mux = ["-o", "ControlMaster=yes", "-o", f"ControlPath={control}", "-o", "ControlPersist=5"]
    result = ssh(gw, "-tt", *mux, f"tty > {out}; exit 0")
    deadline = time.monotonic() + 10
    answer = ""
    while not answer.endswith("\n") and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = out.read_text() if out.exists() else ""
    ssh(gw, "-O", "exit", "-o", f"ControlPath={control}")  # the master's part is done
    return result, answer.strip()


@pytest.mark.parametrize(
    "options,has_pty",
    [("restrict", False), ("no-pty", False), ("restrict,pty", True), ("", True)],
)
def test_pty_by_key_options(gw, drop_dir, options, has_pty):
    set_options(gw, options)
    result, answer = tty_over_ssh(gw, drop_dir)
    assert result.returncode == 0, result.stderr
    if has_pty:
        assert answer.startswith("/dev/pts/"), result.stderr
    else:
        assert answer == "not a tty", result.stderr
        gw.wait_for_log(r"refused pty: pty is not permitted by the key's options")


def test_plain_ssh_tt_is_refused_its_pty(gw):
    set_options(gw, "restrict")
    result = ssh(gw, "-tt", "tty")
    assert "PTY allocation request failed on channel 0" in result.stderr
    assert "/dev/pts" not in result.stdout
    set_options(gw, "")
    result = ssh(gw, "-tt", "tty")
    assert result.stdout.strip().startswith("/dev/pts/"), result.stderr


def test_forced_command_wins_and_keeps_the_clients(gw):
    set_options(gw, r'command="echo forced; echo \"orig=$SSH_ORIGINAL_COMMAND\""')
    result = ssh(gw, "echo client")
    assert result.stdout == "forced\norig=echo client\n", result.stderr
    assert result.returncode == 0
    # A shell request runs the forced command too, with no SSH_ORIGINAL_COMMAND.
    result = ssh(gw, "-T")
    assert result.stdout == "forced\norig=\n", result.stderr


@pytest.mark.parametrize(
    "options,admitted",
    [
        ('from="10.0.0.0/8"', False),
        ('from="127.0.0.1"', True),
        ('from="127.0.0.0/8,!127.0.0.1"', False),
        ('expiry-time="20000101"', False),
        ('expiry-time="20991231"', True),
    ],
)
def test_from_and_expiry(gw, options, admitted):
    set_options(gw, options)
    result = ssh(gw, "echo in")
    if admitted:
        assert (result.stdout, result.returncode) == ("in\n", 0), result.stderr
    else:
        assert result.returncode == 255 and result.stdout == ""
        assert "Permission denied (publickey,password)" in result.stderr
        gw.wait_for_log(r"correct key for alice refused")


def test_unknown_option_skips_the_line(gw):
    set_options(gw, 'permitopen="127.0.0.1:22"')
    result = ssh(gw, "echo in")
    assert result.returncode == 255
    gw.wait_for_log(r"skipped: option 'permitopen' is not supported by the gateway")


# --- SSH-1: plink -1 and ssh1 with rsa1 key lines -------------------------------------------


def test_plink1_restrict_continues_without_a_pty(gw, keys):
    set_options(gw, "restrict")
    result = plink1(gw, keys, "-t", "tty")
    # plink says so and goes on, as with sshd
    assert result.stdout.strip() == "not a tty", result.stderr
    assert "Server refused to allocate pty" in result.stderr
    set_options(gw, "")
    assert plink1(gw, keys, "-t", "tty").stdout.strip().startswith("/dev/pts/")


def test_ssh1_no_pty_continues_without_a_pty(gw, keys, tmp_path):
    set_options(gw, "no-pty")
    result = ssh1(gw, keys, tmp_path, "-t", "-t", "alice@127.0.0.1", "tty")
    assert result.stdout.strip() == "not a tty", result.stderr
    assert "refused to allocate a pseudo tty" in result.stderr


def test_ssh1_forced_command(gw, keys, tmp_path):
    set_options(gw, r'command="echo forced; echo \"orig=$SSH_ORIGINAL_COMMAND\""')
    result = plink1(gw, keys, "echo client")
    assert result.stdout == "forced\norig=echo client\n", result.stderr
    result = ssh1(gw, keys, tmp_path, "alice@127.0.0.1", "echo client1")
    assert result.stdout == "forced\norig=echo client1\n", result.stderr


@pytest.mark.parametrize(
    "options,admitted",
    [
        ('from="10.0.0.0/8"', False),
        ('from="127.0.0.1"', True),
        ('expiry-time="20000101"', False),
    ],
)
def test_ssh1_from_and_expiry(gw, keys, tmp_path, options, admitted):
    set_options(gw, options)
    by_plink = plink1(gw, keys, "echo in")
    by_ssh1 = ssh1(gw, keys, tmp_path, "alice@127.0.0.1", "echo in")
    if admitted:
        assert by_plink.stdout == by_ssh1.stdout == "in\n", by_plink.stderr + by_ssh1.stderr
    else:
        assert by_plink.returncode != 0 and by_plink.stdout == ""
        assert by_ssh1.returncode == 255 and by_ssh1.stdout == ""
        gw.wait_for_log(r"correct key for alice refused")
