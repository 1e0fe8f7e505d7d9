"""Issue 4 acceptance 3 end to end: OpenSSH ``ssh`` (SSH-2) and ``plink -1`` (SSH-1) reach
a real telnet device (Debian's inetutils telnetd) through the gateway, with the device's
login prompts answered from ``[targets.NAME]``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.clients import (
    one_target_config,
    peak_rss_growth_kib,
    plink1_argv,
    run_plink1,
    ssh_argv,
    write_authorized_keys,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import putty_cipher_session
from tests.support.sshd import keygen
from tests.support.telnetd import SHELL_PROMPT, TelnetDaemon

pytestmark = pytest.mark.peer

DEVICE_USER, DEVICE_PASSWORD = "admin", "telnet device pw"


@pytest.fixture(scope="module")
def telnet_gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("telnet-e2e")
    key = keygen(work / "id_ed25519")
    authorized = write_authorized_keys(work / "authorized_keys", key)
    with TelnetDaemon(work, DEVICE_USER, DEVICE_PASSWORD) as device:
        target = {
            "protocol": "telnet", "host": "127.0.0.1", "port": device.port,
            "username": DEVICE_USER, "password": DEVICE_PASSWORD,
            "login_prompt": "login: $", "password_prompt": "Password: $",
            "connect_timeout": 10,
        }  # fmt: skip
        config = one_target_config(authorized, "tdev", target)
        # The same device, with its shell prompt known: commands are framed by prompts.
        config["targets"]["tdevp"] = {**target, "shell_prompt": r"dev\$ "}
        config["users"]["alice"]["targets"].append("tdevp")
        (work / "gw").mkdir()
        with GatewayProcess(work / "gw", config) as gw:
            yield gw, key


def test_openssh_command_through_telnet_device(telnet_gateway):
    gw, key = telnet_gateway
    result = subprocess.run(
        ssh_argv(gw, key, "echo via-telnet; echo $((6*7))", user="alice+tdev"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + gw.log_text()[-3000:]
    assert "via-telnet\n42\n" in result.stdout
    assert "Password" not in result.stdout
    gw.wait_for_log(r"bridged session: user=alice front=\[ssh2 [^\]]*\] target=tdev upstream=\[telnet ")


def test_openssh_tty_shell_through_telnet_device(telnet_gateway):
    gw, key = telnet_gateway
    argv = ssh_argv(gw, key, user="alice+tdev")
    argv.insert(1, "-tt")
    result = subprocess.run(
        argv, input="stty size; echo T=$TERM\nexit\n", capture_output=True, text=True,
        timeout=60, env={"TERM": "vt100", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "T=vt100" in result.stdout
    assert "dev$ " in result.stdout


def test_plink_ssh1_command_through_telnet_device(telnet_gateway):
    gw, _ = telnet_gateway
    result = run_plink1(gw, "echo from-plink", user="alice+tdev")
    assert "from-plink" in result.stdout


def wait_for_output(path: Path, done, deadline: float) -> bytes:
    """The client's output so far, once ``done(output)``; fails at ``deadline``."""
    while True:
        output = path.read_bytes()
        if done(output):
            return output
        if time.monotonic() > deadline:
            tail = output[-200:]
            raise AssertionError(f"timed out with {len(output)} bytes; tail {tail!r}")
        time.sleep(0.05)


def echo_through_raw_shell(argv: list[str], size: int, workdir: Path) -> None:
    """Log in to the device's shell through ``argv`` (a client with a pty), make its
    terminal raw and run ``cat``, then stream ``size`` random bytes up while they come
    back: ``size`` bytes each way through the telnet bridge, compared byte for byte.

    Telnet has no exec channel that could carry binary stdin, so the data rides the
    interactive session: BINARY both ways and a raw device terminal make it 8-bit clean.

    The client writes to a file, not a pipe: see :func:`tests.support.peers.run_to_file`.
    """
    received = workdir / "received"
    with received.open("wb") as out:
        client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
    try:
        prompt = SHELL_PROMPT.encode()
        wait_for_output(received, lambda b: prompt in b, time.monotonic() + 60)
        # The quotes keep the echoed command line from matching the marker.
        client.stdin.write(b"stty raw -echo; printf 'RE''ADY'; exec cat\r")
        client.stdin.flush()
        ready = wait_for_output(received, lambda b: b"READY" in b, time.monotonic() + 60)
        offset = ready.index(b"READY") + len(b"READY")

        data = os.urandom(size)
        failures: list[BaseException] = []

        def send() -> None:
            try:
                view = memoryview(data)
                for start in range(0, size, 1 << 16):
                    client.stdin.write(view[start : start + (1 << 16)])
                client.stdin.flush()
            except BaseException as e:  # reported below, with what came back
                failures.append(e)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline = time.monotonic() + 300
        while received.stat().st_size < offset + size:
            assert client.poll() is None, client.stderr.read()
            assert time.monotonic() < deadline, f"{received.stat().st_size - offset} echoed"
            time.sleep(0.05)
        sender.join(10)
        assert not failures, failures
        echoed = received.read_bytes()[offset:]
        assert len(echoed) == size
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
    finally:
        client.kill()
        client.wait(10)


@pytest.mark.slow
def test_64mib_each_way_through_telnet_bridge_openssh(telnet_gateway, tmp_path):
    gw, key = telnet_gateway
    argv = ssh_argv(gw, key, user="alice+tdev")
    # -e none: with a tty, ssh would act on escape sequences ("~.") in the random data.
    argv[1:1] = ["-tt", "-e", "none"]
    echo_through_raw_shell(argv, 64 * 1024 * 1024, tmp_path)


@pytest.mark.slow
def test_64mib_each_way_through_telnet_bridge_plink_ssh1(telnet_gateway, tmp_path):
    gw, _ = telnet_gateway
    with putty_cipher_session("blowfish") as session:
        argv = plink1_argv(gw, "-t", user="alice+tdev", load=session)
        echo_through_raw_shell(argv, 64 * 1024 * 1024, tmp_path)


@pytest.mark.slow
def test_gateway_memory_bounded_with_a_slow_reader_through_telnet(telnet_gateway):
    """The client reads at about 100 KB/s while the device's cat could send far faster."""
    gw, key = telnet_gateway
    argv = ssh_argv(gw, key, "cat /dev/zero", user="alice+tdev")
    assert peak_rss_growth_kib(gw, argv) < 32 * 1024


def test_shell_prompt_gives_just_the_output(telnet_gateway):
    gw, key = telnet_gateway
    result = subprocess.run(
        ssh_argv(gw, key, "echo via-telnet; echo $((6*7))", user="alice+tdevp"),
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"via-telnet\n42\n"  # no banner, no prompt, no echo


@pytest.mark.slow
def test_shell_prompt_loses_no_output_to_a_slow_reader(telnet_gateway):
    """15 MB of output read at about 5 MB/s: the gateway stops reading the device while
    the client lags, and ``exit`` must not overtake output still in the device's pty."""
    gw, key = telnet_gateway
    argv = ssh_argv(gw, key, "seq 1 2000000", user="alice+tdevp")
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received = bytearray()
    deadline = time.monotonic() + 120
    try:
        while chunk := client.stdout.read1(256 * 1024):
            received += chunk
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.wait(30) == 0, client.stderr.read()
    finally:
        client.kill()
        client.wait(10)
    expected = "".join(f"{n}\n" for n in range(1, 2000001)).encode()
    assert len(received) == len(expected)
    assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()
