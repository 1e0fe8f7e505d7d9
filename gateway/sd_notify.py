"""systemd's readiness protocol: datagrams to ``$NOTIFY_SOCKET`` (sd_notify(3)).

Owns the wire side only: which address (a path, or ``@name`` for the abstract namespace),
the ``KEY=value`` lines, and that a vanished socket never fails the gateway. What to say
when (READY, RELOADING, STOPPING, STATUS) is decided by :mod:`gateway.service`.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping

from twisted.logger import Logger

log = Logger()

ENV = "NOTIFY_SOCKET"


def socket_address(value: str) -> str | None:
    """The ``AF_UNIX`` address ``$NOTIFY_SOCKET`` names: a path, or ``@name`` for an
    abstract socket (Linux spells those with a leading NUL); None for what systemd would
    not send to either (empty, or relative)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: what ``RELOADING=1`` carries as MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends state lines to the service manager; does nothing outside systemd.

    The variable is taken out of the environment (as ``sd_notify(unset_environment=1)``
    does) so that programs the gateway starts cannot speak for it.
    """

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        value = environ.pop(ENV, "")
        self.address = socket_address(value) if value else None
        if value and self.address is None:
            log.warn("ignoring {env}={value!r}: not a socket path or @name", env=ENV, value=value)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False when not sent (no socket, or
        the socket is gone: logged once, never raised)."""
        if self.address is None or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self.address)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warn("cannot notify the service manager: {error}", error=e.strerror or e)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self, status: str = "reloading the configuration") -> bool:
        # Type=notify-reload wants the time the reload began, so that it can tell this
        # reload's READY=1 from an earlier one.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")
