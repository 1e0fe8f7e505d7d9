"""The running gateway's life, in memory: config generations swapped by a reload, the
endpoints a reload re-opens, the shutdown drain (Clock), and systemd notifications."""

from __future__ import annotations

import os
import socket

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import formatEvent, globalLogPublisher

from gateway.config import load_config
from gateway.dispatch import DispatcherFactory
from gateway.lifecycle import CLOSE_WAIT, SHUTDOWN_REASON, Drain, shutdown_message
from gateway.sd_notify import Notifier, socket_address
from gateway.service import make_service
from tests.support.doubles import FakeDrainableHandoff
from tests.support.gateway_helpers import LOCAL_ACCESS


@pytest.fixture
def caplog_events():
    """The gateway's log lines while the test runs (formatted)."""
    events: list = []
    globalLogPublisher.addObserver(events.append)

    class Lines:
        def __iter__(self):
            return iter([formatEvent(e) for e in events])

    yield Lines()
    globalLogPublisher.removeObserver(events.append)


# --- generations and the drain, on a dispatcher with fake protocols ----------------------


def accept(factory: DispatcherFactory, closes: bool = True, version: bytes = b"SSH-2.0-x\r\n"):
    """A connection accepted by ``factory`` that has sent ``version`` (b"" keeps it in the
    version exchange). ``closes``: its transport calls connectionLost when closed (a peer
    that reads); otherwise the close never completes (one that does not)."""
    proto = factory.buildProtocol(None)
    transport = StringTransportWithDisconnection() if closes else StringTransport()
    transport.protocol = proto
    proto.makeConnection(transport)
    if version:
        proto.dataReceived(version)
    return proto, transport


def test_new_connections_use_the_swapped_generation_and_old_ones_keep_theirs():
    clock = Clock()
    first = FakeDrainableHandoff()
    factory = DispatcherFactory({"ssh2": first}, clock)
    old_connection, old_transport = accept(factory)
    old_generation = factory.generation

    second = FakeDrainableHandoff()
    factory.swap(DispatcherFactory({"ssh2": second, "ssh1": second}, clock).generation)
    new_connection, new_transport = accept(factory, version=b"")

    assert old_connection.generation is old_generation
    assert len(first.built) == 1 and old_connection.inner is first.built[0]
    # The new generation announces what it enables; the old connection heard the old line.
    assert new_transport.value().startswith(b"SSH-1.99-")
    assert old_transport.value().startswith(b"SSH-2.0-")
    new_connection.dataReceived(b"SSH-1.5-x\r\n")
    assert new_connection.inner is second.built[0]
    # The old generation stays until its last connection closes, then it is retired.
    assert factory.retired == [old_generation] and not first.stopped
    old_transport.loseConnection()
    assert factory.retired == [] and first.stopped and not second.stopped


def test_a_generation_nobody_uses_is_retired_at_the_swap():
    clock = Clock()
    first = FakeDrainableHandoff()
    factory = DispatcherFactory({"ssh2": first}, clock)
    factory.swap(DispatcherFactory({"ssh2": FakeDrainableHandoff()}, clock).generation)
    assert first.stopped and factory.retired == []


def drain_rig(grace: float = 10.0):
    clock = Clock()
    handoff = FakeDrainableHandoff()
    factory = DispatcherFactory({"ssh2": handoff}, clock)
    return clock, handoff, factory


def test_drain_tells_sessions_closes_the_others_now_and_finishes_when_sessions_end():
    clock, handoff, factory = drain_rig()
    in_session, _ = accept(factory)
    in_login, _ = accept(factory)
    handoff.built[1].session = False
    in_version, version_transport = accept(factory, version=b"")

    done = Drain(factory, clock, grace=10).start()

    session, login = handoff.built
    assert session.told == [shutdown_message(10)] and session.disconnected is None
    assert login.disconnected == SHUTDOWN_REASON and login.told == []
    assert not version_transport.connected  # no packet format yet: just closed
    assert factory.connections == {in_session} and not done.called
    # The session ends (its program exits): the next sweep closes the connection cleanly.
    session.session = False
    clock.advance(1.0)
    assert session.disconnected == SHUTDOWN_REASON
    assert done.called and factory.connections == set()
    assert "sshgateway is shutting down" in shutdown_message(30) and "30 s" in shutdown_message(30)


def test_drain_disconnects_what_is_left_when_the_grace_runs_out():
    clock, handoff, factory = drain_rig()
    accept(factory)
    done = Drain(factory, clock, grace=10).start()
    clock.advance(9.5)
    assert handoff.built[0].disconnected is None and not done.called
    clock.advance(0.5)
    assert handoff.built[0].disconnected == SHUTDOWN_REASON and done.called


def test_drain_drops_a_peer_that_does_not_take_its_disconnect():
    clock, handoff, factory = drain_rig()
    _, transport = accept(factory, closes=False)
    done = Drain(factory, clock, grace=2).start()
    clock.advance(2)
    assert handoff.built[0].disconnected == SHUTDOWN_REASON and not done.called
    clock.advance(CLOSE_WAIT)
    assert transport.disconnected and done.called  # aborted


def test_drain_now_drops_everything_at_once():
    clock, handoff, factory = drain_rig()
    _, transport = accept(factory)
    drain = Drain(factory, clock, grace=30)
    done = drain.start()
    drain.now()
    assert transport.disconnected and done.called and not clock.getDelayedCalls()


def test_drain_of_an_idle_gateway_is_over_at_once():
    clock, _, factory = drain_rig()
    assert Drain(factory, clock, grace=30).start().called
    assert not clock.getDelayedCalls() and factory.close_watchers == []


# --- the service: reload, endpoints, stop ------------------------------------------------


def write_config(
    tmp_path, users: str, listen: str = '"tcp:0:interface=127.0.0.1"', extra: str = ""
):
    path = tmp_path / "gw.toml"
    keys = tmp_path / "authorized_keys"
    keys.touch(mode=0o600)
    path.write_text(
        f'listen = [{listen}]\nstate_dir = "{tmp_path / "state"}"\nshutdown_grace = 5\n{extra}\n'
        + "".join(f'[users.{u}]\nauthorized_keys = "{keys}"\n{LOCAL_ACCESS}' for u in users.split())
    )
    return path


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[tuple[str, ...]] = []

    def send(self, *lines: str) -> bool:
        self.sent.append(lines)
        return True


def started(tmp_path, users: str = "alice", **kw):
    reactor = MemoryReactorClock()
    top = make_service(load_config(write_config(tmp_path, users, **kw)), reactor)
    top.notifier = RecordingNotifier()
    top.startService()
    top.running_now()  # what callWhenRunning does once the reactor runs
    return reactor, top


def users_of(top) -> set[str]:
    return set(top.dispatcher.handoffs["ssh2"].portal.realm.users)


def test_reload_swaps_in_the_new_config_for_new_connections(tmp_path):
    reactor, top = started(tmp_path)
    old = top.dispatcher.generation
    write_config(tmp_path, "alice bob")
    assert top.reload() is True
    assert top.dispatcher.generation is not old and users_of(top) == {"alice", "bob"}
    # The host keys are the ones loaded at start; the listener was not touched.
    assert top.dispatcher.handoffs["ssh2"].privateKeys == old.handoffs["ssh2"].privateKeys
    assert len(reactor.tcpServers) == 1
    states = [lines[0] for lines in top.notifier.sent]
    assert states == ["READY=1", "RELOADING=1", "READY=1"]
    assert any(line.startswith("MONOTONIC_USEC=") for line in top.notifier.sent[1])
    top.stopService()


def test_a_broken_config_is_refused_and_the_old_one_stays(tmp_path, caplog_events):
    reactor, top = started(tmp_path)
    old = top.dispatcher.generation
    (tmp_path / "gw.toml").write_text("listen = [\n")
    assert top.reload() is False
    assert top.dispatcher.generation is old and users_of(top) == {"alice"}
    assert any("reload refused" in line and "gw.toml:" in line for line in caplog_events)
    write_config(
        tmp_path,
        "alice",
        extra='[targets.dev]\nprotocol = "ssh1"\nhost = "127.0.0.1"\nkey = "/nonexistent"',
    )
    assert top.reload() is False and top.dispatcher.generation is old
    top.stopService()


def test_reload_reopens_only_the_endpoints_that_changed(tmp_path, caplog_events):
    reactor, top = started(
        tmp_path, listen='"tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"'
    )
    kept = top.listeners["tcp:0:interface=127.0.0.1"]
    gone = top.listeners["tcp:0:interface=127.0.0.2"]
    kept_port = kept.port
    write_config(
        tmp_path, "alice", listen='"tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.3"'
    )
    assert top.reload()
    assert top.listeners["tcp:0:interface=127.0.0.1"] is kept and kept.port is kept_port
    assert kept.running and not gone.running and gone.parent is None
    assert set(top.listeners) == {"tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.3"}
    assert [iface for _, _, _, iface in reactor.tcpServers] == [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
    ]
    assert any(
        "+tcp:0:interface=127.0.0.3 -tcp:0:interface=127.0.0.2 (1 unchanged)" in line
        for line in caplog_events
    )
    top.stopService()


def test_a_new_endpoint_that_cannot_listen_is_logged_and_the_rest_goes_on(tmp_path, caplog_events):
    from twisted.internet.error import CannotListenError

    reactor, top = started(tmp_path)
    listen = reactor.listenTCP

    def busy(port, factory, backlog=50, interface=""):
        if interface == "127.0.0.3":
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return listen(port, factory, backlog, interface)

    reactor.listenTCP = busy
    write_config(
        tmp_path, "alice bob", listen='"tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.3"'
    )
    assert top.reload() is True
    assert users_of(top) == {"alice", "bob"}
    assert set(top.listeners) == {"tcp:0:interface=127.0.0.1"}
    assert [s for s in top if getattr(s, "description", "") == "tcp:0:interface=127.0.0.3"] == []
    lines = list(caplog_events)
    assert any("cannot listen on tcp:0:interface=127.0.0.3" in line for line in lines)
    assert any("failed tcp:0:interface=127.0.0.3" in line for line in lines)
    top.stopService()


def test_stop_closes_listeners_then_drains_then_closes_targets(tmp_path):
    reactor, top = started(tmp_path)
    listener = top.listeners["tcp:0:interface=127.0.0.1"]
    connection, transport = accept(top.dispatcher, version=b"")
    done = top.stopService()
    assert not listener.running and not transport.connected
    assert done.called
    assert [lines[0] for lines in top.notifier.sent][:2] == ["READY=1", "STOPPING=1"]


def test_stop_waits_for_an_open_session_until_the_grace(tmp_path):
    reactor, top = started(tmp_path)
    handoff = FakeDrainableHandoff()
    top.dispatcher.generation.handoffs["ssh2"] = handoff
    accept(top.dispatcher)
    done = top.stopService()
    assert handoff.built[0].told == [shutdown_message(5)] and not done.called
    reactor.advance(5)
    assert handoff.built[0].disconnected == SHUTDOWN_REASON and done.called


def test_first_stop_signal_stops_the_reactor_and_a_second_ends_the_drain_at_once(tmp_path):
    reactor, top = started(tmp_path)
    handoff = FakeDrainableHandoff()
    top.dispatcher.generation.handoffs["ssh2"] = handoff
    _, transport = accept(top.dispatcher)
    top.stop_requested("SIGTERM")
    assert reactor.hasStopped and not reactor.hasCrashed
    done = top.stopService()  # what the reactor's shutdown does
    assert not done.called and transport.connected
    top.stop_requested("SIGTERM")
    assert reactor.hasCrashed and transport.disconnected  # aborted, no waiting


def test_reload_during_shutdown_is_ignored(tmp_path):
    reactor, top = started(tmp_path)
    top.stopService()
    assert top.reload() is False


# --- sd_notify ---------------------------------------------------------------------------


def test_notify_socket_addresses():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@sd-notify-1") == "\0sd-notify-1"
    assert socket_address("relative") is None and socket_address("@") is None


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_sends_datagrams_and_takes_the_variable_out(tmp_path, abstract):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"sshgateway-test-{os.getpid()}"
        listener.bind("\0" + name)
        value = "@" + name
    else:
        value = str(tmp_path / "notify")
        listener.bind(value)
    environ = {"NOTIFY_SOCKET": value}
    with listener:
        notifier = Notifier(environ)
        assert "NOTIFY_SOCKET" not in environ
        assert notifier.ready("serving")
        assert listener.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notifier_without_a_socket_does_nothing_and_a_gone_socket_never_raises(tmp_path):
    assert Notifier({}).send("READY=1") is False
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert gone.send("READY=1") is False
    assert gone.stopping("draining") is False


# --- a reload that needs a new SSH-1 server key ------------------------------------------


def ssh1_login_gets_server_key_bits(top) -> int:
    """An SSH-1 client connects now: the server-key size in the SSH_SMSG_PUBLIC_KEY it is
    sent at once (no reactor turn, no thread)."""
    from protocols.ssh1 import messages as m
    from tests.support.ssh1.minclient import MiniClient

    _proto, transport = accept(top.dispatcher, version=b"SSH-1.5-test\n")
    _line, _, packets = transport.value().partition(b"\n")
    client = MiniClient()
    [(msg_type, payload)] = client.feed(packets)
    assert msg_type == m.SSH_SMSG_PUBLIC_KEY
    client.parse_public_key(payload)
    return client.public_key["bits"][0]


def test_a_reload_that_needs_a_new_ssh1_server_key_makes_it_off_the_reactor(tmp_path):
    """Issue 15: a reload that changes [ssh1] server_key_bits made the new key in the
    reactor thread (44-89 ms at 2048 bits, seconds at 4096), and every connection of both
    protocols waited. Now the key is handed to a thread; the running configuration goes
    on serving meanwhile, and the new one takes over in one swap once its key is there."""
    from tests.support.doubles import RecordingKeyGenerator, ThreadCalls

    reactor, top = started(tmp_path)
    threads, made = ThreadCalls(), RecordingKeyGenerator()
    top.ssh1_options = {"key_generator": made, "off_reactor": threads}
    old = top.dispatcher.generation
    write_config(tmp_path, "alice bob", extra="[ssh1]\nserver_key_bits = 768")
    assert top.reload() is True
    assert made.calls == [] and len(threads.pending) == 1  # only handed to a thread
    # A login during the reload is answered at once, by the running configuration.
    assert top.dispatcher.generation is old and users_of(top) == {"alice"}
    assert ssh1_login_gets_server_key_bits(top) == 1024
    threads.run()  # the thread is done: the new configuration takes over, with its key
    assert made.calls == [768]
    assert top.dispatcher.generation is not old and users_of(top) == {"alice", "bob"}
    assert ssh1_login_gets_server_key_bits(top) == 768
    assert [lines[0] for lines in top.notifier.sent] == ["READY=1", "RELOADING=1", "READY=1"]
    # A reload that keeps the size keeps the key: nothing to make, swapped at once.
    write_config(tmp_path, "alice", extra="[ssh1]\nserver_key_bits = 768")
    running = top.dispatcher.handoffs["ssh1"].current_server_key
    assert top.reload() is True and threads.pending == [] and made.calls == [768]
    assert users_of(top) == {"alice"}
    assert top.dispatcher.handoffs["ssh1"].current_server_key is running
    top.stopService()


def test_a_later_reload_wins_over_one_still_making_its_key_and_a_failed_key_refuses(
    tmp_path, caplog_events
):
    from tests.support.doubles import RecordingKeyGenerator, ThreadCalls

    reactor, top = started(tmp_path)
    threads, made = ThreadCalls(), RecordingKeyGenerator()
    top.ssh1_options = {"key_generator": made, "off_reactor": threads}
    write_config(tmp_path, "alice bob", extra="[ssh1]\nserver_key_bits = 768")
    assert top.reload() is True  # its key is still being made when...
    write_config(tmp_path, "alice carol")  # ...this one keeps the running 1024-bit key
    assert top.reload() is True and users_of(top) == {"alice", "carol"}
    threads.run()  # the first one's key comes too late: it never serves
    assert users_of(top) == {"alice", "carol"} and ssh1_login_gets_server_key_bits(top) == 1024

    def broken(bits):
        raise MemoryError("no memory for primes")

    top.ssh1_options = {"key_generator": broken, "off_reactor": threads}
    generation = top.dispatcher.generation
    write_config(tmp_path, "alice dave", extra="[ssh1]\nserver_key_bits = 768")
    assert top.reload() is True
    threads.run()
    assert top.dispatcher.generation is generation and users_of(top) == {"alice", "carol"}
    assert any("reload refused" in line and "no memory" in line for line in caplog_events)
    assert [lines[0] for lines in top.notifier.sent][-1] == "READY=1"
    top.stopService()
