"""Conch's own log chatter, kept out of the gateway log.

Conch logs several info/debug lines per connection and per channel ("sending close 0",
"connection lost", "NEW KEYS", ...). The gateway writes one summary line per connection
from the ConnectionRecord, plus our own lines for logins and disconnects; Conch's
class-level loggers are replaced by :func:`quiet_logger`, which lets only warnings and
worse through.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_quiet = FilteringLogObserver(
    globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
)


def quiet_logger(namespace: str) -> Logger:
    return Logger(namespace=namespace, observer=_quiet)
