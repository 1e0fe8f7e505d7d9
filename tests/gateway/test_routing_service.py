"""The service builds every target behind one Router and hands it to the realm."""

from __future__ import annotations

import os

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher

from gateway.config import load_config
from gateway.routing import Router
from gateway.service import TargetsService, make_service
from gateway.targets.local import LocalTarget
from tests.support.gateway_helpers import OWN_ACCOUNT, fast_hash


def write_config(tmp_path, targets: str, mode: int = 0o600):
    path = tmp_path / "gw.toml"
    path.write_text(
        f"""
listen = ["tcp:0:interface=127.0.0.1"]
state_dir = "{tmp_path / "state"}"

[users.alice]
password = "{fast_hash("pw")}"
targets = ["local", "dev1"]
os_user = "{OWN_ACCOUNT}"
{targets}
"""
    )
    os.chmod(path, mode)
    return load_config(path)


SSH1_TARGET = '[targets.dev1]\nprotocol = "ssh1"\nhost = "127.0.0.1"\npassword = "device-pw"\n'


def router_of(top) -> Router:
    [service] = [s for s in top if isinstance(s, TargetsService)]
    return service.targets


def test_service_routes_through_the_router(tmp_path):
    top = make_service(write_config(tmp_path, SSH1_TARGET), MemoryReactorClock())
    router = router_of(top)
    assert isinstance(router, Router) and isinstance(router.targets["local"], LocalTarget)
    pytest.importorskip("gateway.targets.ssh1")
    assert type(router.targets["dev1"]).__name__ == "SSH1Target"


def test_a_target_rejected_at_start_stops_the_service(tmp_path):
    pytest.importorskip("gateway.targets.ssh1")
    key = tmp_path / "missing-key"
    config = write_config(
        tmp_path, f'[targets.dev1]\nprotocol = "ssh1"\nhost = "127.0.0.1"\nkey = "{key}"\n'
    )
    with pytest.raises(SystemExit, match="dev1"):
        make_service(config, MemoryReactorClock())


def test_start_up_warns_about_a_readable_file_with_passwords(tmp_path):
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        make_service(write_config(tmp_path, SSH1_TARGET, mode=0o644), MemoryReactorClock())
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "\n".join(formatEvent(e) for e in events)
    assert "holds upstream passwords" in text and "chmod 600" in text
    assert "device-pw" not in text
