"""The gateway's life after start: the signals an operator sends, and the shutdown drain.

- ``SIGHUP`` asks the service (gateway.service.GatewayService) to reload its config;
- the first ``SIGTERM``/``SIGINT`` stops the reactor, whose shutdown waits for the
  :class:`Drain`: no new connections, every session's client told on stderr, a clean
  protocol DISCONNECT when the session ends or ``shutdown_grace`` runs out, then exit 0;
- a second ``SIGTERM``/``SIGINT`` ends it at once.

twistd's own SIGTERM/SIGINT handlers are replaced, because they make twistd re-raise the
signal after shutdown (the process would not exit 0), and it has none for SIGHUP, whose
default disposition kills the process without a word.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway.dispatch import DispatcherFactory, VersionDispatcher
from gateway.sd_notify import Notifier

log = Logger()

SHUTDOWN_REASON = "sshgateway is shutting down"
# After its DISCONNECT a connection normally closes at once; one whose peer does not read
# (so our DISCONNECT cannot be written) is dropped after this long.
CLOSE_WAIT = 5.0
# How often the drain looks for connections whose last session has ended.
SWEEP_INTERVAL = 1.0


def shutdown_message(grace: float) -> str:
    """The line every session's client reads on stderr when the drain starts."""
    return f"{SHUTDOWN_REASON}; this session ends in {grace:g} s"


class Drain:
    """Empties the gateway before it exits (the listeners are already closed).

    Connections that have no session (still exchanging versions, keys or credentials) are
    closed at once; every session's client gets :func:`shutdown_message` on stderr and
    its connection a clean DISCONNECT once it has no session left, or when ``grace``
    runs out. :meth:`start` returns a Deferred that fires when no connection is left.
    """

    def __init__(
        self,
        dispatcher: DispatcherFactory,
        clock: IReactorTime,
        grace: float,
        notifier: Notifier | None = None,
        close_wait: float = CLOSE_WAIT,
    ) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.grace = grace
        self.notifier = notifier
        self.close_wait = close_wait
        self.done: defer.Deferred[None] = defer.Deferred()
        self.closing: set[VersionDispatcher] = set()  # DISCONNECT sent
        self._grace_timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self._sweep_timer: IDelayedCall | None = None
        self._finished = False

    def start(self) -> defer.Deferred[None]:
        connections = list(self.dispatcher.connections)
        in_session = [c for c in connections if c.has_session()]
        log.info(
            "shutting down: {sessions} session(s) get up to {grace:g} s to end; closing "
            "{others} other connection(s) now",
            sessions=len(in_session),
            others=len(connections) - len(in_session),
            grace=self.grace,
        )
        if self.notifier is not None:
            self.notifier.stopping(self._status())
        message = shutdown_message(self.grace)
        for connection in in_session:
            connection.tell_sessions(message)
        self.dispatcher.close_watchers.append(self._connection_closed)
        self._sweep()
        if not self._finished:
            self._grace_timer = self.clock.callLater(self.grace, self._grace_over)
        return self.done

    def now(self) -> None:
        """Give up waiting: drop every connection that is left (a second SIGTERM)."""
        log.info(
            "second stop signal: closing {n} connection(s) now", n=len(self.dispatcher.connections)
        )
        for connection in list(self.dispatcher.connections):
            connection.abort()
        self._finish()

    def _status(self) -> str:
        return f"draining: {len(self.dispatcher.connections)} connection(s) left"

    def _close(self, connection: VersionDispatcher) -> None:
        if connection not in self.closing:
            self.closing.add(connection)
            connection.close_for_shutdown(SHUTDOWN_REASON)

    def _sweep(self) -> None:
        """Close every connection that has no session (any more)."""
        self._sweep_timer = None
        for connection in list(self.dispatcher.connections):
            if not connection.has_session():
                self._close(connection)
        self._check()
        if not self._finished:
            self._sweep_timer = self.clock.callLater(SWEEP_INTERVAL, self._sweep)

    def _grace_over(self) -> None:
        self._grace_timer = None
        left = list(self.dispatcher.connections)
        log.info("shutdown grace time over: disconnecting {n} connection(s)", n=len(left))
        for connection in left:
            self._close(connection)
        if not self._finished:
            self._abort_timer = self.clock.callLater(self.close_wait, self._abort_rest)

    def _abort_rest(self) -> None:
        self._abort_timer = None
        for connection in list(self.dispatcher.connections):
            connection.abort()
        self._finish()

    def _connection_closed(self, dispatcher: DispatcherFactory) -> None:
        if self.notifier is not None and not self._finished:
            self.notifier.status(self._status())
        self._check()

    def _check(self) -> None:
        if not self.dispatcher.connections:
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        for timer in (self._grace_timer, self._abort_timer, self._sweep_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._grace_timer = self._abort_timer = self._sweep_timer = None
        if self._connection_closed in self.dispatcher.close_watchers:
            self.dispatcher.close_watchers.remove(self._connection_closed)
        log.info("shutdown: every connection is closed")
        self.done.callback(None)


def install_signal_handlers(
    reactor: Any, reload: Callable[[], None], stop: Callable[[str], None]
) -> None:
    """SIGHUP -> ``reload()``; SIGTERM and SIGINT -> ``stop(name)``, both run in the
    reactor thread (a signal handler may interrupt the reactor anywhere)."""

    def on_hangup(number: int, frame: object) -> None:
        reactor.callFromThread(reload)

    def on_stop(number: int, frame: object) -> None:
        reactor.callFromThread(stop, signal.Signals(number).name)

    signal.signal(signal.SIGHUP, on_hangup)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
