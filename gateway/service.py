"""Service construction: turns a GatewayConfig into running listeners.

This is the one place where the gateway's parts meet: host keys, the cred portal, the
targets, the SSH-1 and SSH-2 implementations, and the version dispatcher on every
configured endpoint. ``twistd sshgateway`` calls :func:`make_service`.
"""

from __future__ import annotations

import errno
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LoggingFile
from twisted.python import usage

from gateway.dispatch import DispatcherFactory

log = Logger()


class Options(usage.Options):
    """Command-line options of ``twistd sshgateway``."""

    synopsis = "[--config FILE]"
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: the embedded default)."],
    ]

    def postOptions(self) -> None:
        # Load here so that a bad file is reported as a usage error, not a traceback.
        from gateway.config import ConfigError, default_config, load_config

        try:
            self["gateway_config"] = (
                load_config(self["config"]) if self["config"] else default_config()
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        except OSError as e:
            raise usage.UsageError(f"cannot read {self['config']}: {e.strerror}") from None


class ListenerService(service.Service):
    """Listens on one endpoint string and says where it ended up (port 0 picks one)."""

    def __init__(self, reactor: Any, description: str, factory: DispatcherFactory) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.description)
        except Exception as e:  # the parser raises ValueError, KeyError, IndexError...
            raise startup_failure(listen_error(self.description, e)) from None
        d = endpoint.listen(self.factory)
        failures: list[Any] = []
        d.addCallbacks(self._listening, failures.append)
        if failures:  # listening is synchronous for tcp/unix: fail start-up loudly
            raise startup_failure(listen_error(self.description, failures[0].value))

    def _listening(self, port: Any) -> None:
        self.port = port
        address = port.getHost()
        where = f"{getattr(address, 'type', 'TCP').lower()}:{getattr(address, 'host', '')}:{getattr(address, 'port', '')}"
        log.info("sshgateway listening on {where}", where=where)

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None


class TargetsService(service.Service):
    """At shutdown: hangs up every running session, reaps the children, and stops the
    protocol factories' timers (the SSH-1 server-key rotation)."""

    def __init__(self, targets: Any, dispatcher: DispatcherFactory) -> None:
        self.targets = targets
        self.dispatcher = dispatcher

    def stopService(self) -> Any:
        super().stopService()
        for handoff in self.dispatcher.handoffs.values():
            stop = getattr(handoff, "stop", None)
            if stop is not None:
                stop()
        return self.targets.close_all()


def build_dispatcher(
    config: Any, reactor: Any, targets: Any, flows: Any = "config"
) -> DispatcherFactory:
    """Everything behind the listeners, from a loaded config. ``targets`` is the
    :class:`gateway.routing.Router` (from :func:`gateway.routing.build_router`)."""
    from gateway.auth import build_portal
    from gateway.hostkeys import load_or_create_host_keys

    host_keys = load_or_create_host_keys(config.state_dir)
    portal = build_portal(config, targets)
    handoffs: dict[str, Any] = {}
    if "2" in config.protocols:
        from protocols.ssh2.factory import SSH2ServerFactory

        handoffs["ssh2"] = SSH2ServerFactory(
            portal, host_keys.ssh2, config.ssh2, config.auth_limits, reactor
        )
    if "1" in config.protocols:
        from protocols.ssh1.server import SSH1ServerFactory

        handoffs["ssh1"] = SSH1ServerFactory(
            portal, host_keys.ssh1, config.ssh1, config.auth_limits, reactor
        )
    return DispatcherFactory(
        handoffs,
        reactor,
        version_timeout=config.version_timeout,
        flows=flow_writer(config) if flows == "config" else flows,
    )


def flow_writer(config: Any) -> Any:
    """The flow-record writer the config asks for, or None when recording is off."""
    from gateway.flows import FlowWriter, flows_dir

    flows = getattr(config, "flows", None)
    if flows is None or not flows.enabled:
        return None
    return FlowWriter(flows_dir(config.state_dir), flows.max_bytes, flows.keep)


def make_service(config: Any, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from gateway.config import DefaultPasswordError, config_warnings, ensure_default_password
    from gateway.hostkeys import HostKeyError
    from gateway.routing import build_router

    for warning in config_warnings(config):
        log.warn("{warning}", warning=warning)
    try:
        check_state_dir(config.state_dir)
    except OSError as e:
        raise startup_failure(f"state_dir {config.state_dir} is not writable: {e.strerror}") from None
    except HostKeyError as e:  # it exists but is not a directory
        raise startup_failure(str(e)) from None
    try:
        config = ensure_default_password(config)
        # Every target (local and upstream) behind one Router, which the realm's avatars
        # use for every session.
        targets = build_router(config, reactor)
        flows = flow_writer(config)
        # Upstream legs go to the same writer as the client legs they serve.
        for target in getattr(targets, "targets", {}).values():
            if hasattr(target, "flows"):
                target.flows = flows
        dispatcher = build_dispatcher(config, reactor, targets, flows=flows)
    except (DefaultPasswordError, HostKeyError, ValueError) as e:
        raise startup_failure(str(e)) from None
    top = service.MultiService()
    # Stopped after the listeners (MultiService stops children in reverse order).
    TargetsService(targets, dispatcher).setServiceParent(top)
    for description in config.listen:
        ListenerService(reactor, description, dispatcher).setServiceParent(top)
    return top


# ---------------------------------------------------------------- start-up errors
# An operator's mistake (port in use, wrong endpoint, state dir or host key unusable) ends
# start-up with one line and exit status 1, never a traceback.


class StartupFailure(SystemExit):
    """Ends twistd with status 1 and no traceback (twistd lets a SystemExit through, whether
    raised while it builds the service or once it starts it). Its text is printed by
    :func:`startup_failure`, not by Python on the way out: by then twistd may have
    redirected ``sys.stderr`` into the log."""

    def __init__(self, message: str) -> None:
        super().__init__(1)
        self.message = message

    def __str__(self) -> str:
        return f"sshgateway: {self.message}"


def startup_failure(message: str) -> StartupFailure:
    """Print ``sshgateway: message`` on the process's real stderr (where the operator, or
    systemd's journal, reads it) and return the exception to raise."""
    failure = StartupFailure(message)
    stream = sys.__stderr__ if isinstance(sys.stderr, LoggingFile) else sys.stderr
    if stream is not None:
        print(failure, file=stream, flush=True)
    return failure


_LISTEN_HINTS = {
    errno.EADDRINUSE: "another program listens there",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE",
    errno.EADDRNOTAVAIL: "no interface of this host has that address",
}


def listen_error(description: str, error: BaseException) -> str:
    """What went wrong listening on endpoint ``description``, in one line."""
    if description.split(":", 1)[0] == "systemd" and isinstance(error, (IndexError, KeyError)):
        # Twisted takes the sockets only when LISTEN_FDNAMES names them all (systemd
        # always does; systemd-socket-activate only with --fdname).
        return (
            f"cannot listen on {description}: systemd passed no such socket (start the "
            "gateway through its .socket unit, or systemd-socket-activate --fdname=NAME)"
        )
    if isinstance(error, CannotListenError):
        cause = error.socketError
        text = getattr(cause, "strerror", None) or str(cause)
        hint = _LISTEN_HINTS.get(getattr(cause, "errno", None))
        return f"cannot listen on {description}: {text}" + (f" ({hint})" if hint else "")
    if isinstance(error, OSError) and error.strerror:
        return f"cannot listen on {description}: {error.strerror}"
    return f"bad endpoint {description!r}: {error}"


def check_state_dir(state_dir: Path) -> None:
    """Create the state directory (0700) if needed and make sure the gateway can write in
    it (host keys, known_hosts, flow records); OSError otherwise."""
    from gateway.hostkeys import ensure_state_dir

    ensure_state_dir(Path(state_dir))
    with tempfile.TemporaryFile(dir=state_dir):
        pass
