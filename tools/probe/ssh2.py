"""The SSH-2 half of a probe, like ssh-keyscan: Conch's client transport, stopped once a
key exchange is done, reports the server's KEXINIT and the host key it proved it holds
(the exchange signature checked by Conch); one more exchange per other host key type the
server offers (:func:`key_types`) fetches the rest of its keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.conch.ssh import transport as conch_transport
from twisted.internet import defer
from twisted.python.failure import Failure

from protocols.ssh1.connection import printable
from protocols.ssh1.identification import MAX_LINE
from protocols.ssh2.algorithms import CLIENT, HOST_KEY_TYPES, is_legacy, known
from protocols.ssh2.kexinit import KexInit, KexInitError, parse_kexinit
from protocols.ssh2.transport_base import supported_key_exchanges
from tools.probe.attempt import SOFTWARE, Attempt
from tools.probe.keys import host_key_from_blob
from tools.probe.report import HostKey, SSH2Result


class SSH2Attempt(conch_transport.SSHClientTransport, Attempt):
    """Conch's client transport, stopped once the key exchange is done: it reports the
    server's KEXINIT and the host key (signature checked by Conch) and hangs up."""

    ourVersionString = f"SSH-2.0-{SOFTWARE}".encode()

    def __init__(self, algorithms: Sequence[str] | None = None) -> None:
        self._init_attempt()
        if algorithms:
            self.supportedPublicKeys = [a.encode("ascii") for a in algorithms]
        self.supportedKeyExchanges = _probe_key_exchanges()
        self.kexinit: KexInit | None = None
        self.host_key: HostKey | None = None
        self.ssh1_only = False
        self._finished_ok = False

    def dataReceived(self, data: bytes) -> None:
        if self._finished_ok or self.error is not None:
            return
        try:
            super().dataReceived(data)
        except Exception as exc:  # Conch's parsers raise on malformed packets
            self._fail(f"malformed SSH-2 packet from the server ({type(exc).__name__})")
            self.transport.loseConnection()
            return
        if self.identification is None and getattr(self, "otherVersionString", None):
            self.identification = printable(self.otherVersionString, MAX_LINE)

    def _unsupportedVersionReceived(self, remoteVersion: bytes) -> None:
        self.identification = printable(self.otherVersionString, MAX_LINE)
        self.ssh1_only = True
        self._fail(f"server speaks SSH-{printable(remoteVersion, 20)} only")
        super()._unsupportedVersionReceived(remoteVersion)

    def ssh_KEXINIT(self, packet: bytes) -> None:
        if self.kexinit is not None:  # a second one would be a re-key: not ours to do
            self.sendDisconnect(conch_transport.DISCONNECT_BY_APPLICATION, b"probe finished")
            return
        try:
            self.kexinit = parse_kexinit(packet)
        except KexInitError as exc:
            self._fail(f"malformed SSH2_MSG_KEXINIT: {exc}")
            self.sendDisconnect(conch_transport.DISCONNECT_PROTOCOL_ERROR, b"malformed KEXINIT")
            return
        super().ssh_KEXINIT(packet)

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred:
        algorithm = (self.keyAlg or b"").decode("ascii", "replace")
        self.host_key = host_key_from_blob(algorithm, hostKey)
        return defer.succeed(True)  # Conch then checks the exchange signature

    def connectionSecure(self) -> None:
        self._finished_ok = True
        if self.host_key is not None:
            self.host_key.verified = True
        self.sendDisconnect(conch_transport.DISCONNECT_BY_APPLICATION, b"probe finished")

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if not self._finished_ok:
            self._fail(printable(desc, 200))
        super().sendDisconnect(reason, desc)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self._fail(f"server disconnected: {printable(description, 200)}")
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.identification is None and self.error is None and not self.timed_out:
            self._fail("connection closed before the identification line")
        elif not self._finished_ok and self.error is None and not self.timed_out:
            self._fail("connection closed during the key exchange")
        self._done()

    def result(self) -> SSH2Result:
        if self.kexinit is None:  # no SSH-2 server seen (or it never sent its KEXINIT)
            return SSH2Result(False if self.ssh1_only else None, self.error)
        result = SSH2Result(True, None, self.kexinit)
        if self.host_key is not None:
            result.host_keys.append(self.host_key)
        if self.host_key is None or not self.host_key.verified:
            result.key_errors.append(self.error or "no host key")
        return result


def _probe_key_exchanges() -> list[bytes]:
    """Conch's key exchanges, then the client's legacy ones Conch does not offer (the
    registry's diffie-hellman-group1-sha1; least preferred): enough to fetch the host key
    of an old device too."""
    names = list(conch_transport.SSHClientTransport.supportedKeyExchanges)
    for legacy in (n.encode() for n in known(CLIENT, "kex") if is_legacy("kex", n)):
        if legacy not in names and legacy in supported_key_exchanges():
            names.append(legacy)
    return names


def key_types(kexinit: KexInit) -> list[tuple[str, str]]:
    """(key type, first algorithm the server offers for it that Conch can check): one key
    exchange per key type (rsa-sha2-512, rsa-sha2-256 and ssh-rsa all show the same RSA
    key)."""
    supported = {a.decode() for a in conch_transport.SSHClientTransport.supportedPublicKeys}
    seen: dict[str, str] = {}
    for algorithm in kexinit.host_key_algorithms:
        if algorithm not in supported:
            continue
        key_type = HOST_KEY_TYPES.get(algorithm, algorithm.encode("ascii")).decode("ascii")
        seen.setdefault(key_type, algorithm)
    return list(seen.items())
