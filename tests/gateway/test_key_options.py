"""authorized_keys options enforced by the gateway, in memory: from= and expiry-time= at
authentication (a refused key is answered exactly like an unlisted one), the restrictions
the avatar carries (none for a password login), the forced command and environment=
applied by the Router."""

from __future__ import annotations

import pytest
from twisted.conch.error import ValidPublicKey
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from gateway.auth import build_portal, run_inline
from gateway.config import parse_config
from gateway.routing import ORIGINAL_COMMAND, Router
from protocols.auth import LoginContext, PartialAuthentication, SSH1RSAChallenge
from protocols.session import UNRESTRICTED, IGatewayUser, SessionRequest
from tests.support.doubles import Challenger, FakeSessionClient, FakeTarget
from tests.support.gateway_helpers import (
    LOCAL_ACCESS,
    OWN_ACCOUNT,
    ROUTED_TARGETS,
    LogCapture,
    ed25519_key,
    failure_of,
    fast_hash,
    pk,
    result_of,
    rsa_key,
    ssh1_line,
    write_private,
)

LOOPBACK = "127.0.0.1:40000"


@pytest.fixture
def logs():
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    yield capture
    globalLogPublisher.removeObserver(capture)


def openssh(key) -> str:
    return key.public().toString("OPENSSH").decode()


class Gateway:
    """A portal over a Router of fake targets; alice's authorized_keys are ``lines``."""

    def __init__(self, tmp_path, lines, *, permit_env=False, extra_user="", targets='["local"]'):
        self.keys_file = write_private(tmp_path / "alice_keys", "\n".join(lines) + "\n")
        text = f"""
[users.alice]
password = "{fast_hash("pw")}"
authorized_keys = "{self.keys_file}"
targets = {targets}
os_user = "{OWN_ACCOUNT}"
{extra_user}

[session]
permit_user_environment = {"true" if permit_env else "false"}
""" + ROUTED_TARGETS
        self.config = parse_config(text, base=tmp_path)
        self.targets = {
            name: FakeTarget(name, takes_password=name != "local") for name in self.config.targets
        }
        self.router = Router(self.config, self.targets, Clock())
        self.portal = build_portal(self.config, self.router, blocking=run_inline)

    def login(self, credentials, peer=LOOPBACK, protocol="ssh2", context=None):
        context = context or LoginContext(protocol=protocol, peer=peer)
        return self.portal.login(credentials, context, IGatewayUser)

    def avatar(self, credentials, **kw):
        return result_of(self.login(credentials, **kw))[1]

    def session(self, avatar, command=b"client-cmd", env=None):
        request = SessionRequest(command=command, env=dict(env or {}))
        avatar.open_session(request, FakeSessionClient())
        [opened] = [s for t in self.targets.values() for s in t.opened]
        return opened


# --- from= and expiry-time= at authentication -------------------------------------------------


@pytest.mark.parametrize(
    "option,admitted",
    [
        ('from="10.0.0.0/8"', False),
        ('from="127.0.0.1"', True),
        ('from="127.0.0.0/8,!127.0.0.1"', False),
        ('from="*,!10.*"', True),
        ('from="127.0.0.1/8"', False),  # invalid criteria deny
        ('expiry-time="20000101"', False),
        ('expiry-time="20991231Z"', True),
    ],
)
def test_from_and_expiry_decide_before_pk_ok(tmp_path, logs, option, admitted):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f"{option} {openssh(key)}"])
    query = gw.login(pk(b"alice", key, sign=False))
    signed = gw.login(pk(b"alice", key))
    if admitted:
        assert failure_of(query).check(ValidPublicKey)
        assert result_of(signed)[1].username == "alice"
    else:
        # No PK_OK for the query, and the signed attempt fails: like an unlisted key.
        assert failure_of(query).type is UnauthorizedLogin
        failure = failure_of(signed)
        assert (failure.type, failure.getErrorMessage()) == (
            UnauthorizedLogin,
            "authentication failed",
        )
        assert f"{gw.keys_file}:1: correct key for alice refused" in logs.text()


def test_refused_key_answers_exactly_like_an_unlisted_one(tmp_path):
    key, unlisted = ed25519_key(), ed25519_key()
    gw = Gateway(tmp_path, [f'from="10.0.0.0/8" {openssh(key)}'])
    refused = failure_of(gw.login(pk(b"alice", key)))
    other = failure_of(gw.login(pk(b"alice", unlisted)))
    assert (refused.type, refused.getErrorMessage()) == (other.type, other.getErrorMessage())


def test_log_says_why_from_refused(tmp_path, logs):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f'from="10.0.0.0/8" {openssh(key)}'])
    failure_of(gw.login(pk(b"alice", key), peer="192.0.2.5:1234"))
    assert "192.0.2.5 is not permitted to use this key" in logs.text()
    assert 'from="10.0.0.0/8"' in logs.text()


def test_ipv6_and_mapped_peers(tmp_path):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f'from="2001:db8::/32,192.0.2.0/24" {openssh(key)}'])
    assert gw.avatar(pk(b"alice", key), peer="2001:db8::9:50000").username == "alice"
    assert gw.avatar(pk(b"alice", key), peer="::ffff:192.0.2.1:50000").username == "alice"
    failure_of(gw.login(pk(b"alice", key), peer="2001:db9::1:50000")).trap(UnauthorizedLogin)


def test_expiry_boundary_uses_the_clock(tmp_path):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f'expiry-time="20300101Z" {openssh(key)}'])
    store = gw.portal.key_checkers[0].store
    store.clock = lambda: 1893456000.0  # exactly the expiry: still valid, as in sshd
    assert gw.avatar(pk(b"alice", key)).username == "alice"
    store.clock = lambda: 1893456001.0
    failure_of(gw.login(pk(b"alice", key))).trap(UnauthorizedLogin)


def test_a_key_on_two_lines_uses_the_first_line_that_admits_it(tmp_path, logs):
    key = ed25519_key()
    gw = Gateway(
        tmp_path,
        [f'from="10.0.0.0/8" {openssh(key)}', f'no-pty,from="127.0.0.1" {openssh(key)}'],
    )
    avatar = gw.avatar(pk(b"alice", key))
    assert avatar.restrictions.refusal("pty") is not None
    assert f"{gw.keys_file}:2" in avatar.restrictions.origin
    assert f"{gw.keys_file}:1: correct key for alice refused" in logs.text()


def test_ssh1_key_refused_by_options_gets_no_challenge(tmp_path):
    key = rsa_key()
    gw = Gateway(tmp_path, [f'from="10.0.0.0/8" {ssh1_line(key)}'])
    challenger = Challenger(True)
    modulus = key.public().data()["n"]
    d = gw.login(SSH1RSAChallenge(b"alice", modulus, challenger), protocol="ssh1")
    assert failure_of(d).type is UnauthorizedLogin
    assert challenger.asked == []


def test_ssh1_key_admitted_carries_its_options(tmp_path):
    key = rsa_key()
    gw = Gateway(tmp_path, [f'restrict,from="127.0.0.1" {ssh1_line(key)}'])
    challenger = Challenger(True)
    modulus = key.public().data()["n"]
    avatar = gw.avatar(SSH1RSAChallenge(b"alice", modulus, challenger), protocol="ssh1")
    assert len(challenger.asked) == 1
    assert not avatar.restrictions.pty and not avatar.restrictions.port_forwarding


def test_without_a_login_context_a_from_line_refuses(tmp_path):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f'from="*" {openssh(key)}'])
    checker = gw.portal.key_checkers[0]
    failure_of(checker.requestAvatarId(pk(b"alice", key))).trap(UnauthorizedLogin)


# --- restrictions on the avatar -----------------------------------------------------------------


def test_key_restrictions_on_the_avatar_and_none_for_a_password(tmp_path):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f"restrict,agent-forwarding {openssh(key)}"])
    keyed = gw.avatar(pk(b"alice", key))
    assert (keyed.restrictions.pty, keyed.restrictions.port_forwarding) == (False, False)
    assert (keyed.restrictions.x11_forwarding, keyed.restrictions.agent_forwarding) == (False, True)
    assert gw.avatar(UsernamePassword(b"alice", b"pw")).restrictions == UNRESTRICTED
    plain = Gateway(tmp_path, [openssh(key)]).avatar(pk(b"alice", key))
    assert plain.restrictions.refusal("pty") is None


def test_auth_all_keeps_the_keys_options_for_the_password_step(tmp_path):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f'no-pty,command="echo forced" {openssh(key)}'],
                 extra_user='auth = "all"')  # fmt: skip
    context = LoginContext(protocol="ssh2", peer=LOOPBACK)
    context.begin("alice", "publickey")
    failure_of(gw.login(pk(b"alice", key), context=context)).trap(PartialAuthentication)
    context.begin("alice", "password")
    avatar = gw.avatar(UsernamePassword(b"alice", b"pw"), context=context)
    assert avatar.restrictions.refusal("pty") is not None
    assert avatar.forced_command == b"echo forced"


# --- forced command and environment, applied by the Router ------------------------------------


def test_forced_command_replaces_the_clients_and_keeps_it_in_ssh_original_command(tmp_path, logs):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f'command="echo forced" {openssh(key)}'])
    session = gw.session(gw.avatar(pk(b"alice", key)), b"id -un", env={"LANG": "C"})
    assert session.target == "local"
    assert session.request.command == b"echo forced"
    assert session.request.env == {"LANG": "C", ORIGINAL_COMMAND: "id -un"}
    assert "the key's forced command replaces the client's command" in logs.text()


def test_forced_command_for_a_shell_sets_no_original_command(tmp_path):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f'command="echo forced" {openssh(key)}'])
    session = gw.session(gw.avatar(pk(b"alice", key)), None)
    assert session.request.command == b"echo forced" and session.request.env == {}


def test_client_cannot_fake_ssh_original_command(tmp_path):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f'command="true" {openssh(key)}'])
    session = gw.session(gw.avatar(pk(b"alice", key)), b"real", env={ORIGINAL_COMMAND: "fake"})
    assert session.request.env[ORIGINAL_COMMAND] == "real"


def test_forced_command_runs_upstream_and_skips_the_menu(tmp_path):
    key = ed25519_key()
    gw = Gateway(tmp_path, [f'command="show version" {openssh(key)}'],
                 targets='["host2", "sw1"]')  # fmt: skip
    avatar = gw.avatar(pk(b"alice+host2", key))
    session = gw.session(avatar, b"reload")
    assert (session.target, session.request.command) == ("host2", b"show version")
    assert ORIGINAL_COMMAND not in session.request.env
    # No +target and a shell request: with a forced command there is no menu to show.
    gw.targets["host2"].opened.clear()
    client = FakeSessionClient()
    refused = gw.avatar(pk(b"alice", key)).open_session(SessionRequest(), client)
    assert type(refused).__name__ == "RefusedSession"


def test_forced_command_keeps_its_exact_bytes(tmp_path):
    key = ed25519_key()
    gw = Gateway(tmp_path, [])
    write_private(gw.keys_file, b'command="printf \xff" ' + openssh(key).encode() + b"\n")
    session = gw.session(gw.avatar(pk(b"alice", key)))
    assert session.request.command == b"printf \xff"


def test_environment_ignored_unless_permitted(tmp_path, logs):
    key = ed25519_key()
    line = f'environment="FROM_KEY=1",environment="LANG=key" {openssh(key)}'
    gw = Gateway(tmp_path, [line])
    session = gw.session(gw.avatar(pk(b"alice", key)), env={"LANG": "client"})
    assert session.request.env == {"LANG": "client"}
    assert "environment= for alice ignored (permit_user_environment is off)" in logs.text()


def test_environment_when_permitted_wins_over_the_clients(tmp_path):
    key = ed25519_key()
    line = f'environment="FROM_KEY=1",environment="LANG=key" {openssh(key)}'
    gw = Gateway(tmp_path, [line], permit_env=True)
    session = gw.session(gw.avatar(pk(b"alice", key)), env={"LANG": "client", "LC_ALL": "C"})
    assert session.request.env == {"LANG": "key", "LC_ALL": "C", "FROM_KEY": "1"}
    assert session.request.command == b"client-cmd"


def test_permit_user_environment_defaults_to_off():
    text = '[users.a]\npassword = "' + fast_hash("x") + '"\n' + LOCAL_ACCESS
    assert parse_config(text).permit_user_environment is False
