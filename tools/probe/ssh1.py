"""The SSH-1 half of a probe: one connection that reads the server's identification and,
on an SSH-1 server, its SSH_SMSG_PUBLIC_KEY (then a clear-text disconnect), or, on any
other, sees our SSH-1.5 line refused; and what that message offers, read leniently: odd
keys are warnings in the report, not errors.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from protocols.ssh1 import messages as m1
from protocols.ssh1.client_connection import read_public_key
from protocols.ssh1.connection import printable
from protocols.ssh1.identification import (
    MAX_LINE,
    IdentificationError,
    IdentificationReader,
    parse_version,
)
from protocols.ssh1.keys import ssh1_fingerprint
from protocols.ssh1.packet import PacketDecoder, PacketEncoder
from protocols.ssh1.wire import ProtocolError, Reader, Writer
from tools.probe.attempt import SOFTWARE, Attempt
from tools.probe.keys import ssh1_sha256_fingerprint
from tools.probe.report import SSH1Offer, SSH1Result

MAX_REFUSAL = 512  # what an SSH-2-only server answers to our SSH-1 line, kept for the report
REFUSAL_WAIT = 2.0  # seconds we wait for that answer (within the host's deadline)
MAX_SSH1_PACKETS = 8  # IGNORE/DEBUG packets tolerated before SSH_SMSG_PUBLIC_KEY
MAX_KEY_BITS = 16384  # larger SSH-1 keys are refused before the number is built


class ProbeError(ValueError):
    """An SSH_SMSG_PUBLIC_KEY that cannot be read; ``str()`` says what is wrong."""


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
        ciphers=m1.mask_names(sent.cipher_mask, m1.CIPHER_NAMES, "cipher"),
        cipher_mask=sent.cipher_mask,
        auth=m1.mask_names(sent.auth_mask, m1.AUTH_NAMES, "auth"),
        auth_mask=sent.auth_mask,
        flags=m1.mask_names(
            sent.protocol_flags, m1.PROTOFLAG_NAMES, "flag", numbered_by_value=True
        ),
        flags_mask=sent.protocol_flags,
        warnings=warnings,
    )


class SSH1Attempt(Protocol, Attempt):
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
