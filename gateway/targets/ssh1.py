"""The SSH-1 upstream target: a device that speaks only SSH-1, reached with our own
SSH-1 client (protocols.ssh1.client) and bridged to the front end by BridgeSession.

This module owns the connector: TCP connect, host-key check through the gateway's
known_hosts (before the session key is sent; a new key is pinned only once the device
has accepted the session key, which proves it holds the key), the upstream login with
the credentials the gateway holds (stored password, SSH-1 RSA key file, or the user's
gateway password for ``credentials = "pass-through"``), and translating every failure
into an UpstreamFailure line for the user. Buffering, timeouts, the user's stderr message and
the log line are the bridge's.

Relaying SSH-1 RSA authentication is a known attack, so the client's own key is never
used upstream: only the key file configured for the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import __version__
from gateway.known_hosts import after_pins_read
from gateway.targets import TargetConfig
from gateway.targets.bridge import (
    Connector,
    IUpstreamSession,
    UpstreamFailure,
    UpstreamSink,
    UpstreamTarget,
    upstream_credentials,
)
from protocols.session import SessionRequest, WindowSize
from protocols.ssh1 import ciphers as ssh1_ciphers
from protocols.ssh1 import keyfile
from protocols.ssh1.client import SSH1ClientError, SSH1ClientOptions, SSH1ClientProtocol
from protocols.ssh1.client_connection import DEFAULT_CIPHERS

log = Logger()

EndpointFactory = Callable[[str, int, float], IStreamClientEndpoint]


@implementer(IUpstreamSession)
class SSH1UpstreamSession:
    """IUpstreamSession over an opened SSH1ClientProtocol."""

    def __init__(self, protocol: SSH1ClientProtocol) -> None:
        self.protocol = protocol

    @property
    def description(self) -> str:
        return self.protocol.description

    @property
    def algorithms(self) -> dict[str, str]:
        core = self.protocol.core
        cipher = getattr(core, "cipher", None)
        return {"cipher": cipher} if isinstance(cipher, str) else {}

    def write(self, data: bytes) -> None:
        self.protocol.write(data)

    def send_eof(self) -> None:
        self.protocol.send_eof()

    def resize(self, size: WindowSize) -> None:
        self.protocol.resize(size)

    def send_signal(self, name: str) -> None:
        self.protocol.send_signal(name)

    def close(self) -> None:
        self.protocol.close()

    def pauseProducing(self) -> None:
        self.protocol.pauseProducing()

    def resumeProducing(self) -> None:
        self.protocol.resumeProducing()


def _connect_error_message(failure: Failure, where: str) -> str:
    if failure.check(error.ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused"
    if failure.check(error.TimeoutError, error.TCPTimedOutError):
        return f"cannot connect to {where}: timed out"
    if failure.check(error.DNSLookupError):
        return f"cannot connect to {where}: host name not found"
    if failure.check(error.NoRouteError):
        return f"cannot connect to {where}: no route to host"
    reason = failure.getErrorMessage().splitlines()[0] if failure.getErrorMessage() else ""
    return f"cannot connect to {where}: {reason or failure.type.__name__}"


class SSH1Target(UpstreamTarget):
    """``[targets.NAME] protocol = "ssh1"``."""

    protocol = "ssh1"

    def __init__(
        self,
        reactor: Any,
        config: TargetConfig,
        known_hosts: Any,
        *,
        endpoint_factory: EndpointFactory | None = None,
    ) -> None:
        super().__init__(reactor, config)
        self.known_hosts = known_hosts
        self.ciphers = tuple(config.ciphers) or DEFAULT_CIPHERS
        for name in self.ciphers:
            if name not in ssh1_ciphers.BY_NAME:
                raise ValueError(f"targets.{config.name}: unknown ssh1 cipher {name!r}")
        self.compression = config.compression
        if not 0 <= self.compression <= 9:
            raise ValueError(f"targets.{config.name}: compression level must be 0..9")
        self.rsa_key = self._load_key(config.key) if config.key is not None else None
        self._endpoint_factory = endpoint_factory or self._default_endpoint

    def _load_key(self, path: Path) -> Any:
        try:
            data = Path(path).read_bytes()[: keyfile.MAX_FILE + 1]
        except OSError as exc:
            raise ValueError(f"targets.{self.config.name}: cannot read key {path}: {exc.strerror}") from None
        try:
            key, _comment = keyfile.load_private_key(data)
        except ValueError as exc:
            raise ValueError(f"targets.{self.config.name}: key {path}: {exc}") from None
        return key

    def _default_endpoint(self, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
        return HostnameEndpoint(self.reactor, host.encode("idna"), port, timeout=max(1, int(timeout)))

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def options(self, username: str, gateway_password: str | None) -> SSH1ClientOptions:
        config = self.config
        login, password = upstream_credentials(config, username, gateway_password)
        host, port = config.host, config.port

        def checked(check: Callable[[], Any]) -> Any:
            try:
                return check()
            except UpstreamFailure:
                raise
            except Exception:
                log.failure("ssh1 target {target}: host key check failed", target=config.name)
                raise UpstreamFailure(f"host key of {host}:{port} could not be checked") from None

        def verify(e: int, n: int) -> Callable[[], None]:
            bits = n.bit_length()
            pin = checked(
                lambda: self.known_hosts.check_ssh1(
                    host, port, bits, e, n, config.host_key, target=config.name
                )
            )
            # Pinned (accept-new) only once the device answered our session key.
            return lambda: checked(pin.record)

        return SSH1ClientOptions(
            username=login,
            verify_host_key=verify,
            password=password,
            rsa_key=self.rsa_key,
            ciphers=self.ciphers,
            compression=self.compression,
            min_key_bits=config.min_key_bits,
            software_version=__version__,
            workarounds_for=self.workarounds_for(None),
            peer=self.where,
        )

    def connector(self, username: str, gateway_password: str | None = None) -> Connector:
        options = self.options(username, gateway_password)

        def connect(request: SessionRequest, sink: UpstreamSink) -> defer.Deferred:
            return after_pins_read(
                self.known_hosts.up_to_date(self.config.host, self.config.port, "ssh1"),
                lambda: self._connect(options, request, sink),
            )

        return connect

    def _connect(
        self, options: SSH1ClientOptions, request: SessionRequest, sink: UpstreamSink
    ) -> defer.Deferred:
        flow = self.new_flow(sink, options.username)
        options = replace(options, workarounds_for=self.workarounds_for(flow))
        if flow is not None:
            options = replace(options, flow=flow, flow_done=self.flow_done)
        protocol = SSH1ClientProtocol(options, request, sink)
        endpoint = self._endpoint_factory(self.config.host, self.config.port, self.config.connect_timeout)
        connecting = connectProtocol(endpoint, protocol)

        def cancel(_: defer.Deferred) -> None:
            if not connecting.called:
                connecting.cancel()
            else:
                protocol.abort()

        result: defer.Deferred = defer.Deferred(canceller=cancel)

        def connected(_: object) -> defer.Deferred:
            return protocol.opened

        def connect_failed(failure: Failure) -> Failure:
            if failure.check(defer.CancelledError):
                return failure
            return Failure(UpstreamFailure(_connect_error_message(failure, self.where)))

        def opened(proto: SSH1ClientProtocol) -> None:
            if result.called:
                proto.close()
                return
            result.callback(SSH1UpstreamSession(proto))

        def failed(failure: Failure) -> None:
            if result.called:
                return
            if failure.check(UpstreamFailure, defer.CancelledError):
                result.errback(failure)
            elif failure.check(SSH1ClientError):
                result.errback(UpstreamFailure(failure.getErrorMessage()))
            else:
                log.failure("ssh1 target {target}: unexpected error", failure, target=self.config.name)
                result.errback(UpstreamFailure(f"internal error talking to {self.where}"))

        connecting.addCallbacks(connected, connect_failed)
        connecting.addCallbacks(opened, failed)
        return result
