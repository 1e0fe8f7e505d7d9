"""Detector for the CRC-32 compensation attack on SSH-1 (CORE SDI, 1998).

CRC-32 is linear, so an attacker who can repeat known ciphertext blocks in a CBC stream
can append blocks whose contributions to the CRC cancel out. That needs a ciphertext
block that repeats inside a packet (or repeats the IV, the last block of the previous
packet). Random CBC output repeats an 8-byte block with probability ~n^2/2^64, so we
look for repeats first at C speed (a set over the blocks); only when one is found do
we run the exact test: the pattern of positions where the repeated block occurs must
leave the CRC unchanged (its CRC "syndrome" is zero) for the attack to work.

The block table is a Python set sized by the packet: at most ``len // 8`` entries, and
the caller's length is checked against :data:`MAX_INPUT` first (the C detector once
overflowed its 16-bit table index on long packets; here the bound is explicit).
"""

from __future__ import annotations

from collections.abc import Sequence

from protocols.ssh1.crc import ssh1_crc32

BLOCK_SIZE = 8
MAX_INPUT = 256 * 1024 + 16  # largest ciphertext the packet codec can hand us


class AttackDetected(Exception):
    pass


def _crc_step(crc: int, word: int) -> int:
    return ssh1_crc32(((word ^ crc) & 0xFFFFFFFF).to_bytes(4, "little"))


def _syndrome_is_zero(blocks: tuple[int, ...], repeated: int, iv: int | None) -> bool:
    """Whether flipping every occurrence of ``repeated`` keeps the CRC (the attack's need)."""
    crc = 0
    if iv is not None and iv == repeated:
        crc = _crc_step(_crc_step(crc, 1), 0)
    for block in blocks:
        crc = _crc_step(_crc_step(crc, 1 if block == repeated else 0), 0)
    return crc == 0


def check_run(ciphertext: bytes, iv: bytes | None, sizes: Sequence[int]) -> None:
    """:func:`check` for consecutive packets' ciphertexts joined (``sizes`` each), every
    packet's IV the last block of the one before it.

    One set over the whole run settles honest traffic: when no block repeats anywhere in
    it nor repeats ``iv``, no packet holds a repeat or its own IV. Only otherwise is each
    packet checked on its own. The bound of :data:`MAX_INPUT` is per packet."""
    if len(ciphertext) % BLOCK_SIZE or sum(sizes) != len(ciphertext):
        raise ValueError("run is not whole blocks or does not match its packet sizes")
    if max(sizes, default=0) > MAX_INPUT:
        raise ValueError(f"deattack: a packet exceeds the {MAX_INPUT}-byte bound")
    view = memoryview(ciphertext).cast("B").cast("Q")
    iv_value = memoryview(iv).cast("B").cast("Q")[0] if iv is not None else None
    table = set(view)
    if len(table) == len(view) and (iv_value is None or iv_value not in table):
        return
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
    n = len(ciphertext)
    if n % BLOCK_SIZE:
        raise ValueError("ciphertext is not a whole number of blocks")
    if n > MAX_INPUT:
        raise ValueError(f"deattack: {n} bytes exceeds the {MAX_INPUT}-byte bound")
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
