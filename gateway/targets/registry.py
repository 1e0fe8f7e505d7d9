"""The target protocols: one row for each ``protocol = "..."`` a ``[targets.NAME]`` table
may name. gateway.config reads it for the names, the default ports and the algorithm
check; gateway.routing for the class that serves a target and whether it needs the
known_hosts file. Which config keys each protocol takes is in gateway.config's schema.

Plain imports of every protocol module: a broken one stops the gateway at start-up with
its traceback rather than hiding behind a lazy import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.targets import TargetConfig
from gateway.targets.ssh1 import SSH1Target
from gateway.targets.ssh2 import SSH2Target, offered_algorithms
from gateway.targets.telnet import TelnetTarget


@dataclass(frozen=True)
class TargetProtocol:
    name: str
    # Built once per target as ``upstream(reactor, config, known_hosts)``; None for
    # ``local``, whose one LocalTarget (programs on the gateway host) serves every such target.
    upstream: Callable[[Any, TargetConfig, Any], Any] | None
    default_port: int | None = None
    checks_host_keys: bool = False  # pins upstream host keys in <state_dir>/known_hosts
    # Raises ValueError for an algorithm name the client does not know (config errors).
    check_algorithms: Callable[[TargetConfig], object] | None = None


TARGET_PROTOCOLS: dict[str, TargetProtocol] = {
    protocol.name: protocol
    for protocol in (
        TargetProtocol("ssh1", SSH1Target, default_port=22, checks_host_keys=True),
        TargetProtocol(
            "ssh2",
            SSH2Target,
            default_port=22,
            checks_host_keys=True,
            check_algorithms=offered_algorithms,
        ),
        TargetProtocol("telnet", TelnetTarget, default_port=23),
        TargetProtocol("local", None),
    )
}
