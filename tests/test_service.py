"""Service construction in memory: listeners, options, start-up errors, shutdown."""

from __future__ import annotations

import os

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from gateway.config import parse_config
from gateway.dispatch import DispatcherFactory
from gateway.service import Options, make_service
from tests.support.gateway_helpers import LOCAL_ACCESS


def config_for(tmp_path, extra: str = ""):
    text = f'''
listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"]
state_dir = "{tmp_path / 'state'}"
protocols = ["1", "2"]
{extra}
[users.alice]
authorized_keys = "{tmp_path / 'authorized_keys'}"
{LOCAL_ACCESS}'''
    return parse_config(text, "test.toml", tmp_path)


def test_listens_on_every_endpoint_with_one_dispatcher(tmp_path):
    reactor = MemoryReactorClock()
    top = make_service(config_for(tmp_path), reactor)
    top.startService()
    try:
        assert [(port, iface) for port, _, _, iface in reactor.tcpServers] == [
            (0, "127.0.0.1"),
            (0, "127.0.0.2"),
        ]
        factories = {id(factory) for _, factory, _, _ in reactor.tcpServers}
        assert len(factories) == 1
        factory = reactor.tcpServers[0][1]
        assert isinstance(factory, DispatcherFactory)
        assert set(factory.handoffs) == {"ssh1", "ssh2"}
        assert factory.server_version.startswith(b"SSH-1.99-sshgateway_")
    finally:
        top.stopService()
    mode = os.stat(tmp_path / "state" / "ssh_host_ed25519_key").st_mode & 0o777
    assert mode == 0o600


def test_ssh2_only_announces_2_0(tmp_path):
    reactor = MemoryReactorClock()
    config = config_for(tmp_path)
    import dataclasses

    top = make_service(dataclasses.replace(config, protocols=("2",)), reactor)
    top.startService()
    try:
        factory = reactor.tcpServers[0][1]
        assert set(factory.handoffs) == {"ssh2"}
        assert factory.server_version.startswith(b"SSH-2.0-")
    finally:
        top.stopService()


def test_bad_config_is_a_usage_error_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('listen = ["tcp:2222"]\nprotocol = ["1"]\n')
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions(["--config", str(bad)])
    assert "protocol" in str(info.value) and ":2" in str(info.value)


def test_missing_config_file_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--config", str(tmp_path / "nope.toml")])


def test_exposed_host_key_stops_startup_cleanly(tmp_path):
    reactor = MemoryReactorClock()
    make_service(config_for(tmp_path), reactor)  # creates the keys
    key = tmp_path / "state" / "ssh_host_ed25519_key"
    key.chmod(0o644)
    with pytest.raises(SystemExit) as info:
        make_service(config_for(tmp_path), reactor)
    assert "chmod 600" in str(info.value)
