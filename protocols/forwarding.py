"""Port forwarding destinations: the one ``"host:port"`` rule both front ends share.

Owns how a ``permit_open`` entry is written and parsed (``host:port``, an IPv6 address in
brackets: ``[::1]:22``) and when a requested destination matches one: the host compared
without case and without brackets, the port exactly. SSH-1's ``-L`` (``[ssh1]
permit_open``) and SSH-2's ``direct-tcpip`` (a user's ``permit_open``, and a target's
name, ``host`` and ``aliases``) all match hosts with :func:`same_host`.

Plain data: no Twisted, no gateway imports (the SSH-1 core's side of the layering).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_HOST = 255


class ForwardRefused(Exception):
    """A forwarding request is refused; the message is for the log, not the client."""


def split_host_port(item: str) -> tuple[str, int] | None:
    """``"host:port"`` -> ``("host", port)``; ``"[::1]:22"`` -> ``("::1", 22)``; None when
    ``item`` is not of that form (no port, port not 1-65535, empty or spaced host)."""
    host, sep, port = item.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not sep
        or not host
        or len(host) > MAX_HOST
        or any(c.isspace() for c in host)
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        return None
    return host, int(port)


def host_port(host: str, port: int) -> str:
    """The destination as log lines and ``permit_open`` write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def same_host(a: str, b: str) -> bool:
    """Whether two host names (or addresses) are the same: DNS names have no case."""
    return a.strip("[]").lower() == b.strip("[]").lower()


def permits(entries: Iterable[str], host: str, port: int) -> bool:
    """Whether ``host:port`` is one of the ``permit_open`` ``entries``."""
    for entry in entries:
        parsed = split_host_port(entry)
        if parsed is not None and parsed[1] == port and same_host(parsed[0], host):
            return True
    return False


__all__ = ["ForwardRefused", "host_port", "permits", "same_host", "split_host_port"]
