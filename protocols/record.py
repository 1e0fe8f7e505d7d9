"""The per-connection record that front ends fill in and the gateway logs at close.

One ``ConnectionRecord`` per accepted connection. The dispatcher creates it; the protocol
front end that takes the connection fills in what it negotiated and who logged in; at
connection close the gateway writes one log line from it. Never store secrets here:
no passwords, keys or session data — names, numbers and sizes only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocols.flow import FlowRecorder


@dataclass
class ConnectionRecord:
    peer: str
    started: float = field(default_factory=time.monotonic)
    protocol: str = ""  # "ssh1" | "ssh2" | "" before the version exchange finished
    server_version: str = ""
    client_version: str = ""
    algorithms: dict[str, str] = field(default_factory=dict)
    user: str = ""
    auth_method: str = ""
    auth_result: str = ""  # "success" | "failure" | "" (never reached auth)
    close_reason: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    # The flow recorder of this connection (protocols.flow), when recording is on: front
    # ends feed it every message; the gateway writes its record at close.
    flow: FlowRecorder | None = field(default=None, repr=False, compare=False)

    def duration(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started

    def describe(self) -> str:
        """Protocol and negotiated algorithms, e.g. "ssh2 kex=curve25519-sha256 ..."."""
        algs = " ".join(f"{k}={v}" for k, v in self.algorithms.items())
        return f"{self.protocol or '-'} {algs}".strip()

    def summary(self) -> str:
        algs = " ".join(f"{k}={v}" for k, v in self.algorithms.items()) or "-"
        return (
            f"peer={self.peer} protocol={self.protocol or '-'} "
            f"client={self.client_version or '-'!r} algorithms=[{algs}] "
            f"user={self.user or '-'!r} auth={self.auth_method or '-'} "
            f"result={self.auth_result or 'none'} "
            f"in={self.bytes_in} out={self.bytes_out} "
            f"duration={self.duration():.3f}s close={self.close_reason or '-'!r}"
        )
