"""How an upstream failure reaches the user: :class:`UpstreamFailure` (one line for the
client's stderr) and :data:`FAILURE_STATUS` (the exit status that goes with it), and the
reasons a failure is counted under (``reason``, :data:`FAILURE_KEY`).

Its own module, below everything that raises or reports such failures (the bridge, the
target protocols, known_hosts, routing), so that none of them imports another just for
this error.
"""

from __future__ import annotations

FAILURE_STATUS = 255  # what OpenSSH's client reports for a connection-level failure


class UpstreamFailure(Exception):
    """A failure to show the user: ``str(exc)`` is one line, without secrets. ``reason``
    names the kind of failure for counting (the metrics); subclasses narrow it."""

    reason = "open-failed"  # the session could not be opened (unreachable, refused, login...)


# Why an upstream session failed, as the bridge reports it (gateway.targets.bridge) in the
# FAILURE_KEY field of its end-of-session log event: an UpstreamFailure's ``reason`` while
# opening, or one of these.
FAILURE_KEY = "upstream_failure"
TIMEOUT = "timeout"  # no session within connect_timeout
LOST = "lost"  # the open session failed (connection lost, protocol error)
IDLE = "idle"  # closed after idle_timeout
INTERNAL = "internal"  # an unexpected error in the gateway
