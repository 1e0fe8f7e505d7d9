"""``sshgateway flows list|show|compare``: reading flow records and showing them to people.

Owns the reader side of the flow-record format (v1, written by the recorder as JSON lines in
``<state_dir>/flows/flows.jsonl`` and its rotations ``.1``, ``.2``, ...), the alignment of two
flows by the six stages, and the text, JSON and HTML renderings. The records are input like
any other: a line that is too long, not JSON or not a flow is skipped with a note, and every
field is checked and bounded before it is shown (control characters never reach a terminal,
markup never reaches the HTML).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from gateway.config import ConfigError, load_config
from gateway.flows import FLOWS_DIR, FLOWS_FILE
from protocols.flow import STAGES

STAGE_TITLES = {
    "version": "version negotiation",
    "kex": "key and algorithm negotiation",
    "auth": "authentication",
    "session": "session request",
    "interaction": "interaction",
    "close": "close",
}
# The recorder keeps each record far below this (at most 1000 message entries); anything
# longer is not one of its records and is skipped without being held in memory.
MAX_LINE_BYTES = 1 << 20
MAX_FILES = 1000
MAX_MESSAGES = 5000
MAX_LIST = 100
MAX_TEXT = 200
MAX_VERSION = 255  # an identification line's longest (RFC 4253), shown whole
MAX_NOTES = 20
DEFAULT_LIMIT = 20
_ROTATED = re.compile(re.escape(FLOWS_FILE) + r"(?:\.(\d{1,6}))?\Z")
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


class FlowError(Exception):
    """A user-facing error of the flows commands (unknown or ambiguous ID, no records)."""


# -- reading ---------------------------------------------------------------------------------


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
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
            return _short(self.close_reason or "closed", 24)
        return "no login"


def _short(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def _parse_time(value: Any) -> datetime | None:
    text = _text(value, 64)
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
                    _text(item.get(key), 64) or "?",
                    _text(item.get("result"), 32) or "?",
                    _number(item.get("t")),
                )
            )
    return out


def _negotiated(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    found: dict[str, str] = {}
    for key, v in list(value.items())[:MAX_LIST]:
        name = _text(key, 48)
        if isinstance(v, list):
            shown = _text(",".join(str(x) for x in v[:MAX_LIST] if not isinstance(x, (dict, list))))
        elif isinstance(v, bool):
            shown = "yes" if v else "no"  # strict_kex
        else:
            shown = _text(v)
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
                name=_text(item.get("name"), 64) or "?",
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
        link=_text(link, 128) if isinstance(link, str) and link else None,
        role=_text(record.get("role"), 16) or "?",
        protocol=_text(record.get("protocol"), 16) or "?",
        peer=_text(record.get("peer"), 80) or "?",
        started=_parse_time(record.get("started")),
        duration=_number(record.get("duration")),
        server_version=_text(versions.get("server"), MAX_VERSION),
        client_version=_text(versions.get("client"), MAX_VERSION),
        user=_text(record.get("user"), 80),
        target=_text(record.get("target"), 80),
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
        exit_signal=_text(record.get("exit_signal"), 32),
        close_reason=_text(record.get("close_reason")),
    )


@dataclass
class FlowStore:
    """The flow records under one state directory; reading notes what it had to skip."""

    directory: Path
    notes: list[str] = field(default_factory=list)
    _skipped: int = 0

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str]) -> FlowStore:
        return cls(Path(state_dir) / FLOWS_DIR)

    def files(self) -> list[Path]:
        """Record files, oldest first (``flows.jsonl.N`` with the highest N first)."""
        try:
            names = [e.name for e in os.scandir(self.directory) if e.is_file()]
        except FileNotFoundError:
            return []
        except OSError as e:
            self._note(f"{self.directory}: {e.strerror or e}")
            return []
        numbered = []
        for name in names:
            m = _ROTATED.match(name)
            if m:
                numbered.append((int(m.group(1) or 0), name))
        numbered.sort(reverse=True)
        return [self.directory / name for _, name in numbered[-MAX_FILES:]]

    def _note(self, note: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(note)
        else:
            self._skipped += 1

    def finish_notes(self) -> list[str]:
        if self._skipped:
            return [*self.notes, f"... and {self._skipped} more"]
        return list(self.notes)

    def _lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        try:
            f = open(path, "rb")
        except OSError as e:
            self._note(f"{path}: {e.strerror or e}")
            return
        with f:
            number = 0
            while True:
                line = f.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                number += 1
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    # Too long to be a record: drop the rest of it without keeping it.
                    while line and not line.endswith(b"\n"):
                        line = f.readline(MAX_LINE_BYTES)
                    self._note(
                        f"{path.name}:{number}: line longer than {MAX_LINE_BYTES} bytes, skipped"
                    )
                    continue
                yield number, line

    def raw_records(self) -> Iterator[dict[str, Any]]:
        """Every decoded flow record, in the order written (oldest file and line first).

        Only the cheap check is made here; commands turn into :class:`Flow` just the
        records they show, so that listing many large records stays quick.
        """
        for path in self.files():
            for number, line in self._lines(path):
                if not line.strip():
                    continue
                try:
                    decoded = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    self._note(f"{path.name}:{number}: not a JSON line, skipped")
                    continue
                if not is_flow_record(decoded):
                    self._note(f"{path.name}:{number}: not a flow record, skipped")
                    continue
                yield decoded

    def records(self) -> Iterator[Flow]:
        """Every flow, in the order written."""
        for record in self.raw_records():
            flow = parse_flow(record)
            if flow is not None:
                yield flow

    def recent(self, limit: int) -> list[Flow]:
        """The ``limit`` most recently written flows, newest first."""
        last: deque[dict[str, Any]] = deque(maxlen=max(limit, 0))
        last.extend(self.raw_records())
        flows = [f for f in map(parse_flow, last) if f is not None]
        epoch = datetime.min.replace(tzinfo=UTC)
        return sorted(flows, key=lambda f: (f.started or epoch, f.id), reverse=True)

    def find(self, wanted: str) -> tuple[Flow, list[Flow]]:
        """The flow whose ID is ``wanted`` or starts with it, and the legs that link to it."""
        exact: dict[str, Any] | None = None
        matches: dict[str, dict[str, Any]] = {}
        linked: list[dict[str, Any]] = []
        for record in self.raw_records():
            flow_id, link = record["id"], record.get("link")
            if flow_id == wanted:
                exact = record
            elif flow_id.startswith(wanted) and len(matches) < 10:
                matches[flow_id] = record
            if isinstance(link, str) and link.startswith(wanted) and len(linked) < MAX_LIST:
                linked.append(record)
        if exact is None:
            if not matches:
                raise FlowError(f"no flow {_text(wanted, 64)!r} in {self.directory}")
            if len(matches) > 1:
                some = ", ".join(sorted(matches)[:5])
                raise FlowError(f"flow ID {_text(wanted, 64)!r} is ambiguous: {some}, ...")
            (exact,) = matches.values()
        flow = parse_flow(exact)
        assert flow is not None  # raw_records() checked it
        legs = [f for f in map(parse_flow, linked) if f is not None and f.link == flow.id]
        return flow, legs


# -- alignment -------------------------------------------------------------------------------


@dataclass
class StageRow:
    name: str
    a: Stage
    b: Stage
    messages_a: list[Message]
    messages_b: list[Message]


def align(a: Flow, b: Flow) -> list[StageRow]:
    """The two flows stage by stage: always the six stages, in order."""
    return [
        StageRow(name, a.stage(name), b.stage(name), a.messages_in(name), b.messages_in(name))
        for name in STAGES
    ]


def _both_ways(negotiated: dict[str, str], name: str) -> str | None:
    """``name``'s value, from ``name_c2s`` and ``name_s2c`` when the record has them (one
    value when they agree, ``c2s X, s2c Y`` when not), else from ``name`` itself."""
    c2s, s2c = negotiated.get(f"{name}_c2s"), negotiated.get(f"{name}_s2c")
    if c2s is None and s2c is None:
        return negotiated.get(name)
    if c2s == s2c:
        return c2s
    return ", ".join(f"{way} {v}" for way, v in (("c2s", c2s), ("s2c", s2c)) if v is not None)


def _host_key(negotiated: dict[str, str]) -> str | None:
    kind, algorithm = negotiated.get("host_key_type"), negotiated.get("host_key_algorithm")
    name = kind or algorithm
    if kind and algorithm and algorithm != kind:
        name = f"{kind} ({algorithm})"  # e.g. an ssh-rsa key signing with rsa-sha2-512
    bits = negotiated.get("host_key_bits")
    return ", ".join(p for p in (name, bits and f"{bits} bits") if p) or None


def _server_key(negotiated: dict[str, str]) -> str | None:
    bits = negotiated.get("server_key_bits")
    return None if bits is None else f"{bits} bits"


# The negotiated parameters compared row by row, by meaning, whatever each protocol calls
# them: (row, the record's keys it shows, how). SSH-1 has one cipher for both directions,
# SSH-2 one per direction; SSH-1 has no MAC and no named key exchange, SSH-2 no server key.
PARAMETER_ROWS: tuple[tuple[str, tuple[str, ...], Callable[[dict[str, str]], str | None]], ...] = (
    ("cipher", ("cipher", "cipher_c2s", "cipher_s2c"), lambda n: _both_ways(n, "cipher")),
    ("MAC", ("mac", "mac_c2s", "mac_s2c"), lambda n: _both_ways(n, "mac")),
    (
        "compression",
        ("compression", "compression_c2s", "compression_s2c"),
        lambda n: _both_ways(n, "compression"),
    ),
    ("key exchange", ("kex",), lambda n: n.get("kex")),
    ("host key", ("host_key_type", "host_key_algorithm", "host_key_bits"), _host_key),
    ("host key fingerprint", ("host_key_fingerprint",), lambda n: n.get("host_key_fingerprint")),
    ("server key", ("server_key_bits",), _server_key),
)
_SHOWN_IN_ROWS = {key for _, keys, _ in PARAMETER_ROWS for key in keys}


def negotiated_rows(a: Flow, b: Flow) -> list[tuple[str, str | None, str | None]]:
    """What the two flows negotiated, one row per meaning (:data:`PARAMETER_ROWS`, always
    all of them), then any other key either record has, by its own name."""
    rows = [(name, show(a.negotiated), show(b.negotiated)) for name, _, show in PARAMETER_ROWS]
    others = [k for k in a.negotiated if k not in _SHOWN_IN_ROWS]
    others += [k for k in b.negotiated if k not in _SHOWN_IN_ROWS and k not in a.negotiated]
    order = {k: i for i, k in enumerate(NEGOTIATED_ORDER)}
    others.sort(key=lambda k: (order.get(k, len(order)), k))
    return rows + [(k, a.negotiated.get(k), b.negotiated.get(k)) for k in others]


# -- formatting helpers ----------------------------------------------------------------------


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.1f} s"


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value} B"


def _when(flow: Flow) -> str:
    if flow.started is None:
        return "-"
    return flow.started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _arrow(direction: str) -> str:
    return {"c2s": "->", "s2c": "<-"}.get(direction, "??")


def _message_label(m: Message) -> str:
    size = "?" if m.size is None else str(m.size)
    times = f" x{m.count}" if m.count > 1 else ""
    return f"{m.name} {size} B{times}"


def _attempt_text(items: list[tuple[str, str, float | None]]) -> str:
    return ", ".join(f"{name} {result}" for name, result, _ in items) or "-"


def _exit_text(flow: Flow) -> str:
    if flow.exit_signal:
        return f"signal {flow.exit_signal}"
    return "-" if flow.exit_status is None else str(flow.exit_status)


def _versions(flow: Flow) -> tuple[str, str]:
    return flow.client_version or "-", flow.server_version or "-"


def _who(flow: Flow) -> str:
    user = flow.user or "-"
    return f"{user} -> {flow.target}" if flow.target else user


def _stage_numbers(stage: Stage) -> str:
    if not stage.present:
        return "-"
    plural = "msg" if stage.messages == 1 else "msgs"
    return (
        f"{stage.messages if stage.messages is not None else '?'} {plural}, "
        f"{stage.round_trips if stage.round_trips is not None else '?'} rt, "
        f"{_bytes(stage.bytes)}, {_ms(stage.elapsed)}"
    )


# -- text ------------------------------------------------------------------------------------


def render_list_text(flows: list[Flow]) -> str:
    header = ("TIME (UTC)", "ID", "PEER", "USER", "PROTO", "TARGET", "DURATION", "RESULT")
    rows = [header]
    for f in flows:
        ident = f.id if f.link is None else f"{f.id} (upstream of {f.link})"
        rows.append(
            (
                _when(f),
                ident,
                f.peer,
                f.user or "-",
                f.protocol,
                f.target or "-",
                "-" if f.duration is None else f"{f.duration:.3f}s",
                f.result,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def render_show_text(flow: Flow, legs: list[Flow] | None = None) -> str:
    out: list[str] = []
    role = "client connected to the gateway" if flow.role == "server" else "gateway to device"
    if flow.role not in ("server", "client"):
        role = flow.role
    out.append(f"flow {flow.id}  {flow.protocol}, {role}")
    if flow.link:
        out.append(f"upstream leg of {flow.link}")
    for leg in legs or []:
        out.append(f"upstream leg {leg.id}  {leg.protocol} to {leg.target or leg.peer}")
    client, server = _versions(flow)
    fields = [
        ("started", f"{_when(flow)} UTC  duration {_secs(flow.duration)} s"),
        ("peer", flow.peer),
        ("user", _who(flow)),
        ("client", client),
        ("server", server),
        ("bytes", f"c2s {_bytes(flow.bytes_c2s)}, s2c {_bytes(flow.bytes_s2c)}"),
        ("exit", _exit_text(flow)),
        ("close", flow.close_reason or "-"),
    ]
    out += [f"  {k:<9} {v}" for k, v in fields]
    out.append("negotiated")
    out += [f"  {k:<22} {v}" for k, v in flow.negotiated.items()] or ["  -"]
    out.append("auth")
    out += [f"  {_secs(t):>8}  {m:<22} {r}" for m, r, t in flow.auth] or ["  -"]
    out.append("requests")
    out += [f"  {_secs(t):>8}  {m:<22} {r}" for m, r, t in flow.requests] or ["  -"]
    out.append("stages  (-> client to server, <- server to client)")
    for stage in flow.stages:
        span = "" if not stage.present else f"  {_secs(stage.start)}-{_secs(stage.end)} s"
        title = STAGE_TITLES[stage.name]
        named = stage.name if title == stage.name else f"{stage.name} ({title})"
        out.append(f"  {named}{span}  {_stage_numbers(stage)}")
        for m in flow.messages_in(stage.name):
            out.append(f"    {_secs(m.t):>8}  {_arrow(m.dir)}  {_message_label(m)}")
    if flow.messages_truncated:
        out.append("  (message list truncated by the recorder)")
    return "\n".join(out) + "\n"


COLUMN = 52


def _pair(label: str, a: str, b: str, label_width: int = 14) -> str:
    return f"{label:<{label_width}} {_short(a, COLUMN):<{COLUMN}} {_short(b, COLUMN)}".rstrip()


def render_compare_text(a: Flow, b: Flow) -> str:
    out: list[str] = []
    out.append(_pair("", f"A {a.id}", f"B {b.id}"))
    ca, sa = _versions(a)
    cb, sb = _versions(b)
    for label, va, vb in (
        ("protocol", f"{a.protocol} ({a.role})", f"{b.protocol} ({b.role})"),
        *([("upstream of", a.link or "-", b.link or "-")] if a.link or b.link else []),
        ("started", _when(a), _when(b)),
        ("peer", a.peer, b.peer),
        ("user", _who(a), _who(b)),
        ("client", ca, cb),
        ("server", sa, sb),
        ("duration", f"{_secs(a.duration)} s", f"{_secs(b.duration)} s"),
        ("bytes c2s", _bytes(a.bytes_c2s), _bytes(b.bytes_c2s)),
        ("bytes s2c", _bytes(a.bytes_s2c), _bytes(b.bytes_s2c)),
        ("auth", _attempt_text(a.auth), _attempt_text(b.auth)),
        ("requests", _attempt_text(a.requests), _attempt_text(b.requests)),
        ("exit", _exit_text(a), _exit_text(b)),
        ("close", a.close_reason or "-", b.close_reason or "-"),
    ):
        out.append(_pair(label, va, vb))
    out.append("")
    out.append("negotiated")
    for key, va, vb in negotiated_rows(a, b) or [("-", "", "")]:
        out.append(_pair("  " + key, va or "-", vb or "-", 24))
    out.append("")
    out.append(
        _pair("stage", "A: msgs, round trips, bytes, time", "B: msgs, round trips, bytes, time")
    )
    rows = align(a, b)
    for row in rows:
        out.append(_pair(row.name, _stage_numbers(row.a), _stage_numbers(row.b)))
    out.append("")
    out.append("messages by stage  (-> client to server, <- server to client)")
    for row in rows:
        out.append(f"== {row.name}: {STAGE_TITLES[row.name]} ==")
        left = [f"{_arrow(m.dir)} {_message_label(m)}" for m in row.messages_a]
        right = [f"{_arrow(m.dir)} {_message_label(m)}" for m in row.messages_b]
        if not left and not right:
            out.append(_pair("", "-", "-"))
        for i in range(max(len(left), len(right))):
            la = left[i] if i < len(left) else ""
            lb = right[i] if i < len(right) else ""
            out.append(_pair("", la, lb))
    if a.messages_truncated or b.messages_truncated:
        out.append("(a message list was truncated by the recorder)")
    return "\n".join(out) + "\n"


# -- json ------------------------------------------------------------------------------------


def _stage_json(stage: Stage) -> dict[str, Any]:
    return {
        "name": stage.name,
        "start": stage.start,
        "end": stage.end,
        "time": stage.elapsed,
        "messages": stage.messages,
        "round_trips": stage.round_trips,
        "bytes": stage.bytes,
    }


def list_json(flows: list[Flow]) -> dict[str, Any]:
    return {
        "flows": [
            {
                "id": f.id,
                "link": f.link,
                "time": f.started.isoformat() if f.started else None,
                "peer": f.peer,
                "user": f.user,
                "protocol": f.protocol,
                "role": f.role,
                "target": f.target,
                "duration": f.duration,
                "result": f.result,
            }
            for f in flows
        ]
    }


def show_json(flow: Flow, legs: list[Flow]) -> dict[str, Any]:
    return {"flow": flow.raw, "upstream_legs": [leg.id for leg in legs]}


def compare_json(a: Flow, b: Flow) -> dict[str, Any]:
    return {
        "flows": [a.raw, b.raw],
        "stages": [
            {
                "name": row.name,
                "a": _stage_json(row.a),
                "b": _stage_json(row.b),
                "messages_a": [_message_json(m) for m in row.messages_a],
                "messages_b": [_message_json(m) for m in row.messages_b],
            }
            for row in align(a, b)
        ],
        "negotiated": [{"name": k, "a": va, "b": vb} for k, va, vb in negotiated_rows(a, b)],
    }


def _message_json(m: Message) -> dict[str, Any]:
    return {"t": m.t, "dir": m.dir, "name": m.name, "size": m.size, "count": m.count}


# -- html ------------------------------------------------------------------------------------
#
# Built as an ElementTree and serialised by it, so every text and attribute taken from a
# record is escaped by construction; no markup is ever assembled from strings.

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #1a1a1a; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 0 0 6px; }
p { margin: 0 0 8px; }
figure { margin: 0 0 20px; }
.tables { display: flex; flex-wrap: wrap; gap: 20px 36px; align-items: flex-start; }
table { border-collapse: collapse; }
th, td { border: 1px solid #c8ccd2; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td { max-width: 440px; overflow-wrap: anywhere; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.diff { background: #fff4d6; }
.legend span { margin-right: 16px; }
.c2s { color: #1f5fbf; } .s2c { color: #1d7a3a; }
.note { color: #555; }
"""

_C2S_COLOUR = "#1f5fbf"
_S2C_COLOUR = "#1d7a3a"
_ROW = 22
_BAND_PAD = 10
_LABEL_W = 130
_PANEL_W = 480
_LANE_L = 60
_LANE_R = 360
_LINE = 12  # height of one wrapped header line
_WRAP = 66  # characters per header line (a version, the flow ID): the panel's width
_VERSION_INDENT = 42  # from the "client" / "server" label to the version
_EMPTY_BAND = 26
_BAND_FILL = ("#f3f6fb", "#fbf8f1")


def _attr_name(name: str) -> str:
    return name.rstrip("_").replace("_", "-")  # font_size -> font-size, class_ -> class


def _attr_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}".removesuffix(".0")
    return str(value)


def _add(parent: ET.Element, tag: str, text: str | None = None, **attrs: Any) -> ET.Element:
    """A child element (``font_size=11`` sets ``font-size="11"``)."""
    element = ET.SubElement(parent, tag, {_attr_name(k): _attr_value(v) for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def _wrap(text: str, width: int = _WRAP) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken after a space, ``-`` or
    ``_`` where there is one; joined, the lines are ``text`` again (nothing is cut)."""
    lines = []
    while len(text) > width:
        cut = max(text.rfind(c, 0, width) for c in " -_") + 1 or width
        lines.append(text[:cut])
        text = text[cut:]
    return [*lines, text]


def _svg_lines(parent: ET.Element, x: float, y: float, lines: list[str], **attrs: Any) -> None:
    """One <text> of several lines (a <tspan> each), first baseline at ``y``."""
    text = _add(parent, "text", x=x, y=y, **attrs)
    for i, line in enumerate(lines):
        _add(text, "tspan", line, x=x, dy=0 if i == 0 else _LINE)


def _header_lines(flow: Flow) -> tuple[list[str], list[str], list[str]]:
    """The wrapped lines under a panel's title: the flow ID, and each side's version."""
    client, server = _versions(flow)
    return _wrap(flow.id), _wrap(client), _wrap(server)


def _header_height(flow: Flow) -> tuple[int, int]:
    """Lines taken by the ID, and by the two versions, in a panel's header."""
    ids, client, server = _header_lines(flow)
    return len(ids), len(client) + len(server)


def _draw_header(svg: ET.Element, x0: float, flow: Flow, tag: str, ids_y: float,
                 versions_y: float, boxes_y: float) -> None:  # fmt: skip
    """Title and ID centred over the panel; the client's and the server's version, each
    labelled, from the panel's left edge (whole, wrapped); the two lifeline boxes."""
    ids, client, server = _header_lines(flow)
    middle = x0 + (_LANE_L + _LANE_R) / 2
    role = {"server": "client leg", "client": "upstream leg"}.get(flow.role, flow.role)
    _add(svg, "text", f"{tag}: {flow.protocol}, {role}", x=middle, y=16, text_anchor="middle",
         font_weight="bold", font_size=13)  # fmt: skip
    _svg_lines(svg, middle, ids_y, ids, text_anchor="middle", font_size=10, fill="#555")
    left = x0 + _LANE_L - 48
    y = versions_y
    for who, lines in (("client", client), ("server", server)):
        _add(svg, "text", who, x=left, y=y, font_size=10, font_weight="bold", fill="#444")
        _svg_lines(svg, left + _VERSION_INDENT, y, lines, font_size=10, fill="#444")
        y += len(lines) * _LINE
    for lane, who in ((_LANE_L, "client"), (_LANE_R, "server")):
        cx = x0 + lane
        _add(svg, "rect", x=cx - 48, y=boxes_y, width=96, height=22, rx=4, fill="#e4e9f1",
             stroke="#6b7a90")  # fmt: skip
        _add(svg, "text", who, x=cx, y=boxes_y + 15, text_anchor="middle", font_size=12)


def sequence_svg(a: Flow, b: Flow) -> ET.Element:
    """Two sequence diagrams side by side (client and server lifelines each), stage bands
    aligned: a stage starts at the same height in both."""
    width = _LABEL_W + 2 * _PANEL_W + 20
    heights = [_header_height(f) for f in (a, b)]
    ids_y = 30
    versions_y = ids_y + max(h[0] for h in heights) * _LINE + 4
    boxes_y = versions_y + max(h[1] for h in heights) * _LINE
    top = boxes_y + 30
    svg = ET.Element(
        "svg",
        {"role": "img", "aria-label": "sequence diagrams of both flows, aligned by stage",
         "font-family": "system-ui, sans-serif"},
    )  # fmt: skip
    defs = _add(svg, "defs")
    for cls, colour in (("c2s", _C2S_COLOUR), ("s2c", _S2C_COLOUR)):
        marker = _add(defs, "marker", id=f"arrow-{cls}", viewBox="0 0 10 10", refX=9, refY=5,
                      markerWidth=8, markerHeight=8, orient="auto-start-reverse")  # fmt: skip
        _add(marker, "path", d="M0,0 L10,5 L0,10 z", fill=colour)
    bands = _add(svg, "g")
    y = float(top)
    for i, row in enumerate(align(a, b)):
        n = max(len(row.messages_a), len(row.messages_b))
        height = n * _ROW + 2 * _BAND_PAD if n else _EMPTY_BAND
        _add(bands, "rect", x=0, y=y, width=width, height=height, fill=_BAND_FILL[i % 2])
        _add(bands, "line", x1=0, y1=y, x2=width, y2=y, stroke="#b9c0cc", stroke_dasharray="4 3")
        _add(bands, "text", row.name, x=8, y=y + 16, font_weight="bold", font_size=12)
        if STAGE_TITLES[row.name] != row.name:
            _svg_lines(
                bands, 8, y + 30, _wrap(STAGE_TITLES[row.name], 22), font_size=9, fill="#555"
            )
        for stage, msgs, x0 in (
            (row.a, row.messages_a, _LABEL_W),
            (row.b, row.messages_b, _LABEL_W + _PANEL_W),
        ):
            if not msgs:
                empty = "no messages" if not stage.present else _stage_numbers(stage)
                _add(bands, "text", empty, x=x0 + (_LANE_L + _LANE_R) / 2, y=y + 17,
                     text_anchor="middle", font_size=10, fill="#888")  # fmt: skip
                continue
            for j, m in enumerate(msgs):
                _draw_message(bands, x0, y + _BAND_PAD + j * _ROW + 16, m)
        y += height
    bottom = y + 10
    for x0 in (_LABEL_W, _LABEL_W + _PANEL_W):
        for lane in (_LANE_L, _LANE_R):
            _add(svg, "line", x1=x0 + lane, y1=boxes_y + 22, x2=x0 + lane, y2=bottom,
                 stroke="#6b7a90", stroke_width=1)  # fmt: skip
    for x0, flow, tag in ((_LABEL_W, a, "A"), (_LABEL_W + _PANEL_W, b, "B")):
        _draw_header(svg, x0, flow, tag, ids_y, versions_y, boxes_y)
    total = bottom + 4
    svg.set("width", _attr_value(float(width)))
    svg.set("height", _attr_value(total))
    svg.set("viewBox", f"0 0 {width} {_attr_value(total)}")
    return svg


def _draw_message(parent: ET.Element, x0: float, y: float, m: Message) -> None:
    left, right = x0 + _LANE_L, x0 + _LANE_R
    cls = "s2c" if m.dir == "s2c" else "c2s"
    colour = _C2S_COLOUR if cls == "c2s" else _S2C_COLOUR
    x1, x2 = (left + 3, right - 4) if cls == "c2s" else (right - 3, left + 4)
    _add(parent, "line", x1=x1, y1=y, x2=x2, y2=y, stroke=colour, stroke_width=1.5,
         marker_end=f"url(#arrow-{cls})")  # fmt: skip
    if m.t is not None:
        _add(parent, "text", f"{m.t:.3f}", x=left - 6, y=y + 3, text_anchor="end", font_size=9,
             fill="#777")  # fmt: skip
    _add(parent, "text", _message_label(m), x=(left + right) / 2, y=y - 4, text_anchor="middle",
         font_size=11, font_family="monospace", fill=colour)  # fmt: skip


def _table(
    parent: ET.Element,
    title: str,
    head: list[str],
    rows: list[list[str]],
    numeric_from: int = 99,
    mark_diff: bool = False,
) -> None:
    section = _add(parent, "section")
    _add(section, "h2", title)
    table = _add(section, "table")
    tr = _add(table, "tr")
    for cell in head:
        _add(tr, "th", cell)
    for row in rows:
        tr = _add(table, "tr")
        diff = mark_diff and len(row) == 3 and row[1] != row[2]
        _add(tr, "th", row[0])
        for i, cell in enumerate(row[1:], start=1):
            if i >= numeric_from:
                _add(tr, "td", cell, class_="num")
            elif diff:
                _add(tr, "td", cell, class_="diff")
            else:
                _add(tr, "td", cell)


def render_compare_html(a: Flow, b: Flow) -> str:
    """One self-contained page: no scripts, no external assets, only inline CSS and SVG.
    The sequence diagram comes first (it is what the page is for), the tables after it."""
    ca, sa = _versions(a)
    cb, sb = _versions(b)
    summary = [
        ["ID", a.id, b.id],
        ["protocol", f"{a.protocol} ({a.role})", f"{b.protocol} ({b.role})"],
        *([["upstream leg of", a.link or "-", b.link or "-"]] if a.link or b.link else []),
        ["started (UTC)", _when(a), _when(b)],
        ["peer", a.peer, b.peer],
        ["user", _who(a), _who(b)],
        ["client version", ca, cb],
        ["server version", sa, sb],
        ["duration", f"{_secs(a.duration)} s", f"{_secs(b.duration)} s"],
        ["bytes c2s", _bytes(a.bytes_c2s), _bytes(b.bytes_c2s)],
        ["bytes s2c", _bytes(a.bytes_s2c), _bytes(b.bytes_s2c)],
        ["auth", _attempt_text(a.auth), _attempt_text(b.auth)],
        ["requests", _attempt_text(a.requests), _attempt_text(b.requests)],
        ["exit", _exit_text(a), _exit_text(b)],
        ["close", a.close_reason or "-", b.close_reason or "-"],
    ]
    stage_rows = []
    for row in align(a, b):
        cells = [row.name]
        for s in (row.a, row.b):
            if s.present:
                cells += [
                    "?" if s.messages is None else str(s.messages),
                    "?" if s.round_trips is None else str(s.round_trips),
                    _bytes(s.bytes),
                    _ms(s.elapsed),
                ]
            else:
                cells += ["-", "-", "-", "-"]
        stage_rows.append(cells)
    negotiated = [[k, va or "-", vb or "-"] for k, va, vb in negotiated_rows(a, b)]

    page = ET.Element("html", lang="en")
    head = _add(page, "head")
    _add(head, "meta", charset="utf-8")
    _add(head, "title", f"{a.protocol} vs {b.protocol}: {a.id} / {b.id}")
    _add(head, "style", _CSS)
    body = _add(page, "body")
    _add(body, "h1", f"Flow comparison: {a.protocol} (A) and {b.protocol} (B)")
    legend = _add(body, "p", class_="legend")
    _add(legend, "span", "\u2192 client to server", class_="c2s")
    _add(legend, "span", "\u2190 server to client", class_="s2c")
    _add(legend, "span", "size in wire bytes; \u00d7N: N consecutive messages merged; "
         "left of each arrow: seconds since the connection began", class_="note")  # fmt: skip
    figure = _add(body, "figure")
    figure.append(sequence_svg(a, b))
    if a.messages_truncated or b.messages_truncated:
        _add(figure, "figcaption", "(a message list was truncated by the recorder)")
    tables = _add(body, "div", class_="tables")
    _table(tables, "Negotiated parameters", ["parameter", "A", "B"], negotiated, mark_diff=True)
    _table(tables, "Flows", ["", "A", "B"], summary)
    _table(
        tables,
        "Stages",
        ["stage", "A msgs", "A round trips", "A bytes", "A time",
         "B msgs", "B round trips", "B bytes", "B time"],
        stage_rows,
        numeric_from=1,
    )  # fmt: skip
    return "<!DOCTYPE html>\n" + ET.tostring(page, encoding="unicode", method="html") + "\n"


# -- the command -----------------------------------------------------------------------------


class _IO(Protocol):
    stdout: TextIO
    stderr: TextIO


def setup_parser(p: argparse.ArgumentParser) -> None:
    """``sshgateway flows``: the subcommands and their options."""
    p.description = (
        "Read the flow records the gateway writes (one per connection leg): list recent "
        "flows, show one stage by stage, or compare two side by side."
    )
    sub = p.add_subparsers(dest="flows_command", required=True, metavar="SUBCOMMAND")

    def common(q: argparse.ArgumentParser, formats: tuple[str, ...]) -> None:
        source = q.add_mutually_exclusive_group(required=True)
        source.add_argument("--state-dir", help="the gateway's state directory")
        source.add_argument("--config", help="a config file (its state_dir is used)")
        q.add_argument("--format", choices=formats, default="text", help="output format")

    q = sub.add_parser("list", help="recent flows, newest first")
    common(q, ("text", "json"))
    q.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="how many (default 20)")
    q = sub.add_parser("show", help="one flow, stage by stage")
    common(q, ("text", "json"))
    q.add_argument("id", help="a flow ID or a unique prefix of one")
    q = sub.add_parser("compare", help="two flows side by side, aligned by stage")
    common(q, ("text", "json", "html"))
    q.add_argument("id1", help="flow A (ID or unique prefix)")
    q.add_argument("id2", help="flow B (ID or unique prefix)")
    q.add_argument("-o", "--output", help="write to this file instead of stdout")


def run(args: argparse.Namespace, io: _IO) -> int:
    """Run ``sshgateway flows ...``; returns the exit status."""
    try:
        state_dir = args.state_dir if args.state_dir else load_config(args.config).state_dir
    except ConfigError as e:
        print(e, file=io.stderr)
        return 1
    # A state directory that is not there is a typo (or the wrong config), not a gateway
    # that has recorded nothing yet: only a missing flows/ under it means "no records".
    if not Path(state_dir).is_dir():
        why = "is not a directory" if Path(state_dir).exists() else "does not exist"
        print(f"sshgateway flows: state directory {_text(str(state_dir))} {why}", file=io.stderr)
        return 1
    store = FlowStore.for_state_dir(state_dir)
    try:
        text = _dispatch(args, store)
    except FlowError as e:
        _print_notes(store, io)
        print(f"sshgateway flows: {e}", file=io.stderr)
        return 1
    _print_notes(store, io)
    output = getattr(args, "output", None)
    if output:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            print(f"sshgateway flows: {output}: {e.strerror or e}", file=io.stderr)
            return 1
    else:
        io.stdout.write(text)
    return 0


def _print_notes(store: FlowStore, io: _IO) -> None:
    for note in store.finish_notes():
        print(f"sshgateway flows: note: {note}", file=io.stderr)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=True) + "\n"


def _dispatch(args: argparse.Namespace, store: FlowStore) -> str:
    if args.flows_command == "list":
        if args.limit < 1:
            raise FlowError("--limit must be at least 1")
        flows = store.recent(args.limit)
        if args.format == "json":
            return _dumps(list_json(flows))
        if not flows:
            return f"no flow records in {store.directory}\n"
        return render_list_text(flows)
    if args.flows_command == "show":
        flow, legs = store.find(args.id)
        if args.format == "json":
            return _dumps(show_json(flow, legs))
        return render_show_text(flow, legs)
    a, _ = store.find(args.id1)
    b, _ = store.find(args.id2)
    if args.format == "json":
        return _dumps(compare_json(a, b))
    if args.format == "html":
        return render_compare_html(a, b)
    return render_compare_text(a, b)
