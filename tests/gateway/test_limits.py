"""Limits on unauthenticated connections (gateway.limits), in memory: the max_startups drop
curve (seeded random), per-source counting and netblock grouping, penalties by outcome,
the allow-list, the descriptor cap, and the config keys that set them."""

from __future__ import annotations

import ipaddress
import random

import pytest
from twisted.internet.task import Clock

from gateway.config import ConfigError, parse_config
from gateway.limits import (
    BUSY_LINE,
    PENALTY_LINE,
    ConnectionLimits,
    LimitsConfig,
    MaxStartups,
    Netblock,
    Refused,
    descriptor_cap,
    source_of,
)
from gateway.penalties import (
    AUTHFAIL,
    GRACE_EXCEEDED,
    MALFORMED,
    NOAUTH,
    MemoryPenaltyBook,
    PenaltyRules,
)
from protocols.record import ConnectionRecord
from tests.support.gateway_helpers import LOCAL_ACCESS

# --- max_startups --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [("10:30:100", (10, 30, 100)), ("5", (5, 100, 5)), ("1:0:1", (1, 0, 1))],
)
def test_max_startups_parses_like_openssh(text, expected):
    parsed = MaxStartups.parse(text)
    assert (parsed.start, parsed.rate, parsed.full) == expected


@pytest.mark.parametrize("text", ["", "10:30", "0:30:100", "20:30:10", "10:101:100", "a:b:c", "-1"])
def test_max_startups_refuses_nonsense(text):
    with pytest.raises(ValueError):
        MaxStartups.parse(text)


def test_the_drop_probability_rises_linearly_from_rate_at_start_to_all_at_full():
    curve = MaxStartups(10, 30, 100)
    assert curve.drop_percent(0) == curve.drop_percent(9) == 0
    assert curve.drop_percent(10) == 30
    assert curve.drop_percent(55) == pytest.approx(65)
    assert curve.drop_percent(99) == pytest.approx(99.22, abs=0.01)
    assert curve.drop_percent(100) == curve.drop_percent(5000) == 100
    assert MaxStartups.parse("5").drop_percent(4) == 0
    assert MaxStartups.parse("5").drop_percent(5) == 100


@pytest.mark.parametrize("pending, percent", [(9, 0), (10, 30), (55, 65), (90, 100 - 70 * 10 / 90)])
def test_the_drop_rate_measured_with_a_seeded_random_follows_the_curve(pending, percent):
    curve, rng, tries = MaxStartups(10, 30, 100), random.Random(11), 20000
    dropped = sum(curve.drops(pending, rng) for _ in range(tries))
    assert dropped / tries * 100 == pytest.approx(percent, abs=1.5)


def test_full_is_capped_to_what_the_descriptor_limit_leaves():
    assert descriptor_cap(1024) == 480
    assert descriptor_cap(10) == 1
    assert MaxStartups(10, 30, 100).capped(480) == MaxStartups(10, 30, 100)
    assert MaxStartups(10, 30, 1000).capped(480) == MaxStartups(10, 30, 480)
    assert MaxStartups(600, 30, 1000).capped(480) == MaxStartups(480, 30, 480)


# --- sources -------------------------------------------------------------------------------


def test_sources_are_addresses_grouped_by_the_netblock():
    assert source_of("192.0.2.7:5555", Netblock())[0] == "192.0.2.7/32"
    assert source_of("192.0.2.7:5555", Netblock(24, 64))[0] == "192.0.2.0/24"
    assert source_of("2001:db8::1:2:3:4:22", Netblock())[0] == "2001:db8::1:2:3:4/128"
    assert source_of("2001:db8::1:2:3:4:22", Netblock(24, 48))[0] == "2001:db8::/48"
    assert source_of("::ffff:192.0.2.7:22", Netblock())[0] == "192.0.2.7/32"
    assert source_of("/run/gw.sock", Netblock()) == ("/run/gw.sock", None)


@pytest.mark.parametrize(
    "text, expected", [("32:128", (32, 128)), ("24", (24, 128)), ("0:0", (0, 0))]
)
def test_netblock_parses(text, expected):
    parsed = Netblock.parse(text)
    assert (parsed.v4, parsed.v6) == expected


@pytest.mark.parametrize("text", ["33", "24:129", "24:48:1", "/24", ""])
def test_netblock_refuses_nonsense(text):
    with pytest.raises(ValueError):
        Netblock.parse(text)


# --- admitting and counting ----------------------------------------------------------------

RULES = PenaltyRules(
    {AUTHFAIL: 5.0, NOAUTH: 1.0, MALFORMED: 10.0, GRACE_EXCEEDED: 10.0}, minimum=15.0, maximum=600.0
)


def limits(
    grace_time: float = 120.0, **settings
) -> tuple[ConnectionLimits, MemoryPenaltyBook, Clock]:
    clock = Clock()
    config = LimitsConfig(**{"penalties": RULES, **settings})
    book = MemoryPenaltyBook(config.penalties, clock) if config.penalties else None
    return ConnectionLimits(config, clock, book, grace_time, rng=random.Random(7)), book, clock


def record(peer: str = "192.0.2.7:40000") -> ConnectionRecord:
    return ConnectionRecord(peer=peer)


def test_below_start_everyone_is_admitted_and_counted_until_login_or_close():
    gate, _, _ = limits(max_startups=MaxStartups(10, 30, 100))
    startups = [gate.admit(record(f"192.0.2.{n}:1")) for n in range(9)]
    assert gate.pending == 9
    startups[0].record.auth_result = "success"
    gate.authenticated(startups[0])
    gate.closed(startups[1])
    assert gate.pending == 7
    gate.closed(startups[0])  # closing after login changes nothing
    assert gate.pending == 7


def test_at_full_every_new_connection_is_refused_and_admitted_again_once_some_leave():
    gate, _, _ = limits(max_startups=MaxStartups.parse("3"), penalties=None)
    startups = [gate.admit(record(f"192.0.2.{n}:1")) for n in range(3)]
    for n in range(50):
        with pytest.raises(Refused) as refused:
            gate.admit(record(f"198.51.100.{n}:1"))
        assert refused.value.line == BUSY_LINE
        assert "max_startups 3:100:3" in refused.value.reason
    gate.closed(startups[0])
    gate.admit(record("198.51.100.1:1"))


def test_a_login_noticed_only_in_the_record_frees_its_place_at_the_limit():
    gate, _, _ = limits(max_startups=MaxStartups.parse("2"), penalties=None)
    first, _ = gate.admit(record()), gate.admit(record())
    first.record.auth_result = "success"  # nobody told the limits
    gate.admit(record())
    assert gate.pending == 2


def test_per_source_max_startups_counts_each_netblock_apart():
    gate, _, _ = limits(per_source_max_startups=2, per_source_netblock=Netblock(24, 64))
    gate.admit(record("192.0.2.1:1"))
    held = gate.admit(record("192.0.2.2:1"))
    with pytest.raises(Refused, match="per_source_max_startups: 192.0.2.0/24 has 2"):
        gate.admit(record("192.0.2.3:1"))  # same /24
    gate.admit(record("192.0.3.1:1"))  # another /24
    gate.closed(held)
    gate.admit(record("192.0.2.3:1"))


# --- penalties by outcome ------------------------------------------------------------------


def close_unauthenticated(gate, peer, auth_result="", kind=None, clock=None, after=0.0):
    startup = gate.admit(record(peer))
    startup.record.auth_result = auth_result
    if clock is not None:
        clock.advance(after)
    gate.closed(startup, kind)


def test_failed_logins_earn_a_growing_refusal_and_it_ends():
    gate, _, clock = limits()
    for _ in range(4):  # 4 x 5 s > 15 s
        close_unauthenticated(gate, "192.0.2.7:1", "failure")
    with pytest.raises(Refused) as refused:
        gate.admit(record("192.0.2.7:2"))
    assert refused.value.line == PENALTY_LINE
    assert "penalty: 192.0.2.7/32 refused for 20s more" == refused.value.reason
    gate.admit(record("192.0.2.8:1"))  # its neighbour is not
    clock.advance(20.5)
    gate.admit(record("192.0.2.7:3"))


def test_each_outcome_earns_its_own_penalty():
    gate, book, clock = limits()
    close_unauthenticated(gate, "192.0.2.1:1", "failure")
    close_unauthenticated(gate, "192.0.2.2:1", "")
    close_unauthenticated(gate, "192.0.2.3:1", "", kind=MALFORMED)
    close_unauthenticated(gate, "192.0.2.5:1", "success")
    close_unauthenticated(gate, "192.0.2.6:1", "failure")
    gate.admit(record("192.0.2.6:2")).record.auth_result = "success"  # logged in later
    now = clock.seconds()
    assert {s: p.expiry - now for s, p in book._penalties.items()} == {
        "192.0.2.1/32": 5,
        "192.0.2.2/32": 1,
        "192.0.2.3/32": 10,
        "192.0.2.6/32": 5,
    }
    close_unauthenticated(gate, "192.0.2.4:1", "", clock=clock, after=120)
    assert book._penalties["192.0.2.4/32"].expiry - clock.seconds() == 10


def test_an_exempt_network_is_never_penalised_or_refused_for_it():
    exempt = (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("2001:db8::/32"))
    gate, book, _ = limits(penalty_exempt=exempt)
    for n in range(20):
        close_unauthenticated(gate, "127.0.0.2:1", "failure")
        close_unauthenticated(gate, "2001:db8::5:1", "failure")
        if n < 4:
            close_unauthenticated(gate, "127.0.0.1:1", "failure")
    assert set(book._penalties) == {"127.0.0.1/32"}
    gate.admit(record("127.0.0.2:2"))
    with pytest.raises(Refused):
        gate.admit(record("127.0.0.1:2"))


def test_without_penalties_nothing_is_recorded():
    gate, book, _ = limits(penalties=None)
    assert book is None and gate.penalties is None
    for _ in range(50):
        close_unauthenticated(gate, "192.0.2.7:1", "failure")
    gate.admit(record("192.0.2.7:1"))


def test_a_flood_that_stops_leaves_no_state_behind():
    gate, book, clock = limits(max_startups=MaxStartups(10, 30, 100), per_source_max_startups=50)
    admitted, refused = [], 0
    for n in range(1500):
        try:
            admitted.append(gate.admit(record(f"203.0.113.{n % 200}:{n}")))
        except Refused:
            refused += 1
    assert len(admitted) <= 100 and refused >= 1400
    for startup in admitted:
        gate.closed(startup)
    assert gate.pending == 0 and not gate._per_source
    clock.advance(601)
    assert len(book) == 0
    gate.admit(record("203.0.113.1:1"))


# --- configuration -------------------------------------------------------------------------

USER = '[users.alice]\nauthorized_keys = "keys"\n' + LOCAL_ACCESS


def test_the_defaults_are_openssh_s(tmp_path):
    config = parse_config(USER, base=tmp_path).limits
    assert config.max_startups == MaxStartups(10, 30, 100)
    assert config.per_source_max_startups is None
    assert config.per_source_netblock == Netblock(32, 128)
    assert config.penalties == PenaltyRules(
        {AUTHFAIL: 5.0, NOAUTH: 1.0, MALFORMED: 10.0, GRACE_EXCEEDED: 10.0}, 15.0, 600.0, 65536
    )
    assert config.penalty_exempt == ()


def test_the_limits_table_is_read(tmp_path):
    text = USER + (
        '[limits]\nmax_startups = "5:50:20"\nper_source_max_startups = 3\n'
        'per_source_netblock = "24:48"\npenalty_authfail = 30\npenalty_min = 0\n'
        'penalty_max = 90\npenalty_exempt = ["10.0.0.0/8", "::1"]\n'
    )
    config = parse_config(text, base=tmp_path).limits
    assert config.max_startups == MaxStartups(5, 50, 20)
    assert config.per_source_max_startups == 3
    assert config.per_source_netblock == Netblock(24, 48)
    assert config.penalties.durations[AUTHFAIL] == 30 and config.penalties.maximum == 90
    assert [str(n) for n in config.penalty_exempt] == ["10.0.0.0/8", "::1/128"]
    off = parse_config(USER + "[limits]\npenalties = false\n", base=tmp_path).limits
    assert off.penalties is None


@pytest.mark.parametrize(
    "line, message",
    [
        ('max_startups = "100:30:10"', "limits.max_startups: '100:30:10': need 1 <= start <= full"),
        ("per_source_max_startups = 0", "limits.per_source_max_startups: must be at least 1"),
        ('per_source_netblock = "40"', "limits.per_source_netblock: '40': IPv4 bits"),
        ('penalty_exempt = ["10.0.0.1/8"]', "limits.penalty_exempt: not an address or network"),
        ("penalty_max = 10", "limits.penalty_max: must be at least penalty_min"),
        ("max_startup = 3", "limits.max_startup: unknown key"),
    ],
)
def test_bad_limits_are_config_errors_naming_the_key(tmp_path, line, message):
    with pytest.raises(ConfigError) as error:
        parse_config(USER + f"[limits]\n{line}\n", base=tmp_path)
    assert message in str(error.value)


def test_peers_without_an_address_are_counted_but_never_penalised():
    gate, book, _ = limits(max_startups=MaxStartups.parse("2"))
    for _ in range(10):
        close_unauthenticated(gate, "UNIXAddress('/run/gw.sock')", "failure")
    assert len(book) == 0
    gate.admit(record("UNIXAddress('/run/gw.sock')"))
    gate.admit(record("UNIXAddress('/run/gw.sock')"))
    with pytest.raises(Refused, match="max_startups"):
        gate.admit(record("UNIXAddress('/run/gw.sock')"))


def test_a_reloaded_config_applies_to_new_connections_and_keeps_what_is_running():
    gate, book, _ = limits(max_startups=MaxStartups.parse("5"))
    held = [gate.admit(record(f"192.0.2.{n}:1")) for n in range(3)]
    for _ in range(4):
        close_unauthenticated(gate, "198.51.100.1:1", "failure")
    gate.fit_descriptors(64 + 2 * 50)
    gate.reconfigure(LimitsConfig(max_startups=MaxStartups.parse("100"), penalties=RULES), book)
    assert gate.max_startups == MaxStartups.parse("100").capped(50)  # still fits the limit
    assert gate.pending == 3
    with pytest.raises(Refused, match="penalty"):
        gate.admit(record("198.51.100.1:2"))
    gate.closed(held[0])
    assert gate.pending == 2
    gate.reconfigure(LimitsConfig(penalties=None), book)
    gate.admit(record("198.51.100.1:3"))
