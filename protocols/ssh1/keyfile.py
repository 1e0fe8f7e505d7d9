"""The classic SSH-1 RSA private key file, as ``ssh-keygen1 -t rsa1`` and
``puttygen -t rsa1`` write it (unencrypted files only):

    "SSH PRIVATE KEY FILE FORMAT 1.1\\n\\0"
    byte    cipher (0 = not encrypted)
    uint32  reserved
    uint32  bits;  mpint n;  mpint e;  string comment
    --- the rest is encrypted when cipher != 0 ---
    4 bytes check (two random bytes, repeated)
    mpint d;  mpint u (inverse of the first prime mod the second);  mpint p;  mpint q
    padding to a multiple of 8

Bounded like every parser here: the file size, each mpint and the comment are limited
before use, and the key is checked for consistency (p * q == n) before it is accepted.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric import rsa

from protocols.ssh1.wire import ProtocolError, Reader, Writer

MAGIC = b"SSH PRIVATE KEY FILE FORMAT 1.1\n\0"
MAX_FILE = 64 * 1024
MAX_BITS = 16384
MAX_COMMENT = 4096


def load_private_key(data: bytes) -> tuple[rsa.RSAPrivateKey, str]:
    """(key, comment) from an SSH-1 private key file; ValueError says what is wrong."""
    if len(data) > MAX_FILE:
        raise ValueError("not an SSH-1 private key file (too large)")
    if not data.startswith(MAGIC):
        raise ValueError("not an SSH-1 private key file (rsa1 format)")
    r = Reader(data[len(MAGIC) :], "SSH-1 key file")
    try:
        cipher = r.byte("cipher")
        r.uint32("reserved")
        r.uint32("bits")
        n = r.mpint("n", MAX_BITS)
        e = r.mpint("e", MAX_BITS)
        comment = r.string("comment", MAX_COMMENT).decode("utf-8", "replace")
        if cipher != 0:
            raise ValueError("the SSH-1 key file is passphrase-protected; store it unencrypted")
        check = r.raw(4, "check bytes")
        if check[0:2] != check[2:4]:
            raise ValueError("SSH-1 key file is corrupt (check bytes differ)")
        d = r.mpint("d", MAX_BITS)
        r.mpint("u", MAX_BITS)
        p = r.mpint("p", MAX_BITS)
        q = r.mpint("q", MAX_BITS)
    except ProtocolError as exc:
        raise ValueError(f"SSH-1 key file is corrupt ({exc.reason})") from None
    if p < 3 or q < 3 or p * q != n or e < 3:
        raise ValueError("SSH-1 key file is corrupt (inconsistent numbers)")
    try:
        key = rsa.RSAPrivateNumbers(
            p=p,
            q=q,
            d=d,
            dmp1=rsa.rsa_crt_dmp1(d, p),
            dmq1=rsa.rsa_crt_dmq1(d, q),
            iqmp=rsa.rsa_crt_iqmp(p, q),
            public_numbers=rsa.RSAPublicNumbers(e, n),
        ).private_key()
    except ValueError as exc:
        raise ValueError(f"SSH-1 key file holds an unusable key ({exc})") from None
    return key, comment


def dump_private_key(key: rsa.RSAPrivateKey, comment: str = "") -> bytes:
    """An unencrypted SSH-1 private key file for ``key`` (the format above)."""
    nums = key.private_numbers()
    pub = nums.public_numbers
    check = os.urandom(2)
    # SSH-1's u is the inverse of the *first* prime it stores modulo the second.
    private = (
        Writer()
        .raw(check + check)
        .mpint(nums.d)
        .mpint(rsa.rsa_crt_iqmp(nums.p, nums.q))
        .mpint(nums.q)
        .mpint(nums.p)
        .getvalue()
    )
    private += bytes(-len(private) % 8)
    return (
        MAGIC
        + Writer()
        .byte(0)
        .uint32(0)
        .uint32(pub.n.bit_length())
        .mpint(pub.n)
        .mpint(pub.e)
        .string(comment.encode("utf-8"))
        .getvalue()
        + private
    )
