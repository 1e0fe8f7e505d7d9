"""One probe connection: what every attempt shares (:class:`Attempt`: a Deferred that
fires once the connection is gone, whatever happened, and the reason it ended early), and
running one to a deadline (:func:`run_attempt`), connection failures recorded on it as
reasons, never raised."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, error
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

SOFTWARE = "sshgateway_probe"  # the software part of both identification lines we send


class Attempt:
    """What every probe connection shares: a Deferred that fires with the attempt once
    the connection is gone, whatever happened, and the reason it ended early if it did."""

    finished: defer.Deferred
    error: str | None
    identification: str | None
    timed_out: bool
    refused: bool

    def _init_attempt(self) -> None:
        self.finished = defer.Deferred()
        self.error = None
        self.identification = None
        self.timed_out = False
        self.refused = False

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason

    def _done(self) -> None:
        if not self.finished.called:
            self.finished.callback(self)


Connect = Callable[[Any, str, int, Protocol, float], defer.Deferred]


def tcp_connect(
    reactor: Any, host: str, port: int, protocol: Protocol, timeout: float
) -> defer.Deferred:
    endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=max(timeout, 0.1))
    return endpoints.connectProtocol(endpoint, protocol)


def run_attempt(
    reactor: IReactorTime, connect: Connect, host: str, port: int, attempt: Any, deadline: float
) -> defer.Deferred:
    """Connect ``attempt`` and fire with it once it is over or ``deadline`` (reactor
    seconds) passed; connection failures are recorded on it, never raised."""
    timeout = max(deadline - reactor.seconds(), 0.0)
    result: defer.Deferred = defer.Deferred()
    connecting = connect(reactor, host, port, attempt, timeout)

    def expire() -> None:
        attempt.timed_out = True
        attempt._fail(f"no answer within {timeout:g} s")
        if attempt.transport is not None and getattr(attempt, "connected", 0):
            attempt.transport.abortConnection()
        elif not connecting.called:
            connecting.cancel()
        else:
            attempt._done()

    timer = reactor.callLater(timeout, expire)

    def connect_failed(failure: Failure) -> Any:
        if failure.check(error.ConnectionRefusedError):
            attempt.refused = True
            attempt._fail("connection refused")
        elif failure.check(defer.CancelledError, error.TimeoutError):
            attempt.timed_out = True
            attempt._fail(f"no answer within {timeout:g} s")
        elif failure.check(error.DNSLookupError):
            attempt._fail("host name not found")
        else:
            attempt._fail(f"cannot connect: {failure.getErrorMessage()}")
        attempt._done()
        return attempt.finished

    connecting.addCallbacks(lambda _: attempt.finished, connect_failed)

    def settled(value: Any) -> None:
        if timer.active():
            timer.cancel()
        result.callback(attempt)

    connecting.addBoth(settled)
    return result
