"""The role-independent half of an SSH-1 connection state machine (h11-style).

Bytes go in with :meth:`Connection.receive_data`, events come out one at a time from
:meth:`Connection.next_event`, bytes to send are collected with
:meth:`Connection.data_to_send`. Nothing here does I/O or keeps time.

This class owns the codec, the phase check (messages.ALLOWED), the phase changes
(messages.TRANSITIONS, applied by :meth:`Connection._advance` to every message sent or
received, and nowhere else), the any-phase messages (DISCONNECT, IGNORE, DEBUG) and
failure handling: any :class:`ProtocolError` becomes a queued SSH_MSG_DISCONNECT carrying
the reason (encrypted once keys are in place) and a :class:`ConnectionFailed` event,
after which the connection is closed. A role subclass supplies ``_handlers`` (message
number -> parser returning an event or None) and sets ``pending`` (an
:class:`~protocols.ssh1.messages.Awaiting`) when a message waits for its caller's answer.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable
from typing import ClassVar, Protocol

from protocols.ssh1 import messages as m
from protocols.ssh1.events import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    ConnectionFailed,
    DebugMessage,
    Event,
    PeerDisconnected,
)
from protocols.ssh1.packet import MAX_LENGTH, PacketDecoder, PacketEncoder
from protocols.ssh1.wire import ProtocolError, Reader, Writer

_U32 = struct.Struct(">I")

# Unprocessed input we hold at most. A well-behaved peer waits for replies, and the
# caller stops reading while it does not pull events, so this is only reached by a peer
# that floods us while a request is pending.
BUFFER_LIMIT = 2 * MAX_LENGTH + 65536
MAX_TEXT = 1024  # disconnect/debug text kept for logs


def printable(raw: bytes, limit: int = MAX_TEXT) -> str:
    """Peer-supplied text made safe for a log line."""
    text = raw[:limit].decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


Handler = Callable[[Reader], Event | None]


class PacketObserver(Protocol):
    """Told of every packet: message name, wire bytes, and how many packets of that name
    these bytes are (a run of session data is told once). For flow recording; never the
    payload."""

    def __call__(self, name: str, size: int, count: int = 1, /) -> None: ...


def _bulk_string(payload: bytes) -> bytes | None:
    """The one string that fills ``payload`` (session data), or None if it does not."""
    size = len(payload) - 4
    if size >= 0 and _U32.unpack_from(payload)[0] == size:
        return payload[4:]
    return None


def _name(msg_type: int) -> str:
    name = m.NAMES.get(msg_type)
    return name if name is not None else f"SSH_MSG_UNKNOWN_{msg_type}"


class Connection:
    role: m.Role
    phase: m.Phase = m.INITIAL_PHASE  # changed only by _advance
    # The session data a role receives in the interactive phase: message number -> the
    # event carrying its one string. These take a short path (no phase-table lookups, no
    # Reader) that ends where the general one would: each is allowed there and keeps the
    # phase (tests/ssh1/test_phases.py checks both against the tables).
    bulk_data: ClassVar[dict[int, Callable[[bytes], Event]]] = {}

    def __init__(self, random: Callable[[int], bytes] = os.urandom) -> None:
        self._random = random
        self._decoder = PacketDecoder()
        self._encoder = PacketEncoder(random)
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self.pending: m.Awaiting | None = None  # the peer's message that awaits our answer
        self.close_reason: str = ""
        self._handlers: dict[int, Handler] = {}
        self.packets_in = 0
        self.packets_out = 0
        self.on_packet_in: PacketObserver | None = None
        self.on_packet_out: PacketObserver | None = None

    # ----------------------------------------------------------------- input
    def receive_data(self, data: bytes) -> None:
        if self.phase is m.Phase.CLOSED or not data:
            return
        self._decoder.feed(data)
        if self._decoder.buffered > BUFFER_LIMIT:
            self._events.append(self._fail("peer sent too much data without waiting for replies"))

    def next_event(self) -> Event:
        while True:
            if self._events:
                return self._events.popleft()
            if self.phase is m.Phase.CLOSED:
                return CLOSED
            if self.pending is not None:
                return PAUSED
            try:
                packet = self._decoder.next_packet()
                if packet is None:
                    return NEED_DATA
                msg_type, payload = packet
                if self.on_packet_in is not None:
                    self.on_packet_in(_name(msg_type), self._decoder.last_size)
                if self.phase is m.Phase.INTERACTIVE and msg_type in self.bulk_data:
                    data = _bulk_string(payload)
                    if data is not None:
                        self.packets_in += 1
                        return self.bulk_data[msg_type](self._more_bulk(msg_type, data))
                event = self._dispatch(msg_type, payload)
            except ProtocolError as exc:
                return self._fail(exc.reason)
            if event is not None:
                return event

    def _more_bulk(self, msg_type: int, first: bytes) -> bytes:
        """``first`` joined with the data of the packets of the same type that follow it,
        deciphered already: one event for a run of small packets. A packet that is not
        such data is handled as usual, its event (or failure) queued after the run."""
        if self._decoder.next_type() != msg_type:
            return first
        parts = [first]
        # Well-formed data packets in one loop of the decoder; what stops it (a bad CRC,
        # a malformed packet, compression) takes the packet-by-packet path below.
        data, count, wire_bytes = self._decoder.take_data_run(msg_type)
        if count:
            self.packets_in += count
            if self.on_packet_in is not None:
                self.on_packet_in(_name(msg_type), wire_bytes, count)
            parts.append(data)
        while self._decoder.next_type() == msg_type:
            try:
                _, payload = self._decoder.next_packet()  # type: ignore[misc]
                if self.on_packet_in is not None:
                    self.on_packet_in(_name(msg_type), self._decoder.last_size)
                data = _bulk_string(payload)
                if data is None:
                    event = self._dispatch(msg_type, payload)  # raises its error
                    if event is not None:
                        self._events.append(event)
                    break
            except ProtocolError as exc:
                self._events.append(self._fail(exc.reason))
                break
            self.packets_in += 1
            parts.append(data)
        return b"".join(parts)

    def _dispatch(self, msg_type: int, payload: bytes) -> Event | None:
        self.packets_in += 1
        if msg_type not in m.NAMES:
            raise ProtocolError(f"unknown message type {msg_type}")
        name = m.name_of(msg_type)
        if not m.allowed(self.role, self.phase, msg_type, self.pending is not None):
            raise ProtocolError(f"{name} not allowed in phase {self.phase.value}")
        event = self._read(msg_type, Reader(payload, name))
        # After the handler, which may itself have sent a reply that moved the phase.
        self._advance(msg_type)
        return event

    def _read(self, msg_type: int, reader: Reader) -> Event | None:
        if msg_type == m.SSH_MSG_IGNORE:
            reader.string("data")
            return None
        if msg_type == m.SSH_MSG_DEBUG:
            return DebugMessage(reader.string("message"))
        if msg_type == m.SSH_MSG_DISCONNECT:
            reason = printable(reader.string("reason"))
            self.close_reason = f"peer disconnected: {reason}"
            return PeerDisconnected(reason)
        handler = self._handlers.get(msg_type)
        if handler is None:  # in the phase table but not handled by this role: a bug
            raise ProtocolError(f"{m.name_of(msg_type)} not handled")
        event = handler(reader)
        reader.end()
        return event

    def _advance(self, msg_type: int) -> None:
        """The one place the phase changes: by messages.TRANSITIONS, for a message we
        have just sent or received (no row: the phase stays)."""
        self.phase = m.next_phase(self.role, self.phase, msg_type)

    # ---------------------------------------------------------------- output
    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _send(self, msg_type: int, payload: bytes = b"") -> None:
        self.packets_out += 1
        packet = self._encoder.encode(msg_type, payload)
        if self.on_packet_out is not None:
            self.on_packet_out(_name(msg_type), len(packet))
        self._out.append(packet)
        self._advance(msg_type)

    def send_ignore(self, data: bytes = b"") -> None:
        self._require_open()
        self._send(m.SSH_MSG_IGNORE, Writer().string(data).getvalue())

    def send_debug(self, message: str) -> None:
        self._require_open()
        self._send(m.SSH_MSG_DEBUG, Writer().string(message.encode()).getvalue())

    def send_disconnect(self, reason: str) -> None:
        """End the connection by our own decision (grace time, attempt limit, shutdown)."""
        if self.phase is not m.Phase.CLOSED:
            self._fail(reason)

    def _fail(self, reason: str) -> ConnectionFailed:
        if self.phase is not m.Phase.CLOSED:
            self._send(m.SSH_MSG_DISCONNECT, Writer().string(reason.encode()).getvalue())
            self.close_reason = reason  # the DISCONNECT has closed the connection
        self.pending = None
        return ConnectionFailed(reason)

    def _require_open(self) -> None:
        if self.phase is m.Phase.CLOSED:
            raise RuntimeError("SSH-1 connection is closed")

    @property
    def closed(self) -> bool:
        return self.phase is m.Phase.CLOSED
