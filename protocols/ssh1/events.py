"""Events the SSH-1 core hands to its caller, one class per thing that happened.

Plain frozen dataclasses; the core never calls out. Names follow the messages that
cause them. Server-role and client-role events share this module; the roles simply
produce different subsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.session_values import PtyRequest, WindowSize


class Event:
    __slots__ = ()


@dataclass(frozen=True)
class SessionKeyAccepted(Event):
    cipher: str
    client_flags: int


@dataclass(frozen=True)
class UserRequested(Event):
    username: bytes


@dataclass(frozen=True)
class PasswordAuth(Event):
    password: bytes

    def __repr__(self) -> str:  # never let a password reach a log through repr()
        return "PasswordAuth(password=<hidden>)"


@dataclass(frozen=True)
class RSAAuth(Event):
    modulus: int


@dataclass(frozen=True)
class RSAResponse(Event):
    response: bytes


@dataclass(frozen=True)
class UnsupportedAuth(Event):
    """rhosts, rhosts-RSA, TIS, Kerberos: always answered with FAILURE."""

    method: str


@dataclass(frozen=True)
class CompressionRequested(Event):
    level: int


@dataclass(frozen=True)
class PtyRequested(Event):
    pty: PtyRequest


@dataclass(frozen=True)
class X11ForwardingRequested(Event):
    protocol: bytes
    cookie: bytes  # the client's (fake) authentication data, usually hex
    screen: int | None

    def __repr__(self) -> str:  # the cookie grants access to the user's display
        return f"X11ForwardingRequested(protocol={self.protocol!r}, screen={self.screen})"


@dataclass(frozen=True)
class AgentForwardingRequested(Event):
    pass


@dataclass(frozen=True)
class RemoteForwardRequested(Event):
    port: int
    host: bytes
    host_port: int


@dataclass(frozen=True)
class MaxPacketSizeRequested(Event):
    size: int


@dataclass(frozen=True)
class ExecShell(Event):
    pass


@dataclass(frozen=True)
class ExecCommand(Event):
    command: bytes


@dataclass(frozen=True)
class StdinData(Event):
    data: bytes


@dataclass(frozen=True)
class StdinEOF(Event):
    pass


@dataclass(frozen=True)
class WindowChanged(Event):
    size: WindowSize


@dataclass(frozen=True)
class ExitConfirmed(Event):
    pass


@dataclass(frozen=True)
class PortOpen(Event):
    channel: int  # the peer's channel number
    host: bytes
    port: int
    originator: bytes | None


@dataclass(frozen=True)
class ChannelOpenConfirmed(Event):
    channel: int  # ours
    peer_channel: int


@dataclass(frozen=True)
class ChannelOpenFailed(Event):
    channel: int


@dataclass(frozen=True)
class ChannelData(Event):
    channel: int
    data: bytes


@dataclass(frozen=True)
class ChannelClosed(Event):
    channel: int


@dataclass(frozen=True)
class ChannelCloseConfirmed(Event):
    channel: int


# ---------------------------------------------------------------- client role


@dataclass(frozen=True)
class PublicKeyReceived(Event):
    """SSH_SMSG_PUBLIC_KEY, checked. The caller verifies the host key, then calls
    ``send_session_key()`` (or ends the connection); nothing is decoded until then."""

    host_e: int
    host_n: int
    server_e: int
    server_n: int
    protocol_flags: int
    ciphers: tuple[str, ...]  # what the server offers, by our names
    auth_mask: int
    cipher: str  # what we will use: our first preference the server offers
    warnings: tuple[str, ...]  # weak but accepted keys, a size the server misstated

    def __repr__(self) -> str:  # the moduli are hundreds of digits long
        return (
            f"PublicKeyReceived(host_bits={self.host_n.bit_length()}, "
            f"server_bits={self.server_n.bit_length()}, cipher={self.cipher!r}, "
            f"ciphers={self.ciphers!r}, auth_mask={self.auth_mask}, warnings={self.warnings!r})"
        )


@dataclass(frozen=True)
class RequestAnswered(Event):
    """SMSG_SUCCESS / SMSG_FAILURE for the request we sent (``request`` names it, as the
    value of its :class:`~protocols.ssh1.messages.Awaiting`: "session-key", "user",
    "password", "rsa", "rsa-response", "compression", "pty")."""

    request: str
    ok: bool


@dataclass(frozen=True)
class RSAChallengeReceived(Event):
    value: int


@dataclass(frozen=True)
class StdoutData(Event):
    data: bytes


@dataclass(frozen=True)
class StderrData(Event):
    data: bytes


@dataclass(frozen=True)
class ExitStatus(Event):
    """SMSG_EXITSTATUS; the core has queued EXIT_CONFIRMATION and is closed."""

    status: int


@dataclass(frozen=True)
class ForwardRefused(Event):
    """The server opened a forwarded channel we never asked for; the core refused it."""

    kind: str


@dataclass(frozen=True)
class DebugMessage(Event):
    message: bytes


@dataclass(frozen=True)
class PeerDisconnected(Event):
    """The peer sent SSH_MSG_DISCONNECT; the connection is closed."""

    reason: str


@dataclass(frozen=True)
class ConnectionFailed(Event):
    """We ended the connection: a DISCONNECT with ``reason`` is queued to send."""

    reason: str


class _Sentinel(Event):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")  # give me more bytes
PAUSED = _Sentinel("PAUSED")  # answer the pending request first
CLOSED = _Sentinel("CLOSED")  # nothing more will come
