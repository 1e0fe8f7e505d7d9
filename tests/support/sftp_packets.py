"""SFTP v3 packets as tests build them (draft-ietf-secsh-filexfer-02): single packets and
whole put/get exchanges, as (side, bytes) steps with side "c" (client) or "s" (server)."""

from __future__ import annotations

import struct

from gateway.sftp_watch import FXF_READ, FXF_WRITE


def packet(kind: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def init() -> bytes:
    return packet(1, struct.pack(">I", 3))


def version(number: int = 3) -> bytes:
    return packet(2, struct.pack(">I", number) + string(b"ext@openssh.com") + string(b"1"))


def open_(request: int, path: bytes, pflags: int) -> bytes:
    return packet(3, struct.pack(">I", request) + string(path) + struct.pack(">II", pflags, 0))


def close(request: int, handle: bytes) -> bytes:
    return packet(4, struct.pack(">I", request) + string(handle))


def read(request: int, handle: bytes, offset: int, length: int) -> bytes:
    return packet(
        5, struct.pack(">I", request) + string(handle) + struct.pack(">QI", offset, length)
    )


def write(request: int, handle: bytes, offset: int, data: bytes) -> bytes:
    return packet(
        6, struct.pack(">I", request) + string(handle) + struct.pack(">Q", offset) + string(data)
    )


def stat(request: int, path: bytes) -> bytes:
    return packet(17, struct.pack(">I", request) + string(path))


def status(request: int, code: int = 0, message: bytes = b"") -> bytes:
    return packet(101, struct.pack(">II", request, code) + string(message) + string(b""))


def handle_reply(request: int, handle: bytes) -> bytes:
    return packet(102, struct.pack(">I", request) + string(handle))


def data_reply(request: int, data: bytes) -> bytes:
    return packet(103, struct.pack(">I", request) + string(data))


def attrs_reply(request: int) -> bytes:
    return packet(105, struct.pack(">II", request, 0))



def put_steps(path: bytes = b"up.bin", chunks=(b"a" * 32768, b"b" * 100)) -> list:
    steps = [("c", init()), ("s", version()), ("c", open_(1, path, FXF_WRITE | 0x18))]
    steps.append(("s", handle_reply(1, b"H1")))
    offset = 0
    for number, chunk in enumerate(chunks, start=10):
        steps.append(("c", write(number, b"H1", offset, chunk)))
        offset += len(chunk)
    for number in range(10, 10 + len(chunks)):
        steps.append(("s", status(number)))
    steps += [("c", close(99, b"H1")), ("s", status(99))]
    return steps


def get_steps(path: bytes = b"/tmp/down.bin") -> list:
    return [
        ("c", init()), ("s", version()),
        ("c", stat(2, path)), ("s", attrs_reply(2)),
        ("c", open_(3, path, FXF_READ)), ("s", handle_reply(3, b"\x00\x01")),
        # three reads in flight, the last past the end: what the client got is counted
        ("c", read(4, b"\x00\x01", 0, 32768)),
        ("c", read(5, b"\x00\x01", 32768, 32768)),
        ("c", read(6, b"\x00\x01", 65536, 32768)),
        ("s", data_reply(4, b"x" * 32768)), ("s", data_reply(5, b"y" * 1000)),
        ("s", status(6, 1, b"EOF")),
        ("c", close(7, b"\x00\x01")), ("s", status(7)),
    ]  # fmt: skip
