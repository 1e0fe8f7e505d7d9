"""One flow record, read as input like any other: every field of the v1 format (written
by the recorder, :mod:`protocols.flow`) checked for its type and bounded before it becomes
a :class:`Flow`, the form every rendering reads; text made safe to print (control and
direction-override characters escaped), so none reaches a terminal as it was written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from protocols.flow import STAGES

MAX_MESSAGES = 5000
MAX_LIST = 100
MAX_TEXT = 200
MAX_VERSION = 255  # an identification line's longest (RFC 4253), shown whole
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")

# Negotiated parameters in reading order; any others the recorder adds follow, sorted.
NEGOTIATED_ORDER = (
    "kex",
    "host_key_type",
    "host_key_algorithm",
    "host_key_bits",
    "host_key_fingerprint",
    "server_key_bits",
    "cipher",
    "ciphers_offered",
    "cipher_c2s",
    "cipher_s2c",
    "mac",
    "mac_c2s",
    "mac_s2c",
    "compression",
    "compression_c2s",
    "compression_s2c",
)


def safe_text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A string safe to print: control and direction-override characters escaped, bounded."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    s = str(value)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


@dataclass
class Message:
    t: float | None
    dir: str  # "c2s" | "s2c" | "?"
    name: str
    size: int | None
    stage: str
    count: int = 1


@dataclass
class Stage:
    name: str
    start: float | None = None
    end: float | None = None
    messages: int | None = None
    bytes: int | None = None
    round_trips: int | None = None

    @property
    def present(self) -> bool:
        return self.start is not None

    @property
    def elapsed(self) -> float | None:
        if self.start is None or self.end is None or self.end < self.start:
            return None
        return self.end - self.start


@dataclass
class Flow:
    """One flow record, checked: every field has the type the renderers expect."""

    id: str
    raw: dict[str, Any]
    link: str | None = None
    role: str = "?"
    protocol: str = "?"
    peer: str = "?"
    started: datetime | None = None
    duration: float | None = None
    server_version: str | None = None
    client_version: str | None = None
    user: str | None = None
    target: str | None = None
    negotiated: dict[str, str] = field(default_factory=dict)
    auth: list[tuple[str, str, float | None]] = field(default_factory=list)
    requests: list[tuple[str, str, float | None]] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    messages_truncated: bool = False
    bytes_c2s: int | None = None
    bytes_s2c: int | None = None
    exit_status: int | None = None
    exit_signal: str | None = None
    close_reason: str | None = None

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def messages_in(self, stage: str) -> list[Message]:
        return [m for m in self.messages if m.stage == stage]

    @property
    def result(self) -> str:
        """One word or two for ``list``: how the connection ended."""
        if self.exit_signal:
            return f"signal {self.exit_signal}"
        if self.exit_status is not None:
            return f"exit {self.exit_status}"
        results = [r for _, r, _ in self.auth]
        if "success" in results:
            return "ok"
        if results:
            return "auth failed"
        if self.role == "client" or self.protocol == "telnet":
            return shorten(self.close_reason or "closed", 24)
        return "no login"


def shorten(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def _parse_time(value: Any) -> datetime | None:
    text = safe_text(value, 64)
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _attempts(value: Any, key: str) -> list[tuple[str, str, float | None]]:
    if not isinstance(value, list):
        return []
    out = []
    for item in value[:MAX_LIST]:
        if isinstance(item, dict):
            out.append(
                (
                    safe_text(item.get(key), 64) or "?",
                    safe_text(item.get("result"), 32) or "?",
                    _number(item.get("t")),
                )
            )
    return out


def _negotiated(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    found: dict[str, str] = {}
    for key, v in list(value.items())[:MAX_LIST]:
        name = safe_text(key, 48)
        if isinstance(v, list):
            shown = safe_text(
                ",".join(str(x) for x in v[:MAX_LIST] if not isinstance(x, (dict, list)))
            )
        elif isinstance(v, bool):
            shown = "yes" if v else "no"  # strict_kex
        else:
            shown = safe_text(v)
        if name and shown is not None:
            found[name] = shown
    order = {k: i for i, k in enumerate(NEGOTIATED_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _messages(value: Any) -> tuple[list[Message], bool]:
    if not isinstance(value, list):
        return [], False
    out = []
    for item in value[:MAX_MESSAGES]:
        if not isinstance(item, dict):
            continue
        direction = item.get("dir")
        stage = item.get("stage")
        out.append(
            Message(
                t=_number(item.get("t")),
                dir=direction if direction in ("c2s", "s2c") else "?",
                name=safe_text(item.get("name"), 64) or "?",
                size=_count(item.get("size")),
                stage=stage if stage in STAGES else "",
                count=_count(item.get("count")) or 1,
            )
        )
    return out, len(value) > MAX_MESSAGES


def _stages(value: Any, messages: list[Message]) -> list[Stage]:
    given: dict[str, dict[str, Any]] = {}
    if isinstance(value, list):
        for item in value[: len(STAGES) * 4]:
            if isinstance(item, dict) and item.get("name") in STAGES:
                given.setdefault(item["name"], item)
    stages = []
    for name in STAGES:
        item = given.get(name)
        if item is not None and _number(item.get("start")) is not None:
            stages.append(
                Stage(
                    name,
                    _number(item.get("start")),
                    _number(item.get("end")),
                    _count(item.get("messages")),
                    _count(item.get("bytes")),
                    _count(item.get("round_trips")),
                )
            )
        else:
            stages.append(Stage(name))
    # A message without a (known) stage goes with the stage that was open at its time.
    for m in messages:
        if not m.stage:
            opened = [
                s for s in stages if s.start is not None and m.t is not None and s.start <= m.t
            ]
            m.stage = opened[-1].name if opened else "version"
    # Stages the record does not describe but whose messages it lists: derive the numbers.
    for stage in stages:
        if stage.present:
            continue
        mine = [m for m in messages if m.stage == stage.name]
        if mine:
            times = [m.t for m in mine if m.t is not None]
            stage.start = min(times) if times else 0.0
            stage.end = max(times) if times else stage.start
            stage.messages = sum(m.count for m in mine)
            stage.bytes = sum(m.size or 0 for m in mine)
            stage.round_trips = sum(
                1 for a, b in zip(mine, mine[1:], strict=False) if a.dir == "c2s" and b.dir == "s2c"
            )
    return stages


def is_flow_record(record: Any) -> bool:
    """Cheap first check: a JSON object with a printable string ID (and an integer "v")."""
    if not isinstance(record, dict):
        return False
    flow_id = record.get("id")
    if not isinstance(flow_id, str) or not flow_id or len(flow_id) > 128:
        return False
    return not _UNPRINTABLE.search(flow_id) and isinstance(record.get("v", 1), int)


def parse_flow(record: Any) -> Flow | None:
    """A checked :class:`Flow` from one decoded record; None when it is not a flow record."""
    if not is_flow_record(record):
        return None
    flow_id = record["id"]
    versions = record.get("versions") if isinstance(record.get("versions"), dict) else {}
    traffic = record.get("bytes") if isinstance(record.get("bytes"), dict) else {}
    messages, cut = _messages(record.get("messages"))
    link = record.get("link")
    exit_status = record.get("exit_status")
    return Flow(
        id=flow_id,
        raw=record,
        link=safe_text(link, 128) if isinstance(link, str) and link else None,
        role=safe_text(record.get("role"), 16) or "?",
        protocol=safe_text(record.get("protocol"), 16) or "?",
        peer=safe_text(record.get("peer"), 80) or "?",
        started=_parse_time(record.get("started")),
        duration=_number(record.get("duration")),
        server_version=safe_text(versions.get("server"), MAX_VERSION),
        client_version=safe_text(versions.get("client"), MAX_VERSION),
        user=safe_text(record.get("user"), 80),
        target=safe_text(record.get("target"), 80),
        negotiated=_negotiated(record.get("negotiated")),
        auth=_attempts(record.get("auth"), "method"),
        requests=_attempts(record.get("requests"), "name"),
        stages=_stages(record.get("stages"), messages),
        messages=messages,
        messages_truncated=cut or record.get("messages_truncated") is True,
        bytes_c2s=_count(traffic.get("c2s")),
        bytes_s2c=_count(traffic.get("s2c")),
        exit_status=exit_status
        if isinstance(exit_status, int) and not isinstance(exit_status, bool)
        else None,
        exit_signal=safe_text(record.get("exit_signal"), 32),
        close_reason=safe_text(record.get("close_reason")),
    )
