"""The SSH-2 upstream target in memory: Conch's own server (plus keyboard-interactive,
which Conch's server lacks) over iosim, with MemoryReactorClock for the connect and the
bridge's timers. Every login method and session feature byte by byte, and what a real
sshd cannot show: connect failures, hostile servers, the hybrid post-quantum exchange
(sshd 9.2 predates it), legacy algorithms and the algorithm tables."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.conch.avatar import ConchUser
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import channel, common, factory, keys, userauth
from twisted.conch.ssh import connection as sshconnection
from twisted.conch.ssh import transport as sshtransport
from twisted.cred import checkers, credentials, portal
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, error, protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from gateway.known_hosts import KnownHosts
from gateway.targets import TargetConfig
from gateway.targets.ssh2 import SSH2Target, offered_algorithms
from protocols.session import ExitInfo, PtyRequest, SessionRequest, WindowSize
from protocols.ssh2.algorithms import CLIENT_CIPHERS as CIPHERS
from protocols.ssh2.algorithms import CLIENT_HOST_KEY_ALGORITHMS as HOST_KEY_ALGORITHMS
from protocols.ssh2.algorithms import CLIENT_KEX as KEX
from protocols.ssh2.algorithms import CLIENT_MACS as MACS
from protocols.ssh2.algorithms import AlgorithmError
from protocols.ssh2.cipher import KeyedCiphers, Opener, Sealer
from tests.support.doubles import FakeProducer, FakeSessionClient
from tests.support.gateway_helpers import ed25519_key, rsa_key

PASSWORD = "s3cret pass"
FUZZ_EXAMPLES = int(os.environ.get("SSH2_TARGET_FUZZ_EXAMPLES", "60"))
HOST_KEY = ed25519_key()
RSA_HOST_KEY = rsa_key(2048)


# -- a Conch upstream ------------------------------------------------------------------------


class Device:
    """What the fake upstream saw and how it behaves."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.channels: list[DeviceSession] = []
        self.kbd_only = False
        self.refuse: set[bytes] = set()  # channel requests answered with failure
        self.sessions = True  # False: session channels are refused
        self.logins: list[str] = []


class DeviceSession(channel.SSHChannel):
    name = b"session"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device: Device = self.avatar.device
        self.device.channels.append(self)
        self.requests: list[tuple[bytes, bytes]] = []
        self.stdin = bytearray()
        self.got_eof = False

    def requestReceived(self, requestType: bytes, data: bytes) -> int:
        self.requests.append((requestType, data))
        if requestType in self.device.refuse:
            return 0
        if requestType in (b"exec", b"shell"):
            self.device.clock.callLater(0, self.run, common.getNS(data)[0] if data else b"")
            return 1
        if requestType == b"subsystem":
            return int(common.getNS(data)[0] == b"sftp")  # the device's sftp-server: waits
        return int(requestType in (b"pty-req", b"window-change", b"signal"))

    def run(self, command: bytes) -> None:
        if command == b"hello":
            self.write(b"out\n")
            self.writeExtended(1, b"err\n")
            self.exit(struct.pack(">L", 3), b"exit-status")
        elif command == b"signal":
            self.exit(
                common.NS(b"KILL") + b"\x01" + common.NS(b"killed\x1b[31m") + common.NS(b""),
                b"exit-signal",
            )
        elif command == b"noexit":
            self.conn.sendEOF(self)
            self.loseConnection()

    def exit(self, data: bytes, kind: bytes) -> None:
        self.conn.sendRequest(self, kind, data)
        self.conn.sendEOF(self)
        self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.stdin += data

    def eofReceived(self) -> None:
        self.got_eof = True


class DeviceUser(ConchUser):
    def __init__(self, device: Device) -> None:
        super().__init__()
        self.device = device
        if device.sessions:
            self.channelLookup[b"session"] = DeviceSession


@implementer(portal.IRealm)
class Realm:
    def __init__(self, device: Device) -> None:
        self.device = device

    def requestAvatar(self, avatarId, mind, *interfaces):
        self.device.logins.append(avatarId.decode())
        return interfaces[0], DeviceUser(self.device), lambda: None


class DeviceAuth(userauth.SSHUserAuthServer):
    """Conch's server plus keyboard-interactive with one hidden password prompt."""

    passwordDelay = 0

    def serviceStarted(self) -> None:
        self.clock = self.transport.factory.device.clock
        super().serviceStarted()
        if self.transport.factory.device.kbd_only:
            self.supportedAuthentications = []
        self.supportedAuthentications.append(b"keyboard-interactive")

    def auth_keyboard_interactive(self, packet: bytes):
        self._kbd = defer.Deferred()
        self.transport.sendPacket(
            userauth.MSG_USERAUTH_INFO_REQUEST,
            common.NS(b"")
            + common.NS(b"Welcome")
            + common.NS(b"")
            + struct.pack(">L", 2)
            + common.NS(b"Username: ")
            + b"\x01"
            + common.NS(b"Password: ")
            + b"\x00",
        )
        return self._kbd

    def ssh_USERAUTH_INFO_RESPONSE(self, packet: bytes) -> None:
        (count,) = struct.unpack(">L", packet[:4])
        answers = []
        rest = packet[4:]
        for _ in range(count):
            answer, rest = common.getNS(rest)
            answers.append(answer)
        d, self._kbd = self._kbd, None
        if answers[0] != self.user:
            d.errback(Failure(UnauthorizedLogin()))
            return
        creds = credentials.UsernamePassword(self.user, answers[1])
        self.portal.login(creds, None, *self.transport.factory.interfaces).chainDeferred(d)


@implementer(checkers.ICredentialsChecker)
class KeyChecker:
    credentialInterfaces = (credentials.ISSHPrivateKey,)

    def __init__(self, key: keys.Key) -> None:
        self.key = key

    def requestAvatarId(self, creds):
        if creds.blob != self.key.blob():
            return defer.fail(UnauthorizedLogin())
        if creds.signature is None:
            return defer.fail(ValidPublicKey())
        if not self.key.verify(creds.signature, creds.sigData):
            return defer.fail(UnauthorizedLogin())
        return defer.succeed(creds.username)


class DeviceFactory(factory.SSHFactory):
    services = {b"ssh-userauth": DeviceAuth, b"ssh-connection": sshconnection.SSHConnection}

    def __init__(self, device: Device, host_key: keys.Key = HOST_KEY, **lists) -> None:
        self.device = device
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}
        self.primes = None
        self.lists = lists
        from twisted.conch.interfaces import IConchUser

        self.interfaces = (IConchUser,)
        db = checkers.InMemoryUsernamePasswordDatabaseDontUse(admin=PASSWORD.encode())
        self.portal = portal.Portal(Realm(device), [db])

    def buildProtocol(self, addr):
        t = super().buildProtocol(addr)
        for name, value in self.lists.items():
            setattr(t, name, value)
        return t


# -- harness -------------------------------------------------------------------------------


def target_config(**extra) -> TargetConfig:
    values = dict(
        name="dev",
        protocol="ssh2",
        host="device.lab",
        port=22,
        username="admin",
        password=PASSWORD,
        connect_timeout=10.0,
    )
    values.update(extra)
    return TargetConfig(**values)


class Harness:
    def __init__(self, tmp_path: Path, server=None, **config) -> None:
        self.clock = MemoryReactorClock()
        self.device = Device(self.clock)
        self.known = KnownHosts(tmp_path / "known_hosts")
        self.target = SSH2Target(self.clock, target_config(**config), self.known)
        self.server_factory = server or DeviceFactory(self.device)
        self.pump = None

    def open(self, request: SessionRequest, password: str | None = None):
        self.client = FakeSessionClient()
        self.session = self.target.open_session("alice", request, self.client, password=password)
        return self.session

    def connect(self, server_protocol=None):
        host, port, client_factory, timeout, _ = self.clock.tcpClients[-1]
        client = client_factory.buildProtocol(None)
        server = server_protocol or self.server_factory.buildProtocol(None)
        self.client_proto, self.server_proto = client, server
        self.pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
        )
        self.flush()

    def flush(self) -> None:
        for _ in range(50):
            self.pump.flush()
            self.clock.advance(0)
            if not self.pump.pump():
                break

    def run(self, request: SessionRequest, password: str | None = None) -> FakeSessionClient:
        self.open(request, password)
        self.connect()
        return self.client


def exec_(command: bytes, pty: PtyRequest | None = None) -> SessionRequest:
    return SessionRequest(command=command, pty=pty)


# -- sessions ------------------------------------------------------------------------------


def test_password_login_exec_stdout_stderr_status(tmp_path):
    h = Harness(tmp_path)
    client = h.run(exec_(b"hello"))
    assert bytes(client.out) == b"out\n"
    assert bytes(client.err) == b"err\n"
    assert client.exit == ExitInfo(status=3)
    assert h.device.logins == ["admin"]
    assert (tmp_path / "known_hosts").read_text().startswith("device.lab ssh-ed25519 ")
    assert h.client_proto.transport.disconnected  # one session per connection


def test_keyboard_interactive_only_device(tmp_path):
    h = Harness(tmp_path)
    h.device.kbd_only = True
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=3)
    assert h.device.logins == ["admin"]


def test_pass_through_password(tmp_path):
    h = Harness(tmp_path, credentials="pass-through", password=None)
    client = h.run(exec_(b"hello"), password=PASSWORD)
    assert client.exit == ExitInfo(status=3)


def test_pass_through_without_a_password_fails_at_once(tmp_path):
    h = Harness(tmp_path, credentials="pass-through", password=None)
    h.open(exec_(b"hello"))
    assert h.client.exit == ExitInfo(status=255)
    assert b"no password to pass through" in h.client.err
    assert not h.clock.tcpClients


@pytest.mark.parametrize("kbd_only", [False, True])
def test_wrong_password_refused_after_bounded_tries(tmp_path, kbd_only):
    h = Harness(tmp_path, password="wrong")
    h.device.kbd_only = kbd_only
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=255)
    assert b"dev: authentication refused by upstream" in client.err
    assert h.device.logins == []


def test_key_login_with_gateway_key_file(tmp_path):
    user_key = ed25519_key()
    key_file = tmp_path / "id"
    key_file.write_bytes(user_key.toString("openssh", subtype="v1"))
    h = Harness(tmp_path, key=key_file, password=None)
    h.server_factory.portal.registerChecker(KeyChecker(user_key.public()))
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=3)


def test_unreadable_key_file(tmp_path):
    key_file = tmp_path / "id"
    key_file.write_text("not a key")
    h = Harness(tmp_path, key=key_file, password=None)
    h.open(exec_(b"hello"))
    assert h.client.exit == ExitInfo(status=255)
    assert b"key for this target cannot be used" in h.client.err


def test_pty_modes_window_change_signal_stdin_eof(tmp_path):
    h = Harness(tmp_path)
    pty = PtyRequest(
        term="vt100",
        size=WindowSize(rows=24, cols=80, xpixel=1, ypixel=2),
        modes=((53, 0), (128, 38400)),
    )
    session = h.open(exec_(b"wait", pty))
    session.write_stdin(b"early ")  # held by the bridge until the session is open
    h.connect()
    session.write_stdin(b"input")
    session.resize(WindowSize(rows=50, cols=132))
    session.send_signal("INT")
    session.send_signal("bad name!")
    session.close_stdin()
    h.flush()
    chan = h.device.channels[0]
    kinds = [kind for kind, _ in chan.requests]
    assert kinds == [b"pty-req", b"exec", b"window-change", b"signal"]
    term, rest = common.getNS(chan.requests[0][1])
    assert term == b"vt100"
    assert struct.unpack(">4L", rest[:16]) == (80, 24, 1, 2)
    assert common.getNS(rest[16:])[0] == struct.pack(">BLBL", 53, 0, 128, 38400) + b"\x00"
    assert struct.unpack(">4L", chan.requests[2][1]) == (132, 50, 0, 0)
    assert chan.requests[3][1] == common.NS(b"INT")
    assert bytes(chan.stdin) == b"early input"
    assert chan.got_eof
    desc = session.upstream.description
    assert desc.startswith("ssh2 device.lab:22 kex=mlkem768x25519-sha256 hostkey=ssh-ed25519")
    assert "cipher=aes256-ctr mac=hmac-sha2-512" in desc
    session.close()  # the client went away
    h.flush()
    assert h.client_proto.transport.disconnected
    assert h.client.exit is None  # nothing reported after close


def test_refused_pty_carries_on_without_one(tmp_path):
    h = Harness(tmp_path)
    h.device.refuse = {b"pty-req"}
    pty = PtyRequest(term="vt100", size=WindowSize(rows=24, cols=80))
    client = h.run(exec_(b"hello", pty))
    assert client.exit == ExitInfo(status=3)


@pytest.mark.parametrize(
    ("request_", "refuse", "message"),
    [
        (exec_(b"hello"), {b"exec"}, b"dev: upstream refused to start the command"),
        (SessionRequest(), {b"shell"}, b"dev: upstream refused to start the shell"),
    ],
)
def test_refused_exec_or_shell(tmp_path, request_, refuse, message):
    h = Harness(tmp_path)
    h.device.refuse = refuse
    client = h.run(request_)
    assert client.exit == ExitInfo(status=255)
    assert message in client.err
    assert h.client_proto.transport.disconnected


def test_refused_session_channel(tmp_path):
    h = Harness(tmp_path)
    h.device.sessions = False
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=255)
    assert b"dev: upstream refused the session (" in client.err


def test_exit_signal_and_hostile_message(tmp_path):
    client = Harness(tmp_path).run(exec_(b"signal"))
    assert client.exit.signal == "KILL"
    assert client.exit.core_dumped
    assert "\x1b" not in client.exit.message


def test_channel_closed_without_exit_status(tmp_path):
    client = Harness(tmp_path).run(exec_(b"noexit"))
    assert client.exit == ExitInfo(status=255)
    assert client.eof


def test_reset_mid_session(tmp_path):
    h = Harness(tmp_path)
    h.run(exec_(b"wait"))
    assert h.session.upstream is not None
    h.server_proto.transport.loseConnection()
    h.flush()
    assert h.client.exit == ExitInfo(status=255)
    assert h.client.err == b"sshgateway: dev: connection reset mid-session\r\n"


def test_upstream_window_pauses_client_input(tmp_path):
    h = Harness(tmp_path)
    h.run(exec_(b"wait"))
    session, chan = h.session, h.device.channels[0]

    producer = FakeProducer()
    session.registerProducer(producer, True)
    size = chan.localWindowSize + 10  # more than the device granted
    session.write_stdin(b"x" * size)
    assert producer.paused  # at once, before any window comes back
    h.flush()  # the device consumes and grants more window
    assert not producer.paused
    assert producer.pauses == 1
    assert len(chan.stdin) == size


def test_the_client_re_keys_on_its_own_and_the_data_goes_on(tmp_path):
    h = Harness(tmp_path)
    h.run(exec_(b"wait"))
    client, chan = h.client_proto, h.device.channels[0]
    assert client.key_exchanges == 1
    client.rekey_limit = 64 * 1024
    sent = bytearray()
    for _ in range(16):
        chunk = os.urandom(16 * 1024)
        h.session.write_stdin(chunk)
        sent += chunk
        h.flush()
    assert bytes(chan.stdin) == bytes(sent)
    assert client.key_exchanges >= 4
    h.clock.advance(client.rekey_interval)  # and after an hour without traffic
    h.flush()
    assert client.key_exchanges >= 5
    chan.write(b"still here")
    h.flush()
    assert bytes(h.client.out).endswith(b"still here")


def test_rekey_false_never_starts_one_but_answers_the_devices(tmp_path):
    # A device whose firmware breaks on a re-key (quirk profiles switch this on).
    h = Harness(tmp_path, rekey=False)
    h.run(exec_(b"wait"))
    client, chan = h.client_proto, h.device.channels[0]
    client.rekey_limit = 64 * 1024
    for _ in range(16):
        h.session.write_stdin(os.urandom(16 * 1024))
        h.flush()
    h.clock.advance(client.rekey_interval * 2)
    h.flush()
    assert client.key_exchanges == 1 and len(chan.stdin) == 16 * 16 * 1024
    h.server_proto.sendKexInit()  # the device's own re-key is answered
    h.flush()
    assert client.key_exchanges == 2
    chan.write(b"still here")
    h.flush()
    assert bytes(h.client.out).endswith(b"still here")


def test_paused_bridge_withholds_window(tmp_path):
    h = Harness(tmp_path)
    h.run(exec_(b"wait"))
    chan = h.device.channels[0]
    h.session.pauseProducing()
    chan.write(b"y" * (400 * 1024))
    h.flush()
    got = len(h.client.out)
    assert got <= 256 * 1024  # our window, never re-granted while paused
    assert chan.buf  # the rest waits on the device's side
    h.session.resumeProducing()
    h.flush()
    assert len(h.client.out) == 400 * 1024


# -- subsystems (sftp relayed) -------------------------------------------------------------


def test_sftp_subsystem_is_relayed_and_bridged_with_windows_both_ways(tmp_path):
    h = Harness(tmp_path)
    h.run(SessionRequest(subsystem="sftp"))
    session, chan = h.session, h.device.channels[0]
    assert chan.requests == [(b"subsystem", common.NS(b"sftp"))]  # no exec, no shell
    # client -> device: the device's window holds the client's input back
    producer = FakeProducer()
    session.registerProducer(producer, True)
    size = chan.localWindowSize + 10
    session.write_stdin(b"\x00" * size)
    assert producer.paused
    h.flush()
    assert not producer.paused and len(chan.stdin) == size
    # device -> client: a paused client leg withholds the device's window
    session.pauseProducing()
    chan.write(b"y" * (400 * 1024))
    h.flush()
    assert len(h.client.out) <= 256 * 1024 and chan.buf
    session.resumeProducing()
    h.flush()
    assert len(h.client.out) == 400 * 1024
    chan.exit(struct.pack(">L", 0), b"exit-status")
    h.flush()
    assert h.client.exit == ExitInfo(status=0)


def test_refused_sftp_subsystem_tells_the_client(tmp_path):
    h = Harness(tmp_path)
    h.device.refuse = {b"subsystem"}
    client = h.run(SessionRequest(subsystem="sftp"))
    assert client.exit == ExitInfo(status=255)
    assert b"dev: upstream refused to start the sftp subsystem" in client.err
    assert h.client_proto.transport.disconnected


# -- host keys -----------------------------------------------------------------------------


def test_changed_host_key_refused_before_login(tmp_path):
    h = Harness(tmp_path)
    h.run(exec_(b"hello"))
    h2 = Harness(tmp_path, server=None)
    h2.server_factory = DeviceFactory(h2.device, host_key=ed25519_key())
    client = h2.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=255)
    assert b"host key for device.lab:22 has CHANGED" in client.err
    assert h2.device.logins == []


def test_known_rsa_host_key_preferred(tmp_path):
    h = Harness(tmp_path)
    h.server_factory = DeviceFactory(h.device, host_key=RSA_HOST_KEY)
    h.run(exec_(b"hello"))
    # Now the device has an ed25519 key too; the client still asks for the RSA one first.
    h2 = Harness(tmp_path)
    f = DeviceFactory(h2.device, host_key=RSA_HOST_KEY)
    f.publicKeys[b"ssh-ed25519"] = HOST_KEY.public()
    f.privateKeys[b"ssh-ed25519"] = HOST_KEY
    h2.server_factory = f
    h2.open(exec_(b"wait"))
    h2.connect()
    assert "hostkey=rsa-sha2-512" in h2.session.upstream.description


@pytest.mark.parametrize(
    "kex", [b"curve25519-sha256", b"mlkem768x25519-sha256", b"diffie-hellman-group14-sha1"]
)
def test_key_pinned_only_after_the_key_exchange_succeeded(tmp_path, kex):
    # An impostor shows the device's public host key but cannot sign with it. Conch asks
    # verifyHostKey before it checks the signature: accept-new must not pin on that.
    h = Harness(tmp_path, kex=(kex.decode(),))
    impostor = DeviceFactory(h.device, supportedKeyExchanges=[kex])
    impostor.privateKeys = {b"ssh-ed25519": ed25519_key()}  # not HOST_KEY's private half
    h.server_factory = impostor
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=255)
    assert b"key exchange with upstream failed" in client.err
    assert h.device.logins == []
    assert not (tmp_path / "known_hosts").exists()
    # The device itself proves it holds the key: pinned.
    assert Harness(tmp_path).run(exec_(b"hello")).exit == ExitInfo(status=3)
    assert (tmp_path / "known_hosts").read_text().startswith("device.lab ssh-ed25519 ")


def test_key_pinned_meanwhile_by_another_process_is_a_change(tmp_path):
    # Its check saw no key for the device (a stale view); by the time the key exchange
    # succeeded, another gateway process had pinned a different key: refused, not logged in.
    h = Harness(tmp_path)
    other = KnownHosts(tmp_path / "known_hosts")
    h.known._entries = lambda protocol: []
    other.check_ssh2("device.lab", 22, ed25519_key(), "accept-new").record()
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=255)
    assert b"host key for device.lab:22 has CHANGED" in client.err
    assert h.device.logins == []
    assert (tmp_path / "known_hosts").read_text().count("\n") == 1


def test_degenerate_key_exchange_values_pin_nothing(tmp_path):
    h = Harness(tmp_path, kex=("mlkem768x25519-sha256",))
    h.server_factory = DeviceFactory(h.device, supportedKeyExchanges=[b"mlkem768x25519-sha256"])
    h.server_factory.protocol = BadKexServer
    assert h.run(exec_(b"hello")).exit == ExitInfo(status=255)
    assert not (tmp_path / "known_hosts").exists()


def test_strict_unknown_refused(tmp_path):
    client = Harness(tmp_path, host_key="strict").run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=255)
    assert b"is not known" in client.err


# -- connect failures and hostile servers ----------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (error.ConnectionRefusedError(), b"connection refused"),
        (error.NoRouteError(), b"no route / host unreachable"),
        (error.TimeoutError(), b"timed out"),
        (error.DNSLookupError("device.lab"), b"host name not found"),
    ],
)
def test_connect_failures(tmp_path, exc, message):
    h = Harness(tmp_path)
    h.open(exec_(b"hello"))
    _, _, client_factory, timeout, _ = h.clock.tcpClients[-1]
    assert timeout == 10.0
    client_factory.clientConnectionFailed(None, Failure(exc))
    assert h.client.exit == ExitInfo(status=255)
    assert h.client.err == b"sshgateway: dev: " + message + b"\r\n"


def test_timeout_cancels_connect(tmp_path):
    h = Harness(tmp_path, connect_timeout=3.0)
    h.open(exec_(b"hello"))
    connector = h.clock.connectors[-1]
    h.clock.advance(3.0)
    assert h.client.exit == ExitInfo(status=255)
    assert b"no session within 3 s" in h.client.err
    assert connector._disconnected


def test_timeout_during_handshake_drops_connection(tmp_path):
    h = Harness(tmp_path, connect_timeout=3.0)
    h.open(exec_(b"hello"))
    h.connect(server_protocol=protocol.Protocol())  # accepts, never speaks
    h.clock.advance(3.0)
    h.flush()
    assert b"no session within 3 s" in h.client.err
    assert h.client_proto.transport.disconnected


class Raw(protocol.Protocol):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def connectionMade(self) -> None:
        self.transport.write(self.data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SSH-1.5-OldDevice\r\n", b"upstream speaks only SSH-1"),
        (b"x" * 5000, b"SSH error with upstream"),
        (b"SSH-2.0-evil\r\n" + struct.pack(">L", 0xFFFFFFF0) + b"\x00" * 64, b"bad packet length"),
        (
            b"SSH-2.0-evil\r\n" + struct.pack(">LB", 12, 4) + b"\x14" + b"\x00" * 10,
            b"protocol error",
        ),
        (b"SSH-2.0-evil\r\n", b"connection closed by upstream during key exchange"),
    ],
)
def test_hostile_servers(tmp_path, data, message):
    h = Harness(tmp_path)
    h.open(exec_(b"hello"))
    h.connect(server_protocol=Raw(data))
    if h.client.exit is None:
        h.server_proto.transport.loseConnection()
        h.flush()
    assert h.client.exit == ExitInfo(status=255)
    assert message in h.client.err
    assert b"Traceback" not in h.client.err


def test_unanswerable_prompts_are_bounded(tmp_path):
    class Nagging(DeviceAuth):
        def ssh_USERAUTH_INFO_RESPONSE(self, packet: bytes) -> None:
            self.transport.sendPacket(
                userauth.MSG_USERAUTH_INFO_REQUEST,
                common.NS(b"") * 3 + struct.pack(">L", 1) + common.NS(b"OTP: ") + b"\x00",
            )

    h = Harness(tmp_path)
    h.device.kbd_only = True
    h.server_factory.services = {**h.server_factory.services, b"ssh-userauth": Nagging}
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=255)
    assert b"authentication refused by upstream" in client.err


def test_server_opened_channels_refused(tmp_path):
    h = Harness(tmp_path)
    h.run(exec_(b"wait"))
    conn = h.device.channels[0].conn
    failures = []

    class Probe(channel.SSHChannel):
        name = b"x11"

        def openFailed(self, reason):
            failures.append(reason)

    conn.openChannel(Probe(conn=conn))
    h.flush()
    assert failures
    assert h.client.exit is None  # the session carries on


# -- algorithms ------------------------------------------------------------------------------


def test_modern_defaults_exclude_legacy():
    offered = offered_algorithms(target_config())
    assert offered["kex"][:2] == [b"mlkem768x25519-sha256", b"curve25519-sha256"]
    for names, table in (
        (offered["kex"], KEX),
        (offered["host_key"], HOST_KEY_ALGORITHMS),
        (offered["cipher"], CIPHERS),
        (offered["mac"], MACS),
    ):
        assert names and all(not table[n.decode()] for n in names)
    assert b"ssh-rsa" not in offered["host_key"]
    assert b"diffie-hellman-group1-sha1" not in offered["kex"]


@pytest.mark.parametrize(
    "kex",
    [
        b"mlkem768x25519-sha256",
        b"curve25519-sha256",
        b"ecdh-sha2-nistp384",
        b"diffie-hellman-group14-sha1",
    ],
)
def test_key_exchanges_against_conch_server(tmp_path, kex):
    # The hybrid post-quantum exchange is ours (Conch has only the server side): it
    # must agree with Conch's server on every byte of the exchange hash.
    h = Harness(tmp_path, kex=(kex.decode(),))
    h.server_factory = DeviceFactory(h.device, supportedKeyExchanges=[kex])
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=3)
    assert f"kex={kex.decode()} " in h.client_proto.description()


def test_unknown_algorithm_rejected():
    with pytest.raises(AlgorithmError):
        offered_algorithms(target_config(ciphers=("arcfour",)))


def test_legacy_device_group1_cbc_sha1_ssh_rsa(tmp_path):
    legacy = dict(
        kex=("diffie-hellman-group1-sha1",),
        ciphers=("3des-cbc",),
        macs=("hmac-sha1",),
        host_key_algorithms=("ssh-rsa",),
    )
    h = Harness(tmp_path, **legacy)
    h.server_factory = DeviceFactory(
        h.device,
        host_key=RSA_HOST_KEY,
        supportedKeyExchanges=[b"diffie-hellman-group1-sha1"],
        supportedCiphers=[b"3des-cbc"],
        supportedMACs=[b"hmac-sha1"],
        supportedPublicKeys=[b"ssh-rsa"],
    )
    h.run(exec_(b"wait"))
    assert h.session.upstream.description == (
        "ssh2 device.lab:22 kex=diffie-hellman-group1-sha1 hostkey=ssh-rsa "
        "cipher=3des-cbc mac=hmac-sha1 strict_kex=no"
    )


def test_legacy_device_dss_host_key_and_hmac_md5(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import dsa

    dss = keys.Key(dsa.generate_private_key(1024))
    h = Harness(
        tmp_path, host_key_algorithms=("ssh-dss",), macs=("hmac-md5",), ciphers=("aes128-cbc",),
        kex=("diffie-hellman-group14-sha1",),
    )  # fmt: skip
    h.server_factory = DeviceFactory(
        h.device, host_key=dss, supportedPublicKeys=[b"ssh-dss"], supportedMACs=[b"hmac-md5"],
        supportedCiphers=[b"aes128-cbc"], supportedKeyExchanges=[b"diffie-hellman-group14-sha1"],
    )  # fmt: skip
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=3) and bytes(client.out) == b"out\n"
    assert (tmp_path / "known_hosts").read_text().split()[1] == "ssh-dss"


def test_legacy_only_device_refused_by_default(tmp_path):
    h = Harness(tmp_path)
    h.server_factory = DeviceFactory(
        h.device, supportedKeyExchanges=[b"diffie-hellman-group1-sha1"]
    )
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=255)
    assert b"key exchange with upstream failed" in client.err


def test_small_dh_group_refused(tmp_path):
    # A group-exchange server offering a 1024-bit group to a modern client.
    h = Harness(tmp_path, kex=("diffie-hellman-group-exchange-sha256",))
    from twisted.conch.ssh import _kex

    p1024 = _kex.getDHGeneratorAndPrime(b"diffie-hellman-group1-sha1")
    h.server_factory = DeviceFactory(
        h.device, supportedKeyExchanges=[b"diffie-hellman-group-exchange-sha256"]
    )
    h.server_factory.primes = {1024: [p1024]}
    h.server_factory.getDHPrime = lambda bits: p1024
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=255)
    assert b"unacceptable 1024-bit DH group" in client.err


def test_sshtransport_constants_we_rely_on():
    assert sshtransport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE == 14


class BadKexServer(sshtransport.SSHServerTransport):
    """Answers the client's key exchange with degenerate public values."""

    def _ssh_KEX_HYBRID_INIT(self, packet: bytes) -> None:
        host = self.factory.publicKeys[b"ssh-ed25519"].blob()
        reply = b"\x00" * (1088 + 32)  # an all-zero (low-order) X25519 point
        self.sendPacket(31, common.NS(host) + common.NS(reply) + common.NS(b"sig"))

    def _ssh_KEXDH_INIT(self, packet: bytes) -> None:
        host = self.factory.publicKeys[b"ssh-ed25519"].blob()
        self.sendPacket(31, common.NS(host) + common.MP(1) + common.NS(b"sig"))


@pytest.mark.parametrize(
    ("kex", "message"),
    [
        (b"mlkem768x25519-sha256", b"key exchange with upstream failed (bad reply)"),
        (b"diffie-hellman-group14-sha1", b"key exchange with upstream failed (bad DH value)"),
    ],
)
def test_degenerate_key_exchange_values_refused(tmp_path, kex, message):
    h = Harness(tmp_path, kex=(kex.decode(),))
    h.server_factory = DeviceFactory(h.device, supportedKeyExchanges=[kex])
    h.server_factory.protocol = BadKexServer
    client = h.run(exec_(b"hello"))
    assert client.exit == ExitInfo(status=255)
    assert message in client.err
    assert h.device.logins == []


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    junk=st.binary(max_size=600),
    framed=st.booleans(),
)
def test_random_server_bytes_end_cleanly(tmp_path, junk, framed):
    # Whatever follows the version line, the session ends with one line and status 255.
    if framed:  # a plausible unencrypted packet header around the junk
        pad = -(len(junk) + 5) % 8
        body = junk + b"\x00" * (pad + 8 if pad < 4 else pad)
        junk = struct.pack(">LB", len(body) + 1, len(body) - len(junk)) + body
    h = Harness(tmp_path)
    h.open(exec_(b"hello"))
    h.connect(server_protocol=Raw(b"SSH-2.0-fuzz\r\n" + junk))
    if h.client.exit is None:
        h.server_proto.transport.loseConnection()
        h.flush()
    assert h.client.exit == ExitInfo(status=255)
    assert h.client.err.count(b"\n") == 1
    assert h.device.logins == []


def gcm_harness(tmp_path):
    """A client whose key exchange is faked: both directions AES-128-GCM under one
    known key, so the test can play the server's side of the framing."""
    h = Harness(tmp_path)
    h.open(exec_(b"hello"))
    h.connect(server_protocol=Raw(b"SSH-2.0-gcm\r\n"))
    key, iv = bytes(range(16)), bytes(range(100, 112))
    enc = KeyedCiphers(GCM, GCM, b"hmac-sha2-256", b"hmac-sha2-256")
    enc.setKeys(iv, key, iv, key, b"", b"")
    h.client_proto.currentEncryptions = enc
    return h, key, iv


GCM = b"aes128-gcm@openssh.com"


def seal(peer: Sealer, payload: bytes) -> bytes:
    return b"".join(peer.packet(0, payload[0], (payload[1:],)))


def test_gcm_framing_both_ways(tmp_path):
    h, key, iv = gcm_harness(tmp_path)
    client = h.client_proto
    written = len(client.transport.stream)
    client.sendPacket(2, b"ping")  # SSH_MSG_IGNORE
    out = b"".join(client.transport.stream[written:])
    (length,) = struct.unpack(">L", out[:4])
    assert length % 16 == 0 and len(out) == 4 + length + 16
    opened = Opener(GCM, b"", iv, key, b"").next_payload(0, out, 1 << 20)
    assert opened == (b"\x02ping", len(out))

    peer = Sealer(GCM, b"", iv, key, b"")
    client.dataReceived(seal(peer, b"\x02hello") + seal(peer, b"\x02again"))
    assert h.client.exit is None  # two IGNOREs read and dropped
    sealed = bytearray(seal(peer, b"\x02tampered"))
    sealed[-1] ^= 1
    client.dataReceived(bytes(sealed))
    h.flush()
    assert h.client.exit == ExitInfo(status=255)
    assert b"SSH error with upstream (bad MAC)" in h.client.err


@pytest.mark.parametrize("length", [0, 15, 17, 2 * 1024 * 1024])
def test_gcm_bad_lengths(tmp_path, length):
    h, _, _ = gcm_harness(tmp_path)
    h.client_proto.dataReceived(struct.pack(">L", length) + b"\x00" * 40)
    h.flush()
    assert h.client.exit == ExitInfo(status=255)
    assert b"bad packet" in h.client.err
