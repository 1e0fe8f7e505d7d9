"""Hostile input to the gateway's parsers: never an unexpected exception."""

from __future__ import annotations

import bcrypt
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import authorized_keys as ak
from gateway import passwords
from gateway.config import ConfigError, parse_config

KEY_WORDS = st.sampled_from(
    [
        b"ssh-rsa",
        b"ssh-ed25519",
        b"ecdsa-sha2-nistp256",
        b"2048",
        b"35",
        b"AAAA",
        b'"',
        b",",
        b"no-pty",
        b"command=",
        b" ",
        b"\t",
        b"#",
        b"\n",
        b"\r\n",
        b"=",
        b"9" * 300,
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(KEY_WORDS, st.binary(max_size=40)), max_size=30))
def test_authorized_keys_never_raises(parts):
    for entry in ak.parse_authorized_keys(b"".join(parts)):
        assert entry.key is not None or entry.rsa is not None


def test_huge_ssh1_numbers_are_skipped():
    line = b"8192 35 " + b"9" * 5000 + b" c"
    assert ak.parse_authorized_keys(line) == []


TOML_WORDS = st.sampled_from(
    [
        "[users.a]",
        "[auth]",
        "[ssh1]",
        "[ssh2]",
        "[session]",
        "password",
        "=",
        '"',
        "'",
        "\n",
        "listen",
        "protocols",
        "[",
        "]",
        "1",
        "true",
        "kex",
        "env_allow",
        ".",
        "users.b.auth",
        '"$scrypt$n=2,r=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA"',
        "#",
        "{",
        "}",
        ",",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(TOML_WORDS, st.text(max_size=10)), max_size=40))
def test_config_parser_only_raises_config_error(parts):
    try:
        parse_config(" ".join(parts), "fuzz.toml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.toml")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120), st.binary(max_size=80))
def test_password_functions_never_raise_on_garbage(stored, password):
    assert passwords.verify_password(stored, password) in (False, True)
    assert passwords.is_hash(stored) in (False, True)


def test_bcrypt_nul_and_long_passwords_refused():
    stored = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    assert not passwords.verify_password(stored, b"pw\0anything")
    assert passwords.dummy_verify(b"pw\0", stored) is False
