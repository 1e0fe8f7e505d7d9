"""OpenSSH's host and address pattern lists, as sshd applies them to an authorized_keys
``from="pattern-list"`` option (sshd(8) AUTHORIZED_KEYS FILE FORMAT, ssh_config(5)
PATTERNS): the rules of OpenSSH's match.c and addrmatch.c, written for the gateway.

A pattern list is comma-separated; ``*`` matches any run of characters, ``?`` exactly one,
nothing else is special. An entry may be an address or a CIDR network (``10.0.0.0/8``,
``2001:db8::/32``). A ``!`` in front negates an entry, and a negated entry that matches
denies whatever else matches. The gateway does no DNS lookups (like sshd with ``UseDNS
no``): the "host name" the patterns also see is the address itself.

:func:`from_allows` is the whole decision for one client address. A malformed list (an
empty entry, a network with host bits set, a prefix longer than the address) denies, as
sshd's "invalid from criteria" does.
"""

from __future__ import annotations

import ipaddress
from enum import IntEnum

# OpenSSH copies each entry into a 1024-byte buffer and treats a longer one as no match.
MAX_PATTERN = 1023
# A from= list longer than this is refused outright: no real list comes near it, and it
# bounds the work one login attempt can cause.
MAX_PATTERNS = 256

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Match(IntEnum):
    """The answer of a list: a negated entry matched, nothing matched, something did."""

    NEGATED = -1
    NONE = 0
    POSITIVE = 1


class PatternError(ValueError):
    """The list cannot be evaluated (sshd: "invalid from criteria")."""


def match_pattern(text: str, pattern: str) -> bool:
    """``pattern`` (``*`` and ``?`` wildcards) matches the whole of ``text``.

    Greedy with one backtrack point, so the work is at most len(text) * len(pattern)
    whatever the pattern (a naive recursive match is exponential in the stars).
    """
    t = p = 0
    star_p, star_t = -1, 0
    while t < len(text):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            t += 1
            p += 1
        elif p < len(pattern) and pattern[p] == "*":
            star_p, star_t = p, t
            p += 1
        elif star_p >= 0:
            # Let the last star take one more character and retry from there.
            star_t += 1
            t = star_t
            p = star_p + 1
        else:
            return False
    return all(c == "*" for c in pattern[p:])


def _entries(patterns: str) -> list[tuple[bool, str]]:
    """(negated, entry) for each comma-separated entry."""
    entries = patterns.split(",")
    if len(entries) > MAX_PATTERNS:
        raise PatternError(f"more than {MAX_PATTERNS} patterns")
    found = []
    for entry in entries:
        negated = entry.startswith("!")
        found.append((negated, entry[1:] if negated else entry))
    return found


def match_name_list(name: str, patterns: str) -> Match:
    """match.c's match_hostname: case-insensitive wildcard patterns, negation wins."""
    name = name.lower()
    positive = False
    for negated, entry in _entries(patterns):
        if len(entry) > MAX_PATTERN:
            return Match.NONE  # as OpenSSH: an overlong entry fails the whole list
        if match_pattern(name, entry.lower()):
            if negated:
                return Match.NEGATED
            positive = True
    return Match.POSITIVE if positive else Match.NONE


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network an entry names (a bare address is a /32 or /128), None if the entry is
    no address at all (then it is a wildcard pattern); PatternError if it is a broken one."""
    text, slash, bits = entry.partition("/")
    if slash and not (bits.isascii() and bits.isdigit() and int(bits) <= 128):
        return None  # not a prefix length: OpenSSH tries it as a wildcard pattern
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    length = int(bits) if slash else address.max_prefixlen
    if length > address.max_prefixlen:
        raise PatternError(f"prefix length of {entry!r} is longer than the address")
    try:
        return ipaddress.ip_network(f"{address}/{length}", strict=True)
    except ValueError:
        raise PatternError(f"{entry!r} has bits set beyond its prefix length") from None


def match_address_list(address: Address | None, patterns: str) -> Match:
    """addrmatch.c's addr_match_list: CIDR entries first, else a wildcard match of the
    address's text; the first negated match decides. PatternError for a broken list."""
    text = str(address) if address is not None else None
    result = Match.NONE
    for negated, entry in _entries(patterns):
        if not entry:
            raise PatternError("empty entry in the pattern list")
        network = _network(entry)
        if network is not None:
            matched = address is not None and address in network
        else:
            matched = text is not None and match_pattern(text, entry)
        if matched:
            if negated:
                return Match.NEGATED
            result = Match.POSITIVE
    return result


def from_allows(patterns: str, address: Address | None) -> bool:
    """sshd's match_host_and_ip for a client at ``address`` (None: unknown, denied): the
    address list must not match negatively, and address or name must match positively.
    PatternError for a list sshd calls invalid (the caller denies and logs why)."""
    by_address = match_address_list(address, patterns)
    if address is None or by_address is Match.NEGATED:
        return False
    by_name = match_name_list(str(address), patterns)
    if by_name is Match.NEGATED:
        return False
    return Match.POSITIVE in (by_address, by_name)


def peer_address(peer: str) -> Address | None:
    """The client address of a peer as the dispatcher records it (``host:port``, IPv6
    hosts unbracketed, or a bare host); an IPv4-mapped IPv6 address becomes the IPv4 one,
    as sshd normalises it. None when the peer is no IP address (tests, UNIX sockets)."""
    host, sep, port = peer.rpartition(":")
    candidates = [host.strip("[]"), peer] if sep and port.isdigit() else [peer]
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address
    return None
