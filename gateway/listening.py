"""Listening on an endpoint string now, and saying in one line why it cannot: what the
gateway's listeners (gateway.service) and its metrics endpoint (gateway.metrics) share;
and a worker process's listening on the socket its parent bound (gateway.workers).

An operator's mistake (port in use, wrong endpoint) is a :class:`ListenError` whose text
names the endpoint and the cause, with a hint for the usual ones; never a traceback.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet.error import CannotListenError

from gateway.proxy_protocol import ProxyHeaderFactory, server_endpoint


class ListenError(Exception):
    """An endpoint that cannot listen; the message says which and why, in one line. At
    start-up it ends the gateway (StartupFailure); at a reload that endpoint is skipped."""


_LISTEN_HINTS = {
    errno.EADDRINUSE: "another program listens there",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE",
    errno.EADDRNOTAVAIL: "no interface of this host has that address",
}


def listen_error(description: str, error: BaseException) -> str:
    """What went wrong listening on endpoint ``description``, in one line."""
    if description.split(":", 1)[0] == "systemd" and isinstance(error, (IndexError, KeyError)):
        # Twisted takes the sockets only when LISTEN_FDNAMES names them all (systemd
        # always does; systemd-socket-activate only with --fdname).
        return (
            f"cannot listen on {description}: systemd passed no such socket (start the "
            "gateway through its .socket unit, or systemd-socket-activate --fdname=NAME)"
        )
    if isinstance(error, CannotListenError):
        cause = error.socketError
        text = getattr(cause, "strerror", None) or str(cause)
        hint = _LISTEN_HINTS.get(getattr(cause, "errno", None))
        return f"cannot listen on {description}: {text}" + (f" ({hint})" if hint else "")
    if isinstance(error, OSError) and error.strerror:
        return f"cannot listen on {description}: {error.strerror}"
    return f"bad endpoint {description!r}: {error}"


def listen_now(reactor: Any, description: str, factory: Any) -> Any:
    """Listen on endpoint ``description`` with ``factory`` and return the port; raises
    ListenError (one line: what and why) when it cannot."""
    try:
        endpoint = server_endpoint(reactor, description)
    except Exception as e:  # the parser raises ValueError, KeyError, IndexError...
        raise ListenError(listen_error(description, e)) from None
    ports: list[Any] = []
    failures: list[Any] = []
    endpoint.listen(factory).addCallbacks(ports.append, failures.append)
    if failures:  # listening is synchronous for tcp/unix: fail loudly, at once
        raise ListenError(listen_error(description, failures[0].value))
    if not ports:
        raise ListenError(f"cannot listen on {description}: the endpoint did not answer")
    return ports[0]


def adopt_listening_socket(reactor: Any, description: str, fd: int, factory: Any) -> Any:
    """Serve ``factory`` on the listening socket ``fd`` the parent bound for endpoint
    ``description``: ``haproxy:`` endpoints read the PROXY header first, as in one process."""
    probe = socket.socket(fileno=os.dup(fd))  # the family of the inherited socket
    family = probe.family
    probe.close()
    if description.partition(":")[0].lower() == "haproxy":
        factory = ProxyHeaderFactory(factory)
    return reactor.adoptStreamPort(fd, family, factory)
