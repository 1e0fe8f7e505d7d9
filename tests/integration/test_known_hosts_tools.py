"""Issue 9 item 12 end to end: the gateway's known_hosts after real devices were pinned
(an SSH-1 device: the gateway's own SSH-1 server in a second process; an SSH-2 device: a
real OpenSSH sshd) stays a file OpenSSH's ``ssh-keygen -F/-R/-H`` work on, and
``sshgateway known-hosts forget`` makes the next connection pin again (accept-new) or be
refused (strict), on the running gateway."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.clients import base_config, hash_password, ssh2_device, ssh_argv, sshgateway_cli
from tests.support.gateway_process import GatewayProcess, local_access
from tests.support.peers import require_peer

pytestmark = pytest.mark.peer

DEVICE_PASSWORD = "device secret 9"


@pytest.fixture(scope="module")
def world(tmp_path_factory, password_hash, authorized_keys):
    work = tmp_path_factory.mktemp("known-hosts-tools")
    (work / "ssh1-device").mkdir()
    (work / "gw").mkdir()
    ssh1_config = {
        "protocols": ["1"],
        "users": {"admin": {"password": hash_password(DEVICE_PASSWORD), **local_access()}},
        "auth": {"failure_delay": 0.2},
    }
    with GatewayProcess(work / "ssh1-device", ssh1_config) as old_device, ssh2_device(
        work
    ) as (new_device, ssh2_target):
        old = {
            "protocol": "ssh1", "host": "127.0.0.1", "port": old_device.port,
            "username": "admin", "password": DEVICE_PASSWORD, "connect_timeout": 20,
        }  # fmt: skip
        targets = {
            "old": {**old, "host_key": "accept-new"},
            "old-strict": {**old, "host_key": "strict"},
            "new": {**ssh2_target, "host_key": "accept-new"},
            "new-strict": {**ssh2_target, "host_key": "strict"},
        }
        config = base_config(password_hash, authorized_keys, targets=targets)
        config["users"]["alice"]["targets"] = list(targets)
        with GatewayProcess(work / "gw", config) as gw:
            yield {"gw": gw, "old_port": old_device.port, "new_port": new_device.port}


def run_via(gw: GatewayProcess, client_keys, target: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ssh_argv(gw, client_keys["ed25519"], "echo hi", user=f"alice+{target}"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_reaches(gw: GatewayProcess, client_keys, target: str) -> None:
    result = run_via(gw, client_keys, target)
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr + gw.log_text()[-3000:]


def assert_refused_unknown(gw: GatewayProcess, client_keys, target: str) -> None:
    result = run_via(gw, client_keys, target)
    assert result.returncode == 255 and result.stdout == ""
    assert f"sshgateway: {target}:" in result.stderr and "is not known" in result.stderr


def keygen(*args: str) -> subprocess.CompletedProcess:
    tool = require_peer("ssh-keygen")["ssh-keygen"]
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=30)


def test_ssh_keygen_and_forget_on_the_pinned_file(world, client_keys):
    gw = world["gw"]
    old_name, new_name = f"[127.0.0.1]:{world['old_port']}", f"[127.0.0.1]:{world['new_port']}"
    state = gw.workdir / "state"
    known, known_ssh1 = state / "known_hosts", state / "known_hosts.ssh1"

    # Both devices pinned (accept-new), each in its own file.
    assert_reaches(gw, client_keys, "old")
    assert_reaches(gw, client_keys, "new")
    assert known_ssh1.read_text().startswith(f"{old_name} 2048 ")
    assert known.read_text().startswith(f"{new_name} ssh-")
    assert old_name not in known.read_text()

    # Modern ssh-keygen reads, hashes and edits the SSH-2 file.
    found = keygen("-F", new_name, "-f", str(known))
    assert found.returncode == 0 and f"{new_name} ssh-" in found.stdout, found.stderr
    hashed = keygen("-H", "-f", str(known))
    assert hashed.returncode == 0, hashed.stderr
    assert "invalid line" not in hashed.stderr and known.read_text().startswith("|1|")
    assert_reaches(gw, client_keys, "new-strict")  # the hashed pin is honoured
    removed = keygen("-R", new_name, "-f", str(known))
    assert removed.returncode == 0, removed.stderr
    assert keygen("-F", new_name, "-f", str(known)).returncode == 1
    assert_refused_unknown(gw, client_keys, "new-strict")
    assert_reaches(gw, client_keys, "new")  # pinned again
    assert_reaches(gw, client_keys, "new-strict")

    # The gateway's own command forgets the SSH-1 device; the running gateway sees it.
    forgot = sshgateway_cli("known-hosts", "forget", "--config", str(gw.config_path), "old")
    assert forgot.stdout.startswith(
        f"forgot old (127.0.0.1:{world['old_port']}): SSH-1 rsa1 SHA256:"
    ), forgot.stdout
    assert f"({known_ssh1}:1)" in forgot.stdout
    assert "the next connection pins the key the device offers then" in forgot.stdout
    assert old_name not in known_ssh1.read_text()
    assert_refused_unknown(gw, client_keys, "old-strict")
    assert_reaches(gw, client_keys, "old")  # accept-new pins it again
    assert known_ssh1.read_text().startswith(f"{old_name} 2048 ")
    assert_reaches(gw, client_keys, "old-strict")

    strict = sshgateway_cli(
        "known-hosts", "forget", "--config", str(gw.config_path), "new-strict"
    )
    assert 'host_key is "strict": connections are refused until its key' in strict.stdout
    assert_refused_unknown(gw, client_keys, "new-strict")

    unknown = sshgateway_cli(
        "known-hosts", "forget", "--config", str(gw.config_path), "nosuch", check=False
    )
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "'nosuch': no such target" in unknown.stderr
