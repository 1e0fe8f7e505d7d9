"""The Twisted SSH-1 server in memory for tests: one connection of SSH1ServerFactory over a
StringTransport with a Clock, driven by the test-only MiniClient (tests.support.ssh1.minclient),
in front of whatever portal the test gives it."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from protocols.auth import AuthLimits
from protocols.record import ConnectionRecord
from protocols.ssh1 import messages as m
from protocols.ssh1.server import SSH1ServerFactory
from protocols.ssh1.settings import SSH1Settings
from tests.support.doubles import ThreadCalls
from tests.support.ssh1.minclient import MiniClient, host_key, server_key, string

Packets = list[tuple[int, bytes]]

DEFAULT_SETTINGS = SSH1Settings()
DEFAULT_LIMITS = AuthLimits(failure_delay=1.0)


class SSH1ServerRig:
    """A connection that has read the server's public key; ``generated`` counts the server
    keys the factory made (with ``key_generator``, else the one cached test key), ``threads``
    holds the ones made off the reactor (made at once unless the test says otherwise)."""

    def __init__(
        self,
        portal: Portal,
        settings: SSH1Settings = DEFAULT_SETTINGS,
        limits: AuthLimits = DEFAULT_LIMITS,
        client_version: bytes = b"SSH-1.5-t",
        key_generator: Callable[[int], rsa.RSAPrivateKey] | None = None,
    ) -> None:
        self.portal = portal
        self.clock = Clock()
        self.generated = 0

        def generate(bits: int):
            self.generated += 1
            return server_key() if key_generator is None else key_generator(bits)

        self.threads = ThreadCalls(at_once=True)  # server keys made off the reactor
        self.factory = SSH1ServerFactory(
            portal, host_key(), settings, limits, self.clock, key_generator=generate,
            off_reactor=self.threads,
        )
        self.client_version = client_version
        self.connect()

    def connect(self) -> None:
        """A new connection, the rig's from now on, that has read the server's public key."""
        self.record = ConnectionRecord(peer="127.0.0.1:1")
        self.protocol = self.factory.build_protocol(
            self.record, b"SSH-1.99-gw", self.client_version
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.client = MiniClient()
        [(msg_type, payload)] = self.received()
        assert msg_type == m.SSH_SMSG_PUBLIC_KEY
        self.client.parse_public_key(payload)

    def received(self) -> Packets:
        """The packets the server sent since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return self.client.feed(data)

    def send(self, msg_type: int, payload: bytes = b"") -> Packets:
        """Send one packet; the server's answer to it."""
        self.protocol.dataReceived(self.client.packet(msg_type, payload))
        return self.received()

    def key_exchange(self, cipher: str = "3des") -> None:
        self.protocol.dataReceived(self.client.session_key_packet(cipher))
        assert self.received() == [(m.SSH_SMSG_SUCCESS, b"")]

    def login(self, user: bytes, password: bytes) -> Packets:
        """Key exchange, then a password login; the server's answer to the password."""
        self.key_exchange()
        assert self.send(m.SSH_CMSG_USER, string(user)) == [(m.SSH_SMSG_FAILURE, b"")]
        return self.send(m.SSH_CMSG_AUTH_PASSWORD, string(password))
