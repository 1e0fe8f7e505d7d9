"""The sequence diagram of ``flows compare --format html``: the two flows side by side,
client and server lifelines each, stage bands aligned so that a stage starts at the same
height in both; an arrow a message, labelled with its name, size and time.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from tools.flows.align import align
from tools.flows.labels import STAGE_TITLES, message_label, stage_numbers, versions
from tools.flows.markup import add, attr_value
from tools.flows.records import Flow, Message

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
    text = add(parent, "text", x=x, y=y, **attrs)
    for i, line in enumerate(lines):
        add(text, "tspan", line, x=x, dy=0 if i == 0 else _LINE)


def _header_lines(flow: Flow) -> tuple[list[str], list[str], list[str]]:
    """The wrapped lines under a panel's title: the flow ID, and each side's version."""
    client, server = versions(flow)
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
    add(svg, "text", f"{tag}: {flow.protocol}, {role}", x=middle, y=16, text_anchor="middle",
         font_weight="bold", font_size=13)  # fmt: skip
    _svg_lines(svg, middle, ids_y, ids, text_anchor="middle", font_size=10, fill="#555")
    left = x0 + _LANE_L - 48
    y = versions_y
    for who, lines in (("client", client), ("server", server)):
        add(svg, "text", who, x=left, y=y, font_size=10, font_weight="bold", fill="#444")
        _svg_lines(svg, left + _VERSION_INDENT, y, lines, font_size=10, fill="#444")
        y += len(lines) * _LINE
    for lane, who in ((_LANE_L, "client"), (_LANE_R, "server")):
        cx = x0 + lane
        add(svg, "rect", x=cx - 48, y=boxes_y, width=96, height=22, rx=4, fill="#e4e9f1",
             stroke="#6b7a90")  # fmt: skip
        add(svg, "text", who, x=cx, y=boxes_y + 15, text_anchor="middle", font_size=12)


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
    defs = add(svg, "defs")
    for cls, colour in (("c2s", _C2S_COLOUR), ("s2c", _S2C_COLOUR)):
        marker = add(defs, "marker", id=f"arrow-{cls}", viewBox="0 0 10 10", refX=9, refY=5,
                      markerWidth=8, markerHeight=8, orient="auto-start-reverse")  # fmt: skip
        add(marker, "path", d="M0,0 L10,5 L0,10 z", fill=colour)
    bands = add(svg, "g")
    y = float(top)
    for i, row in enumerate(align(a, b)):
        n = max(len(row.messages_a), len(row.messages_b))
        height = n * _ROW + 2 * _BAND_PAD if n else _EMPTY_BAND
        add(bands, "rect", x=0, y=y, width=width, height=height, fill=_BAND_FILL[i % 2])
        add(bands, "line", x1=0, y1=y, x2=width, y2=y, stroke="#b9c0cc", stroke_dasharray="4 3")
        add(bands, "text", row.name, x=8, y=y + 16, font_weight="bold", font_size=12)
        if STAGE_TITLES[row.name] != row.name:
            _svg_lines(
                bands, 8, y + 30, _wrap(STAGE_TITLES[row.name], 22), font_size=9, fill="#555"
            )
        for stage, msgs, x0 in (
            (row.a, row.messages_a, _LABEL_W),
            (row.b, row.messages_b, _LABEL_W + _PANEL_W),
        ):
            if not msgs:
                empty = "no messages" if not stage.present else stage_numbers(stage)
                add(bands, "text", empty, x=x0 + (_LANE_L + _LANE_R) / 2, y=y + 17,
                     text_anchor="middle", font_size=10, fill="#888")  # fmt: skip
                continue
            for j, m in enumerate(msgs):
                _draw_message(bands, x0, y + _BAND_PAD + j * _ROW + 16, m)
        y += height
    bottom = y + 10
    for x0 in (_LABEL_W, _LABEL_W + _PANEL_W):
        for lane in (_LANE_L, _LANE_R):
            add(svg, "line", x1=x0 + lane, y1=boxes_y + 22, x2=x0 + lane, y2=bottom,
                 stroke="#6b7a90", stroke_width=1)  # fmt: skip
    for x0, flow, tag in ((_LABEL_W, a, "A"), (_LABEL_W + _PANEL_W, b, "B")):
        _draw_header(svg, x0, flow, tag, ids_y, versions_y, boxes_y)
    total = bottom + 4
    svg.set("width", attr_value(float(width)))
    svg.set("height", attr_value(total))
    svg.set("viewBox", f"0 0 {width} {attr_value(total)}")
    return svg


def _draw_message(parent: ET.Element, x0: float, y: float, m: Message) -> None:
    left, right = x0 + _LANE_L, x0 + _LANE_R
    cls = "s2c" if m.dir == "s2c" else "c2s"
    colour = _C2S_COLOUR if cls == "c2s" else _S2C_COLOUR
    x1, x2 = (left + 3, right - 4) if cls == "c2s" else (right - 3, left + 4)
    add(parent, "line", x1=x1, y1=y, x2=x2, y2=y, stroke=colour, stroke_width=1.5,
         marker_end=f"url(#arrow-{cls})")  # fmt: skip
    if m.t is not None:
        add(parent, "text", f"{m.t:.3f}", x=left - 6, y=y + 3, text_anchor="end", font_size=9,
             fill="#777")  # fmt: skip
    add(parent, "text", message_label(m), x=(left + right) / 2, y=y - 4, text_anchor="middle",
         font_size=11, font_family="monospace", fill=colour)  # fmt: skip
