"""Logins as user+target through the one portal: every checker authenticates the user,
the avatar carries the target, the login never depends on the target, and the
pass-through password reaches the target (and nothing else)."""

from __future__ import annotations

import os

import pytest
from twisted.conch.error import ValidPublicKey
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from gateway.auth import AvatarId, PasswordChecker, build_portal, run_inline
from gateway.config import parse_config
from gateway.routing import Router
from protocols.auth import (
    AuthLimits,
    LoginContext,
    LoginFlow,
    PartialAuthentication,
    SSH1RSAChallenge,
)
from protocols.session import ExitInfo, IGatewayUser, SessionRequest
from tests.support.doubles import Challenger, FakeSessionClient, fake_targets
from tests.support.gateway_helpers import (
    OWN_ACCOUNT,
    ROUTED_TARGETS,
    ed25519_key,
    failure_of,
    fast_hash,
    pk,
    result_of,
    rsa_key,
    ssh1_line,
)

SECRET = "s3cret-login-pw"


class Setup:
    def __init__(self, tmp_path):
        self.ed = ed25519_key()
        self.old = rsa_key()
        keys = tmp_path / "keys"
        keys.write_text(
            self.ed.public().toString("OPENSSH").decode() + "\n" + ssh1_line(self.old) + "\n"
        )
        os.chmod(keys, 0o600)
        text = f"""
[users.alice]
password = "{fast_hash("alice-pw")}"
authorized_keys = "{keys}"
targets = ["local", "sw1", "host2"]
os_user = "{OWN_ACCOUNT}"

[users.dave]
password = "{fast_hash(SECRET)}"
authorized_keys = "{keys}"
targets = ["sw1", "tn"]

[users.carol]
password = "{fast_hash(SECRET)}"
authorized_keys = "{keys}"
auth = "all"
targets = ["tn"]

[users.frank]
password = "{fast_hash("frank-pw")}"
authorized_keys = "{keys}"
auth = "all"
targets = ["tn"]

[users.gina]
authorized_keys = "{keys}"
auth = "all"
targets = ["tn"]

"""
        self.config = parse_config(text + ROUTED_TARGETS, base=tmp_path)
        self.clock = Clock()
        self.targets = fake_targets(self.config.targets)
        self.router = Router(self.config, self.targets, self.clock)
        self.portal = build_portal(self.config, self.router, blocking=run_inline)

    def login(self, credentials, protocol="ssh2", context=None):
        context = context or LoginContext(protocol=protocol, peer="127.0.0.1:5555")
        return self.portal.login(credentials, context, IGatewayUser)

    def avatar(self, credentials, **kw):
        interface, avatar, _ = result_of(self.login(credentials, **kw))
        assert interface is IGatewayUser
        return avatar

    def session(self, avatar, request=None):
        client = FakeSessionClient()
        session = avatar.open_session(request or SessionRequest(command=b"id"), client)
        self.clock.advance(0)
        return session, client


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


def test_password_login_with_a_target(setup):
    avatar = setup.avatar(UsernamePassword(b"alice+sw1", b"alice-pw"))
    assert avatar.username == "alice" and avatar.target == "sw1"
    session, _ = setup.session(avatar)
    assert session.target == "sw1" and session.username == "alice" and session.kwargs == {}


def test_publickey_and_ssh1_rsa_logins_with_a_target(setup):
    f = failure_of(setup.login(pk(b"alice+host2", setup.ed, sign=False)))
    assert f.check(ValidPublicKey)
    avatar = setup.avatar(pk(b"alice+host2", setup.ed))
    assert (avatar.username, avatar.target) == ("alice", "host2")
    key = setup.old.public().data()
    avatar = setup.avatar(
        SSH1RSAChallenge(b"alice+sw1", key["n"], Challenger(True)), protocol="ssh1"
    )
    assert (avatar.username, avatar.target) == ("alice", "sw1")
    assert setup.session(avatar)[0].target == "sw1"


@pytest.mark.parametrize(
    "credentials",
    [
        UsernamePassword(b"alice+sw1", b"wrong"),
        UsernamePassword(b"mallory+sw1", b"alice-pw"),
        UsernamePassword(b"alice+sw1\xff", b"alice-pw"),
        UsernamePassword(b"+sw1", b"alice-pw"),
    ],
)
def test_failures_with_a_target_look_like_any_failure(setup, credentials):
    f = failure_of(setup.login(credentials))
    assert f.type is UnauthorizedLogin and f.getErrorMessage() == "authentication failed"


def test_login_succeeds_whatever_the_target_and_the_session_says_no(setup):
    outcomes = []
    for target in ("secret-device", "tn"):  # nonexistent / exists but not alice's
        avatar = setup.avatar(UsernamePassword(f"alice+{target}".encode(), b"alice-pw"))
        _, client = setup.session(avatar)
        outcomes.append((bytes(client.err).replace(target.encode(), b"X"), client.exit))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] == (b"sshgateway: target 'X' is not available to alice\r\n", ExitInfo(255))
    assert all(not t.opened for t in setup.targets.values())


def test_pass_through_password_reaches_only_its_target(setup):
    avatar = setup.avatar(UsernamePassword(b"dave+tn", SECRET.encode()))
    session, _ = setup.session(avatar)
    assert session.target == "tn" and session.kwargs == {"password": SECRET}
    avatar = setup.avatar(UsernamePassword(b"dave+sw1", SECRET.encode()))
    assert setup.session(avatar)[0].kwargs == {}


def test_pass_through_after_a_key_login(setup):
    avatar = setup.avatar(pk(b"dave+tn", setup.ed))
    _, client = setup.session(avatar)
    assert not setup.targets["tn"].opened
    assert client.err.startswith(b"sshgateway: target 'tn' logs in with your gateway password")
    assert client.err.count(b"\n") == 1 and client.exit == ExitInfo(status=255)


def test_password_kept_only_for_users_with_a_pass_through_target(setup):
    [checker] = [c for c in setup.portal.checkers.values() if isinstance(c, PasswordChecker)]
    alice = result_of(checker.requestAvatarId(UsernamePassword(b"alice+tn", b"alice-pw")))
    dave = result_of(checker.requestAvatarId(UsernamePassword(b"dave", SECRET.encode())))
    assert alice.password is None and dave.password == SECRET
    assert SECRET not in repr(dave) and SECRET not in repr(
        setup.avatar(UsernamePassword(b"dave+tn", SECRET.encode()))
    )


def test_non_utf8_password_survives_for_the_target(setup):
    raw = SECRET.encode() + b"\xff"
    checker = PasswordChecker(setup.config.users, run_inline, keep_password=lambda name: True)
    checker._check = lambda name, password: True
    avatar_id = result_of(checker.requestAvatarId(UsernamePassword(b"dave", raw)))
    assert avatar_id.password.encode("utf-8", "surrogateescape") == raw


def flow(setup, protocol="ssh2"):
    context = LoginContext(protocol=protocol, peer="p")
    return LoginFlow(setup.portal, AuthLimits(failure_delay=0), context, setup.clock, lambda: None)


@pytest.mark.parametrize("order", ["password-first", "key-first"])
def test_auth_all_with_a_target_and_pass_through(setup, order):
    login = flow(setup)
    steps = [
        ("password", UsernamePassword(b"carol+tn", SECRET.encode())),
        ("publickey", pk(b"carol+tn", setup.ed)),
    ]
    if order == "key-first":
        steps.reverse()
    (m1, c1), (m2, c2) = steps
    f = failure_of(login.attempt("carol+tn", m1, c1))
    assert f.check(PartialAuthentication)
    _, avatar, _ = result_of(login.attempt("carol+tn", m2, c2))
    assert (avatar.username, avatar.target) == ("carol", "tn")
    assert setup.session(avatar)[0].kwargs == {"password": SECRET}


def test_a_password_checked_for_another_user_is_not_carried_over(setup):
    login = flow(setup)
    f = failure_of(
        login.attempt("frank+tn", "password", UsernamePassword(b"frank+tn", b"frank-pw"))
    )
    assert f.check(PartialAuthentication)
    _, avatar, _ = result_of(login.attempt("gina+tn", "publickey", pk(b"gina+tn", setup.ed)))
    assert avatar.username == "gina"
    _, client = setup.session(avatar)
    assert not setup.targets["tn"].opened and b"gateway password" in client.err


def test_passwords_never_reach_the_log(setup):
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        avatar = setup.avatar(UsernamePassword(b"dave+tn", SECRET.encode()))
        setup.session(avatar)
        avatar = setup.avatar(UsernamePassword(b"dave+nosuch", SECRET.encode()))
        setup.session(avatar)
        failure_of(setup.login(UsernamePassword(b"dave+tn", b"wrong-" + SECRET.encode())))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert events, "routing logs its decisions"
    assert not any(SECRET in repr(event) for event in events)


def test_avatar_id_defaults():
    avatar_id = AvatarId(b"alice", "password")
    assert avatar_id.target is None and avatar_id.password is None and avatar_id == b"alice"
