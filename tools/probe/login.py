"""Logging in after a probe (``--user``): per protocol found, one login through the
upstream targets' own clients with exactly the host keys the probe just saw pinned, one
command run, its output dropped unread and its exit status kept; the connection is
recorded as a flow record (for ``sshgateway flows compare``) and the report names it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from tools.probe.report import Credentials, HostReport, LoginResult

RECORD_WAIT = 2.0  # seconds a login waits, after its end, for its flow record to be written


class _LoginSink:
    """The upstream session's sink: output is dropped unread (session data is never kept),
    the end fires ``ended`` with ("exit", ExitInfo) or ("failed", message)."""

    link = None  # not serving a client leg: the flow record has no link

    def __init__(self) -> None:
        self.ended: defer.Deferred = defer.Deferred()

    def stdout(self, data: bytes) -> None:
        pass

    def stderr(self, data: bytes) -> None:
        pass

    def eof(self) -> None:
        pass

    def exited(self, info: Any) -> None:
        if not self.ended.called:
            self.ended.callback(("exit", info))

    def failed(self, message: str) -> None:
        if not self.ended.called:
            self.ended.callback(("failed", message))

    def pause_input(self) -> None:
        pass

    def resume_input(self) -> None:
        pass


def _pin(report: HostReport, protocol: str) -> str | None:
    """The host key policy for the login: exactly the key(s) the probe just saw."""
    if protocol == "ssh1":
        offer = report.ssh1.offer
        return offer.host_key_sha256 if offer is not None else None
    prints = [k.fingerprint for k in report.ssh2.host_keys if k.verified]
    return ",".join(prints) or None


def _make_target(reactor: Any, protocol: str, report: HostReport, creds: Credentials) -> Any:
    from gateway.known_hosts import KnownHosts
    from gateway.targets import TargetConfig

    if protocol == "ssh1":
        from gateway.targets.ssh1 import SSH1Target as target_class
    else:
        from gateway.targets.ssh2 import SSH2Target as target_class
    pin = _pin(report, protocol)
    if pin is None:
        raise ValueError("the probe saw no host key to pin")
    config = TargetConfig(
        name=f"probe-{protocol}",
        protocol=protocol,
        host=report.host,
        port=report.port,
        username=creds.user,
        password=creds.password,
        key=creds.key,
        host_key=pin,  # a fingerprint policy: the known_hosts file is not consulted
    )
    known_hosts = KnownHosts(creds.state_dir / "known_hosts")
    try:
        return target_class(reactor, config, known_hosts)
    except ValueError:
        # One --key serves both protocols; an OpenSSH key is no SSH-1 key (and the other
        # way round): fall back to the password alone when there is one.
        if creds.key is None or creds.password is None:
            raise
        return target_class(reactor, replace(config, key=None), known_hosts)


def login(
    reactor: Any, report: HostReport, protocol: str, creds: Credentials, timeout: float
) -> defer.Deferred:
    """Log in over ``protocol`` with the upstream target's client, run ``creds.command``,
    and record the leg's flow (into ``creds.flows``). Fires with a :class:`LoginResult`."""
    from protocols.session import SessionRequest

    result = LoginResult(protocol)
    try:
        target = _make_target(reactor, protocol, report, creds)
    except Exception as exc:  # a bad key file, an unknown cipher: the message says which
        result.error = str(exc) or type(exc).__name__
        return defer.succeed(result)
    written: defer.Deferred = defer.Deferred()
    target.flows = creds.flows
    original_done = getattr(target, "flow_done", None)

    def flow_done(flow: Any) -> None:
        result.flow_id = flow.id
        if original_done is not None:
            original_done(flow)
        if not written.called:
            written.callback(None)

    target.flow_done = flow_done
    sink = _LoginSink()
    request = SessionRequest(command=creds.command.encode("utf-8"))
    opening = defer.maybeDeferred(target.connector(creds.user, None), request, sink)
    session: list[Any] = []

    def expire() -> None:
        result.error = result.error or f"no exit status within {timeout:g} s"
        if not opening.called:
            opening.cancel()
        elif session:
            session[0].close()
        fire(sink.ended)
        fire(written)

    timer = reactor.callLater(timeout, expire)

    def opened(upstream: Any) -> defer.Deferred:
        session.append(upstream)
        return sink.ended

    grace: list[Any] = []

    def wait_for_record() -> None:
        # The record is written when the connection is gone, a moment after the end.
        if not written.called and not grace:
            grace.append(reactor.callLater(RECORD_WAIT, fire, written))

    def ended(outcome: Any) -> None:
        if outcome is not None and outcome[0] == "exit":
            result.ok = True
            result.exit_status = outcome[1].as_status()
        elif outcome is not None:
            result.error = str(outcome[1])
        if session:
            session[0].close()  # after the exit status: a polite end, if not already gone
        wait_for_record()

    def failed(failure: Failure) -> None:
        if result.error is None:
            result.error = failure.getErrorMessage() or failure.type.__name__
        wait_for_record()

    def settle(_: Any) -> LoginResult:
        for call in (timer, *grace):
            if call.active():
                call.cancel()
        return result

    opening.addCallbacks(opened, failed)
    opening.addCallback(ended)
    opening.addErrback(failed)
    opening.addBoth(lambda _: written)
    return opening.addBoth(settle)


def fire(d: defer.Deferred) -> None:
    if not d.called:
        d.callback(None)
