"""``flows list``, ``show`` and ``compare`` as text for a terminal."""

from __future__ import annotations

from tools.flows.align import align, negotiated_rows
from tools.flows.labels import (
    STAGE_TITLES,
    arrow,
    attempt_text,
    byte_size,
    exit_text,
    message_label,
    secs,
    stage_numbers,
    versions,
    when,
    who,
)
from tools.flows.records import Flow, shorten


def render_list_text(flows: list[Flow]) -> str:
    header = ("TIME (UTC)", "ID", "PEER", "USER", "PROTO", "TARGET", "DURATION", "RESULT")
    rows = [header]
    for f in flows:
        ident = f.id if f.link is None else f"{f.id} (upstream of {f.link})"
        rows.append(
            (
                when(f),
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
    client, server = versions(flow)
    fields = [
        ("started", f"{when(flow)} UTC  duration {secs(flow.duration)} s"),
        ("peer", flow.peer),
        ("user", who(flow)),
        ("client", client),
        ("server", server),
        ("bytes", f"c2s {byte_size(flow.bytes_c2s)}, s2c {byte_size(flow.bytes_s2c)}"),
        ("exit", exit_text(flow)),
        ("close", flow.close_reason or "-"),
    ]
    out += [f"  {k:<9} {v}" for k, v in fields]
    out.append("negotiated")
    out += [f"  {k:<22} {v}" for k, v in flow.negotiated.items()] or ["  -"]
    out.append("auth")
    out += [f"  {secs(t):>8}  {m:<22} {r}" for m, r, t in flow.auth] or ["  -"]
    out.append("requests")
    out += [f"  {secs(t):>8}  {m:<22} {r}" for m, r, t in flow.requests] or ["  -"]
    out.append("stages  (-> client to server, <- server to client)")
    for stage in flow.stages:
        span = "" if not stage.present else f"  {secs(stage.start)}-{secs(stage.end)} s"
        title = STAGE_TITLES[stage.name]
        named = stage.name if title == stage.name else f"{stage.name} ({title})"
        out.append(f"  {named}{span}  {stage_numbers(stage)}")
        for m in flow.messages_in(stage.name):
            out.append(f"    {secs(m.t):>8}  {arrow(m.dir)}  {message_label(m)}")
    if flow.messages_truncated:
        out.append("  (message list truncated by the recorder)")
    return "\n".join(out) + "\n"


COLUMN = 52


def _pair(label: str, a: str, b: str, label_width: int = 14) -> str:
    return f"{label:<{label_width}} {shorten(a, COLUMN):<{COLUMN}} {shorten(b, COLUMN)}".rstrip()


def render_compare_text(a: Flow, b: Flow) -> str:
    out: list[str] = []
    out.append(_pair("", f"A {a.id}", f"B {b.id}"))
    ca, sa = versions(a)
    cb, sb = versions(b)
    for label, va, vb in (
        ("protocol", f"{a.protocol} ({a.role})", f"{b.protocol} ({b.role})"),
        *([("upstream of", a.link or "-", b.link or "-")] if a.link or b.link else []),
        ("started", when(a), when(b)),
        ("peer", a.peer, b.peer),
        ("user", who(a), who(b)),
        ("client", ca, cb),
        ("server", sa, sb),
        ("duration", f"{secs(a.duration)} s", f"{secs(b.duration)} s"),
        ("bytes c2s", byte_size(a.bytes_c2s), byte_size(b.bytes_c2s)),
        ("bytes s2c", byte_size(a.bytes_s2c), byte_size(b.bytes_s2c)),
        ("auth", attempt_text(a.auth), attempt_text(b.auth)),
        ("requests", attempt_text(a.requests), attempt_text(b.requests)),
        ("exit", exit_text(a), exit_text(b)),
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
        out.append(_pair(row.name, stage_numbers(row.a), stage_numbers(row.b)))
    out.append("")
    out.append("messages by stage  (-> client to server, <- server to client)")
    for row in rows:
        out.append(f"== {row.name}: {STAGE_TITLES[row.name]} ==")
        left = [f"{arrow(m.dir)} {message_label(m)}" for m in row.messages_a]
        right = [f"{arrow(m.dir)} {message_label(m)}" for m in row.messages_b]
        if not left and not right:
            out.append(_pair("", "-", "-"))
        for i in range(max(len(left), len(right))):
            la = left[i] if i < len(left) else ""
            lb = right[i] if i < len(right) else ""
            out.append(_pair("", la, lb))
    if a.messages_truncated or b.messages_truncated:
        out.append("(a message list was truncated by the recorder)")
    return "\n".join(out) + "\n"
