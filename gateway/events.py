"""Gateway events: the structured log events the audit trail and the metrics are built from.

Any module reports something an auditor or an operator's dashboard cares about by logging
it through :func:`emit`: an ordinary ``twisted.logger`` event (so it shows in the log as a
readable line) that also carries ``audit_event`` = one of :data:`EVENT_NAMES` and the
event's fields as plain JSON-able keys. The audit trail (gateway.audit) and the metrics
(gateway.metrics) are log observers that pick out the events with that key; the modules
that emit know neither.

Fields never hold secrets: no password, no key material, no session data; names, addresses,
sizes, algorithm names and fingerprints only.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

# The key that marks a log event as a gateway event, and the field that names it.
EVENT_KEY = "audit_event"

LOGIN = "login"  # user, method, source, protocol, client_version
LOGIN_FAILED = "login_failed"  # user, method, source, protocol, client_version
SESSION_START = "session_start"  # session, user, target, source, protocol, command, forward, pty, recording
SESSION_END = "session_end"  # session, ... exit_status, bytes_in, bytes_out
SESSION_KILLED = "session_killed"  # session, user, target, source, by, by_uid, by_pid, by_instance, client_message
RECORDING_TRUNCATED = "recording_truncated"  # session, recording, reason
HOST_KEY_FIRST_SEEN = "host_key_first_seen"  # target, host, port, key_type, fingerprint
HOST_KEY_CHANGED = "host_key_changed"  # target, host, port, key_type, fingerprint, pinned
HOST_KEY_REFUSED = "host_key_refused"  # target, host, port, key_type, fingerprint, reason
PENALTY = "penalty"  # source, reason, seconds
CONFIG_RELOAD = "config_reload"  # source, result
WEAK_LEG = "weak_leg"  # leg ("client"/"upstream"), protocol, algorithm, what, user, target

EVENT_NAMES: tuple[str, ...] = (
    LOGIN,
    LOGIN_FAILED,
    SESSION_START,
    SESSION_END,
    SESSION_KILLED,
    RECORDING_TRUNCATED,
    HOST_KEY_FIRST_SEEN,
    HOST_KEY_CHANGED,
    HOST_KEY_REFUSED,
    PENALTY,
    CONFIG_RELOAD,
    WEAK_LEG,
)


def emit(log: Logger, name: str, text: str, **fields: Any) -> None:
    """Log gateway event ``name`` with ``text`` (a twisted.logger format string over
    ``fields``) as its readable line."""
    if name not in EVENT_NAMES:
        raise ValueError(f"unknown gateway event {name!r}")
    log.info(text, **{EVENT_KEY: name}, **fields)


def event_of(event: dict[str, Any]) -> str | None:
    """The gateway event name a log event carries, or None for an ordinary log event."""
    name = event.get(EVENT_KEY)
    return name if isinstance(name, str) else None
