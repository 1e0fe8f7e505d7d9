"""The server's own re-keying: after ``rekey_limit`` bytes or ``rekey_interval`` seconds
it starts a key exchange; the session goes on, byte for byte, with plain and strict
clients. (OpenSSH as the client: test_rekey_peers.)"""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from twisted.conch.ssh import common

from protocols.ssh2.settings import SSH2Settings
from tests.support.clients import keyed_config, ssh_argv
from tests.support.gateway_process import GatewayProcess
from tests.support.ssh2.harness import wire


def session_on(w):
    session = w.open_session()
    session.request(b"exec", common.NS(b"cat"))
    w.flush()
    return session, w.portal.users["alice"].targets[-1]


@pytest.mark.parametrize("strict", [False, True])
def test_re_keys_after_rekey_limit_bytes_and_the_data_goes_on(strict):
    w = wire(settings=SSH2Settings(rekey_limit=64 * 1024), strict=strict)
    session_id = w.transport.sessionID
    session, target = session_on(w)
    sent = bytearray()
    for _ in range(24):
        chunk = os.urandom(16 * 1024)
        target.client.write_stdout(chunk)
        sent += chunk
        w.flush()
    assert bytes(session.out) == bytes(sent)
    assert w.transport.key_exchanges >= 5  # the first one and at least four more
    assert w.transport.sessionID == session_id  # a re-key keeps the session id
    assert w.client.disconnect is None


def test_re_keys_after_rekey_interval():
    w = wire(settings=SSH2Settings(rekey_interval=600))
    session, target = session_on(w)
    assert w.transport.key_exchanges == 1
    w.advance(599)
    assert w.transport.key_exchanges == 1
    w.advance(2)
    assert w.transport.key_exchanges == 2
    target.client.write_stdout(b"still here")
    w.flush()
    assert bytes(session.out) == b"still here"


def test_no_re_key_before_the_first_key_exchange_or_during_one():
    w = wire(login=False, settings=SSH2Settings(rekey_limit=64 * 1024))
    transport = w.transport
    transport.sendKexInit()  # one of ours is now running
    state = transport._keyExchangeState
    transport.rekey()  # must not start a second one
    assert transport._keyExchangeState == state
    w.flush()
    assert w.client.disconnect is None and transport.key_exchanges == 2


@pytest.mark.peer
def test_openssh_session_through_server_initiated_re_keys(tmp_path):
    config, key = keyed_config(tmp_path, ssh2={"rekey_limit": 256 * 1024})
    (tmp_path / "gw").mkdir()
    data = os.urandom(2 << 20)
    with GatewayProcess(tmp_path / "gw", config) as gw:
        argv = ssh_argv(gw, key, "-v", "cat")
        result = subprocess.run(argv, input=data, capture_output=True, timeout=120)
    log = result.stderr.decode(errors="replace")
    assert result.returncode == 0, log[-2000:]
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
    # OpenSSH's own RekeyLimit is far away: these key exchanges are the gateway's.
    assert log.count("SSH2_MSG_KEXINIT received") >= 8
