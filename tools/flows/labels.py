"""How the values of a flow read, the same in every rendering (text, HTML, SVG): stage
titles, times, sizes, arrows, message labels, who logged in to what."""

from __future__ import annotations

from datetime import UTC

from tools.flows.records import Flow, Message, Stage

STAGE_TITLES = {
    "version": "version negotiation",
    "kex": "key and algorithm negotiation",
    "auth": "authentication",
    "session": "session request",
    "interaction": "interaction",
    "close": "close",
}


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.1f} s"


def byte_size(value: int | None) -> str:
    return "-" if value is None else f"{value} B"


def when(flow: Flow) -> str:
    if flow.started is None:
        return "-"
    return flow.started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def arrow(direction: str) -> str:
    return {"c2s": "->", "s2c": "<-"}.get(direction, "??")


def message_label(m: Message) -> str:
    size = "?" if m.size is None else str(m.size)
    times = f" x{m.count}" if m.count > 1 else ""
    return f"{m.name} {size} B{times}"


def attempt_text(items: list[tuple[str, str, float | None]]) -> str:
    return ", ".join(f"{name} {result}" for name, result, _ in items) or "-"


def exit_text(flow: Flow) -> str:
    if flow.exit_signal:
        return f"signal {flow.exit_signal}"
    return "-" if flow.exit_status is None else str(flow.exit_status)


def versions(flow: Flow) -> tuple[str, str]:
    return flow.client_version or "-", flow.server_version or "-"


def who(flow: Flow) -> str:
    user = flow.user or "-"
    return f"{user} -> {flow.target}" if flow.target else user


def stage_numbers(stage: Stage) -> str:
    if not stage.present:
        return "-"
    plural = "msg" if stage.messages == 1 else "msgs"
    return (
        f"{stage.messages if stage.messages is not None else '?'} {plural}, "
        f"{stage.round_trips if stage.round_trips is not None else '?'} rt, "
        f"{byte_size(stage.bytes)}, {ms(stage.elapsed)}"
    )
