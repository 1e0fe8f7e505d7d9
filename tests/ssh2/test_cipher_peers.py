"""Every SSH-2 cipher and MAC of the front end against real clients: OpenSSH's ssh (with
re-keys every 1 MiB, so keys and counters change mid-stream) and PuTTY's plink -2 (which
also runs strict key exchange with us)."""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.support.clients import PASSWORD, keyed_config, ssh2_fingerprint, ssh_argv
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer

pytestmark = pytest.mark.peer

ALL_CIPHERS = [
    "chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
    "aes256-ctr", "aes192-ctr", "aes128-ctr", "aes256-cbc", "aes128-cbc", "3des-cbc",
]  # fmt: skip
ALL_MACS = [
    "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512", "hmac-sha2-256", "hmac-sha1-etm@openssh.com", "hmac-sha1",
]  # fmt: skip


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    work = tmp_path_factory.mktemp("ciphers")
    # The gateway also re-keys every 512 KiB, so each client follows key exchanges it
    # did not start, under every cipher.
    config, key = keyed_config(
        work, ssh2={"ciphers": ALL_CIPHERS, "macs": ALL_MACS, "rekey_limit": 512 * 1024}
    )
    (work / "gw").mkdir()
    with GatewayProcess(work / "gw", config) as process:
        process.client_key = key
        yield process


@pytest.mark.parametrize(
    "cipher, mac",
    [("chacha20-poly1305@openssh.com", "hmac-sha2-256"),
     ("aes256-gcm@openssh.com", "hmac-sha2-256"),
     ("aes128-gcm@openssh.com", "hmac-sha2-256"),
     ("aes256-ctr", "hmac-sha2-512-etm@openssh.com"),
     ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
     ("aes192-ctr", "hmac-sha2-512"),
     ("aes256-cbc", "hmac-sha1-etm@openssh.com"),
     ("3des-cbc", "hmac-sha1")],
)  # fmt: skip
def test_openssh_each_cipher_and_mac_through_re_keys(gw, cipher, mac):
    data = os.urandom(3 << 20)
    argv = ssh_argv(gw, gw.client_key, "-v", "-o", "RekeyLimit=1M", "-c", cipher, "-m", mac, "cat")
    result = subprocess.run(argv, input=data, capture_output=True, timeout=120)
    log = result.stderr.decode(errors="replace")
    assert result.returncode == 0, log[-2000:]
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
    shown_mac = "<implicit>" if "gcm" in cipher or "chacha" in cipher else mac
    assert f"kex: client->server cipher: {cipher} MAC: {shown_mac}" in log
    assert log.count("SSH2_MSG_NEWKEYS received") >= 3


@pytest.mark.parametrize("putty_name, shown", [
    ("chacha20", "Poly1305"), ("aesgcm", "AES-GCM"), ("aes", "HMAC-SHA-256"),
])  # fmt: skip
def test_plink_each_cipher_family(gw, putty_name, shown):
    plink = require_peer("plink")["plink"]
    # plink has no cipher flag: a saved session (read from the passwd home) chooses it.
    sessions = Path(pwd.getpwuid(os.geteuid()).pw_dir) / ".putty" / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    session = f"sshgateway-test-ssh2-{putty_name}-{os.getpid()}"
    (sessions / session).write_text(
        f"Cipher={putty_name},WARN,aes,chacha20,aesgcm,3des\nSshProt=3\nHostName=127.0.0.1\n"
    )
    data = os.urandom(2 << 20)
    try:
        result = subprocess.run(
            [plink, "-batch", "-v", "-load", session, "-hostkey", ssh2_fingerprint(gw),
             "-P", str(gw.port), "-pw", PASSWORD, "-l", "alice", "cat"],
            input=data, capture_output=True, timeout=120,
        )  # fmt: skip
    finally:
        (sessions / session).unlink(missing_ok=True)
    log = result.stderr.decode(errors="replace")
    assert result.returncode == 0, log[-2000:]
    assert result.stdout == data
    assert log.count(f"Initialised {shown}") >= 2 * 3  # both directions, re-keyed twice or more
    assert "Enabling strict key exchange semantics" in log  # PuTTY's Terrapin fix, and ours
