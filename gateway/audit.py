"""The audit trail: every gateway event (gateway.events) as one JSON line in
``<state_dir>/audit/audit.jsonl`` and, when configured, in syslog (journald).

- :class:`AuditTrail` is a ``twisted.logger`` observer. The gateway service adds it to the
  global log publisher when it starts and removes it when it has stopped; it picks out
  the log events that carry ``audit_event`` and ignores every other one. Each becomes
  ``{"time": ISO 8601 UTC, "event": NAME, ...the event's own fields}``, written by the
  shared rotating writer (gateway.jsonl, rotated as the flow records are) and, with
  ``[audit] syslog = true``, sent to the local syslog socket (:class:`SyslogSink`).
- :class:`AuditTap` is the session tap (gateway.session_tap) that emits ``session_start``
  and ``session_end`` for every session, and the ``weak_leg`` events of its client leg
  (the upstream leg's are emitted by the bridge once the device session is open).

Emitters never call this module: they log through :func:`gateway.events.emit`. Fields
hold no secrets (gateway.events' rule); this module adds none.

Writes happen in the reactor thread: one ``O_APPEND`` write of a short line per event,
and one non-blocking datagram to syslog. A failure is logged (with ``write_error =
"audit"``) and counted in :attr:`AuditTrail.write_errors`; it never reaches the emitter,
so a full disk never breaks a login or a session.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.logger import ILogObserver, LogEvent, Logger
from zope.interface import implementer

from gateway.events import EVENT_KEY, SESSION_END, SESSION_START, emit, event_of
from gateway.jsonl import WRITE_ERROR_KEY, RotatingJSONLines
from gateway.logformat import plain
from gateway.session_tap import EndObserver, ISessionObserver, ISessionTap, LiveSession
from gateway.weak_algorithms import report_weak_leg
from protocols.flow import open_flow
from protocols.session_values import ExitInfo

log = Logger()

AUDIT_DIR = "audit"
AUDIT_FILE = "audit.jsonl"
SYSLOG_SOCKET = "/dev/log"
SYSLOG_IDENT = "sshgateway-audit"
# Keys of Twisted's legacy log events that are no event field.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "why", "failure"})
# syslog facility numbers (RFC 5424), as ``[audit] syslog_facility`` names them.
_FACILITIES = {"auth": 4, "authpriv": 10, "daemon": 3, "user": 1} | {
    f"local{i}": 16 + i for i in range(8)
}
_INFO, _WARNING = 6, 4
# Events an operator should see among warnings in syslog.
_WARNING_EVENTS = frozenset(
    {"login_failed", "host_key_changed", "host_key_refused", "weak_leg", "recording_truncated"}
)


def audit_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / AUDIT_DIR


def audit_record(event: LogEvent) -> dict[str, Any] | None:
    """The audit line of a log event: time, event name, then its fields; None for a log
    event that is no gateway event."""
    name = event_of(event)
    if name is None:
        return None
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", time.time()), UTC).isoformat(
            timespec="microseconds"
        ),
        "event": name,
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key == EVENT_KEY or key in record:
            continue
        record[key] = plain(value)
    return record


class SyslogSink:
    """Sends audit lines to the local syslog daemon (journald under systemd) over its
    datagram socket, never blocking: a message the socket cannot take now is dropped and
    counted. The socket is opened at the first message and again after an error."""

    def __init__(self, facility: str = "authpriv", path: str = SYSLOG_SOCKET) -> None:
        self.facility = _FACILITIES[facility]
        self.path = path
        self.errors = 0
        self._socket: socket.socket | None = None

    def send(self, record: dict[str, Any]) -> bool:
        severity = _WARNING if record.get("event") in _WARNING_EVENTS else _INFO
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
        stamp = time.strftime("%b %e %H:%M:%S")
        message = f"<{self.facility * 8 + severity}>{stamp} {SYSLOG_IDENT}[{os.getpid()}]: {line}"
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                try:
                    sock.connect(self.path)
                except OSError:
                    sock.close()
                    raise
                self._socket = sock
            self._socket.send(message.encode("ascii"))
        except OSError as exc:
            self.errors += 1
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.close()  # the daemon restarted, or is gone: reconnect next time
            log.error(
                "cannot send audit record to syslog ({path}): {error}",
                path=self.path,
                error=exc,
                **{WRITE_ERROR_KEY: "audit-syslog"},
            )
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


@implementer(ILogObserver)
class AuditTrail:
    """The log observer that writes gateway events to the audit file and syslog."""

    def __init__(
        self, state_dir: str | os.PathLike[str], settings: Any, *, syslog_path: str = SYSLOG_SOCKET
    ) -> None:
        self.directory = audit_dir(state_dir)
        self.syslog_path = syslog_path
        self.writer: RotatingJSONLines | None = None
        self.syslog: SyslogSink | None = None
        self._failed_writes = 0  # of writers replaced by a reload
        self.configure(settings)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> AuditTrail:
        return cls(config.state_dir, config.audit, **kwargs)

    @property
    def write_errors(self) -> int:
        """Audit records that could not be written (file or syslog), since start."""
        writer = self.writer.write_errors if self.writer is not None else 0
        syslog = self.syslog.errors if self.syslog is not None else 0
        return self._failed_writes + writer + syslog

    def configure(self, settings: Any) -> None:
        """Use ``settings`` (an ``[audit]`` table, gateway.config.AuditConfig) from now on."""
        self._failed_writes = self.write_errors
        self.writer = (
            RotatingJSONLines(
                self.directory, AUDIT_FILE, settings.max_bytes, settings.keep, what="audit"
            )
            if settings.enabled
            else None
        )
        if self.syslog is not None:
            self.syslog.close()
        self.syslog = (
            SyslogSink(settings.syslog_facility, self.syslog_path) if settings.syslog else None
        )

    def reconfigure(self, config: Any) -> None:
        """A reloaded config (GatewayService.reload)."""
        self.configure(config.audit)

    def __call__(self, event: LogEvent) -> None:
        if EVENT_KEY not in event:
            return  # the common case: an ordinary log line
        try:
            record = audit_record(event)
            if record is None:
                return
            if self.writer is not None:
                self.writer.write(record)
            if self.syslog is not None:
                self.syslog.send(record)
        except Exception:  # an observer must never raise into whoever logged
            self._failed_writes += 1
            log.failure("audit trail: cannot record an event", **{WRITE_ERROR_KEY: "audit"})

    def close(self) -> None:
        if self.syslog is not None:
            self.syslog.close()


# --------------------------------------------------------------------------- sessions


def _session_fields(session: LiveSession) -> dict[str, Any]:
    info = session.info
    return {
        "session": info.session_id,
        "user": info.username,
        "target": info.target,
        "target_protocol": info.target_protocol,
        "source": info.source,
        "protocol": info.front_protocol,
        "flow_id": info.flow_id,
        "command": info.command_text,
        "subsystem": info.subsystem,
        "forward": info.forward,
        "pty": info.pty is not None,
        "recording": session.recording,
    }


class _SessionEnd(EndObserver):
    """Waits for one session's end to emit ``session_end``; ignores its data."""

    def __init__(self, session: LiveSession) -> None:
        self.session = session

    def ended(self, info: ExitInfo | None) -> None:
        session = self.session
        fields = _session_fields(session)
        fields.update(
            exit_status=info.status if info is not None else None,
            exit_signal=info.signal if info is not None else None,
            bytes_in=session.bytes_from_client,
            bytes_out=session.bytes_to_client,
            duration=round(max(0.0, time.time() - session.info.started), 3),
            terminated_by=session.terminated_by,
        )
        how = (
            "client left"
            if info is None
            else f"signal {info.signal}"
            if info.signal is not None
            else f"exit {info.status}"
        )
        emit(
            log,
            SESSION_END,
            "session {session} of {user} on {target} ended ({how}): {bytes_in} bytes in, "
            "{bytes_out} out",
            how=how,
            **fields,
        )


@implementer(ISessionTap)
class AuditTap:
    """Emits ``session_start``/``session_end`` for every session, and the client leg's
    ``weak_leg`` events. Registered after the recorder's tap, so ``session.recording``
    names the recording file when there is one."""

    def session_started(self, session: LiveSession) -> ISessionObserver:
        fields = _session_fields(session)
        what = (
            f"forward to {fields['forward']}"
            if fields["forward"] is not None
            else f"command {fields['command']!r}"
            if fields["command"] is not None
            else f"subsystem {fields['subsystem']}"
            if fields["subsystem"]
            else "shell"
        )
        emit(
            log,
            SESSION_START,
            "session {session}: {user} from {source} on {target} ({what}, pty {pty})",
            what=what,
            **fields,
        )
        info = session.info
        flow = open_flow(info.flow_id)
        if flow is not None:
            report_weak_leg(
                "client",
                flow.protocol,
                flow.negotiated,
                user=info.username,
                target=info.target,
                session=info.session_id,
                flow_id=info.flow_id,
            )
        return _SessionEnd(session)


__all__ = [
    "AUDIT_DIR",
    "AUDIT_FILE",
    "AuditTap",
    "AuditTrail",
    "SyslogSink",
    "audit_dir",
    "audit_record",
]
