"""The compensation-attack detector's fast paths (a set of 64-bit blocks, per group of
packets) against its rule written out block by block (deattack.find_attack_reference):
on random ciphertext, on ciphertext from a few block values (repeats everywhere), and on
real attack-shaped packets, alone and inside long runs of packets."""

from __future__ import annotations

import functools
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.ssh1 import deattack
from protocols.ssh1.deattack import BLOCK_SIZE, find_attack_reference
from tests.support.ssh1.minclient import FUZZ_EXAMPLES, crc_attack_positions


def detects(ciphertext: bytes, iv: bytes | None) -> bool:
    try:
        deattack.check(ciphertext, iv)
    except deattack.AttackDetected:
        return True
    return False


def detects_run(ciphertext: bytes, iv: bytes | None, sizes: list[int]) -> bool:
    try:
        deattack.check_run(ciphertext, iv, sizes)
    except deattack.AttackDetected:
        return True
    return False


def reference_run(ciphertext: bytes, iv: bytes | None, sizes: list[int]) -> bool:
    """The rule applied packet by packet, each packet's IV its predecessor's last block."""
    start = 0
    for size in sizes:
        if find_attack_reference(ciphertext[start : start + size], iv):
            return True
        iv = ciphertext[start + size - BLOCK_SIZE : start + size]
        start += size
    return False


@functools.cache
def attack_positions(nblocks: int) -> tuple[int, ...] | None:
    """Block positions whose CRC contributions cancel, or None (too few blocks: the
    contributions of up to 32 positions are independent)."""
    try:
        return tuple(crc_attack_positions(nblocks))
    except AssertionError:
        return None


def contribution(nblocks: int, position: int | None) -> int:
    """The CRC syndrome of flipping one position (None: the IV) of an n-block packet."""
    crc = 0
    if position is None:
        crc = deattack._crc_step(deattack._crc_step(crc, 1), 0)
    for j in range(nblocks):
        crc = deattack._crc_step(deattack._crc_step(crc, 1 if j == position else 0), 0)
    return crc


@functools.cache
def attack_positions_with_iv(nblocks: int) -> tuple[int, ...] | None:
    """Block positions that, with the IV, cancel in the CRC (GF(2) elimination), or None."""
    basis: dict[int, tuple[int, int]] = {}
    target = contribution(nblocks, None)
    for i in range(nblocks):
        vec, mask = contribution(nblocks, i), 1 << i
        while vec:
            top = vec.bit_length() - 1
            if top not in basis:
                basis[top] = (vec, mask)
                break
            vec, mask = vec ^ basis[top][0], mask ^ basis[top][1]
    mask = 0
    while target:
        top = target.bit_length() - 1
        if top not in basis:
            return None
        target, mask = target ^ basis[top][0], mask ^ basis[top][1]
    return tuple(j for j in range(nblocks) if mask >> j & 1)


def attack_packet(rng: random.Random, nblocks: int, iv: bytes | None = None) -> bytes:
    """``nblocks`` random blocks but for one value repeated where the CRC cancels (and
    equal to ``iv`` too, when given)."""
    repeated = iv if iv is not None else rng.randbytes(BLOCK_SIZE)
    positions = attack_positions(nblocks) if iv is None else attack_positions_with_iv(nblocks)
    assert positions is not None
    return b"".join(repeated if i in positions else rng.randbytes(BLOCK_SIZE) for i in range(nblocks))


# ------------------------------------------------------------------ the rule itself
def test_reference_finds_the_crafted_attack_and_not_a_harmless_repeat():
    rng = random.Random(1)
    assert find_attack_reference(attack_packet(rng, 40), None)
    block = rng.randbytes(8)
    assert not find_attack_reference(block + rng.randbytes(8) + block, None)
    assert not find_attack_reference(os.urandom(8 * 64), os.urandom(8))


@pytest.mark.parametrize("nblocks", [40, 64, 100])
def test_reference_finds_an_attack_that_repeats_the_iv(nblocks):
    rng = random.Random(nblocks)
    iv = rng.randbytes(8)
    packet = attack_packet(rng, nblocks, iv)
    assert find_attack_reference(packet, iv)
    assert detects(packet, iv)
    assert detects_run(packet, iv, [len(packet)])


# ------------------------------------------------------------------ fast == reference
alphabets = st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=5, unique=True)


@settings(max_examples=FUZZ_EXAMPLES * 2, deadline=None)
@given(alphabet=alphabets, data=st.data())
def test_check_agrees_with_the_reference_on_repeats(alphabet, data):
    """Blocks from a few values: repeats in every packet, attacks among them by chance."""
    n = data.draw(st.integers(1, 70))
    blocks = data.draw(st.lists(st.sampled_from(alphabet), min_size=n, max_size=n))
    iv = data.draw(st.none() | st.sampled_from(alphabet) | st.binary(min_size=8, max_size=8))
    ciphertext = b"".join(blocks)
    assert detects(ciphertext, iv) == find_attack_reference(ciphertext, iv)
    assert detects_run(ciphertext, iv, [len(ciphertext)]) == find_attack_reference(ciphertext, iv)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(nblocks=st.integers(2, 90), seed=st.integers(0, 2**32), with_iv=st.booleans())
def test_check_finds_every_attack_shaped_packet(nblocks, seed, with_iv):
    rng = random.Random(seed)
    iv = rng.randbytes(8) if with_iv else None
    if (attack_positions_with_iv if with_iv else attack_positions)(nblocks) is None:
        return  # no set of positions cancels at this size
    packet = attack_packet(rng, nblocks, iv)
    assert find_attack_reference(packet, iv)
    assert detects(packet, iv)


@st.composite
def runs(draw):
    """Consecutive packets (several groups of deattack.GROUP_BYTES), mostly random; some
    are attack-shaped, some repeat a block of another packet or the IV (harmless), some
    are drawn from a few values."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    iv = draw(st.none() | st.just(b"iv-block"))
    packets: list[bytes] = []
    for _ in range(draw(st.integers(1, 40))):
        nblocks = draw(st.integers(2, 80))
        kind = draw(st.sampled_from(["random"] * 6 + ["attack", "attack-iv", "echo", "few"]))
        previous = (packets[-1][-BLOCK_SIZE:] if packets else iv) or rng.randbytes(8)
        if kind == "attack" and attack_positions(nblocks) is not None:
            packet = attack_packet(rng, nblocks)
        elif kind == "attack-iv" and attack_positions_with_iv(nblocks) is not None:
            packet = attack_packet(rng, nblocks, previous)
        elif kind == "echo" and packets:  # a block of an earlier packet, and of the IV
            earlier = rng.choice(packets)
            k = rng.randrange(len(earlier) // BLOCK_SIZE)
            packet = earlier[k * 8 : k * 8 + 8] + previous + rng.randbytes(8 * (nblocks - 2))
        elif kind == "few":
            values = [rng.randbytes(8) for _ in range(3)]
            packet = b"".join(rng.choice(values) for _ in range(nblocks))
        else:
            packet = rng.randbytes(8 * nblocks)
        packets.append(packet)
    return b"".join(packets), iv, [len(p) for p in packets]


@settings(max_examples=FUZZ_EXAMPLES * 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=runs())
def test_check_run_agrees_with_the_reference_packet_by_packet(run):
    ciphertext, iv, sizes = run
    assert detects_run(ciphertext, iv, sizes) == reference_run(ciphertext, iv, sizes)


def test_an_attack_deep_in_a_long_run_is_found_and_cross_packet_repeats_are_not():
    rng = random.Random(7)
    packets = [rng.randbytes(512) for _ in range(64)]  # plink's size: 16 groups
    # A block of packet 3 repeated in packet 40, and packet 41 repeating its own IV once:
    # neither is an attack.
    packets[40] = packets[3][:8] + packets[40][8:]
    packets[41] = packets[40][-8:] + packets[41][8:]
    sizes = [len(p) for p in packets]
    assert not detects_run(b"".join(packets), None, sizes)
    packets[50] = attack_packet(rng, 64)
    assert detects_run(b"".join(packets), None, sizes)
    packets[50] = rng.randbytes(512)
    # Repeating its IV: inside a group (the IV is a block of the group) and first in a
    # group (its IV is the last block of the group before).
    for at in (60, 56):
        assert deattack.GROUP_BYTES == 8 * 512 and at * 512 % deattack.GROUP_BYTES == (at == 60) * 2048
        saved, packets[at] = packets[at], attack_packet(rng, 64, packets[at - 1][-8:])
        assert detects_run(b"".join(packets), None, sizes)
        packets[at] = saved


def test_the_first_group_is_checked_against_the_runs_iv():
    rng = random.Random(8)
    iv = rng.randbytes(8)
    first = attack_packet(rng, 64, iv)
    run = first + b"".join(rng.randbytes(512) for _ in range(20))
    assert detects_run(run, iv, [512] * 21)
    assert not detects_run(run, rng.randbytes(8), [512] * 21)


def test_bounds():
    with pytest.raises(ValueError):
        find_attack_reference(bytes(9), None)
    with pytest.raises(ValueError):
        deattack.check_run(bytes(16), None, [8])
    with pytest.raises(ValueError):
        deattack.check_run(bytes(deattack.MAX_INPUT + 8), None, [deattack.MAX_INPUT + 8])
