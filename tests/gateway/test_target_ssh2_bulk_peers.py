"""The gateway's SSH-2 client under bulk data from a real peer other than OpenSSH: paramiko
as the device, its shell copying the input back, 2 MiB (and an odd tail) through it under
each packet protection both offer, with the client re-keying every 256 KiB. paramiko
writes its packets its own way (one ``sendall`` each, its own padding), so the receive
buffer (SSH2TransportBase.take_message) meets reads cut where TCP cuts them, not where
OpenSSH's would; tests/ssh2/test_receive_buffer.py cuts them everywhere in memory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gateway.known_hosts import KnownHosts
from gateway.targets import TargetConfig
from gateway.targets.ssh2 import SSH2Target
from protocols.session import SessionRequest
from tests.support.doubles import FakeSessionClient
from tests.support.paramiko_device import DeviceBehaviour, ParamikoDevice
from tests.support.sshd import close_reactor, fresh_reactor, run_until

pytestmark = pytest.mark.peer
TIMEOUT = 60


@pytest.fixture
def reactor():
    r = fresh_reactor()
    yield r
    close_reactor(r)


@pytest.mark.parametrize(
    ("cipher", "mac"),
    [
        ("aes128-ctr", "hmac-sha2-256"),
        ("aes256-ctr", "hmac-sha2-512-etm@openssh.com"),
        ("aes256-gcm@openssh.com", "hmac-sha2-256"),
        ("aes128-cbc", "hmac-sha1"),
        ("3des-cbc", "hmac-md5"),
    ],
)  # fmt: skip
def test_bulk_data_both_ways_through_paramiko(reactor, tmp_path: Path, monkeypatch, cipher, mac):
    from protocols.ssh2.rekey import RekeyingTransport

    monkeypatch.setattr(RekeyingTransport, "rekey_limit", 256 * 1024)
    data = os.urandom(2 * 1024 * 1024 + 13)
    with ParamikoDevice(DeviceBehaviour(password="secret", shell_cat=True)) as device:
        config = TargetConfig(
            name="dev", protocol="ssh2", host="127.0.0.1", port=device.port,
            username="admin", password="secret", connect_timeout=20.0,
            ciphers=(cipher,), macs=(mac,),
        )  # fmt: skip
        target = SSH2Target(reactor, config, KnownHosts(tmp_path / "kh"))
        client = FakeSessionClient()
        session = target.open_session("alice", SessionRequest(), client)
        assert run_until(reactor, lambda: session.upstream is not None or client.exit, TIMEOUT)
        assert session.upstream is not None, bytes(client.err)
        assert f"cipher={cipher} " in session.upstream.description
        transport = session.upstream.channel.attempt.transport
        session.write_stdin(data)
        session.close_stdin()
        assert run_until(reactor, lambda: client.exit is not None, TIMEOUT), len(client.out)
    assert hashlib.sha256(bytes(client.out)).digest() == hashlib.sha256(data).digest()
    assert transport.key_exchanges > 4  # re-keyed mid-stream, both directions counted
