"""Service construction: turns a GatewayConfig into running listeners.

This is the one place where the gateway's parts meet: host keys, the cred portal, the
targets, the SSH-1 and SSH-2 implementations, and the version dispatcher on every
configured endpoint. ``twistd sshgateway`` calls :func:`make_service`.

The top service (:class:`GatewayService`) also owns the running gateway's life: a reload
(SIGHUP) builds a new :class:`gateway.dispatch.Generation` from the re-read config and
swaps it in once it is complete, and re-opens only the endpoints that changed; stopping
(SIGTERM) closes the listeners, drains the connections (gateway.lifecycle) and only then
closes the targets.

Start sequence: the service is built as root (host keys read), ``privilegedStartService``
binds every endpoint and then hands over to gateway.privsep (state directory, spawner,
``run_as``); twistd's ``--uid``/``--gid`` switch follows, then ``startService``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger, LoggingFile
from twisted.python import usage

from gateway.dispatch import DispatcherFactory, Generation
from gateway.lifecycle import Drain, install_signal_handlers
from gateway.listening import ListenError, listen_error, listen_now  # noqa: F401 (listen_error: its old home)
from gateway.sd_notify import Notifier

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

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: DispatcherFactory,
        *,
        inherited_fd: int | None = None,
        accepting: bool = True,
    ) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port: Any = None
        # Worker processes (gateway.workers): a worker adopts the socket its parent bound
        # (``inherited_fd``); the parent binds but does not accept (``accepting``).
        self.inherited_fd = inherited_fd
        self.accepting = accepting

    def privilegedStartService(self) -> None:
        # Before any privilege drop: a port below 1024 needs root.
        super().privilegedStartService()
        self.listen()

    def startService(self) -> None:
        super().startService()
        if self.port is None:  # started without privilegedStartService
            self.listen()

    def listen(self) -> None:
        """Listen now; raises ListenError (one line: what and why) when it cannot."""
        if self.inherited_fd is not None:
            from gateway.listening import adopt_listening_socket

            self._listening(
                adopt_listening_socket(
                    self.reactor, self.description, self.inherited_fd, self.factory
                )
            )
            return
        port = listen_now(self.reactor, self.description, self.factory)
        if not self.accepting:
            port.stopReading()  # bound and listening: the workers accept on it
        self._listening(port)

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
    """At shutdown: hangs up every running session (of every config generation still in
    use), reaps the children, and stops the protocol factories' timers (the SSH-1
    server-key rotation)."""

    def __init__(self, dispatcher: DispatcherFactory) -> None:
        self.dispatcher = dispatcher

    @property
    def targets(self) -> Any:
        """The router new sessions use."""
        return self.dispatcher.generation.targets

    def stopService(self) -> Any:
        super().stopService()
        waits = []
        for generation in self.dispatcher.generations():
            generation.retire()
            if generation.targets is not None:
                waits.append(generation.targets.close_all())
        return defer.gatherResults(waits, consumeErrors=True)


def build_handoffs(
    config: Any,
    reactor: Any,
    portal: Any,
    host_keys: Any,
    running: Any = None,
    ssh1_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The SSH-2 and SSH-1 implementations the config enables, over one portal.

    ``running`` (a reload: the generation in use) decides where the SSH-1 server key
    comes from: the running one if its size is still the configured one, else a new one
    made off the reactor (the new SSH-1 server's ``ready`` fires when it is there; a
    login meanwhile is not held up by it). At start, with none running, the first key
    is made here, before the gateway listens. ``ssh1_options``: more keyword arguments
    for the SSH-1 server (its ``key_generator`` and ``off_reactor``, for tests)."""
    handoffs: dict[str, Any] = {}
    if "2" in config.protocols:
        from protocols.ssh2.factory import SSH2ServerFactory

        handoffs["ssh2"] = SSH2ServerFactory(
            portal, host_keys.ssh2, config.ssh2, config.auth_limits, reactor
        )
    if "1" in config.protocols:
        from protocols.ssh1.server import SSH1ServerFactory

        kept = running_server_key(running, config.ssh1.server_key_bits)
        handoffs["ssh1"] = SSH1ServerFactory(
            portal, host_keys.ssh1, config.ssh1, config.auth_limits, reactor,
            server_key=kept, first_key_off_reactor=running is not None, **(ssh1_options or {}),
        )  # fmt: skip
    return handoffs


def running_server_key(running: Any, bits: int) -> Any:
    """The SSH-1 server key the ``running`` generation hands out now, if it has ``bits``."""
    factory = getattr(running, "handoffs", {}).get("ssh1") if running is not None else None
    key = getattr(factory, "current_server_key", None)
    return key if key is not None and key.key_size == bits else None


def build_generation(
    config: Any,
    reactor: Any,
    host_keys: Any,
    session_taps: Sequence[Any] = (),
    store: Any = None,
    running: Generation | None = None,
    ssh1_options: Mapping[str, Any] | None = None,
) -> Generation:
    """Everything a loaded config decides for new connections: its targets behind one
    Router, the portal over its users, the protocol implementations, the flow writer.
    ``session_taps`` (gateway.session_tap.ISessionTap) watch every session; they outlive
    generations. ``store`` (gateway.store.StoreService): the shared known_hosts.
    ``running``, ``ssh1_options``: the generation a reload replaces, and more for the
    SSH-1 server (see :func:`build_handoffs`).
    Raises (ValueError, DefaultPasswordError...) before anything is in use."""
    from gateway.auth import build_portal
    from gateway.config import ensure_default_password
    from gateway.routing import build_router

    config = ensure_default_password(config)
    # Every target (local and upstream) behind one Router, which the realm's avatars
    # use for every session.
    known_hosts = None
    if store is not None:
        from gateway.routing import KNOWN_HOSTS_FILE

        known_hosts = store.known_hosts(config.state_dir / KNOWN_HOSTS_FILE)
    targets = build_router(config, reactor, known_hosts=known_hosts)
    flows = flow_writer(config)
    # Upstream legs go to the same writer as the client legs they serve.
    for target in getattr(targets, "targets", {}).values():
        if hasattr(target, "flows"):
            target.flows = flows
    targets.flows = flows  # and forwarded connections (jump-host use)
    targets.session_taps = list(session_taps)
    if "2" in config.protocols:
        from gateway.inner_ssh2 import InnerServers

        # The gateway's SSH-2 server inside jump channels to ssh1 and telnet targets.
        targets.inner_servers = InnerServers(
            config.state_dir, config.ssh2, config.auth_limits, reactor
        )
    portal = build_portal(config, targets)
    handoffs = build_handoffs(config, reactor, portal, host_keys, running, ssh1_options)
    return Generation(handoffs, config.version_timeout, flows, targets)


def generation_ready(generation: Generation) -> defer.Deferred:
    """Fires once every protocol implementation of ``generation`` can take connections
    (the SSH-1 server has its key); fails as the first of them fails."""
    waits = [getattr(handoff, "ready", None) for handoff in generation.handoffs.values()]
    gathered = defer.gatherResults([w for w in waits if w is not None], consumeErrors=True)
    return gathered.addErrback(lambda failure: failure.value.subFailure)


def build_session_taps(config: Any, reactor: Any) -> list[Any]:
    """The session taps (gateway.session_tap) the config asks for, built once at start;
    a tap with ``reconfigure(config)`` is given each reloaded config."""
    from gateway.audit import AuditTap
    from gateway.live_sessions import LiveSessions
    from gateway.metrics import MetricsService
    from gateway.recording import RecordingTap

    taps: list[Any] = []
    # The recorder first: it sets session.recording, which the taps after it report.
    recorder = RecordingTap(config, reactor)
    reactor.callWhenRunning(recorder.start)  # retention: after any privilege drop
    reactor.addSystemEventTrigger("after", "shutdown", recorder.stop)
    taps.append(recorder)
    taps.append(AuditTap())  # after the recorder's: it reports session.recording
    # Idle while [metrics] listen is off (a reload may turn it on); a child service too.
    metrics = MetricsService.for_config(config, reactor)
    if config.workers > 1:  # the parent of worker processes: /metrics sums theirs
        from gateway.worker_metrics import summed_metrics_site

        metrics.site_factory = summed_metrics_site(reactor, config.state_dir, config.workers)
    taps.append(metrics)
    taps.append(LiveSessions())  # the live-session registry (sessions list/kill)
    return taps


def control_service(
    config: Any, reactor: Any, session_taps: Sequence[Any], workers: Any = None, store: Any = None
) -> Any:
    """The control socket (gateway.control) over the live-session registry among the
    taps, or in the parent of worker processes (``workers``, their supervisor) over the
    sessions of every worker (gateway.worker_sessions): it listens once the gateway has
    dropped its privileges. With a ``store`` (gateway.store): over every instance's too."""
    from gateway.control import ControlService, control_socket_path
    from gateway.live_sessions import ISessionRegistry

    if workers is not None:
        from gateway.worker_sessions import WorkerSessions

        registry = WorkerSessions.of_supervisor(workers, config.state_dir, reactor)
    else:
        registry = next(tap for tap in session_taps if ISessionRegistry.providedBy(tap))
    if store is not None:
        registry = store.session_registry(registry)
    return ControlService(control_socket_path(config), registry, reactor)


def connection_limits(config: Any, reactor: Any, store: Any = None) -> Any:
    """The limits on unauthenticated connections the config asks for (``[limits]``),
    with penalties kept in this process's memory (and shared through ``store``)."""
    from gateway.limits import ConnectionLimits, LimitsConfig

    limits = getattr(config, "limits", None) or LimitsConfig()
    return ConnectionLimits(
        limits,
        reactor,
        penalty_book(limits, reactor, store=store),
        grace_time=config.auth_limits.grace_time,
    )


def penalty_book(limits: Any, reactor: Any, running: Any = None, store: Any = None) -> Any:
    """The book of per-source penalties: the running one when there is one (a reload
    keeps the penalties already given), else a new one in memory, shared through the
    store when there is one; None when off."""
    from gateway.penalties import MemoryPenaltyBook

    if limits.penalties is None:
        return None
    if running is not None:
        return running
    if store is not None:
        return store.penalty_book(limits.penalties)
    return MemoryPenaltyBook(limits.penalties, reactor)


def local_target_of(router: Any) -> Any:
    """The router's LocalTarget (the one that starts local programs), or None."""
    from gateway.targets.local import LocalTarget

    targets = getattr(router, "targets", {}).values()
    return next((t for t in targets if isinstance(t, LocalTarget)), None)


def shared_store(config: Any, reactor: Any) -> Any:
    """The shared store (gateway.store.StoreService) ``[store] url`` asks for, or None."""
    store = getattr(config, "store", None)
    if store is None or store.url is None:
        return None
    from gateway.store import StoreService, instance_name

    return StoreService(store, reactor, instance=instance_name(config.state_dir, store.worker))


def audit_trail(config: Any) -> Any:
    """The audit trail's log observer (gateway.audit), configured by ``[audit]``."""
    from gateway.audit import AuditTrail

    return AuditTrail.from_config(config)


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
    config: Any,
    reactor: Any = None,
    *,
    handle_signals: bool | None = None,
    uid: int | None = None,
    gid: int | None = None,
    inherited_fds: dict[str, int] | None = None,
    host_keys: Any = None,
) -> GatewayService:
    """The gateway's service tree for ``config``. With the global reactor (twistd) it
    also takes SIGHUP, SIGTERM and SIGINT (``handle_signals``). ``uid``/``gid``: twistd's
    ``--uid``/``--gid``, to which twistd switches after ``privilegedStartService``.
    ``config.workers`` > 1: this is the parent of that many worker processes
    (gateway.workers); ``inherited_fds`` (endpoint -> fd): this is one of them, given its
    ``host_keys`` by the parent."""
    if handle_signals is None:
        handle_signals = reactor is None
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from gateway.fd_limit import raise_open_file_limit

    raise_open_file_limit()
    from gateway.config import DefaultPasswordError, config_warnings
    from gateway.hostkeys import HostKeyError, load_or_create_host_keys
    from gateway.privsep import PrivilegeError
    from gateway.store import StoreUnusable

    for warning in config_warnings(config):
        log.warn("{warning}", warning=warning)
    try:
        check_state_dir(config.state_dir)
    except OSError as e:
        raise startup_failure(f"state_dir {config.state_dir} is not writable: {e.strerror}") from None
    except HostKeyError as e:  # it exists but is not a directory
        raise startup_failure(str(e)) from None
    store = shared_store(config, reactor)
    try:
        if host_keys is None:  # (a worker's are handed over by its parent)
            if store is not None:
                host_keys = store.host_keys(config.state_dir)
            else:
                host_keys = load_or_create_host_keys(config.state_dir)
        session_taps = build_session_taps(config, reactor)
        if store is not None:
            # The recordings index, the shared session registry's rows of this process.
            session_taps.extend(store.session_taps(session_taps))
        audit = audit_trail(config)
        generation = build_generation(config, reactor, host_keys, session_taps, store)
        drop = privilege_drop(config, uid, gid)
    except (DefaultPasswordError, HostKeyError, PrivilegeError, StoreUnusable, ValueError) as e:
        raise startup_failure(str(e)) from None
    dispatcher = DispatcherFactory.serving(
        generation, reactor, connection_limits(config, reactor, store)
    )
    top = GatewayService(
        config,
        reactor,
        dispatcher,
        host_keys,
        handle_signals=handle_signals,
        local_target=local_target_of(generation.targets),
        drop=drop,
        session_taps=session_taps,
        audit=audit,
        store=store,
    )
    TargetsService(dispatcher).setServiceParent(top)
    if inherited_fds is None and config.workers > 1:
        from gateway.workers import ProcessWorkerSpawner, WorkerSupervisor

        top.workers = WorkerSupervisor(
            config.workers,
            ProcessWorkerSpawner(reactor, config.source, host_keys),
            reactor,
            lambda: {d: s.port.fileno() for d, s in top.listeners.items() if s.port is not None},
        )
        top.workers.setServiceParent(top)
    top.inherited_fds = inherited_fds
    for tap in session_taps:  # a tap that is a service (the metrics) runs as the gateway's child
        if service.IService.providedBy(tap):
            tap.setServiceParent(top)
        if store is not None and hasattr(tap, "metrics"):
            tap.metrics.watch_store(store.worker)  # the write queue's counts on /metrics
    # (A worker answers its parent for its own sessions; the parent asks the store.)
    cluster = store if inherited_fds is None else None
    control_service(config, reactor, session_taps, top.workers, cluster).setServiceParent(top)
    for description in config.listen:
        top.add_listener(description)
    return top


class GatewayService(service.MultiService):
    """The gateway: its listeners and targets (children), the current config, and what
    happens on reload and stop."""

    def __init__(
        self,
        config: Any,
        reactor: Any,
        dispatcher: DispatcherFactory,
        host_keys: Any,
        *,
        handle_signals: bool = False,
        notifier: Notifier | None = None,
        local_target: Any = None,
        drop: Any = None,
        session_taps: Sequence[Any] = (),
        audit: Any = None,
        store: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.dispatcher = dispatcher
        self.host_keys = host_keys  # read once: a reload never changes the host keys
        self.handle_signals = handle_signals
        self.notifier = notifier if notifier is not None else Notifier()
        self.listeners: dict[str, ListenerService] = {}
        self.drain: Drain | None = None
        # The privilege drop (gateway.privsep), if any, and the local target whose programs
        # the privileged spawner starts once the gateway has dropped.
        self.local_target = local_target
        self.drop = drop
        self.privileged_started = False
        # What watches every session (recordings, audit, live sessions, metrics): made
        # once, kept across reloads, told of each new config.
        self.session_taps = list(session_taps)
        # The audit trail (gateway.audit): a log observer from start to the end of the drain.
        self.audit = audit
        # The shared store (gateway.store), if any: from start to after the audit trail.
        self.store = store
        # Worker processes (gateway.workers): the parent's supervisor, or in a worker the
        # sockets it inherited; either way the endpoints are fixed at start.
        self.workers: Any = None
        # A reloaded generation waiting for its SSH-1 server key (made off the reactor),
        # and how reloads make that key (SSH1ServerFactory's key_generator, off_reactor;
        # empty: its defaults, a real key in Twisted's thread pool).
        self._pending_reload: Generation | None = None
        self.ssh1_options: dict[str, Any] = {}
        self.inherited_fds: dict[str, int] | None = None
        # Applied to every reloaded config (a worker's: gateway.worker.worker_config).
        self.config_override: Any = None

    # -- listeners --------------------------------------------------------------------

    def add_listener(self, description: str) -> ListenerService:
        inherited = self.inherited_fds or {}
        listener = ListenerService(
            self.reactor,
            description,
            self.dispatcher,
            inherited_fd=inherited.get(description),
            accepting=self.workers is None,
        )
        self.listeners[description] = listener
        listener.setServiceParent(self)
        return listener

    def remove_listener(self, description: str) -> Any:
        listener = self.listeners.pop(description)
        return listener.disownServiceParent()

    # -- start ------------------------------------------------------------------------
    # twistd calls privilegedStartService (as root: the listeners bind), switches to its
    # --uid/--gid if given, then calls startService.

    def privilegedStartService(self) -> None:
        from gateway.control import ControlSocketError

        try:
            super().privilegedStartService()
        except (ListenError, ControlSocketError) as e:
            raise startup_failure(str(e)) from None
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
            raise startup_failure(
                f"cannot run as {self.drop.account.name}: "
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
                raise startup_failure(str(e)) from None
        if self.audit is not None:
            from twisted.logger import globalLogPublisher

            globalLogPublisher.addObserver(self.audit)
        if self.store is not None:
            self.store.startService()
        from gateway.control import ControlSocketError

        try:
            super().startService()
        except ControlSocketError as e:  # another gateway on this state dir, a bad path
            raise startup_failure(str(e)) from None
        self.reactor.callWhenRunning(self.running_now)

    def running_now(self) -> None:
        """The reactor runs and every endpoint listens: take the signals, tell systemd."""
        if self.handle_signals:
            install_signal_handlers(self.reactor, self.reload, self.stop_requested)
        self.notifier.ready(self._status("serving"))

    def _status(self, state: str) -> str:
        return (
            f"{state}; {len(self.dispatcher.connections)} connection(s); "
            f"listening on {len(self.listeners)} endpoint(s)"
        )

    # -- reload (SIGHUP) -----------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file (and with it every authorized_keys file) and use it for
        new connections; open connections keep what they started with. A config that
        does not load or build is refused and the running one stays. True if accepted:
        swapped in now, or, when it needs a new SSH-1 server key (SSH-1 turned on, or
        another ``server_key_bits``), once that key has been made off the reactor (the
        running configuration serves meanwhile: no login waits for the key)."""
        if self.drain is not None:
            log.info("reload ignored: the gateway is shutting down")
            return False
        self.notifier.reloading()
        if self.workers is not None:
            self.workers.reload()  # each worker re-reads the file itself
        source = self.config.source
        where = str(source) if source is not None else "the embedded default"
        self._pending_reload = None  # a later reload wins over one still making its key
        try:
            new = self._load_config()
            generation = build_generation(
                new, self.reactor, self.host_keys, self.session_taps, self.store,
                running=self.dispatcher.generation, ssh1_options=self.ssh1_options,
            )  # fmt: skip
            self._keep_launcher(generation)
        except Exception as e:  # whatever it is, the running gateway must go on
            self._reload_refused(where, e)
            return False
        ready = generation_ready(generation)
        if ready.called:
            self._swap_in(new, generation, where)
            return True
        log.info("reload: making the SSH-1 server key off the reactor; the new "
                 "configuration takes over once it is ready")  # fmt: skip
        self._pending_reload = generation
        ready.addCallbacks(
            lambda _: self._key_made(new, generation, where),
            lambda failure: self._key_failed(generation, where, failure),
        )
        return True

    def _key_made(self, new: Any, generation: Generation, where: str) -> None:
        if self._pending_reload is not generation or self.drain is not None:
            generation.retire()  # a later reload, or the shutdown, came first
            return
        self._pending_reload = None
        self._swap_in(new, generation, where)

    def _key_failed(self, generation: Generation, where: str, failure: Any) -> None:
        generation.retire()
        if self._pending_reload is generation:
            self._pending_reload = None
            self._reload_refused(where, failure.value, failure)

    def _reload_refused(self, where: str, e: BaseException, failure: Any = None) -> None:
        from gateway.config import ConfigError, DefaultPasswordError

        if failure is not None:  # the SSH-1 server key could not be made
            log.failure(
                "reload refused, the running configuration stays in force: the SSH-1 "
                "server key could not be made ({error})",
                failure,
                error=f"{type(e).__name__}: {e}",
            )
        elif isinstance(e, (ConfigError, DefaultPasswordError, ValueError, OSError)):
            log.error(
                "reload refused, the running configuration stays in force: {error}",
                error=str(e),
            )
        else:
            log.failure("reload refused, the running configuration stays in force")
        self._audit_reload(where, "refused", str(e).splitlines()[0][:200] if str(e) else "")
        self.notifier.ready(self._status("serving (reload refused)"))

    def _swap_in(self, new: Any, generation: Generation, where: str) -> None:
        """The reloaded config and its generation take over new connections."""
        old_config, self.config = self.config, new
        self.dispatcher.swap(generation)
        self._reconfigure_limits(new)
        if self.audit is not None:
            self.audit.reconfigure(new)
        for tap in self.session_taps:
            reconfigure = getattr(tap, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(new)
        endpoints = self._reopen_endpoints(old_config.listen, new.listen)
        log.info(
            "reloaded {where}: {users} user(s), {targets} target(s), protocols {protocols}; "
            "endpoints {endpoints}; {open} open connection(s) keep their configuration",
            where=where,
            users=len(new.users),
            targets=len(new.targets),
            protocols=",".join(new.protocols),
            endpoints=endpoints,
            open=len(self.dispatcher.connections),
        )
        self._audit_reload(where, "loaded")
        self.notifier.ready(self._status("serving (reloaded)"))

    def _audit_reload(self, where: str, result: str, reason: str = "") -> None:
        from gateway.events import CONFIG_RELOAD, emit

        emit(
            log,
            CONFIG_RELOAD,
            "audit: config reload of {source}: {result}",
            source=where,
            result=result,
            reason=reason or None,
        )

    def _keep_launcher(self, generation: Generation) -> None:
        """After a privilege drop only the spawner started at start-up can start local
        programs (as the accounts it was given then): the new local target uses it too."""
        new_local = local_target_of(generation.targets)
        if new_local is not None and self.local_target is not None:
            new_local.launcher = self.local_target.launcher

    def _reconfigure_limits(self, config: Any) -> None:
        """The counted connections and the penalties already given carry over a reload."""
        from gateway.limits import LimitsConfig

        limits = self.dispatcher.limits
        if limits is None:
            return
        new = getattr(config, "limits", None) or LimitsConfig()
        limits.reconfigure(
            new, penalty_book(new, self.reactor, limits.penalties, store=self.store)
        )

    def _load_config(self) -> Any:
        import dataclasses

        from gateway.config import config_warnings, default_config, load_config

        source = self.config.source
        new = load_config(source) if source is not None else default_config()
        if self.config_override is not None:
            new = self.config_override(new)
        for warning in config_warnings(new):
            log.warn("{warning}", warning=warning)
        if new.state_dir != self.config.state_dir:
            log.warn(
                "state_dir changed to {new}: it takes effect at the next start; "
                "{old} stays in use",
                new=str(new.state_dir),
                old=str(self.config.state_dir),
            )
            new = dataclasses.replace(new, state_dir=self.config.state_dir)
        return new

    def _reopen_endpoints(self, old: tuple[str, ...], new: tuple[str, ...]) -> str:
        """Close the endpoints no longer listed, open the new ones, leave the rest alone
        (their sockets stay); says what changed."""
        removed = [d for d in old if d not in new]
        added = [d for d in new if d not in old]
        if (removed or added) and (self.workers is not None or self.inherited_fds is not None):
            log.warn("with worker processes the endpoints change only at a restart")
            return "unchanged (worker processes: a restart changes them)"
        for description in removed:
            if description in self.listeners:
                self.remove_listener(description)
        failed = []
        for description in added:
            try:
                self.add_listener(description)
            except Exception as e:  # a port in use must not end a running gateway
                listener = self.listeners.pop(description, None)
                if listener is not None and listener.parent is not None:
                    listener.disownServiceParent()
                failed.append(description)
                log.error("cannot listen on {endpoint}: {error}", endpoint=description, error=e)
        if not removed and not added:
            return "unchanged"
        parts = [f"+{d}" for d in added if d not in failed]
        parts += [f"-{d}" for d in removed]
        parts += [f"failed {d}" for d in failed]
        kept = len([d for d in new if d in old])
        return " ".join(parts) + f" ({kept} unchanged)"

    # -- stop (SIGTERM, SIGINT) ----------------------------------------------------------

    def stop_requested(self, signame: str) -> None:
        """First signal: stop the reactor, whose shutdown waits for :meth:`stopService`
        (the drain); a second one ends the drain at once."""
        if self.drain is not None or not self.running:
            log.info("{signal} again: exiting now", signal=signame)
            if self.drain is not None:
                self.drain.now()
            if self.workers is not None:
                self.workers.now()
            for generation in self.dispatcher.generations():
                if generation.targets is not None:
                    generation.targets.close_all()  # hangs up now; no wait for reaping
            self.reactor.crash()
            return
        log.info("{signal}: shutting down", signal=signame)
        try:
            self.reactor.stop()
        except ReactorNotRunning:  # already on its way down: the drain is coming
            pass

    def stopService(self) -> Any:
        """Listeners first, then the drain, then the targets (MultiService would stop
        its children all at once)."""
        service.Service.stopService(self)
        pending, self._pending_reload = self._pending_reload, None
        if pending is not None:  # its key is not ready: it never served
            pending.retire()
        listeners = [defer.maybeDeferred(s.stopService) for s in self if isinstance(s, ListenerService)]
        self.drain = Drain(
            self.dispatcher, self.reactor, self.config.shutdown_grace, self.notifier
        )
        drained = defer.gatherResults([*listeners, self.drain.start()], consumeErrors=True)
        drained.addErrback(lambda failure: log.failure("draining", failure))

        def close_the_rest(_: object) -> Any:
            rest = [s for s in self if not isinstance(s, ListenerService)]
            return defer.gatherResults(
                [defer.maybeDeferred(s.stopService) for s in reversed(rest)], consumeErrors=True
            )

        return drained.addCallback(close_the_rest).addBoth(self._stop_auditing)

    def _stop_auditing(self, result: Any) -> Any:
        """The sessions have ended (their events are written): stop observing the log."""
        if self.audit is not None:
            from twisted.logger import globalLogPublisher

            globalLogPublisher.removeObserver(self.audit)
            self.audit.close()
        if self.store is not None:  # last: it writes what the audit trail queued
            return self.store.stopService().addBoth(lambda _: result)
        return result

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


def check_state_dir(state_dir: Path) -> None:
    """Create the state directory (0700) if needed and make sure the gateway can write in
    it (host keys, known_hosts, flow records); OSError otherwise."""
    from gateway.hostkeys import ensure_state_dir

    ensure_state_dir(Path(state_dir))
    with tempfile.TemporaryFile(dir=state_dir):
        pass
