"""Re-keying on our own initiative, for Conch transports of either role.

After ``rekey_limit`` bytes on the wire (both directions together) or ``rekey_interval``
seconds since the last key exchange finished, the transport sends KEXINIT, as OpenSSH
does with its RekeyLimit: keys stay far below the birthday bound of 64-bit block ciphers
and the 2^32-packet sequence wrap, and a long session does not live on one key. Nothing
starts before the first key exchange has finished or while one is running.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

log = Logger()

DEFAULT_REKEY_LIMIT = 1 << 30
DEFAULT_REKEY_INTERVAL = 3600.0


class RekeyingTransport:
    """Mixin for a Conch SSH transport (before Conch's class in the bases).

    The transport sets ``rekey_limit``, ``rekey_interval`` and ``rekey_clock`` (an
    IReactorTime), and calls :meth:`count_for_rekey` with each packet's wire size.
    """

    rekey_limit: int = DEFAULT_REKEY_LIMIT
    rekey_interval: float = DEFAULT_REKEY_INTERVAL
    rekey_clock: Any = None
    key_exchanges = 0  # completed, the first one included
    _since_rekey = 0
    _rekey_timer: Any = None

    def count_for_rekey(self, size: int) -> None:
        self._since_rekey += size
        if self._since_rekey >= self.rekey_limit:
            self.rekey()

    def rekey(self) -> None:
        """Start a key exchange of our own, unless one is running or none has finished."""
        if getattr(self, "sessionID", None) is None or self._rekey_blocked():
            return
        if self.key_exchange_in_progress():  # type: ignore[attr-defined]  (SSH2TransportBase)
            return
        log.debug("ssh2: re-keying after {bytes} bytes", bytes=self._since_rekey)
        self._since_rekey = 0
        self.sendKexInit()  # type: ignore[attr-defined]

    def _rekey_blocked(self) -> bool:
        """True while the transport is going away (a transport may say more)."""
        return getattr(self, "transport", None) is None

    def _newKeys(self) -> None:
        super()._newKeys()  # type: ignore[misc]
        self.key_exchanges += 1
        self._since_rekey = 0
        self._stop_rekey_timer()
        if self.rekey_clock is not None:
            self._rekey_timer = self.rekey_clock.callLater(self.rekey_interval, self.rekey)

    def _stop_rekey_timer(self) -> None:
        if self._rekey_timer is not None and self._rekey_timer.active():
            self._rekey_timer.cancel()
        self._rekey_timer = None

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_rekey_timer()
        super().connectionLost(reason)  # type: ignore[misc]
