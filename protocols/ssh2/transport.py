"""The SSH-2 transport after a handoff: Conch's server transport, driven by SSH2Settings.

The dispatcher has already exchanged identification lines (it must, to announce
``SSH-1.99``), so this transport never writes a version line: it takes both lines as the
dispatcher sent and received them for the exchange hash, sends KEXINIT as soon as it is
connected and then reads packets. It offers only the algorithms the settings list, in
their order; it hardens Conch's packet loop (any malformed or unexpected input is a
clean DISCONNECT with a reason and a log line), runs strict key exchange with clients
that offer it (the Terrapin countermeasure) and fills in the ConnectionRecord.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from twisted.conch.ssh import transport
from twisted.conch.ssh.common import MP
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import SSHCiphers, SSHServerTransport
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from protocols.auth import LoginContext, LoginFlow
from protocols.fingerprint import sha256_fingerprint
from protocols.flow import C2S, S2C, FlowRecorder
from protocols.handoff import IDrainable
from protocols.record import ConnectionRecord
from protocols.ssh2 import moduli
from protocols.ssh2.algorithms import HOST_KEY_TYPES
from protocols.ssh2.cipher import CIPHERS, MACS, KeyedCiphers, shown_mac
from protocols.ssh2.logs import quiet_logger
from protocols.ssh2.settings import SSH2Settings
from protocols.ssh2.transport_base import (
    SSH2TransportBase,
    is_group_exchange,
    supported_key_exchanges,
)
from protocols.ssh2.wire import Reader

# Shortest body each transport message's Conch handler reads without bounds checks:
# DISCONNECT uint32 + a string (Conch, like many peers, ignores the language tag),
# UNIMPLEMENTED uint32, DEBUG boolean + two strings,
# EXT_INFO uint32, KEXINIT cookie + ten name-lists + boolean + uint32.
MIN_BODY = {
    transport.MSG_DISCONNECT: 4 + 4,
    transport.MSG_UNIMPLEMENTED: 4,
    transport.MSG_DEBUG: 1 + 4 + 4,
    transport.MSG_EXT_INFO: 4,
    transport.MSG_KEXINIT: 16 + 10 * 4 + 1 + 4,
}
# Messages 30-49 belong to the key exchange method KEXINIT negotiated (RFC 4250 4.1.2).
KEX_METHOD_MESSAGES = (30, 49)
# What a truncated length-prefixed field raises in Conch's parsers and in ours.
MALFORMED_BODY = (struct.error, IndexError)

log = Logger()

# Largest packet we accept (RFC 4253 section 6.1 asks for at least 35000 bytes); our
# channels advertise 32 KiB maximum data packets, so anything near this is hostile.
MAX_PACKET_LENGTH = 256 * 1024

# Largest inflated payload we accept from a compressed packet (RFC 4253 section 6.1
# requires 32768 + headers; channel packets here are at most 32 KiB of data).
MAX_INFLATED_PAYLOAD = 256 * 1024

# Signature algorithms accepted for user public keys, announced in server-sig-algs
# (RFC 8308); ssh-rsa (SHA-1) only when the operator opted into it for host keys.
USER_SIGNATURE_ALGORITHMS: tuple[bytes, ...] = (
    b"ssh-ed25519",
    b"sk-ssh-ed25519@openssh.com",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"sk-ecdsa-sha2-nistp256@openssh.com",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)


class NoAlgorithms(ValueError):
    """The settings and host keys leave nothing to offer for some algorithm kind."""


def offered_algorithms(
    settings: SSH2Settings, host_keys: dict[bytes, Key], groups: moduli.Groups
) -> dict[str, list[bytes]]:
    """What to put in our KEXINIT, in the settings' order, minus what cannot work here:
    no host key of the needed type, no Conch/cryptography support, gex without groups."""
    supported_kex = supported_key_exchanges()
    kex = []
    for name in settings.kex:
        raw = name.encode("ascii")
        if raw not in supported_kex:
            log.warn("ssh2: kex {name} is not available in this build; not offered", name=name)
            continue
        if is_group_exchange(raw) and not groups:
            log.warn("ssh2: no DH groups; {name} not offered", name=name)
            continue
        kex.append(raw)
    host = []
    for name in settings.host_key_algorithms:
        key = host_keys.get(HOST_KEY_TYPES[name])
        if key is not None and name.encode("ascii") in key.supportedSignatureAlgorithms():
            host.append(name.encode("ascii"))
    ciphers = [n.encode("ascii") for n in settings.ciphers if n.encode("ascii") in CIPHERS]
    macs = [n.encode("ascii") for n in settings.macs if n.encode("ascii") in MACS]
    offered = {
        "kex": kex,
        "host_key": host,
        "cipher": ciphers,
        "mac": macs,
        "compression": [b"none", b"zlib"] if settings.compression else [b"none"],
    }
    for kind, names in offered.items():
        if not names:
            raise NoAlgorithms(f"ssh2: nothing to offer for {kind} with these settings and host keys")
    return offered


class _BoundedInflater:
    """zlib decompression that refuses to inflate one packet beyond a fixed size."""

    def __init__(self, limit: int) -> None:
        self._inflater = zlib.decompressobj()
        self._limit = limit

    def decompress(self, data: bytes) -> bytes:
        out = self._inflater.decompress(data, self._limit)
        if self._inflater.unconsumed_tail:
            raise ValueError("inflated packet too large")
        return out


@implementer(IPushProducer, IDrainable)
class SSH2ServerTransport(SSH2TransportBase, SSHServerTransport):
    """One SSH-2 connection handed over by the dispatcher.

    ``factory`` is the :class:`protocols.ssh2.factory.SSH2ServerFactory` (host keys,
    groups, portal, limits, clock, services).

    It is also a push producer for the TCP transport: while the socket's send buffer is
    full every session's output source is paused, so a client that stops reading the
    socket costs a bounded amount of memory whatever its channel windows.
    """

    tcp_paused = False
    _producer_registered = False

    _log = quiet_logger(__name__ + ".conch")
    flow_out = S2C
    max_packet = MAX_PACKET_LENGTH
    dh_peer = "client"
    login_flow: LoginFlow | None = None
    nextEncryptions: SSHCiphers | None = None

    def __init__(
        self,
        factory: Any,
        record: ConnectionRecord,
        server_version: bytes,
        client_version: bytes,
        offered: dict[str, list[bytes]],
        clock: IReactorTime,
    ) -> None:
        self.factory = factory
        self.record = record
        # The exact lines exchanged by the dispatcher: they go into the exchange hash.
        self.ourVersionString = server_version
        self.otherVersionString = client_version
        self.supportedKeyExchanges = list(offered["kex"])
        self.supportedPublicKeys = list(offered["host_key"])
        self.supportedCiphers = list(offered["cipher"])
        self.supportedMACs = list(offered["mac"])
        self.supportedCompressions = list(offered["compression"])
        self.user_signature_algorithms = list(USER_SIGNATURE_ALGORITHMS)
        if b"ssh-rsa" in self.supportedPublicKeys:
            self.user_signature_algorithms.append(b"ssh-rsa")
        self._inbuf = bytearray()
        self.rekey_limit = factory.settings.rekey_limit
        self.rekey_interval = factory.settings.rekey_interval
        self.rekey_clock = clock

    # -- connection life cycle ------------------------------------------------------------

    def connectionMade(self) -> None:
        # No version line here: the dispatcher already sent ours and read theirs.
        self.gotVersion = True
        self.record.protocol = "ssh2"
        if not self.record.server_version:
            self.record.server_version = self.ourVersionString.decode("ascii", "replace")
        if not self.record.client_version:
            self.record.client_version = self.otherVersionString.decode("ascii", "replace")
        self._set_nodelay()
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            try:
                register(self, True)
                self._producer_registered = True
            except RuntimeError:
                pass  # someone else produces into this transport; windows still bound us
        self.currentEncryptions = KeyedCiphers.plain()
        # The grace time runs from the handoff, not from the start of user auth, so a
        # client that stalls the key exchange is cut off too.
        context = LoginContext(
            protocol="ssh2", peer=self.record.peer, client_version=self.record.client_version
        )
        self.login_flow = self.factory.make_login_flow(context, self._grace_expired)
        version = self.otherVersionString.split(b"-", 2)
        if len(version) < 3 or version[1] not in self.supportedVersions:
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED, b"unsupported protocol version"
            )
            return
        self.sendKexInit()

    def _set_nodelay(self) -> None:
        # Small interactive packets and the key exchange round trips must not wait for
        # Nagle; this is most of the connection-rate difference on loopback.
        setter = getattr(self.transport, "setTcpNoDelay", None)
        if setter is None:
            return
        try:
            setter(True)
        except (OSError, AttributeError):
            pass

    # -- IPushProducer towards the TCP transport -----------------------------------------

    def pauseProducing(self) -> None:
        self.tcp_paused = True
        self._tell_channels()

    def resumeProducing(self) -> None:
        self.tcp_paused = False
        self._tell_channels()

    def stopProducing(self) -> None:
        pass  # the connection is going away; connectionLost cleans up

    def _tell_channels(self) -> None:
        channels = getattr(self.service, "channels", None) or {}
        for channel in list(channels.values()):
            hook = getattr(channel, "set_tcp_paused", None)
            if hook is not None:
                hook(self.tcp_paused)

    def _unregister_producer(self) -> None:
        # A registered producer keeps loseConnection from completing.
        if self._producer_registered:
            self._producer_registered = False
            self.transport.unregisterProducer()

    def _grace_expired(self) -> None:
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"login grace time exceeded")

    # -- IDrainable: the gateway is shutting down ----------------------------------------

    def _open_channels(self) -> list[Any]:
        return list((getattr(self.service, "channels", None) or {}).values())

    def has_session(self) -> bool:
        return not self._disconnecting and bool(self._open_channels())

    def tell_sessions(self, message: str) -> None:
        # CR LF reads right with and without a pty.
        data = message.encode("utf-8", "replace") + b"\r\n"
        for channel in self._open_channels():
            write_stderr = getattr(channel, "write_stderr", None)
            if write_stderr is not None:
                write_stderr(data)

    def disconnect_by_application(self, reason: str) -> None:
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, reason)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.login_flow is not None:
            self.login_flow.cancel()
        if not self.record.close_reason:
            self.record.close_reason = "connection closed"
        super().connectionLost(reason)

    # -- packets in -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Bytes in and out are counted by the dispatcher, which sees every byte.
        if self._disconnecting:
            return
        self._inbuf += data
        try:
            while not self._disconnecting:
                found = self._next_message()
                if found is None:
                    break
                message, body = found
                flow = self.record.flow
                if flow is not None:
                    flow.packet(C2S, self.flow_name(message), self._in_size)
                self.dispatchMessage(message, body)
        except MALFORMED_BODY as e:
            # A string or integer that runs past the end of its packet: hostile or broken
            # input, reported in one line (no traceback: nothing here is our fault).
            log.warn(
                "ssh2: malformed packet from {peer}: {error}", peer=self.record.peer, error=e
            )
            self.protocol_error("malformed or unexpected packet")
        except Exception:
            # Anything else is a defect of ours: the peer gets a DISCONNECT, we the traceback.
            log.failure("ssh2: error handling a packet from {peer}", peer=self.record.peer)
            self.protocol_error("malformed or unexpected packet")

    def _next_message(self) -> tuple[int, bytes] | None:
        """The next whole packet's message number and body from the input buffer, or None
        for "need more" (or after a DISCONNECT).

        Replaces Conch's getPacket: protocols.ssh2.cipher's Opener checks every length
        before anything is allocated for it (SSH2TransportBase.take_message)."""
        if self.incomingCompression is None:
            return self.take_message()
        payload = self.take_payload()
        if payload is None:
            return None
        try:
            payload = self.incomingCompression.decompress(payload)
        except Exception:
            self.sendDisconnect(transport.DISCONNECT_COMPRESSION_ERROR, b"compression error")
            return None
        if not payload:
            self.protocol_error("empty packet payload")
            return None
        return payload[0], payload[1:]

    def flow_recorder(self) -> FlowRecorder | None:
        return self.record.flow

    def protocol_error(self, reason: str) -> None:
        self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, reason.encode("ascii", "replace"))

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        # Nothing above the transport layer before the first key exchange completed and
        # a service was accepted (RFC 4253 section 10, RFC 4252 section 6).
        if messageNum >= 50 and self.service is None:
            self.protocol_error(f"message {messageNum} before any service")
            return
        # Conch's handlers index into bodies they assume are whole: too short a body is
        # refused here, so that it ends in a protocol error and not in a traceback.
        if len(payload) < MIN_BODY.get(messageNum, 0):
            self.protocol_error(f"message {messageNum} is truncated")
            return
        # The method-specific key exchange messages mean something only once KEXINIT
        # chose a method; before that Conch's handlers fail on the missing choice.
        if KEX_METHOD_MESSAGES[0] <= messageNum <= KEX_METHOD_MESSAGES[1] and not getattr(
            self, "kexAlg", None
        ):
            self.protocol_error(f"key exchange message {messageNum} before KEXINIT")
            return
        super().dispatchMessage(messageNum, payload)

    def ssh_SERVICE_REQUEST(self, packet: bytes) -> None:
        if self.sessionID is None or self.key_exchange_in_progress():
            self.protocol_error("service request before key exchange completed")
            return
        reader = Reader(packet)
        name = reader.string(64)
        reader.end()
        if self.service is not None and name == self.service.name:
            if name == b"ssh-userauth":
                # paramiko asks again before each method (its key-then-password fallback)
                # and OpenSSH's sshd accepts it. Accept it again without restarting the
                # service: attempts used, the pipelined queue and the login flow go on.
                self.sendPacket(transport.MSG_SERVICE_ACCEPT, packet)
                return
            self.protocol_error("service already running")
            return
        super().ssh_SERVICE_REQUEST(packet)

    # -- key exchange ---------------------------------------------------------------------

    def ssh_KEXINIT(self, packet: bytes) -> None:
        super().ssh_KEXINIT(packet)
        if self._disconnecting or self.nextEncryptions is None:
            return
        enc = self.nextEncryptions = KeyedCiphers.of(self.nextEncryptions)
        self.record.algorithms = {
            "kex": self.kexAlg.decode("ascii", "replace"),
            "hostkey": self.keyAlg.decode("ascii", "replace"),
            "cipher_in": enc.inCipType.decode("ascii", "replace"),
            "cipher_out": enc.outCipType.decode("ascii", "replace"),
            "mac_in": shown_mac(enc.inCipType, enc.inMACType),
            "mac_out": shown_mac(enc.outCipType, enc.outMACType),
            "comp_in": self.incomingCompressionType.decode("ascii", "replace"),
            "comp_out": self.outgoingCompressionType.decode("ascii", "replace"),
            "strict_kex": "yes" if self.strict_kex else "no",
        }
        if self.record.flow is not None:
            self._flow_negotiated()

    def _flow_negotiated(self) -> None:
        """What this key exchange agreed on, in flow-record names (c2s = from the client)."""
        assert self.record.flow is not None
        algs = self.record.algorithms
        negotiated: dict[str, Any] = {
            "kex": algs["kex"],
            "host_key_algorithm": algs["hostkey"],
            "cipher_c2s": algs["cipher_in"],
            "cipher_s2c": algs["cipher_out"],
            "mac_c2s": algs["mac_in"],
            "mac_s2c": algs["mac_out"],
            "compression_c2s": algs["comp_in"],
            "compression_s2c": algs["comp_out"],
            "strict_kex": self.strict_kex,
        }
        if algs["comp_in"] == algs["comp_out"]:
            negotiated["compression"] = algs["comp_in"]
        key_type = HOST_KEY_TYPES.get(algs["hostkey"])
        key = self.factory.publicKeys.get(key_type) if key_type is not None else None
        if key is not None:
            negotiated["host_key_type"] = key.sshType().decode("ascii")
            negotiated["host_key_bits"] = key.size()
            negotiated["host_key_fingerprint"] = sha256_fingerprint(key.blob())
        self.record.flow.negotiated.update(negotiated)

    def ssh_KEX_DH_GEX_REQUEST_OLD(self, packet: bytes) -> None:
        if self.ignoreNextPacket or not is_group_exchange(self.kexAlg):
            super().ssh_KEX_DH_GEX_REQUEST_OLD(packet)
            return
        reader = Reader(packet)
        preferred = reader.uint32()
        reader.end()
        self._send_group(packet, moduli.MIN_BITS, preferred, moduli.MAX_BITS)

    def ssh_KEX_DH_GEX_REQUEST(self, packet: bytes) -> None:
        if self.ignoreNextPacket:
            self.ignoreNextPacket = 0
            return
        if not is_group_exchange(self.kexAlg):
            self.protocol_error("group exchange request for another key exchange")
            return
        reader = Reader(packet)
        minimum, preferred, maximum = reader.uint32(), reader.uint32(), reader.uint32()
        reader.end()
        if not minimum <= preferred <= maximum:
            self.protocol_error("bad group exchange request sizes")
            return
        self._send_group(packet, minimum, preferred, maximum)

    def _send_group(self, request: bytes, minimum: int, preferred: int, maximum: int) -> None:
        group = moduli.choose_group(self.factory.groups, minimum, preferred, maximum)
        if group is None:
            self.sendDisconnect(
                transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"no DH group in the requested range"
            )
            return
        # Conch's GEX_INIT hashes the raw request body exactly as received.
        self.dhGexRequest = request
        self.g, self.p = group
        self.start_ephemeral_dh()
        self.sendPacket(transport.MSG_KEX_DH_GEX_GROUP, MP(self.p) + MP(self.g))

    def ssh_KEX_DH_GEX_INIT(self, packet: bytes) -> None:
        if not is_group_exchange(self.kexAlg) or getattr(self, "dhSecretKey", None) is None:
            self.protocol_error("unexpected group exchange init")
            return
        super().ssh_KEX_DH_GEX_INIT(packet)

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        if getattr(self.nextEncryptions, "sealer", None) is None:  # not keyed yet
            self.protocol_error("NEWKEYS before key exchange")
            return
        super().ssh_NEWKEYS(packet)

    def keys_changed(self) -> None:
        if self.incomingCompression is not None and not isinstance(
            self.incomingCompression, _BoundedInflater
        ):
            self.incomingCompression = _BoundedInflater(MAX_INFLATED_PAYLOAD)

    def _rekey_blocked(self) -> bool:
        return self._disconnecting or self.transport is None

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        # Conch announces its host-key algorithms as server-sig-algs; clients read that
        # list to choose a *user* key signature, so announce what user auth accepts.
        fixed = [
            (name, b",".join(self.user_signature_algorithms) if name == b"server-sig-algs" else value)
            for name, value in extensions
        ]
        super().sendExtInfo(fixed)

    # -- packets out ----------------------------------------------------------------------

    def sendDisconnect(self, reason: int, desc: bytes | str) -> None:
        if self._disconnecting:
            return
        if isinstance(desc, str):
            desc = desc.encode("utf-8", "replace")
        text = desc.decode("utf-8", "replace")
        if not self.record.close_reason:
            self.record.close_reason = text
        log.info(
            "ssh2: disconnecting {peer}: {reason} (code {code})",
            peer=self.record.peer,
            reason=text,
            code=reason,
        )
        self.sendPacket(transport.MSG_DISCONNECT, struct.pack(">L", reason) + _ns(desc) + _ns(b""))
        self._disconnecting = True
        if self.login_flow is not None:
            self.login_flow.cancel()
        self._unregister_producer()
        self.transport.loseConnection()

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        text = description[:200].decode("utf-8", "replace")
        if not self.record.close_reason:
            self.record.close_reason = f"client disconnected: {text}"
        self._disconnecting = True
        self._unregister_producer()  # Conch closes the transport right after this

    def receiveUnimplemented(self, seqnum: int) -> None:
        log.debug("ssh2: peer did not implement packet {seqnum}", seqnum=seqnum)


def _ns(value: bytes) -> bytes:
    return struct.pack(">L", len(value)) + value


__all__ = ["SSH2ServerTransport", "offered_algorithms", "NoAlgorithms"]
