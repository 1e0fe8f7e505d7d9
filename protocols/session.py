"""The session model shared by every front end (SSH-1, SSH-2) and every target.

A *front end* speaks to the client; a *target* runs the program (a local process, or
later an upstream device). They meet here, so that SSH-1 and SSH-2 drive one model:

    front end --open_session(request, client)--> avatar (IGatewayUser)
              <------------- ISessionTarget -----
    front end provides ISessionClient to the target.

Flow control runs both ways with Twisted's producer/consumer contract:
- the target registers its output source on the ISessionClient; the front end pauses it
  while the client cannot take more (SSH-2 window exhausted, TCP buffer full);
- the front end registers its input source on the ISessionTarget; the target pauses it
  while the program is not reading its stdin.
So no side ever buffers more than a bounded amount for a slow peer.

The value types (:class:`SessionRequest`, :class:`PtyRequest`, :class:`WindowSize`,
:class:`ConnectionAddresses`, :class:`ExitInfo`) are defined in :mod:`protocols.session_values`, which loads no zope,
and re-exported here.

What a session may ask for beyond running its program (a pty, port, agent and X11
forwarding) can be restricted per login (authorized_keys options): the avatar carries
:class:`SessionRestrictions`, and both front ends ask it, at the one place where each
such request arrives, before granting anything.

Terminal modes travel in SSH-2 numbering (RFC 4254 section 8: opcodes 1..159, speeds
128/129); the SSH-1 front end converts its own numbering (speeds 192/193) at the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Attribute, Interface

# The value types live apart so that the SSH-1 core can use them without loading zope;
# re-exported here, where every other module has always imported them from.
from protocols.session_values import (
    ConnectionAddresses,
    ExitInfo,
    PtyRequest,
    SessionRequest,
    WindowSize,
)

__all__ = [
    "AGENT_FORWARDING",
    "ConnectionAddresses",
    "addresses_of",
    "ExitInfo",
    "IGatewayUser",
    "ISessionClient",
    "ISessionTarget",
    "PORT_FORWARDING",
    "PTY",
    "PtyRequest",
    "SessionRequest",
    "SessionRestrictions",
    "UNRESTRICTED",
    "WindowSize",
    "X11_FORWARDING",
]


# What a session may ask for, named as SessionRestrictions.refusal takes them.
PTY = "pty"
PORT_FORWARDING = "port-forwarding"
AGENT_FORWARDING = "agent-forwarding"
X11_FORWARDING = "x11-forwarding"


@dataclass(frozen=True)
class SessionRestrictions:
    """What one login's sessions may ask for (each True: not restricted by the login;
    the front end's own settings still apply). ``origin`` says where the restriction
    comes from, for log lines (e.g. the authorized_keys line)."""

    pty: bool = True
    port_forwarding: bool = True
    agent_forwarding: bool = True
    x11_forwarding: bool = True
    origin: str = ""

    def refusal(self, feature: str) -> str | None:
        """None when ``feature`` (PTY, PORT_FORWARDING, AGENT_FORWARDING or
        X11_FORWARDING) is permitted; else the reason, for the log (never for the client)."""
        permitted = {
            PTY: self.pty,
            PORT_FORWARDING: self.port_forwarding,
            AGENT_FORWARDING: self.agent_forwarding,
            X11_FORWARDING: self.x11_forwarding,
        }[feature]
        if permitted:
            return None
        where = f" ({self.origin})" if self.origin else ""
        return f"{feature} is not permitted by the key's options{where}"


UNRESTRICTED = SessionRestrictions()


class ISessionClient(Interface):
    """The client's side of one session, provided by a front end to its target."""

    description = Attribute(
        "str: the client connection's protocol and negotiated algorithms, for log lines"
    )

    def write_stdout(data: bytes) -> None:
        """Send program output to the client."""

    def write_stderr(data: bytes) -> None:
        """Send program error output to the client (SSH-2 extended data, SSH-1 STDERR_DATA)."""

    def send_eof() -> None:
        """The program will write no more output."""

    def exited(info: ExitInfo) -> None:
        """The program ended and all its output has been passed to write_*; close the session."""

    def registerProducer(producer: object, streaming: bool) -> None:
        """The target's output source; paused while the client cannot take more."""

    def unregisterProducer() -> None:
        """The target's output source is gone."""


class ISessionTarget(Interface):
    """One running session behind the gateway, provided by a target to a front end."""

    def write_stdin(data: bytes) -> None:
        """Client input for the program."""

    def close_stdin() -> None:
        """The client sent EOF."""

    def resize(size: WindowSize) -> None:
        """The client's terminal changed size (only meaningful with a pty)."""

    def send_signal(name: str) -> None:
        """Deliver a signal (SSH-2 name without "SIG") if the target supports it."""

    def close() -> None:
        """The client is gone or the channel closed: stop the program, release resources."""

    def registerProducer(producer: object, streaming: bool) -> None:
        """The front end's input source; paused while the program does not read."""

    def unregisterProducer() -> None:
        """The front end's input source is gone."""


class IGatewayUser(Interface):
    """The avatar a front end gets from the portal after a successful login."""

    username = Attribute("str: the gateway login name (without any +target suffix)")
    restrictions = Attribute(
        "SessionRestrictions: what this login's sessions may not ask for (UNRESTRICTED "
        "unless the login's key said otherwise)"
    )

    def open_session(request: SessionRequest, client: ISessionClient) -> ISessionTarget:
        """Start the program (or upstream session) for ``request``.

        Never raises for a target-side failure: a target that cannot start writes a one-line
        reason to ``client.write_stderr`` and calls ``client.exited`` with a non-zero status.
        """

    def env_allowed(name: str) -> bool:
        """Whether an environment variable sent by the client may reach the program."""


def addresses_of(transport: object) -> ConnectionAddresses | None:
    """The two ends of a front end's connection (its transport's ``getPeer()`` and
    ``getHost()``), for the session's ``SSH_CLIENT`` and ``SSH_CONNECTION``; None when the
    transport has none to give."""
    get_peer = getattr(transport, "getPeer", None)
    get_host = getattr(transport, "getHost", None)
    if get_peer is None or get_host is None:
        return None
    return ConnectionAddresses.of(get_peer(), get_host())
