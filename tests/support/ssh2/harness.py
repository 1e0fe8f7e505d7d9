"""In-memory harness: Conch's client transport against our SSH-2 front end over iosim,
behind a minimal stand-in for the dispatcher (it sends ``SSH-1.99-…`` and hands over)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from twisted.conch import error as conch_error
from twisted.conch.ssh import channel, common, connection, keys, transport, userauth
from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from protocols.auth import AuthLimits, PartialAuthentication
from protocols.record import ConnectionRecord
from protocols.session import UNRESTRICTED, ExitInfo, IGatewayUser, SessionRestrictions
from protocols.ssh2.factory import SSH2ServerFactory
from protocols.ssh2.settings import SSH2Settings
from protocols.ssh2.strict_kex import StrictKexTransport
from tests.support.doubles import Avatar

SERVER_LINE = b"SSH-1.99-sshgateway_0.1.0"


@cache
def host_keys() -> dict[bytes, keys.Key]:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    ed = keys.Key(ed25519.Ed25519PrivateKey.generate())
    rsa_key = keys.Key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return {b"ssh-ed25519": ed, b"rsa-sha2-512": rsa_key, b"rsa-sha2-256": rsa_key}


@cache
def user_key() -> keys.Key:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return keys.Key(ed25519.Ed25519PrivateKey.generate())


@cache
def other_key() -> keys.Key:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return keys.Key(ed25519.Ed25519PrivateKey.generate())


# -- the gateway side: a portal whose avatars are tests.support.doubles.Avatar ---------------------


@dataclass
class FakePortal:
    """A portal with one user, alice: password 'secret' and user_key()."""

    policy: str = "any"
    on_open: Any = None
    logins: list[tuple[str, str]] = field(default_factory=list)
    logged_out: int = 0
    users: dict[str, Avatar] = field(default_factory=dict)
    key_blob: bytes | None = None  # alice's public key; user_key() when None
    restrictions: SessionRestrictions = UNRESTRICTED  # what alice's sessions may not do

    def listCredentialsInterfaces(self) -> list[Any]:
        return [credentials.IUsernamePassword, credentials.ISSHPrivateKey]

    def login(self, creds: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        return defer.maybeDeferred(self._login, creds, mind)

    def _login(self, creds: Any, mind: Any) -> tuple:
        name = creds.username.decode("utf-8", "replace")
        if credentials.IUsernamePassword.providedBy(creds):
            ok = name == "alice" and creds.password == b"secret"
        else:
            blob = self.key_blob or user_key().public().blob()
            ok = name == "alice" and creds.blob == blob
            if ok and creds.signature is None:
                raise conch_error.ValidPublicKey()
            if ok:
                ok = keys.Key.fromString(creds.blob).verify(creds.signature, creds.sigData)
        if not ok:
            raise UnauthorizedLogin("bad credentials")
        self.logins.append((name, mind.method))
        if self.policy == "all":
            done = set(mind.succeeded) | {mind.method}
            remaining = [m for m in ("publickey", "password") if m not in done]
            if remaining:
                mind.succeeded.add(mind.method)
                raise PartialAuthentication(remaining)
        user = self.users.setdefault(
            name,
            Avatar(
                name, self.on_open, allowed_env=("LANG", "LC_ALL"), restrictions=self.restrictions
            ),
        )

        def logout() -> None:
            self.logged_out += 1

        return IGatewayUser, user, logout


# -- the client side -------------------------------------------------------------------------


class ClientTransport(transport.SSHClientTransport):
    def __init__(self, auth: Any) -> None:
        self.auth = auth
        self.host_key: bytes | None = None
        self.disconnect: tuple[int, bytes] | None = None
        self.secure = False

    def verifyHostKey(self, hostKey: bytes, fingerprint: str) -> defer.Deferred:
        self.host_key = hostKey
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        # Conch calls this after every NEWKEYS, re-keys included: log in once.
        if self.secure:
            return
        self.secure = True
        if self.auth is not None:
            self.requestService(self.auth)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.disconnect = (reasonCode, description)


class StrictClientTransport(StrictKexTransport, ClientTransport):
    """Conch's client with the strict-kex marker, as OpenSSH >= 9.6 sends it."""


class ClientAuth(userauth.SSHUserAuthClient):
    def __init__(self, user: bytes, conn: Any, password: bytes | None = None, key: Any = None):
        super().__init__(user, conn)
        self.password = password
        self.key = key
        self.preferredOrder = [b"publickey", b"password"]
        self.failures: list[bytes] = []
        self.key_offered = False

    def getPassword(self, prompt: Any = None) -> defer.Deferred | None:
        if self.password is None:
            return None
        return defer.succeed(self.password)

    def getPublicKey(self) -> Any:
        if self.key is None or self.key_offered:
            return None
        self.key_offered = True
        return self.key.public()

    def getPrivateKey(self) -> defer.Deferred:
        return defer.succeed(self.key)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        self.failures.append(packet)
        return super().ssh_USERAUTH_FAILURE(packet)


class ClientConnection(connection.SSHConnection):
    def __init__(self) -> None:
        super().__init__()
        self.started = False

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.started = True


class ClientSession(channel.SSHChannel):
    name = b"session"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.out = bytearray()
        self.err = bytearray()
        self.events: list[str] = []
        self.exit_status: int | None = None
        self.exit_signal: tuple | None = None
        self.opened = False
        self.is_closed = False
        self.replies: list[bool] = []

    def channelOpen(self, data: bytes) -> None:
        self.opened = True

    def request(self, kind: bytes, data: bytes = b"", want_reply: bool = True) -> None:
        d = self.conn.sendRequest(self, kind, data, wantReply=want_reply)
        if d is not None:
            d.addCallbacks(lambda _: self.replies.append(True), lambda _: self.replies.append(False))

    def dataReceived(self, data: bytes) -> None:
        self.out += data
        self.events.append("data")

    def extReceived(self, dataType: int, data: bytes) -> None:
        self.err += data
        self.events.append("ext")

    def eofReceived(self) -> None:
        self.events.append("eof")

    def request_exit_status(self, data: bytes) -> int:
        self.exit_status = int.from_bytes(data[:4], "big")
        self.events.append("exit-status")
        return 1

    def request_exit_signal(self, data: bytes) -> int:
        name, rest = common.getNS(data)
        core = rest[0]
        message, _lang, _ = common.getNS(rest[1:], 2)
        self.exit_signal = (name, bool(core), message)
        self.events.append("exit-signal")
        return 1

    def closed(self) -> None:
        self.is_closed = True
        self.events.append("closed")


# -- wiring ----------------------------------------------------------------------------------


class MiniDispatcher(Protocol):
    """Sends the 1.99 line, reads the client's, hands over — as gateway/dispatch.py does."""

    def __init__(self, factory: SSH2ServerFactory, record: ConnectionRecord) -> None:
        self.factory = factory
        self.record = record
        self.buffer = b""
        self.inner: Any = None

    def connectionMade(self) -> None:
        self.transport.write(SERVER_LINE + b"\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self.buffer += data
        if b"\n" not in self.buffer:
            return
        line, rest = self.buffer.split(b"\n", 1)
        self.inner = self.factory.build_protocol(self.record, SERVER_LINE, line.rstrip(b"\r"))
        self.inner.makeConnection(self.transport)
        if rest:
            self.inner.dataReceived(rest)

    def connectionLost(self, reason: Any = None) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)


@dataclass
class Wired:
    pump: iosim.IOPump
    clock: task.Clock
    factory: SSH2ServerFactory
    record: ConnectionRecord
    server: MiniDispatcher
    client: ClientTransport
    portal: FakePortal
    conn: ClientConnection | None
    auth: ClientAuth | None

    @property
    def transport(self) -> Any:
        return self.server.inner

    def flush(self) -> None:
        self.pump.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump.flush()

    def open_session(self, **kw: Any) -> ClientSession:
        assert self.conn is not None
        session = ClientSession(conn=self.conn, **kw)
        self.conn.openChannel(session)
        self.flush()
        assert session.opened
        return session

    def server_channel(self, index: int = -1) -> Any:
        return list(self.transport.service.channels.values())[index]


def wire(
    settings: SSH2Settings | None = None,
    limits: AuthLimits | None = None,
    portal: FakePortal | None = None,
    user: bytes = b"alice",
    password: bytes | None = b"secret",
    key: Any = None,
    login: bool = True,
    client_kex: list[bytes] | None = None,
    strict: bool = False,
) -> Wired:
    clock = task.Clock()
    portal = portal or FakePortal()
    factory = SSH2ServerFactory(
        portal, host_keys(), settings or SSH2Settings(), limits or AuthLimits(), clock
    )
    record = ConnectionRecord(peer="127.0.0.1:50000")
    server = MiniDispatcher(factory, record)
    conn = ClientConnection() if login else None
    auth = ClientAuth(user, conn, password=password, key=key) if login else None
    client = (StrictClientTransport if strict else ClientTransport)(auth)
    if client_kex is not None:
        client.supportedKeyExchanges = client_kex
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True),
        client,
        iosim.FakeTransport(client, isServer=False),
        greet=False,
        clock=clock,
    )
    pump.flush()
    return Wired(pump, clock, factory, record, server, client, portal, conn, auth)


def exit_info(status: int | None = None, signal: str | None = None, **kw: Any) -> ExitInfo:
    return ExitInfo(status=status, signal=signal, **kw)


def plain_packet(payload: bytes, padding: int | None = None, length: int | None = None) -> bytes:
    """An unencrypted packet (before the first NEWKEYS; block size 8)."""
    if padding is None:
        padding = 8 - (5 + len(payload)) % 8
        if padding < 4:
            padding += 8
    if length is None:
        length = 1 + len(payload) + padding
    return struct.pack(">LB", length, padding) + payload + b"\0" * padding


def fresh_transport() -> tuple[Wired, Any, StringTransport]:
    """A transport just handed over, writing into a StringTransport, for hand-fed packets."""
    w = wire(login=False)
    proto = w.factory.build_protocol(w.record, SERVER_LINE, b"SSH-2.0-x")
    t = StringTransport()
    proto.makeConnection(t)
    return w, proto, t
