"""CorePump, the event loop both SSH-1 protocols share, against a scripted core."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from twisted.internet.testing import StringTransport

from protocols.ssh1 import events as ev
from protocols.ssh1.pump import CorePump


@dataclass(frozen=True)
class Chunk(ev.Event):
    data: bytes


@dataclass(frozen=True)
class Mark(ev.Event):
    name: str


class ScriptedCore:
    def __init__(self, *events: ev.Event) -> None:
        self.events = deque(events)
        self.out = b""
        self.closed = False
        self.close_reason = ""

    def receive_data(self, data: bytes) -> None:
        pass

    def next_event(self) -> ev.Event:
        return self.events.popleft() if self.events else ev.NEED_DATA

    def data_to_send(self) -> bytes:
        out, self.out = self.out, b""
        return out


class Pump(CorePump):
    batched_event = Chunk

    def __init__(self, core: ScriptedCore) -> None:
        super().__init__()
        self.core = core  # type: ignore[assignment]
        self.seen: list[object] = []
        self.closed_reasons: list[str] = []
        self._handlers = {Mark: self._on_mark}

    def _on_mark(self, event: Mark) -> None:
        self.seen.append(event.name)
        self.core.out += event.name.encode()  # type: ignore[union-attr]
        self._pump()  # re-entry only asks for another round

    def _deliver_batch(self, data: bytes) -> None:
        self.seen.append(data)

    def _core_closed(self, reason: str) -> None:
        self.done = True
        self.closed_reasons.append(reason)


def make(*events: ev.Event) -> tuple[Pump, StringTransport]:
    pump = Pump(ScriptedCore(*events))
    transport = StringTransport()
    pump.makeConnection(transport)
    return pump, transport


def test_batches_are_joined_and_delivered_in_order():
    pump, transport = make(Chunk(b"a"), Chunk(b"b"), Mark("x"), Chunk(b"c"), Mark("y"), Chunk(b"d"))
    pump.dataReceived(b"")
    assert pump.seen == [b"ab", "x", b"c", "y", b"d"]
    assert transport.value() == b"xy"


def test_paused_input_pulls_no_events_until_every_reason_resumed():
    pump, transport = make(Mark("x"))
    pump._pause_input("one")
    pump._pause_input("two")
    assert transport.producerState == "paused"
    pump.dataReceived(b"")
    assert pump.seen == []
    pump._resume_input("one")
    assert pump.seen == [] and transport.producerState == "paused"
    pump._resume_input("two")
    assert pump.seen == ["x"] and transport.producerState == "producing"


def test_core_close_is_reported_once():
    pump, _transport = make(Mark("x"))
    pump.core.closed = True  # type: ignore[union-attr]
    pump.core.close_reason = "bye"  # type: ignore[union-attr]
    pump._flush()
    pump._flush()
    assert pump.closed_reasons == ["bye"] and pump.done
