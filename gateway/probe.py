"""``sshgateway probe``: what a host offers over SSH-1 and over SSH-2, without logging in.

Owns the probe itself: per host one SSH-1 attempt (identification, then the server's
SSH_SMSG_PUBLIC_KEY, then a clear-text disconnect) and SSH-2 attempts like ssh-keyscan
(Conch's client transport: the server's KEXINIT lists, and one key exchange per host key
type it offers, stopped once the keys are in place), bounded by one per-host deadline; many
hosts under a concurrency limit; the text / JSON / CSV reports; and, with credentials, one
login per protocol found through the upstream targets' own clients (the host keys just seen
pinned), whose connections are recorded as flow records for ``sshgateway flows compare``.

A probe connection is short and talks to hosts that may be hostile or broken: every line and
list is bounded before it is kept, every failure becomes a reason in the report (never a
traceback), and a host that says nothing is reported when its deadline passes.
"""

from __future__ import annotations

import csv
import io
import json
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from twisted.conch.ssh import keys as conch_keys
from twisted.conch.ssh import transport as conch_transport
from twisted.internet import defer, endpoints, error, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from protocols.fingerprint import sha256_fingerprint
from protocols.ssh1 import messages as m1
from protocols.ssh1.client_connection import read_public_key
from protocols.ssh1.connection import printable
from protocols.ssh1.identification import (
    MAX_LINE,
    IdentificationError,
    IdentificationReader,
    parse_version,
)
from protocols.ssh1.keys import ssh1_fingerprint, ssh1_sha256_fingerprint
from protocols.ssh1.packet import PacketDecoder, PacketEncoder
from protocols.ssh1.wire import ProtocolError, Reader, Writer

DEFAULT_PORT = 22
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONCURRENCY = 16
SOFTWARE = "sshgateway_probe"

MAX_REFUSAL = 512  # what an SSH-2-only server answers to our SSH-1 line, kept for the report
REFUSAL_WAIT = 2.0  # seconds we wait for that answer (within the host's deadline)
MAX_SSH1_PACKETS = 8  # IGNORE/DEBUG packets tolerated before SSH_SMSG_PUBLIC_KEY
MAX_KEY_BITS = 16384  # larger SSH-1 keys are refused before the number is built
RECORD_WAIT = 2.0  # seconds a login waits, after its end, for its flow record to be written
MAX_KEXINIT = 64 * 1024
MAX_NAME_LIST = 8192
MAX_NAMES = 256
MAX_NAME = 64
_NAME = re.compile(r"^[\x21-\x7e]+$")

# SSH-1 numbers as the protocol draft names them; bits we do not know are shown as numbers.
SSH1_CIPHER_NAMES = {
    0: "none",
    1: "idea",
    2: "des",
    3: "3des",
    4: "tss",
    5: "arcfour",
    6: "blowfish",
}
SSH1_AUTH_NAMES = {
    m1.SSH_AUTH_RHOSTS: "rhosts",
    m1.SSH_AUTH_RSA: "rsa",
    m1.SSH_AUTH_PASSWORD: "password",
    m1.SSH_AUTH_RHOSTS_RSA: "rhosts-rsa",
    m1.SSH_AUTH_TIS: "tis",
    6: "kerberos",
}
SSH1_FLAG_NAMES = {
    m1.SSH_PROTOFLAG_SCREEN_NUMBER: "screen-number",
    m1.SSH_PROTOFLAG_HOST_IN_FWD_OPEN: "host-in-fwd-open",
}

# SSH-2 host key algorithm -> the key type it signs with: one key exchange per key type
# (rsa-sha2-512, rsa-sha2-256 and ssh-rsa all show the same RSA key).
KEY_TYPE_OF_ALGORITHM = {
    "rsa-sha2-512": "ssh-rsa",
    "rsa-sha2-256": "ssh-rsa",
    "ssh-rsa": "ssh-rsa",
}


class ProbeError(ValueError):
    """A server's message that cannot be read; ``str()`` says what is wrong."""


# ------------------------------------------------------------------ results
@dataclass
class SSH1Offer:
    host_key_bits: int
    host_key_announced_bits: int
    host_key_md5: str  # colon-hex, as plink shows it
    host_key_sha256: str  # SHA256:..., as ssh-keygen1 -l shows it
    server_key_bits: int
    server_key_announced_bits: int
    ciphers: list[str]
    cipher_mask: int
    auth: list[str]
    auth_mask: int
    flags: list[str]
    flags_mask: int
    warnings: list[str] = field(default_factory=list)


@dataclass
class KexInit:
    kex: list[str]
    host_key_algorithms: list[str]
    ciphers_c2s: list[str]
    ciphers_s2c: list[str]
    macs_c2s: list[str]
    macs_s2c: list[str]
    compression_c2s: list[str]
    compression_s2c: list[str]
    languages_c2s: list[str]
    languages_s2c: list[str]
    first_kex_follows: bool


@dataclass
class HostKey:
    algorithm: str  # the host key algorithm this key exchange used
    type: str  # the key's own type (ssh-ed25519, ssh-rsa, ...)
    bits: int | None
    fingerprint: str  # SHA256:...
    verified: bool  # the server proved it holds the key (exchange signature checked)


@dataclass
class SSH1Result:
    available: bool | None = None  # None: could not tell (no answer, refused)
    reason: str | None = None
    offer: SSH1Offer | None = None


@dataclass
class SSH2Result:
    available: bool | None = None
    reason: str | None = None
    kexinit: KexInit | None = None
    host_keys: list[HostKey] = field(default_factory=list)
    key_errors: list[str] = field(default_factory=list)


@dataclass
class LoginResult:
    """One login over one protocol (``--user``): its flow record's id for flows compare."""

    protocol: str
    ok: bool = False
    exit_status: int | None = None
    flow_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Credentials:
    """What ``--user`` / ``--password`` / ``--key`` give; never printed (no password in
    any repr) and never recorded."""

    user: str
    password: str | None = field(default=None, repr=False)
    key: Path | None = None
    state_dir: Path = Path("sshgateway-state")
    command: str = "true"
    flows: Any = field(default=None, repr=False, compare=False)  # gateway.flows.FlowWriter


@dataclass
class HostReport:
    target: str
    host: str
    port: int
    status: str = "error"  # ok | refused | timeout | error
    error: str | None = None
    identification: str | None = None
    protocols: list[str] = field(default_factory=list)
    ssh1: SSH1Result = field(default_factory=SSH1Result)
    ssh2: SSH2Result = field(default_factory=SSH2Result)
    logins: list[LoginResult] = field(default_factory=list)  # with --user only
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------ targets
def parse_target(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(text, port_text)
    if not host or any(c.isspace() for c in host) or len(host) > 255:
        raise ValueError(f"{text!r}: not a host name or address")
    return host, port


def _port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be 1..65535")
    return int(port_text)


# ------------------------------------------------------------------ parsers
def parse_ssh1_public_key(payload: bytes) -> SSH1Offer:
    """The body of an SSH_SMSG_PUBLIC_KEY (after the type byte), read leniently: a probe
    reports odd keys (wrong announced sizes, small keys) as warnings rather than refusing."""
    try:
        r = Reader(payload, "SSH_SMSG_PUBLIC_KEY")
        sent = read_public_key(r, MAX_KEY_BITS)
    except ProtocolError as exc:
        raise ProbeError(exc.reason) from None
    host_e, host_n, server_n = sent.host_e, sent.host_n, sent.server_n
    warnings = []
    if r.remaining:
        warnings.append(f"{r.remaining} bytes after the auth mask")
    for what, e, n, announced in (
        ("server key", sent.server_e, server_n, sent.server_bits),
        ("host key", host_e, host_n, sent.host_bits),
    ):
        if n < 3 or e < 3 or e % 2 == 0 or n % 2 == 0 or e >= n:
            warnings.append(f"{what} is not a usable RSA key")
        if n.bit_length() != announced:
            warnings.append(f"{what}: announced {announced} bits, has {n.bit_length()}")
        if 0 < n.bit_length() < 1024:
            warnings.append(f"weak {n.bit_length()}-bit {what}")
    if host_n and server_n and abs(host_n.bit_length() - server_n.bit_length()) < 128:
        warnings.append("host and server keys differ by less than 128 bits (clients refuse this)")
    return SSH1Offer(
        host_key_bits=host_n.bit_length(),
        host_key_announced_bits=sent.host_bits,
        host_key_md5=ssh1_fingerprint(host_e, host_n),
        host_key_sha256=ssh1_sha256_fingerprint(host_e, host_n),
        server_key_bits=server_n.bit_length(),
        server_key_announced_bits=sent.server_bits,
        ciphers=_mask_names(sent.cipher_mask, SSH1_CIPHER_NAMES, "cipher"),
        cipher_mask=sent.cipher_mask,
        auth=_mask_names(sent.auth_mask, SSH1_AUTH_NAMES, "auth"),
        auth_mask=sent.auth_mask,
        flags=_mask_names(sent.protocol_flags, SSH1_FLAG_NAMES, "flag", numbered_by_value=True),
        flags_mask=sent.protocol_flags,
        warnings=warnings,
    )


def _mask_names(
    mask: int, names: dict[int, str], what: str, numbered_by_value: bool = False
) -> list[str]:
    """Bits set in ``mask``. Cipher and auth masks are indexed by bit number
    (1 << number); the protocol flags by value (flag 1, flag 2, ...)."""
    out = []
    for bit in range(32):
        value = 1 << bit
        if not mask & value:
            continue
        key = value if numbered_by_value else bit
        out.append(names.get(key, f"{what} {key}"))
    return out


def parse_kexinit(packet: bytes) -> KexInit:
    """An SSH2_MSG_KEXINIT body (after the type byte), every list bounded."""
    if len(packet) > MAX_KEXINIT:
        raise ProbeError(f"KEXINIT of {len(packet)} bytes (more than {MAX_KEXINIT})")
    if len(packet) < 16:
        raise ProbeError("KEXINIT truncated in the cookie")
    pos = 16
    lists: list[list[str]] = []
    for what in (
        "kex", "host key algorithms", "ciphers c2s", "ciphers s2c", "macs c2s", "macs s2c",
        "compression c2s", "compression s2c", "languages c2s", "languages s2c",
    ):  # fmt: skip
        if pos + 4 > len(packet):
            raise ProbeError(f"KEXINIT truncated before the {what} list")
        (length,) = struct.unpack_from(">I", packet, pos)
        pos += 4
        if length > MAX_NAME_LIST:
            raise ProbeError(f"KEXINIT {what} list of {length} bytes (more than {MAX_NAME_LIST})")
        if pos + length > len(packet):
            raise ProbeError(f"KEXINIT truncated in the {what} list")
        lists.append(_name_list(packet[pos : pos + length], what))
        pos += length
    if pos + 5 > len(packet):
        raise ProbeError("KEXINIT truncated after the lists")
    first_follows = packet[pos] != 0
    return KexInit(*lists, first_kex_follows=first_follows)


def _name_list(raw: bytes, what: str) -> list[str]:
    if not raw:
        return []
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProbeError(f"KEXINIT {what} list is not ASCII") from None
    names = text.split(",")
    if len(names) > MAX_NAMES:
        raise ProbeError(f"KEXINIT {what} list has {len(names)} names (more than {MAX_NAMES})")
    for name in names:
        if not name or len(name) > MAX_NAME or not _NAME.match(name):
            raise ProbeError(f"KEXINIT {what} list has a malformed name {name[:MAX_NAME]!r}")
    return names


def host_key_from_blob(algorithm: str, blob: bytes) -> HostKey:
    """What a key exchange showed: type and size when Conch can read the key; the
    fingerprint is over the blob as sent, whatever is in it."""
    fingerprint = sha256_fingerprint(blob)
    try:
        key = conch_keys.Key.fromString(blob)
        return HostKey(algorithm, key.sshType().decode("ascii"), key.size(), fingerprint, False)
    except Exception:  # any malformed blob: keep the fingerprint, say the type is unknown
        return HostKey(algorithm, "unreadable", None, fingerprint, False)


# ------------------------------------------------------------------ one connection
class _Attempt:
    """What every probe connection shares: a Deferred that fires with the attempt once
    the connection is gone, whatever happened, and the reason it ended early if it did."""

    finished: defer.Deferred
    error: str | None
    identification: str | None
    timed_out: bool
    refused: bool

    def _init_attempt(self) -> None:
        self.finished = defer.Deferred()
        self.error = None
        self.identification = None
        self.timed_out = False
        self.refused = False

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason

    def _done(self) -> None:
        if not self.finished.called:
            self.finished.callback(self)


class SSH1Attempt(Protocol, _Attempt):
    """Reads the identification; on an SSH-1 server answers SSH-1.5 and reads
    SSH_SMSG_PUBLIC_KEY; on any other, answers SSH-1.5 anyway to see it refused."""

    def __init__(self, clock: IReactorTime) -> None:
        self._init_attempt()
        self.clock = clock
        self.major: int | None = None
        self.minor: int | None = None
        self.offer: SSH1Offer | None = None
        self.disconnected: str | None = None  # the server's SSH_MSG_DISCONNECT text
        self.refusal = b""
        self._identification = IdentificationReader()
        self._decoder = PacketDecoder()
        self._packets = 0
        self._stopping = False
        self._wait = None

    def dataReceived(self, data: bytes) -> None:
        if self._stopping:
            return
        if self.major is None:
            self._read_identification(data)
        elif self.major == 1:
            self._feed(data)
        else:
            self.refusal = (self.refusal + data)[:MAX_REFUSAL]

    def _read_identification(self, data: bytes) -> None:
        try:
            found = self._identification.feed(data)
        except IdentificationError as exc:
            self._stop(exc.reason)
            return
        if found is None:
            return
        self._version(found[0])
        if self.major == 1 and not self._stopping:
            rest = self._identification.rest()
            if rest:
                self._feed(rest)

    def _version(self, line: bytes) -> None:
        self.identification = printable(line, MAX_LINE)
        version_numbers = parse_version(line)
        if version_numbers is None:
            self._stop("malformed identification line")
            return
        self.major, self.minor = version_numbers
        self.transport.write(f"SSH-1.5-{SOFTWARE}\n".encode())
        if self.major != 1:
            # Not an SSH-1 server: let it say so (OpenSSH: "Protocol major versions
            # differ."), briefly.
            self._wait = self.clock.callLater(REFUSAL_WAIT, self._stop, None)
        elif self.minor < 3:
            self._stop(f"SSH-1.{self.minor} is older than any client supports")

    def _feed(self, data: bytes) -> None:
        self._decoder.feed(data)
        try:
            while not self._stopping:
                packet = self._decoder.next_packet()
                if packet is None:
                    return
                self._packet(*packet)
        except ProtocolError as exc:
            self._stop(f"bad SSH-1 packet: {exc.reason}")

    def _packet(self, msg_type: int, payload: bytes) -> None:
        self._packets += 1
        if msg_type == m1.SSH_SMSG_PUBLIC_KEY:
            try:
                self.offer = parse_ssh1_public_key(payload)
            except ProbeError as exc:
                self._stop(f"malformed SSH_SMSG_PUBLIC_KEY: {exc}")
                return
            self._stop(None, goodbye=True)
        elif msg_type == m1.SSH_MSG_DISCONNECT:
            try:
                text = Reader(payload, "SSH_MSG_DISCONNECT").string("reason", 4096)
            except ProtocolError:
                text = b""
            self.disconnected = printable(text, 200)
            self._stop(f"server disconnected: {self.disconnected}")
        elif msg_type in (m1.SSH_MSG_IGNORE, m1.SSH_MSG_DEBUG) and self._packets < MAX_SSH1_PACKETS:
            return
        else:
            self._stop(f"expected SSH_SMSG_PUBLIC_KEY, got {m1.name_of(msg_type)}")

    def _stop(self, reason: str | None, goodbye: bool = False) -> None:
        if reason is not None:
            self._fail(reason)
        if self._stopping:
            return
        self._stopping = True
        if goodbye:  # still in clear text: a polite end the server can log as such
            text = Writer().string(b"probe finished").getvalue()
            self.transport.write(PacketEncoder().encode(m1.SSH_MSG_DISCONNECT, text))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        if self._wait is not None and self._wait.active():
            self._wait.cancel()
        if self.major is None and self.error is None and not self.timed_out:
            self._fail("connection closed before the identification line")
        self._done()

    def result(self) -> SSH1Result:
        if self.major is None:
            return SSH1Result(None, self.error)
        if self.major == 1:
            if self.offer is not None:
                return SSH1Result(True, None, self.offer)
            if self.disconnected is not None:
                return SSH1Result(False, self.error)
            if self.minor is not None and self.minor < 3:
                return SSH1Result(False, self.error)
            return SSH1Result(True, self.error or "no SSH_SMSG_PUBLIC_KEY")
        reason = f"server speaks SSH-{self.major}.{self.minor} only"
        answer = printable(self.refusal.strip(), 200)
        if answer:
            reason += f"; to SSH-1.5 it answered: {answer}"
        return SSH1Result(False, reason)


class SSH2Attempt(conch_transport.SSHClientTransport, _Attempt):
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
        except ProbeError as exc:
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


def _probe_key_exchanges() -> list[bytes]:
    """Conch's key exchanges, then the legacy group1-sha1 the SSH-2 target registers with
    Conch (least preferred): enough to fetch the host key of an old device too."""
    from twisted.conch.ssh import _kex

    import gateway.targets.ssh2  # noqa: F401  (registers diffie-hellman-group1-sha1)

    names = list(conch_transport.SSHClientTransport.supportedKeyExchanges)
    for legacy in (b"diffie-hellman-group1-sha1",):
        if legacy not in names and legacy in _kex.getSupportedKeyExchanges():
            names.append(legacy)
    return names


# ------------------------------------------------------------------ running attempts
Connect = Callable[[Any, str, int, Protocol, float], defer.Deferred]


def tcp_connect(
    reactor: Any, host: str, port: int, protocol: Protocol, timeout: float
) -> defer.Deferred:
    endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=max(timeout, 0.1))
    return endpoints.connectProtocol(endpoint, protocol)


def run_attempt(
    reactor: IReactorTime, connect: Connect, host: str, port: int, attempt: Any, deadline: float
) -> defer.Deferred:
    """Connect ``attempt`` and fire with it once it is over or ``deadline`` (reactor
    seconds) passed; connection failures are recorded on it, never raised."""
    timeout = max(deadline - reactor.seconds(), 0.0)
    result: defer.Deferred = defer.Deferred()
    connecting = connect(reactor, host, port, attempt, timeout)

    def expire() -> None:
        attempt.timed_out = True
        attempt._fail(f"no answer within {timeout:g} s")
        if attempt.transport is not None and getattr(attempt, "connected", 0):
            attempt.transport.abortConnection()
        elif not connecting.called:
            connecting.cancel()
        else:
            attempt._done()

    timer = reactor.callLater(timeout, expire)

    def connect_failed(failure: Failure) -> Any:
        if failure.check(error.ConnectionRefusedError):
            attempt.refused = True
            attempt._fail("connection refused")
        elif failure.check(defer.CancelledError, error.TimeoutError):
            attempt.timed_out = True
            attempt._fail(f"no answer within {timeout:g} s")
        elif failure.check(error.DNSLookupError):
            attempt._fail("host name not found")
        else:
            attempt._fail(f"cannot connect: {failure.getErrorMessage()}")
        attempt._done()
        return attempt.finished

    connecting.addCallbacks(lambda _: attempt.finished, connect_failed)

    def settled(value: Any) -> None:
        if timer.active():
            timer.cancel()
        result.callback(attempt)

    connecting.addBoth(settled)
    return result


def _key_types(kexinit: KexInit) -> list[tuple[str, str]]:
    """(key type, first algorithm the server offers for it that Conch can check)."""
    supported = {a.decode() for a in conch_transport.SSHClientTransport.supportedPublicKeys}
    seen: dict[str, str] = {}
    for algorithm in kexinit.host_key_algorithms:
        if algorithm not in supported:
            continue
        seen.setdefault(KEY_TYPE_OF_ALGORITHM.get(algorithm, algorithm), algorithm)
    return list(seen.items())


@defer.inlineCallbacks
def probe_host(
    reactor: Any,
    target: str,
    timeout: float = DEFAULT_TIMEOUT,
    connect: Connect = tcp_connect,
    credentials: Credentials | None = None,
) -> Any:
    """Probe one ``HOST[:PORT]``; fires with a :class:`HostReport` (never fails). With
    ``credentials``, then log in over each protocol found (each within ``timeout``)."""
    started = reactor.seconds()
    try:
        host, port = parse_target(target)
    except ValueError as exc:
        return HostReport(target, target, 0, "error", str(exc))
    report = HostReport(target, host, port)
    deadline = started + timeout
    ssh1 = SSH1Attempt(reactor)
    ssh2 = SSH2Attempt()
    yield defer.gatherResults(
        [
            run_attempt(reactor, connect, host, port, ssh1, deadline),
            run_attempt(reactor, connect, host, port, ssh2, deadline),
        ]
    )
    report.ssh1 = ssh1.result()
    report.ssh2 = _ssh2_result(ssh2)
    kexinit = ssh2.kexinit
    if kexinit is not None:
        have = {k.type for k in report.ssh2.host_keys}
        extra = [
            (kind, SSH2Attempt([algorithm]))
            for kind, algorithm in _key_types(kexinit)
            if kind not in have
        ]
        yield defer.gatherResults(
            [run_attempt(reactor, connect, host, port, a, deadline) for _, a in extra]
        )
        for kind, attempt in extra:
            if attempt.host_key is not None:
                report.ssh2.host_keys.append(attempt.host_key)
            if attempt.host_key is None or not attempt.host_key.verified:
                report.ssh2.key_errors.append(f"{kind}: {attempt.error or 'no host key'}")
        order = {kind: i for i, (kind, _) in enumerate(_key_types(kexinit))}
        report.ssh2.host_keys.sort(key=lambda k: order.get(k.type, len(order)))
    report.identification = ssh1.identification or ssh2.identification
    report.protocols = [
        name for name, r in (("ssh1", report.ssh1), ("ssh2", report.ssh2)) if r.available
    ]
    if report.identification is not None:
        report.status = "ok"
    elif ssh1.refused and ssh2.refused:
        report.status, report.error = "refused", "connection refused"
    elif ssh1.timed_out or ssh2.timed_out:
        report.status, report.error = "timeout", f"no identification line within {timeout:g} s"
    else:
        report.status, report.error = "error", ssh1.error or ssh2.error
    if credentials is not None and report.protocols:
        report.logins = yield defer.gatherResults(
            [login(reactor, report, name, credentials, timeout) for name in report.protocols]
        )
    report.duration = round(reactor.seconds() - started, 3)
    return report


def _ssh2_result(attempt: SSH2Attempt) -> SSH2Result:
    if attempt.kexinit is None:  # no SSH-2 server seen (or it never sent its KEXINIT)
        return SSH2Result(False if attempt.ssh1_only else None, attempt.error)
    result = SSH2Result(True, None, attempt.kexinit)
    if attempt.host_key is not None:
        result.host_keys.append(attempt.host_key)
    if attempt.host_key is None or not attempt.host_key.verified:
        result.key_errors.append(attempt.error or "no host key")
    return result


def probe_hosts(
    reactor: Any,
    targets: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int = DEFAULT_CONCURRENCY,
    connect: Connect = tcp_connect,
    progress: Callable[[int, int], None] | None = None,
    credentials: Credentials | None = None,
) -> defer.Deferred:
    """Probe every target, at most ``concurrency`` at a time; fires with the reports
    in the order of ``targets``."""
    semaphore = defer.DeferredSemaphore(max(1, concurrency))
    done = [0]
    if progress is not None:
        progress(0, len(targets))

    def one(target: str) -> defer.Deferred:
        d = semaphore.run(probe_host, reactor, target, timeout, connect, credentials)

        def tick(report: HostReport) -> HostReport:
            done[0] += 1
            if progress is not None:
                progress(done[0], len(targets))
            return report

        return d.addCallback(tick)

    return defer.gatherResults([one(t) for t in targets])


# ------------------------------------------------------------------ logging in
class _LoginSink:
    """The upstream session's sink: output is dropped unread (session data is never kept),
    the end fires ``ended`` with ("exit", ExitInfo) or ("failed", message)."""

    link = None  # not serving a client leg: the flow record has no link

    def __init__(self) -> None:
        self.ended: defer.Deferred = defer.Deferred()

    def stdout(self, data: bytes) -> None:
        pass

    def stderr(self, data: bytes) -> None:
        pass

    def eof(self) -> None:
        pass

    def exited(self, info: Any) -> None:
        if not self.ended.called:
            self.ended.callback(("exit", info))

    def failed(self, message: str) -> None:
        if not self.ended.called:
            self.ended.callback(("failed", message))

    def pause_input(self) -> None:
        pass

    def resume_input(self) -> None:
        pass


def _pin(report: HostReport, protocol: str) -> str | None:
    """The host key policy for the login: exactly the key(s) the probe just saw."""
    if protocol == "ssh1":
        offer = report.ssh1.offer
        return offer.host_key_sha256 if offer is not None else None
    prints = [k.fingerprint for k in report.ssh2.host_keys if k.verified]
    return ",".join(prints) or None


def _make_target(reactor: Any, protocol: str, report: HostReport, creds: Credentials) -> Any:
    from gateway.known_hosts import KnownHosts
    from gateway.targets import TargetConfig

    if protocol == "ssh1":
        from gateway.targets.ssh1 import SSH1Target as target_class
    else:
        from gateway.targets.ssh2 import SSH2Target as target_class
    pin = _pin(report, protocol)
    if pin is None:
        raise ValueError("the probe saw no host key to pin")
    config = TargetConfig(
        name=f"probe-{protocol}",
        protocol=protocol,
        host=report.host,
        port=report.port,
        username=creds.user,
        password=creds.password,
        key=creds.key,
        host_key=pin,  # a fingerprint policy: the known_hosts file is not consulted
    )
    known_hosts = KnownHosts(creds.state_dir / "known_hosts")
    try:
        return target_class(reactor, config, known_hosts)
    except ValueError:
        # One --key serves both protocols; an OpenSSH key is no SSH-1 key (and the other
        # way round): fall back to the password alone when there is one.
        if creds.key is None or creds.password is None:
            raise
        return target_class(reactor, replace(config, key=None), known_hosts)


def login(
    reactor: Any, report: HostReport, protocol: str, creds: Credentials, timeout: float
) -> defer.Deferred:
    """Log in over ``protocol`` with the upstream target's client, run ``creds.command``,
    and record the leg's flow (into ``creds.flows``). Fires with a :class:`LoginResult`."""
    from protocols.session import SessionRequest

    result = LoginResult(protocol)
    try:
        target = _make_target(reactor, protocol, report, creds)
    except Exception as exc:  # a bad key file, an unknown cipher: the message says which
        result.error = str(exc) or type(exc).__name__
        return defer.succeed(result)
    written: defer.Deferred = defer.Deferred()
    target.flows = creds.flows
    original_done = getattr(target, "flow_done", None)

    def flow_done(flow: Any) -> None:
        result.flow_id = flow.id
        if original_done is not None:
            original_done(flow)
        if not written.called:
            written.callback(None)

    target.flow_done = flow_done
    sink = _LoginSink()
    request = SessionRequest(command=creds.command.encode("utf-8"))
    opening = defer.maybeDeferred(target.connector(creds.user, None), request, sink)
    session: list[Any] = []

    def expire() -> None:
        result.error = result.error or f"no exit status within {timeout:g} s"
        if not opening.called:
            opening.cancel()
        elif session:
            session[0].close()
        fire(sink.ended)
        fire(written)

    timer = reactor.callLater(timeout, expire)

    def opened(upstream: Any) -> defer.Deferred:
        session.append(upstream)
        return sink.ended

    grace: list[Any] = []

    def wait_for_record() -> None:
        # The record is written when the connection is gone, a moment after the end.
        if not written.called and not grace:
            grace.append(reactor.callLater(RECORD_WAIT, fire, written))

    def ended(outcome: Any) -> None:
        if outcome is not None and outcome[0] == "exit":
            result.ok = True
            result.exit_status = outcome[1].as_status()
        elif outcome is not None:
            result.error = str(outcome[1])
        if session:
            session[0].close()  # after the exit status: a polite end, if not already gone
        wait_for_record()

    def failed(failure: Failure) -> None:
        if result.error is None:
            result.error = failure.getErrorMessage() or failure.type.__name__
        wait_for_record()

    def settle(_: Any) -> LoginResult:
        for call in (timer, *grace):
            if call.active():
                call.cancel()
        return result

    opening.addCallbacks(opened, failed)
    opening.addCallback(ended)
    opening.addErrback(failed)
    opening.addBoth(lambda _: written)
    return opening.addBoth(settle)


def fire(d: defer.Deferred) -> None:
    if not d.called:
        d.callback(None)


# ------------------------------------------------------------------ output
class ProgressBar:
    """``probe [#####.....] 5/10 3s`` redrawn in place on a terminal: at each finished
    host and once a second in between, so the elapsed time moves while hosts say nothing
    (the wait on a silent host is the longest one). ``clock`` is the reactor."""

    TICK = 1.0

    def __init__(self, stream: TextIO, clock: IReactorTime, width: int = 30) -> None:
        self.stream = stream
        self.clock = clock
        self.width = width
        self.started = clock.seconds()
        self.done = 0
        self.total = 0
        self._ticker = task.LoopingCall(self._draw)
        self._ticker.clock = clock

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if done >= total:
            self.stop()
        elif not self._ticker.running:
            self._ticker.start(self.TICK, now=False)
        self._draw()

    def stop(self) -> None:
        """No more redraws (the probe is over, or failed)."""
        if self._ticker.running:
            self._ticker.stop()

    def _draw(self) -> None:
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = self.clock.seconds() - self.started
        self.stream.write(f"\rprobe [{bar}] {self.done}/{self.total} {elapsed:.0f}s")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def format_json(reports: Sequence[HostReport]) -> str:
    return json.dumps([r.to_dict() for r in reports], indent=2) + "\n"


CSV_COLUMNS = (
    "target", "host", "port", "status", "error", "identification", "protocols",
    "ssh1_available", "ssh1_reason", "ssh1_host_key_bits", "ssh1_server_key_bits",
    "ssh1_host_key_md5", "ssh1_host_key_sha256", "ssh1_ciphers", "ssh1_auth", "ssh1_flags",
    "ssh2_available", "ssh2_reason", "ssh2_kex", "ssh2_host_key_algorithms",
    "ssh2_ciphers_c2s", "ssh2_ciphers_s2c", "ssh2_macs_c2s", "ssh2_macs_s2c",
    "ssh2_compression_c2s", "ssh2_compression_s2c", "ssh2_host_keys", "ssh1_login", "ssh1_flow", "ssh2_login", "ssh2_flow", "duration",
)  # fmt: skip


def _csv_row(r: HostReport) -> dict[str, Any]:
    row: dict[str, Any] = {
        "target": r.target, "host": r.host, "port": r.port, "status": r.status,
        "error": r.error or "", "identification": r.identification or "",
        "protocols": " ".join(r.protocols), "duration": r.duration,
        "ssh1_available": _tri(r.ssh1.available), "ssh1_reason": r.ssh1.reason or "",
        "ssh2_available": _tri(r.ssh2.available), "ssh2_reason": r.ssh2.reason or "",
    }  # fmt: skip
    offer = r.ssh1.offer
    if offer is not None:
        row.update(
            ssh1_host_key_bits=offer.host_key_bits,
            ssh1_server_key_bits=offer.server_key_bits,
            ssh1_host_key_md5=offer.host_key_md5,
            ssh1_host_key_sha256=offer.host_key_sha256,
            ssh1_ciphers=" ".join(offer.ciphers),
            ssh1_auth=" ".join(offer.auth),
            ssh1_flags=" ".join(offer.flags),
        )
    k = r.ssh2.kexinit
    if k is not None:
        for name in (
            "kex", "host_key_algorithms", "ciphers_c2s", "ciphers_s2c", "macs_c2s",
            "macs_s2c", "compression_c2s", "compression_s2c",
        ):  # fmt: skip
            row[f"ssh2_{name}"] = " ".join(getattr(k, name))
    for x in r.logins:
        row[f"{x.protocol}_login"] = f"exit {x.exit_status}" if x.ok else f"failed: {x.error}"
        row[f"{x.protocol}_flow"] = x.flow_id or ""
    row["ssh2_host_keys"] = "; ".join(
        f"{h.type} {h.bits} {h.fingerprint}" for h in r.ssh2.host_keys
    )
    return row


def _tri(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


def format_csv(reports: Sequence[HostReport]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    for r in reports:
        writer.writerow(_csv_row(r))
    return out.getvalue()


def format_text(reports: Sequence[HostReport]) -> str:
    lines: list[str] = []
    for r in reports:
        head = f"{r.host}:{r.port}"
        if r.status != "ok":
            lines.append(f"{head}  {r.status}: {r.error}")
            lines.append("")
            continue
        lines.append(f"{head}  {r.identification}")
        lines.append(f"  protocols: {' '.join(r.protocols) or 'none'}  ({r.duration:.2f}s)")
        offer = r.ssh1.offer
        if offer is not None:
            lines.append(
                f"  SSH-1 host key   {offer.host_key_bits} bits  {offer.host_key_md5}  "
                f"{offer.host_key_sha256}"
            )
            lines.append(f"  SSH-1 server key {offer.server_key_bits} bits")
            lines.append(f"  SSH-1 ciphers    {' '.join(offer.ciphers) or '-'}")
            lines.append(f"  SSH-1 auth       {' '.join(offer.auth) or '-'}")
            lines.append(f"  SSH-1 flags      {' '.join(offer.flags) or '-'}")
            lines.extend(f"  SSH-1 warning    {w}" for w in offer.warnings)
        else:
            lines.append(f"  SSH-1 unavailable: {r.ssh1.reason}")
        k = r.ssh2.kexinit
        if k is not None:
            for label, values in (
                ("kex", k.kex), ("host key algs", k.host_key_algorithms),
                ("ciphers c2s", k.ciphers_c2s), ("ciphers s2c", k.ciphers_s2c),
                ("macs c2s", k.macs_c2s), ("macs s2c", k.macs_s2c),
                ("compress c2s", k.compression_c2s), ("compress s2c", k.compression_s2c),
            ):  # fmt: skip
                lines.append(f"  SSH-2 {label:<14} {','.join(values) or '-'}")
            for h in r.ssh2.host_keys:
                check = "" if h.verified else "  (signature not checked)"
                lines.append(f"  SSH-2 host key   {h.type} {h.bits} {h.fingerprint}{check}")
            lines.extend(f"  SSH-2 key error  {e}" for e in r.ssh2.key_errors)
        else:
            lines.append(f"  SSH-2 unavailable: {r.ssh2.reason}")
        for login_result in r.logins:
            label = "SSH-1" if login_result.protocol == "ssh1" else "SSH-2"
            if login_result.ok:
                outcome = f"logged in, exit status {login_result.exit_status}"
            else:
                outcome = f"failed: {login_result.error}"
            flow = f"  flow {login_result.flow_id}" if login_result.flow_id else ""
            lines.append(f"  {label} login      {outcome}{flow}")
        lines.append("")
    return "\n".join(lines)


FORMATS: dict[str, Callable[[Sequence[HostReport]], str]] = {
    "text": format_text,
    "json": format_json,
    "csv": format_csv,
}


# ------------------------------------------------------------------ command line
MAX_TARGETS_FILE = 4 * 1024 * 1024


def setup_cli(p: Any) -> None:
    p.description = (
        "Connect to each HOST[:PORT] once as an SSH-1 client and as an SSH-2 client (plus one "
        "key exchange per SSH-2 host key type) and report what each protocol offers, without "
        "logging in unless --user is given. Exit status 0 when every host answered (and every "
        "login ran its command), 1 otherwise, 2 for bad arguments."
    )
    p.add_argument("targets", nargs="*", metavar="HOST[:PORT]", help="hosts to probe (port 22)")
    p.add_argument("--hosts-file", metavar="FILE", help="more targets, one per line ('#' comments)")
    p.add_argument(
        "--timeout", type=_positive, default=DEFAULT_TIMEOUT,
        help=f"seconds per host for the probe, all connections included, and again for the "
        f"logins with --user (default {DEFAULT_TIMEOUT:g})",
    )  # fmt: skip
    p.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY,
        help=f"hosts probed at once (default {DEFAULT_CONCURRENCY})",
    )  # fmt: skip
    p.add_argument("--format", choices=sorted(FORMATS), default="text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    group = p.add_argument_group(
        "logging in",
        "With --user and --password or --key, also log in over each protocol found, run a "
        "command and record both connections as flows (sshgateway flows compare ID1 ID2). "
        "The host keys the probe saw are pinned for the login.",
    )
    group.add_argument("--user", help="login name")
    group.add_argument(
        "--password", help="the password; '-' reads one line from stdin (keeps it out of ps)"
    )
    group.add_argument("--key", help="a private key file (OpenSSH for SSH-2, SSH-1 RSA for SSH-1)")
    group.add_argument(
        "--state-dir", default="sshgateway-state",
        help="where the flow records go (<dir>/flows/; default ./sshgateway-state)",
    )  # fmt: skip
    group.add_argument(
        "--command",
        dest="login_command",
        metavar="COMMAND",
        default="true",
        help="the command run (default: true)",
    )


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError(text)
    return value


def _read_targets(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        text = f.read(MAX_TARGETS_FILE + 1)
    if len(text) > MAX_TARGETS_FILE:
        raise ValueError(f"{path}: larger than {MAX_TARGETS_FILE} bytes")
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def _credentials(args: Any, io: Any) -> Credentials | None:
    if args.user is None:
        if args.password is not None or args.key is not None:
            raise ValueError("--password and --key need --user")
        return None
    if args.password is None and args.key is None:
        raise ValueError("--user needs --password or --key")
    password = args.password
    if password == "-":
        line = io.stdin.readline(4096)
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    from gateway.flows import FlowWriter, flows_dir

    state_dir = Path(args.state_dir)
    return Credentials(
        user=args.user,
        password=password,
        key=Path(args.key) if args.key else None,
        state_dir=state_dir,
        command=args.login_command,
        flows=FlowWriter(flows_dir(state_dir)),
    )


def run_cli(args: Any, io: Any) -> int:
    targets = list(args.targets)
    try:
        if args.hosts_file:
            targets += _read_targets(args.hosts_file)
        for target in targets:
            parse_target(target)
    except (OSError, ValueError) as exc:
        print(f"sshgateway probe: {exc}", file=io.stderr)
        return 2
    if not targets:
        print("sshgateway probe: no HOST[:PORT] given", file=io.stderr)
        return 2
    if args.concurrency < 1:
        print("sshgateway probe: --concurrency must be at least 1", file=io.stderr)
        return 2
    try:
        credentials = _credentials(args, io)
    except ValueError as exc:
        print(f"sshgateway probe: {exc}", file=io.stderr)
        return 2
    from twisted.internet import reactor

    progress = None
    if not args.no_progress and io.stderr.isatty():
        progress = ProgressBar(io.stderr, reactor)
    outcome: list[Any] = []

    def start() -> None:
        d = probe_hosts(
            reactor, targets, args.timeout, args.concurrency,
            progress=progress, credentials=credentials,
        )  # fmt: skip
        d.addBoth(outcome.append)
        if progress is not None:
            d.addBoth(lambda _: progress.stop())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome or isinstance(outcome[0], Failure):
        detail = outcome[0].getErrorMessage() if outcome else "interrupted"
        print(f"sshgateway probe: {detail}", file=io.stderr)
        return 1
    reports: list[HostReport] = outcome[0]
    io.stdout.write(FORMATS[args.format](reports))
    if args.format == "text" and credentials is not None:
        for r in reports:
            ids = [x.flow_id for x in r.logins if x.flow_id]
            if len(ids) == 2:
                print(
                    f"{r.host}:{r.port}: sshgateway flows compare --state-dir "
                    f"{credentials.state_dir} {ids[0]} {ids[1]}",
                    file=io.stdout,
                )
    answered = all(r.status == "ok" for r in reports)
    return 0 if answered and all(x.ok for r in reports for x in r.logins) else 1
