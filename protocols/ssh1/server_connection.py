"""The server role of the SSH-1 state machine: key exchange, the auth and preparatory
request/reply cycle, and the interactive phase.

The core decides everything the protocol itself decides (cookie, cipher offered,
session-key decryption, phase order); the caller decides policy (which user, which
password, whether a pty is granted) and answers each request with :meth:`send_success`,
:meth:`send_failure` or :meth:`send_rsa_challenge`. Until it does, no further packet
is decoded (the answer may switch compression on).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric import rsa

from protocols.session_values import PtyRequest, WindowSize
from protocols.ssh1 import ciphers, keys, ttymodes
from protocols.ssh1 import messages as m
from protocols.ssh1.connection import Connection
from protocols.ssh1.events import (
    AgentForwardingRequested,
    ChannelCloseConfirmed,
    ChannelClosed,
    ChannelData,
    ChannelOpenConfirmed,
    ChannelOpenFailed,
    CompressionRequested,
    Event,
    ExecCommand,
    ExecShell,
    ExitConfirmed,
    MaxPacketSizeRequested,
    PasswordAuth,
    PortOpen,
    PtyRequested,
    RemoteForwardRequested,
    RSAAuth,
    RSAResponse,
    SessionKeyAccepted,
    StdinData,
    StdinEOF,
    UnsupportedAuth,
    UserRequested,
    WindowChanged,
    X11ForwardingRequested,
)
from protocols.ssh1.packet import MAX_LENGTH
from protocols.ssh1.wire import ProtocolError, Reader, Writer

COOKIE_SIZE = 8
MAX_NAME = 256
MAX_PASSWORD = 1024
MAX_COMMAND = 65536
MAX_TERM = 256
MIN_PEER_PACKET = 4096
# Data per stdout/stderr/channel packet unless the client asks for less. Well under
# 32 KiB: PuTTY (0.78) stops reading its socket while more than 32768 bytes wait
# undecoded and decodes a packet only once all of it is there, so a packet body over
# 32768 bytes (32 KiB of data makes 32784) can leave it waiting for good. 16 KiB is
# what OpenSSH's SSH-1 server sent in practice (its reads from the program's output),
# leaves room for compression overhead, and costs nothing measurable in throughput.
DEFAULT_CHUNK = 16384
_PACKET_OVERHEAD = 64  # type, string length, CRC, padding, compression slack

_UNSUPPORTED_AUTH = {
    m.SSH_CMSG_AUTH_RHOSTS: "rhosts",
    m.SSH_CMSG_AUTH_RHOSTS_RSA: "rhosts-rsa",
    m.SSH_CMSG_AUTH_TIS: "tis",
    m.SSH_CMSG_AUTH_KERBEROS: "kerberos",
    m.SSH_CMSG_HAVE_KERBEROS_TGT: "kerberos-tgt",
}


class ServerConnection(Connection):
    role = m.Role.SERVER
    bulk_data = {m.SSH_CMSG_STDIN_DATA: StdinData}

    def __init__(
        self,
        host_key: rsa.RSAPrivateKey,
        server_key: rsa.RSAPrivateKey,
        ciphers_offered: Sequence[str],
        auth_methods: Sequence[int] = (m.SSH_AUTH_RSA, m.SSH_AUTH_PASSWORD),
        protocol_flags: int = 0,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(random)
        self.host_key = host_key
        self.server_key = server_key
        self.ciphers_offered = tuple(ciphers_offered)
        self.cookie = random(COOKIE_SIZE)
        self.cipher: str = ""
        self.client_flags = 0
        self.session_id = b""
        self.session_key_ok = True  # False: decryption failed and a random key is in use
        self.compression_level = 0
        self.chunk_size = DEFAULT_CHUNK
        self._pending_value: int = 0
        self._challenge = b""
        host_e, host_n = keys.public_numbers(host_key)
        server_e, server_n = keys.public_numbers(server_key)
        self._max_session_key_bits = max(host_n.bit_length(), server_n.bit_length())
        self.session_id = keys.session_id(host_n, server_n, self.cookie)
        self._handlers = {
            m.SSH_CMSG_SESSION_KEY: self._on_session_key,
            m.SSH_CMSG_USER: self._on_user,
            m.SSH_CMSG_AUTH_PASSWORD: self._on_password,
            m.SSH_CMSG_AUTH_RSA: self._on_rsa,
            m.SSH_CMSG_AUTH_RSA_RESPONSE: self._on_rsa_response,
            m.SSH_CMSG_REQUEST_COMPRESSION: self._on_compression,
            m.SSH_CMSG_REQUEST_PTY: self._on_pty,
            m.SSH_CMSG_X11_REQUEST_FORWARDING: self._on_x11,
            m.SSH_CMSG_PORT_FORWARD_REQUEST: self._on_remote_forward,
            m.SSH_CMSG_AGENT_REQUEST_FORWARDING: self._on_agent,
            m.SSH_CMSG_MAX_PACKET_SIZE: self._on_max_packet,
            m.SSH_CMSG_EXEC_SHELL: self._on_exec_shell,
            m.SSH_CMSG_EXEC_CMD: self._on_exec_cmd,
            m.SSH_CMSG_STDIN_DATA: lambda r: StdinData(r.string("data")),
            m.SSH_CMSG_EOF: lambda r: StdinEOF(),
            m.SSH_CMSG_WINDOW_SIZE: lambda r: WindowChanged(_window(r)),
            m.SSH_CMSG_EXIT_CONFIRMATION: self._on_exit_confirmation,
            m.SSH_MSG_PORT_OPEN: self._on_port_open,
            m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION: lambda r: ChannelOpenConfirmed(
                r.uint32("recipient channel"), r.uint32("sender channel")
            ),
            m.SSH_MSG_CHANNEL_OPEN_FAILURE: lambda r: ChannelOpenFailed(r.uint32("channel")),
            m.SSH_MSG_CHANNEL_DATA: lambda r: ChannelData(r.uint32("channel"), r.string("data")),
            m.SSH_MSG_CHANNEL_CLOSE: lambda r: ChannelClosed(r.uint32("channel")),
            m.SSH_MSG_CHANNEL_CLOSE_CONFIRMATION: lambda r: ChannelCloseConfirmed(
                r.uint32("channel")
            ),
        }
        for number, method in _UNSUPPORTED_AUTH.items():
            self._handlers[number] = self._unsupported_auth(method)
        mask = ciphers.cipher_mask(self.ciphers_offered)
        auth_mask = 0
        for method in auth_methods:
            auth_mask |= 1 << method
        self._send(
            m.SSH_SMSG_PUBLIC_KEY,
            Writer()
            .raw(self.cookie)
            .uint32(server_n.bit_length())
            .mpint(server_e)
            .mpint(server_n)
            .uint32(host_n.bit_length())
            .mpint(host_e)
            .mpint(host_n)
            .uint32(protocol_flags)
            .uint32(mask)
            .uint32(auth_mask)
            .getvalue(),
        )

    # ------------------------------------------------------------ key exchange
    def _on_session_key(self, r: Reader) -> Event:
        number = r.byte("cipher")
        cookie = r.raw(COOKIE_SIZE, "cookie")
        value = r.mpint("session key", max_bits=self._max_session_key_bits)
        # Old 1.2 clients omit the protocol flags.
        self.client_flags = r.uint32("protocol flags") if r.remaining else 0
        if not hmac.compare_digest(cookie, self.cookie):
            raise ProtocolError("anti-spoofing cookie does not match")
        spec = ciphers.BY_NUMBER.get(number)
        if spec is None or spec.name not in self.ciphers_offered:
            raise ProtocolError(f"client chose cipher {number}, which was not offered")
        session_key, self.session_key_ok = keys.decrypt_session_key(
            value, self.session_id, self.server_key, self.host_key, self._random
        )
        self.cipher = spec.name
        self._decoder.set_cipher(spec, session_key)
        self._encoder.set_cipher(spec, session_key)
        self._send(m.SSH_SMSG_SUCCESS)
        return SessionKeyAccepted(spec.name, self.client_flags)

    # ------------------------------------------------------------ authentication
    def _on_user(self, r: Reader) -> Event:
        name = r.string("user name", MAX_NAME)
        self.pending = m.Awaiting.USER
        return UserRequested(name)

    def _on_password(self, r: Reader) -> Event:
        password = r.string("password", MAX_PASSWORD)
        self.pending = m.Awaiting.AUTH
        return PasswordAuth(password)

    def _on_rsa(self, r: Reader) -> Event:
        modulus = r.mpint("modulus")
        self.pending = m.Awaiting.RSA
        return RSAAuth(modulus)

    def _on_rsa_response(self, r: Reader) -> Event:
        response = r.raw(16, "response")
        self.pending = m.Awaiting.AUTH
        return RSAResponse(response)

    def _unsupported_auth(self, method: str) -> Callable[[Reader], Event]:
        def handler(r: Reader) -> Event:
            r.rest()  # its fields do not matter: the answer is FAILURE whatever they say
            self.pending = m.Awaiting.AUTH
            return UnsupportedAuth(method)

        return handler

    def make_rsa_challenge(self, e: int, n: int) -> tuple[int, bytes]:
        """A fresh challenge for the key (e, n): (value to send, expected response)."""
        challenge = keys.make_challenge(self._random)
        return keys.encrypt_challenge(challenge, e, n), keys.challenge_response(
            challenge, self.session_id
        )

    def send_rsa_challenge(self, value: int) -> None:
        if self.pending is not m.Awaiting.RSA:
            raise RuntimeError("no CMSG_AUTH_RSA is waiting for a challenge")
        self._send(m.SSH_SMSG_AUTH_RSA_CHALLENGE, Writer().mpint(value).getvalue())
        self.pending = None

    # ------------------------------------------------------------ preparatory
    def _on_compression(self, r: Reader) -> Event:
        level = r.uint32("level")
        self.pending = m.Awaiting.COMPRESSION
        self._pending_value = level
        return CompressionRequested(level)

    def _on_pty(self, r: Reader) -> Event:
        term = r.string("TERM", MAX_TERM).decode("ascii", "replace")
        size = _window(r)
        modes = ttymodes.decode(r.rest())
        self.pending = m.Awaiting.REQUEST
        return PtyRequested(PtyRequest(term, size, modes))

    def _on_x11(self, r: Reader) -> Event:
        proto = r.string("auth protocol", 256)
        cookie = r.string("auth cookie", 1024)
        screen = r.uint32("screen") if r.remaining >= 4 else None
        self.pending = m.Awaiting.REQUEST
        return X11ForwardingRequested(proto, cookie, screen)

    def _on_remote_forward(self, r: Reader) -> Event:
        port = r.uint32("port")
        host = r.string("host", 1024)
        host_port = r.uint32("host port")
        self.pending = m.Awaiting.REQUEST
        return RemoteForwardRequested(port, host, host_port)

    def _on_agent(self, r: Reader) -> Event:
        self.pending = m.Awaiting.REQUEST
        return AgentForwardingRequested()

    def _on_max_packet(self, r: Reader) -> Event:
        size = r.uint32("size")
        self.pending = m.Awaiting.MAX_PACKET
        self._pending_value = size
        return MaxPacketSizeRequested(size)

    def _on_exec_shell(self, r: Reader) -> Event:
        return ExecShell()

    def _on_exec_cmd(self, r: Reader) -> Event:
        command = r.string("command", MAX_COMMAND)
        return ExecCommand(command)

    # ------------------------------------------------------------ replies
    def send_success(self) -> None:
        if self.pending is m.Awaiting.COMPRESSION and not self.valid_compression_level():
            raise ValueError(f"compression level {self._pending_value} is not 1..9")
        kind = self._take_pending()
        self._send(m.SSH_SMSG_SUCCESS)
        if kind is m.Awaiting.COMPRESSION:
            level = self._pending_value
            # Our SUCCESS went out uncompressed; everything after it, both ways, is.
            self._encoder.start_compression(level)
            self._decoder.start_decompression(MAX_LENGTH)
            self.compression_level = level
        elif kind is m.Awaiting.MAX_PACKET:
            self.chunk_size = max(1024, min(DEFAULT_CHUNK, self._pending_value - _PACKET_OVERHEAD))

    def send_failure(self) -> None:
        self._take_pending()
        self._send(m.SSH_SMSG_FAILURE)

    def _take_pending(self) -> m.Awaiting:
        self._require_open()
        kind = self.pending
        if kind is None:
            raise RuntimeError("no request is waiting for a reply")
        self.pending = None
        return kind

    def valid_compression_level(self) -> bool:
        return 1 <= self._pending_value <= 9

    def valid_max_packet_size(self) -> bool:
        return MIN_PEER_PACKET <= self._pending_value <= 1024 * 1024

    # ------------------------------------------------------------ interactive
    def send_stdout(self, data: bytes) -> None:
        self._send_data(m.SSH_SMSG_STDOUT_DATA, data)

    def send_stderr(self, data: bytes) -> None:
        self._send_data(m.SSH_SMSG_STDERR_DATA, data)

    def _send_data(self, msg_type: int, data: bytes) -> None:
        self._require_interactive()
        step = self.chunk_size
        for start in range(0, len(data), step):
            self._send(msg_type, Writer().string(data[start : start + step]).getvalue())

    def send_exit_status(self, status: int) -> None:
        self._require_interactive()
        self._send(m.SSH_SMSG_EXITSTATUS, Writer().uint32(status & 0xFFFFFFFF).getvalue())

    def _on_exit_confirmation(self, r: Reader) -> Event:
        self.close_reason = "session finished"
        return ExitConfirmed()

    def _on_port_open(self, r: Reader) -> Event:
        channel = r.uint32("channel")
        host = r.string("host", 1024)
        port = r.uint32("port")
        originator = r.string("originator", 1024) if r.remaining else None
        return PortOpen(channel, host, port, originator)

    def send_x11_open(self, our_channel: int) -> None:
        """A program connected to the forwarded X display: ask the client for a channel.
        (No originator string: we never announce SSH_PROTOFLAG_HOST_IN_FWD_OPEN.)"""
        self._require_interactive()
        self._send(m.SSH_SMSG_X11_OPEN, Writer().uint32(our_channel).getvalue())

    def send_agent_open(self, our_channel: int) -> None:
        """A program connected to the forwarded agent socket: ask the client for a channel."""
        self._require_interactive()
        self._send(m.SSH_SMSG_AGENT_OPEN, Writer().uint32(our_channel).getvalue())

    def send_channel_open_confirmation(self, peer_channel: int, our_channel: int) -> None:
        self._require_channels()
        self._send(
            m.SSH_MSG_CHANNEL_OPEN_CONFIRMATION,
            Writer().uint32(peer_channel).uint32(our_channel).getvalue(),
        )

    def send_channel_open_failure(self, peer_channel: int) -> None:
        self._require_channels()
        self._send(m.SSH_MSG_CHANNEL_OPEN_FAILURE, Writer().uint32(peer_channel).getvalue())

    def send_channel_data(self, peer_channel: int, data: bytes) -> None:
        self._require_interactive()
        step = self.chunk_size
        for start in range(0, len(data), step):
            self._send(
                m.SSH_MSG_CHANNEL_DATA,
                Writer().uint32(peer_channel).string(data[start : start + step]).getvalue(),
            )

    def send_channel_close(self, peer_channel: int) -> None:
        self._require_channels()
        self._send(m.SSH_MSG_CHANNEL_CLOSE, Writer().uint32(peer_channel).getvalue())

    def send_channel_close_confirmation(self, peer_channel: int) -> None:
        self._require_channels()
        self._send(m.SSH_MSG_CHANNEL_CLOSE_CONFIRMATION, Writer().uint32(peer_channel).getvalue())

    def _require_channels(self) -> None:
        """Channel answers may also go out before the session: a client that forwards
        without one (plink -N) has its MSG_PORT_OPEN refused then."""
        if self.phase is not m.Phase.PREPARATORY:
            self._require_interactive()

    def _require_interactive(self) -> None:
        if self.phase not in (m.Phase.INTERACTIVE, m.Phase.CLOSING):
            raise RuntimeError(f"not in the interactive phase ({self.phase.value})")


def _window(r: Reader) -> WindowSize:
    return WindowSize(r.uint32("rows"), r.uint32("cols"), r.uint32("xpixel"), r.uint32("ypixel"))
