"""Penalties per source (gateway.penalties), in memory on a task.Clock: how a penalty
grows, when it starts refusing, when it ends, and how the table stays bounded."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from gateway.penalties import (
    AUTHFAIL,
    MALFORMED,
    NOAUTH,
    IPenaltyBook,
    MemoryPenaltyBook,
    PenaltyRules,
)

RULES = PenaltyRules({AUTHFAIL: 5.0, NOAUTH: 1.0, MALFORMED: 10.0}, minimum=15.0, maximum=60.0)


def book(rules: PenaltyRules = RULES) -> tuple[MemoryPenaltyBook, Clock]:
    clock = Clock()
    clock.advance(1000)
    return MemoryPenaltyBook(rules, clock), clock


def test_the_book_provides_the_interface_a_shared_store_would():
    assert verifyObject(IPenaltyBook, book()[0])


def test_a_source_is_refused_only_once_its_penalties_add_up_past_the_minimum():
    penalties, clock = book()
    for _ in range(3):
        penalties.penalise("192.0.2.7/32", AUTHFAIL)
        assert penalties.refused_until("192.0.2.7/32") is None  # 5, 10, 15: not past 15
    penalties.penalise("192.0.2.7/32", AUTHFAIL)
    assert penalties.refused_until("192.0.2.7/32") == clock.seconds() + 20
    assert penalties.refused_until("192.0.2.8/32") is None  # other sources unaffected


def test_each_penalty_adds_to_the_time_that_remains_up_to_the_maximum():
    penalties, clock = book()
    for _ in range(4):
        penalties.penalise("s", AUTHFAIL)
    clock.advance(8)  # 20 - 8 = 12 remain
    penalties.penalise("s", AUTHFAIL)
    assert penalties.refused_until("s") == clock.seconds() + 17
    for _ in range(100):
        penalties.penalise("s", MALFORMED)
    assert penalties.refused_until("s") == clock.seconds() + 60


def test_a_penalty_ends_by_itself_and_leaves_nothing_behind():
    penalties, clock = book()
    for _ in range(4):
        penalties.penalise("s", AUTHFAIL)
    clock.advance(19.9)
    assert penalties.refused_until("s") is not None
    clock.advance(0.2)
    assert penalties.refused_until("s") is None
    assert len(penalties) == 0
    # Starting again needs a full run again.
    penalties.penalise("s", AUTHFAIL)
    assert penalties.refused_until("s") is None


def test_penalties_decay_between_spaced_out_failures():
    penalties, clock = book()
    for _ in range(50):  # one failed login every 6 s: never more than 5 s pending
        penalties.penalise("s", AUTHFAIL)
        assert penalties.refused_until("s") is None
        clock.advance(6)
    assert len(penalties) == 0


def test_a_single_penalty_longer_than_the_minimum_refuses_at_once():
    penalties, clock = book(PenaltyRules({MALFORMED: 30.0}, minimum=15.0, maximum=60.0))
    penalties.penalise("s", MALFORMED)
    assert penalties.refused_until("s") == clock.seconds() + 30


@pytest.mark.parametrize("kind", [NOAUTH, "grace-exceeded"])
def test_a_kind_without_a_duration_costs_nothing(kind):
    penalties, _ = book(PenaltyRules({AUTHFAIL: 5.0, NOAUTH: 0.0}))
    for _ in range(100):
        penalties.penalise("s", kind)
    assert penalties.refused_until("s") is None and len(penalties) == 0


def test_sources_that_never_return_are_forgotten_when_their_time_is_up():
    penalties, clock = book()
    for n in range(1000):
        penalties.penalise(f"198.51.100.{n % 250}/32#{n}", AUTHFAIL)
    assert len(penalties._penalties) == 1000
    clock.advance(61)
    penalties.penalise("other", AUTHFAIL)  # a later penalty sweeps the ended ones
    assert len(penalties._penalties) == 1


def test_the_table_is_bounded_by_dropping_the_penalties_ending_soonest():
    penalties, clock = book(
        PenaltyRules({AUTHFAIL: 5.0}, minimum=0.0, maximum=60.0, max_sources=100)
    )
    for _ in range(5):
        penalties.penalise("persistent", AUTHFAIL)  # 25 s
    for n in range(500):
        penalties.penalise(f"one-off-{n}", AUTHFAIL)  # 5 s each
    assert len(penalties._penalties) <= 100
    assert penalties.refused_until("persistent") == clock.seconds() + 25


def test_rules_are_checked():
    with pytest.raises(ValueError):
        PenaltyRules({"crash": 1.0})
    with pytest.raises(ValueError):
        PenaltyRules({AUTHFAIL: 1.0}, minimum=10.0, maximum=5.0)
