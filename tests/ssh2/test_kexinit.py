"""protocols.ssh2.kexinit: a KEXINIT read as data, with hostile input (truncated,
oversized, malformed names); every failure a KexInitError naming what is wrong."""

from __future__ import annotations

import struct

import pytest

from protocols.ssh2.kexinit import MAX_KEXINIT, KexInitError, parse_kexinit
from tests.support.ssh2.kexinit_payloads import GOOD_LISTS, kexinit_body


def test_kexinit_decoded():
    k = parse_kexinit(kexinit_body())
    assert k.kex == ["curve25519-sha256"]
    assert k.host_key_algorithms == ["ssh-ed25519", "rsa-sha2-512"]
    assert (k.ciphers_c2s, k.ciphers_s2c) == (["aes128-ctr"], ["aes256-ctr"])
    assert (k.macs_c2s, k.macs_s2c) == (["hmac-sha2-256"], ["hmac-sha2-512"])
    assert (k.compression_c2s, k.compression_s2c) == (["none"], ["none", "zlib"])
    assert k.languages_c2s == [] and not k.first_kex_follows


@pytest.mark.parametrize("cut", [0, 10, 16, 18, 25, 60, -5, -1])
def test_kexinit_truncated(cut):
    with pytest.raises(KexInitError, match="truncated"):
        parse_kexinit(kexinit_body()[:cut])


def test_kexinit_oversized_list_length_refused():
    body = b"K" * 16 + struct.pack(">I", 0xFFFFFFF0) + b"x" * 10
    with pytest.raises(KexInitError, match="more than"):
        parse_kexinit(body)


def test_kexinit_oversized_packet_refused():
    with pytest.raises(KexInitError, match="more than"):
        parse_kexinit(b"K" * (MAX_KEXINIT + 1))


@pytest.mark.parametrize(
    "bad",
    [
        b"a,,b", b"a b", b"caf\xc3\xa9", b"x" * 65, b",".join([b"n"] * 300), b"a,\x00",
    ],
)  # fmt: skip
def test_kexinit_malformed_names_refused(bad):
    lists = [bad, *GOOD_LISTS[1:]]
    with pytest.raises(KexInitError):
        parse_kexinit(kexinit_body(lists))
