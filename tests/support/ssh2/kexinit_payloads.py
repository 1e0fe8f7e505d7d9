"""SSH2_MSG_KEXINIT bodies (after the message number) built from name-lists, for the
KEXINIT parser's tests and the probe's."""

from __future__ import annotations

import struct


def name_list(names) -> bytes:
    raw = ",".join(names).encode() if not isinstance(names, bytes) else names
    return struct.pack(">I", len(raw)) + raw


GOOD_LISTS = [
    ["curve25519-sha256"], ["ssh-ed25519", "rsa-sha2-512"], ["aes128-ctr"], ["aes256-ctr"],
    ["hmac-sha2-256"], ["hmac-sha2-512"], ["none"], ["none", "zlib"], [], [],
]  # fmt: skip


def kexinit_body(lists=GOOD_LISTS, tail=b"\x00\x00\x00\x00\x00") -> bytes:
    return b"K" * 16 + b"".join(name_list(x) for x in lists) + tail
