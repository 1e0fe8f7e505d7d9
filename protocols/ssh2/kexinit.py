"""SSH2_MSG_KEXINIT read as data: the ten name-lists and the first-kex-follows flag.

For a client that reports what a server offers rather than negotiating with it (Conch does
its own parsing for the key exchange). The payload comes from a peer that may be hostile:
every length is checked against the data left and against a bound before it is used, every
name must be printable ASCII, and a KEXINIT that breaks a rule is a :class:`KexInitError`
naming the list and the rule.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from protocols.ssh2.wire import WireError

MAX_KEXINIT = 64 * 1024
MAX_NAME_LIST = 8192
MAX_NAMES = 256
MAX_NAME = 64
COOKIE_SIZE = 16  # the random cookie before the first name-list
_NAME = re.compile(r"^[\x21-\x7e]+$")
LISTS = (
    "kex", "host key algorithms", "ciphers c2s", "ciphers s2c", "macs c2s", "macs s2c",
    "compression c2s", "compression s2c", "languages c2s", "languages s2c",
)  # fmt: skip


class KexInitError(WireError):
    """A KEXINIT that cannot be read; ``str()`` says which list and what is wrong."""


@dataclass
class KexInit:
    kex: list[str]
    host_key_algorithms: list[str]
    ciphers_c2s: list[str]
    ciphers_s2c: list[str]
    macs_c2s: list[str]
    macs_s2c: list[str]
    compression_c2s: list[str]
    compression_s2c: list[str]
    languages_c2s: list[str]
    languages_s2c: list[str]
    first_kex_follows: bool


def parse_kexinit(packet: bytes) -> KexInit:
    """An SSH2_MSG_KEXINIT body (after the type byte), every list bounded."""
    if len(packet) > MAX_KEXINIT:
        raise KexInitError(f"KEXINIT of {len(packet)} bytes (more than {MAX_KEXINIT})")
    if len(packet) < COOKIE_SIZE:
        raise KexInitError("KEXINIT truncated in the cookie")
    pos = COOKIE_SIZE
    lists: list[list[str]] = []
    for what in LISTS:
        if pos + 4 > len(packet):
            raise KexInitError(f"KEXINIT truncated before the {what} list")
        (length,) = struct.unpack_from(">I", packet, pos)
        pos += 4
        if length > MAX_NAME_LIST:
            raise KexInitError(f"KEXINIT {what} list of {length} bytes (more than {MAX_NAME_LIST})")
        if pos + length > len(packet):
            raise KexInitError(f"KEXINIT truncated in the {what} list")
        lists.append(_name_list(packet[pos : pos + length], what))
        pos += length
    if pos + 5 > len(packet):
        raise KexInitError("KEXINIT truncated after the lists")
    first_follows = packet[pos] != 0
    return KexInit(*lists, first_kex_follows=first_follows)


def _name_list(raw: bytes, what: str) -> list[str]:
    if not raw:
        return []
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KexInitError(f"KEXINIT {what} list is not ASCII") from None
    names = text.split(",")
    if len(names) > MAX_NAMES:
        raise KexInitError(f"KEXINIT {what} list has {len(names)} names (more than {MAX_NAMES})")
    for name in names:
        if not name or len(name) > MAX_NAME or not _NAME.match(name):
            raise KexInitError(f"KEXINIT {what} list has a malformed name {name[:MAX_NAME]!r}")
    return names
