"""OpenSSH's from= pattern lists (gateway.host_patterns): wildcards, negation, CIDR for
IPv4 and IPv6, and the lists sshd calls invalid, as a table of (patterns, address, allowed)."""

from __future__ import annotations

import ipaddress

import pytest

from gateway import host_patterns as hp


@pytest.mark.parametrize(
    "patterns,address,allowed",
    [
        # plain addresses and wildcards
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.2", "127.0.0.1", False),
        ("127.0.0.*", "127.0.0.1", True),
        ("127.0.0.?", "127.0.0.1", True),
        ("127.0.0.?", "127.0.0.10", False),
        ("*", "192.0.2.7", True),
        ("1*7.0.0.1", "127.0.0.1", True),
        ("[127.0.0.1]", "127.0.0.1", False),  # no character classes in OpenSSH patterns
        # CIDR
        ("10.0.0.0/8", "127.0.0.1", False),
        ("10.0.0.0/8", "10.200.3.4", True),
        ("127.0.0.0/8", "127.0.0.1", True),
        ("0.0.0.0/0", "198.51.100.1", True),
        ("192.0.2.128/25", "192.0.2.127", False),
        ("192.0.2.128/25", "192.0.2.200", True),
        ("2001:db8::/32", "2001:db8:1::5", True),
        ("2001:db8::/32", "2001:db9::5", False),
        ("::1", "::1", True),
        ("::1/128", "::1", True),
        ("::/0", "127.0.0.1", False),  # an IPv6 network never holds an IPv4 address
        ("0.0.0.0/0", "::1", False),
        # lists: any positive entry admits...
        ("10.0.0.0/8,127.0.0.1", "127.0.0.1", True),
        ("10.0.0.0/8, 127.0.0.1", "127.0.0.1", False),  # no spaces in a list, as in sshd
        # ... unless a negated entry matches, wherever it stands
        ("!127.0.0.1,*", "127.0.0.1", False),
        ("*,!127.0.0.1", "127.0.0.1", False),
        ("127.0.0.0/8,!127.0.0.1", "127.0.0.1", False),
        ("127.0.0.0/8,!127.0.0.1", "127.0.0.2", True),
        ("!10.0.0.0/8,127.0.0.0/8", "127.0.0.1", True),
        ("*,!10.0.0.0/8", "10.1.1.1", False),
        ("*,!*.0.0.1", "127.0.0.1", False),
        ("!2001:db8::/32,*", "2001:db8::1", False),
        ("!2001:db8::/32,*", "2001:db9::1", True),
        # only negations: nothing positive, so no
        ("!10.0.0.1", "127.0.0.1", False),
        # names: no DNS, so only patterns the address itself matches
        ("*.example.com", "127.0.0.1", False),
        ("localhost", "127.0.0.1", False),
        # lists sshd calls invalid deny, whatever else they hold
        ("127.0.0.1/8", "127.0.0.1", False),  # host bits beyond the prefix
        ("10.0.0.0/33,*", "127.0.0.1", False),  # prefix longer than an IPv4 address
        ("127.0.0.1,", "127.0.0.1", False),  # empty entry
        ("!,*", "127.0.0.1", False),
        ("", "127.0.0.1", False),
        # not a prefix length: a wildcard pattern, which matches nothing here
        ("10.0.0.0/x,127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1/129", "127.0.0.1", False),
    ],
)
def test_from_table(patterns, address, allowed):
    try:
        found = hp.from_allows(patterns, ipaddress.ip_address(address))
    except hp.PatternError:
        found = False  # how the key's login_refusal treats it (with the reason logged)
    assert found is allowed


def test_invalid_lists_raise_for_the_log():
    loopback = ipaddress.ip_address("127.0.0.1")
    for patterns in ("127.0.0.1/8", "10.0.0.0/33", "a,,b", "!,*", ""):
        with pytest.raises(hp.PatternError):
            hp.from_allows(patterns, loopback)
    with pytest.raises(hp.PatternError, match="more than"):
        hp.from_allows(",".join(["10.0.0.1"] * (hp.MAX_PATTERNS + 1)), loopback)


def test_unknown_address_is_never_allowed():
    assert hp.from_allows("*", None) is False


def test_overlong_entry_matches_no_name():
    assert hp.match_name_list("a", "*" * (hp.MAX_PATTERN + 1)) is hp.Match.NONE


@pytest.mark.parametrize(
    "text,pattern,matched",
    [
        ("", "", True),
        ("", "*", True),
        ("a", "", False),
        ("abc", "a*c", True),
        ("abc", "a*b", False),
        ("abcbc", "*bc", True),
        ("abc", "???", True),
        ("abc", "????", False),
        ("a" * 60, "*a*a*a*a*a*a*a*a*a*a*a*a*b", False),  # no exponential backtracking
    ],
)
def test_match_pattern(text, pattern, matched):
    assert hp.match_pattern(text, pattern) is matched


@pytest.mark.parametrize(
    "peer,address",
    [
        ("127.0.0.1:2222", "127.0.0.1"),
        ("::1:50000", "::1"),
        ("2001:db8::7:22", "2001:db8::7"),
        ("::ffff:192.0.2.1:22", "192.0.2.1"),  # IPv4-mapped: the IPv4 address, as sshd
        ("192.0.2.9", "192.0.2.9"),
        ("unix:/run/x", None),
        ("", None),
    ],
)
def test_peer_address(peer, address):
    found = hp.peer_address(peer)
    assert (str(found) if found is not None else None) == address
