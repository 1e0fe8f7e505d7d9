"""Host keys: generated once with safe modes, reused, refused when exposed; fingerprints."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.conch.ssh import keys

from gateway import hostkeys
from gateway.hostkeys import HostKeyError, load_host_keys, load_or_create_host_keys
from tests.support.peers import require_peer


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gw") / "state"
    return directory, load_or_create_host_keys(directory)


def test_generated_keys_and_modes(state):
    directory, host = state
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for name in (hostkeys.ED25519_FILE, hostkeys.RSA_FILE, hostkeys.SSH1_FILE):
        assert stat.S_IMODE(os.stat(directory / name).st_mode) == 0o600
    assert set(host.ssh2) == {b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa"}
    assert host.ssh2[b"ssh-ed25519"].type() == "Ed25519"
    rsa_key = host.ssh2[b"rsa-sha2-512"]
    assert rsa_key is host.ssh2[b"ssh-rsa"] and rsa_key.size() == 3072
    assert not rsa_key.isPublic()
    assert isinstance(host.ssh1, rsa.RSAPrivateKey) and host.ssh1.key_size == 2048
    assert set(host.ssh2_public()) == set(host.ssh2)
    assert all(k.isPublic() for k in host.ssh2_public().values())
    # no temporary files left behind
    assert sorted(os.listdir(directory)) == sorted(
        [hostkeys.ED25519_FILE, hostkeys.RSA_FILE, hostkeys.SSH1_FILE]
    )


def test_reused_on_next_start(state):
    directory, host = state
    again = load_or_create_host_keys(directory)
    assert [i.fingerprint for i in again.infos()] == [i.fingerprint for i in host.infos()]
    assert load_host_keys(directory).ssh1.private_numbers() == host.ssh1.private_numbers()


def test_fingerprints(state):
    _, host = state
    infos = host.infos()
    assert [(i.protocol, i.type, i.bits) for i in infos] == [
        ("ssh2", "ssh-ed25519", 256),
        ("ssh2", "ssh-rsa", 3072),
        ("ssh1", "rsa1", 2048),
    ]
    ed = host.ssh2[b"ssh-ed25519"]
    expected = base64.b64encode(hashlib.sha256(ed.public().blob()).digest()).decode().rstrip("=")
    assert infos[0].fingerprint == "SHA256:" + expected
    numbers = host.ssh1.public_key().public_numbers()
    raw = numbers.n.to_bytes(256, "big") + numbers.e.to_bytes(3, "big")
    md5 = hashlib.md5(raw).hexdigest()
    assert infos[2].md5 == ":".join(md5[i : i + 2] for i in range(0, 32, 2))
    sha256 = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert infos[2].fingerprint == "SHA256:" + sha256
    assert infos[2].fingerprints == f"SHA256:{sha256} MD5:{infos[2].md5}"
    assert infos[0].fingerprints == infos[0].fingerprint and infos[0].md5 is None


@pytest.mark.peer
def test_sha256_fingerprint_matches_ssh_keygen(state):
    tools = require_peer("ssh-keygen")
    directory, host = state
    by_path = {str(i.path): i for i in host.infos()}
    for name in (hostkeys.ED25519_FILE, hostkeys.RSA_FILE):
        out = subprocess.run(
            [tools["ssh-keygen"], "-l", "-E", "sha256", "-f", str(directory / name)],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        info = by_path[str(directory / name)]
        assert out[0] == str(info.bits) and out[1] == info.fingerprint


def copy_state(src, dst):
    dst.mkdir(mode=0o700)
    for name in os.listdir(src):
        (dst / name).write_bytes((src / name).read_bytes())
        os.chmod(dst / name, 0o600)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o601])
def test_exposed_key_file_is_refused(state, tmp_path, mode):
    directory, _ = state
    copy = tmp_path / "copy"
    copy_state(directory, copy)
    os.chmod(copy / hostkeys.RSA_FILE, mode)
    with pytest.raises(HostKeyError, match=rf"permissions 0{mode:o} are too open.*chmod 600"):
        load_or_create_host_keys(copy)


def test_wrong_or_damaged_key_files_are_refused(state, tmp_path):
    directory, _ = state
    copy = tmp_path / "copy"
    copy_state(directory, copy)
    # The RSA key where the Ed25519 key belongs.
    (copy / hostkeys.ED25519_FILE).write_bytes((copy / hostkeys.RSA_FILE).read_bytes())
    with pytest.raises(HostKeyError, match="expected a private Ed25519 key"):
        load_host_keys(copy)
    (copy / hostkeys.ED25519_FILE).write_bytes(b"garbage")
    with pytest.raises(HostKeyError, match="not a readable private key"):
        load_host_keys(copy)
    (copy / hostkeys.ED25519_FILE).write_bytes((directory / hostkeys.ED25519_FILE).read_bytes())
    (copy / hostkeys.SSH1_FILE).write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(HostKeyError, match="not a readable unencrypted PEM"):
        load_host_keys(copy)
    (copy / hostkeys.SSH1_FILE).write_bytes(b"x" * (hostkeys.MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(HostKeyError, match="larger than"):
        load_host_keys(copy)


def test_symlinked_key_is_refused(state, tmp_path):
    directory, _ = state
    copy = tmp_path / "copy"
    copy_state(directory, copy)
    (copy / hostkeys.SSH1_FILE).unlink()
    os.symlink(directory / hostkeys.SSH1_FILE, copy / hostkeys.SSH1_FILE)
    with pytest.raises(HostKeyError, match="cannot open"):
        load_host_keys(copy)


def test_missing_keys_for_load_only(tmp_path):
    with pytest.raises(HostKeyError, match="cannot open"):
        load_host_keys(tmp_path)
    assert os.listdir(tmp_path) == []  # load_host_keys never creates anything


def test_missing_key_is_created_and_others_kept(state, tmp_path, monkeypatch):
    directory, host = state
    copy = tmp_path / "copy"
    copy_state(directory, copy)
    (copy / hostkeys.ED25519_FILE).unlink()
    again = load_or_create_host_keys(copy)
    assert again.ssh2[b"ssh-ed25519"].blob() != host.ssh2[b"ssh-ed25519"].blob()
    assert again.ssh2[b"rsa-sha2-256"].blob() == host.ssh2[b"rsa-sha2-256"].blob()


def test_existing_file_is_never_overwritten(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(b"theirs")
    assert hostkeys.write_new_private_file(path, b"ours") is False
    assert path.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["k"]


def test_state_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(HostKeyError, match="not a directory"):
        load_or_create_host_keys(tmp_path / "f")


def test_generated_ssh2_keys_load_with_conch(state):
    directory, _ = state
    key = keys.Key.fromString((directory / hostkeys.ED25519_FILE).read_bytes())
    assert key.type() == "Ed25519"


@pytest.mark.peer
def test_ssh1_fingerprint_matches_ssh_keygen1(state, tmp_path):
    tools = require_peer("ssh-keygen1")
    _, host = state
    numbers = host.ssh1.public_key().public_numbers()
    public = tmp_path / "ssh1.pub"
    public.write_text(f"{numbers.n.bit_length()} {numbers.e} {numbers.n} gateway\n")
    out = subprocess.run(
        [tools["ssh-keygen1"], "-l", "-E", "md5", "-f", str(public)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    info = host.infos()[2]
    assert out[0] == "2048" and out[1] == "MD5:" + info.md5
    sha256 = subprocess.run(
        [tools["ssh-keygen1"], "-l", "-E", "sha256", "-f", str(public)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    assert sha256[0] == "2048" and sha256[1] == info.fingerprint
