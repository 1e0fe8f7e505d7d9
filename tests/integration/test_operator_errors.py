"""An operator's mistakes, made with the real ``twistd -n sshgateway``: each ends start-up
with one line on stderr that says what is wrong, exit status 1, and no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from gateway.hostkeys import RSA_FILE, load_or_create_host_keys
from tests.support.gateway_helpers import LOCAL_ACCESS
from tests.support.gateway_process import local_access
from tests.support.ops_process import gateway_env, run_once
from tests.support.peers import require_peer


@pytest.fixture(scope="module")
def state_with_keys(tmp_path_factory):
    """Host keys made once (RSA generation is slow); each test copies what it needs."""
    state = tmp_path_factory.mktemp("keys") / "state"
    load_or_create_host_keys(state)
    return state


def base(tmp_path, state_dir, listen="tcp:0:interface=127.0.0.1") -> dict:
    return {
        "listen": [listen],
        "state_dir": str(state_dir),
        "users": {"alice": {"authorized_keys": str(tmp_path / "authorized_keys"), **local_access()}},
    }


def assert_one_line_failure(result: subprocess.CompletedProcess[str], expected: str) -> str:
    """Exit status 1, no traceback anywhere, and stderr exactly one line containing
    ``expected``; returns that line."""
    everything = result.stdout + result.stderr
    assert result.returncode == 1, everything
    assert "Traceback" not in everything and "Unhandled Error" not in everything, everything
    assert "Usage:" not in everything, everything
    lines = result.stderr.splitlines()
    assert len(lines) == 1, everything
    assert expected in lines[0], everything
    return lines[0]


def without_file_privileges() -> tuple[str, ...]:
    """A command prefix under which file permissions apply to this test's gateway: as
    root, the capabilities that override them are dropped (setpriv, util-linux)."""
    if os.geteuid() != 0:
        return ()
    setpriv = require_peer("setpriv")["setpriv"]
    return (setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner")


def test_port_in_use(tmp_path, state_with_keys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        result = run_once(tmp_path, base(tmp_path, state_with_keys, endpoint))
    line = assert_one_line_failure(result, f"cannot listen on {endpoint}: Address already in use")
    assert line.startswith("sshgateway: ")


def test_endpoint_string_wrong(tmp_path, state_with_keys):
    result = run_once(tmp_path, base(tmp_path, state_with_keys, "tcp:twentytwo"))
    # A config error: the file, line and key, then the line itself for context.
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "Usage:" not in result.stdout + result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{tmp_path / 'gateway.toml'}:1: listen: bad endpoint 'tcp:twentytwo'")


def test_endpoint_that_cannot_be_opened(tmp_path, state_with_keys):
    endpoint = f"unix:{tmp_path / 'no-such-dir' / 'sock'}"
    result = run_once(tmp_path, base(tmp_path, state_with_keys, endpoint))
    assert_one_line_failure(result, f"cannot listen on {endpoint}: No such file or directory")


def test_systemd_endpoint_outside_systemd(tmp_path, state_with_keys):
    endpoint = "systemd:domain=INET:name=ssh"
    result = run_once(tmp_path, base(tmp_path, state_with_keys, endpoint))
    assert_one_line_failure(result, f"cannot listen on {endpoint}: systemd passed no such socket")


def test_state_dir_not_writable(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(state, 65534, 65534)  # nobody's: root without its capabilities is refused
    else:
        state.chmod(0o500)
    result = run_once(tmp_path, base(tmp_path, state), prefix=without_file_privileges())
    assert_one_line_failure(result, f"state_dir {state} is not writable: Permission denied")


def test_host_key_unreadable(tmp_path, state_with_keys):
    state = tmp_path / "state"
    subprocess.run(["cp", "-a", str(state_with_keys), str(state)], check=True)
    key = state / RSA_FILE
    if os.geteuid() == 0:
        os.chown(key, 65534, 65534)
    else:
        key.chmod(0)
    result = run_once(tmp_path, base(tmp_path, state), prefix=without_file_privileges())
    assert_one_line_failure(result, f"{key}: cannot open host key: Permission denied")


def test_config_error(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(
        f'listen = ["tcp:0"]\nprotocol = ["2"]\n[users.alice]\nauthorized_keys = "{tmp_path}/ak"\n{LOCAL_ACCESS}'
    )
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "sshgateway", "--config", str(config)],
        env=gateway_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "Usage:" not in result.stderr + result.stdout
    assert result.stderr.startswith(f"{config}:2: protocol")
