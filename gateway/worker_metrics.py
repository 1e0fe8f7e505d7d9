"""One ``/metrics`` for a gateway with worker processes (gateway.workers): the parent's,
the sum of its workers'.

Each worker counts its own connections, logins and sessions in its own registry
(gateway.metrics, unchanged) and serves them on a private Unix socket,
``<state_dir>/workers/metrics-N.sock`` (mode 0600; :func:`worker_metrics_socket`). The
parent's ``[metrics] listen`` serves :class:`SummedMetricsResource`: at each scrape it
fetches every worker's exposition and its own, adds up the samples with the same name and
labels (counters, gauges, histogram buckets, sums and counts; a ``_created`` timestamp
keeps the earliest), and renders the sum in the Prometheus text format. A worker that does
not answer (restarting) is left out of that scrape and logged; a restarted worker's
counters start from zero, which Prometheus sees as a counter reset, as after a restart of
one process.

prometheus_client's own multiprocess mode was not used: it needs its directory in the
environment before prometheus_client is imported and a per-metric mode for gauges, and it
would change how one process counts; this keeps gateway.metrics the same for 1 and N.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

log = Logger()

WORKERS_DIR = "workers"
FETCH_TIMEOUT = 5.0


def worker_metrics_socket(state_dir: Path, number: int) -> Path:
    """Where worker ``number`` serves its metrics to the parent."""
    return Path(state_dir) / WORKERS_DIR / f"metrics-{number}.sock"


def worker_metrics_endpoint(state_dir: Path, number: int) -> str:
    """The endpoint string of :func:`worker_metrics_socket`, owner only."""
    path = str(worker_metrics_socket(state_dir, number)).replace(":", r"\:")
    return f"unix:{path}:mode=600"


def sum_expositions(texts: Iterable[str]) -> bytes:
    """The Prometheus text expositions ``texts`` added up into one (see the module
    docstring)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.name.endswith("_created"):
                    samples[key] = min(samples.get(key, sample.value), sample.value)
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed:
    """A collector that yields the families it was given."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


def fetch_unix(reactor: Any, path: Path, timeout: float = FETCH_TIMEOUT) -> defer.Deferred[str]:
    """GET /metrics from the HTTP server on Unix socket ``path``; its body as text."""
    from twisted.internet.endpoints import UNIXClientEndpoint
    from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
    from twisted.web.iweb import IAgentEndpointFactory
    from zope.interface import implementer

    @implementer(IAgentEndpointFactory)
    class _To:
        def endpointForURI(self, uri: Any) -> Any:
            return UNIXClientEndpoint(reactor, str(path), timeout=timeout)

    class _Quiet(_HTTP11ClientFactory):
        noisy = False  # no "Starting factory" line in the log at every scrape

    pool = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = _Quiet
    agent = Agent.usingEndpointFactory(reactor, _To(), pool=pool)
    d = agent.request(b"GET", b"http://worker/metrics")
    d.addCallback(readBody)
    d.addCallback(lambda body: body.decode("utf-8"))
    return d


class SummedMetricsResource(Resource):
    """``/metrics`` of the parent: its own registry plus every worker's, summed."""

    isLeaf = True

    def __init__(
        self,
        reactor: Any,
        own_registry: CollectorRegistry,
        sockets: Callable[[], Sequence[Path]],
        fetch: Callable[[Any, Path], defer.Deferred[str]] = fetch_unix,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.own_registry = own_registry
        self.sockets = sockets
        self.fetch = fetch

    def collect(self) -> defer.Deferred[bytes]:
        """The summed exposition (workers that do not answer are left out, logged)."""
        paths = list(self.sockets())
        fetches = [self.fetch(self.reactor, path) for path in paths]
        gathered = defer.DeferredList(fetches, consumeErrors=True)

        def summed(results: list[tuple[bool, Any]]) -> bytes:
            texts = [generate_latest(self.own_registry).decode("utf-8")]
            for path, (ok, value) in zip(paths, results, strict=True):
                if ok:
                    texts.append(value)
                else:
                    log.warn(
                        "metrics: worker socket {path} did not answer ({error}); left out of "
                        "this scrape",
                        path=str(path),
                        error=value.getErrorMessage(),
                    )
            return sum_expositions(texts)

        return gathered.addCallback(summed)

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))

        def write(body: bytes) -> None:
            if not request._disconnected:
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            log.failure("metrics: cannot sum the workers' metrics", failure)
            if not request._disconnected:
                request.setResponseCode(500)
                request.finish()

        self.collect().addCallbacks(write, failed)
        return NOT_DONE_YET


class WorkerMetricsResource(Resource):
    """A worker's ``/metrics`` on its Unix socket, rendered at once (prometheus_client's
    Twisted resource, a WSGI app, cannot serve a Unix socket: it wants a peer host)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


def worker_metrics_site(metrics: Any) -> Any:
    """The ``site_factory`` of a worker's gateway.metrics.MetricsService."""
    from gateway.metrics import METRICS_PATH, _QuietSite

    root = Resource()
    root.putChild(METRICS_PATH, WorkerMetricsResource(metrics.registry))
    return _QuietSite(root)


def summed_metrics_site(reactor: Any, state_dir: Path, count: int) -> Callable[[Any], Any]:
    """A ``site_factory`` for gateway.metrics.MetricsService in the parent of ``count``
    workers."""
    from gateway.metrics import METRICS_PATH, _QuietSite

    def site(metrics: Any) -> Any:
        root = Resource()
        sockets = [worker_metrics_socket(state_dir, n) for n in range(1, count + 1)]
        root.putChild(
            METRICS_PATH, SummedMetricsResource(reactor, metrics.registry, lambda: sockets)
        )
        return _QuietSite(root)

    return site


__all__ = [
    "SummedMetricsResource",
    "sum_expositions",
    "summed_metrics_site",
    "worker_metrics_site",
    "worker_metrics_endpoint",
    "worker_metrics_socket",
]
