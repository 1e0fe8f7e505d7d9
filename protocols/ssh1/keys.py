"""SSH-1 RSA operations: session id, the doubly encrypted session key, RSA challenge and
response, and key fingerprints (MD5 colon-hex and SHA256).

SSH-1 moves these values as integers, so leading zero bytes vanish on the wire: every
recovered value is left-padded to its fixed size (session key and challenge: 32 bytes)
and every ciphertext to its modulus's byte length before ``cryptography`` sees it.
Forgetting that is a 1-in-256 interop failure.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import padding, rsa

from protocols.fingerprint import sha256_fingerprint
from protocols.ssh1.wire import int_to_bytes

SESSION_KEY_SIZE = 32
CHALLENGE_SIZE = 32
_PKCS1 = padding.PKCS1v15()
# A PKCS#1 v1.5 type-2 block is 00 02, nonzero random padding, 00, then the data.
# RFC 8017 asks for at least 8 padding bytes; PuTTY sends whatever fits, down to one
# (its rsa_ssh1_encrypt), and old SSH-1 devices with small keys rely on that.
PKCS1_OVERHEAD = 3 + 8
PKCS1_MIN_OVERHEAD = 3 + 1


def modulus_bytes(n: int) -> int:
    return (n.bit_length() + 7) // 8


def ssh1_fingerprint(e: int, n: int) -> str:
    """MD5 colon-hex fingerprint of an SSH-1 RSA key, as PuTTY and OpenSSH's ssh1 show
    it (and as ``plink -hostkey`` accepts it): MD5 over the modulus then the exponent,
    each as its minimal big-endian magnitude."""
    digest = hashlib.md5(int_to_bytes(n) + int_to_bytes(e), usedforsecurity=False).digest()
    return ":".join(f"{b:02x}" for b in digest)


def ssh1_sha256_fingerprint(e: int, n: int) -> str:
    """``SHA256:...`` of an SSH-1 RSA key, as OpenSSH 7.5's ``ssh1 -v`` (``RSA1
    SHA256:...``) and ``ssh-keygen1 -l`` show it: over the same bytes as the MD5 form."""
    return sha256_fingerprint(int_to_bytes(n) + int_to_bytes(e))


def ssh1_fingerprint_line(e: int, n: int) -> str:
    """``<bits> <fingerprint>``, the form both clients print."""
    return f"{n.bit_length()} {ssh1_fingerprint(e, n)}"


def session_id(host_n: int, server_n: int, cookie: bytes) -> bytes:
    return hashlib.md5(
        int_to_bytes(host_n) + int_to_bytes(server_n) + cookie, usedforsecurity=False
    ).digest()


def public_encrypt(
    e: int, n: int, data: bytes, random: Callable[[int], bytes] = os.urandom
) -> int:
    """PKCS#1 v1.5 type-2 encryption of ``data`` under (e, n), as an integer.

    Where the modulus leaves room for fewer than 8 padding bytes (a legacy device's small
    key) the block is built here with what fits, down to one byte, as PuTTY builds it; a
    peer that insists on 8 refuses it, as it refuses PuTTY. Raises ValueError when not
    even that fits."""
    room = modulus_bytes(n) - len(data)
    if room >= PKCS1_OVERHEAD:
        key = rsa.RSAPublicNumbers(e, n).public_key()
        return int.from_bytes(key.encrypt(data, _PKCS1), "big")
    if room < PKCS1_MIN_OVERHEAD:
        raise ValueError(f"a {n.bit_length()}-bit modulus cannot hold {len(data)} bytes")
    padding_bytes = b""
    while len(padding_bytes) < room - 3:
        padding_bytes += random(room).replace(b"\0", b"")
    block = b"\0\2" + padding_bytes[: room - 3] + b"\0" + data
    return pow(int.from_bytes(block, "big"), e, n)


def private_decrypt(key: rsa.RSAPrivateKey, value: int) -> bytes:
    """PKCS#1 v1.5 decryption of an integer; raises ValueError on any failure."""
    n = key.public_key().public_numbers().n
    if value >= n:
        raise ValueError("ciphertext not below the modulus")
    return key.decrypt(value.to_bytes(modulus_bytes(n), "big"), _PKCS1)


def encrypt_session_key(
    session_key: bytes,
    sid: bytes,
    server_pub: tuple[int, int],
    host_pub: tuple[int, int],
    random: Callable[[int], bytes] = os.urandom,
) -> int:
    """Client side: XOR the session id in, encrypt with the smaller key, then the larger."""
    if len(session_key) != SESSION_KEY_SIZE:
        raise ValueError("the SSH-1 session key is 32 bytes")
    mixed = bytes(a ^ b for a, b in zip(session_key[:16], sid, strict=True)) + session_key[16:]
    small, large = sorted((server_pub, host_pub), key=lambda k: k[1])
    inner = public_encrypt(small[0], small[1], mixed, random)
    return public_encrypt(
        large[0], large[1], int_to_bytes(inner, modulus_bytes(small[1])), random
    )


def session_key_padding(server_n: int, host_n: int) -> tuple[int, int]:
    """The PKCS#1 padding bytes the double encryption leaves room for: (inner, outer).
    Each must be at least 1 (PuTTY's limit) for the session key to be sent at all; under
    8 the block is shorter than RFC 8017 asks."""
    small, large = sorted((server_n, host_n))
    inner = modulus_bytes(small) - SESSION_KEY_SIZE - 3
    return inner, modulus_bytes(large) - modulus_bytes(small) - 3


def decrypt_session_key(
    value: int,
    sid: bytes,
    server_key: rsa.RSAPrivateKey,
    host_key: rsa.RSAPrivateKey,
    random: Callable[[int], bytes] = os.urandom,
) -> tuple[bytes, bool]:
    """Server side: undo the double encryption. Returns ``(key, ok)``.

    On any failure the key is random and ``ok`` is False: the caller must carry on
    exactly as if it had succeeded so that a padding oracle learns nothing; the peer
    then fails on its first packet's CRC like any corrupted connection. (With OpenSSL's
    implicit rejection the library itself returns a synthetic plaintext instead of an
    error, so ``ok`` can be True for garbage; it is a hint for debug logs only.)
    """
    keys = sorted((server_key, host_key), key=lambda k: k.public_key().public_numbers().n)
    small, large = keys
    try:
        inner = private_decrypt(large, value)
        small_len = modulus_bytes(small.public_key().public_numbers().n)
        if len(inner) > small_len:
            raise ValueError("inner ciphertext longer than the inner modulus")
        plain = private_decrypt(small, int.from_bytes(inner, "big"))
        if len(plain) > SESSION_KEY_SIZE:
            raise ValueError("session key longer than 32 bytes")
    except ValueError:
        return random(SESSION_KEY_SIZE), False
    plain = plain.rjust(SESSION_KEY_SIZE, b"\0")
    return bytes(a ^ b for a, b in zip(plain[:16], sid, strict=True)) + plain[16:], True


def make_challenge(random: Callable[[int], bytes] = os.urandom) -> bytes:
    return random(CHALLENGE_SIZE)


def encrypt_challenge(challenge: bytes, e: int, n: int) -> int:
    return public_encrypt(e, n, challenge)


def challenge_response(challenge: bytes, sid: bytes) -> bytes:
    """MD5(challenge as exactly 32 bytes || session id), the client's answer."""
    return hashlib.md5(
        challenge.rjust(CHALLENGE_SIZE, b"\0") + sid, usedforsecurity=False
    ).digest()


def decrypt_challenge(key: rsa.RSAPrivateKey, value: int) -> bytes:
    """Client side: the 32-byte challenge (left-padded) from its integer form."""
    return private_decrypt(key, value).rjust(CHALLENGE_SIZE, b"\0")


def check_response(challenge: bytes, sid: bytes, response: bytes) -> bool:
    return hmac.compare_digest(challenge_response(challenge, sid), response)


def public_numbers(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> tuple[int, int]:
    """(e, n) of a cryptography RSA key."""
    pub = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    nums = pub.public_numbers()
    return nums.e, nums.n
