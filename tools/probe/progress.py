"""The probe's progress bar on a terminal (stderr), redrawn in place."""

from __future__ import annotations

from typing import TextIO

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime


class ProgressBar:
    """``probe [#####.....] 5/10 3s`` redrawn in place on a terminal: at each finished
    host and once a second in between, so the elapsed time moves while hosts say nothing
    (the wait on a silent host is the longest one). ``clock`` is the reactor."""

    TICK = 1.0

    def __init__(self, stream: TextIO, clock: IReactorTime, width: int = 30) -> None:
        self.stream = stream
        self.clock = clock
        self.width = width
        self.started = clock.seconds()
        self.done = 0
        self.total = 0
        self._ticker = task.LoopingCall(self._draw)
        self._ticker.clock = clock

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if done >= total:
            self.stop()
        elif not self._ticker.running:
            self._ticker.start(self.TICK, now=False)
        self._draw()

    def stop(self) -> None:
        """No more redraws (the probe is over, or failed)."""
        if self._ticker.running:
            self._ticker.stop()

    def _draw(self) -> None:
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = self.clock.seconds() - self.started
        self.stream.write(f"\rprobe [{bar}] {self.done}/{self.total} {elapsed:.0f}s")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()
