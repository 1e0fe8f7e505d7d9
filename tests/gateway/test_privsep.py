"""The start sequence around the privilege drop, in memory: endpoints bound in
privilegedStartService (before twistd's --uid switch), then the state directory given to
the account, the spawner started, the drop done; the ``run_as`` key and its checks."""

from __future__ import annotations

import io
import os
import pwd
import stat
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from gateway import privsep
from gateway.config import ConfigError, parse_config
from gateway.service import GatewayService, make_service, privilege_drop
from gateway.targets import launchers
from tests.support.accounts import require_root
from tests.support.gateway_helpers import LOCAL_ACCESS
from tools.cli import main as cli_main

NOBODY = pwd.getpwnam("nobody")


def config_text(tmp_path: Path, extra: str = "", local: str = LOCAL_ACCESS) -> str:
    return f'''
listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"]
state_dir = "{tmp_path / "state"}"
{extra}
[users.alice]
authorized_keys = "{tmp_path / "authorized_keys"}"
{local}'''


def config_for(tmp_path: Path, extra: str = "", local: str = LOCAL_ACCESS):
    return parse_config(config_text(tmp_path, extra, local), "test.toml", tmp_path)


def test_endpoints_are_bound_before_the_privilege_drop(tmp_path):
    # twistd calls privilegedStartService, then switches to --uid, then startService: a
    # port below 1024 can only be bound in the first.
    reactor = MemoryReactorClock()
    top = make_service(config_for(tmp_path), reactor)
    top.privilegedStartService()
    try:
        assert [iface for _, _, _, iface in reactor.tcpServers] == ["127.0.0.1", "127.0.0.2"]
        top.startService()
        assert len(reactor.tcpServers) == 2  # not bound twice
    finally:
        top.stopService()


class RecordingDrop:
    """A PrivilegeDrop double that records the order of the steps."""

    def __init__(self, steps: list[str], reactor: MemoryReactorClock) -> None:
        self.steps = steps
        self.reactor = reactor
        self.account = privsep.Account("gwrun", 4242, 4242, ())
        self.self_drop = True
        self.needed = True

    def prepare(self) -> None:
        self.steps.append(f"prepare after {len(self.reactor.tcpServers)} listeners")

    def spawner_accounts(self):
        return {"gwrun"}, False

    def drop(self) -> None:
        self.steps.append("drop")


def test_listen_then_prepare_then_spawner_then_drop(tmp_path, monkeypatch):
    reactor = MemoryReactorClock()
    top = make_service(config_for(tmp_path), reactor)
    assert isinstance(top, GatewayService) and top.local_target is not None
    steps: list[str] = []
    top.drop = RecordingDrop(steps, reactor)
    spawner = object()

    def start(reactor_, accounts, allow_root, grace):
        steps.append(f"spawner for {sorted(accounts)} root={allow_root}")
        return spawner

    monkeypatch.setattr(launchers.SpawnerLauncher, "start", start)
    top.privilegedStartService()
    top.stopService()
    assert steps == ["prepare after 2 listeners", "spawner for ['gwrun'] root=False", "drop"]
    assert top.local_target.launcher is spawner


def test_drop_failure_is_one_line(tmp_path):
    reactor = MemoryReactorClock()
    top = make_service(config_for(tmp_path), reactor)
    drop = RecordingDrop([], reactor)

    def cannot() -> None:
        raise PermissionError(13, "Permission denied", "/srv/state")

    drop.prepare = cannot
    top.drop = drop
    with pytest.raises(
        SystemExit, match=r"^sshgateway: cannot run as gwrun: /srv/state: Permission"
    ):
        top.privilegedStartService()
    top.stopService()


def test_run_as_is_the_gateways_own_drop(tmp_path):
    drop = privilege_drop(config_for(tmp_path, 'run_as = "nobody"'))
    assert drop.self_drop and drop.account.uid == NOBODY.pw_uid
    assert drop.account.groups == tuple(os.getgrouplist("nobody", NOBODY.pw_gid))
    assert privilege_drop(config_for(tmp_path)) is None


def test_twistd_uid_is_twistds_drop(tmp_path):
    drop = privilege_drop(config_for(tmp_path), uid=NOBODY.pw_uid)
    assert not drop.self_drop
    assert (drop.account.name, drop.account.gid) == ("nobody", NOBODY.pw_gid)  # as twistd
    with pytest.raises(SystemExit, match="disagree"):
        privilege_drop(config_for(tmp_path, 'run_as = "root"'), uid=NOBODY.pw_uid)


def test_spawner_takes_the_os_user_accounts_and_its_own(tmp_path):
    drop = privsep.PrivilegeDrop(
        privsep.account_named("nobody"), tmp_path, self_drop=True, local_accounts={"daemon"}
    )
    assert drop.spawner_accounts() == ({"nobody", "daemon"}, False)
    drop.local_accounts = {"daemon", "root"}  # named explicitly: then uid 0 may be asked for
    assert drop.spawner_accounts()[1] is True


def test_unknown_run_as_account_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        config_for(tmp_path, 'run_as = "no-such-account-xyz"')
    assert "test.toml:4: run_as: no such account 'no-such-account-xyz'" in str(error.value)


def test_run_as_another_account_needs_root(tmp_path, monkeypatch):
    monkeypatch.setattr(privsep.os, "geteuid", lambda: NOBODY.pw_uid)
    as_nobody = 'targets = ["local"]\nos_user = "nobody"\n'
    with pytest.raises(ConfigError, match="only a gateway started as root can run as 'root'"):
        config_for(tmp_path, 'run_as = "root"', as_nobody)
    assert config_for(tmp_path, 'run_as = "nobody"', as_nobody).run_as == "nobody"  # its own


def test_check_config_reports_run_as(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(tmp_path, 'run_as = "no-such-account-xyz"'))
    out = io.StringIO()
    status = cli_main(["check-config", str(path)], stdout=out, stderr=out)
    assert status == 1
    assert "run_as: no such account 'no-such-account-xyz'" in out.getvalue()


def test_state_dir_is_given_to_the_account_but_not_the_host_keys(tmp_path):
    require_root()
    state = tmp_path / "state"
    (state / "flows").mkdir(parents=True)
    (state / "flows" / "flows.jsonl").write_text("")
    (state / "known_hosts").write_text("")
    (state / "ssh_host_ed25519_key").write_text("key")
    (state / "ssh_host_ed25519_key").chmod(0o600)
    outside = tmp_path / "outside"
    outside.write_text("")
    (state / "link").symlink_to(outside)
    drop = privsep.PrivilegeDrop(
        privsep.account_named("nobody"), state, self_drop=True, flows_dir=state / "flows"
    )
    drop.prepare()
    for path in (state, state / "flows", state / "flows" / "flows.jsonl", state / "known_hosts"):
        assert path.stat().st_uid == NOBODY.pw_uid, path
    key = (state / "ssh_host_ed25519_key").stat()
    assert (key.st_uid, stat.S_IMODE(key.st_mode)) == (0, 0o600)
    assert outside.stat().st_uid == 0  # a link is not followed
