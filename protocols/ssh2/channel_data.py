"""Channel data packets (RFC 4254 section 5.2) for both ends' Conch connections: the bulk
path's per-packet work, kept to one copy of the data each way.

Out, the channel header and the data go to the transport as separate parts
(SSH2TransportBase.send_parts), so the data is copied once, into the packet; Conch's
``sendData`` builds the payload with two concatenations first. In, the data is sliced
once out of the payload; Conch slices it twice (``packet[4:]``, then ``getNS``) and takes
any length field at its word. Mixed in before Conch's SSHConnection.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch.ssh import connection

from protocols.ssh2.wire import WireError

DATA_HEADER = struct.Struct(">2L")  # recipient channel, data length
EXTENDED_HEADER = struct.Struct(">3L")  # recipient channel, data type, data length


class ChannelDataPackets:
    """CHANNEL_DATA and CHANNEL_EXTENDED_DATA, both ways, for a Conch SSHConnection.

    A channel's data beyond the window we granted or beyond its maximum packet size ends
    that channel (:meth:`data_refused`, then CLOSE), as in Conch; a data length that does
    not match the packet is a :class:`WireError`.
    """

    # Conch's SSHConnection has these, and sendClose and adjustWindow.
    transport: Any
    channels: dict[int, Any]
    channelsToRemoteChannel: dict[Any, int]
    sendClose: Any
    adjustWindow: Any

    def sendData(self, channel: Any, data: bytes) -> None:
        if channel.localClosed:
            return
        header = DATA_HEADER.pack(self.channelsToRemoteChannel[channel], len(data))
        self.transport.send_parts(connection.MSG_CHANNEL_DATA, (header, data))

    def sendExtendedData(self, channel: Any, dataType: int, data: bytes) -> None:
        if channel.localClosed:
            return
        header = EXTENDED_HEADER.pack(self.channelsToRemoteChannel[channel], dataType, len(data))
        self.transport.send_parts(connection.MSG_CHANNEL_EXTENDED_DATA, (header, data))

    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        local, length = DATA_HEADER.unpack_from(packet)
        self._data_for(self.channels[local], packet, DATA_HEADER.size, length, None)

    def ssh_CHANNEL_EXTENDED_DATA(self, packet: bytes) -> None:
        local, kind, length = EXTENDED_HEADER.unpack_from(packet)
        self._data_for(self.channels[local], packet, EXTENDED_HEADER.size, length, kind)

    def _data_for(
        self, channel: Any, packet: bytes, start: int, length: int, kind: int | None
    ) -> None:
        if len(packet) != start + length:
            raise WireError("channel data length does not match the packet")
        if length > channel.localWindowLeft or length > channel.localMaxPacket:
            # The peer ignored our window or packet size: this channel is done.
            self.data_refused(channel)
            self.sendClose(channel)
            return
        channel.localWindowLeft -= length
        if channel.localWindowLeft < channel.localWindowSize // 2:
            self.adjustWindow(channel, channel.localWindowSize - channel.localWindowLeft)
        data = packet[start:]
        if kind is None:
            channel.dataReceived(data)
        else:
            channel.extReceived(kind, data)

    def data_refused(self, channel: Any) -> None:
        """The peer sent ``channel`` more than its window or maximum packet size (logged
        here; the channel is closed next)."""
