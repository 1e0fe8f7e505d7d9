"""The fair scheduler of password hashing (gateway.fair_slots), in memory: jobs are
Deferreds the test fires by hand."""

from __future__ import annotations

import pytest
from twisted.internet import defer

from gateway.fair_slots import UNKNOWN_SOURCE, FairSlots, SourceBusy, source_of


class Jobs:
    """Jobs that start when the scheduler calls them and end when the test says so."""

    def __init__(self, slots: FairSlots) -> None:
        self.slots = slots
        self.started: list[str] = []  # job names, in start order
        self.pending: dict[str, defer.Deferred] = {}
        self.results: dict[str, object] = {}

    def submit(self, source: str, name: str) -> defer.Deferred:
        def job() -> defer.Deferred:
            self.started.append(name)
            self.pending[name] = d = defer.Deferred()
            return d

        d = self.slots.run(source, job)
        d.addBoth(lambda result: self.results.__setitem__(name, result))
        return d

    def finish(self, name: str, value: object = True) -> None:
        self.pending.pop(name).callback(value)


def test_slots_are_bounded_and_one_source_holds_at_most_its_share():
    jobs = Jobs(FairSlots(slots=4, per_source=2, queue_limit=8))
    for i in range(5):
        jobs.submit("A", f"a{i}")
    assert jobs.started == ["a0", "a1"]  # A's share; its other three wait
    jobs.submit("B", "b0")
    jobs.submit("B", "b1")
    jobs.submit("B", "b2")
    assert jobs.started == ["a0", "a1", "b0", "b1"]  # started at once: slots were free
    jobs.submit("C", "c0")
    assert jobs.slots.free == 0 and "c0" not in jobs.started  # all four slots busy
    assert (jobs.slots.waiting("A"), jobs.slots.waiting("B"), jobs.slots.waiting("C")) == (3, 1, 1)


def test_a_freed_slot_goes_round_robin_across_waiting_sources():
    jobs = Jobs(FairSlots(slots=2, per_source=2, queue_limit=8))
    for i in range(4):
        jobs.submit("A", f"a{i}")  # a0, a1 run; a2, a3 wait
    for i in range(3):
        jobs.submit("B", f"b{i}")
    jobs.submit("C", "c0")
    while jobs.pending:
        jobs.finish(sorted(jobs.pending)[0])
    # A's waiting jobs do not all go first: each freed slot goes to the next source.
    assert jobs.started[2:] == ["a2", "b0", "c0", "a3", "b1", "b2"]
    assert all(result is True for result in jobs.results.values())


def test_waiting_sources_take_turns_even_when_one_queued_first_and_most():
    jobs = Jobs(FairSlots(slots=1, per_source=1, queue_limit=100))
    jobs.submit("A", "a0")
    for i in range(1, 50):
        jobs.submit("A", f"a{i}")
    jobs.submit("B", "b0")
    jobs.finish("a0")
    jobs.finish("a1")
    assert jobs.started == ["a0", "a1", "b0"]  # B waited for one of A's jobs, not 49


def test_beyond_the_queue_limit_a_source_is_refused_at_once():
    jobs = Jobs(FairSlots(slots=4, per_source=2, queue_limit=3))
    for i in range(5):
        jobs.submit("A", f"a{i}")  # 2 run, 3 wait
    refused = [jobs.slots.run("A", lambda: True) for _ in range(2)]
    errors = []
    for d in refused:
        d.addErrback(lambda f: errors.append(f.trap(SourceBusy) and f.value))
    assert [e.first for e in errors] == [True, False]  # one log line per burst
    assert errors[0].source == "A"
    # Another source is not affected by A's full queue.
    jobs.submit("B", "b0")
    assert "b0" in jobs.started
    # Once A's queue has drained, A is served again, and a later refusal is a new burst.
    for name in ["a0", "a1", "a2", "a3", "a4"]:
        jobs.finish(name)
    assert jobs.slots.waiting("A") == 0
    jobs.submit("A", "a5")
    assert "a5" in jobs.started


def test_a_failing_job_frees_its_slot_and_the_failure_reaches_the_caller():
    slots = FairSlots(slots=1, per_source=1, queue_limit=4)
    failed = slots.run("A", lambda: 1 / 0)
    errors = []
    failed.addErrback(lambda f: errors.append(f.check(ZeroDivisionError)))
    assert errors == [ZeroDivisionError]
    assert slots.free == 1
    ok = []
    slots.run("A", lambda: "fine").addCallback(ok.append)
    assert ok == ["fine"]


def test_nothing_is_kept_for_sources_once_they_are_done():
    jobs = Jobs(FairSlots(slots=2, per_source=1, queue_limit=2))
    for source in ["A", "B", "C", "D"]:
        jobs.submit(source, source + "0")
        jobs.submit(source, source + "1")
    while jobs.pending:
        jobs.finish(sorted(jobs.pending)[0])
    assert jobs.slots.sources == 0 and jobs.slots.free == 2
    assert not jobs.slots._refusing


def test_synchronous_jobs_run_straight_through():
    slots = FairSlots(slots=1, per_source=1, queue_limit=4)
    results = []
    for i in range(3):
        slots.run("A", lambda i=i: i).addCallback(results.append)
    assert results == [0, 1, 2]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        FairSlots(slots=0, per_source=1, queue_limit=1)


@pytest.mark.parametrize(
    "peer, source",
    [
        ("127.0.0.1:5555", "127.0.0.1"),
        ("127.0.0.2:1", "127.0.0.2"),
        ("10.1.2.3", "10.1.2.3"),
        ("::1:2222", "::/64"),
        ("2001:db8::1:22", "2001:db8::/64"),
        ("2001:db8::ffff:1:40000", "2001:db8::/64"),
        ("2001:db8:0:1::5:22", "2001:db8:0:1::/64"),
        ("::ffff:192.0.2.7:22", "192.0.2.7"),
        ("[2001:db8::1]:22", "2001:db8::/64"),
        ("peer", "peer"),
        ("", UNKNOWN_SOURCE),
    ],
)
def test_source_of(peer, source):
    assert source_of(peer) == source


def test_nothing_is_kept_for_refused_sources_without_a_queue():
    jobs = Jobs(FairSlots(slots=2, per_source=1, queue_limit=0))
    for source in ["A", "B"]:
        jobs.submit(source, source + "0")
        refused = jobs.slots.run(source, lambda: True)
        refused.addErrback(lambda f: f.trap(SourceBusy))
    jobs.finish("A0")
    jobs.finish("B0")
    assert jobs.slots.sources == 0 and not jobs.slots._refusing
