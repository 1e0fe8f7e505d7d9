"""The flow recorder: one per connection leg, turning packets into a flow record (v1).

It owns the stage rules of each protocol (which message opens which of the six stages),
message merging and the caps of the record format (``/tmp/flows-spec.md``, kept in the
README as "Flow records"), :meth:`FlowRecorder.to_dict`, and the open legs by id
(:func:`open_flow`). It knows nothing about
Twisted or about where records go: front ends feed it message names and wire sizes, the
gateway writes ``to_dict()`` when the leg closes.

Secrets never reach it: the hooks pass names, numbers and sizes, never payloads. The
per-packet path (:meth:`FlowRecorder.packet`) is a few dict lookups and counter updates,
with no copies, so that recording costs close to nothing on bulk data.

The SSH-2 message name tables live here (not in ``protocols/ssh2``) because the same
names serve the server front end and the upstream client legs; numbers 30-49 and 60-79
mean different messages depending on the key exchange and the auth method in use.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

FORMAT_VERSION = 1
MAX_MESSAGES = 1000
MAX_FILES = 1000  # files SFTP sessions moved, noted in one record

C2S = "c2s"
S2C = "s2c"

STAGES: tuple[str, ...] = ("version", "kex", "auth", "session", "interaction", "close")
_VERSION, _KEX, _AUTH, _SESSION, _INTERACTION, _CLOSE = range(6)


def _stage_table(**stages: tuple[str, ...]) -> dict[str, int]:
    table: dict[str, int] = {}
    for stage, names in stages.items():
        index = STAGES.index(stage)
        for name in names:
            table[name] = index
    return table


# Which message opens which stage. Stages only move forward: a message of an earlier
# stage seen later (an SSH-2 re-key, an SSH-1 IGNORE) is counted in the current one.
_SSH1_OPENS = _stage_table(
    version=("version",),
    kex=("SSH_SMSG_PUBLIC_KEY", "SSH_CMSG_SESSION_KEY"),
    auth=("SSH_CMSG_USER",),
    session=(
        "SSH_CMSG_REQUEST_PTY",
        "SSH_CMSG_REQUEST_COMPRESSION",
        "SSH_CMSG_X11_REQUEST_FORWARDING",
        "SSH_CMSG_PORT_FORWARD_REQUEST",
        "SSH_CMSG_AGENT_REQUEST_FORWARDING",
        "SSH_CMSG_MAX_PACKET_SIZE",
        "SSH_CMSG_EXEC_SHELL",
        "SSH_CMSG_EXEC_CMD",
    ),
    interaction=(
        "SSH_CMSG_STDIN_DATA",
        "SSH_SMSG_STDOUT_DATA",
        "SSH_SMSG_STDERR_DATA",
        "SSH_CMSG_EOF",
        "SSH_CMSG_WINDOW_SIZE",
        "SSH_MSG_CHANNEL_DATA",
        "SSH_MSG_PORT_OPEN",
        "SSH_SMSG_X11_OPEN",
        "SSH_SMSG_AGENT_OPEN",
    ),
    close=("SSH_SMSG_EXITSTATUS", "SSH_CMSG_EXIT_CONFIRMATION", "SSH_MSG_DISCONNECT"),
)
# SSH-1 has no reply to EXEC_SHELL / EXEC_CMD: whatever follows is the interaction.
_SSH1_THEN = {"SSH_CMSG_EXEC_SHELL": _INTERACTION, "SSH_CMSG_EXEC_CMD": _INTERACTION}

_SSH2_OPENS = _stage_table(
    version=("version",),
    kex=("SSH2_MSG_KEXINIT",),
    auth=("SSH2_MSG_SERVICE_REQUEST", "SSH2_MSG_USERAUTH_REQUEST"),
    session=("SSH2_MSG_CHANNEL_OPEN", "SSH2_MSG_GLOBAL_REQUEST"),
    # EOF ends the data flow, so it belongs to it (as SSH-1's CMSG_EOF does), even when no
    # data came first: a command that reads nothing and prints nothing.
    interaction=(
        "SSH2_MSG_CHANNEL_DATA",
        "SSH2_MSG_CHANNEL_EXTENDED_DATA",
        "SSH2_MSG_CHANNEL_EOF",
    ),
    close=("SSH2_MSG_CHANNEL_CLOSE", "SSH2_MSG_DISCONNECT"),
)

_TELNET_OPENS: dict[str, int] = {"data": _INTERACTION}  # IAC commands: default below

_TABLES: dict[str, tuple[dict[str, int], dict[str, int], int]] = {
    # protocol -> (opens, then, stage of a name not in "opens" before any stage)
    "ssh1": (_SSH1_OPENS, _SSH1_THEN, _VERSION),
    "ssh2": (_SSH2_OPENS, {}, _VERSION),
    "telnet": (_TELNET_OPENS, {}, _KEX),  # option negotiation is telnet's "algorithm" stage
}

# SSH-2 message numbers -> names, spelled as OpenSSH's debug output spells them.
SSH2_NAMES: dict[int, str] = {
    1: "SSH2_MSG_DISCONNECT",
    2: "SSH2_MSG_IGNORE",
    3: "SSH2_MSG_UNIMPLEMENTED",
    4: "SSH2_MSG_DEBUG",
    5: "SSH2_MSG_SERVICE_REQUEST",
    6: "SSH2_MSG_SERVICE_ACCEPT",
    7: "SSH2_MSG_EXT_INFO",
    20: "SSH2_MSG_KEXINIT",
    21: "SSH2_MSG_NEWKEYS",
    50: "SSH2_MSG_USERAUTH_REQUEST",
    51: "SSH2_MSG_USERAUTH_FAILURE",
    52: "SSH2_MSG_USERAUTH_SUCCESS",
    53: "SSH2_MSG_USERAUTH_BANNER",
    80: "SSH2_MSG_GLOBAL_REQUEST",
    81: "SSH2_MSG_REQUEST_SUCCESS",
    82: "SSH2_MSG_REQUEST_FAILURE",
    90: "SSH2_MSG_CHANNEL_OPEN",
    91: "SSH2_MSG_CHANNEL_OPEN_CONFIRMATION",
    92: "SSH2_MSG_CHANNEL_OPEN_FAILURE",
    93: "SSH2_MSG_CHANNEL_WINDOW_ADJUST",
    94: "SSH2_MSG_CHANNEL_DATA",
    95: "SSH2_MSG_CHANNEL_EXTENDED_DATA",
    96: "SSH2_MSG_CHANNEL_EOF",
    97: "SSH2_MSG_CHANNEL_CLOSE",
    98: "SSH2_MSG_CHANNEL_REQUEST",
    99: "SSH2_MSG_CHANNEL_SUCCESS",
    100: "SSH2_MSG_CHANNEL_FAILURE",
}

# Key-exchange method messages (30-49) by kex family.
SSH2_KEX_NAMES: dict[str, dict[int, str]] = {
    "ecdh": {30: "SSH2_MSG_KEX_ECDH_INIT", 31: "SSH2_MSG_KEX_ECDH_REPLY"},
    "dh": {30: "SSH2_MSG_KEXDH_INIT", 31: "SSH2_MSG_KEXDH_REPLY"},
    "gex": {
        30: "SSH2_MSG_KEX_DH_GEX_REQUEST_OLD",
        31: "SSH2_MSG_KEX_DH_GEX_GROUP",
        32: "SSH2_MSG_KEX_DH_GEX_INIT",
        33: "SSH2_MSG_KEX_DH_GEX_REPLY",
        34: "SSH2_MSG_KEX_DH_GEX_REQUEST",
    },
}

# User-auth method messages (60-79) by method.
SSH2_AUTH_NAMES: dict[str, dict[int, str]] = {
    "publickey": {60: "SSH2_MSG_USERAUTH_PK_OK"},
    "password": {60: "SSH2_MSG_USERAUTH_PASSWD_CHANGEREQ"},
    "keyboard-interactive": {
        60: "SSH2_MSG_USERAUTH_INFO_REQUEST",
        61: "SSH2_MSG_USERAUTH_INFO_RESPONSE",
    },
}


def ssh2_kex_family(kex: str) -> str:
    """The message family of an SSH-2 key-exchange method name."""
    if "group-exchange" in kex:
        return "gex"
    if kex.startswith("diffie-hellman-group"):
        return "dh"
    return "ecdh"  # curve25519-*, ecdh-sha2-*, sntrup/mlkem hybrids use ECDH numbering


def ssh2_name(number: int, kex: str = "", auth_method: str = "") -> str:
    """The name of SSH-2 message ``number`` given the key exchange and auth method in use."""
    name = SSH2_NAMES.get(number)
    if name is not None:
        return name
    if 30 <= number <= 49:
        name = SSH2_KEX_NAMES[ssh2_kex_family(kex)].get(number)
    elif 60 <= number <= 79:
        name = SSH2_AUTH_NAMES.get(auth_method, {}).get(number)
    return name or f"SSH2_MSG_{number}"


def new_flow_id(now: float | None = None) -> str:
    """A unique id that sorts by time: ``f-20261121T140501Z-3f2a9c1d``."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"f-{stamp:%Y%m%dT%H%M%SZ}-{os.urandom(4).hex()}"


# The recorders of the legs still open, by id. A front end hands its targets only the id
# of its leg (``ISessionClient.flow_id``, which upstream legs link to); the gateway's
# routing finds the recorder here to note the target a session went to. Weak: a leg that
# is gone is gone from here too.
_LIVE: weakref.WeakValueDictionary[str, FlowRecorder] = weakref.WeakValueDictionary()


def open_flow(flow_id: str | None) -> FlowRecorder | None:
    """The recorder of the open leg ``flow_id`` (None if unknown, closed or not given)."""
    return None if flow_id is None else _LIVE.get(flow_id)


class FlowRecorder:
    """Collects one connection leg's flow. Feed it with :meth:`version`, :meth:`packet`,
    :meth:`auth`, :meth:`request`, :meth:`exit` and :meth:`close`; set ``user``,
    ``target``, ``link`` and ``negotiated`` as they become known.

    ``protocol`` may be set after construction (the dispatcher learns it from the client's
    line); the stage table follows it. ``clock`` is monotonic seconds, ``wall`` epoch
    seconds (both injectable for tests).
    """

    def __init__(
        self,
        role: str,
        peer: str,
        protocol: str = "",
        *,
        link: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._t0 = clock()
        self._wall0 = wall()
        self.id = new_flow_id(self._wall0)
        _LIVE[self.id] = self
        self.link = link
        self.role = role
        self.peer = peer
        self.user: str | None = None
        self.target: str | None = None
        self.versions: dict[str, str] = {}
        self.negotiated: dict[str, Any] = {}
        self.auth_attempts: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self.files_truncated = False
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.close_reason: str = ""
        self.bytes = {C2S: 0, S2C: 0}
        # [t, dir, name, size, stage, count] per entry: a list is a third of a dict's
        # memory, and a connection may hold a thousand of them.
        self.messages: list[list[Any]] = []
        self.messages_truncated = False
        self._last: list[Any] | None = None
        self._stage = -1
        self._then: int | None = None
        self._start: list[float | None] = [None] * 6
        self._end: list[float] = [0.0] * 6
        self._count = [0] * 6
        self._bytes = [0] * 6
        self._trips = [0] * 6
        self._last_dir: list[str | None] = [None] * 6
        self._duration: float | None = None
        self.auth_method = ""  # the SSH-2 method in progress (names messages 60-79)
        self.protocol = protocol

    @property
    def protocol(self) -> str:
        return self._protocol

    @protocol.setter
    def protocol(self, value: str) -> None:
        self._protocol = value
        self._opens, self._thens, self._default = _TABLES.get(value, ({}, {}, _VERSION))

    # -------------------------------------------------------------------- feeding
    def now(self) -> float:
        return self._clock() - self._t0

    def version(self, direction: str, line: str, size: int | None = None) -> None:
        """An identification line: ``direction`` s2c is the server's."""
        self.versions["server" if direction == S2C else "client"] = line
        self.packet(direction, "version", len(line) + 2 if size is None else size)

    def packet(self, direction: str, name: str, size: int, count: int = 1) -> None:
        """One message on the wire (``size``: its wire bytes), or ``count`` consecutive
        messages of one name (``size``: their wire bytes together). The hot path: O(1)."""
        t = self._clock() - self._t0
        stage = self._stage
        opens = self._opens.get(name)
        if self._then is not None:
            if self._then > stage:
                stage = self._then
            self._then = None
        if opens is not None:
            if opens > stage:
                stage = opens
        elif stage < 0:
            stage = self._default
        if stage != self._stage:
            self._stage = stage
            if self._start[stage] is None:
                self._start[stage] = t
        if opens == _VERSION:
            # A client may send its KEXINIT before the server's line arrives (Conch,
            # OpenSSH): the line still belongs to the version stage.
            stage = _VERSION
            if self._start[stage] is None:
                self._start[stage] = t
        then = self._thens.get(name)
        if then is not None:
            self._then = then
        self._end[stage] = t
        self._count[stage] += count
        self._bytes[stage] += size
        if direction == S2C and self._last_dir[stage] == C2S:
            self._trips[stage] += 1
        self._last_dir[stage] = direction
        self.bytes[direction] += size
        last = self._last
        if last is not None and last[2] == name and last[1] == direction:
            last[3] += size
            last[5] += count
            return
        if len(self.messages) >= MAX_MESSAGES:
            self.messages_truncated = True
            self._last = None
            return
        last = [t, direction, name, size, STAGES[stage], count]
        self.messages.append(last)
        self._last = last

    def next_stage(self, stage: str) -> None:
        """The next message opens ``stage`` (when a name alone cannot tell, e.g. SSH-2's
        exit-status CHANNEL_REQUEST, which is the start of the close)."""
        self._then = STAGES.index(stage)

    def auth(self, method: str, result: str) -> None:
        """One authentication attempt; ``result`` is success, failure or partial."""
        self.auth_attempts.append({"method": method, "result": result, "t": self.now()})

    def request(self, name: str, result: str) -> None:
        """A session request (SSH-2 channel request, SSH-1 preparatory request)."""
        self.requests.append({"name": name, "result": result, "t": self.now()})

    def file(self, direction: str, path: str, size: int, result: str) -> None:
        """A file an SFTP session moved: served by the gateway itself (over an SSH-1
        device's scp) or relayed and watched (gateway.sftp_watch). ``direction`` is "get"
        or "put", ``path`` the name the user chose; no contents. At most MAX_FILES are
        kept."""
        if len(self.files) >= MAX_FILES:
            self.files_truncated = True
            return
        self.files.append(
            {"direction": direction, "path": path, "size": size, "result": result, "t": self.now()}
        )

    def exit(self, status: int | None = None, signal: str | None = None) -> None:
        self.exit_status = status
        self.exit_signal = signal

    def close(self, reason: str = "") -> None:
        """The leg is over; the first call fixes the duration (later ones only fill in a
        missing reason)."""
        if reason and not self.close_reason:
            self.close_reason = reason
        if self._duration is not None:
            return
        _LIVE.pop(self.id, None)
        self._duration = self.now()
        if self._start[_CLOSE] is None:
            # Closed without a closing message (TCP close, timeout): the stage is the moment.
            self._start[_CLOSE] = self._end[_CLOSE] = self._duration
        else:
            self._end[_CLOSE] = max(self._end[_CLOSE], self._duration)

    @property
    def closed(self) -> bool:
        return self._duration is not None

    def stage_start(self, stage: str) -> float | None:
        """When ``stage`` (one of :data:`STAGES`) began, in seconds from the leg's start;
        None if it was never reached."""
        return self._start[STAGES.index(stage)]

    # -------------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        duration = self._duration if self._duration is not None else self.now()
        stages = []
        for index, name in enumerate(STAGES):
            start = self._start[index]
            stages.append(
                {
                    "name": name,
                    "start": None if start is None else round(start, 6),
                    "end": None if start is None else round(self._end[index], 6),
                    "messages": self._count[index],
                    "bytes": self._bytes[index],
                    "round_trips": self._trips[index],
                }
            )
        messages = []
        for t, direction, name, size, stage, count in self.messages:
            out = {"t": round(t, 6), "dir": direction, "name": name, "size": size, "stage": stage}
            if count > 1:
                out["count"] = count
            messages.append(out)
        record: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "id": self.id,
            "link": self.link,
            "role": self.role,
            "protocol": self.protocol or None,
            "peer": self.peer,
            "started": datetime.fromtimestamp(self._wall0, UTC).isoformat(),
            "duration": round(duration, 6),
            "versions": dict(self.versions),
            "user": self.user or None,
            "target": self.target or None,
            "negotiated": dict(self.negotiated),
            "auth": [dict(a, t=round(a["t"], 6)) for a in self.auth_attempts],
            "requests": [dict(r, t=round(r["t"], 6)) for r in self.requests],
            "stages": stages,
            "messages": messages,
            "messages_truncated": self.messages_truncated,
            "bytes": dict(self.bytes),
            "exit_status": self.exit_status,
            "close_reason": self.close_reason,
        }
        if self.exit_signal is not None:
            record["exit_signal"] = self.exit_signal
        if self.files:  # only where the gateway itself served files
            record["files"] = [dict(f, t=round(f["t"], 6)) for f in self.files]
            record["files_truncated"] = self.files_truncated
        return record


__all__ = [
    "C2S",
    "S2C",
    "STAGES",
    "FlowRecorder",
    "new_flow_id",
    "open_flow",
    "ssh2_name",
    "ssh2_kex_family",
]
