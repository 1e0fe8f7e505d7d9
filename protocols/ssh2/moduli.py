"""Diffie-Hellman groups for diffie-hellman-group-exchange (RFC 4419).

Groups come from an OpenSSH ``moduli`` file when one is present (safe primes only, at
least 2048 bits), else from the RFC 3526 MODP groups 14/15/16/18 (2048/3072/4096/8192
bits, generator 2). The RFC 3526 primes are derived here from their published formula
``p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) * pi) + k)`` rather than pasted in;
the tests check the 2048-bit result against the well-known group 14 prime.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

from twisted.logger import Logger

log = Logger()

MIN_BITS = 2048  # never offer or hand out anything smaller
MAX_BITS = 8192
DEFAULT_MODULI = Path("/etc/ssh/moduli")
_MAX_MODULI_FILE = 8 * 1024 * 1024

# bits -> k from RFC 3526 (groups 14, 15, 16, 18).
_RFC3526_K = {2048: 124476, 3072: 1690314, 4096: 240904, 8192: 4743158}

Groups = dict[int, list[tuple[int, int]]]  # bits -> [(generator, prime)]


def _pi_fixed(bits: int) -> int:
    """floor(pi * 2^bits), by Machin's formula in integer arithmetic with guard bits."""
    guard = 64
    scale = 1 << (bits + guard)

    def arctan_inv(x: int) -> int:
        total = term = scale // x
        x2 = x * x
        n = 1
        sign = -1
        while term:
            term //= x2
            total += sign * (term // (2 * n + 1))
            sign = -sign
            n += 1
        return total

    pi = 16 * arctan_inv(5) - 4 * arctan_inv(239)
    return pi >> guard


@cache
def rfc3526_prime(bits: int) -> int:
    k = _RFC3526_K[bits]
    return (1 << bits) - (1 << (bits - 64)) - 1 + (1 << 64) * (_pi_fixed(bits - 130) + k)


def rfc3526_groups() -> Groups:
    return {bits: [(2, rfc3526_prime(bits))] for bits in sorted(_RFC3526_K)}


def parse_moduli(text: str) -> Groups:
    """Safe primes of at least MIN_BITS from OpenSSH moduli text; bad lines are skipped."""
    groups: Groups = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) != 7:
            continue
        _time, kind, _tests, _tries, size, generator, modulus = fields
        try:
            # "size" in the file is one less than the bit length of the prime.
            bits = int(size) + 1
            g = int(generator)
            p = int(modulus, 16)
        except ValueError:
            continue
        if kind != "2" or bits < MIN_BITS or bits > MAX_BITS or p.bit_length() != bits:
            continue
        if g < 2 or g >= p - 1:
            continue
        groups.setdefault(bits, []).append((g, p))
    return groups


def load_groups(path: Path | None = DEFAULT_MODULI) -> Groups:
    """Groups from ``path`` if it holds usable ones, else the RFC 3526 groups."""
    if path is not None:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read(_MAX_MODULI_FILE)
        except OSError:
            text = ""
        groups = parse_moduli(text)
        if groups:
            return groups
        log.info("no usable DH groups in {path}; using the RFC 3526 groups", path=str(path))
    return rfc3526_groups()


def choose_group(groups: Groups, minimum: int, preferred: int, maximum: int) -> tuple[int, int] | None:
    """(generator, prime) for a GEX request, as OpenSSH chooses: within [min, max] (raised
    to MIN_BITS) the smallest size >= preferred, else the largest size below it."""
    minimum = max(minimum, MIN_BITS)
    maximum = min(maximum, MAX_BITS)
    preferred = min(max(preferred, minimum), maximum)
    sizes = sorted(bits for bits in groups if minimum <= bits <= maximum and groups[bits])
    if not sizes:
        return None
    at_least = [bits for bits in sizes if bits >= preferred]
    bits = at_least[0] if at_least else sizes[-1]
    return random.SystemRandom().choice(groups[bits])
