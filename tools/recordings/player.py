"""Replaying a recording: the output events (stdout, and stderr, which the recorder writes
as output too, as the client saw them on one terminal) written with the recording's timing,
faster with a speed factor, with long pauses cut to a maximum (as ``asciinema play
-s``/``-i`` do).

The clock, the sleep and the writer are parameters, so that the timing is tested without
waiting. Input and window-change events are not replayed: the player's terminal keeps its
own size (``play`` says when it is smaller than the recording's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tools.recordings.cast import OUTPUT, Event


@dataclass
class Timing:
    speed: float = 1.0  # > 0; 2.0 plays twice as fast
    max_idle: float | None = None  # a pause in the recording longer than this is cut to it


def schedule(events: Iterable[Event], timing: Timing) -> Iterable[tuple[float, Event]]:
    """Each played event with the time (seconds from the start of the replay) it is due.
    Times that go backwards in the file are taken as no pause at all."""
    previous = 0.0
    due = 0.0
    for event in events:
        if event.code != OUTPUT or not isinstance(event.data, str):
            continue
        pause = max(event.time - previous, 0.0)
        previous = max(previous, event.time)
        if timing.max_idle is not None:
            pause = min(pause, timing.max_idle)
        due += pause / timing.speed
        yield due, event


def play(
    events: Iterable[Event],
    write: Callable[[str], None],
    timing: Timing,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write each output event when it is due; returns how many were written. A
    KeyboardInterrupt (Ctrl-C) goes to the caller, which stops there."""
    started = clock()
    played = 0
    for due, event in schedule(events, timing):
        wait = started + due - clock()
        if wait > 0:
            sleep(wait)
        write(event.data)
        played += 1
    return played
