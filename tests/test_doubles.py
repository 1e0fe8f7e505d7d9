"""Every test double keeps to the interface it stands for, so a test that passes against a
double would pass against the real thing's interface too.

zope interfaces are checked with ``verifyObject`` (methods, their signatures, attributes);
the two roles that have no zope interface are checked against what stands for them in the
product: the typing.Protocol ``SessionSink`` (FakeUpstreamSink) and the call the Router
makes on a target (FakeTarget)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm
from twisted.internet.interfaces import IPushProducer
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

from gateway.live_sessions import ISessionRegistry
from gateway.recording import IBackgroundWriter
from gateway.session_tap import ISessionObserver, ISessionTap
from gateway.store.worker import IStoreBackend
from gateway.targets.bridge import IUpstreamSession, UpstreamSink
from gateway.workers import IWorkerSpawner
from protocols.auth import ISSH1RSAChallenge, SSH1RSAChallenge
from protocols.handoff import IDrainable, IHandoffFactory
from protocols.session import (
    IGatewayUser,
    ISessionClient,
    ISessionTarget,
    SessionRequest,
)
from protocols.ssh1.client import SessionSink
from tests.support import doubles


def _request() -> SessionRequest:
    return SessionRequest(command=b"true")


def _test_dispatch_handoff() -> Any:
    from tests.test_dispatch import FakeHandoff

    return FakeHandoff()


def _test_target_ssh2_realm() -> Any:
    from twisted.internet.task import Clock

    from tests.gateway.test_target_ssh2 import Device, Realm

    return Realm(Device(Clock()))


def _test_target_ssh2_key_checker() -> Any:
    from tests.gateway.test_target_ssh2 import HOST_KEY, KeyChecker

    return KeyChecker(HOST_KEY)


# (what to build, the zope interface it stands for). Not listed: the ISessionClient class
# local to tests/support/ssh1/target_driver.py's subprocess entry point, which cannot be built
# from here (it writes to that process's own result dict).
ZOPE_DOUBLES: dict[str, tuple[Callable[[], Any], InterfaceClass]] = {
    "FakeSessionClient": (doubles.FakeSessionClient, ISessionClient),
    "FakeProducer": (doubles.FakeProducer, IPushProducer),
    "FakeUpstream": (doubles.FakeUpstream, IUpstreamSession),
    "FakeUpstream-as-producer": (doubles.FakeUpstream, IPushProducer),
    "FakeSessionTarget": (
        lambda: doubles.FakeSessionTarget(_request(), doubles.FakeSessionClient()),
        ISessionTarget,
    ),
    "FakeTarget-session": (
        lambda: doubles.FakeTarget("t").open_session("alice", _request(), None),
        ISessionTarget,
    ),
    "Avatar": (lambda: doubles.Avatar("alice"), IGatewayUser),
    "Avatar-session": (
        lambda: doubles.Avatar("alice").open_session(_request(), doubles.FakeSessionClient()),
        ISessionTarget,
    ),
    "Realm": (doubles.Realm, IRealm),
    "RSAChecker": (lambda: doubles.RSAChecker({}), ICredentialsChecker),
    "Challenger-as-challenge": (
        lambda: SSH1RSAChallenge(b"alice", 3233, doubles.Challenger(True)),
        ISSH1RSAChallenge,
    ),
    "test_dispatch.FakeHandoff": (_test_dispatch_handoff, IHandoffFactory),
    "FakeDrainable": (doubles.FakeDrainable, IDrainable),
    "FakeDrainableHandoff": (doubles.FakeDrainableHandoff, IHandoffFactory),
    "test_target_ssh2.Realm": (_test_target_ssh2_realm, IRealm),
    "test_target_ssh2.KeyChecker": (_test_target_ssh2_key_checker, ICredentialsChecker),
    "RecordingObserver": (doubles.RecordingObserver, ISessionObserver),
    "RecordingTap": (doubles.RecordingTap, ISessionTap),
    "FakeDatabase": (doubles.FakeDatabase, IStoreBackend),
    "FakeWorkerSpawner": (doubles.FakeWorkerSpawner, IWorkerSpawner),
    "ManualWriter": (doubles.ManualWriter, IBackgroundWriter),
    "FakeSessionRegistry": (doubles.FakeSessionRegistry, ISessionRegistry),
}


@pytest.mark.parametrize("name", sorted(ZOPE_DOUBLES))
def test_double_verifies_against_its_interface(name):
    build, interface = ZOPE_DOUBLES[name]
    assert verifyObject(interface, build())


def test_every_implementer_in_doubles_is_listed():
    """A new double in tests/support/doubles.py that declares an interface gets checked here."""
    from zope.interface import implementedBy

    declared = {
        name
        for name, obj in vars(doubles).items()
        if inspect.isclass(obj) and obj.__module__ == doubles.__name__ and list(implementedBy(obj))
    }
    checked = {name.split("-")[0] for name in ZOPE_DOUBLES}
    assert declared <= checked, declared - checked


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member)
    }


def test_fake_upstream_sink_has_session_sink_methods():
    """FakeUpstreamSink stands for SessionSink (a typing.Protocol; the bridge's UpstreamSink
    is the real one): every method, with the same parameters."""
    wanted = _public_methods(SessionSink)
    assert wanted, "SessionSink has no methods: this check checks nothing"
    fake = doubles.FakeUpstreamSink()
    for name, signature in wanted.items():
        assert name in _public_methods(UpstreamSink), f"UpstreamSink lacks {name}"
        have = inspect.signature(getattr(fake, name))
        assert list(have.parameters) == list(signature.parameters)[1:], name


def test_fake_target_takes_the_calls_the_router_makes():
    """FakeTarget stands for a Router target, which has no interface: the Router calls
    ``open_session(username, request, client)``, with ``password=`` for pass-through
    targets, and ``close_all()`` when it is there."""
    fake = doubles.FakeTarget("t")
    open_session = inspect.signature(fake.open_session)
    open_session.bind("alice", _request(), None)
    open_session.bind("alice", _request(), None, password="pw")
    inspect.signature(fake.close_all).bind()


def test_recording_key_generator_takes_what_the_server_key_generator_takes():
    """RecordingKeyGenerator stands for protocols.ssh1.server.generate_server_key."""
    from protocols.ssh1.server import generate_server_key

    fake = inspect.signature(doubles.RecordingKeyGenerator())
    real = inspect.signature(generate_server_key)
    assert list(fake.parameters) == list(real.parameters)
    assert doubles.RecordingKeyGenerator()(768).key_size == 768
