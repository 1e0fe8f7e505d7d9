"""Password hashes: format, verification, bounds, and the dummy check for unknown users."""

from __future__ import annotations

import hashlib

import bcrypt
import pytest

from gateway import passwords
from tests.support.gateway_helpers import FAST, fast_hash


def test_hash_is_self_describing_and_verifies():
    stored = passwords.hash_password("correct horse", **FAST)
    assert stored.startswith("$scrypt$n=256,r=8,p=1$")
    assert passwords.verify_password(stored, "correct horse")
    assert passwords.verify_password(stored, b"correct horse")
    assert not passwords.verify_password(stored, "correct horsE")
    assert not passwords.verify_password(stored, "")


def test_default_parameters_are_the_documented_ones():
    stored = passwords.hash_password("x")
    assert stored.startswith(f"$scrypt$n={passwords.SCRYPT_N},r=8,p=1$")
    assert passwords.verify_password(stored, "x")


def test_salts_differ():
    assert fast_hash("same") != fast_hash("same")


def test_empty_password_refused():
    with pytest.raises(ValueError):
        passwords.hash_password("")


@pytest.mark.parametrize(
    "bad",
    [
        "hunter2",
        "",
        "$md5$abc",
        "$scrypt$",
        "$scrypt$n=3,r=8,p=1$c2FsdHNhbHQ$" + "A" * 43,  # n not a power of two
        "$scrypt$n=4194304,r=8,p=1$c2FsdHNhbHQ$" + "A" * 43,  # n above the bound
        "$scrypt$n=256,r=8$c2FsdHNhbHQ$" + "A" * 43,  # p missing
        "$scrypt$n=256,r=8,p=1,p=1$c2FsdHNhbHQ$" + "A" * 43,
        "$scrypt$n=256,r=8,p=1$!!!$" + "A" * 43,
        "$2b$12$short",
        "$2b$99$" + "a" * 53,
    ],
)
def test_malformed_hashes_are_rejected_and_never_match(bad):
    assert not passwords.is_hash(bad)
    with pytest.raises(passwords.InvalidHash):
        passwords.check_hash(bad)
    assert passwords.verify_password(bad, "hunter2") is False


def test_bcrypt_hashes_from_other_tools_are_accepted():
    stored = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    passwords.check_hash(stored)
    assert passwords.verify_password(stored, "pw")
    assert not passwords.verify_password(stored, "pw2")
    # bcrypt ignores bytes after 72; we refuse rather than match on a prefix.
    long_stored = bcrypt.hashpw(b"a" * 72, bcrypt.gensalt(rounds=4)).decode()
    assert not passwords.verify_password(long_stored, "a" * 80)


def test_oversized_password_is_a_mismatch():
    stored = fast_hash("x")
    assert not passwords.verify_password(stored, "x" * (passwords.MAX_PASSWORD_BYTES + 1))


def test_comparison_is_constant_time(monkeypatch):
    calls = []
    real = passwords.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(passwords.hmac, "compare_digest", spy)
    stored = fast_hash("pw")
    passwords.verify_password(stored, "nope")
    assert len(calls) == 1


def test_dummy_verify_does_the_same_work(monkeypatch):
    seen = []
    real = hashlib.scrypt

    def counting(password, **kwargs):
        seen.append(kwargs["n"])
        return real(password, **kwargs)

    like = passwords.hash_password("x", n=2**9)
    monkeypatch.setattr(passwords.hashlib, "scrypt", counting)
    assert passwords.dummy_verify("guess", like) is False
    assert passwords.verify_password(like, "guess") is False
    # Same KDF, same cost parameters, for the unknown user and the wrong password.
    assert seen == [2**9, 2**9]


def test_dummy_verify_without_a_model_uses_default_cost(monkeypatch):
    seen = []
    real = hashlib.scrypt
    monkeypatch.setattr(passwords, "_DEFAULT_DUMMY", None)

    def counting(password, **kwargs):
        seen.append(kwargs["n"])
        return real(password, **kwargs)

    monkeypatch.setattr(passwords.hashlib, "scrypt", counting)
    assert passwords.dummy_verify("guess") is False
    assert seen[-1] == passwords.SCRYPT_N


def test_dummy_verify_with_bcrypt_model():
    like = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    assert passwords.dummy_verify("pw", like) is False
