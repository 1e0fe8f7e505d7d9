"""paramiko and asyncssh against a real gateway process (SSH-2 front): exec with output
and exit status, a pty, key and password logins, and paramiko's key-then-password
fallback (a new SERVICE_REQUEST ssh-userauth before the password)."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.support.clients import PASSWORD
from tests.support.peers import require_module
from tests.support.python_clients import asyncssh_connect, paramiko_client
from tests.support.sshd import keygen

pytestmark = pytest.mark.peer

EXEC = "echo hi; echo err >&2; exit 3"


@pytest.fixture(scope="module")
def unlisted_key(tmp_path_factory):
    """A key that is in nobody's authorized_keys."""
    return keygen(tmp_path_factory.mktemp("unlisted") / "id_unlisted")


def paramiko_exec(client, command: str, **kw) -> tuple[bytes, bytes, int]:
    _stdin, stdout, stderr = client.exec_command(command, timeout=30, **kw)
    out, err = stdout.read(), stderr.read()
    return out, err, stdout.channel.recv_exit_status()


def login_lines(gw, local_port: int) -> list[str]:
    """The gateway's auth log lines for the connection from ``local_port``."""
    return [
        line for line in gw.log_text().splitlines()
        if re.search(rf":{local_port}\b.*(failed|logged in)", line)
    ]  # fmt: skip


# --- paramiko -------------------------------------------------------------------------------


def test_paramiko_password_exec_and_exit_status(gateway):
    client = paramiko_client(gateway, password=PASSWORD)
    with client:
        assert paramiko_exec(client, EXEC) == (b"hi\n", b"err\n", 3)


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_paramiko_key_login(gateway, client_keys, kind):
    client = paramiko_client(gateway, key_filename=str(client_keys[kind]))
    with client:
        assert paramiko_exec(client, "echo key") == (b"key\n", b"", 0)


def test_paramiko_pty_with_its_size(gateway):
    client = paramiko_client(gateway, password=PASSWORD)
    with client:
        channel = client.get_transport().open_session(timeout=20)
        channel.get_pty(term="xterm", width=100, height=30)
        channel.exec_command("tty; stty size; echo $TERM")
        out = b""
        while True:
            chunk = channel.recv(4096)
            if not chunk:
                break
            out += chunk
        assert channel.recv_exit_status() == 0
    lines = out.decode().splitlines()
    assert re.match(r"/dev/pts/\d+$", lines[0]), lines
    assert lines[1:] == ["30 100", "xterm"]


def test_paramiko_refused_key_falls_back_to_password(gateway, unlisted_key):
    # paramiko sends SERVICE_REQUEST ssh-userauth again before the password; the gateway
    # used to disconnect it with "service already running".
    client = paramiko_client(gateway, key_filename=str(unlisted_key), password=PASSWORD)
    with client:
        local_port = client.get_transport().sock.getsockname()[1]
        assert paramiko_exec(client, "echo fallback") == (b"fallback\n", b"", 0)
    lines = login_lines(gateway, local_port)
    assert len(lines) == 2, lines
    assert "failed publickey for 'alice'" in lines[0]
    assert "logged in as 'alice' with password" in lines[1]


def test_paramiko_wrong_password_is_refused(gateway):
    paramiko = require_module("paramiko")
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(gateway, password="wrong")


# --- asyncssh -------------------------------------------------------------------------------


async def asyncssh_run(gw, command: str, **options):
    async with await asyncssh_connect(gw, **options) as conn:
        return await conn.run(command, check=False)


def test_asyncssh_password_exec_and_exit_status(gateway):
    result = asyncio.run(asyncssh_run(gateway, EXEC, password=PASSWORD))
    assert (result.stdout, result.stderr, result.exit_status) == ("hi\n", "err\n", 3)


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_asyncssh_key_login(gateway, client_keys, kind):
    result = asyncio.run(asyncssh_run(gateway, "echo key", client_keys=[str(client_keys[kind])]))
    assert (result.stdout, result.exit_status) == ("key\n", 0)


def test_asyncssh_pty_with_its_size(gateway):
    result = asyncio.run(
        asyncssh_run(
            gateway, "tty; stty size; echo $TERM", password=PASSWORD,
            term_type="xterm", term_size=(100, 30),
        )
    )  # fmt: skip
    assert result.exit_status == 0
    lines = result.stdout.replace("\r", "").splitlines()
    assert re.match(r"/dev/pts/\d+$", lines[0]), lines
    assert lines[1:] == ["30 100", "xterm"]


def test_asyncssh_refused_key_then_password(gateway, unlisted_key):
    result = asyncio.run(
        asyncssh_run(gateway, "echo fallback", client_keys=[str(unlisted_key)], password=PASSWORD)
    )
    assert (result.stdout, result.exit_status) == ("fallback\n", 0)


def test_asyncssh_wrong_password_is_refused(gateway):
    asyncssh = require_module("asyncssh")
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(asyncssh_run(gateway, "true", password="wrong"))
