"""The gateway's log as JSON lines (``log_format = "json"``, ``twistd sshgateway --log-format
json``): one plain object per event, for log shippers and ``jq``.

Each line holds ``time`` (ISO 8601, UTC), ``level``, ``namespace`` (the logger: a module or
class name), ``message`` (the text a text log shows), ``system`` (Twisted's legacy context,
when it says more than ``-``), then the event's own fields. A connection's record
(:class:`protocols.record.ConnectionRecord`, logged when the connection closes) becomes
fields of their own: ``peer``, ``protocol``, ``client_version``, ``user``,
``auth_method``, ``auth_result``, ``algorithms``, ``bytes_in``, ``bytes_out``,
``duration``, ``close_reason``..., and, from its flow recorder (when ``[flows]`` is on),
``flow_id``, ``target``, ``stage`` (the last one reached) and ``exit_status``. A failure
adds ``error`` and ``traceback``. Twisted's own serialisation (``eventAsJSON``) is not used:
it writes Twisted's internal keys for a reader that is Twisted again.

twistd chooses its log observer after the plugin made the service, from the application
(``ILogObserver``, as a ``.tac`` file would set it): :func:`json_logging` hands the
observer over that way, writing where twistd's text log would have gone (``--logfile``,
stdout with ``-n``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.application import service
from twisted.logger import FileLogObserver, ILogObserver, LogEvent, Logger, formatEvent
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from protocols.record import ConnectionRecord

_log = Logger()
_MAX_DEPTH = 4
# Keys of Twisted's legacy events (twisted.python.log) that the fixed fields already say.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "why", "failure"})
_FIXED = ("time", "level", "namespace", "message", "system")


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can hold it: containers recursively, anything else as text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return value.decode("ascii", "backslashreplace")
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {str(k): _plain(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [_plain(v, depth + 1) for v in value]
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


# For the other JSON writers of log events (gateway.audit).
plain = _plain


def record_fields(record: ConnectionRecord) -> dict[str, Any]:
    """A connection record as log fields (never secrets: the record holds none)."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if f.name in ("flow", "started"):  # the recorder; a monotonic clock reading
            continue
        fields[f.name] = _plain(getattr(record, f.name))
    fields["duration"] = round(record.duration(), 3)
    flow = record.flow
    if flow is not None:
        summary = flow.to_dict()
        reached = [s["name"] for s in summary["stages"] if s["start"] is not None]
        fields["flow_id"] = summary["id"]
        fields["target"] = summary["target"]
        fields["stage"] = reached[-1] if reached else None
        fields["exit_status"] = summary["exit_status"]
        if "exit_signal" in summary:
            fields["exit_signal"] = summary["exit_signal"]
    return fields


def event_fields(event: LogEvent) -> dict[str, Any]:
    """The JSON object of one log event (see the module docstring)."""
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(
            timespec="microseconds"
        ),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    system = event.get("log_system")
    if system and system != "-":
        out["system"] = _plain(system)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        out["error"] = failure.getErrorMessage()
        out["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in out:
            continue
        if isinstance(value, ConnectionRecord):
            for name, field_value in record_fields(value).items():
                out.setdefault(name, field_value)
        else:
            out[key] = _plain(value)
    if any(isinstance(v, ConnectionRecord) for v in event.values()):
        out.pop("summary", None)  # the record's own fields say it; the message has the text
    return out


def json_line(event: LogEvent) -> str:
    """One line of JSON (ASCII; newlines inside values are escaped)."""
    try:
        return json.dumps(event_fields(event)) + "\n"
    except Exception as e:  # an observer must never raise: Twisted would drop it
        return json.dumps({"message": formatEvent(event), "format_error": repr(e)}) + "\n"


def json_file_observer(out: IO[str]) -> ILogObserver:
    return FileLogObserver(out, json_line)


def twistd_log_file(twistd_options: Mapping[str, Any]) -> IO[str] | None:
    """Where twistd's text log would go, by its options (as ``UnixAppLogger`` decides:
    ``--logfile FILE``, stdout with ``--logfile=-`` or ``-n``, else ``twistd.log``); None
    with ``--syslog``."""
    if twistd_options.get("syslog"):
        return None
    name = twistd_options.get("logfile") or ""
    if name == "-" or (twistd_options.get("nodaemon") and not name):
        if not twistd_options.get("nodaemon"):
            sys.exit("Daemons cannot log to stdout, exiting!")
        return sys.stdout  # the real one: twistd redirects sys.stdout into the log later
    from twisted.python.logfile import LogFile

    log_file = LogFile.fromFullPath(name or "twistd.log")
    import signal

    if not signal.getsignal(signal.SIGUSR1):  # twistd's convention: SIGUSR1 rotates

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return log_file


class _ObserverHandover(service.MultiService):
    """Holds the gateway's service; added to twistd's application, it sets the
    application's log observer, which twistd then logs to instead of its text one."""

    def __init__(self, inner: service.IService, observer: ILogObserver) -> None:
        super().__init__()
        self.observer = observer
        inner.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> Any:
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        return super().setServiceParent(parent)


def json_logging(top: service.IService, twistd_options: Mapping[str, Any]) -> service.IService:
    """``top`` arranged to log JSON lines under twistd (``twistd_options``: twistd's own
    options, the plugin options' parent)."""
    out = twistd_log_file(twistd_options)
    if out is None:
        _log.warn("log_format json is not used with --syslog: syslog gets text")
        return top
    return _ObserverHandover(top, json_file_observer(out))
