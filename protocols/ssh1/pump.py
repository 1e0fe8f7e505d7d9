"""What the two thin Twisted SSH-1 protocols (server and client) share: feeding the
sans-I/O core, draining its events into a handler table, writing what it queued, and
stopping to read the peer while a consumer of its data is full.

A role subclass sets ``core`` once the connection can start, fills ``_handlers`` (event
type -> handler), and says what the core's own close means (:meth:`_core_closed`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.protocol import Protocol

from protocols.ssh1 import events as ev
from protocols.ssh1.connection import Connection


class CorePump(Protocol):
    """A Twisted protocol driven by an SSH-1 core (:class:`Connection`)."""

    core: Connection | None
    # Consecutive events of this type are not handled one by one: their ``data`` is joined
    # and given to :meth:`_deliver_batch` once another event (or the end of the input
    # read so far) comes; None: no batching.
    batched_event: ClassVar[type | None] = None

    def __init__(self) -> None:
        self.core = None
        self.done = False  # the connection is over for us: no more events are handled
        self._handlers: dict[type, Callable[[Any], None]] = {}
        self._input_pauses: set[str] = set()  # who asked us to stop reading the peer
        self._pumping = False
        self._pump_again = False
        self._batch: list[bytes] = []
        # An event taken from the core when delivering the batch before it paused our
        # input: it is handled first once the input is resumed, not after the pause.
        self._held: Any = None

    def _core_closed(self, reason: str) -> None:
        """The core closed itself (a DISCONNECT either way, a protocol error, the end)."""
        raise NotImplementedError

    def _deliver_batch(self, data: bytes) -> None:
        """The joined data of a run of :attr:`batched_event` events."""
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        if self.core is None or self.done:
            return
        self.core.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        """Handle the core's events until it needs data, waits for our answer, closes, or
        someone paused our input. A handler that calls back in here (by answering a
        pending request, say) only asks for another round, so events stay in order.
        A pause stops the handling at once, even one that comes while the batch is being
        delivered: what the core still holds (whole packets already read) waits for
        :meth:`_resume_input`, which pumps again, since the peer may send nothing more."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            while self.core is not None and not self.done:
                self._pump_again = False
                if self._input_pauses:
                    break
                event, self._held = self._held, None
                if event is None:
                    event = self.core.next_event()
                if type(event) is self.batched_event:
                    self._batch.append(event.data)
                    continue
                self._release_batch()
                if event is ev.NEED_DATA or event is ev.PAUSED or event is ev.CLOSED:
                    if self._pump_again:
                        continue
                    break
                # The batch's consumer is full: this event waits, unless it ended the
                # connection (an exit status, a disconnect), which must not wait for a
                # reader: the peer may hang up once it has our reply.
                if self._input_pauses and not self.core.closed:
                    self._held = event
                    break
                self._handlers[type(event)](event)
                self._flush()
            self._release_batch()
        finally:
            self._pumping = False
        self._flush()

    def _release_batch(self) -> None:
        if self._batch:
            data = b"".join(self._batch)
            self._batch.clear()
            self._deliver_batch(data)

    def _send_queued(self) -> None:
        """Write what the core queued for the peer."""
        if self.core is not None and self.transport is not None:
            data = self.core.data_to_send()
            if data:
                self.transport.write(data)

    def _flush(self) -> None:
        """Write what the core queued; once the core has closed, end the connection."""
        core = self.core
        if core is None:
            return
        self._send_queued()
        if core.closed and not self.done:
            self._core_closed(core.close_reason)

    def _pause_input(self, reason: str) -> None:
        """Stop reading the peer (and pulling events) until every reason is resumed."""
        if not self._input_pauses and self.transport is not None and not self.done:
            self.transport.pauseProducing()
        self._input_pauses.add(reason)

    def _resume_input(self, reason: str) -> None:
        if reason not in self._input_pauses:
            return
        self._input_pauses.discard(reason)
        if not self._input_pauses and self.transport is not None and not self.done:
            self.transport.resumeProducing()
            self._pump()
