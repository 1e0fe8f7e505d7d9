"""How an upstream failure reaches the user: :class:`UpstreamFailure` (one line for the
client's stderr) and :data:`FAILURE_STATUS` (the exit status that goes with it).

Its own module, below everything that raises or reports such failures (the bridge, the
target protocols, known_hosts, routing), so that none of them imports another just for
this error.
"""

from __future__ import annotations

FAILURE_STATUS = 255  # what OpenSSH's client reports for a connection-level failure


class UpstreamFailure(Exception):
    """A failure to show the user: ``str(exc)`` is one line, without secrets."""
