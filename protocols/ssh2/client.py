"""The gateway's SSH-2 client: Conch's client transport, driven to open one session on a
device for a caller that supplies plain options (protocols.ssh2.client_state).

:func:`connect` connects over TCP, runs the key exchange with the caller's algorithm
lists, has the caller check the host key, logs in (password, key file, or
keyboard-interactive answered with the password: protocols.ssh2.client_auth), opens a
session channel (protocols.ssh2.client_channel) and fires with its UpstreamSession, or
fails with SSH2ClientError (one line for the user).

What Conch's client lacks is added here, client side only: mlkem768x25519-sha256 (Conch
has only the server half), AES-GCM framing, strict key exchange (protocols.ssh2.strict_kex,
shared with the server), and diffie-hellman-group1-sha1 for old devices (registered in
Conch's kex table; the gateway's own server validates its ``[ssh2] kex`` against a list
without it).

The client re-keys on its own (protocols.ssh2.rekey) unless the options say ``rekey=False``
(devices that never answer a re-key or break on one); a re-key the server starts is
always answered.

Conch calls connectionSecure after every NEWKEYS: the login starts only after the first
(an upstream's re-key must not start a second login). Conch asks verifyHostKey before it
checks the server's signature, so the caller's "host key proven" callable (pinning an
accept-new key) runs only at that first connectionSecure, once the device has proved it
holds the key.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from twisted.conch.ssh import _kex, common, keys, transport
from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure

from protocols.fingerprint import sha256_fingerprint
from protocols.flow import C2S, S2C, FlowRecorder
from protocols.session import SessionRequest
from protocols.ssh2.algorithms import DH_GEX_MAX_BITS, dh_min_bits
from protocols.ssh2.cipher import KeyedCiphers, shown_mac
from protocols.ssh2.client_auth import ClientUserAuth
from protocols.ssh2.client_channel import ClientConnection
from protocols.ssh2.client_state import (
    ClientAttempt,
    SessionSink,
    SSH2ClientError,
    SSH2ClientOptions,
    log,
    short,
)
from protocols.ssh2.logs import quiet_logger
from protocols.ssh2.transport_base import SSH2TransportBase

MLKEM768_CIPHERTEXT = 1088
MAX_PACKET = 1024 * 1024  # Conch's own bound
CLIENT_VERSION = b"SSH-2.0-sshgateway"


def connect_failure(reason: Failure) -> SSH2ClientError:
    exc = reason.value
    code = getattr(exc, "osError", None)
    if reason.check(error.ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return SSH2ClientError("connection refused")
    if reason.check(error.NoRouteError) or code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return SSH2ClientError("no route / host unreachable")
    if reason.check(error.TimeoutError, error.TCPTimedOutError) or code == errno.ETIMEDOUT:
        return SSH2ClientError("timed out")
    if reason.check(error.DNSLookupError):
        return SSH2ClientError("host name not found")
    return SSH2ClientError(f"cannot connect ({short(str(exc))})")


class SSH2ClientFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, attempt: ClientAttempt) -> None:
        self.attempt = attempt

    def buildProtocol(self, addr: Any) -> SSH2ClientTransport:
        proto = SSH2ClientTransport(self.attempt)
        proto.factory = self
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        attempt = self.attempt
        if not attempt.deferred.called:
            failure = connect_failure(reason)
            log.info("ssh2 upstream {name}: {why}", name=attempt.name, why=str(failure))
            attempt.deferred.errback(failure)


class SSH2ClientTransport(SSH2TransportBase, transport.SSHClientTransport):
    _log = quiet_logger("gateway.targets.ssh2.conch")
    ourVersionString = CLIENT_VERSION
    flow_out = C2S
    max_packet = MAX_PACKET
    dh_peer = "server"

    def __init__(self, attempt: ClientAttempt) -> None:
        self.attempt = attempt
        options = attempt.options
        self.supportedKeyExchanges = list(options.kex)
        self.supportedPublicKeys = list(options.host_key_algorithms)
        self.supportedCiphers = list(options.ciphers)
        self.supportedMACs = list(options.macs)
        self.supportedCompressions = [b"none"]
        self._dhMinimalGroupSize = dh_min_bits(options.kex)
        self._hung_up = False
        self._inbuf = bytearray()
        # Re-key after 1 GiB or an hour, unless the device is one that never answers a
        # re-key or breaks on one (it may still start one itself: that is answered).
        self.rekey_clock = attempt.clock if options.rekey else None
        self._workarounds: frozenset[str] | None = None  # the device's, once its line is read
        self._mlkem: Any = None
        self._x25519: Any = None
        self._hybrid_init = b""
        self._host_key_proven: Any = None  # the caller's callable, run once the kex succeeded

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
            if not self.gotVersion:
                # Conch reads the device's version line; what follows it stays in
                # self.buf (our getPacket leaves the packets to _read_packets).
                super().dataReceived(data)
                self._flow_version()
                self._apply_workarounds()
                if not self.gotVersion or self._hung_up:
                    return
                data, self.buf = self.buf, b""
            self._inbuf += data
            self._read_packets()
        except Exception:
            # Conch's parsers raise on truncated or inconsistent packets.
            log.failure("ssh2 upstream {name}: bad packet", name=self.attempt.name)
            self.attempt.fail(SSH2ClientError("SSH protocol error from upstream"))
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"protocol error")

    def _unsupportedVersionReceived(self, remoteVersion: bytes) -> None:
        if remoteVersion.startswith(b"1."):
            self.attempt.fail(SSH2ClientError('upstream speaks only SSH-1 (use protocol = "ssh1")'))
        else:
            self.attempt.fail(SSH2ClientError(f"upstream speaks SSH {short(remoteVersion)}"))
        super()._unsupportedVersionReceived(remoteVersion)

    # -- packets (AES-GCM framing; Conch's own for everything else) ---------------------

    def flow_recorder(self) -> FlowRecorder | None:
        return self.attempt.flow

    def _flow_version(self) -> None:
        """Record the server's line once Conch has read it (before any packet after it)."""
        flow = self.attempt.flow
        if flow is not None and self.gotVersion and "server" not in flow.versions:
            flow.version(S2C, self.otherVersionString.decode("ascii", "replace"))

    def _apply_workarounds(self) -> None:
        """Ask once, when the device's line is known, which workarounds it needs."""
        ask = self.attempt.options.workarounds_for
        if ask is None or not self.gotVersion or self._workarounds is not None:
            return
        self._workarounds = ask(self.otherVersionString.decode("ascii", "replace"))
        if "no-rekey" in self._workarounds:
            self.rekey_clock = None

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        flow = self.attempt.flow
        if flow is not None:
            self._flow_version()
            flow.packet(S2C, self.flow_name(messageNum), self._in_size)
        super().dispatchMessage(messageNum, payload)

    def getPacket(self) -> None:
        # Conch's dataReceived asks for packets right after the version line; they are
        # read from our own buffer instead (SSH2TransportBase.take_message).
        return None

    def _read_packets(self) -> None:
        while not self._hung_up:
            found = self.take_message()
            if found is None:
                return
            self.dispatchMessage(*found)

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
            self.attempt.fail(SSH2ClientError("key exchange with upstream failed (bad reply)"))
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

    def _check_dh_group(self) -> None:
        # The server chooses the group in group exchange: bound its size before any
        # arithmetic.
        bits = self.p.bit_length()
        if not self._dhMinimalGroupSize <= bits <= DH_GEX_MAX_BITS or not 1 < self.g < self.p - 1:
            self.attempt.fail(
                SSH2ClientError(f"upstream offered an unacceptable {bits}-bit DH group")
            )
            raise ValueError("bad DH group")

    def _dh_value_refused(self) -> None:
        # Raised inside Conch's host-key callback chain, whose errback only says "bad
        # host key": record the real reason first.
        self.attempt.fail(SSH2ClientError("key exchange with upstream failed (bad DH value)"))

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred:
        attempt = self.attempt
        try:
            key = keys.Key.fromString(hostKey)
        except Exception:
            attempt.fail(SSH2ClientError("upstream sent an unreadable host key"))
            return defer.fail(ValueError("unreadable host key"))

        def accepted(proven: Any) -> bool:
            if self._host_key_proven is None:
                self._host_key_proven = proven
            if attempt.flow is not None:
                attempt.flow.negotiated.update(
                    {
                        "host_key_type": key.sshType().decode("ascii"),
                        "host_key_bits": key.size(),
                        "host_key_fingerprint": sha256_fingerprint(key.public().blob()),
                    }
                )
            return True

        def refused(reason: Failure) -> Failure:
            if reason.check(SSH2ClientError):
                attempt.fail(reason.value)
            return reason

        return attempt.options.verify_host_key(key).addCallbacks(accepted, refused)

    def _rekey_blocked(self) -> bool:
        return (
            self._hung_up
            or self.transport is None
            or not self.attempt.options.rekey
            or "no-rekey" in (self._workarounds or ())
        )

    def connectionSecure(self) -> None:
        # Conch calls this after every NEWKEYS, re-keys included: log in only once.
        if self.attempt.phase != "key exchange":
            return
        attempt = self.attempt
        proven, self._host_key_proven = self._host_key_proven, None
        if proven is not None:
            try:
                proven()
            except SSH2ClientError as exc:  # known_hosts unusable, or pinned otherwise meanwhile
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
        self.requestService(ClientUserAuth(attempt.login.encode("utf-8"), ClientConnection(attempt), attempt))

    # -- the end -----------------------------------------------------------------------

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if self._hung_up:
            return
        if reason == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE:
            self.attempt.fail(SSH2ClientError("authentication refused by upstream"))
        elif reason == transport.DISCONNECT_KEY_EXCHANGE_FAILED:
            self.attempt.fail(
                SSH2ClientError(f"key exchange with upstream failed ({short(desc)})")
            )
        elif reason != transport.DISCONNECT_BY_APPLICATION:
            self.attempt.fail(SSH2ClientError(f"SSH error with upstream ({short(desc)})"))
        self._hung_up = True
        super().sendDisconnect(reason, desc)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        if self.attempt.phase == "login":
            failure = SSH2ClientError(f"authentication refused by upstream ({short(description)})")
        else:
            failure = SSH2ClientError(f"upstream disconnected ({short(description)})")
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
        self.attempt.flow_closed()

    def negotiated_algorithms(self) -> dict[str, str]:
        """What the key exchange agreed on, in the flow records' names."""
        enc = self.currentEncryptions
        return {
            "kex": self.kexAlg.decode("ascii", "replace"),
            "host_key_algorithm": self.keyAlg.decode("ascii", "replace"),
            "cipher_c2s": enc.outCipType.decode("ascii", "replace"),
            "cipher_s2c": enc.inCipType.decode("ascii", "replace"),
            "mac_c2s": shown_mac(enc.outCipType, enc.outMACType),
            "mac_s2c": shown_mac(enc.inCipType, enc.inMACType),
        }

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


def connect(
    reactor: Any, options: SSH2ClientOptions, request: SessionRequest, sink: SessionSink
) -> defer.Deferred:
    """Open one session on ``options.host``: fires with its UpstreamSession, or fails with
    SSH2ClientError; cancelling it hangs up."""
    attempt = ClientAttempt(options, request, sink, reactor)
    attempt.connector = reactor.connectTCP(
        options.host, options.port, SSH2ClientFactory(attempt), timeout=options.connect_timeout
    )
    return attempt.deferred
