"""The ssh-connection service (RFC 4254) and the Conch-side avatar of a logged-in user.

Conch's SSHConnection is kept for channel bookkeeping; this subclass adds what the
gateway needs: strict parsing of channel-open and channel-request, a per-connection
channel limit, no global requests (no remote forwarding), ``direct-tcpip`` channels only
where the avatar permits them (jump-host use), channel requests answered *before* a
session starts (so a program that ends at once cannot close the channel ahead of the
reply), and window adjustments that a channel can hold back while its target is not
reading (input back-pressure).
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch.ssh import connection
from twisted.logger import Logger

from protocols.forwarding import ForwardRefused, host_port
from protocols.record import ConnectionRecord
from protocols.session import PORT_FORWARDING, IGatewayUser
from protocols.ssh2.channel_data import ChannelDataPackets
from protocols.ssh2.forwarding import ForwardChannel, parse_direct_tcpip
from protocols.ssh2.logs import quiet_logger
from protocols.ssh2.wire import Reader, WireError, u32

log = Logger()

MAX_CHANNELS = 10  # open channels per connection, as OpenSSH's MaxSessions
MAX_REQUEST_NAME = 64
MAX_CHANNEL_TYPE = 64
# We send data packets no larger than this whatever the client allows: smaller packets
# are always legal, and a client announcing 4 GiB must not make us build giant ones.
MAX_SEND_PACKET = 128 * 1024
# Global requests and channel types that forward ports (RFC 4254 section 7, OpenSSH's
# PROTOCOL for the streamlocal ones): all refused but direct-tcpip to a destination the
# user may reach, the reason from one place.
FORWARDING_REQUESTS = frozenset(
    {
        b"tcpip-forward",
        b"cancel-tcpip-forward",
        b"streamlocal-forward@openssh.com",
        b"cancel-streamlocal-forward@openssh.com",
    }
)
FORWARDING_CHANNELS = frozenset({b"direct-tcpip", b"direct-streamlocal@openssh.com"})


class ChannelRefused(Exception):
    """A channel the avatar refuses, with the RFC 4254 reason code and text to send."""

    def __init__(self, code: int, reason: bytes) -> None:
        super().__init__(reason.decode("ascii", "replace"))
        self.code = code
        self.reason = reason


class ConchAvatar:
    """What Conch's transport and connection expect of ``transport.avatar``, wrapping the
    gateway's IGatewayUser."""

    def __init__(self, user: Any, factory: Any, record: ConnectionRecord) -> None:
        self.user = IGatewayUser(user, user)
        self.factory = factory
        self.record = record
        self.conn: GatewayConnection | None = None

    def port_forwarding_refusal(self, kind: bytes = b"tcpip-forward") -> str | None:
        """Why a port forwarding request or channel of ``kind`` is refused, None when it
        may go on: the one check for all of them (tcpip-forward and direct-tcpip alike).
        The login's restrictions (``no-port-forwarding``, ``restrict``) refuse every kind;
        of the rest only ``direct-tcpip`` is offered (to a destination the avatar
        permits)."""
        why = self.user.restrictions.refusal(PORT_FORWARDING)
        if why is not None:
            return why
        if kind == b"direct-tcpip" and getattr(self.user, "open_forward", None) is not None:
            return None
        return f"{kind.decode('ascii', 'replace')} is not offered over SSH-2"

    def lookupChannel(self, channelType: bytes, windowSize: int, maxPacket: int, data: bytes) -> Any:
        from protocols.ssh2.session import SessionChannel

        if channelType in FORWARDING_CHANNELS:
            return self._forward_channel(channelType, windowSize, maxPacket, data)
        if channelType != b"session":
            return None
        return SessionChannel(
            self.user,
            remoteWindow=windowSize,
            remoteMaxPacket=min(maxPacket, MAX_SEND_PACKET),
            settings=self.factory.settings,
            clock=self.factory.clock,
        )

    def _forward_channel(self, kind: bytes, window: int, max_packet: int, data: bytes) -> Any:
        """A ``direct-tcpip`` channel to a destination the user may reach; raises
        ChannelRefused (administratively prohibited) otherwise, with a log line."""
        flow = getattr(self.record, "flow", None)
        destination = "?"
        try:
            why = self.port_forwarding_refusal(kind)
            if why is not None:
                raise ForwardRefused(why)
            host, port, _, _ = parse_direct_tcpip(data)
            destination = host_port(host, port)
            channel = ForwardChannel(
                destination,
                flow,
                localWindow=self.factory.settings.channel_window,
                localMaxPacket=self.factory.settings.channel_max_packet,
                remoteWindow=window,
                remoteMaxPacket=min(max_packet, MAX_SEND_PACKET),
            )
            channel.attach(self.user.open_forward(host, port, channel))
        except (ForwardRefused, WireError) as e:
            log.info(
                "ssh2: {peer}: {user}: refused {type!r} channel to {destination}: {why}",
                peer=self.record.peer,
                user=self.user.username,
                type=kind,
                destination=destination,
                why=str(e),
            )
            if flow is not None:
                flow.request(kind.decode("ascii"), "failure")
            raise ChannelRefused(
                connection.OPEN_ADMINISTRATIVELY_PROHIBITED, b"administratively prohibited"
            ) from e
        log.info(
            "ssh2: {peer}: {user}: {type!r} channel to {destination}",
            peer=self.record.peer,
            user=self.user.username,
            type=kind,
            destination=destination,
        )
        if flow is not None:
            flow.request(kind.decode("ascii"), "success")
        return channel

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> int:
        return 0


class GatewayConnection(ChannelDataPackets, connection.SSHConnection):
    _log = quiet_logger(__name__ + ".conch")

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        reader = Reader(packet)
        channel_type = reader.string(MAX_CHANNEL_TYPE)
        sender, window, max_packet = reader.uint32(), reader.uint32(), reader.uint32()
        refusal = None
        if len(self.channels) >= MAX_CHANNELS:
            refusal = (connection.OPEN_RESOURCE_SHORTAGE, b"too many channels")
        elif max_packet == 0:
            refusal = (connection.OPEN_ADMINISTRATIVELY_PROHIBITED, b"maximum packet size 0")
        else:
            try:
                channel = self.transport.avatar.lookupChannel(
                    channel_type, window, max_packet, reader.rest()
                )
            except ChannelRefused as e:
                channel, refusal = None, (e.code, e.reason)
            else:
                if channel is None:
                    refusal = (connection.OPEN_UNKNOWN_CHANNEL_TYPE, b"unknown channel type")
        if refusal is not None:
            log.info(
                "ssh2: {peer}: refused {type!r} channel: {why}",
                peer=self.transport.record.peer,
                type=channel_type,
                why=refusal[1],
            )
            self.transport.sendPacket(
                connection.MSG_CHANNEL_OPEN_FAILURE,
                struct.pack(">2L", sender, refusal[0]) + _ns(refusal[1]) + _ns(b""),
            )
            return
        channel.conn = self
        local = self.localChannelID
        self.localChannelID += 1
        channel.id = local
        self.channels[local] = channel
        self.channelsToRemoteChannel[channel] = sender
        self.localToRemoteChannel[local] = sender
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_CONFIRMATION,
            struct.pack(">4L", sender, local, channel.localWindowSize, channel.localMaxPacket)
            + channel.specificData,
        )
        channel.channelOpen(b"")

    def ssh_CHANNEL_REQUEST(self, packet: bytes) -> None:
        reader = Reader(packet)
        local = reader.uint32()
        request_type = reader.string(MAX_REQUEST_NAME)
        want_reply = reader.boolean()
        channel = self.channels[local]
        try:
            ok = bool(channel.requestReceived(request_type, reader.rest()))
        except ValueError as e:  # WireError included: a malformed request is refused
            log.info(
                "ssh2: {peer}: bad {type!r} request: {why}",
                peer=self.transport.record.peer,
                type=request_type,
                why=str(e),
            )
            ok = False
        if want_reply and not channel.localClosed:
            reply = connection.MSG_CHANNEL_SUCCESS if ok else connection.MSG_CHANNEL_FAILURE
            self.transport.sendPacket(reply, u32(self.localToRemoteChannel[local]))
        after = getattr(channel, "request_answered", None)
        if after is not None:
            after()

    def ssh_GLOBAL_REQUEST(self, packet: bytes) -> None:
        reader = Reader(packet)
        name = reader.string(MAX_REQUEST_NAME)
        if name in FORWARDING_REQUESTS:
            log.info(
                "ssh2: {peer}: refused {name!r}: {why}",
                peer=self.transport.record.peer,
                name=name,
                why=self.transport.avatar.port_forwarding_refusal(name),
            )
        if reader.boolean():
            self.transport.sendPacket(connection.MSG_REQUEST_FAILURE, b"")

    def ssh_CHANNEL_WINDOW_ADJUST(self, packet: bytes) -> None:
        reader = Reader(packet)
        local, add = reader.uint32(), reader.uint32()
        channel = self.channels[local]
        # RFC 4254 section 5.2: the window may not exceed 2^32 - 1.
        add = min(add, 0xFFFFFFFF - channel.remoteWindowLeft)
        channel.addWindowBytes(add)

    def data_refused(self, channel: Any) -> None:
        log.info(
            "ssh2: {peer}: channel {id} data beyond window or packet size",
            peer=self.transport.record.peer,
            id=channel.id,
        )

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        # Conch grants more window whenever half is used; a channel whose target paused
        # its input holds the grant back until the target resumes.
        if getattr(channel, "input_paused", False):
            return
        super().adjustWindow(channel, bytesToAdd)


def _ns(value: bytes) -> bytes:
    return struct.pack(">L", len(value)) + value
