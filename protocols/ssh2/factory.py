"""The SSH-2 handoff factory: what the dispatcher calls to get an SSH-2 connection.

A thin layer: it holds what every connection shares (portal, host keys, offered
algorithms, DH groups, login limits, clock) and builds one SSH2ServerTransport per
handed-over connection.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.conch.ssh.keys import Key
from twisted.internet.interfaces import IProtocol, IReactorTime
from zope.interface import implementer

from protocols.auth import AuthLimits, LoginContext, LoginFlow
from protocols.handoff import IHandoffFactory
from protocols.record import ConnectionRecord
from protocols.ssh2 import moduli
from protocols.ssh2.auth import KeyQueryPortal, SSH2UserAuthServer
from protocols.ssh2.connection import GatewayConnection
from protocols.ssh2.settings import SSH2Settings
from protocols.ssh2.transport import SSH2ServerTransport, offered_algorithms


@implementer(IHandoffFactory)
class SSH2ServerFactory:
    def __init__(
        self,
        portal: Any,
        host_keys: dict[bytes, Key],
        settings: SSH2Settings,
        limits: AuthLimits,
        clock: IReactorTime,
        moduli_path: Path | None = moduli.DEFAULT_MODULI,
    ) -> None:
        self.portal = portal
        self.settings = settings
        self.limits = limits
        self.clock = clock
        # Conch looks host keys up by key type ("ssh-rsa" also signs rsa-sha2-*); accept
        # a dict keyed by either key type or signature algorithm.
        self.privateKeys: dict[bytes, Key] = {}
        for key in host_keys.values():
            if key.isPublic():
                raise ValueError("ssh2 host keys must be private keys")
            self.privateKeys[key.sshType()] = key
        self.publicKeys = {kind: key.public() for kind, key in self.privateKeys.items()}
        uses_gex = any(name.startswith("diffie-hellman-group-exchange") for name in settings.kex)
        self.groups: moduli.Groups = moduli.load_groups(moduli_path) if uses_gex else {}
        self.offered = offered_algorithms(settings, self.privateKeys, self.groups)
        self.services: dict[bytes, type] = {
            b"ssh-userauth": SSH2UserAuthServer,
            b"ssh-connection": GatewayConnection,
        }

    def with_portal(self, portal: Any) -> SSH2ServerFactory:
        """This factory (same keys, settings, groups) with another portal: the inner
        server of one jump channel, whose login is bound to that channel's user."""
        other = copy.copy(self)
        other.portal = portal
        return other

    def build_protocol(
        self, record: ConnectionRecord, server_version: bytes, client_version: bytes
    ) -> IProtocol:
        return SSH2ServerTransport(self, record, server_version, client_version, self.offered, self.clock)

    def make_login_flow(self, context: LoginContext, on_grace_expired: Callable[[], None]) -> LoginFlow:
        return LoginFlow(KeyQueryPortal(self.portal), self.limits, context, self.clock, on_grace_expired)

    # Conch's transport asks its factory for services.
    def getService(self, transport: Any, service: bytes) -> type | None:
        if service == b"ssh-userauth" and transport.service is None:
            return self.services[service]
        if service == b"ssh-connection" and hasattr(transport, "avatar"):
            return self.services[service]
        return None
