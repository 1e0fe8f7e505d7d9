"""paramiko and asyncssh as SSH-2 clients of a real gateway (tests.support.gateway_process),
pinned to the gateway's host keys as ``sshgateway fingerprints`` prints them.

Both libraries check the host key after the key exchange and before authentication:
paramiko through a ``MissingHostKeyPolicy``, asyncssh through its client's
``validate_host_public_key``. A key whose SHA256 fingerprint is not the gateway's ends the
connection there.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from tests.support.clients import sshgateway_cli
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_module


def gateway_fingerprints(gw: GatewayProcess) -> set[str]:
    """The SHA256 fingerprints of the gateway's SSH-2 host keys."""
    out = sshgateway_cli("fingerprints", "--state-dir", gw.config["state_dir"]).stdout
    found = set(re.findall(r"SHA256:[A-Za-z0-9+/]+", out))
    assert found, out
    return found


def bound_socket(
    gw: GatewayProcess, source: str = "127.0.0.1", timeout: float = 10.0
) -> socket.socket:
    """A TCP connection to the gateway from ``source`` (any 127.0.0.0/8 address)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", gw.port))
    return sock


def paramiko_client(
    gw: GatewayProcess,
    *,
    source: str = "127.0.0.1",
    user: str = "alice",
    fingerprints: set[str] | None = None,
    **connect: Any,
) -> Any:
    """A paramiko ``SSHClient`` logged in to the gateway from ``source``; ``connect`` goes
    to ``SSHClient.connect`` (``password=``, ``key_filename=``...). No agent, no keys
    from ~/.ssh: only what the test passes. ``fingerprints`` are the pinned host keys'
    (:func:`gateway_fingerprints`, asked of the admin command when not given)."""
    paramiko = require_module("paramiko")
    pinned = fingerprints if fingerprints is not None else gateway_fingerprints(gw)

    class PinnedHostKey(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            if key.fingerprint not in pinned:
                raise paramiko.SSHException(f"host key {key.fingerprint} is not the gateway's")

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(PinnedHostKey())
    connect.setdefault("timeout", 20)
    connect.setdefault("banner_timeout", 20)
    connect.setdefault("auth_timeout", 20)
    try:
        client.connect(
            "127.0.0.1", gw.port, username=user, sock=bound_socket(gw, source),
            allow_agent=False, look_for_keys=False, **connect,
        )  # fmt: skip
    except BaseException:
        client.close()
        raise
    return client


async def asyncssh_connect(
    gw: GatewayProcess,
    *,
    source: str = "127.0.0.1",
    user: str = "alice",
    client_factory: Any = None,
    **options: Any,
) -> Any:
    """An asyncssh connection to the gateway from ``source``; ``options`` go to
    ``asyncssh.connect`` (``password=``, ``client_keys=``...). ``client_factory`` must
    make a subclass of :func:`pinned_asyncssh_client`'s class, or is made here."""
    asyncssh = require_module("asyncssh")
    factory = client_factory or pinned_asyncssh_client(gw)
    options.setdefault("client_keys", None)
    options.setdefault("agent_path", None)
    options.setdefault("connect_timeout", 20)
    options.setdefault("login_timeout", 20)
    return await asyncssh.connect(
        "127.0.0.1", gw.port, username=user, local_addr=(source, 0),
        known_hosts=([], [], []), client_factory=factory, **options,
    )  # fmt: skip


def pinned_asyncssh_client(gw: GatewayProcess, fingerprints: set[str] | None = None) -> type:
    """An ``asyncssh.SSHClient`` class that trusts only the gateway's host keys."""
    asyncssh = require_module("asyncssh")
    pinned = fingerprints if fingerprints is not None else gateway_fingerprints(gw)

    class PinnedClient(asyncssh.SSHClient):
        def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
            return key.get_fingerprint("sha256") in pinned

    return PinnedClient
