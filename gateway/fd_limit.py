"""The open-file (descriptor) limit at start: every connection costs one descriptor, and a
flood that uses up the soft limit (often 1024) gets every new connection reset, legitimate
ones included, while the hard limit allows far more. The gateway raises its soft limit to
the hard one and logs both; the ``max_startups`` limits refuse the excess well before.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

from twisted.logger import Logger

log = Logger()


def raise_open_file_limit(
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the (soft, hard) in force.
    Never raises: a limit that cannot be raised is logged and the gateway goes on."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if soft != hard:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warn(
                "cannot raise the open file limit from {soft} to {hard}: {error}",
                soft=soft, hard=hard, error=e,
            )  # fmt: skip
    raised = f" (raised from {before})" if soft != before else ""
    log.info(
        "open file limit: soft {soft}{raised}, hard {hard}", soft=soft, hard=hard, raised=raised
    )
    return soft, hard
