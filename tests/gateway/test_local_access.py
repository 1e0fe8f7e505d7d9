"""Who reaches ``local``, as which OS account, with which environment — in memory.

The config rules (nothing granted by default, ``os_user`` required with ``local``, which
accounts a root and a non-root gateway may name), the routing that passes the account on,
and the launch description (:class:`gateway.targets.launch.LaunchSpec`) with sshd's
environment. The real thing, as root with a test account and real clients, is in
tests/integration/test_local_accounts_peers.py.
"""

from __future__ import annotations

import grp
import os
import pwd

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway.config import (
    ConfigError,
    LocalAccounts,
    default_config,
    own_account,
    parse_config,
)
from gateway.routing import RefusedSession, Router
from gateway.targets import local, spawner
from gateway.targets.launch import LaunchSpec
from gateway.targets.local import (
    SUPERUSER_PATH,
    USER_PATH,
    connection_variables,
    launch_spec,
    session_environment,
)
from protocols.session import (
    ConnectionAddresses,
    PtyRequest,
    SessionRequest,
    WindowSize,
    addresses_of,
)
from tests.support.doubles import FakeSessionClient, fake_targets
from tests.support.gateway_helpers import OWN_ACCOUNT, ROUTED_TARGETS, fast_hash

HASH = fast_hash("pw")

# A host as the config check sees it: accounts root, alice and gw (the gateway's own).
KNOWN = {"root", "alice", "gw"}
AS_ROOT = LocalAccounts(privileged=True, own="root", exists=KNOWN.__contains__)
AS_GW = LocalAccounts(privileged=False, own="gw", exists=KNOWN.__contains__)


def user(body: str, name: str = "alice") -> str:
    return f'[users.{name}]\npassword = "{HASH}"\n{body}'


def problems(text: str, accounts: LocalAccounts = AS_ROOT) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.toml", accounts=accounts)
    return [str(p) for p in info.value.problems]


def only_problem(text: str, accounts: LocalAccounts = AS_ROOT) -> str:
    found = problems(text, accounts)
    assert len(found) == 1, found
    return found[0]


# --- the config ------------------------------------------------------------------------------


def test_a_user_without_targets_is_an_error_that_says_why():
    found = only_problem(user(""))
    assert found.startswith("gw.toml:1: users.alice: has no targets: nothing is granted by default")
    assert 'targets = ["local"] with os_user' in found


def test_a_user_without_targets_is_an_error_even_with_an_os_user():
    found = only_problem(user('os_user = "alice"\n'))
    assert "users.alice: has no targets" in found


def test_local_needs_an_os_user():
    found = only_problem(user('targets = ["local"]\n'))
    assert found.startswith("gw.toml:3: users.alice.targets: \"local\" needs os_user"), found
    assert "there is no default" in found


def test_every_target_of_protocol_local_needs_an_os_user():
    here = '[targets.here]\nprotocol = "local"\n'
    found = only_problem(user('targets = ["here", "sw1"]\n') + here + ROUTED_TARGETS)
    assert 'users.alice.targets: "here" needs os_user' in found, found
    found = only_problem(user('targets = ["local", "here"]\n') + here)
    assert 'users.alice.targets: "local" and "here" need os_user' in found, found
    config = parse_config(user('targets = ["here"]\nos_user = "alice"\n') + here, accounts=AS_ROOT)
    assert config.users["alice"].os_user == "alice"


def test_a_broken_target_is_not_taken_for_a_local_one():
    found = only_problem(user('targets = ["sw9"]\n') + '[targets.sw9]\nprotocol = "ssh2"\n')
    assert "targets.sw9: host is required" in found, found


def test_local_with_an_os_user():
    config = parse_config(user('targets = ["local"]\nos_user = "alice"\n'), accounts=AS_ROOT)
    assert config.users["alice"].os_user == "alice"
    assert config.users["alice"].targets == ("local",)


def test_upstream_targets_need_no_os_user():
    config = parse_config(user('targets = ["sw1"]\n') + ROUTED_TARGETS, accounts=AS_GW)
    assert config.users["alice"].os_user is None
    assert config.users["alice"].targets == ("sw1",)


def test_as_root_any_existing_account_and_no_other():
    text = user('targets = ["local"]\nos_user = "root"\n') + user(
        'targets = ["local"]\nos_user = "alice"\n', "bob"
    )
    config = parse_config(text, accounts=AS_ROOT)
    assert config.users["alice"].os_user == "root" and config.users["bob"].os_user == "alice"
    found = only_problem(user('targets = ["local"]\nos_user = "ghost"\n'))
    assert found.startswith("gw.toml:4: users.alice.os_user: no OS account named 'ghost'"), found


@pytest.mark.parametrize("name", ["alice", "root"])
def test_not_as_root_only_the_gateways_own_account(name):
    config = parse_config(user('targets = ["local"]\nos_user = "gw"\n'), accounts=AS_GW)
    assert config.users["alice"].os_user == "gw"
    found = only_problem(user(f'targets = ["local"]\nos_user = "{name}"\n'), AS_GW)
    assert found.startswith(
        f"gw.toml:4: users.alice.os_user: the gateway does not run as root, so local sessions "
        f"can only run as its own account 'gw', not '{name}'"
    ), found


def test_an_os_user_that_cannot_be_an_account_name():
    for bad in ("-x", "a b", "x" * 40, "a:b", "../etc"):
        found = only_problem(user(f'targets = ["local"]\nos_user = "{bad}"\n'))
        assert "users.alice.os_user: must be an OS account name" in found, found


def test_every_problem_of_every_user_at_once():
    text = user("") + user('targets = ["local"]\n', "bob") + user('targets = ["local"]\nos_user = "x"\n', "carol")
    found = problems(text, AS_GW)
    assert [p.split(": ")[1] for p in found] == ["users.alice", "users.bob.targets", "users.carol.os_user"]


def test_the_accounts_of_this_process():
    accounts = LocalAccounts.of_this_process()
    assert accounts.privileged == (os.geteuid() == 0)
    assert accounts.own == pwd.getpwuid(os.geteuid()).pw_name == own_account()
    assert accounts.problem(accounts.own) is None
    assert accounts.exists(accounts.own) and not accounts.exists("no-such-account-here")


def test_load_config_checks_with_this_process_by_default(tmp_path):
    # Whoever runs this: its own account is always fine, a missing one never is.
    path = tmp_path / "gw.toml"
    path.write_text(user(f'targets = ["local"]\nos_user = "{OWN_ACCOUNT}"\n'))
    assert parse_config(path.read_text()).users["alice"].os_user == OWN_ACCOUNT
    path.write_text(user('targets = ["local"]\nos_user = "no-such-account-here"\n'))
    with pytest.raises(ConfigError, match="os_user"):
        parse_config(path.read_text())


def test_the_embedded_default_grants_local_to_the_invoking_user_as_themselves():
    config = default_config()
    [the_user] = config.users.values()
    assert the_user.targets == ("local",)
    assert the_user.os_user == pwd.getpwuid(os.geteuid()).pw_name


def test_the_embedded_default_routes_its_user_to_local_as_themselves():
    config = default_config()
    [name] = config.users
    targets = fake_targets(config.targets)
    session = Router(config, targets, Clock()).open_session(
        name, SessionRequest(command=b"id -un"), FakeSessionClient()
    )
    assert session.target == "local" and session.kwargs == {"os_user": own_account()}


# --- routing -----------------------------------------------------------------------------------


def router(text: str) -> tuple[Router, dict]:
    config = parse_config(text + ROUTED_TARGETS, accounts=AS_ROOT)
    targets = fake_targets(config.targets)
    return Router(config, targets, Clock()), targets


def test_local_gets_the_users_os_user():
    r, targets = router(user('targets = ["local", "sw1"]\nos_user = "alice"\n'))
    session = r.open_session("alice", SessionRequest(command=b"id"), FakeSessionClient())
    assert session.target == "local" and session.kwargs == {"os_user": "alice"}


def test_a_user_whose_targets_do_not_name_local_cannot_reach_it():
    r, targets = router(user('targets = ["sw1"]\n'))
    for target, request in (("local", SessionRequest(command=b"id")), (None, SessionRequest())):
        client = FakeSessionClient()
        session = r.open_session("alice", request, client, target=target)
        if target is None:  # her only target, never local
            assert session.target == "sw1"
            continue
        assert isinstance(session, RefusedSession)
        r.clock.advance(0)
        assert client.err == b"sshgateway: target 'local' is not available to alice\r\n"
    assert targets["local"].opened == []


def test_a_hand_built_config_without_os_user_never_runs_local():
    # The config cannot produce this; a caller that builds one gets a refusal, never a
    # session as the gateway's own account.
    import dataclasses

    r, targets = router(user('targets = ["local"]\nos_user = "alice"\n'))
    alice = dataclasses.replace(r.config.users["alice"], os_user=None)
    r.config = dataclasses.replace(r.config, users={"alice": alice})
    client = FakeSessionClient()
    assert isinstance(r.open_session("alice", SessionRequest(), client), RefusedSession)
    assert targets["local"].opened == []


# --- the environment and the launch description ------------------------------------------------


def account(name="gwtest", uid=1234, gid=1234, home="/home/gwtest", shell="/bin/bash"):
    return pwd.struct_passwd((name, "x", uid, gid, "", home, shell))


ADDRESSES = ConnectionAddresses("192.0.2.7", 50123, "198.51.100.1", 22)


def test_environment_as_sshd_sets_it():
    request = SessionRequest(command=b"env", env={"LANG": "C.UTF-8"}, addresses=ADDRESSES)
    env = session_environment(account(), "/bin/bash", USER_PATH, request)
    assert env == {
        "LANG": "C.UTF-8",
        "USER": "gwtest",
        "LOGNAME": "gwtest",
        "HOME": "/home/gwtest",
        "PATH": USER_PATH,
        "MAIL": "/var/mail/gwtest",
        "SHELL": "/bin/bash",
        "SSH_CLIENT": "192.0.2.7 50123 22",
        "SSH_CONNECTION": "192.0.2.7 50123 198.51.100.1 22",
    } | ({"TZ": os.environ["TZ"]} if os.environ.get("TZ") else {})


def test_environment_with_a_pty_has_term_and_ssh_tty():
    request = SessionRequest(pty=PtyRequest("xterm", WindowSize(24, 80)), addresses=ADDRESSES)
    env = session_environment(account(), "/bin/sh", USER_PATH, request, tty="/dev/pts/7")
    assert env["TERM"] == "xterm" and env["SSH_TTY"] == "/dev/pts/7"
    env = session_environment(account(), "/bin/sh", USER_PATH, SessionRequest())
    assert "TERM" not in env and "SSH_TTY" not in env
    assert "SSH_CLIENT" not in env and "SSH_CONNECTION" not in env  # no connection to tell


def test_the_client_cannot_override_what_sshd_sets(monkeypatch):
    monkeypatch.delenv("TZ", raising=False)
    sent = {
        name: "evil"
        for name in ("USER", "LOGNAME", "HOME", "PATH", "MAIL", "SHELL", "TERM", "SSH_CLIENT",
                     "SSH_CONNECTION", "SSH_TTY")
    }  # fmt: skip
    request = SessionRequest(
        pty=PtyRequest("vt100", WindowSize(24, 80)), env=dict(sent), addresses=ADDRESSES
    )
    env = session_environment(account(), "/bin/sh", USER_PATH, request, tty="/dev/pts/1")
    assert not [name for name, value in env.items() if value == "evil"]


def test_the_gateways_own_environment_does_not_leak(monkeypatch):
    monkeypatch.setenv("SSHGATEWAY_SECRET_TEST", "leak")
    monkeypatch.setenv("TZ", "Europe/Paris")
    env = session_environment(account(), "/bin/sh", USER_PATH, SessionRequest())
    assert "SSHGATEWAY_SECRET_TEST" not in env
    assert env["TZ"] == "Europe/Paris"  # sshd passes its own TZ on


def test_connection_variables_ipv6():
    addresses = ConnectionAddresses("2001:db8::7", 40000, "2001:db8::1", 2222)
    assert connection_variables(addresses) == {
        "SSH_CLIENT": "2001:db8::7 40000 2222",
        "SSH_CONNECTION": "2001:db8::7 40000 2001:db8::1 2222",
    }


def test_launch_spec_for_a_command_and_for_a_login_shell(tmp_path):
    me = pwd.getpwuid(os.geteuid())
    home = tmp_path / "home"
    home.mkdir()
    entry = account(me.pw_name, me.pw_uid, me.pw_gid, str(home), "/bin/bash")
    spec = launch_spec(entry, SessionRequest(command=b"id -un", addresses=ADDRESSES))
    assert isinstance(spec, LaunchSpec)
    assert spec.executable == "/bin/bash" and spec.argv == ("bash", "-c", b"id -un")
    assert spec.cwd == str(home) and spec.login == me.pw_name
    assert (spec.uid, spec.gid) == (me.pw_uid, me.pw_gid)
    assert spec.groups == tuple(os.getgrouplist(me.pw_name, me.pw_gid))
    assert spec.pty is False
    assert spec.env["SSH_CONNECTION"] == "192.0.2.7 50123 198.51.100.1 22"
    assert spec.env["PATH"] == (SUPERUSER_PATH if me.pw_uid == 0 else USER_PATH)
    login = launch_spec(entry, SessionRequest(pty=PtyRequest("xterm", WindowSize(24, 80))),
                        "/opt/bin", tty="/dev/pts/3")  # fmt: skip
    assert login.argv == ("-bash",) and login.pty is True
    assert login.env["PATH"] == "/opt/bin" and login.env["SSH_TTY"] == "/dev/pts/3"


def test_launch_spec_without_a_home_or_a_shell():
    spec = launch_spec(account(home="/nonexistent/home", shell=""), SessionRequest())
    assert spec.cwd == "/" and spec.executable == "/bin/sh" and spec.argv == ("-sh",)


def test_sshd_path_by_account():
    assert launch_spec(account(uid=0), SessionRequest()).env["PATH"] == SUPERUSER_PATH
    assert launch_spec(account(uid=1000), SessionRequest()).env["PATH"] == USER_PATH
    assert "/usr/sbin" in SUPERUSER_PATH and "sbin" not in USER_PATH


def spec_for(uid: int, gid: int, groups=(5, 6)) -> LaunchSpec:
    return LaunchSpec("/bin/sh", ("sh",), {}, "/", "gwtest", uid, gid, tuple(groups), False)


def started_with(monkeypatch, spec: LaunchSpec) -> dict:
    """The Popen arguments spawner.start_program (both launchers' one way to start a
    program) uses for ``spec``."""
    seen: dict = {}
    monkeypatch.setattr(spawner.subprocess, "Popen", lambda argv, **kw: seen.update(kw) or seen)
    fields = {k: v for k, v in spec.__dict__.items() if k != "login"}
    spawner.start_program(**fields, stdin=0, stdout=1, stderr=2)
    return seen


def test_as_root_the_program_always_takes_the_accounts_ids(monkeypatch):
    monkeypatch.setattr(spawner.os, "geteuid", lambda: 0)
    seen = started_with(monkeypatch, spec_for(1234, 1235, (1235, 27)))
    assert (seen["user"], seen["group"], seen["extra_groups"]) == (1234, 1235, [1235, 27])
    seen = started_with(monkeypatch, spec_for(0, 0, (0,)))
    assert (seen["user"], seen["group"], seen["extra_groups"]) == (0, 0, [0])


def test_not_as_root_only_the_own_account_starts(monkeypatch):
    monkeypatch.setattr(spawner.os, "geteuid", lambda: 1000)
    assert "user" not in started_with(monkeypatch, spec_for(1000, 1000))
    with pytest.raises(PermissionError, match="only root can start a program as uid 1234"):
        started_with(monkeypatch, spec_for(1234, 1234))


def test_the_pty_becomes_the_accounts(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown to another account needs root")
    master, slave = os.openpty()
    try:
        spawner._give_terminal(slave, 1234, 1235)
        st = os.fstat(slave)
        tty = grp.getgrnam("tty").gr_gid
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, tty, 0o620)
    finally:
        os.close(master)
        os.close(slave)


def test_an_unknown_account_at_start_is_a_clean_failure():
    with pytest.raises(local.NoSuchAccount, match="no OS account named 'no-such-account-here'"):
        local.find_account("no-such-account-here")


# --- the connection's addresses ----------------------------------------------------------------


def test_addresses_from_twisted_addresses():
    peer, host = IPv4Address("TCP", "192.0.2.7", 50123), IPv4Address("TCP", "10.0.0.1", 22)
    assert ConnectionAddresses.of(peer, host) == ConnectionAddresses("192.0.2.7", 50123, "10.0.0.1", 22)
    peer6, host6 = IPv6Address("TCP", "2001:db8::7", 1), IPv6Address("TCP", "::1", 2)
    assert ConnectionAddresses.of(peer6, host6) == ConnectionAddresses("2001:db8::7", 1, "::1", 2)
    assert ConnectionAddresses.of(UNIXAddress("/run/x"), host) is None


def test_an_ipv4_client_of_an_ipv6_listener_shows_as_ipv4_like_sshd():
    peer, host = IPv6Address("TCP", "::ffff:192.0.2.7", 5), IPv6Address("TCP", "::ffff:10.0.0.1", 22)
    assert ConnectionAddresses.of(peer, host) == ConnectionAddresses("192.0.2.7", 5, "10.0.0.1", 22)
    assert ConnectionAddresses.of(IPv6Address("TCP", "::ffff:1:2", 5), host).client_host == "::ffff:1:2"


def test_addresses_of_a_transport():
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 2222),
        peerAddress=IPv4Address("TCP", "127.0.0.2", 40000),
    )
    assert addresses_of(transport) == ConnectionAddresses("127.0.0.2", 40000, "127.0.0.1", 2222)
    assert addresses_of(None) is None and addresses_of(object()) is None

