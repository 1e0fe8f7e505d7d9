"""Routing in memory: the user+target split, the Router's choice of target, the uniform
refusal, pass-through passwords, the target menu, and building targets from the config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from gateway import routing
from gateway.config import parse_config
from gateway.routing import MenuSession, RefusedSession, Router, build_router, split_login
from gateway.targets.registry import TARGET_PROTOCOLS
from protocols.session import (
    ExitInfo,
    ISessionTarget,
    PtyRequest,
    SessionRequest,
    WindowSize,
)
from tests.support.doubles import FakeSessionClient, FakeSessionTarget, FakeTarget
from tests.support.gateway_helpers import LOCAL_ACCESS, OWN_ACCOUNT, ROUTED_TARGETS, fast_hash

HASH = fast_hash("pw")

CONFIG = (
    f"""
[users.alice]
password = "{HASH}"
targets = ["local", "sw1", "host2"]
os_user = "{OWN_ACCOUNT}"

[users.bob]
password = "{HASH}"
targets = ["sw1", "host2", "tn"]
target = "host2"

[users.carol]
password = "{HASH}"
targets = ["sw1"]

[users.dave]
password = "{HASH}"
targets = ["sw1", "tn"]

[users.erin]
password = "{HASH}"
{LOCAL_ACCESS}"""
    + ROUTED_TARGETS
)


class Setup:
    def __init__(self):
        self.config = parse_config(CONFIG)
        self.clock = Clock()
        self.local = FakeTarget("local", takes_password=False)
        self.targets = {
            name: self.local if name == "local" else FakeTarget(name)
            for name in self.config.targets
        }
        self.router = Router(self.config, self.targets, self.clock)

    def open(self, user, target=None, request=None, password=None):
        client = FakeSessionClient()
        request = request or SessionRequest(command=b"uname")
        session = self.router.open_session(user, request, client, target=target, password=password)
        return session, client

    def opened(self):
        return [s for t in self.targets.values() for s in t.opened]


@pytest.fixture
def setup():
    return Setup()


def shell(pty=True, rows=24, cols=80):
    return SessionRequest(pty=PtyRequest("xterm", WindowSize(rows, cols)) if pty else None)


# --- the split ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "login, expected",
    [
        ("alice", ("alice", None)),
        ("alice+sw1", ("alice", "sw1")),
        ("alice+", ("alice", None)),
        ("alice+a+b", ("alice", "a+b")),
        ("a.b@c+x", ("a.b@c", "x")),
        ("+x", ("", "x")),
    ],
)
def test_split_login(login, expected):
    assert split_login(login) == expected


# --- choosing the target -----------------------------------------------------------------------


def test_a_named_allowed_target(setup):
    session, client = setup.open("alice", "sw1")
    [opened] = setup.opened()
    assert session is opened and opened.target == "sw1" and opened.username == "alice"
    assert opened.kwargs == {}  # a stored-credentials target never sees the login password


def test_unknown_and_forbidden_targets_look_the_same(setup):
    outcomes = []
    for target in ("secret", "nosuchthing"):  # exists but not alice's / does not exist
        session, client = setup.open("alice", target, password="pw")
        assert isinstance(session, RefusedSession) and verifyObject(ISessionTarget, session)
        assert client.exit is None  # answered on the next turn, not inside open_session
        setup.clock.advance(0)
        message = bytes(client.err).replace(target.encode(), b"X")
        outcomes.append((message, client.out, client.eof, client.exit))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == b"sshgateway: target 'X' is not available to alice\r\n"
    assert outcomes[0][3] == ExitInfo(status=255)
    assert setup.opened() == []


def test_refusal_sanitises_the_name(setup):
    _, client = setup.open("alice", "a\x1b[2Jb\r\n" + "x" * 100)
    setup.clock.advance(0)
    line = bytes(client.err)
    assert b"\x1b" not in line and line.count(b"\n") == 1 and b"..." in line


def test_refused_session_closed_early_says_nothing(setup):
    session, client = setup.open("alice", "secret")
    session.close()
    setup.clock.advance(0)
    assert client.exit is None and not client.err and not setup.clock.getDelayedCalls()


def test_unknown_user_is_refused(setup):
    _, client = setup.open("mallory", None)
    setup.clock.advance(0)
    assert client.exit == ExitInfo(status=255) and setup.opened() == []


def test_default_target_key(setup):
    for request in (SessionRequest(command=b"x"), shell()):
        session, _ = setup.open("bob", None, request=request)
        assert isinstance(session, FakeSessionTarget) and session.target == "host2"


def test_no_target_command_goes_to_local(setup):
    session, _ = setup.open("alice", None)
    assert session.target == "local" and session.kwargs == {"os_user": OWN_ACCOUNT}


def test_a_user_with_only_local_reaches_only_local(setup):
    session, _ = setup.open("erin", None, request=shell())
    assert session.target == "local"
    _, client = setup.open("erin", "sw1")
    setup.clock.advance(0)
    assert b"not available to erin" in client.err


def test_a_single_target_needs_no_choice(setup):
    for request in (SessionRequest(command=b"x"), shell()):
        session, _ = setup.open("carol", None, request=request)
        assert session.target == "sw1"


def test_a_command_with_several_targets_and_no_default(setup):
    _, client = setup.open("dave", None)
    setup.clock.advance(0)
    assert client.err == b"sshgateway: no target given: log in as dave+TARGET (sw1, tn)\r\n"
    assert client.exit == ExitInfo(status=255)


def test_an_interactive_session_with_several_targets_gets_the_menu(setup):
    session, _ = setup.open("alice", None, request=shell())
    assert isinstance(session, MenuSession) and verifyObject(ISessionTarget, session)
    session, _ = setup.open("dave", None, request=shell(pty=False))
    assert isinstance(session, MenuSession)


# --- pass-through ------------------------------------------------------------------------------


def test_pass_through_gets_the_login_password(setup):
    session, _ = setup.open("dave", "tn", password="users-own-pw")
    assert session.target == "tn" and session.kwargs == {"password": "users-own-pw"}
    session, _ = setup.open("dave", "sw1", password="users-own-pw")
    assert session.kwargs == {}


def test_pass_through_after_a_key_login_fails_with_one_line(setup):
    session, client = setup.open("dave", "tn", password=None)
    setup.clock.advance(0)
    assert setup.opened() == []
    assert client.err.count(b"\n") == 1 and b"log in to the gateway with your password" in (
        client.err
    )
    assert client.exit == ExitInfo(status=255)


def test_wants_password(setup):
    assert setup.router.wants_password("dave") and setup.router.wants_password("bob")
    assert not setup.router.wants_password("alice")
    assert not setup.router.wants_password("mallory")


# --- the menu ----------------------------------------------------------------------------------


def menu(setup, user="alice", pty=True, password=None, **kw):
    session, client = setup.open(user, None, request=shell(pty=pty, **kw), password=password)
    assert isinstance(session, MenuSession)
    setup.clock.advance(0)
    return session, client


def test_menu_lists_the_users_targets(setup):
    _, client = menu(setup)
    assert bytes(client.out) == (
        b"sshgateway: targets for alice:\r\n  1) local\r\n  2) sw1\r\n  3) host2\r\n"
        b"target (number or name): "
    )
    _, client = menu(setup, pty=False)
    assert b"  3) host2\n" in client.out and b"\r" not in client.out


def test_menu_choice_by_number_with_pty(setup):
    session, client = menu(setup)
    producer = object()
    session.registerProducer(producer, True)
    client.out.clear()
    session.write_stdin(b"2")
    assert client.out == b"2"  # echoed: the client's terminal is raw
    session.write_stdin(b"\r")
    [inner] = setup.opened()
    assert inner.target == "sw1" and session.inner is inner
    assert inner.producer is producer
    assert inner.request.pty.size == WindowSize(24, 80)
    assert client.out == b"2\r\n" and client.exit is None
    session.write_stdin(b"\nls\r")  # the LF of a CR LF pair is not passed on
    assert inner.stdin == b"ls\r"
    session.write_stdin(b"\n")  # only the one right after the choice
    assert inner.stdin == b"ls\r\n"
    session.resize(WindowSize(50, 132))
    session.send_signal("INT")
    session.close_stdin()
    session.unregisterProducer()
    session.close()
    assert inner.calls == [WindowSize(50, 132), ("signal", "INT"), "eof", "close"]
    assert inner.producer is None
    assert not setup.clock.getDelayedCalls()


def test_menu_choice_by_name_without_pty_and_data_in_the_same_chunk(setup):
    session, client = menu(setup, pty=False)
    client.out.clear()
    session.write_stdin(b"host2\nuname -a\n")
    [inner] = setup.opened()
    assert inner.target == "host2" and inner.stdin == b"uname -a\n"
    assert client.out == b""  # no echo without a pty


def test_menu_cr_nul(setup):
    session, _ = menu(setup)
    session.write_stdin(b"1\r\x00x")
    [inner] = setup.opened()
    assert inner.target == "local" and inner.stdin == b"x"


def test_menu_erase_and_kill_line(setup):
    session, client = menu(setup)
    client.out.clear()
    session.write_stdin(b"9\x7f3")
    assert client.out == b"9\b \b3"
    session.write_stdin(b"\x15")
    session.write_stdin(b"sw9\x081\r")
    [inner] = setup.opened()
    assert inner.target == "sw1"


def test_menu_window_change_before_the_choice(setup):
    session, _ = menu(setup)
    session.resize(WindowSize(40, 100))
    session.write_stdin(b"3\r")
    [inner] = setup.opened()
    assert inner.request.pty.size == WindowSize(40, 100) and inner.request.pty.term == "xterm"
    assert inner.calls == []


def test_menu_passes_the_password_to_a_pass_through_choice(setup):
    session, _ = menu(setup, user="dave", password="pw")
    session.write_stdin(b"tn\r")
    [inner] = setup.opened()
    assert inner.kwargs == {"password": "pw"}


@pytest.mark.parametrize("answer", [b"secret", b"nosuchthing", b"4", b"0", b"-1"])
def test_menu_offers_only_allowed_targets(setup, answer):
    session, client = menu(setup)
    client.out.clear()
    session.write_stdin(answer + b"\r")
    assert setup.opened() == []
    assert (
        client.out
        == answer + b"\r\nno such choice: " + answer + b"\r\ntarget (number or name): "
    )


def test_menu_gives_up_after_three_wrong_answers(setup):
    session, client = menu(setup)
    session.write_stdin(b"x\rx\r\r\rx\r1\r")  # empty lines do not count
    assert setup.opened() == []
    assert client.err.endswith(b"sshgateway: no target chosen\r\n")
    assert client.exit == ExitInfo(status=1) and client.eof
    assert not setup.clock.getDelayedCalls()


def test_menu_input_is_bounded(setup):
    session, client = menu(setup, pty=False)
    session.write_stdin(b"7" * 1_000_000)
    assert len(session._line) == routing.MAX_MENU_LINE
    session.write_stdin(b"\x7f" * 1000 + b"2\n")
    assert setup.opened()[0].target == "sw1"


def test_menu_non_ascii_and_controls_are_ignored(setup):
    session, _ = menu(setup)
    session.write_stdin("h\u00e9\x1b\x01ost2".encode() + b"\r")
    assert setup.opened()[0].target == "host2"


@pytest.mark.parametrize("cancel", [b"\x03", b"\x04"])
def test_menu_cancelled(setup, cancel):
    session, client = menu(setup)
    session.write_stdin(b"1" + cancel + b"\r")
    assert setup.opened() == [] and client.exit == ExitInfo(status=1)
    session.write_stdin(b"2\r")  # nothing after the end
    assert setup.opened() == []


def test_menu_eof_before_a_choice(setup):
    session, client = menu(setup, pty=False)
    session.close_stdin()
    assert client.err == b"sshgateway: no target chosen\r\n"
    assert client.exit == ExitInfo(status=1) and not setup.clock.getDelayedCalls()


def test_menu_times_out(setup):
    session, client = menu(setup)
    setup.clock.advance(routing.MENU_TIMEOUT - 1)
    assert client.exit is None
    setup.clock.advance(1)
    assert b"no target chosen within 60 s" in client.err and client.exit == ExitInfo(status=1)


def test_menu_closed_by_the_client(setup):
    session, client = setup.open("alice", None, request=shell())
    session.close()
    setup.clock.advance(100)
    assert client.out == b"" and client.exit is None and not setup.clock.getDelayedCalls()
    session.write_stdin(b"1\r")
    assert setup.opened() == []


def test_menu_choice_still_checks_the_list(setup):
    session, client = menu(setup)
    session._choices = ("secret",)  # even a corrupted menu cannot open a forbidden target
    session.write_stdin(b"1\r")
    setup.clock.advance(0)
    assert setup.opened() == [] and b"not available to alice" in client.err


# --- building the targets ----------------------------------------------------------------------


class Recorder:
    made: list = []

    def __init__(self, reactor, config, known_hosts):
        if config.host == "bad":
            raise ValueError("unknown algorithm 'rot13'")
        self.args = (reactor, config, known_hosts)
        Recorder.made.append(self)

    def open_session(self, username, request, client, *, password=None):
        return FakeSessionTarget(
            request, client, self.args[1].name, username, {"password": password}
        )


@pytest.fixture
def fake_upstreams(monkeypatch):
    Recorder.made = []
    fakes = {
        name: dataclasses.replace(protocol, upstream=Recorder) if protocol.upstream else protocol
        for name, protocol in TARGET_PROTOCOLS.items()
    }
    monkeypatch.setattr(routing, "TARGET_PROTOCOLS", fakes)


def test_build_router(fake_upstreams, tmp_path):
    config = parse_config(
        CONFIG.replace("[users.alice]", f'state_dir = "{tmp_path}"\n[users.alice]')
    )
    clock = Clock()
    local = FakeTarget("local", takes_password=False)
    known_hosts = object()
    router = build_router(config, clock, local=local, known_hosts=known_hosts)
    assert router.targets["local"] is local
    assert {r.args[1].name for r in Recorder.made} == {"sw1", "host2", "tn", "secret"}
    assert all(r.args[0] is clock and r.args[2] is known_hosts for r in Recorder.made)
    assert router.targets["tn"] is next(r for r in Recorder.made if r.args[1].name == "tn")


def test_build_router_reports_a_rejected_target(fake_upstreams):
    config = parse_config(CONFIG.replace('host = "192.0.2.13"', 'host = "bad"'))
    with pytest.raises(ValueError, match="target secret: unknown algorithm"):
        build_router(config, Clock(), local=FakeTarget("local"), known_hosts=object())


def test_build_router_with_only_local_needs_no_known_hosts(monkeypatch):
    config = parse_config(f'[users.a]\npassword = "{HASH}"\n{LOCAL_ACCESS}')

    def boom(config):
        raise AssertionError("known_hosts loaded")

    monkeypatch.setattr(routing, "_load_known_hosts", boom)
    router = build_router(config, Clock(), local=FakeTarget("local"))
    assert list(router.targets) == ["local"]


def test_build_router_loads_known_hosts_from_the_state_dir(fake_upstreams, monkeypatch, tmp_path):
    made = []
    monkeypatch.setattr(routing, "KnownHosts", lambda path: made.append(path) or ("kh", path))
    config = parse_config(f'state_dir = "{tmp_path}"\n' + CONFIG, base=tmp_path)
    build_router(config, Clock(), local=FakeTarget("local"))
    assert made == [Path(tmp_path) / "known_hosts"]
    assert Recorder.made[0].args[2] == ("kh", Path(tmp_path) / "known_hosts")


def test_build_router_default_local_target():
    from gateway.targets.local import LocalTarget

    config = parse_config(f'[users.a]\npassword = "{HASH}"\n{LOCAL_ACCESS}')
    router = build_router(config, Clock())
    assert isinstance(router.targets["local"], LocalTarget)


def test_close_all_once_per_target(setup):
    setup.router.close_all()
    assert setup.local.closed_all == 1
    assert all(t.closed_all == 1 for t in setup.targets.values())


# --- hostile input -----------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=20), pty=st.booleans())
def test_menu_survives_any_input(chunks, pty):
    setup = Setup()
    session, client = menu(setup, pty=pty)
    for chunk in chunks:
        session.write_stdin(chunk)
        assert len(session._line) <= routing.MAX_MENU_LINE
    opened = setup.opened()
    assert len(opened) <= 1
    if opened:
        # Nothing typed before the choice reaches the target; what came after does.
        assert len(opened[0].stdin) < sum(map(len, chunks))
    elif client.exit is not None:
        assert client.exit == ExitInfo(status=1)
    session.close()
    assert not setup.clock.getDelayedCalls()


def test_build_router_builds_each_target_with_its_registry_class():
    # No importlib, no fallback: the class is the registry's, imported with the module.
    config = parse_config(CONFIG)
    router = build_router(config, Clock(), local=FakeTarget("local"), known_hosts=object())
    for name, target in config.targets.items():
        upstream = TARGET_PROTOCOLS[target.protocol].upstream
        assert type(router.targets[name]) is (upstream or FakeTarget), name
