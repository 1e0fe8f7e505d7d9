"""Probing hosts: per host one SSH-1 and one SSH-2 attempt at once, then one key exchange
per further SSH-2 host key type, all bounded by one per-host deadline (a host that says
nothing is reported when it passes), then the logins with ``--user``; many hosts under a
concurrency limit. Every failure becomes a reason in the report, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer

from tools.probe.attempt import Connect, run_attempt, tcp_connect
from tools.probe.login import login
from tools.probe.report import Credentials, HostReport
from tools.probe.ssh1 import SSH1Attempt
from tools.probe.ssh2 import SSH2Attempt, key_types
from tools.probe.targets import parse_target

DEFAULT_TIMEOUT = 10.0
DEFAULT_CONCURRENCY = 16


@defer.inlineCallbacks
def probe_host(
    reactor: Any,
    target: str,
    timeout: float = DEFAULT_TIMEOUT,
    connect: Connect = tcp_connect,
    credentials: Credentials | None = None,
) -> Any:
    """Probe one ``HOST[:PORT]``; fires with a :class:`HostReport` (never fails). With
    ``credentials``, then log in over each protocol found (each within ``timeout``)."""
    started = reactor.seconds()
    try:
        host, port = parse_target(target)
    except ValueError as exc:
        return HostReport(target, target, 0, "error", str(exc))
    report = HostReport(target, host, port)
    deadline = started + timeout
    ssh1 = SSH1Attempt(reactor)
    ssh2 = SSH2Attempt()
    yield defer.gatherResults(
        [
            run_attempt(reactor, connect, host, port, ssh1, deadline),
            run_attempt(reactor, connect, host, port, ssh2, deadline),
        ]
    )
    report.ssh1 = ssh1.result()
    report.ssh2 = ssh2.result()
    kexinit = ssh2.kexinit
    if kexinit is not None:
        have = {k.type for k in report.ssh2.host_keys}
        extra = [
            (kind, SSH2Attempt([algorithm]))
            for kind, algorithm in key_types(kexinit)
            if kind not in have
        ]
        yield defer.gatherResults(
            [run_attempt(reactor, connect, host, port, a, deadline) for _, a in extra]
        )
        for kind, attempt in extra:
            if attempt.host_key is not None:
                report.ssh2.host_keys.append(attempt.host_key)
            if attempt.host_key is None or not attempt.host_key.verified:
                report.ssh2.key_errors.append(f"{kind}: {attempt.error or 'no host key'}")
        order = {kind: i for i, (kind, _) in enumerate(key_types(kexinit))}
        report.ssh2.host_keys.sort(key=lambda k: order.get(k.type, len(order)))
    report.identification = ssh1.identification or ssh2.identification
    report.protocols = [
        name for name, r in (("ssh1", report.ssh1), ("ssh2", report.ssh2)) if r.available
    ]
    if report.identification is not None:
        report.status = "ok"
    elif ssh1.refused and ssh2.refused:
        report.status, report.error = "refused", "connection refused"
    elif ssh1.timed_out or ssh2.timed_out:
        report.status, report.error = "timeout", f"no identification line within {timeout:g} s"
    else:
        report.status, report.error = "error", ssh1.error or ssh2.error
    if credentials is not None and report.protocols:
        report.logins = yield defer.gatherResults(
            [login(reactor, report, name, credentials, timeout) for name in report.protocols]
        )
    report.duration = round(reactor.seconds() - started, 3)
    return report


def probe_hosts(
    reactor: Any,
    targets: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int = DEFAULT_CONCURRENCY,
    connect: Connect = tcp_connect,
    progress: Callable[[int, int], None] | None = None,
    credentials: Credentials | None = None,
) -> defer.Deferred:
    """Probe every target, at most ``concurrency`` at a time; fires with the reports
    in the order of ``targets``."""
    semaphore = defer.DeferredSemaphore(max(1, concurrency))
    done = [0]
    if progress is not None:
        progress(0, len(targets))

    def one(target: str) -> defer.Deferred:
        d = semaphore.run(probe_host, reactor, target, timeout, connect, credentials)

        def tick(report: HostReport) -> HostReport:
            done[0] += 1
            if progress is not None:
                progress(done[0], len(targets))
            return report

        return d.addCallback(tick)

    return defer.gatherResults([one(t) for t in targets])
