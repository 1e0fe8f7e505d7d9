"""Upstream host-key pins shared by every instance: :class:`SharedKnownHosts` is the
gateway's :class:`~gateway.known_hosts.KnownHosts` (same checks, same policies, same
messages) whose accept-new pins live in the ``host_key_pins`` table instead of the local
file.

- The pins are read into memory at start and every ``cache_ttl`` seconds; checks run on the
  reactor against that copy and the local files (whose ``@revoked`` lines and hand-written
  entries still count).
- A host with no pin in memory is read again before its SSH-2 key is checked
  (:meth:`SharedKnownHosts.up_to_date`), so a key another instance pinned since the last
  refresh is enforced at once.
- A first sighting is pinned with ``INSERT ... ON CONFLICT DO NOTHING`` and read back: the
  database decides which key is the cluster's. This instance enforces its key from the
  moment the key exchange succeeded; if another instance won the race, the winner replaces
  it here as soon as the answer comes (logged as an error), and the losing key is refused
  from then on, on every instance.
- With the database unreachable, known keys are checked against the copy in memory, and a
  host never seen before is refused (not trusted locally): a pin decided by one instance
  alone would be the split decision the store exists to prevent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from gateway.known_hosts import (
    HostKeyPin,
    KnownHosts,
    KnownHostsError,
    _Entry,
    _Offered,
    _parse_line,
    host_name,
)
from gateway.store.worker import IStoreWorker

log = Logger()

# Where a pinned key is said to be, in the CHANGED warning ("the known key is in ...").
PINS_TABLE = Path("[store] host_key_pins")


class SharedKnownHosts(KnownHosts):
    """KnownHosts with the accept-new pins in the shared store."""

    def __init__(self, path: str | os.PathLike[str], store: IStoreWorker) -> None:
        super().__init__(path)
        self.store = store
        # (host_name, protocol) -> the known_hosts line body pinned for it, as last read.
        self.pins: dict[tuple[str, str], str] = {}
        self._unsettled: dict[tuple[str, str], str] = {}  # pinned here, not yet in the table

    def refresh(self) -> defer.Deferred:
        """Read every pin; kept as they were when the database cannot be read."""

        def read(rows: list[tuple[str, str, str]]) -> None:
            pins = {(name, protocol): line for name, protocol, line in rows}
            for key, line in list(self._unsettled.items()):
                if key in pins:  # settled (by us or by whoever was first)
                    del self._unsettled[key]
                else:
                    pins[key] = line
            self.pins = pins

        d: Any = self.store.call("pins")
        return d.addCallbacks(read, lambda _: None)

    def up_to_date(self, host: str, port: int, protocol: str) -> defer.Deferred:
        """A host with no pin in memory is read again before it is checked: another
        instance may have pinned it since the last refresh, and a first sighting here
        would otherwise let a changed key through once (then be refused when the database
        answered). A host already pinned is checked against the copy in memory."""
        if (host_name(host, port), protocol) in self.pins or not self.store.up:
            return defer.succeed(None)
        return self.refresh()

    def _entries(self, protocol: str) -> list[_Entry]:
        entries = super()._entries(protocol)
        for number, ((name, pinned_protocol), line) in enumerate(sorted(self.pins.items()), 1):
            if pinned_protocol == protocol:
                entry = _parse_line(f"{name} {line}", number, PINS_TABLE)
                if entry is not None and entry.protocol == protocol:
                    entries.append(entry)
        return entries

    def _decide(
        self, host: str, port: int, offered: _Offered, policy: str, target: str | None
    ) -> HostKeyPin:
        pin = super()._decide(host, port, offered, policy, target)
        if pin._known is not None and not self.store.up:
            raise self._unreachable(host, port, offered)
        return pin

    def _unreachable(self, host: str, port: int, offered: _Offered) -> KnownHostsError:
        log.error(
            "upstream {host}:{port}: first {type} host key {fp} not trusted: the shared store "
            "is unreachable, so it cannot be pinned for every instance",
            host=host,
            port=port,
            type=offered.key_type,
            fp=offered.fingerprint,
        )
        error = KnownHostsError(
            f"host key for {host}:{port} is not known yet and cannot be pinned now (the "
            f"gateway's shared store is unreachable): refusing to connect; try again later"
        )
        error.detail = "shared store unreachable: a new host key is not trusted"
        return error

    def _append(self, host: str, port: int, offered: _Offered) -> bool:
        if self._judge(self._entries(offered.protocol), host, port, offered) == "ok":
            return False
        if not self.store.up:
            raise self._unreachable(host, port, offered)
        name = host_name(host, port)
        key = (name, offered.protocol)
        # Enforced here at once; the database settles which key is the cluster's.
        self.pins[key] = self._unsettled[key] = offered.line
        log.info(
            "known_hosts: recorded {type} host key {fp} for {host}:{port} (accept-new, "
            "shared store)",
            type=offered.key_type,
            fp=offered.fingerprint,
            host=host,
            port=port,
        )

        def settled(winner: str) -> None:
            self._unsettled.pop(key, None)
            self.pins[key] = winner
            if winner != offered.line:
                log.error(
                    "upstream {host}:{port}: another instance pinned a different {protocol} "
                    "host key first; {fp} seen here is refused from now on",
                    host=host,
                    port=port,
                    protocol=offered.protocol,
                    fp=offered.fingerprint,
                )

        def unsettled(_: object) -> None:
            # Queued: the next refresh after it arrives tells which key the cluster kept.
            self.store.write("pin", name, offered.protocol, offered.line)

        self.store.call("pin", name, offered.protocol, offered.line).addCallbacks(
            settled, unsettled
        )
        return True

    def forget(self, host: str, port: int, protocols: tuple[str, ...] = ("ssh1", "ssh2")) -> Any:
        removed = super().forget(host, port, protocols)
        name = host_name(host, port)
        for protocol in protocols:
            self.pins.pop((name, protocol), None)
            self._unsettled.pop((name, protocol), None)
        self.store.write("forget_pins", name, tuple(protocols))
        return removed


__all__ = ["PINS_TABLE", "SharedKnownHosts"]
