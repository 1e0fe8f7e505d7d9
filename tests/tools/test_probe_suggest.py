"""tools.probe.suggest in memory: what goes into a suggested ``[targets.NAME]`` block from
a probe report (the real devices are in test_probe_suggest_peers.py)."""

from __future__ import annotations

import tomllib

import pytest

from gateway.config import parse_config
from protocols.ssh2.kexinit import KexInit
from tools.probe.report import HostKey, HostReport, SSH1Offer, SSH1Result, SSH2Result
from tools.probe.suggest import SuggestError, suggest_target


def kexinit(kex, host_keys, ciphers, macs) -> KexInit:
    return KexInit(kex, host_keys, ciphers, ciphers, macs, macs, ["none"], ["none"], [], [], False)


def ssh2_report(line: str, offer: KexInit, keys: list[HostKey]) -> HostReport:
    return HostReport(
        "192.0.2.7:2200", "192.0.2.7", 2200, status="ok", identification=line,
        protocols=["ssh2"], ssh2=SSH2Result(True, None, offer, keys),
    )  # fmt: skip


DSS = HostKey("ssh-dss", "ssh-dss", 1024, "SHA256:" + "d" * 43, True)
RSA = HostKey("rsa-sha2-512", "ssh-rsa", 2048, "SHA256:" + "r" * 43, True)


def test_an_old_sun_device_gets_its_legacy_lists_the_quirk_and_the_dss_pin():
    offer = kexinit(
        ["diffie-hellman-group1-sha1", "diffie-hellman-group-exchange-sha1"], ["ssh-dss"],
        ["aes128-cbc", "3des-cbc", "blowfish-cbc"], ["hmac-md5", "hmac-sha1"],
    )  # fmt: skip
    block = suggest_target("sun", ssh2_report("SSH-2.0-Sun_SSH_1.0", offer, [DSS]), user="ops")
    target = tomllib.loads(block)["targets"]["sun"]
    assert target == {
        "protocol": "ssh2", "host": "192.0.2.7", "port": 2200,
        "kex": ["diffie-hellman-group1-sha1", "diffie-hellman-group-exchange-sha1"],
        "host_key_algorithms": ["ssh-dss"], "ciphers": ["aes128-cbc", "3des-cbc"],
        "macs": ["hmac-md5", "hmac-sha1"], "quirks": ["sun-ssh-1.0"],
        "host_key": DSS.fingerprint, "username": "ops",
    }  # fmt: skip
    # blowfish-cbc, which the gateway does not have, is left out; the block is valid config.
    text = '[users.a]\nauthorized_keys = "/dev/null"\ntargets = ["sun"]\n' + block
    assert parse_config(text, "t.toml").targets["sun"].quirks == ("sun-ssh-1.0",)


def test_a_modern_device_needs_no_lists_and_pins_the_key_the_defaults_pick():
    offer = kexinit(
        ["curve25519-sha256"], ["ssh-dss", "rsa-sha2-512"], ["aes128-ctr"], ["hmac-sha2-256"]
    )
    block = suggest_target("m", ssh2_report("SSH-2.0-OpenSSH_9.2", offer, [DSS, RSA]))
    target = tomllib.loads(block)["targets"]["m"]
    assert set(target) == {"protocol", "host", "port", "host_key"}
    assert target["host_key"] == RSA.fingerprint
    assert '# password = "..."' in block


def test_ssh1_device_with_des_only():
    offer = SSH1Offer(
        1024, 1024, "09:86:" + ":".join(["ab"] * 14), "SHA256:x", 768, 768, ["des"], 4,
        ["password"], 4, [], 0,
    )  # fmt: skip
    report = HostReport(
        "192.0.2.8", "192.0.2.8", 22, status="ok", identification="SSH-1.5-Cisco-1.25",
        ssh1=SSH1Result(True, None, offer),
    )  # fmt: skip
    target = tomllib.loads(suggest_target("sw", report))["targets"]["sw"]
    assert target["protocol"] == "ssh1" and "port" not in target
    assert target["ciphers"] == ["des"]
    assert target["quirks"] == ["cisco-1.25"]
    assert target["host_key"] == offer.host_key_md5


def test_nothing_in_common_is_an_error_not_a_block():
    offer = kexinit(
        ["diffie-hellman-group1-sha1"], ["x509v3-sign-rsa"], ["aes128-cbc"], ["hmac-sha1"]
    )
    with pytest.raises(SuggestError, match="no host_key_algorithms the gateway knows"):
        suggest_target("x", ssh2_report("SSH-2.0-X", offer, []))
    with pytest.raises(SuggestError):
        suggest_target("x", HostReport("h", "h", 22, error="connection refused"))


def ssh1_report(host_key_bits: int, server_key_bits: int) -> HostReport:
    offer = SSH1Offer(
        host_key_bits, host_key_bits, "09:86:" + ":".join(["cd"] * 14), "SHA256:y",
        server_key_bits, server_key_bits, ["3des", "blowfish"], 72, ["password"], 4, [], 0,
    )  # fmt: skip
    return HostReport(
        "192.0.2.9", "192.0.2.9", 22, status="ok", identification="SSH-1.5-1.2.27",
        ssh1=SSH1Result(True, None, offer),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("host_bits", "server_bits", "floor", "what"),
    [
        (1024, 384, 384, "server key"),  # server key from the host key's size in bytes
        (512, 384, 384, "server key"),
        (384, 768, 384, "host key"),
        (768, 512, None, None),  # old Cisco IOS: small, but no key under 512 bits
        (2048, 1024, None, None),
    ],
)
def test_ssh1_device_with_a_key_under_512_bits_gets_min_key_bits(host_bits, server_bits, floor, what):
    block = suggest_target("old", ssh1_report(host_bits, server_bits))
    target = tomllib.loads(block)["targets"]["old"]
    assert target.get("min_key_bits") == floor
    if floor is not None:
        assert f"# its {what} has {floor} bits" in block
    # The block is valid config, with the floor it says.
    text = '[users.a]\nauthorized_keys = "/dev/null"\ntargets = ["old"]\n' + block
    assert parse_config(text, "t.toml").targets["old"].min_key_bits == (floor or 256)


def test_ssh1_device_with_a_key_no_target_may_accept_is_an_error():
    with pytest.raises(SuggestError, match="server key has 200 bits"):
        suggest_target("old", ssh1_report(1024, 200))
