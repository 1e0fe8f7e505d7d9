"""Metrics: the gateway's counters, served to Prometheus on ``/metrics``.

:class:`GatewayMetrics` owns one ``CollectorRegistry`` per gateway (not prometheus_client's
process-wide default, so that two gateways in one process, as in the tests, count apart)
and fills it from what the gateway already says, without calls spread over its modules:

- log events (:meth:`GatewayMetrics.observe`, a twisted.logger observer): the dispatcher's
  closing event of each connection (its ConnectionRecord: protocol, result, bytes, and
  the handshake time from its flow record), the refusal at accept, the gateway events
  (gateway.events) LOGIN, LOGIN_FAILED, PENALTY and RECORDING_TRUNCATED, the bridge's
  end-of-session event when it carries ``upstream_failure`` (a reason of
  gateway.upstream_errors), and any event carrying ``write_error`` (the name of a writer
  that failed: "flows", "audit", "recording");
- the session tap (gateway.session_tap): sessions open by front and target protocol, and
  at each session's end its bytes and whether it left a recording.

Nothing here runs per packet: each connection, login and session is counted once, at its
event. Label values come only from small fixed sets (a client's made-up method name
becomes "other"), so that no client can grow the registry.

:class:`MetricsService` serves the registry in the Prometheus text format with
prometheus_client's Twisted resource on ``[metrics] listen``, as a child service of the
gateway, and keeps the log observer registered while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.application import service
from twisted.logger import ILogObserver, LogEvent, Logger, LogPublisher, globalLogPublisher
from twisted.web.server import Site
from zope.interface import implementer

from gateway import events, upstream_errors
from gateway.dispatch import VersionDispatcher
from gateway.listening import ListenError, listen_now
from gateway.penalties import _REASONS as PENALTY_TEXTS  # kind -> the words its log line uses
from gateway.penalties import KINDS as PENALTY_KINDS
from gateway.session_tap import EndObserver, ISessionObserver, ISessionTap, LiveSession
from protocols.record import ConnectionRecord
from protocols.session import ExitInfo

log = Logger()

PREFIX = "sshgateway"
METRICS_PATH = b"metrics"

# The key of a log event that reports a failed write, and its values (documented in the
# README: the audit trail's writer logs its write errors with write_error="audit").
WRITE_ERROR_KEY = "write_error"
WRITERS = ("flows", "audit", "audit-syslog", "recording")

# Handshake times: a few milliseconds on loopback to seconds over slow links (and a
# client whose user is asked to accept a new host key).
HANDSHAKE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

PROTOCOLS = ("ssh1", "ssh2")
TARGET_PROTOCOLS = ("local", "ssh1", "ssh2", "telnet", "tcp")  # tcp: jump-host forwards
AUTH_METHODS = (
    "password",
    "publickey",
    "keyboard-interactive",
    "none",
    "hostbased",
    "gssapi-with-mic",
    "rsa",  # SSH-1 RSA
    "tis",
    "rhosts",
    "rhosts-rsa",
)
UPSTREAM_REASONS = (
    "open-failed",
    "host-key-changed",
    "host-key-unknown",
    "host-key-revoked",
    "known-hosts-unusable",
    "timeout",
    "lost",
    "idle",
    "internal",
)
UNKNOWN = "unknown"
OTHER = "other"


def _one_of(value: Any, known: tuple[str, ...], otherwise: str = OTHER) -> str:
    return value if isinstance(value, str) and value in known else otherwise


def protocol_label(value: Any) -> str:
    """ "ssh1", "ssh2", or "unknown" (no version line yet)."""
    return _one_of(value, PROTOCOLS, UNKNOWN)


def method_label(value: Any) -> str:
    """An authentication method name, or the "+"-joined methods of a multi-step login;
    names outside :data:`AUTH_METHODS` become "other"."""
    if not isinstance(value, str) or not value:
        return UNKNOWN
    parts = dict.fromkeys(_one_of(part, AUTH_METHODS) for part in value.split("+"))
    return "+".join(parts)


def penalty_label(value: Any) -> str:
    """A penalty's kind (gateway.penalties: authfail, noauth, malformed, grace-exceeded),
    given as the kind or as the words the penalty book logs for it."""
    if value in PENALTY_KINDS:
        return str(value)
    return next((kind for kind, text in PENALTY_TEXTS.items() if value == text), OTHER)


@implementer(ISessionTap)
class GatewayMetrics:
    """One gateway's metrics in their own registry (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Counter(
            f"{PREFIX}_connections",
            "Connections closed, by protocol and result (success: logged in; failure: "
            "authentication failed; noauth: left before authenticating; refused: refused at "
            "accept by the limits or a penalty)",
            ["protocol", "result"],
            registry=r,
        )
        self.connection_bytes = Counter(
            f"{PREFIX}_connection_bytes",
            "Bytes on the client connections, counted when each closes (in: from the "
            "client; out: to the client)",
            ["protocol", "direction"],
            registry=r,
        )
        self.handshake = Histogram(
            f"{PREFIX}_handshake_seconds",
            "Time from accept to the end of the key exchange (the client's first "
            "authentication message), observed when the connection closes; from the flow "
            "record, so only while [flows] is on",
            ["protocol"],
            buckets=HANDSHAKE_BUCKETS,
            registry=r,
        )
        self.logins = Counter(
            f"{PREFIX}_logins",
            "Login attempts (LOGIN and LOGIN_FAILED events), by protocol, method and result",
            ["protocol", "method", "result"],
            registry=r,
        )
        self.sessions_active = Gauge(
            f"{PREFIX}_sessions_active",
            "Sessions open now, by front protocol and target protocol",
            ["front_protocol", "target_protocol"],
            registry=r,
        )
        self.sessions = Counter(
            f"{PREFIX}_sessions",
            "Sessions opened, by front protocol and target protocol",
            ["front_protocol", "target_protocol"],
            registry=r,
        )
        self.session_bytes = Counter(
            f"{PREFIX}_session_bytes",
            "Session data, counted when each session ends (to_client: the program's output; "
            "from_client: the client's input)",
            ["front_protocol", "target_protocol", "direction"],
            registry=r,
        )
        self.upstream_failures = Counter(
            f"{PREFIX}_upstream_failures",
            "Upstream sessions that failed, by target and reason",
            ["target", "reason"],
            registry=r,
        )
        self.penalties = Counter(
            f"{PREFIX}_penalties",
            "Penalties given to sources (PENALTY events), by reason",
            ["reason"],
            registry=r,
        )
        self.recordings = Counter(
            f"{PREFIX}_recordings",
            "Sessions that ended with a recording file",
            registry=r,
        )
        self.recordings_truncated = Counter(
            f"{PREFIX}_recordings_truncated",
            "Recordings marked truncated (RECORDING_TRUNCATED events)",
            registry=r,
        )
        self.write_errors = Counter(
            f"{PREFIX}_write_errors",
            "Failed writes of the flow records, the audit trail or recordings, by writer",
            ["writer"],
            registry=r,
        )
        self.targets: frozenset[str] = frozenset()
        self._failed = False

    def watch_store(self, store: Any) -> None:
        """The shared store's write queue (gateway.store.worker.StoreWorker), read at each
        scrape: writes held now, writes dropped ever, and whether the database answers."""
        r = self.registry
        Gauge(
            f"{PREFIX}_store_queued_writes",
            "Writes (flows, audit events, penalties, pins) waiting for the shared database",
            registry=r,
        ).set_function(lambda: store.queued)
        Gauge(
            f"{PREFIX}_store_dropped_writes",
            "Writes dropped since start because the queue for the shared database was full",
            registry=r,
        ).set_function(lambda: store.dropped)
        Gauge(
            f"{PREFIX}_store_up",
            "1 while the shared database answers, 0 while writes are queued",
            registry=r,
        ).set_function(lambda: 1 if store.up else 0)

    def reconfigure(self, config: Any) -> None:
        """The configured target names (the only ones used as label values)."""
        self.targets = frozenset(getattr(config, "targets", {}))

    # -- log events ------------------------------------------------------------------

    def observe(self, event: LogEvent) -> None:
        """A twisted.logger observer: count what ``event`` reports, if anything. Never
        raises (a failure is logged once)."""
        try:
            self._observe(event)
        except Exception:
            if not self._failed:
                self._failed = True
                log.failure("metrics: cannot count a log event; later failures are silent")

    def _observe(self, event: LogEvent) -> None:
        name = events.event_of(event)
        if name is not None:
            self._gateway_event(name, event)
            return
        record = event.get("record")
        if isinstance(record, ConnectionRecord) and event.get("log_namespace") == _DISPATCH:
            self._connection(record, refused=bool(event.get("refused")))
            return
        reason = event.get(upstream_errors.FAILURE_KEY)
        if reason is not None:
            target = event.get("target")
            self.upstream_failures.labels(
                target if target in self.targets else OTHER, _one_of(reason, UPSTREAM_REASONS)
            ).inc()
            return
        writer = event.get(WRITE_ERROR_KEY)
        if writer is not None:
            self.write_errors.labels(_one_of(writer, WRITERS)).inc()

    def _gateway_event(self, name: str, event: LogEvent) -> None:
        if name in (events.LOGIN, events.LOGIN_FAILED):
            self.logins.labels(
                protocol_label(event.get("protocol")),
                method_label(event.get("method")),
                "success" if name == events.LOGIN else "failure",
            ).inc()
        elif name == events.PENALTY:
            self.penalties.labels(penalty_label(event.get("reason"))).inc()
        elif name == events.RECORDING_TRUNCATED:
            self.recordings_truncated.inc()

    def _connection(self, record: ConnectionRecord, refused: bool) -> None:
        protocol = protocol_label(record.protocol)
        if refused:
            result = "refused"
        else:
            result = _one_of(record.auth_result, ("success", "failure"), "noauth")
        self.connections.labels(protocol, result).inc()
        self.connection_bytes.labels(protocol, "in").inc(record.bytes_in)
        self.connection_bytes.labels(protocol, "out").inc(record.bytes_out)
        flow = record.flow
        if flow is not None:
            keyed = flow.stage_start("auth")
            if keyed is not None:
                self.handshake.labels(protocol).observe(keyed)

    # -- sessions (ISessionTap) ------------------------------------------------------

    def session_started(self, session: LiveSession) -> ISessionObserver:
        info = session.info
        labels = (
            protocol_label(info.front_protocol),
            _one_of(info.target_protocol, TARGET_PROTOCOLS),
        )
        self.sessions.labels(*labels).inc()
        self.sessions_active.labels(*labels).inc()
        return _SessionEnd(self, session, labels)

    def _session_ended(self, session: LiveSession, labels: tuple[str, str]) -> None:
        self.sessions_active.labels(*labels).dec()
        self.session_bytes.labels(*labels, "to_client").inc(session.bytes_to_client)
        self.session_bytes.labels(*labels, "from_client").inc(session.bytes_from_client)
        if session.recording:
            self.recordings.inc()


# The namespace of the dispatcher's log events (each connection's closing line).
_DISPATCH = VersionDispatcher.log.namespace


class _SessionEnd(EndObserver):
    """Counts one session at its end; its data passes by untouched (the per-chunk calls do
    nothing)."""

    def __init__(self, metrics: GatewayMetrics, session: LiveSession, labels: tuple[str, str]):
        self._metrics = metrics
        self._session = session
        self._labels = labels

    def ended(self, info: ExitInfo | None) -> None:
        self._metrics._session_ended(self._session, self._labels)


def metrics_site(metrics: GatewayMetrics) -> Any:
    """The web site that serves ``/metrics`` (prometheus_client's Twisted resource: the
    registry is rendered in the reactor's thread pool, so a scrape never holds up a
    session)."""
    from prometheus_client.twisted import MetricsResource
    from twisted.web.resource import Resource

    root = Resource()
    root.putChild(METRICS_PATH, MetricsResource(metrics.registry))
    return _QuietSite(root)


class _QuietSite(Site):
    """A site that writes no access log line (Twisted's default would put one in the
    gateway's log for every scrape) and no "Starting factory" chatter."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


@implementer(ISessionTap)
class MetricsService(service.Service):
    """Serves a gateway's metrics on ``[metrics] listen``, as a child of the gateway's
    service and one of its session taps (built once; every reloaded config reaches it
    through :meth:`reconfigure`). While it serves, its :class:`GatewayMetrics` observes
    the log and every new session; with ``listen`` off it does nothing at all (no log
    observer, sessions left unwrapped). A reload opens, moves or closes the endpoint; the
    counters carry on (sessions opened while it was off are not in the gauge)."""

    def __init__(
        self,
        reactor: Any,
        listen: str | None,
        metrics: GatewayMetrics | None = None,
        *,
        publisher: LogPublisher | None = None,
        site_factory: Callable[[GatewayMetrics], Any] = metrics_site,
    ) -> None:
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.reactor = reactor
        self.listen = listen
        self.publisher = publisher if publisher is not None else globalLogPublisher
        self.site_factory = site_factory
        self.port: Any = None
        self._observer: ILogObserver | None = None

    @classmethod
    def for_config(cls, config: Any, reactor: Any) -> MetricsService:
        """The metrics service ``config`` asks for (``[metrics] listen``; off: idle)."""
        metrics = GatewayMetrics()
        metrics.reconfigure(config)
        return cls(reactor, config.metrics.listen, metrics)

    @property
    def address(self) -> Any:
        """Where ``/metrics`` is served (port 0 picks a port), or None."""
        return self.port.getHost() if self.port is not None else None

    def session_started(self, session: LiveSession) -> ISessionObserver | None:
        if self.port is None:
            return None
        return self.metrics.session_started(session)

    # -- start and stop ----------------------------------------------------------------
    # Listening in privilegedStartService, as the gateway's listeners do: before a
    # privilege drop, and a port that cannot listen ends start-up with one line.

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._serve()

    def startService(self) -> None:
        super().startService()
        self._serve()

    def stopService(self) -> Any:
        super().stopService()
        return self._close()

    def reconfigure(self, config: Any) -> None:
        """A reloaded config: its target names, and its endpoint opened, moved (the old one
        stays when the new one cannot listen) or closed."""
        self.metrics.reconfigure(config)
        listen = config.metrics.listen
        if listen == self.listen:
            return
        if not self.running:
            self.listen = listen
            return
        if listen is None:
            self.listen = None
            self._close()
            log.info("metrics: no longer served")
            return
        try:
            new = self._listen(listen)
        except ListenError as e:
            log.error(
                "metrics stay where they were ({old}): {error}", old=self.listen, error=str(e)
            )
            return
        old, self.port, self.listen = self.port, new, listen
        if old is not None:
            old.stopListening()
        self._observe()

    def _serve(self) -> None:
        if self.listen is not None and self.port is None:
            self.port = self._listen(self.listen)
            self._observe()

    def _observe(self) -> None:
        if self._observer is None:
            observer: ILogObserver = self.metrics.observe  # type: ignore[assignment]
            self.publisher.addObserver(observer)
            self._observer = observer

    def _close(self) -> Any:
        if self._observer is not None:
            self.publisher.removeObserver(self._observer)
            self._observer = None
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None

    def _listen(self, description: str) -> Any:
        """Listen on ``description`` now; ListenError (one line: what and why) otherwise."""
        port = listen_now(self.reactor, description, self.site_factory(self.metrics))
        address = port.getHost()
        log.info(
            "metrics served on http://{host}:{port}/metrics",
            host=getattr(address, "host", ""),
            port=getattr(address, "port", ""),
        )
        return port


__all__ = ["GatewayMetrics", "MetricsService", "metrics_site"]
