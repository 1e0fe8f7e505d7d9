"""The handshake benchmark's clients (bench.handshakes) against a real gateway process:
the SSH-1 one gets as far as the server's SSH_SMSG_SUCCESS for the session key, and one
``ssh-keyscan`` batch counts each SSH-2 key exchange that ended in the host key. The
benchmark itself is not run by the test suite."""

from __future__ import annotations

import pytest

from bench.handshakes import keyscan_batch, ssh1_handshake
from tests.support.gateway_process import GatewayProcess, local_access
from tests.support.peers import require_peer


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("handshakes")
    (work / "authorized_keys").write_text("")
    config = {
        "protocols": ["1", "2"],
        "users": {"bench": {"authorized_keys": str(work / "authorized_keys"), **local_access()}},
    }
    with GatewayProcess(work, config) as gw:
        yield gw


def test_ssh1_handshake_reaches_the_session_key_accepted(gateway):
    assert ssh1_handshake(gateway.port)
    gateway.wait_for_log(r"connection closed: .*protocol=ssh1 .*cipher=3des")


@pytest.mark.peer
def test_keyscan_batch_counts_ssh2_key_exchanges(gateway, tmp_path):
    require_peer("ssh-keyscan")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\n" * 3)
    assert keyscan_batch(gateway.port, "ed25519", hosts) == (3, 0)
    gateway.wait_for_log(r"connection closed: .*client='SSH-2.0-OpenSSH-keyscan'")


def test_a_refused_ssh1_handshake_is_not_counted(tmp_path):
    work = tmp_path
    (work / "authorized_keys").write_text("")
    config = {
        "protocols": ["2"],
        "users": {"bench": {"authorized_keys": str(work / "authorized_keys"), **local_access()}},
    }
    with GatewayProcess(work, config) as gw:
        assert not ssh1_handshake(gw.port)
