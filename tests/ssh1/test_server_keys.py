"""The SSH-1 server key in memory (issue 15): keys of every configurable size, 512-1023
bits included, which cryptography no longer makes (protocols.ssh1.keygen); ``check-config``
and a start agree on every size; and a new key is made off the reactor and switched in
atomically, without breaking a connection that was sent the old one."""

from __future__ import annotations

import itertools
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import padding
from twisted.cred.portal import Portal
from twisted.internet import threads
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from gateway.config import ConfigError, parse_config
from gateway.hostkeys import HostKeys
from gateway.service import build_handoffs
from protocols.auth import AuthLimits
from protocols.ssh1 import keygen, keys
from protocols.ssh1.server import SSH1ServerFactory, generate_server_key
from protocols.ssh1.settings import SSH1Settings
from tests.support.doubles import Realm
from tests.support.gateway_helpers import LOCAL_ACCESS, fast_hash
from tests.support.ssh1.minclient import host_key
from tests.support.ssh1.server_rig import SSH1ServerRig


@pytest.fixture
def logs():
    captured: list = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


def text(logs) -> str:
    return "\n".join(formatEvent(e) for e in logs)


# ---------------------------------------------------------------- the generator


@pytest.mark.parametrize("bits", [256, 384, 511, 512, 768, 1023])
def test_small_keys_have_exactly_their_size_and_work(bits):
    key = keygen.generate_private_key(bits)
    numbers = key.private_numbers()
    assert key.key_size == bits == numbers.public_numbers.n.bit_length()
    assert numbers.public_numbers.e == keygen.PUBLIC_EXPONENT
    assert numbers.p != numbers.q and numbers.p * numbers.q == numbers.public_numbers.n
    # The operations SSH-1 does with a key, through cryptography as the server does them.
    data = bytes(range(1, min(32, bits // 8 - 11) + 1))
    value = keys.public_encrypt(*keys.public_numbers(key), data)
    assert keys.private_decrypt(key, value) == data
    assert key.decrypt(key.public_key().encrypt(data, padding.PKCS1v15()), padding.PKCS1v15()) == data


def test_generated_primes_pass_openssls_own_check():
    # generate_private_key skips OpenSSL's check for speed: check the primes here instead.
    numbers = keygen.generate_private_key(768).private_numbers()
    keygen.private_key_from_primes(numbers.p, numbers.q, check=True)


def test_repeatable_with_a_seeded_source():
    first = keygen.generate_private_key(384, randbits=random.Random(7).getrandbits)
    second = keygen.generate_private_key(384, randbits=random.Random(7).getrandbits)
    assert keys.public_numbers(first) == keys.public_numbers(second)


def test_from_1024_bits_cryptography_makes_the_key():
    calls = []
    assert keygen.generate_private_key(1024, randbits=calls.append).key_size == 1024
    assert calls == []  # our prime search never ran


def test_primality_test_knows_primes_from_composites():
    assert [n for n in range(100) if keygen.is_probable_prime(n)] == [
        2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79,
        83, 89, 97,
    ]  # fmt: skip
    mersenne = (1 << 127) - 1
    assert keygen.is_probable_prime(mersenne)
    assert not keygen.is_probable_prime(mersenne * ((1 << 61) - 1))
    assert not keygen.is_probable_prime(561 * 1105)  # Carmichael numbers' product


def test_primality_tests_hand_over_between_exponentiations():
    handed = []
    keygen.generate_private_key(512, between_tests=lambda: handed.append(1))
    assert len(handed) >= 2 * keygen.MILLER_RABIN_ROUNDS  # two primes, each fully tested


@pytest.mark.parametrize("bits", [100, 127, 16385])
def test_absurd_sizes_refused(bits):
    with pytest.raises(ValueError, match="outside"):
        keygen.generate_private_key(bits)


# ---------------------------------------------------------------- check-config vs start


def check_config(server_key_bits: int) -> str:
    """What ``sshgateway check-config`` says of a config with this server key size."""
    text = (
        'protocols = ["1"]\n'
        f'[users.alice]\npassword = "{fast_hash("secret")}"\n{LOCAL_ACCESS}'
        f"[ssh1]\nserver_key_bits = {server_key_bits}\n"
    )
    try:
        parse_config(text, "gw.toml")
    except ConfigError as exc:
        return str(exc)
    return "ok"


def start(server_key_bits: int) -> str:
    """What the gateway's start makes of it: the SSH-1 server as build_handoffs builds it,
    with the real key generator, beside the 2048-bit host key."""
    try:
        settings = SSH1Settings(server_key_bits=server_key_bits)
        factory = SSH1ServerFactory(None, host_key(), settings, AuthLimits(), Clock())
    except ValueError as exc:
        return str(exc)
    factory.stop()
    assert factory.server_key().key_size == server_key_bits
    return "ok"


@pytest.mark.parametrize("bits", [511, 512, 640, 768, 1000, 1023, 1024, 1920, 2176, 4097])
def test_check_config_and_start_agree_on_server_key_bits(bits):
    checked, started = check_config(bits), start(bits)
    assert (checked == "ok") == (started == "ok"), (checked, started)


def test_service_builds_the_ssh1_server_with_a_768_bit_key():
    text = (
        'protocols = ["1"]\n'
        f'[users.alice]\npassword = "{fast_hash("secret")}"\n{LOCAL_ACCESS}'
        "[ssh1]\nserver_key_bits = 768\n"
    )
    handoffs = build_handoffs(parse_config(text, "gw.toml"), Clock(), None, HostKeys({}, host_key()))
    assert handoffs["ssh1"].server_key().key_size == 768
    handoffs["ssh1"].stop()


def test_generate_server_key_makes_the_configured_size():
    assert generate_server_key(768).key_size == 768


# ---------------------------------------------------------------- regeneration


def numbered_keys():
    """A key generator whose every key differs (512-bit: quick to make)."""
    seeds = itertools.count(1)
    return lambda bits: keygen.generate_private_key(512, randbits=random.Random(next(seeds)).getrandbits)


def rotating_rig() -> SSH1ServerRig:
    rig = SSH1ServerRig(
        Portal(Realm()), SSH1Settings(server_key_lifetime=100),
        AuthLimits(grace_time=1000),  # connections outlive several rotations here
        key_generator=numbered_keys(),
    )  # fmt: skip
    rig.threads.at_once = False  # the test decides when the thread is done
    return rig


def connection(rig: SSH1ServerRig) -> tuple:
    return rig.protocol, rig.transport, rig.client


def finish_key_exchange(rig: SSH1ServerRig, saved: tuple) -> None:
    rig.protocol, rig.transport, rig.client = saved
    rig.key_exchange()  # asserts the server's SMSG_SUCCESS: it decrypted our session key


def test_new_server_key_made_off_the_reactor_then_switched_in():
    rig = rotating_rig()
    old = rig.client.public_key["server"]
    before = connection(rig)  # was sent the old key, has not answered yet
    rig.clock.advance(100)  # the key was used: a new one is due
    assert len(rig.threads.pending) == 1 and rig.generated == 1  # only handed to a thread
    rig.connect()  # a login meanwhile is answered at once, with the old key
    assert rig.client.public_key["server"] == old
    during = connection(rig)
    rig.clock.advance(100)  # another rotation while the key is being made starts no other
    assert len(rig.threads.pending) == 1
    rig.threads.run()
    assert rig.generated == 2 and rig.factory.server_key_generations == 2
    rig.connect()
    assert rig.client.public_key["server"] != old
    finish_key_exchange(rig, connection(rig))
    # Connections that were sent the old key decrypt their session key with it.
    finish_key_exchange(rig, before)
    finish_key_exchange(rig, during)


def test_failed_regeneration_keeps_the_old_key_and_tries_again(logs):
    made = []

    def generate(bits):
        made.append(bits)
        if len(made) == 2:
            raise MemoryError("no memory for primes")
        return keygen.generate_private_key(512)

    rig = SSH1ServerRig(Portal(Realm()), SSH1Settings(server_key_lifetime=100), key_generator=generate)
    old = rig.client.public_key["server"]
    rig.clock.advance(100)
    assert "server key regeneration failed; keeping the old key" in text(logs)
    rig.connect()
    assert rig.client.public_key["server"] == old
    rig.clock.advance(100)
    assert len(made) == 3 and rig.factory.server_key_generations == 2
    rig.connect()
    assert rig.client.public_key["server"] != old


def test_key_made_after_stop_is_dropped():
    rig = rotating_rig()
    rig.clock.advance(100)
    rig.factory.stop()
    rig.threads.run()
    assert rig.factory.server_key_generations == 1
    assert rig.factory._rotation is None


def test_default_runner_is_twisteds_thread_pool():
    factory = SSH1ServerFactory(
        None, host_key(), SSH1Settings(), AuthLimits(), Clock(), key_generator=lambda bits: host_key()
    )
    factory.stop()
    assert factory._off_reactor is threads.deferToThread


def test_first_key_off_the_reactor_when_asked_then_ready():
    """What a reload that needs a new server key builds (gateway.service.build_handoffs):
    the key is only handed to a thread; ``ready`` fires once it is there."""
    from tests.support.doubles import RecordingKeyGenerator, ThreadCalls

    made, off = RecordingKeyGenerator(), ThreadCalls()
    factory = SSH1ServerFactory(
        None, host_key(), SSH1Settings(server_key_bits=768), AuthLimits(), Clock(),
        key_generator=made, off_reactor=off, first_key_off_reactor=True,
    )  # fmt: skip
    assert made.calls == [] and not factory.ready.called
    assert factory.current_server_key is None
    off.run()
    assert made.calls == [768] and factory.ready.called
    assert factory.server_key().key_size == 768
    factory.stop()


def test_a_given_first_key_is_used_and_renewed_at_the_next_rotation():
    from tests.support.doubles import RecordingKeyGenerator, ThreadCalls

    given, made, clock = keygen.generate_private_key(768), RecordingKeyGenerator(), Clock()
    factory = SSH1ServerFactory(
        None, host_key(), SSH1Settings(server_key_bits=768, server_key_lifetime=100),
        AuthLimits(), clock, key_generator=made, off_reactor=ThreadCalls(at_once=True),
        server_key=given,
    )  # fmt: skip
    assert made.calls == [] and factory.ready.called and factory.current_server_key is given
    clock.advance(100)  # it may have protected logins under the old factory: renewed
    assert made.calls == [768] and factory.current_server_key is not given
    factory.stop()
