"""``sshgateway probe --suggest-target`` against real devices (acceptance 5): Debian's
dropbear, an OpenSSH sshd with only a legacy algorithm set (ssh-dss host key, group1,
3des-cbc, hmac-sha1) and the gateway's own SSH-1-only server. Each printed block, put in a
full config with a user, passes ``sshgateway check-config`` and then carries a real
session: OpenSSH's ``ssh`` through a gateway running that config to the device."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from protocols.ssh1 import keyfile, keys
from protocols.ssh1 import keygen as ssh1_keygen
from tests.support.clients import (
    base_config,
    hash_password,
    keyed_config,
    ssh_argv,
    sshgateway_cli,
)
from tests.support.dropbear import DropbearServer
from tests.support.gateway_process import GatewayProcess, render_toml
from tests.support.ssh1.legacy_device import prelude, write_key
from tests.support.sshd import OpenSSHServer, keygen

pytestmark = pytest.mark.peer

LEGACY_SSHD = (
    "KexAlgorithms diffie-hellman-group1-sha1\nCiphers 3des-cbc\nMACs hmac-sha1\n"
    "HostKeyAlgorithms ssh-dss\n"
)


def suggest(port: int, user: str, key: Path) -> str:
    result = sshgateway_cli(
        "probe", "--timeout", "10", "--suggest-target", "dev", "--user", user, "--key", str(key),
        f"127.0.0.1:{port}", check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def connect_through(tmp_path: Path, block: str) -> subprocess.CompletedProcess:
    """``block`` in a full config: check-config accepts it, and a gateway running it
    carries ``ssh alice+dev@gw echo …`` to the device."""
    (tmp_path / "gw").mkdir()
    config, alice_key = keyed_config(tmp_path)
    config["users"]["alice"]["targets"] = ["dev"]
    del config["users"]["alice"]["os_user"]
    config["state_dir"] = str(tmp_path / "gw-state")
    text = render_toml(config) + "\n" + block
    path = tmp_path / "full.toml"
    path.write_text(text)
    check = sshgateway_cli("check-config", str(path), check=False)
    assert check.returncode == 0, (check.stdout, check.stderr, text)
    config["targets"] = tomllib.loads(block)["targets"]
    with GatewayProcess(tmp_path / "gw", config) as gw:
        argv = ssh_argv(gw, alice_key, "echo via-$((6*7))", user="alice+dev")
        result = subprocess.run(argv, capture_output=True, text=True, timeout=90)
        gw.assert_no_traceback()
    return result


def test_dropbear(tmp_path):
    key = keygen(tmp_path / "to_device", "rsa")
    with DropbearServer(tmp_path / "db", [Path(str(key) + ".pub")], ("rsa",)) as db:
        block = suggest(db.port, "root", key)
        # Debian's dropbear (2022.83) matches no profile and needs nothing the defaults lack.
        assert 'protocol = "ssh2"' in block and "quirks" not in block
        assert "kex =" not in block and "ciphers =" not in block
        assert 'host_key = "SHA256:' in block
        result = connect_through(tmp_path, block)
    assert (result.returncode, result.stdout) == (0, "via-42\n"), result.stderr


def test_sshd_with_legacy_algorithms(tmp_path):
    key = keygen(tmp_path / "to_device", "ed25519")
    with OpenSSHServer(tmp_path / "sshd", [Path(str(key) + ".pub")], ("dsa",), LEGACY_SSHD) as sshd:
        block = suggest(sshd.port, "root", key)
        lists = tomllib.loads(block)["targets"]["dev"]
        assert lists["kex"] == ["diffie-hellman-group1-sha1"]
        assert lists["host_key_algorithms"] == ["ssh-dss"]
        assert lists["ciphers"] == ["3des-cbc"]
        assert lists["macs"] == ["hmac-sha1"]
        pub = Path(str(sshd.host_keys[0]) + ".pub")
        fingerprint = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True
        ).stdout.split()[1]
        assert lists["host_key"] == fingerprint  # the DSA key, the one the gateway will see
        result = connect_through(tmp_path, block)
    assert (result.returncode, result.stdout) == (0, "via-42\n"), result.stderr


@pytest.mark.parametrize("small_keys", [None, (1024, 384)], ids=["own-keys", "384-bit-server-key"])
def test_the_gateways_own_ssh1_server(tmp_path, small_keys):
    """The device: a gateway speaking SSH-1 only, alice logging in with an SSH-1 RSA key;
    with its own keys, or with a 1024-bit host key and a 384-bit server key (legacy
    firmware: tests.support.ssh1.legacy_device), for which the block names the floor
    (``min_key_bits = 384``) and still connects."""
    device_key = rsa.generate_private_key(65537, 2048)
    key = tmp_path / "to_device"
    key.write_bytes(keyfile.dump_private_key(device_key, "gw"))
    key.chmod(0o600)
    numbers = device_key.public_key().public_numbers()
    authorized = tmp_path / "device_authorized_keys"
    authorized.write_text(f"{numbers.n.bit_length()} {numbers.e} {numbers.n} gw\n")
    authorized.chmod(0o600)
    (tmp_path / "device").mkdir()
    device_config = base_config(hash_password(), authorized, protocols=["1"])
    extra = {}
    if small_keys is not None:
        host_bits, server_bits = small_keys
        host = ssh1_keygen.generate_private_key(host_bits)
        server = ssh1_keygen.generate_private_key(server_bits)
        device_config["ssh1"] = {"server_key_bits": 512}  # what its settings check
        extra["prelude"] = prelude(
            write_key(tmp_path / "host.pem", host), write_key(tmp_path / "server.pem", server)
        )
    with GatewayProcess(tmp_path / "device", device_config, **extra) as device:
        block = suggest(device.port, "alice", key)
        target = tomllib.loads(block)["targets"]["dev"]
        assert target["protocol"] == "ssh1"
        if small_keys is None:
            assert "min_key_bits" not in target
            md5 = sshgateway_cli("fingerprints", "--state-dir", device.config["state_dir"]).stdout
            assert f"MD5:{target['host_key']}" in md5
        else:
            assert target["min_key_bits"] == 384
            assert target["host_key"] == keys.ssh1_fingerprint(*keys.public_numbers(host))
        result = connect_through(tmp_path, block)
    assert (result.returncode, result.stdout) == (0, "via-42\n"), result.stderr
