"""The client role of the SSH-1 state machine: checks the server's keys, sends the
doubly encrypted session key, then one request at a time (user, password / RSA,
compression, pty) and the interactive phase.

The core decides what the protocol decides (key sizes acceptable, keys it can encrypt
the session key with, cipher from our preference list, session key, challenge response,
EXIT_CONFIRMATION); the caller decides
policy: whether the host key is trusted (it must answer :class:`PublicKeyReceived` with
:meth:`send_session_key` before anything else is decoded), which credentials to try and
what session to open. Each request waits for its SMSG_SUCCESS / SMSG_FAILURE, reported
as :class:`RequestAnswered`; a reply nobody asked for is a protocol error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric import rsa

from protocols.session_values import PtyRequest, WindowSize
from protocols.ssh1 import ciphers, keys, ttymodes
from protocols.ssh1 import messages as m
from protocols.ssh1.connection import Connection
from protocols.ssh1.events import (
    Event,
    ExitStatus,
    ForwardRefused,
    PublicKeyReceived,
    RequestAnswered,
    RSAChallengeReceived,
    StderrData,
    StdoutData,
)
from protocols.ssh1.packet import MAX_LENGTH
from protocols.ssh1.wire import ProtocolError, Reader, Writer

COOKIE_SIZE = 8
DEFAULT_CIPHERS = ("3des", "blowfish")
# Key sizes. The core accepts what PuTTY accepts (ssh/login1.c): any pair of keys the
# session key can be sent under, i.e. the smaller key holds the 32-byte session key and
# the larger one the smaller's block, each with at least one byte of PKCS#1 padding
# (legacy devices really have 384-bit server keys and 512/768-bit host keys). How small
# is too small for a given device is the caller's policy (a target's min_key_bits).
# Under the WEAK thresholds we connect and warn; above MAX is absurd for an SSH-1 device
# and only costs us CPU.
MAX_KEY_BITS = 8192
# The callers' default floor: old firmware has 384-bit server keys, and under 256 bits no
# pair of keys can carry the session key anyway.
DEFAULT_MIN_KEY_BITS = 256
WEAK_HOST_KEY_BITS = 2048
WEAK_SERVER_KEY_BITS = 1024
STANDARD_PADDING = keys.PKCS1_OVERHEAD - 3  # padding bytes RFC 8017 asks for
STDIN_CHUNK = 16384  # stdin bytes per packet: small enough for any device's buffer
MAX_TERM = 256


class PublicKeyFields(NamedTuple):
    """SSH_SMSG_PUBLIC_KEY's fields as sent, before anyone judged them."""

    cookie: bytes
    server_bits: int  # as announced
    server_e: int
    server_n: int
    host_bits: int  # as announced
    host_e: int
    host_n: int
    protocol_flags: int
    cipher_mask: int
    auth_mask: int


def read_public_key(r: Reader, max_key_bits: int) -> PublicKeyFields:
    """Read the body of an SSH_SMSG_PUBLIC_KEY (after the type byte); raises
    :class:`ProtocolError` on a short message or a number over ``max_key_bits``."""
    return PublicKeyFields(
        cookie=r.raw(COOKIE_SIZE, "cookie"),
        server_bits=r.uint32("server key bits"),
        server_e=r.mpint("server key exponent", max_key_bits),
        server_n=r.mpint("server key modulus", max_key_bits),
        host_bits=r.uint32("host key bits"),
        host_e=r.mpint("host key exponent", max_key_bits),
        host_n=r.mpint("host key modulus", max_key_bits),
        protocol_flags=r.uint32("protocol flags"),
        cipher_mask=r.uint32("cipher mask"),
        auth_mask=r.uint32("auth mask"),
    )


class ClientConnection(Connection):
    role = m.Role.CLIENT
    bulk_data = {m.SSH_SMSG_STDOUT_DATA: StdoutData, m.SSH_SMSG_STDERR_DATA: StderrData}

    def __init__(
        self,
        cipher_preference: Sequence[str] = DEFAULT_CIPHERS,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(random)
        for name in cipher_preference:
            if name not in ciphers.BY_NAME:
                raise ValueError(f"unknown SSH-1 cipher {name!r}")
        if not cipher_preference:
            raise ValueError("no SSH-1 cipher to offer")
        self.cipher_preference = tuple(cipher_preference)
        self.cipher = ""
        self.session_id = b""
        self.cookie = b""
        self.public_key: PublicKeyReceived | None = None
        self._session_key = b""  # chosen and encrypted when SMSG_PUBLIC_KEY arrives
        self._encrypted_session_key = 0
        self.compression_level = 0
        self.awaiting: m.Awaiting | None = None  # our request the server has yet to answer
        self._pending_level = 0
        self._handlers = {
            m.SSH_SMSG_PUBLIC_KEY: self._on_public_key,
            m.SSH_SMSG_SUCCESS: lambda r: self._on_reply(True),
            m.SSH_SMSG_FAILURE: lambda r: self._on_reply(False),
            m.SSH_SMSG_AUTH_RSA_CHALLENGE: self._on_challenge,
            m.SSH_SMSG_STDOUT_DATA: lambda r: StdoutData(r.string("data", MAX_LENGTH)),
            m.SSH_SMSG_STDERR_DATA: lambda r: StderrData(r.string("data", MAX_LENGTH)),
            m.SSH_SMSG_EXITSTATUS: self._on_exit_status,
            m.SSH_SMSG_X11_OPEN: self._refuse_open("x11"),
            m.SSH_SMSG_AGENT_OPEN: self._refuse_open("agent"),
            m.SSH_MSG_PORT_OPEN: self._refuse_open("port"),
        }
        for number in (
            m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION,
            m.SSH_MSG_CHANNEL_OPEN_FAILURE,
            m.SSH_MSG_CHANNEL_DATA,
            m.SSH_MSG_CHANNEL_CLOSE,
            m.SSH_MSG_CHANNEL_CLOSE_CONFIRMATION,
        ):
            self._handlers[number] = self._no_channels(m.name_of(number))

    # ------------------------------------------------------------ key exchange
    def _on_public_key(self, r: Reader) -> Event:
        sent = read_public_key(r, MAX_KEY_BITS)
        server_n, host_n = sent.server_n, sent.host_n
        warnings: list[str] = []
        for what, e, n, announced, weak in (
            ("server key", sent.server_e, server_n, sent.server_bits, WEAK_SERVER_KEY_BITS),
            ("host key", sent.host_e, host_n, sent.host_bits, WEAK_HOST_KEY_BITS),
        ):
            _check_rsa(what, e, n)
            bits = n.bit_length()
            if bits != announced:
                warnings.append(f"server says its {what} has {announced} bits; it has {bits}")
            if bits < weak:
                warnings.append(f"weak {bits}-bit {what}")
        warnings += _check_session_key_room(server_n, host_n)
        offered = tuple(ciphers.names_in_mask(sent.cipher_mask))
        chosen = next((name for name in self.cipher_preference if name in offered), None)
        if chosen is None:
            raise ProtocolError(
                f"no common cipher: server offers {', '.join(offered) or 'none we know'}, "
                f"we allow {', '.join(self.cipher_preference)}"
            )
        session_id = keys.session_id(host_n, server_n, sent.cookie)
        # Encrypt the session key now, before the caller is asked to trust the host key:
        # a key that passes the checks above can still be one OpenSSL refuses to encrypt
        # with (a 4096-bit modulus with a public exponent over 64 bits), and such a key
        # must fail here, as a protocol error, not be trusted (or pinned) first.
        session_key = self._random(keys.SESSION_KEY_SIZE)
        try:
            self._encrypted_session_key = keys.encrypt_session_key(
                session_key, session_id, (sent.server_e, server_n), (sent.host_e, host_n),
                self._random,
            )
        except ValueError:
            raise ProtocolError(
                "the server's host key or server key cannot be used for RSA encryption"
            ) from None
        self._session_key = session_key
        self.cookie = sent.cookie
        self.cipher = chosen
        self.session_id = session_id
        self.public_key = PublicKeyReceived(
            sent.host_e, host_n, sent.server_e, server_n, sent.protocol_flags, offered,
            sent.auth_mask, chosen, tuple(warnings),
        )  # fmt: skip
        self.pending = m.Awaiting.HOST_KEY
        return self.public_key

    def send_session_key(self) -> None:
        """The caller trusts the host key: send the session key and switch the cipher."""
        if self.pending is not m.Awaiting.HOST_KEY or self.public_key is None:
            raise RuntimeError("no SMSG_PUBLIC_KEY is waiting for our session key")
        session_key, value = self._session_key, self._encrypted_session_key
        self._session_key = b""
        spec = ciphers.BY_NAME[self.cipher]
        self._send(
            m.SSH_CMSG_SESSION_KEY,
            Writer().byte(spec.number).raw(self.cookie).mpint(value).uint32(0).getvalue(),
        )
        self._encoder.set_cipher(spec, session_key)
        self._decoder.set_cipher(spec, session_key)
        self.pending = None
        self.awaiting = m.Awaiting.SESSION_KEY

    # ------------------------------------------------------------ requests
    def _request(self, request: m.Awaiting, msg_type: int, payload: bytes = b"") -> None:
        self._require_open()
        if self.phase is not m.Phase.REPLY:
            raise RuntimeError(f"cannot send a request in phase {self.phase.value}")
        if self.awaiting is not None:
            raise RuntimeError(f"still waiting for the answer to {self.awaiting.value}")
        self._send(msg_type, payload)
        self.awaiting = request

    def send_user(self, name: bytes) -> None:
        self._request(m.Awaiting.USER, m.SSH_CMSG_USER, Writer().string(name).getvalue())

    def send_password(self, password: bytes) -> None:
        self._request(
            m.Awaiting.PASSWORD, m.SSH_CMSG_AUTH_PASSWORD, Writer().string(password).getvalue()
        )

    def send_rsa(self, modulus: int) -> None:
        self._request(m.Awaiting.RSA, m.SSH_CMSG_AUTH_RSA, Writer().mpint(modulus).getvalue())

    def answer_rsa_challenge(self, key: rsa.RSAPrivateKey, value: int) -> None:
        """Decrypt the challenge with our key and send MD5(challenge || session id)."""
        if self.awaiting is not m.Awaiting.RSA_CHALLENGE:
            raise RuntimeError("no RSA challenge to answer")
        try:
            challenge = keys.decrypt_challenge(key, value)
        except ValueError:
            self.send_disconnect("RSA challenge could not be decrypted with our key")
            return
        if len(challenge) != keys.CHALLENGE_SIZE:
            self.send_disconnect("RSA challenge is not 32 bytes")
            return
        self.awaiting = None
        self._request(
            m.Awaiting.RSA_RESPONSE,
            m.SSH_CMSG_AUTH_RSA_RESPONSE,
            keys.challenge_response(challenge, self.session_id),
        )

    def request_compression(self, level: int) -> None:
        if not 1 <= level <= 9:
            raise ValueError("compression level is 1..9")
        self._pending_level = level
        self._request(
            m.Awaiting.COMPRESSION, m.SSH_CMSG_REQUEST_COMPRESSION, Writer().uint32(level).getvalue()
        )

    def request_pty(self, pty: PtyRequest) -> None:
        size = pty.size
        payload = (
            Writer()
            .string(pty.term.encode("ascii", "replace")[:MAX_TERM])
            .uint32(size.rows)
            .uint32(size.cols)
            .uint32(size.xpixel)
            .uint32(size.ypixel)
            .raw(ttymodes.encode(pty.modes))
            .getvalue()
        )
        self._request(m.Awaiting.PTY, m.SSH_CMSG_REQUEST_PTY, payload)

    def exec_shell(self) -> None:
        self._start(m.SSH_CMSG_EXEC_SHELL, b"")

    def exec_command(self, command: bytes) -> None:
        self._start(m.SSH_CMSG_EXEC_CMD, Writer().string(command).getvalue())

    def _start(self, msg_type: int, payload: bytes) -> None:
        self._require_open()
        if self.phase is not m.Phase.REPLY or self.awaiting is not None:
            raise RuntimeError("the session starts after login, with no request outstanding")
        self._send(msg_type, payload)

    def _on_reply(self, ok: bool) -> Event:
        request = self.awaiting
        if request is None or request is m.Awaiting.RSA_CHALLENGE:
            raise ProtocolError(f"unexpected SMSG_{'SUCCESS' if ok else 'FAILURE'}")
        if request is m.Awaiting.SESSION_KEY and not ok:
            raise ProtocolError("server refused our session key")
        self.awaiting = None
        if request is m.Awaiting.COMPRESSION and ok:
            # The SUCCESS itself came uncompressed; everything after it, both ways, is not.
            self._encoder.start_compression(self._pending_level)
            self._decoder.start_decompression(MAX_LENGTH)
            self.compression_level = self._pending_level
        return RequestAnswered(request.value, ok)

    def _on_challenge(self, r: Reader) -> Event:
        if self.awaiting is not m.Awaiting.RSA:
            raise ProtocolError("RSA challenge without an RSA authentication request")
        value = r.mpint("challenge", MAX_KEY_BITS)
        self.awaiting = m.Awaiting.RSA_CHALLENGE
        return RSAChallengeReceived(value)

    # ------------------------------------------------------------ interactive
    def send_stdin(self, data: bytes) -> None:
        self._require_interactive()
        for start in range(0, len(data), STDIN_CHUNK):
            self._send(
                m.SSH_CMSG_STDIN_DATA, Writer().string(data[start : start + STDIN_CHUNK]).getvalue()
            )

    def send_eof(self) -> None:
        self._require_interactive()
        self._send(m.SSH_CMSG_EOF)

    def send_window_size(self, size: WindowSize) -> None:
        self._require_interactive()
        self._send(
            m.SSH_CMSG_WINDOW_SIZE,
            Writer()
            .uint32(size.rows & 0xFFFFFFFF)
            .uint32(size.cols & 0xFFFFFFFF)
            .uint32(size.xpixel & 0xFFFFFFFF)
            .uint32(size.ypixel & 0xFFFFFFFF)
            .getvalue(),
        )

    def _on_exit_status(self, r: Reader) -> Event:
        status = r.uint32("exit status")
        r.end()
        self._send(m.SSH_CMSG_EXIT_CONFIRMATION)
        self.close_reason = f"program exited with status {status}"
        return ExitStatus(status)

    def _refuse_open(self, kind: str) -> Callable[[Reader], Event]:
        # We never ask for forwarding, so whatever the server wants to open is refused.
        def handler(r: Reader) -> Event:
            channel = r.uint32("channel")
            r.rest()
            self._send(m.SSH_MSG_CHANNEL_OPEN_FAILURE, Writer().uint32(channel).getvalue())
            return ForwardRefused(kind)

        return handler

    def _no_channels(self, name: str) -> Callable[[Reader], Event]:
        def handler(r: Reader) -> Event:
            raise ProtocolError(f"{name} but no channel was ever opened")

        return handler

    def _require_interactive(self) -> None:
        self._require_open()
        if self.phase is not m.Phase.INTERACTIVE:
            raise RuntimeError(f"not in the interactive phase ({self.phase.value})")


def _check_rsa(what: str, e: int, n: int) -> None:
    bits = n.bit_length()
    if bits > MAX_KEY_BITS:
        raise ProtocolError(f"{what} of {bits} bits is over {MAX_KEY_BITS}")
    if n % 2 == 0:
        raise ProtocolError(f"{what} modulus is even")
    if e < 3 or e % 2 == 0 or e >= n:
        raise ProtocolError(f"{what} has an unusable public exponent")


def _check_session_key_room(server_n: int, host_n: int) -> list[str]:
    """Refuse keys the session key cannot be sent under (PuTTY's limits); warnings for
    the ones that leave less PKCS#1 padding than RFC 8017 asks for."""
    inner, outer = keys.session_key_padding(server_n, host_n)
    (small_n, small_what), (large_n, large_what) = sorted(
        ((server_n, "server key"), (host_n, "host key"))
    )
    small_bits, large_bits = small_n.bit_length(), large_n.bit_length()
    if inner < 1:
        raise ProtocolError(
            f"{small_what} of {small_bits} bits is too small to carry the "
            f"{keys.SESSION_KEY_SIZE}-byte session key"
        )
    if outer < 1:
        raise ProtocolError(
            f"{large_what} ({large_bits} bits) is too close in size to the {small_what} "
            f"({small_bits} bits) to encrypt the session key twice"
        )
    warnings = []
    for what, room in ((small_what, inner), (large_what, outer)):
        if room < STANDARD_PADDING:
            warnings.append(
                f"{what} leaves room for {room} bytes of PKCS#1 padding, not "
                f"{STANDARD_PADDING}: sent as PuTTY sends it"
            )
    return warnings
