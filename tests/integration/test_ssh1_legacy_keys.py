"""Issue 15, acceptance 1: SSH-1 devices with the small keys old firmware has, reached
through the gateway by OpenSSH's ssh, with a warning logged and marked in the flow
record; a target whose ``min_key_bits`` they are under refuses them, and the user sees
why. PuTTY's ``plink -1`` reaching the same devices directly shows that these are keys
a real client accepts.

The devices are the gateway's own SSH-1 server with its keys replaced
(tests.support.ssh1.legacy_device): one with a 1024-bit host key and a 384-bit server
key (a server that derives its server key from the host key's size in bytes), one with a
768-bit host key (old Cisco IOS) and a 512-bit server key.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from protocols.ssh1 import keygen, keys
from tests.support.clients import base_config, hash_password, plink1_argv, ssh_argv
from tests.support.gateway_process import GatewayProcess, local_access
from tests.support.ssh1.legacy_device import prelude, write_key

pytestmark = pytest.mark.peer

DEVICE_PASSWORD = "legacy device 7"
DEVICES = {  # name: (host key bits, server key bits)
    "dev384": (1024, 384),
    "dev768": (768, 512),
}


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    started = {}
    try:
        for name, (host_bits, server_bits) in DEVICES.items():
            d = tmp_path_factory.mktemp(name)
            host = keygen.generate_private_key(host_bits)
            server = keygen.generate_private_key(server_bits)
            config = {
                "protocols": ["1"],
                "users": {"admin": {"password": hash_password(DEVICE_PASSWORD), **local_access()}},
                "auth": {"failure_delay": 0.2},
                "limits": {"penalties": False},
                # What its settings check against the host key's size; the key is `server`.
                "ssh1": {"server_key_bits": 512},
            }
            device = GatewayProcess(
                d, config, prelude=prelude(write_key(d / "host.pem", host), write_key(d / "server.pem", server))
            ).start()
            device.host = host
            started[name] = device
        yield started
    finally:
        for device in started.values():
            device.stop()
            device.assert_no_traceback()


def md5_fingerprint(key: rsa.RSAPrivateKey) -> str:
    return keys.ssh1_fingerprint(*keys.public_numbers(key))


@pytest.fixture(scope="module")
def gw(tmp_path_factory, password_hash, authorized_keys, devices):
    def target(device: str, **extra) -> dict:
        return {"protocol": "ssh1", "host": "127.0.0.1", "port": devices[device].port,
                "username": "admin", "password": DEVICE_PASSWORD, "connect_timeout": 20, **extra}

    targets = {
        "legacy384": target("dev384"),
        "legacy768": target("dev768"),
        "floor512": target("dev384", min_key_bits=512),
        "floor1024": target("dev768", min_key_bits=1024),
    }
    config = base_config(password_hash, authorized_keys, targets=targets)
    config["users"]["alice"]["targets"] = ["local", *targets]
    with GatewayProcess(tmp_path_factory.mktemp("legacy-keys-gw"), config) as process:
        yield process


def via(gw: GatewayProcess, client_keys, target: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ssh_argv(gw, client_keys["ed25519"], "echo hi", user=f"alice+{target}"),
        capture_output=True, text=True, timeout=90,
    )


def upstream_record(gw: GatewayProcess, target: str, timeout: float = 20.0) -> dict:
    """The flow record of the upstream leg to ``target``."""
    path = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["role"] == "client" and record["target"] == target:
                    return record
        time.sleep(0.1)
    raise AssertionError(f"no upstream flow record for {target}:\n" + gw.log_text()[-3000:])


@pytest.mark.parametrize(
    "target, host_bits, server_bits", [("legacy384", 1024, 384), ("legacy768", 768, 512)]
)
def test_device_with_small_keys_reached_warned_and_marked(
    gw, client_keys, target, host_bits, server_bits
):
    result = via(gw, client_keys, target)
    assert (result.stdout, result.returncode) == ("hi\n", 0), result.stderr + gw.log_text()[-3000:]
    for weak in (f"weak {server_bits}-bit server key", f"weak {host_bits}-bit host key"):
        gw.wait_for_log(rf"ssh1 client 127\.0\.0\.1:\d+: {weak} \(accepted for a legacy device\)")
    negotiated = upstream_record(gw, target)["negotiated"]
    assert (negotiated["host_key_bits"], negotiated["server_key_bits"]) == (host_bits, server_bits)
    assert f"weak {server_bits}-bit server key" in negotiated["warnings"]
    assert f"weak {host_bits}-bit host key" in negotiated["warnings"]


@pytest.mark.parametrize(
    "target, words",
    [
        ("floor512", "the device's server key has 384 bits, under this target's min_key_bits (512)"),
        ("floor1024", "the device's server key has 512 bits and its host key 768 bits, under "
                      "this target's min_key_bits (1024)"),
    ],
)
def test_keys_under_min_key_bits_refused_and_the_user_sees_why(gw, client_keys, target, words):
    result = via(gw, client_keys, target)
    assert result.returncode == 255 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("sshgateway:")]
    assert lines == [f"sshgateway: {target}: {words}"], result.stderr
    gw.assert_no_traceback()


@pytest.mark.parametrize("device", list(DEVICES))
def test_plink_reaches_the_same_devices(devices, device):
    # PuTTY accepts these keys: the devices are what real ones look like to it.
    dev = devices[device]
    argv = plink1_argv(dev, "-v", "echo plink", user="admin", password=DEVICE_PASSWORD,
                       fingerprint=md5_fingerprint(dev.host))  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (result.stdout, result.returncode) == ("plink\n", 0), result.stderr
    host_bits = DEVICES[device][0]
    assert f"{host_bits} {md5_fingerprint(dev.host)}" in result.stderr
