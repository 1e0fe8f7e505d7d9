"""``flows list``, ``show`` and ``compare`` as JSON: the records as written, plus the
alignment by stage for ``compare``."""

from __future__ import annotations

from typing import Any

from tools.flows.align import align, negotiated_rows
from tools.flows.records import Flow, Message, Stage


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
