"""RSA keys of any SSH-1 size, including the ones ``cryptography`` no longer makes.

``cryptography`` refuses to generate RSA keys under 1024 bits, but SSH-1 server keys of
512-1023 bits are what legacy clients and devices expect (``[ssh1] server_key_bits``),
and tests need devices with 384-bit server keys and 768-bit host keys. Below 1024 bits
this module finds the primes itself (Miller-Rabin on random odd numbers, e = 65537) and
builds the key with :class:`~cryptography.hazmat.primitives.asymmetric.rsa.RSAPrivateNumbers`,
which OpenSSL checks and then uses like any other key; from 1024 bits on it asks
``cryptography``.

Finding primes is pure Python: run off the reactor, a caller passes ``between_tests``
(called after each expensive primality test) to hand the interpreter lock to other
threads, so that no single stretch of work here holds it for more than a fraction of a
millisecond.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa

PUBLIC_EXPONENT = 65537
GENERATED_BY_CRYPTOGRAPHY = 1024  # and above: cryptography's own generator
MIN_BITS = 128  # smaller is no RSA key at all (and cannot hold a PKCS#1 block)
MAX_BITS = 16384
MILLER_RABIN_ROUNDS = 40


def _small_primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\0\0"
    for i in range(2, math.isqrt(limit) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit, i)))
    return [i for i in range(3, limit) if sieve[i]]


# The product of the odd primes below 2000: one gcd with it rules out about 85 % of the
# odd candidates before any modular exponentiation.
_SMALL_PRIMES = _small_primes(2000)
_PRIMORIAL = math.prod(_SMALL_PRIMES)


def is_probable_prime(
    n: int,
    randbits: Callable[[int], int] = secrets.randbits,
    between_tests: Callable[[], None] | None = None,
    rounds: int = MILLER_RABIN_ROUNDS,
) -> bool:
    """Miller-Rabin with ``rounds`` random bases (after trial division by small primes)."""
    if n < 2:
        return False
    if n in (2, *_SMALL_PRIMES):
        return True
    if n % 2 == 0 or math.gcd(n, _PRIMORIAL) != 1:
        return False
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        base = 2 + randbits(n.bit_length() + 64) % (n - 3)
        x = pow(base, d, n)
        if between_tests is not None:
            between_tests()
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(
    bits: int, randbits: Callable[[int], int], between_tests: Callable[[], None] | None
) -> int:
    """A probable prime of exactly ``bits`` bits, its top two bits set (so that the
    product of two such primes has exactly the sum of their sizes), with p - 1 prime to e."""
    while True:
        candidate = randbits(bits) | (3 << (bits - 2)) | 1
        if math.gcd(candidate, _PRIMORIAL) != 1 or (candidate - 1) % PUBLIC_EXPONENT == 0:
            continue
        if is_probable_prime(candidate, randbits, between_tests):
            return candidate


def private_key_from_primes(
    p: int, q: int, e: int = PUBLIC_EXPONENT, *, check: bool = True
) -> rsa.RSAPrivateKey:
    """The RSA key with primes ``p`` and ``q``. With ``check`` OpenSSL verifies it
    (ValueError if bad): 7 ms at 1023 bits, holding the interpreter lock throughout, so
    :func:`generate_private_key` skips it for the primes it tested itself."""
    d = pow(e, -1, math.lcm(p - 1, q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, p * q),
    )  # fmt: skip
    return numbers.private_key(unsafe_skip_rsa_key_validation=not check)


def generate_private_key(
    bits: int,
    *,
    randbits: Callable[[int], int] = secrets.randbits,
    between_tests: Callable[[], None] | None = None,
) -> rsa.RSAPrivateKey:
    """An RSA key with e = 65537 and a modulus of exactly ``bits`` bits.

    ``randbits`` (``secrets.randbits`` unless a test wants repeatable keys) and
    ``between_tests`` apply below 1024 bits only."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"RSA key size {bits} is outside {MIN_BITS}..{MAX_BITS} bits")
    if bits >= GENERATED_BY_CRYPTOGRAPHY:
        return rsa.generate_private_key(PUBLIC_EXPONENT, bits)
    while True:
        p = _prime(bits - bits // 2, randbits, between_tests)
        q = _prime(bits // 2, randbits, between_tests)
        # Primes this close would let n be factored from its square root (Fermat).
        if abs(p - q).bit_length() > bits // 2 - 100:
            return private_key_from_primes(p, q, check=False)
