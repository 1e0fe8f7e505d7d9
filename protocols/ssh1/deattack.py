"""Detector for the CRC-32 compensation attack on SSH-1 (CORE SDI, 1998).

CRC-32 is linear, so an attacker who can repeat known ciphertext blocks in a CBC stream
can append blocks whose contributions to the CRC cancel out. That needs a ciphertext
block that repeats inside a packet (or repeats the IV, the last block of the previous
packet). The rule, as OpenSSH's ``deattack.c`` applies it: a packet is an attack when
some block value occurs in it at least twice (counting the IV) and flipping every
occurrence of that value leaves the CRC unchanged (its CRC "syndrome" is zero).
:func:`find_attack_reference` is that rule written out block by block; it is the
specification the fast functions are tested against (tests/ssh1/test_deattack.py).

Random CBC output repeats an 8-byte block with probability ~n^2/2^64, so :func:`check`
and :func:`check_run` first look for any repeat at C speed (a set of the blocks as
64-bit integers; sets of at most :data:`GROUP_BYTES` of packets at a time, which stay in
the CPU cache: one set of 256 KiB costs twice as much per block) and only when one is
found run the exact test on the packets concerned. The set is sized by the packet (at
most ``len // 8`` entries), and the caller's length is checked against
:data:`MAX_INPUT` first (the C detector once overflowed its 16-bit table index on long
packets; here the bound is explicit).
"""

from __future__ import annotations

from collections.abc import Sequence

from protocols.ssh1.crc import ssh1_crc32

BLOCK_SIZE = 8
MAX_INPUT = 256 * 1024 + 16  # largest ciphertext the packet codec can hand us
# Consecutive packets whose blocks go into one set for the C-speed repeat test.
GROUP_BYTES = 4096


class AttackDetected(Exception):
    pass


def _crc_step(crc: int, word: int) -> int:
    return ssh1_crc32(((word ^ crc) & 0xFFFFFFFF).to_bytes(4, "little"))


def _syndrome_is_zero(blocks: Sequence[object], repeated: object, iv: object | None) -> bool:
    """Whether flipping every occurrence of ``repeated`` keeps the CRC (the attack's need).
    ``blocks``, ``repeated`` and ``iv`` are compared by equality only (bytes or ints)."""
    crc = 0
    if iv is not None and iv == repeated:
        crc = _crc_step(_crc_step(crc, 1), 0)
    for block in blocks:
        crc = _crc_step(_crc_step(crc, 1 if block == repeated else 0), 0)
    return crc == 0


def _check_bounds(n: int) -> None:
    if n % BLOCK_SIZE:
        raise ValueError("ciphertext is not a whole number of blocks")
    if n > MAX_INPUT:
        raise ValueError(f"deattack: {n} bytes exceeds the {MAX_INPUT}-byte bound")


def find_attack_reference(ciphertext: bytes, iv: bytes | None) -> bool:
    """The detector's rule, block by block with no shortcut (slow: the specification).

    Walks the blocks in order; a block equal to the IV or to an earlier block has its
    value's syndrome computed over the whole packet, and a zero syndrome is an attack."""
    _check_bounds(len(ciphertext))
    blocks = [bytes(ciphertext[i : i + BLOCK_SIZE]) for i in range(0, len(ciphertext), BLOCK_SIZE)]
    iv = bytes(iv) if iv is not None else None
    for i, block in enumerate(blocks):
        if block == iv or block in blocks[:i]:
            if _syndrome_is_zero(blocks, block, iv):
                return True
    return False


def check_run(ciphertext: bytes, iv: bytes | None, sizes: Sequence[int]) -> None:
    """:func:`check` for consecutive packets' ciphertexts joined (``sizes`` each), every
    packet's IV the last block of the one before it.

    Packets are taken in groups of about :data:`GROUP_BYTES`; one set per group settles
    honest traffic: when no block repeats in the group nor repeats the IV of its first
    packet, no packet of it holds a repeat or its own IV (the IV of every other packet
    is a block of the group). Only otherwise is each packet of the group checked on its
    own. The bound of :data:`MAX_INPUT` is per packet."""
    if len(ciphertext) % BLOCK_SIZE or sum(sizes) != len(ciphertext):
        raise ValueError("run is not whole blocks or does not match its packet sizes")
    if max(sizes, default=0) > MAX_INPUT:
        raise ValueError(f"deattack: a packet exceeds the {MAX_INPUT}-byte bound")
    view = memoryview(ciphertext).cast("B").cast("Q")
    iv_value = memoryview(iv).cast("B").cast("Q")[0] if iv is not None else None
    if len(ciphertext) <= GROUP_BYTES:
        table = set(view)
        if len(table) != len(view) or (iv_value is not None and iv_value in table):
            _check_each(ciphertext, iv, sizes)
        return
    group_start = start = 0
    group_sizes: list[int] = []
    for size in sizes:
        if start + size - group_start > GROUP_BYTES and group_sizes:
            _check_group(ciphertext, view, group_start, start, group_sizes, iv, iv_value)
            group_start, group_sizes = start, []
        group_sizes.append(size)
        start += size
    _check_group(ciphertext, view, group_start, start, group_sizes, iv, iv_value)


def _check_group(
    ciphertext: bytes,
    view: memoryview,
    start: int,
    end: int,
    sizes: list[int],
    run_iv: bytes | None,
    run_iv_value: int | None,
) -> None:
    """The repeat test on the packets of ``ciphertext[start:end]``; the IV of the first is
    the block before ``start``, or the run's IV for the first group."""
    blocks = view[start // BLOCK_SIZE : end // BLOCK_SIZE]
    table = set(blocks)
    iv, iv_value = run_iv, run_iv_value
    if start:
        iv, iv_value = ciphertext[start - BLOCK_SIZE : start], view[start // BLOCK_SIZE - 1]
    if len(table) == len(blocks) and (iv_value is None or iv_value not in table):
        return
    _check_each(ciphertext[start:end], iv, sizes)


def _check_each(ciphertext: bytes, iv: bytes | None, sizes: Sequence[int]) -> None:
    start = 0
    for size in sizes:
        check(ciphertext[start : start + size], iv)
        iv = ciphertext[start + size - BLOCK_SIZE : start + size]
        start += size


def check(ciphertext: bytes, iv: bytes | None) -> None:
    """Raise :class:`AttackDetected` if ``ciphertext`` shows the compensation pattern.

    ``iv`` is the previous ciphertext block of this direction (None for the first packet
    under a fresh key, where the IV is all zeros and an attacker knows nothing useful).
    """
    _check_bounds(len(ciphertext))
    # Native-order 64-bit views: only equality matters, and the cast costs no copy.
    view = memoryview(ciphertext).cast("B").cast("Q")
    iv_value = memoryview(iv).cast("B").cast("Q")[0] if iv is not None else None
    table = set(view)
    if len(table) == len(view) and (iv_value is None or iv_value not in table):
        return
    blocks = tuple(view)
    # Slow path, reached by chance ~never on honest traffic: find each repeated value.
    seen: set[int] = set() if iv_value is None else {iv_value}
    tested: set[int] = set()
    for block in blocks:
        if block in seen and block not in tested:
            tested.add(block)
            if _syndrome_is_zero(blocks, block, iv_value):
                raise AttackDetected("CRC-32 compensation attack detected")
        seen.add(block)
