"""The auth backend: one portal, three checkers, the realm's policy, the avatar.

Everything runs in memory; Deferreds fire synchronously (password hashing inline) and the
login flow's delays run on a Clock.
"""

from __future__ import annotations

import os

import pytest
from twisted.conch.error import ValidPublicKey
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from gateway import passwords
from gateway.auth import (
    AvatarId,
    GatewayUser,
    PasswordChecker,
    build_portal,
    run_inline,
)
from gateway.config import parse_config
from protocols.auth import (
    AuthLimits,
    LoginContext,
    LoginFlow,
    PartialAuthentication,
    PolicyRefused,
    SSH1RSAChallenge,
    TooManyAttempts,
)
from protocols.session import IGatewayUser, SessionRequest
from tests.support.doubles import Challenger, FakeTarget
from tests.support.gateway_helpers import (
    LOCAL_ACCESS,
    ed25519_key,
    failure_of,
    fast_hash,
    pk,
    result_of,
    rsa_key,
    ssh1_line,
)


class Setup:
    def __init__(self, tmp_path):
        self.ed = ed25519_key()
        self.rsa = rsa_key()
        self.old = rsa_key()  # an SSH-1-only key
        self.other = ed25519_key()  # listed for nobody
        keys_file = tmp_path / "alice_keys"
        keys_file.write_text(
            self.ed.public().toString("OPENSSH").decode()
            + "\n"
            + self.rsa.public().toString("OPENSSH").decode()
            + "\n"
            + ssh1_line(self.old)
            + "\n"
        )
        os.chmod(keys_file, 0o600)
        both = tmp_path / "carol_keys"
        both.write_text(self.ed.public().toString("OPENSSH").decode() + "\n")
        text = f"""
[users.alice]
password = "{fast_hash("alice-pw")}"
authorized_keys = "{keys_file}"
{LOCAL_ACCESS}
[users.bob]
password = "{fast_hash("bob-pw")}"
{LOCAL_ACCESS}
[users.carol]
password = "{fast_hash("carol-pw")}"
authorized_keys = "{both}"
auth = "all"
{LOCAL_ACCESS}
[session]
env_allow = ["LANG", "LC_*"]
"""
        self.config = parse_config(text, base=tmp_path)
        self.targets = FakeTarget("router")
        self.portal = build_portal(self.config, self.targets, blocking=run_inline)

    def login(self, credentials, protocol="ssh2", context=None):
        context = context or LoginContext(protocol=protocol, peer="127.0.0.1:5555")
        return self.portal.login(credentials, context, IGatewayUser)


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


# --- passwords ------------------------------------------------------------------------------


def test_password_login(setup):
    interface, avatar, logout = result_of(setup.login(UsernamePassword(b"alice", b"alice-pw")))
    assert interface is IGatewayUser
    assert verifyObject(IGatewayUser, avatar)
    assert avatar.username == "alice"
    logout()


def test_str_username_works_too(setup):
    _, avatar, _ = result_of(setup.login(UsernamePassword("bob", "bob-pw")))
    assert avatar.username == "bob"


def messages(setup, *credentials):
    out = []
    for c in credentials:
        f = failure_of(setup.login(c))
        out.append((type(f.value), f.getErrorMessage()))
    return out


def test_unknown_user_fails_exactly_like_a_wrong_password(setup):
    wrong, unknown, nopw, badname = messages(
        setup,
        UsernamePassword(b"alice", b"nope"),
        UsernamePassword(b"mallory", b"nope"),
        UsernamePassword(b"", b"nope"),
        UsernamePassword(b"\xff\xfe", b"nope"),
    )
    assert wrong == unknown == nopw == badname == (UnauthorizedLogin, "authentication failed")


def test_unknown_user_costs_a_hash_like_a_wrong_password(setup, monkeypatch):
    seen = []
    real = passwords.hashlib.scrypt

    def counting(password, **kw):
        seen.append((kw["n"], kw["r"], kw["p"]))
        return real(password, **kw)

    monkeypatch.setattr(passwords.hashlib, "scrypt", counting)
    messages(setup, UsernamePassword(b"alice", b"nope"))
    messages(setup, UsernamePassword(b"mallory", b"nope"))
    assert len(seen) == 2 and seen[0] == seen[1]


def test_user_without_password_costs_a_hash_too(tmp_path, monkeypatch):
    keys_file = tmp_path / "k"
    keys_file.write_text("")
    config = parse_config(
        f'[users.dan]\nauthorized_keys = "{keys_file}"\n{LOCAL_ACCESS}'
        f'[users.eve]\npassword = "{fast_hash("x")}"\n{LOCAL_ACCESS}'
    )
    checker = PasswordChecker(config.users, run_inline)
    calls = []
    monkeypatch.setattr(passwords, "dummy_verify", lambda *a: calls.append(a) or False)
    failure_of(checker.requestAvatarId(UsernamePassword(b"dan", b"x")))
    assert calls and calls[0][1] == config.users["eve"].password_hash


def test_password_hashing_runs_through_the_blocking_runner(setup):
    ran = []

    def runner(f, *args):
        ran.append(f)
        return run_inline(f, *args)

    checker = PasswordChecker(setup.config.users, runner)
    avatar_id = result_of(checker.requestAvatarId(UsernamePassword(b"bob", b"bob-pw")))
    assert ran and avatar_id == b"bob" and avatar_id.method == "password"


def test_login_flow_answers_unknown_and_wrong_after_the_same_delay(setup):
    clock = Clock()
    limits = AuthLimits(grace_time=120, max_attempts=3, failure_delay=2.0)
    flow = LoginFlow(setup.portal, limits, LoginContext("ssh2", "peer"), clock, lambda: None)
    fired = []
    for i, name in enumerate(("alice", "mallory")):  # wrong password, then unknown user
        d = flow.attempt(name, "password", UsernamePassword(name.encode(), b"nope"))
        d.addErrback(lambda f: fired.append((clock.seconds(), f.type)))
        clock.advance(1.9)
        assert len(fired) == i
        clock.advance(0.1)
        assert len(fired) == i + 1
    assert [t for _, t in fired] == [UnauthorizedLogin, UnauthorizedLogin]
    d = flow.attempt("mallory", "password", UsernamePassword(b"mallory", b"x"))
    d.addErrback(lambda f: fired.append((clock.seconds(), f.type)))
    clock.advance(2)
    assert fired[-1][1] is TooManyAttempts


# --- SSH-2 public keys ----------------------------------------------------------------------


def test_publickey_query_for_a_listed_key(setup):
    f = failure_of(setup.login(pk(b"alice", setup.ed, sign=False)))
    assert f.check(ValidPublicKey)


def test_publickey_login_ed25519_and_rsa_sha2(setup):
    _, avatar, _ = result_of(setup.login(pk(b"alice", setup.ed)))
    assert avatar.username == "alice"
    for algorithm in (b"rsa-sha2-512", b"rsa-sha2-256"):
        _, avatar, _ = result_of(setup.login(pk(b"alice", setup.rsa, signature_type=algorithm)))
        assert avatar.username == "alice"


@pytest.mark.parametrize(
    "case", ["unlisted", "unknown-user", "bad-sig", "alg-mismatch", "junk", "junk-blob"]
)
def test_publickey_failures_all_look_the_same(setup, case):
    if case == "unlisted":
        credentials = pk(b"alice", setup.other)
    elif case == "unknown-user":
        credentials = pk(b"mallory", setup.ed)
    elif case == "bad-sig":
        credentials = pk(b"alice", setup.ed)
        credentials.sigData = b"other data"
    elif case == "alg-mismatch":
        credentials = pk(b"alice", setup.rsa, signature_type=b"rsa-sha2-256")
        credentials.algName = b"rsa-sha2-512"
    elif case == "junk":
        credentials = pk(b"alice", setup.ed)
        credentials.signature = b"\x00\x00\x00\xffjunk"
    else:
        credentials = pk(b"alice", setup.ed)
        credentials.blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x01x"
    f = failure_of(setup.login(credentials))
    assert f.type is UnauthorizedLogin and f.getErrorMessage() == "authentication failed"


def test_unlisted_key_query_is_refused_like_unknown_user(setup):
    a = failure_of(setup.login(pk(b"alice", setup.other, sign=False)))
    b = failure_of(setup.login(pk(b"mallory", setup.ed, sign=False)))
    assert a.type is b.type is UnauthorizedLogin


# --- SSH-1 RSA ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["old", "rsa"])  # an SSH-1 line, and an ssh-rsa line
def test_ssh1_rsa_login(setup, which):
    key = getattr(setup, which).public().data()
    challenger = Challenger(True)
    credentials = SSH1RSAChallenge(b"alice", key["n"], challenger)
    _, avatar, _ = result_of(setup.login(credentials, protocol="ssh1"))
    assert avatar.username == "alice"
    assert challenger.asked == [(key["e"], key["n"])]


def test_ssh1_rsa_failures(setup):
    key = setup.old.public().data()
    wrong = Challenger(False)
    f = failure_of(setup.login(SSH1RSAChallenge(b"alice", key["n"], wrong), protocol="ssh1"))
    assert f.type is UnauthorizedLogin and wrong.asked
    # An unlisted modulus, or an unknown user: no challenge at all, the same failure.
    for name, modulus in ((b"alice", 99991), (b"mallory", key["n"])):
        never = Challenger(True)
        f = failure_of(setup.login(SSH1RSAChallenge(name, modulus, never), protocol="ssh1"))
        assert f.type is UnauthorizedLogin and not never.asked
        assert f.getErrorMessage() == "authentication failed"


def test_ssh1_challenge_that_errors_is_a_failure(setup):
    key = setup.old.public().data()

    def broken(e, n):
        raise RuntimeError("connection lost")

    f = failure_of(setup.login(SSH1RSAChallenge(b"alice", key["n"], broken), protocol="ssh1"))
    assert f.check(RuntimeError)  # LoginFlow turns non-UnauthorizedLogin into a failure


# --- the realm's policy ---------------------------------------------------------------------


def test_auth_all_needs_every_method_over_ssh2(setup):
    context = LoginContext("ssh2", "peer")
    context.begin("carol", "publickey")
    f = failure_of(setup.login(pk(b"carol", setup.ed), context=context))
    assert f.check(PartialAuthentication) and f.value.remaining == ["password"]
    assert context.succeeded == {"publickey"}
    context.begin("carol", "password")
    _, avatar, _ = result_of(setup.login(UsernamePassword(b"carol", b"carol-pw"), context=context))
    assert avatar.username == "carol"


def test_auth_all_in_the_other_order(setup):
    context = LoginContext("ssh2", "peer")
    context.begin("carol", "password")
    f = failure_of(setup.login(UsernamePassword(b"carol", b"carol-pw"), context=context))
    assert f.value.remaining == ["publickey"]
    context.begin("carol", "publickey")
    result_of(setup.login(pk(b"carol", setup.ed), context=context))


def test_auth_all_counts_what_was_checked_not_what_was_claimed(setup):
    # A front end that labels a password attempt "publickey" must not satisfy both.
    context = LoginContext("ssh2", "peer")
    context.begin("carol", "publickey")
    failure_of(setup.login(UsernamePassword(b"carol", b"carol-pw"), context=context))
    context.begin("carol", "publickey")
    f = failure_of(setup.login(UsernamePassword(b"carol", b"carol-pw"), context=context))
    assert f.check(PartialAuthentication) and f.value.remaining == ["publickey"]


def test_methods_passed_for_another_name_do_not_count(setup):
    context = LoginContext("ssh2", "peer")
    context.begin("alice", "password")
    result_of(setup.login(UsernamePassword(b"alice", b"alice-pw"), context=context))
    context.begin("carol", "publickey")
    f = failure_of(setup.login(pk(b"carol", setup.ed), context=context))
    assert f.value.remaining == ["password"]


def test_auth_all_over_ssh1_is_refused_for_the_log(setup):
    f = failure_of(setup.login(UsernamePassword(b"carol", b"carol-pw"), protocol="ssh1"))
    assert f.check(PolicyRefused) and "SSH-1" in f.getErrorMessage()


def test_auth_all_without_a_context_is_refused(setup):
    f = failure_of(setup.portal.login(UsernamePassword(b"carol", b"carol-pw"), None, IGatewayUser))
    assert f.check(PolicyRefused)


def test_auth_any_records_the_method(setup):
    context = LoginContext("ssh1", "peer")
    key = setup.old.public().data()
    result_of(setup.login(SSH1RSAChallenge(b"alice", key["n"], Challenger(True)), context=context))
    assert context.succeeded == {"publickey"} and context.username == "alice"


def test_realm_refuses_other_interfaces(setup):
    from zope.interface import Interface

    class IOther(Interface):
        pass

    f = failure_of(
        setup.portal.login(UsernamePassword(b"bob", b"bob-pw"), LoginContext("ssh2", "p"), IOther)
    )
    assert f.check(NotImplementedError)


def test_avatar_id_keeps_the_method():
    avatar_id = AvatarId(b"alice", "publickey")
    assert avatar_id == b"alice" and avatar_id.method == "publickey"


# --- the avatar -----------------------------------------------------------------------------


def test_env_allow_patterns(setup):
    _, avatar, _ = result_of(setup.login(UsernamePassword(b"bob", b"bob-pw")))
    assert avatar.env_allowed("LANG") and avatar.env_allowed("LC_ALL")
    assert not avatar.env_allowed("LD_PRELOAD") and not avatar.env_allowed("lang")
    assert not avatar.env_allowed("PATH")


def test_open_session_goes_to_the_targets(setup):
    _, avatar, _ = result_of(setup.login(UsernamePassword(b"bob", b"bob-pw")))
    request = SessionRequest(command=b"true")
    client = object()
    session = avatar.open_session(request, client)
    assert setup.targets.opened == [session]
    assert (session.username, session.request, session.client) == ("bob", request, client)


def test_gateway_user_directly():
    targets = FakeTarget("router")
    user = GatewayUser("x", targets, [])
    assert verifyObject(IGatewayUser, user)
    assert not user.env_allowed("LANG")


def test_password_checks_are_limited_in_number(setup):
    pending = []

    def runner(f, *args):
        from twisted.internet import defer

        d = defer.Deferred()
        pending.append((d, f, args))
        return d

    checker = PasswordChecker(setup.config.users, runner, max_concurrent=2, per_source=2)
    results = [checker.requestAvatarId(UsernamePassword(b"bob", b"bob-pw")) for _ in range(5)]
    assert len(pending) == 2  # the other three wait for a slot
    while pending:
        d, f, args = pending.pop(0)
        d.callback(f(*args))
    assert all(result_of(r) == b"bob" for r in results)


# --- password hashing is shared fairly between sources ---------------------------------------


class PendingRunner:
    """A blocking runner whose jobs wait until the test runs them."""

    def __init__(self) -> None:
        self.pending: list[tuple] = []

    def __call__(self, f, *args):
        from twisted.internet import defer

        d = defer.Deferred()
        self.pending.append((d, f, args))
        return d

    def run_one(self) -> None:
        d, f, args = self.pending.pop(0)
        d.callback(f(*args))


def test_a_flood_from_one_address_leaves_hashing_slots_for_another(setup):
    from gateway.auth import MAX_HASHES_PER_SOURCE, MAX_QUEUED_PER_SOURCE

    runner = PendingRunner()
    portal = build_portal(setup.config, setup.targets, blocking=runner)
    guesses = [
        portal.login(
            UsernamePassword(b"bob", f"guess-{i}".encode()),
            LoginContext("ssh2", f"127.0.0.1:{40000 + i}"),
            IGatewayUser,
        )
        for i in range(150)
    ]
    assert len(runner.pending) == MAX_HASHES_PER_SOURCE  # not all four slots
    queued = [d for d in guesses if not d.called]
    refused_at_once = [failure_of(d) for d in guesses if d.called]
    assert len(refused_at_once) == 150 - MAX_HASHES_PER_SOURCE - MAX_QUEUED_PER_SOURCE
    assert all(f.check(UnauthorizedLogin) for f in refused_at_once)

    login = portal.login(
        UsernamePassword(b"bob", b"bob-pw"), LoginContext("ssh2", "127.0.0.2:50000"), IGatewayUser
    )
    assert len(runner.pending) == MAX_HASHES_PER_SOURCE + 1  # hashing at once, not queued
    runner.run_one()
    runner.run_one()
    runner.run_one()
    _, avatar, _ = result_of(login)
    assert avatar.username == "bob"
    while runner.pending:  # the queued guesses get their turn, and fail
        runner.run_one()
    assert all(failure_of(d).check(UnauthorizedLogin) for d in queued)


def test_a_refused_guess_looks_like_a_wrong_password(setup):
    runner = PendingRunner()
    checker = PasswordChecker(setup.config.users, runner, per_source=1, queued_per_source=0)
    first = checker.check(UsernamePassword(b"bob", b"first"), "192.0.2.1")
    refused = failure_of(checker.check(UsernamePassword(b"bob", b"bob-pw"), "192.0.2.1"))
    runner.run_one()
    wrong = failure_of(first)
    assert type(refused.value) is type(wrong.value) is UnauthorizedLogin
    assert refused.getErrorMessage() == wrong.getErrorMessage()


def test_the_portal_counts_ipv6_neighbours_as_one_source(setup):
    from gateway.auth import MAX_HASHES_PER_SOURCE

    runner = PendingRunner()
    portal = build_portal(setup.config, setup.targets, blocking=runner)
    attempts = [
        portal.login(
            UsernamePassword(b"bob", b"x"), LoginContext("ssh2", f"2001:db8::{i + 1}:22"),
            IGatewayUser,
        )
        for i in range(6)
    ]  # fmt: skip
    assert len(runner.pending) == MAX_HASHES_PER_SOURCE  # one /64, one share
    while runner.pending:
        runner.run_one()
    assert all(failure_of(d).check(UnauthorizedLogin) for d in attempts)
