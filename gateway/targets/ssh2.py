"""The SSH-2 upstream target: Conch's client, driven to open one session on a device.

``SSH2Target(reactor, config, known_hosts).open_session(...)`` returns a BridgeSession
whose connector (this module) connects over TCP, runs the key exchange with the target's
algorithm policy, checks the host key against the gateway's known_hosts, logs in (stored
password, key file or the gateway password passed through; keyboard-interactive answered
with the password too, since many devices only offer that), opens a session channel
(pty-req with the client's terminal, then exec or shell) and fires with an
IUpstreamSession. Everything the bridge does (buffering while connecting, timeouts,
user-visible failure lines, the log line) stays in gateway.targets.bridge.

Algorithms are chosen from tables by name: modern ones by default, legacy ones only when
the target lists them. What Conch's client lacks is added here, client side only:
mlkem768x25519-sha256 (Conch has only the server half), AES-GCM framing, strict key
exchange (protocols.ssh2.strict_kex, shared with the server), and
diffie-hellman-group1-sha1 for old devices (registered in Conch's kex table; the
gateway's own server validates its ``[ssh2] kex`` against a list without it).

Conch calls connectionSecure after every NEWKEYS: the login starts only after the first
(an upstream's re-key must not start a second login). Conch asks verifyHostKey before it
checks the server's signature, so an accept-new key is pinned only at that first
connectionSecure, once the device has proved it holds the key.
"""

from __future__ import annotations

import errno
import hashlib
import secrets
import struct
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from twisted.conch.ssh import _kex, channel, common, connection, keys, session, transport, userauth
from twisted.internet import defer, error, protocol
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.hostkeys import key_error_reason, ssh2_fingerprint
from gateway.known_hosts import HostKeyPin, KnownHosts
from gateway.targets import TargetConfig
from gateway.targets.bridge import (
    Connector,
    IUpstreamSession,
    UpstreamFailure,
    UpstreamSink,
    UpstreamTarget,
    upstream_credentials,
)
from protocols.flow import C2S, S2C, SSH2_NAMES, FlowRecorder, ssh2_name
from protocols.session import ExitInfo, SessionRequest, WindowSize
from protocols.ssh2.cipher import BadMAC, KeyedCiphers, PacketError, shown_mac
from protocols.ssh2.rekey import RekeyingTransport
from protocols.ssh2.strict_kex import StrictKexTransport

log = Logger()


def _conch_events(event: dict) -> None:
    # Conch narrates every channel open, request and close at info/debug; a gateway
    # bridging many sessions logs its own one line per session instead. Its warnings
    # and errors still go through.
    if event.get("log_level", LogLevel.info) >= LogLevel.warn:
        globalLogPublisher(event)


_conch_log = Logger(namespace="gateway.targets.ssh2.conch", observer=_conch_events)

# -- algorithm policy ------------------------------------------------------------------------

# name -> legacy? Order is preference. Legacy names are offered only when listed.
KEX: dict[str, bool] = {
    "mlkem768x25519-sha256": False,
    "curve25519-sha256": False,
    "curve25519-sha256@libssh.org": False,
    "ecdh-sha2-nistp256": False,
    "ecdh-sha2-nistp384": False,
    "ecdh-sha2-nistp521": False,
    "diffie-hellman-group-exchange-sha256": False,
    "diffie-hellman-group14-sha1": True,
    "diffie-hellman-group-exchange-sha1": True,
    "diffie-hellman-group1-sha1": True,
}
HOST_KEY_ALGORITHMS: dict[str, bool] = {
    "ssh-ed25519": False,
    "ecdsa-sha2-nistp256": False,
    "ecdsa-sha2-nistp384": False,
    "ecdsa-sha2-nistp521": False,
    "rsa-sha2-512": False,
    "rsa-sha2-256": False,
    "ssh-rsa": True,
}
# The AEAD ciphers and EtM MACs are protocols.ssh2.cipher's (Conch 26.10 has none).
# AES-GCM comes first: one cryptography call per packet, where chacha20-poly1305 makes
# three and CTR needs a Python HMAC as well.
CIPHERS: dict[str, bool] = {
    "aes256-gcm@openssh.com": False,
    "aes128-gcm@openssh.com": False,
    "chacha20-poly1305@openssh.com": False,
    "aes256-ctr": False,
    "aes192-ctr": False,
    "aes128-ctr": False,
    "aes256-cbc": True,
    "aes192-cbc": True,
    "aes128-cbc": True,
    "3des-cbc": True,
}
MACS: dict[str, bool] = {
    "hmac-sha2-512-etm@openssh.com": False,
    "hmac-sha2-256-etm@openssh.com": False,
    "hmac-sha2-512": False,
    "hmac-sha2-256": False,
    "hmac-sha1-etm@openssh.com": True,
    "hmac-sha1": True,
}
# RFC 8332 signature algorithms for an RSA user key, best first; ssh-rsa (SHA-1) only when
# the target lists it as a host key algorithm (a device that old signs nothing better).
RSA_USER_SIGNATURES = (b"rsa-sha2-512", b"rsa-sha2-256")

# Group exchange: the smallest group we accept from the server, and the largest we would
# compute with (8192-bit modular exponentiation is already slow in Python).
DH_GEX_MIN_BITS = 2048
DH_GEX_MIN_BITS_LEGACY = 1024
DH_GEX_MAX_BITS = 8192
DH_EXPONENT_BITS = 512  # twice the strength of AES-256 (RFC 4419 section 6.2)

MLKEM768_CIPHERTEXT = 1088
MAX_PACKET = 1024 * 1024  # Conch's own bound
LOCAL_WINDOW = 256 * 1024  # what the upstream may send before we grant more
LOCAL_MAX_PACKET = 32 * 1024
MAX_SEND_PACKET = 32 * 1024
MAX_AUTH_ROUNDS = 4  # keyboard-interactive info requests we answer per connection
MAX_KEY_FILE = 64 * 1024
MAX_TEXT = 200  # upstream-provided text (disconnect reasons) shown to the user
CLIENT_VERSION = b"SSH-2.0-sshgateway"


class AlgorithmError(ValueError):
    """A target lists an algorithm name this client does not know."""


@implementer(_kex._IFixedGroupKexAlgorithm)
class _DHGroup1SHA1:
    """diffie-hellman-group1-sha1 (RFC 4253 section 8.1): Oakley group 2 (RFC 2409
    section 6.2), 1024 bits. Weak; only for devices that offer nothing else."""

    preference = 99
    hashProcessor = hashlib.sha1
    generator = 2
    prime = int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22"
        "514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6"
        "F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381"
        "FFFFFFFFFFFFFFFF",
        16,
    )


_kex._kexAlgorithms.setdefault(b"diffie-hellman-group1-sha1", _DHGroup1SHA1())


_SUPPORTED_KEX = set(_kex.getSupportedKeyExchanges())


def _choose(kind: str, table: dict[str, bool], wanted: tuple[str, ...]) -> list[bytes]:
    if not wanted:
        return [name.encode() for name, legacy in table.items() if not legacy]
    for name in wanted:
        if name not in table:
            raise AlgorithmError(
                f"ssh2 target {kind}: unknown algorithm {name!r} (known: {', '.join(table)})"
            )
    return [name.encode() for name in wanted]


def offered_algorithms(config: TargetConfig) -> dict[str, list[bytes]]:
    """The client's algorithm lists for ``config``; raises AlgorithmError for unknown
    names (the config loader can call this at start-up)."""
    kex = _choose("kex", KEX, config.kex)
    # Only what this build can run (ML-KEM needs cryptography >= 48).
    kex = [name for name in kex if name in _SUPPORTED_KEX]
    return {
        "kex": kex,
        "host_key": _choose("host_key_algorithms", HOST_KEY_ALGORITHMS, config.host_key_algorithms),
        "cipher": _choose("ciphers", CIPHERS, config.ciphers),
        "mac": _choose("macs", MACS, config.macs),
    }


# -- one connection attempt ----------------------------------------------------------------


def _short(text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text[:MAX_TEXT]).strip()
    return text or "no reason given"


def _connect_failure(reason: Failure) -> UpstreamFailure:
    exc = reason.value
    code = getattr(exc, "osError", None)
    if reason.check(error.ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return UpstreamFailure("connection refused")
    if reason.check(error.NoRouteError) or code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return UpstreamFailure("no route / host unreachable")
    if reason.check(error.TimeoutError, error.TCPTimedOutError) or code == errno.ETIMEDOUT:
        return UpstreamFailure("timed out")
    if reason.check(error.DNSLookupError):
        return UpstreamFailure("host name not found")
    return UpstreamFailure(f"cannot connect ({_short(str(exc))})")


class _Attempt:
    """The state of one upstream connection, from TCP connect to the end of the session.

    ``deferred`` fires once: with the IUpstreamSession when exec/shell is accepted, or
    with an UpstreamFailure. After that, the sink hears about output and the end."""

    def __init__(
        self,
        target: SSH2Target,
        request: SessionRequest,
        sink: UpstreamSink,
        login: str,
        password: str | None,
        key: keys.Key | None,
    ) -> None:
        self.target = target
        self.config = target.config
        self.request = request
        self.sink = sink
        self.login = login
        self.password = password
        self.key = key
        self.phase = "connect"  # connect, key exchange, login, session set-up, open
        self.failure: UpstreamFailure | None = None
        self.finished = False  # no sink calls after this
        self.connector: Any = None
        self.transport: _ClientTransport | None = None
        self.channel: _SessionChannel | None = None
        self.upstream: _Upstream | None = None
        self.deferred: defer.Deferred = defer.Deferred(self._cancel)
        self.flow: FlowRecorder | None = target.new_flow(sink, login)

    @property
    def name(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def fail(self, failure: UpstreamFailure) -> None:
        """Remember the first reason; it is reported when the connection is gone."""
        if self.failure is None:
            self.failure = failure

    def opened(self, upstream: _Upstream) -> None:
        self.phase = "open"
        self.upstream = upstream
        if not self.deferred.called:
            self.deferred.callback(upstream)

    def connection_lost(self) -> None:
        if self.phase == "open":
            if not self.finished:
                self.finished = True
                message = str(self.failure) if self.failure else "connection reset mid-session"
                log.info("ssh2 upstream {name}: {message}", name=self.name, message=message)
                # The bridge prefixes only connect-phase failures with the target name.
                self.sink.failed(f"{self.config.name}: {message}")
            return
        if self.deferred.called:
            return
        failure = self.failure or UpstreamFailure(
            f"connection closed by upstream during {self.phase}"
        )
        log.info("ssh2 upstream {name}: {message}", name=self.name, message=str(failure))
        self.deferred.errback(failure)

    def _cancel(self, d: defer.Deferred) -> None:
        self.finished = True
        self.drop()

    def drop(self) -> None:
        if self.transport is not None and self.transport.transport is not None:
            self.transport.hang_up()
        elif self.connector is not None:
            self.connector.disconnect()


class _Factory(protocol.ClientFactory):
    noisy = False

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt

    def buildProtocol(self, addr: Any) -> _ClientTransport:
        proto = _ClientTransport(self.attempt)
        proto.factory = self
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        attempt = self.attempt
        if not attempt.deferred.called:
            failure = _connect_failure(reason)
            log.info("ssh2 upstream {name}: {why}", name=attempt.name, why=str(failure))
            attempt.deferred.errback(failure)


class _ClientTransport(StrictKexTransport, RekeyingTransport, transport.SSHClientTransport):
    _log = _conch_log
    ourVersionString = CLIENT_VERSION

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt
        offered = attempt.target.algorithms
        try:
            known = attempt.target.known_hosts.ssh2_key_types(
                attempt.config.host, attempt.config.port
            )
        except UpstreamFailure:
            known = []  # check_ssh2 reports the unusable file during key exchange
        self.supportedKeyExchanges = list(offered["kex"])
        self.supportedPublicKeys = _prefer_known(offered["host_key"], known)
        self.supportedCiphers = list(offered["cipher"])
        self.supportedMACs = list(offered["mac"])
        self.supportedCompressions = [b"none"]
        legacy = any(KEX.get(name.decode(), False) for name in offered["kex"])
        self._dhMinimalGroupSize = DH_GEX_MIN_BITS_LEGACY if legacy else DH_GEX_MIN_BITS
        self._hung_up = False
        self.rekey_clock = attempt.target.reactor  # re-key after 1 GiB or an hour
        self._in_size = 0  # wire bytes of the packet getPacket returned last
        self._mlkem: Any = None
        self._x25519: Any = None
        self._hybrid_init = b""
        self._host_key_pin: HostKeyPin | None = None  # recorded once the kex succeeded

    def connectionMade(self) -> None:
        self.attempt.transport = self
        self.attempt.phase = "key exchange"
        flow = self.attempt.flow
        if flow is not None:  # Conch writes our line first thing, then KEXINIT
            flow.version(C2S, self.ourVersionString.decode("ascii", "replace"))
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self._hung_up:
            return
        try:
            super().dataReceived(data)
            self._flow_version()
        except Exception:
            # Conch's parsers raise on truncated or inconsistent packets.
            log.failure("ssh2 upstream {name}: bad packet", name=self.attempt.name)
            self.attempt.fail(UpstreamFailure("SSH protocol error from upstream"))
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"protocol error")

    def _unsupportedVersionReceived(self, remoteVersion: bytes) -> None:
        if remoteVersion.startswith(b"1."):
            self.attempt.fail(UpstreamFailure('upstream speaks only SSH-1 (use protocol = "ssh1")'))
        else:
            self.attempt.fail(UpstreamFailure(f"upstream speaks SSH {_short(remoteVersion)}"))
        super()._unsupportedVersionReceived(remoteVersion)

    # -- packets (AES-GCM framing; Conch's own for everything else) ---------------------

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if self.transport is None:
            return
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE and not (
            self._allowedKeyExchangeMessageType(messageType)
        ):
            # RFC 4253 section 7.1: held back until NEWKEYS; Conch's _newKeys sends them.
            self._blockedByKeyExchange.append((messageType, payload))
            return
        seq = self.outgoingPacketSequence
        wire = self._ciphers().sealer.packet(seq, messageType, (payload,))
        self.transport.writeSequence(wire)
        self.outgoingPacketSequence = (seq + 1) & 0xFFFFFFFF
        self.packet_sent(messageType)
        size = sum(map(len, wire))
        if self.attempt.flow is not None:
            self.attempt.flow.packet(C2S, self._flow_name(messageType), size)
        self.count_for_rekey(size)

    def _ciphers(self) -> KeyedCiphers:
        enc = self.currentEncryptions
        if not isinstance(enc, KeyedCiphers):  # Conch's initial plain state
            enc = self.currentEncryptions = KeyedCiphers.plain()
        return enc

    def _flow_name(self, number: int) -> str:
        name = SSH2_NAMES.get(number)
        if name is not None:
            return name
        flow = self.attempt.flow
        kex = (getattr(self, "kexAlg", None) or b"").decode("ascii", "replace")
        return ssh2_name(number, kex, flow.auth_method if flow is not None else "")

    def _flow_version(self) -> None:
        """Record the server's line once Conch has read it (before any packet after it)."""
        flow = self.attempt.flow
        if flow is not None and self.gotVersion and "server" not in flow.versions:
            flow.version(S2C, self.otherVersionString.decode("ascii", "replace"))

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        flow = self.attempt.flow
        if flow is not None:
            self._flow_version()
            flow.packet(S2C, self._flow_name(messageNum), self._in_size)
        super().dispatchMessage(messageNum, payload)

    def getPacket(self) -> bytes | None:
        seq = self.incomingPacketSequence
        try:
            found = self._ciphers().opener.next_payload(seq, self.buf, MAX_PACKET)
        except BadMAC:
            self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")
            return None
        except PacketError as e:
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, str(e).encode("ascii"))
            return None
        if found is None:
            return None
        payload, size = found
        self.buf = self.buf[size:]
        self._in_size = size
        self.incomingPacketSequence = (seq + 1) & 0xFFFFFFFF
        self.count_for_rekey(size)
        return payload

    # -- key exchange ------------------------------------------------------------------

    def ssh_KEXINIT(self, packet: bytes) -> None:
        # Conch's client does not do the hybrid post-quantum exchange (its server does):
        # run the common negotiation, then either send our hybrid INIT or carry on as
        # Conch's client would.
        if transport.SSHTransportBase.ssh_KEXINIT(self, packet) is None:
            return
        self.nextEncryptions = KeyedCiphers.of(self.nextEncryptions)
        if _kex.isPQHybrid(self.kexAlg):
            self._mlkem = mlkem.MLKEM768PrivateKey.generate()
            self._x25519 = x25519.X25519PrivateKey.generate()
            self._hybrid_init = _raw(self._mlkem.public_key()) + _raw(self._x25519.public_key())
            self.sendPacket(transport.MSG_KEXDH_INIT, common.NS(self._hybrid_init))
        elif _kex.isEllipticCurve(self.kexAlg):
            self.ecPriv = self._generateECPrivateKey()
            self.ecPub = self.ecPriv.public_key()
            self.sendPacket(
                transport.MSG_KEX_DH_GEX_REQUEST_OLD,
                common.NS(self._encodeECPublicKey(self.ecPub)),
            )
        elif _kex.isFixedGroup(self.kexAlg):
            self.g, self.p = _kex.getDHGeneratorAndPrime(self.kexAlg)
            self._startEphemeralDH()
            self.sendPacket(transport.MSG_KEXDH_INIT, self.dhSecretKeyPublicMP)
        else:
            self.sendPacket(
                transport.MSG_KEX_DH_GEX_REQUEST,
                struct.pack(
                    "!LLL",
                    self._dhMinimalGroupSize,
                    self._dhPreferredGroupSize,
                    self._dhMaximalGroupSize,
                ),
            )

    def ssh_KEX_DH_GEX_GROUP(self, packet: bytes) -> Any:
        # Message 31 is also SSH_MSG_KEX_HYBRID_REPLY.
        if self.kexAlg is not None and _kex.isPQHybrid(self.kexAlg):
            return self._hybrid_reply(packet)
        return super().ssh_KEX_DH_GEX_GROUP(packet)

    def _hybrid_reply(self, packet: bytes) -> defer.Deferred | None:
        if getattr(self, "_mlkem", None) is None:
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"unexpected hybrid reply")
            return None
        host_key, s_reply, signature, _ = common.getNS(packet, 3)
        kex = _kex.getPQHybridKex(self.kexAlg)
        ct_length = len(s_reply) - kex.c_pk1_length
        if ct_length != MLKEM768_CIPHERTEXT:
            self.sendDisconnect(transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"bad hybrid reply")
            return None
        d = self.verifyHostKey(host_key, b"")
        d.addCallback(lambda _: self._hybrid_finish(kex, host_key, s_reply, signature))
        d.addErrback(
            lambda _: self.sendDisconnect(
                transport.DISCONNECT_HOST_KEY_NOT_VERIFIABLE, b"bad host key"
            )
        )
        return d

    def _hybrid_finish(self, kex: Any, host_key: bytes, s_reply: bytes, signature: bytes) -> None:
        ciphertext, peer = s_reply[:MLKEM768_CIPHERTEXT], s_reply[MLKEM768_CIPHERTEXT:]
        try:
            k_pq = self._mlkem.decapsulate(ciphertext)
            k_cl = self._x25519.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError:  # e.g. a low-order X25519 point
            self.attempt.fail(UpstreamFailure("key exchange with upstream failed (bad reply)"))
            self.sendDisconnect(transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"bad hybrid reply")
            return
        self._mlkem = self._x25519 = None
        shared = common.NS(kex.hashProcessor(k_pq + k_cl).digest())
        h = kex.hashProcessor()
        for part in (
            self.ourVersionString,
            self.otherVersionString,
            self.ourKexInitPayload,
            self.otherKexInitPayload,
            host_key,
            self._hybrid_init,
            s_reply,
        ):
            h.update(common.NS(part))
        h.update(shared)
        exchange_hash = h.digest()
        if not keys.Key.fromString(host_key).verify(signature, exchange_hash):
            self.sendDisconnect(transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"bad signature")
            return
        self._keySetup(shared, exchange_hash)

    def _startEphemeralDH(self) -> None:
        # The server chooses the group in group exchange: bound its size before any
        # arithmetic. The key is made directly, as in protocols/ssh2/transport.py:
        # cryptography re-validates non-RFC-3526 groups for seconds per key.
        bits = self.p.bit_length()
        if not self._dhMinimalGroupSize <= bits <= DH_GEX_MAX_BITS or not 1 < self.g < self.p - 1:
            self.attempt.fail(
                UpstreamFailure(f"upstream offered an unacceptable {bits}-bit DH group")
            )
            raise ValueError("bad DH group")
        self.dhSecretKey = secrets.randbits(DH_EXPONENT_BITS) | (1 << (DH_EXPONENT_BITS - 1))
        self.dhSecretKeyPublicMP = common.MP(pow(self.g, self.dhSecretKey, self.p))

    def _finishEphemeralDH(self, remoteDHpublicKey: int) -> bytes:
        # Raised inside Conch's host-key callback chain, whose errback only says "bad
        # host key": record the real reason first.
        bad = UpstreamFailure("key exchange with upstream failed (bad DH value)")
        if not 1 < remoteDHpublicKey < self.p - 1:
            self.attempt.fail(bad)
            raise ValueError("server DH public value out of range")
        secret = pow(remoteDHpublicKey, self.dhSecretKey, self.p)
        del self.dhSecretKey
        if secret in (1, self.p - 1):
            self.attempt.fail(bad)
            raise ValueError("degenerate DH shared secret")
        return common.MP(secret)

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred:
        attempt = self.attempt
        try:
            key = keys.Key.fromString(hostKey)
        except Exception:
            attempt.fail(UpstreamFailure("upstream sent an unreadable host key"))
            return defer.fail(ValueError("unreadable host key"))
        try:
            pin = attempt.target.known_hosts.check_ssh2(
                attempt.config.host, attempt.config.port, key, attempt.config.host_key
            )
        except UpstreamFailure as exc:
            attempt.fail(exc)
            return defer.fail(exc)
        if self._host_key_pin is None:
            self._host_key_pin = pin
        if attempt.flow is not None:
            attempt.flow.negotiated.update(
                {
                    "host_key_type": key.sshType().decode("ascii"),
                    "host_key_bits": key.size(),
                    "host_key_fingerprint": ssh2_fingerprint(key),
                }
            )
        return defer.succeed(True)

    def _rekey_blocked(self) -> bool:
        return self._hung_up or self.transport is None

    def connectionSecure(self) -> None:
        # Conch calls this after every NEWKEYS, re-keys included: log in only once.
        if self.attempt.phase != "key exchange":
            return
        attempt = self.attempt
        pin, self._host_key_pin = self._host_key_pin, None
        if pin is not None:
            try:
                pin.record()
            except UpstreamFailure as exc:  # known_hosts unusable, or pinned otherwise meanwhile
                attempt.fail(exc)
                self.sendDisconnect(transport.DISCONNECT_HOST_KEY_NOT_VERIFIABLE, b"host key")
                return
        self.attempt.phase = "login"
        if attempt.flow is not None:
            enc = self.currentEncryptions
            attempt.flow.negotiated.update(
                {
                    "kex": self.kexAlg.decode("ascii", "replace"),
                    "host_key_algorithm": self.keyAlg.decode("ascii", "replace"),
                    "cipher_c2s": enc.outCipType.decode("ascii", "replace"),
                    "cipher_s2c": enc.inCipType.decode("ascii", "replace"),
                    "mac_c2s": shown_mac(enc.outCipType, enc.outMACType),
                    "mac_s2c": shown_mac(enc.inCipType, enc.inMACType),
                    "compression": "none",
                    "strict_kex": self.strict_kex,
                }
            )
        self.requestService(_UserAuth(attempt.login.encode("utf-8"), _Connection(attempt), attempt))

    # -- the end -----------------------------------------------------------------------

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if self._hung_up:
            return
        if reason == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE:
            self.attempt.fail(UpstreamFailure("authentication refused by upstream"))
        elif reason == transport.DISCONNECT_KEY_EXCHANGE_FAILED:
            self.attempt.fail(
                UpstreamFailure(f"key exchange with upstream failed ({_short(desc)})")
            )
        elif reason != transport.DISCONNECT_BY_APPLICATION:
            self.attempt.fail(UpstreamFailure(f"SSH error with upstream ({_short(desc)})"))
        self._hung_up = True
        super().sendDisconnect(reason, desc)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        if self.attempt.phase == "login":
            failure = UpstreamFailure(f"authentication refused by upstream ({_short(description)})")
        else:
            failure = UpstreamFailure(f"upstream disconnected ({_short(description)})")
        self.attempt.fail(failure)
        self._hung_up = True
        super().receiveError(reasonCode, description)

    def hang_up(self) -> None:
        """Our side ends the connection (session over, bridge closed, cancelled)."""
        if self._hung_up or self.transport is None:
            return
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"session closed")

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.attempt.connection_lost()
        attempt = self.attempt
        flow, attempt.flow = attempt.flow, None
        if flow is not None:
            if attempt.failure is not None:
                flow.close(str(attempt.failure))
            elif flow.exit_status is not None or flow.exit_signal is not None:
                flow.close("session finished")
            else:
                flow.close("connection closed")
            attempt.target.flow_done(flow)

    def description(self) -> str:
        enc = self.currentEncryptions
        return (
            f"ssh2 {self.attempt.name} kex={self.kexAlg.decode()} hostkey={self.keyAlg.decode()} "
            f"cipher={enc.outCipType.decode()} "
            f"mac={shown_mac(enc.outCipType, enc.outMACType)} "
            f"strict_kex={'yes' if self.strict_kex else 'no'}"
        )


def _raw(public: Any) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _prefer_known(offered: list[bytes], known_types: list[str]) -> list[bytes]:
    """Put the host key algorithms of already-recorded key types first, as OpenSSH does,
    so a pinned host is not reported as changed only because it has several keys."""
    if not known_types:
        return list(offered)

    def key_type(alg: bytes) -> str:
        return "ssh-rsa" if alg.startswith(b"rsa-sha2-") else alg.decode()

    first = [alg for alg in offered if key_type(alg) in known_types]
    return first + [alg for alg in offered if alg not in first]


class _UserAuth(userauth.SSHUserAuthClient):
    """Password, key file, and keyboard-interactive answered with the password; each
    tried a bounded number of times so a server cannot keep us going round."""

    preferredOrder = [b"publickey", b"password", b"keyboard-interactive"]
    _log = _conch_log

    def __init__(self, user: bytes, instance: Any, attempt: _Attempt) -> None:
        super().__init__(user, instance)
        self.attempt = attempt
        self._signatures: list[bytes] = []
        if attempt.key is not None:
            if attempt.key.type() == "RSA":
                self._signatures = list(RSA_USER_SIGNATURES)
                if b"ssh-rsa" in attempt.target.algorithms["host_key"]:
                    self._signatures.append(b"ssh-rsa")
            else:
                self._signatures = [attempt.key.sshType()]
        self._password_tries = 1 if attempt.password is not None else 0
        self._kbd_tries = 1 if attempt.password is not None else 0
        self._rounds = 0

    def auth_publickey(self) -> bool:
        # One signed request per signature algorithm, without the "would you accept"
        # probe: the key is ours, and a probe only costs a round trip.
        if not self._signatures:
            return False
        algorithm = self._signatures.pop(0)
        key = self.attempt.key
        assert key is not None
        public = key.public()
        signed = (
            common.NS(self.transport.sessionID)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + common.NS(self.user)
            + common.NS(self.instance.name)
            + common.NS(b"publickey")
            + b"\x01"
            + common.NS(algorithm)
            + common.NS(public.blob())
        )
        signature = key.sign(signed, signatureType=algorithm)
        self.askForAuth(
            b"publickey",
            b"\x01" + common.NS(algorithm) + common.NS(public.blob()) + common.NS(signature),
        )
        return True

    def ssh_USERAUTH_PK_OK(self, packet: bytes) -> None:
        if self.lastAuth == b"keyboard-interactive":
            self._rounds += 1
            if self._rounds > MAX_AUTH_ROUNDS:
                self.transport.sendDisconnect(
                    transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"too many prompts"
                )
                return
            super().ssh_USERAUTH_PK_OK(packet)
            return
        # PK_OK for a signed request, or a password change request: neither is
        # something the gateway can act on.
        self.askForAuth(b"none", b"")

    def getPassword(self, prompt: bytes | None = None) -> defer.Deferred | None:
        if self._password_tries <= 0 or self.attempt.password is None:
            return None
        self._password_tries -= 1
        return defer.succeed(self.attempt.password.encode("utf-8"))

    def auth_keyboard_interactive(self) -> bool:
        if self._kbd_tries <= 0:
            return False
        self._kbd_tries -= 1
        return super().auth_keyboard_interactive()

    def getGenericAnswers(
        self, name: bytes, instruction: bytes, prompts: list[tuple[bytes, bool]]
    ) -> defer.Deferred:
        # Hidden prompts get the password ("Password:", "Enter PASSCODE:"...); echoed
        # ones (a username question) get the login name.
        answers = []
        for _prompt, echo in prompts:
            if echo:
                answers.append(self.attempt.login)
            else:
                answers.append(self.attempt.password or "")
        return defer.succeed(answers)

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        self.attempt.phase = "session set-up"
        self._flow_auth("success")
        super().ssh_USERAUTH_SUCCESS(packet)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        self._flow_auth("partial" if packet[-1:] == b"\x01" else "failure")
        return super().ssh_USERAUTH_FAILURE(packet)

    def askForAuth(self, kind: bytes, extraData: bytes) -> None:
        if self.attempt.flow is not None:
            self.attempt.flow.auth_method = kind.decode("ascii", "replace")
        super().askForAuth(kind, extraData)

    def _flow_auth(self, result: str) -> None:
        flow = self.attempt.flow
        if flow is not None:
            flow.auth((self.lastAuth or b"none").decode("ascii", "replace"), result)

    def ssh_USERAUTH_BANNER(self, packet: bytes) -> None:
        pass  # a device's legal banner is not session output


class _Connection(connection.SSHConnection):
    _log = _conch_log

    def __init__(self, attempt: _Attempt) -> None:
        super().__init__()
        self.attempt = attempt

    def serviceStarted(self) -> None:
        super().serviceStarted()
        chan = _SessionChannel(self.attempt, conn=self)
        self.attempt.channel = chan
        self.openChannel(chan)

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        # Held back while the bridge cannot take output: the upstream then stops once
        # the window we already granted is used up.
        if getattr(channel, "output_paused", False):
            return
        super().adjustWindow(channel, bytesToAdd)

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        # The upstream may not open channels towards the gateway (no forwarding).
        try:
            _kind, rest = common.getNS(packet)
            (sender,) = struct.unpack(">L", rest[:4])
        except Exception:
            self.transport.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad channel open")
            return
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
            + common.NS(b"not allowed")
            + common.NS(b""),
        )


class _SessionChannel(channel.SSHChannel):
    _log = _conch_log
    name = b"session"

    def __init__(self, attempt: _Attempt, conn: _Connection) -> None:
        super().__init__(localWindow=LOCAL_WINDOW, localMaxPacket=LOCAL_MAX_PACKET, conn=conn)
        self.attempt = attempt
        self.output_paused = False
        self.input_paused = False
        self.exit: ExitInfo | None = None
        self.close_received = False
        self.eof_pending = False

    # -- opening -----------------------------------------------------------------------

    def channelOpen(self, specificData: bytes) -> None:
        # A server announcing a zero or huge packet size must not make us send empty
        # or giant packets.
        self.remoteMaxPacket = max(256, min(self.remoteMaxPacket, MAX_SEND_PACKET))
        request = self.attempt.request
        pty = request.pty
        if pty is None:
            self._start(None)
            return
        size = pty.size
        modes = (
            b"".join(
                struct.pack(">BL", op, value)
                for op, value in pty.modes
                if 0 < op < 160 and 0 <= value <= 0xFFFFFFFF  # RFC 4254 section 8
            )
            + b"\x00"
        )
        data = session.packRequest_pty_req(
            pty.term.encode("ascii", "replace"),
            (size.rows, size.cols, size.xpixel, size.ypixel),
            modes,
        )
        d = self.conn.sendRequest(self, b"pty-req", data, wantReply=True)
        d.addBoth(self._start)

    def _start(self, result: Any) -> None:
        if self.localClosed or self.attempt.deferred.called:
            return  # the channel or the connection went while pty-req was pending
        if isinstance(result, Failure):
            # OpenSSH's client carries on without a terminal; so do we.
            log.info("ssh2 upstream {name}: pty request refused", name=self.attempt.name)
        if self.attempt.flow is not None and self.attempt.request.pty is not None:
            self.attempt.flow.request("pty-req", "failure" if isinstance(result, Failure) else "success")
        command = self.attempt.request.command
        if command is None:
            d = self.conn.sendRequest(self, b"shell", b"", wantReply=True)
        else:
            d = self.conn.sendRequest(self, b"exec", common.NS(command), wantReply=True)
        d.addCallbacks(self._started, self._refused)

    def _flow_exec(self, result: str) -> None:
        if self.attempt.flow is not None:
            name = "shell" if self.attempt.request.command is None else "exec"
            self.attempt.flow.request(name, result)

    def _started(self, _: Any) -> None:
        self._flow_exec("success")
        upstream = _Upstream(self)
        self.attempt.opened(upstream)

    def _refused(self, failure: Failure) -> None:
        self._flow_exec("failure")
        what = "shell" if self.attempt.request.command is None else "command"
        self.attempt.fail(UpstreamFailure(f"upstream refused to start the {what}"))
        self.attempt.drop()

    def openFailed(self, reason: Any) -> None:
        text = _short(getattr(reason, "desc", b"") or str(reason))
        self.attempt.fail(UpstreamFailure(f"upstream refused the session ({text})"))
        self.attempt.drop()

    # -- data --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self.attempt.finished:
            self.attempt.sink.stdout(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        if dataType == connection.EXTENDED_DATA_STDERR and not self.attempt.finished:
            self.attempt.sink.stderr(data)

    def eofReceived(self) -> None:
        if not self.attempt.finished:
            self.attempt.sink.eof()

    def send_eof_when_flushed(self) -> None:
        # Conch sends EOF at once, ahead of input still waiting for window; the
        # upstream would then drop that input.
        self.eof_pending = True
        self._maybe_eof()

    def _maybe_eof(self) -> None:
        if self.eof_pending and not self.buf and not self.localClosed:
            self.eof_pending = False
            self.conn.sendEOF(self)

    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        self._maybe_eof()

    def stopWriting(self) -> None:
        # The upstream's window is used up: hold the client's input.
        if not self.input_paused and not self.attempt.finished:
            self.input_paused = True
            self.attempt.sink.pause_input()

    def startWriting(self) -> None:
        if self.input_paused and not self.attempt.finished:
            self.input_paused = False
            self.attempt.sink.resume_input()

    def request_exit_status(self, data: bytes) -> int:
        if len(data) != 4:
            return 0
        (status,) = struct.unpack(">L", data)
        self.exit = ExitInfo(status=status & 0xFF)
        if self.attempt.flow is not None:
            self.attempt.flow.exit(self.exit.status)
        return 1

    def request_exit_signal(self, data: bytes) -> int:
        try:
            name, rest = common.getNS(data)
            core = rest[:1] not in (b"", b"\x00")
            message, _ = common.getNS(rest[1:])
        except Exception:
            return 0
        signame = _short(name)[:32]
        if signame.startswith("SIG"):
            signame = signame[3:]
        self.exit = ExitInfo(signal=signame, core_dumped=core, message=_short(message))
        if self.attempt.flow is not None:
            self.attempt.flow.exit(None, signame)
        return 1

    def closeReceived(self) -> None:
        self.close_received = True
        # The upstream will never grant window again. Conch's loseConnection waits for
        # its buffer to drain before answering the close, so input still waiting for
        # window (a client still sending when the program exited) would hang the
        # session: it has nowhere to go, drop it.
        self.buf = b""
        self.extBuf = []
        self.eof_pending = False
        super().closeReceived()

    def closed(self) -> None:
        attempt = self.attempt
        if attempt.phase != "open":
            if not attempt.deferred.called:
                attempt.fail(UpstreamFailure("upstream closed the session before it started"))
                attempt.drop()
            return
        if not self.close_received:
            return  # the connection went: connection_lost reports it
        if not attempt.finished:
            attempt.finished = True
            attempt.sink.exited(self.exit or ExitInfo(status=255))
        # One session per upstream connection: it ends with the channel.
        if attempt.transport is not None:
            attempt.transport.hang_up()


@implementer(IUpstreamSession)
class _Upstream:
    """The open session, as the bridge drives it."""

    def __init__(self, chan: _SessionChannel) -> None:
        self.channel = chan
        self.conn = chan.conn
        transport_ = chan.attempt.transport
        assert transport_ is not None
        self.description = transport_.description()

    def write(self, data: bytes) -> None:
        if not self.channel.localClosed and not self.channel.closing:
            self.channel.write(data)

    def send_eof(self) -> None:
        self.channel.send_eof_when_flushed()

    def resize(self, size: WindowSize) -> None:
        if not self.channel.localClosed:
            geometry = (size.rows, size.cols, size.xpixel, size.ypixel)
            self.conn.sendRequest(
                self.channel, b"window-change", session.packRequest_window_change(geometry)
            )

    def send_signal(self, name: str) -> None:
        if self.channel.localClosed or not (name.isascii() and name.isalnum()) or len(name) > 16:
            return
        self.conn.sendRequest(self.channel, b"signal", common.NS(name.encode("ascii")))

    def close(self) -> None:
        attempt = self.channel.attempt
        attempt.finished = True
        attempt.drop()

    def pauseProducing(self) -> None:
        self.channel.output_paused = True

    def resumeProducing(self) -> None:
        chan = self.channel
        if not chan.output_paused:
            return
        chan.output_paused = False
        owed = chan.localWindowSize - chan.localWindowLeft
        if owed > 0 and not chan.localClosed:
            self.conn.adjustWindow(chan, owed)


# -- the target ------------------------------------------------------------------------------


class _KeyFileError(Exception):
    """Our own words about the target's key file (safe to log, unlike the parsers')."""


class SSH2Target(UpstreamTarget):
    """``[targets.NAME]`` with ``protocol = "ssh2"``."""

    def __init__(self, reactor: Any, config: TargetConfig, known_hosts: KnownHosts) -> None:
        super().__init__(reactor, config)
        self.known_hosts = known_hosts
        self.algorithms = offered_algorithms(config)

    def connector(self, username: str, password: str | None) -> Connector:
        login, upstream_password = upstream_credentials(self.config, username, password)

        def connect(req: SessionRequest, sink: UpstreamSink) -> defer.Deferred:
            return self._connect(req, sink, login, upstream_password)

        return connect

    def _load_key(self) -> keys.Key | None:
        path = self.config.key
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_KEY_FILE + 1)
            if len(data) > MAX_KEY_FILE:
                raise _KeyFileError("key file too large")
            key = keys.Key.fromString(data)
            if key.isPublic():
                raise _KeyFileError("a public key, not a private one")
        except _KeyFileError as exc:
            why = str(exc)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
        except Exception as exc:  # Conch's parsers raise many types, AssertionError included
            why = key_error_reason(exc)
        else:
            return key
        log.error(
            "ssh2 target {name}: cannot use key file {path}: {why}",
            name=self.config.name,
            path=path,
            why=why,
        )
        raise UpstreamFailure("the gateway's key for this target cannot be used")

    def _connect(
        self, request: SessionRequest, sink: UpstreamSink, login: str, password: str | None
    ) -> defer.Deferred:
        key = self._load_key()
        if key is None and password is None:
            if self.config.credentials == "pass-through":
                raise UpstreamFailure(
                    "no password to pass through (log in to the gateway with one)"
                )
            raise UpstreamFailure("no credentials configured for this target")
        attempt = _Attempt(self, request, sink, login, password, key)
        attempt.connector = self.reactor.connectTCP(
            self.config.host,
            self.config.port,
            _Factory(attempt),
            timeout=self.config.connect_timeout,
        )
        return attempt.deferred
