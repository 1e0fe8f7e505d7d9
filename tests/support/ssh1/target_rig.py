"""An SSH1Target joined in memory to the gateway's own dispatcher and SSH-1 server (the
"device", logging in admin/devpass or the test user key), by twisted.test.iosim on a
MemoryReactorClock: the rig the SSH-1 upstream tests and the flow-record tests drive."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from gateway.dispatch import DispatcherFactory
from gateway.targets import TargetConfig
from gateway.targets.ssh1 import SSH1Target
from protocols.auth import AuthLimits
from protocols.session import SessionRequest
from protocols.ssh1 import keys
from protocols.ssh1 import messages as m
from protocols.ssh1.client import SSH1ClientProtocol
from protocols.ssh1.packet import PacketEncoder
from protocols.ssh1.server import SSH1ServerFactory
from protocols.ssh1.settings import SSH1Settings
from tests.support.doubles import FakeSessionClient, Realm, RSAChecker, ThreadCalls
from tests.support.ssh1.minclient import host_key, server_key, user_key


@dataclass(frozen=True)
class CompressingConfig(TargetConfig):
    compression: int = 0


class Device:
    """The gateway's own SSH-1 server standing in for a legacy device; ``host`` and
    ``server`` replace its keys (``server_key_bits``: what its settings say, kept 128 bits
    from the host key's size as they must be, whatever size ``server`` has)."""

    def __init__(
        self, reactor, host=None, ciphers=("3des", "blowfish", "des"), protocols=("ssh1",),
        server=None, server_key_bits=1024,
    ):  # fmt: skip
        self.realm = Realm()
        checker = InMemoryUsernamePasswordDatabaseDontUse(admin=b"devpass")
        rsa_checker = RSAChecker({b"admin": keys.public_numbers(user_key())})
        portal = Portal(self.realm, [checker, rsa_checker])
        settings = SSH1Settings(ciphers=ciphers, server_key_bits=server_key_bits)
        self.ssh1 = SSH1ServerFactory(
            portal, host or host_key(), settings, AuthLimits(failure_delay=0.0), reactor,
            key_generator=lambda bits: server or server_key(), off_reactor=ThreadCalls(at_once=True),
        )  # fmt: skip
        self.dispatcher = DispatcherFactory({p: self.ssh1 for p in protocols}, reactor)

    @property
    def target(self):
        [avatar] = self.realm.avatars
        [target] = avatar.targets
        return target


class ScriptedDeviceProtocol(Protocol):
    """A hostile SSH-1 device that only follows a script: its version line, then, once
    the client's line arrived, an SSH_SMSG_PUBLIC_KEY with ``payload``
    (tests.support.ssh1.minclient.public_key_payload); whatever the client sends after that
    (its session key) ends the connection, as from a device that cannot decrypt it."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.key_sent = False

    def connectionMade(self) -> None:
        self.transport.write(b"SSH-1.5-scripted\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.key_sent and b"\n" in self.received:
            self.key_sent = True
            self.transport.write(PacketEncoder().encode(m.SSH_SMSG_PUBLIC_KEY, self.payload))
        elif self.key_sent and self.received.split(b"\n", 1)[1]:
            self.transport.loseConnection()


class ScriptedDevice:
    """Stands in for :class:`Device` in a :class:`Rig`."""

    def __init__(self, payload: bytes) -> None:
        self.dispatcher = Factory.forProtocol(lambda: ScriptedDeviceProtocol(payload))


class Rig:
    def __init__(
        self, tmp_path: Path, known_hosts, device: Device | ScriptedDevice | None = None, **config
    ):
        self.reactor = MemoryReactorClock()
        self.device = device or Device(self.reactor)
        settings = dict(name="dev", protocol="ssh1", host="192.0.2.1", port=22,
                        username="admin", password="devpass")
        settings.update(config)
        self.config = CompressingConfig(**settings)
        self.known_hosts = known_hosts
        self.target = SSH1Target(
            self.reactor, self.config, known_hosts,
            endpoint_factory=lambda host, port, timeout: TCP4ClientEndpoint(
                self.reactor, host, port, timeout
            ),
        )
        self.client = FakeSessionClient()
        self.pump: iosim.IOPump | None = None

    def open(self, request: SessionRequest, username="alice", password=None, connect=True):
        self.bridge = self.target.open_session(username, request, self.client, password=password)
        if connect:
            self.connect()
        return self.bridge

    def connect(self) -> None:
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        assert (host, port) == (self.config.host, self.config.port)
        client_proto = factory.buildProtocol(None)
        server_proto = self.device.dispatcher.buildProtocol(None)
        self.client_transport = iosim.makeFakeClient(client_proto)
        self.server_transport = iosim.makeFakeServer(server_proto)
        self.pump = iosim.connect(
            server_proto, self.server_transport, client_proto, self.client_transport, greet=False
        )
        self.flush()

    def flush(self) -> None:
        assert self.pump is not None
        for _ in range(50):
            self.pump.flush()
            self.reactor.advance(0)
            if not self.pump.pump():
                break

    @property
    def protocol(self) -> SSH1ClientProtocol:
        return self.bridge.upstream.protocol
