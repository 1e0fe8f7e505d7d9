"""Service construction: turns a GatewayConfig into running listeners.

This is the one place where the gateway's parts meet: host keys, the cred portal, the
targets, the SSH-1 and SSH-2 implementations, and the version dispatcher on every
configured endpoint. ``twistd sshgateway`` calls :func:`make_service`.

Start sequence: the service is built as root (host keys read), ``privilegedStartService``
binds every endpoint and then hands over to gateway.privsep (state directory, spawner,
``run_as``); twistd's ``--uid``/``--gid`` switch follows, then ``startService``.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
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

    def privilegedStartService(self) -> None:
        # Before any privilege drop: a port below 1024 needs root.
        super().privilegedStartService()
        self.listen()

    def startService(self) -> None:
        super().startService()
        if self.port is None:  # started without privilegedStartService
            self.listen()

    def listen(self) -> None:
        endpoint = endpoints.serverFromString(self.reactor, self.description)
        d = endpoint.listen(self.factory)
        failures: list[Any] = []
        d.addCallbacks(self._listening, failures.append)
        if failures:  # listening is synchronous for tcp/unix: fail start-up loudly
            failures[0].raiseException()

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


class GatewayService(service.MultiService):
    """The gateway's top service: its children (the listeners) bind first, then the
    privilege drop, if any, is prepared and (for ``run_as``) done — see gateway.privsep."""

    def __init__(self, reactor: Any, local_target: Any = None, drop: Any = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.local_target = local_target
        self.drop = drop
        self.privileged_started = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.privileged_started = True
        if self.drop is None or not self.drop.needed:
            return
        from gateway.privsep import PrivilegeError
        from gateway.targets.launchers import SpawnerLauncher

        try:
            self.drop.prepare()
            if self.local_target is not None:
                accounts, allow_root = self.drop.spawner_accounts()
                self.local_target.launcher = SpawnerLauncher.start(
                    self.reactor, accounts, allow_root, grace=self.local_target.kill_grace
                )
            if self.drop.self_drop:
                self.drop.drop()
        except (PrivilegeError, OSError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            where = getattr(e, "filename", None)
            raise SystemExit(
                f"sshgateway: cannot run as {self.drop.account.name}: "
                + (f"{where}: {reason}" if where else reason)
            ) from None

    def startService(self) -> None:
        if not self.privileged_started:  # not started by twistd
            self.privilegedStartService()
        if self.drop is not None and os.getuid() == self.drop.account.uid != 0:
            from gateway.privsep import PrivilegeError

            try:
                self.drop.check_dropped()
            except PrivilegeError as e:
                raise SystemExit(f"sshgateway: {e}") from None
        super().startService()


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


def privilege_drop(config: Any, uid: int | None = None, gid: int | None = None) -> Any:
    """The privilege drop the config (``run_as``) or twistd (``--uid``/``--gid``, done by
    twistd itself) asks for, as a gateway.privsep.PrivilegeDrop; None for none."""
    from gateway.flows import flows_dir
    from gateway.privsep import PrivilegeDrop, account_named, account_with_uid, local_accounts

    run_as = getattr(config, "run_as", None)
    if uid is not None or gid is not None:
        account = account_with_uid(os.getuid() if uid is None else uid, gid)
        if run_as is not None and account_named(run_as).uid != account.uid:
            raise SystemExit(
                f"sshgateway: run_as = {run_as!r} and twistd --uid {account.name} disagree: "
                "use one of them"
            )
        self_drop = False
    elif run_as is not None:
        account = account_named(run_as)
        self_drop = True
    else:
        return None
    flows = getattr(config, "flows", None)
    return PrivilegeDrop(
        account,
        config.state_dir,
        self_drop=self_drop,
        local_accounts=local_accounts(config),
        flows_dir=flows_dir(config.state_dir) if flows is not None and flows.enabled else None,
    )


def make_service(
    config: Any, reactor: Any = None, *, uid: int | None = None, gid: int | None = None
) -> service.MultiService:
    """The gateway's service tree. ``uid``/``gid``: twistd's ``--uid``/``--gid``, to which
    twistd switches after ``privilegedStartService``."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from gateway.config import DefaultPasswordError, config_warnings, ensure_default_password
    from gateway.hostkeys import HostKeyError
    from gateway.privsep import PrivilegeError
    from gateway.routing import build_router

    for warning in config_warnings(config):
        log.warn("{warning}", warning=warning)
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
        drop = privilege_drop(config, uid, gid)
    except (DefaultPasswordError, HostKeyError, PrivilegeError, ValueError) as e:
        # twistd prints a SystemExit message and exits 1: no traceback for a setup problem.
        raise SystemExit(f"sshgateway: {e}") from None
    from gateway.targets.local import LocalTarget

    local = next(
        (t for t in getattr(targets, "targets", {}).values() if isinstance(t, LocalTarget)), None
    )
    top = GatewayService(reactor, local, drop)
    # Stopped after the listeners (MultiService stops children in reverse order).
    TargetsService(targets, dispatcher).setServiceParent(top)
    for description in config.listen:
        ListenerService(reactor, description, dispatcher).setServiceParent(top)
    return top
