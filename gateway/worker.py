"""One worker process of a gateway with ``workers = N`` (gateway.workers):
``python -m gateway.worker --number N --listen-fds JSON [--config FILE]``.

It builds the same gateway as one process does (gateway.service.make_service) from the
same config file and the host keys the parent writes on its stdin, except that its
listeners adopt the sockets the parent bound (inherited
file descriptors, ``--listen-fds``: endpoint -> fd), and it leaves to the parent what only
one process can do: the ``/metrics`` endpoint and the privilege drop. Its log goes to
stdout as ``LEVEL text`` lines, which the parent logs tagged with the worker's number.
SIGHUP reloads it and SIGTERM drains it, as for one process (gateway.lifecycle).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from typing import Any, TextIO

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import provider


def worker_config(config: Any, number: int) -> Any:
    """What worker ``number`` runs of ``config``: one process (``workers = 1``), its
    metrics on its private socket for the parent to sum (gateway.worker_metrics) instead
    of ``[metrics] listen``, and no privilege drop (the parent dropped before starting it)."""
    from gateway.worker_metrics import worker_metrics_endpoint

    listen = config.metrics.listen
    if listen is not None:
        listen = worker_metrics_endpoint(config.state_dir, number)
    metrics = dataclasses.replace(config.metrics, listen=listen)
    from gateway.worker_sessions import worker_control_socket

    # Its own control socket: the parent serves the configured one and asks this one
    # (gateway.worker_sessions).
    control_socket = worker_control_socket(config.state_dir, number)
    control = dataclasses.replace(config.control, socket=control_socket)
    # Its own name in the shared store's session registry (gateway.store.sessions).
    store = dataclasses.replace(config.store, worker=number)
    return dataclasses.replace(
        config, metrics=metrics, control=control, store=store, run_as=None, workers=1
    )


def line_observer(stream: TextIO) -> Any:
    """A log observer writing ``LEVEL text`` lines (tracebacks line by line) to ``stream``."""

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        level = getattr(event.get("log_level"), "name", "info")
        try:
            stream.write("".join(f"{level} {line}\n" for line in text.splitlines() or [""]))
            stream.flush()
        except (OSError, ValueError):  # the parent is gone
            pass

    return observe


def detach_from_terminal_signals() -> None:
    """Signals reach a worker from its parent only: its own process group keeps a
    terminal's Ctrl-C (SIGINT to the whole group) from arriving twice (once from the
    terminal, once passed on, which would end the drain at once); and on Linux it gets
    SIGTERM when the parent dies, so no worker outlives its supervisor."""
    try:
        os.setpgrp()
    except OSError:
        pass
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.worker")
    parser.add_argument("--number", type=int, required=True)
    parser.add_argument("--listen-fds", required=True)
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    detach_from_terminal_signals()

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([line_observer(sys.stdout)], redirectStandardIO=False)

    from gateway.config import default_config, load_config
    from gateway.service import StartupFailure, make_service
    from gateway.worker_metrics import worker_metrics_site, worker_metrics_socket
    from gateway.workers import host_keys_from_message

    message = sys.stdin.buffer.read()  # the parent writes the host keys, then closes
    host_keys = host_keys_from_message(message) if message else None
    config = load_config(args.config) if args.config else default_config()
    fds = {str(k): int(v) for k, v in json.loads(args.listen_fds).items()}
    own_config = functools.partial(worker_config, number=args.number)
    metrics_socket = worker_metrics_socket(config.state_dir, args.number)
    metrics_socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    metrics_socket.unlink(missing_ok=True)  # left by this worker's predecessor
    try:
        top = make_service(
            own_config(config), reactor, handle_signals=True, inherited_fds=fds, host_keys=host_keys
        )
        top.config_override = own_config
        for tap in top.session_taps:  # the metrics: served to the parent on a Unix socket
            if hasattr(tap, "site_factory"):
                tap.site_factory = worker_metrics_site
        # Kill requests relayed by the parent name the operator who asked it.
        top.getServiceNamed("control").factory.relay_pid = os.getppid()
        top.privilegedStartService()
        top.startService()
    except StartupFailure as e:
        print(f"error {e}", flush=True)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
