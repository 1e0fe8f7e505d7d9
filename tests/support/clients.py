"""Helpers for driving a real gateway process (tests.support.gateway_process) with real clients:
the test password and gateway configs around it (one user, alice; optionally one target),
the ``sshgateway`` admin command (password hashes, host key fingerprints), a real OpenSSH
sshd as an SSH-2 device behind the gateway, argv for OpenSSH ``ssh`` and PuTTY ``plink``
pinned to the gateway, and the gateway's memory while a client runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.gateway_process import REPO, GatewayProcess, local_access
from tests.support.peers import require_peer
from tests.support.sshd import OpenSSHServer, keygen

PASSWORD = "correct horse battery staple"


def sshgateway_cli(*args: str, stdin: str | None = None, check: bool = True):
    """Run the ``sshgateway`` admin command from this checkout."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from tools.cli import main; sys.exit(main())", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=check,
    )


def hash_password(password: str = PASSWORD) -> str:
    """The password's hash as ``sshgateway hash-password`` makes it for a config."""
    return sshgateway_cli("hash-password", stdin=password + "\n").stdout.strip()


def write_authorized_keys(path: Path, *keys: Path) -> Path:
    """An authorized_keys file at ``path`` listing the public halves (``KEY.pub``) of
    ``keys``, private to its owner: like sshd's StrictModes, the gateway ignores a
    writable one."""
    path.write_text("".join(Path(str(key) + ".pub").read_text() for key in keys))
    path.chmod(0o600)
    return path


def keyed_config(workdir: Path, **extra) -> tuple[dict, Path]:
    """:func:`base_config` for alice with a fresh ed25519 key (made in ``workdir``) in
    her authorized_keys; returns the config and the key."""
    key = keygen(workdir / "alice_id")
    authorized = write_authorized_keys(workdir / "authorized_keys", key)
    return base_config(hash_password(), authorized, **extra), key


def base_config(password_hash: str, authorized_keys: Path, **extra) -> dict:
    """A dual-stack gateway config with one user, alice, who logs in with PASSWORD (as
    ``password_hash``) or any key in ``authorized_keys`` and reaches ``local`` as the tests'
    own OS account; ``extra`` adds or replaces top-level settings.

    Penalties are off, as OpenSSH's regression suite turns ``PerSourcePenalties`` off:
    one gateway serves a whole module's tests from 127.0.0.1, hostile ones included, and
    their penalties would refuse the tests after them. tests/integration/
    test_limits_peers.py tests them (``limits`` replaces this table)."""
    config = {
        "protocols": ["1", "2"],
        "version_timeout": 5,
        "auth": {"failure_delay": 0.2, "grace_time": 30, "max_attempts": 6},
        "limits": {"penalties": False},
        "users": {
            "alice": {
                "password": password_hash,
                "authorized_keys": str(authorized_keys),
                "auth": "any",
                **local_access(),
            },
        },
    }
    config.update(extra)
    return config


def one_target_config(authorized_keys: Path, name: str, target: dict) -> dict:
    """base_config (password PASSWORD) with one ``[targets.NAME]``, the only one alice may
    reach."""
    config = base_config(hash_password(), authorized_keys, targets={name: target})
    config["users"]["alice"]["targets"] = [name]
    if target.get("protocol") != "local":
        del config["users"]["alice"]["os_user"]  # nothing of hers runs on the gateway host
    return config


@contextmanager
def ssh2_device(workdir: Path) -> Iterator[tuple[OpenSSHServer, dict]]:
    """A real OpenSSH sshd on loopback (tests.support.sshd) that lets root in with a fresh key of
    the gateway's, and the ``[targets.NAME]`` entry that logs in to it with that key."""
    device_key = keygen(workdir / "gateway_to_device")
    with OpenSSHServer(workdir / "sshd", [Path(str(device_key) + ".pub")]) as device:
        target = {
            "protocol": "ssh2", "host": "127.0.0.1", "port": device.port, "username": "root",
            "key": str(device_key), "connect_timeout": 20,
        }  # fmt: skip
        yield device, target


def ssh1_fingerprint(gw: GatewayProcess) -> str:
    """The gateway's SSH-1 host key fingerprint (MD5 colon-hex), as plink shows it and
    ``plink -hostkey`` takes it, from ``sshgateway fingerprints``."""
    return ssh1_fingerprints(gw)[1]


def ssh1_fingerprints(gw: GatewayProcess) -> tuple[str, str]:
    """The gateway's SSH-1 host key fingerprints from ``sshgateway fingerprints``:
    ``SHA256:…`` (as OpenSSH's ``ssh1 -v`` shows it) and MD5 colon-hex (as plink does)."""
    out = sshgateway_cli("fingerprints", "--state-dir", gw.config["state_dir"]).stdout
    match = re.search(
        r"^SSH-1 rsa1 (\d+) (SHA256:[A-Za-z0-9+/]{43}) MD5:([0-9a-f:]{47})$", out, re.M
    )
    assert match, out
    return match.group(2), match.group(3)


def ssh2_fingerprint(gw: GatewayProcess, kind: str = "ed25519") -> str:
    """The SHA256 fingerprint of the gateway's SSH-2 host key of ``kind``."""
    out = sshgateway_cli("fingerprints", "--state-dir", gw.config["state_dir"]).stdout
    for line in out.splitlines():
        if kind in line.lower():
            found = re.search(r"SHA256:[A-Za-z0-9+/]+", line)
            if found:
                return found.group(0)
    raise AssertionError(f"no {kind} SHA256 fingerprint in:\n{out}")


def ssh_argv(
    gw: GatewayProcess, key: Path | None, *args: str, user: str = "alice", batch: bool = True
) -> list[str]:
    """OpenSSH ``ssh`` to the gateway as ``user`` with ``key`` (if any), not checking or
    keeping the host key; ``args`` (options, then the command) follow the destination.
    ``batch=False`` lets it ask for a password (through sshpass)."""
    return openssh_argv("ssh", gw, key, batch=batch) + [f"{user}@127.0.0.1", *args]


def openssh_argv(
    program: str, gw: GatewayProcess, key: Path | None, *, batch: bool = True
) -> list[str]:
    """OpenSSH ``ssh``, ``scp`` or ``sftp`` with the options for the gateway (its port,
    ``key`` if any, the host key neither checked nor kept); the destination and the rest
    follow."""
    tools = require_peer(program)
    argv = [tools[program], "-F", "/dev/null"]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    argv += [
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=10",
        "-p" if program == "ssh" else "-P", str(gw.port),
    ]  # fmt: skip
    if key is not None:
        argv += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    return argv


def plink1_argv(
    gw: GatewayProcess,
    *args: str,
    user: str = "alice",
    password: str | None = PASSWORD,
    fingerprint: str | None = None,
    load: str | None = None,
) -> list[str]:
    """PuTTY ``plink`` speaking SSH-1 to the gateway as ``user``, pinned to its SSH-1 host
    key (``fingerprint``, else asked of ``sshgateway fingerprints``). ``args`` are plink
    options, then the command. ``load`` names a saved session (tests.support.peers.
    putty_cipher_session) instead of ``-1``: that session names the host, so no host
    argument is given (it would become the command) and the command may be left out."""
    tools = require_peer("plink")
    argv = [tools["plink"], "-batch", *(["-load", load] if load else ["-1"])]
    argv += ["-hostkey", fingerprint or ssh1_fingerprint(gw), "-P", str(gw.port)]
    if password is not None:
        argv += ["-pw", password]
    if load:
        return argv + ["-l", user, *args]
    return argv + [*args[:-1], f"{user}@127.0.0.1", args[-1]]


def run_plink1(
    gw: GatewayProcess, command: str, user: str = "alice", status: int = 0
) -> subprocess.CompletedProcess:
    """Run ``command`` through ``plink -1`` (password login) and check its exit status;
    the result has text output."""
    result = subprocess.run(
        plink1_argv(gw, command, user=user), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == status, result.stderr + gw.log_text()[-3000:]
    return result


# OpenSSH 7.5's ssh1 builds its SSH-1 ciphers on single DES, which OpenSSL 3 keeps in the
# legacy provider: this config (via OPENSSL_CONF) activates it beside the default one.
OPENSSL_LEGACY = """openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
legacy = legacy_sect
[default_sect]
activate = 1
[legacy_sect]
activate = 1
"""


def ssh1_argv(gw: GatewayProcess, tmp_path: Path, program: str, *args: str) -> tuple[list[str], dict]:
    """OpenSSH 7.5's ``ssh1`` or ``scp1`` speaking SSH-1 to the gateway, not reading the
    system's ssh_config, keeping host keys in ``tmp_path``; ``args`` follow (options,
    destination, command). Returns argv and the environment (OPENSSL_CONF) to run it with."""
    tools = require_peer(program)
    conf = tmp_path / "openssl-legacy.cnf"
    conf.write_text(OPENSSL_LEGACY)
    env = dict(os.environ, OPENSSL_CONF=str(conf))
    port_flag = "-P" if program == "scp1" else "-p"
    argv = [tools[program], "-1", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", port_flag, str(gw.port),
            *args]  # fmt: skip
    return argv, env


def plink2_argv(
    gw: GatewayProcess, *args: str, user: str = "alice", password: str = PASSWORD
) -> list[str]:
    """PuTTY ``plink`` speaking SSH-2 to the gateway with a password, pinned to its
    ed25519 host key; ``args`` is the command."""
    tools = require_peer("plink")
    return [
        tools["plink"], "-ssh", "-2", "-batch",
        "-hostkey", ssh2_fingerprint(gw),
        "-P", str(gw.port), "-pw", password, f"{user}@127.0.0.1", *args,
    ]  # fmt: skip


def peak_rss_growth_kib(gw: GatewayProcess, argv: list[str], seconds: float = 8) -> int:
    """Run a client that reads its output at about 100 KB/s; return the gateway's peak
    resident-memory growth meanwhile."""
    before = peak = gw.rss_kib()
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    received = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            received += len(client.stdout.read(10_000))
            time.sleep(0.1)
            peak = max(peak, gw.rss_kib())
    finally:
        client.kill()
        client.wait(10)
    # A session that sent nothing would prove nothing about buffering.
    assert received >= seconds * 50_000, f"the client read only {received} bytes"
    return peak - before


def assert_memory_levels_off(gw: GatewayProcess, start_client: Callable[[], subprocess.Popen]):
    """Start a client whose session would buffer without bound if the gateway ignored
    back-pressure (a reader that never reads, or a program that never reads its input);
    the gateway's resident memory must grow less than 32 MiB in 7 s and less than 4 MiB
    in the last 3 of them."""
    before = gw.rss_kib()
    client = start_client()
    try:
        time.sleep(4)
        mid = gw.rss_kib()
        time.sleep(3)
        after = gw.rss_kib()
    finally:
        client.kill()
        client.wait(10)
    assert after - before < 32 * 1024, (before, mid, after)
    assert after - mid < 4 * 1024, (before, mid, after)
