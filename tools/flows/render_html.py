"""``flows compare --format html``: one self-contained page (no scripts, no external
assets, only inline CSS and SVG): the sequence diagram first, then the negotiated
parameters, the two flows and their stages as tables.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tools.flows.align import align, negotiated_rows
from tools.flows.labels import attempt_text, byte_size, exit_text, ms, secs, versions, when, who
from tools.flows.markup import add
from tools.flows.records import Flow
from tools.flows.sequence_svg import sequence_svg

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


def _table(
    parent: ET.Element,
    title: str,
    head: list[str],
    rows: list[list[str]],
    numeric_from: int = 99,
    mark_diff: bool = False,
) -> None:
    section = add(parent, "section")
    add(section, "h2", title)
    table = add(section, "table")
    tr = add(table, "tr")
    for cell in head:
        add(tr, "th", cell)
    for row in rows:
        tr = add(table, "tr")
        diff = mark_diff and len(row) == 3 and row[1] != row[2]
        add(tr, "th", row[0])
        for i, cell in enumerate(row[1:], start=1):
            if i >= numeric_from:
                add(tr, "td", cell, class_="num")
            elif diff:
                add(tr, "td", cell, class_="diff")
            else:
                add(tr, "td", cell)


def render_compare_html(a: Flow, b: Flow) -> str:
    """One self-contained page: no scripts, no external assets, only inline CSS and SVG.
    The sequence diagram comes first (it is what the page is for), the tables after it."""
    ca, sa = versions(a)
    cb, sb = versions(b)
    summary = [
        ["ID", a.id, b.id],
        ["protocol", f"{a.protocol} ({a.role})", f"{b.protocol} ({b.role})"],
        *([["upstream leg of", a.link or "-", b.link or "-"]] if a.link or b.link else []),
        ["started (UTC)", when(a), when(b)],
        ["peer", a.peer, b.peer],
        ["user", who(a), who(b)],
        ["client version", ca, cb],
        ["server version", sa, sb],
        ["duration", f"{secs(a.duration)} s", f"{secs(b.duration)} s"],
        ["bytes c2s", byte_size(a.bytes_c2s), byte_size(b.bytes_c2s)],
        ["bytes s2c", byte_size(a.bytes_s2c), byte_size(b.bytes_s2c)],
        ["auth", attempt_text(a.auth), attempt_text(b.auth)],
        ["requests", attempt_text(a.requests), attempt_text(b.requests)],
        ["exit", exit_text(a), exit_text(b)],
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
                    byte_size(s.bytes),
                    ms(s.elapsed),
                ]
            else:
                cells += ["-", "-", "-", "-"]
        stage_rows.append(cells)
    negotiated = [[k, va or "-", vb or "-"] for k, va, vb in negotiated_rows(a, b)]

    page = ET.Element("html", lang="en")
    head = add(page, "head")
    add(head, "meta", charset="utf-8")
    add(head, "title", f"{a.protocol} vs {b.protocol}: {a.id} / {b.id}")
    add(head, "style", _CSS)
    body = add(page, "body")
    add(body, "h1", f"Flow comparison: {a.protocol} (A) and {b.protocol} (B)")
    legend = add(body, "p", class_="legend")
    add(legend, "span", "\u2192 client to server", class_="c2s")
    add(legend, "span", "\u2190 server to client", class_="s2c")
    add(legend, "span", "size in wire bytes; \u00d7N: N consecutive messages merged; "
         "left of each arrow: seconds since the connection began", class_="note")  # fmt: skip
    figure = add(body, "figure")
    figure.append(sequence_svg(a, b))
    if a.messages_truncated or b.messages_truncated:
        add(figure, "figcaption", "(a message list was truncated by the recorder)")
    tables = add(body, "div", class_="tables")
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
