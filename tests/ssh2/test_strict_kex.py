"""Strict key exchange (the Terrapin countermeasure): in memory against our server, with a
hand-fed hostile client, and end to end with OpenSSH's ssh (front) and sshd (upstream)."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest
from twisted.conch.ssh import common, transport

from protocols.ssh2.strict_kex import STRICT_KEX_CLIENT, peer_kex_names
from tests.support.clients import keyed_config, ssh_argv
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tests.support.ssh2.harness import fresh_transport, plain_packet, wire
from tests.support.sshd import OpenSSHServer, keygen


def kexinit(kex: list[bytes]) -> bytes:
    lists = [kex, [b"ssh-ed25519"], [b"aes256-ctr"], [b"aes256-ctr"], [b"hmac-sha2-256"],
             [b"hmac-sha2-256"], [b"none"], [b"none"], [], []]  # fmt: skip
    body = b"".join(common.NS(b",".join(names)) for names in lists)
    return bytes([transport.MSG_KEXINIT]) + os.urandom(16) + body + b"\0" + b"\0\0\0\0"


STRICT_KEXINIT = kexinit([b"curve25519-sha256", STRICT_KEX_CLIENT])
IGNORE = bytes([transport.MSG_IGNORE]) + common.NS(b"injected")


def test_server_announces_the_marker_in_its_first_kexinit_only():
    w = wire(login=False)
    first = peer_kex_names(w.transport.ourKexInitPayload[1:])
    assert b"kex-strict-s-v00@openssh.com" in first
    w.transport.sendKexInit()  # a re-key
    w.flush()
    assert b"kex-strict-s-v00@openssh.com" not in peer_kex_names(w.transport.ourKexInitPayload[1:])


def test_counters_restart_after_newkeys_with_a_strict_client():
    w = wire(login=False, strict=True)
    assert w.client.secure
    assert w.transport.strict_kex and w.client.strict_kex
    assert w.record.algorithms["strict_kex"] == "yes"
    # Nothing has come from the client since its NEWKEYS; one packet (EXT_INFO) has
    # gone out since ours. Without strict KEX these would be 3 and 4.
    assert w.transport.incomingPacketSequence == 0
    assert w.transport.outgoingPacketSequence == 1


def test_a_strict_session_survives_re_keys():
    w = wire(strict=True)
    for _ in range(3):
        w.client.sendKexInit()
        w.flush()
        assert w.transport.incomingPacketSequence == 0  # nothing since the client's NEWKEYS
    session = w.open_session()
    assert session.opened and w.client.disconnect is None
    assert w.transport.strict_kex


def test_a_client_without_the_marker_keeps_plain_counters():
    w = wire(login=False)
    assert w.client.secure and not w.transport.strict_kex
    assert w.record.algorithms["strict_kex"] == "no"
    assert (w.transport.incomingPacketSequence, w.transport.outgoingPacketSequence) == (3, 4)


def test_a_packet_before_a_strict_kexinit_is_refused():
    w, proto, sent = fresh_transport()
    proto.dataReceived(plain_packet(IGNORE) + plain_packet(STRICT_KEXINIT))
    assert sent.disconnecting
    assert w.record.close_reason == "strict KEX violation: KEXINIT was not the first packet"


@pytest.mark.parametrize(
    "payload, number",
    [(IGNORE, 2), (bytes([transport.MSG_DEBUG]) + b"\0" + common.NS(b"x") + common.NS(b""), 4),
     (bytes([transport.MSG_SERVICE_REQUEST]) + common.NS(b"ssh-userauth"), 5),
     (STRICT_KEXINIT, 20)],
)  # fmt: skip
def test_anything_but_key_exchange_during_a_strict_initial_kex_is_refused(payload, number):
    w, proto, sent = fresh_transport()
    proto.dataReceived(plain_packet(STRICT_KEXINIT) + plain_packet(payload))
    assert sent.disconnecting
    assert w.record.close_reason == (
        f"strict KEX violation: unexpected message {number} during the initial key exchange"
    )


def test_without_the_marker_an_early_ignore_is_still_ignored():
    w, proto, sent = fresh_transport()
    plain = kexinit([b"curve25519-sha256"])
    proto.dataReceived(plain_packet(IGNORE) + plain_packet(plain) + plain_packet(IGNORE))
    assert not sent.disconnecting


def test_a_disconnect_during_a_strict_initial_kex_is_taken():
    w, proto, sent = fresh_transport()
    bye = bytes([transport.MSG_DISCONNECT]) + struct.pack(">L", 11) + common.NS(b"bye")
    proto.dataReceived(plain_packet(STRICT_KEXINIT) + plain_packet(bye))
    assert w.record.close_reason == "client disconnected: bye"


# -- real peers ----------------------------------------------------------------------------


@pytest.mark.peer
def test_openssh_client_uses_strict_kex_through_many_re_keys(tmp_path):
    config, key = keyed_config(tmp_path)
    (tmp_path / "gw").mkdir()
    data = os.urandom(4 << 20)
    with GatewayProcess(tmp_path / "gw", config) as gw:
        argv = ssh_argv(gw, key, "-vvv", "-o", "RekeyLimit=256K", "cat")
        result = subprocess.run(argv, input=data, capture_output=True, timeout=120)
    log = result.stderr.decode(errors="replace")
    assert result.returncode == 0, log[-3000:]
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
    assert "will use strict KEX ordering" in log
    assert log.count("SSH2_MSG_NEWKEYS received") > 10  # the counters restarted each time


@pytest.mark.peer
def test_upstream_sshd_session_uses_strict_kex_through_re_keys(tmp_path):
    require_peer("sshd", "ssh")
    device_key = keygen(tmp_path / "gateway_to_device")
    pub = [Path(str(device_key) + ".pub")]
    # sshd re-keys every 256 KiB: the gateway's client must restart its counters too.
    with OpenSSHServer(tmp_path / "sshd", pub, extra_config="RekeyLimit 256K\n") as device:
        config, client_key = keyed_config(tmp_path, targets={
            "host2": {"protocol": "ssh2", "host": "127.0.0.1", "port": device.port,
                      "username": "root", "key": str(device_key), "connect_timeout": 20},
        })  # fmt: skip
        config["users"]["alice"]["targets"] = ["host2"]
        (tmp_path / "gw").mkdir()
        data = os.urandom(4 << 20)
        with GatewayProcess(tmp_path / "gw", config) as gw:
            argv = ssh_argv(gw, client_key, "cat", user="alice+host2")
            result = subprocess.run(argv, input=data, capture_output=True, timeout=120)
            assert result.returncode == 0, result.stderr[-2000:]
            assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
            gw.wait_for_log(r"bridged session: .*upstream=\[ssh2 [^\]]*strict_kex=yes")
