"""Two flows side by side: the six stages in order (:func:`align`), and what each
negotiated, compared by meaning whatever each protocol calls it (:func:`negotiated_rows`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from protocols.flow import STAGES
from tools.flows.records import NEGOTIATED_ORDER, Flow, Message, Stage


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
