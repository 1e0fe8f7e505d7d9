"""The SSH-2 upstream target: ``[targets.NAME]`` with ``protocol = "ssh2"``, reached with the
gateway's SSH-2 client (protocols.ssh2.client) and bridged to the front end by BridgeSession.

This module owns what makes the client a target: the target's config turned into client
options (algorithm lists, login from upstream_credentials, the key file), the host-key
check against the gateway's known_hosts (a new key is pinned only once the device has
proved it holds it, at the end of the first key exchange; algorithms of already-pinned key
types are preferred, as OpenSSH does) and the client's SSH2ClientError turned into an
UpstreamFailure line for the user. Buffering while connecting, timeouts, user-visible
failure lines and the log line stay in gateway.targets.bridge.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.conch.ssh import keys
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from gateway.hostkeys import key_error_reason
from gateway.known_hosts import KnownHosts, after_pins_read
from gateway.targets import TargetConfig
from gateway.targets.bridge import (
    Connector,
    IUpstreamSession,
    UpstreamFailure,
    UpstreamSink,
    UpstreamTarget,
    upstream_credentials,
)
from protocols.session import SessionRequest
from protocols.ssh2 import client
from protocols.ssh2.algorithms import AlgorithmError, client_offer
from protocols.ssh2.client_state import SSH2ClientError, SSH2ClientOptions

log = Logger()

MAX_KEY_FILE = 64 * 1024

__all__ = ["AlgorithmError", "SSH2Target", "offered_algorithms"]


def offered_algorithms(config: TargetConfig) -> dict[str, list[bytes]]:
    """The client's algorithm lists for ``config``; raises AlgorithmError for unknown
    names (the config loader calls this at start-up)."""
    return client_offer(config.kex, config.host_key_algorithms, config.ciphers, config.macs)


def _prefer_known(offered: list[bytes], known_types: list[str]) -> list[bytes]:
    """Put the host key algorithms of already-recorded key types first, as OpenSSH does,
    so a pinned host is not reported as changed only because it has several keys."""
    if not known_types:
        return list(offered)

    def key_type(alg: bytes) -> str:
        return "ssh-rsa" if alg.startswith(b"rsa-sha2-") else alg.decode()

    first = [alg for alg in offered if key_type(alg) in known_types]
    return first + [alg for alg in offered if alg not in first]


def _client_error(failure: UpstreamFailure) -> SSH2ClientError:
    """The client's error for a gateway failure; :func:`_upstream_failure` gets it back."""
    error = SSH2ClientError(str(failure))
    error.__cause__ = failure
    return error


def _upstream_failure(reason: Failure) -> Failure:
    if reason.check(SSH2ClientError):
        cause = reason.value.__cause__
        if isinstance(cause, UpstreamFailure):
            return Failure(cause)
        return Failure(UpstreamFailure(str(reason.value)))
    return reason


class _KeyFileError(Exception):
    """Our own words about the target's key file (safe to log, unlike the parsers')."""


class SSH2Target(UpstreamTarget):
    """``[targets.NAME]`` with ``protocol = "ssh2"``."""

    def __init__(self, reactor: Any, config: TargetConfig, known_hosts: KnownHosts) -> None:
        super().__init__(reactor, config)
        self.known_hosts = known_hosts
        self.algorithms = offered_algorithms(config)

    def connector(self, username: str, password: str | None) -> Connector:
        login, upstream_password = upstream_credentials(self.config, username, password)

        def connect(req: SessionRequest, sink: UpstreamSink) -> defer.Deferred:
            return after_pins_read(
                self.known_hosts.up_to_date(self.config.host, self.config.port, "ssh2"),
                lambda: self._connect(req, sink, login, upstream_password),
            )

        return connect

    def _load_key(self) -> keys.Key | None:
        path = self.config.key
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_KEY_FILE + 1)
            if len(data) > MAX_KEY_FILE:
                raise _KeyFileError("key file too large")
            key = keys.Key.fromString(data)
            if key.isPublic():
                raise _KeyFileError("a public key, not a private one")
        except _KeyFileError as exc:
            why = str(exc)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
        except Exception as exc:  # Conch's parsers raise many types, AssertionError included
            why = key_error_reason(exc)
        else:
            return key
        log.error(
            "ssh2 target {name}: cannot use key file {path}: {why}",
            name=self.config.name,
            path=path,
            why=why,
        )
        raise UpstreamFailure("the gateway's key for this target cannot be used")

    def _connect(
        self, request: SessionRequest, sink: UpstreamSink, login: str, password: str | None
    ) -> defer.Deferred:
        key = self._load_key()
        asks = self.config.keyboard_interactive == "ask"
        if key is None and password is None and not asks:
            if self.config.credentials == "pass-through":
                raise UpstreamFailure(
                    "no password to pass through (log in to the gateway with one)"
                )
            raise UpstreamFailure("no credentials configured for this target")
        options = self.options(login, password, key)
        if asks:
            options = replace(options, ask=sink.ask)
        flow = self.new_flow(sink, login)
        options = replace(options, workarounds_for=self.workarounds_for(flow))
        if flow is not None:
            options = replace(options, flow=flow, flow_done=self.flow_done)
        d = client.connect(self.reactor, options, request, sink)
        d.addCallback(self._opened)
        d.addErrback(_upstream_failure)
        return d

    @staticmethod
    def _opened(upstream: Any) -> Any:
        alsoProvides(upstream, IUpstreamSession)
        return upstream

    def options(self, login: str, password: str | None, key: keys.Key | None) -> SSH2ClientOptions:
        """The client's options for one connection (the known key types as of now)."""
        config = self.config
        host, port = config.host, config.port
        try:
            known = self.known_hosts.ssh2_key_types(host, port)
        except UpstreamFailure:
            known = []  # check_ssh2 reports the unusable file during key exchange

        def verify(key: keys.Key) -> defer.Deferred:
            try:
                pin = self.known_hosts.check_ssh2(
                    host, port, key, config.host_key, target=config.name
                )
            except UpstreamFailure as exc:
                return defer.fail(_client_error(exc))

            def proven() -> None:
                try:
                    pin.record()
                except UpstreamFailure as exc:  # known_hosts unusable, or pinned otherwise meanwhile
                    raise _client_error(exc) from exc

            return defer.succeed(proven)

        return SSH2ClientOptions(
            host=host,
            port=port,
            username=login,
            verify_host_key=verify,
            password=password,
            key=key,
            kex=tuple(self.algorithms["kex"]),
            host_key_algorithms=tuple(_prefer_known(self.algorithms["host_key"], known)),
            ciphers=tuple(self.algorithms["cipher"]),
            macs=tuple(self.algorithms["mac"]),
            sha1_user_signatures=b"ssh-rsa" in self.algorithms["host_key"],
            rekey=config.rekey,
            workarounds_for=self.workarounds_for(None),
            connect_timeout=config.connect_timeout,
            name=config.name,
        )
