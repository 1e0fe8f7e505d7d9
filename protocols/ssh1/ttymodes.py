"""SSH-1 terminal modes <-> the session model's SSH-2 numbering.

SSH-1: opcode byte then argument; opcodes 1..127 take one byte, 128..159 a uint32, the
speeds are 192 (ISPEED) and 193 (OSPEED) with a uint32, 0 ends the list, and anything
else (160..191, 194..255) is unknown and stops parsing since its size is unknown.
SSH-2 (RFC 4254 section 8): every argument is a uint32 and the speeds are 128/129.
Opcodes 1..127 mean the same in both, so they pass through when SSH-2 defines them.
"""

from __future__ import annotations

from protocols.ssh1.wire import ProtocolError, Reader, Writer

SSH1_ISPEED = 192
SSH1_OSPEED = 193
SSH2_ISPEED = 128
SSH2_OSPEED = 129

_SPEED_TO_SSH2 = {SSH1_ISPEED: SSH2_ISPEED, SSH1_OSPEED: SSH2_OSPEED}
_SPEED_TO_SSH1 = {v: k for k, v in _SPEED_TO_SSH2.items()}

# The opcodes RFC 4254 (and RFC 8160's IUTF8) define below 128.
SSH2_KNOWN = frozenset(
    list(range(1, 19)) + list(range(30, 43)) + list(range(50, 63)) + list(range(70, 76))
    + list(range(90, 94))
)
MAX_MODES = 256  # more entries than any terminal has; the rest is ignored


def decode(data: bytes) -> tuple[tuple[int, int], ...]:
    """Parse an SSH-1 tty-mode list into SSH-2 (opcode, value) pairs.

    Tolerant, like the reference implementation: a truncated or unknown entry ends the
    list rather than the connection (terminal modes are advisory).
    """
    reader = Reader(data, "tty modes")
    out: list[tuple[int, int]] = []
    try:
        while reader.remaining and len(out) < MAX_MODES:
            op = reader.byte()
            if op == 0:
                break
            if 1 <= op <= 127:
                value = reader.byte()
                if op in SSH2_KNOWN:
                    out.append((op, value))
            elif 128 <= op <= 159:
                reader.uint32()  # SSH-1 defines none of these; SSH-2 gives 128/129 other meanings
            elif op in _SPEED_TO_SSH2:
                out.append((_SPEED_TO_SSH2[op], reader.uint32()))
            else:
                break
    except ProtocolError:
        pass
    return tuple(out)


def encode(modes: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> bytes:
    """SSH-2 (opcode, value) pairs as an SSH-1 tty-mode list (what a client sends)."""
    writer = Writer()
    for op, value in modes:
        if op in _SPEED_TO_SSH1:
            writer.byte(_SPEED_TO_SSH1[op]).uint32(value & 0xFFFFFFFF)
        elif 1 <= op <= 127 and 0 <= value <= 255:
            writer.byte(op).byte(value)
    writer.byte(0)
    return writer.getvalue()
