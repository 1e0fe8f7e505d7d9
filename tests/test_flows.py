"""Flow records in memory: the recorder's stage rules, merging and caps (protocols.flow),
the JSON-lines writer's rotation (gateway.flows), the [flows] config keys, and an SSH-1
upstream leg recorded and linked to the client leg it serves (acceptance 2)."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from gateway.config import ConfigError, parse_config
from gateway.flows import FlowWriter
from protocols.flow import C2S, MAX_MESSAGES, S2C, STAGES, FlowRecorder, open_flow, ssh2_name
from protocols.session import ExitInfo, SessionRequest
from tests.support.gateway_helpers import LOCAL_ACCESS
from tools.flows.store import FlowStore


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def test_ssh1_stages_merging_round_trips():
    flow = FlowRecorder("server", "127.0.0.1:1", "ssh1", clock=Ticks())
    flow.version(S2C, "SSH-1.99-sshgateway_0.1.0")
    flow.version(C2S, "SSH-1.5-PuTTY_Release_0.78")
    for direction, name in [
        (S2C, "SSH_SMSG_PUBLIC_KEY"), (C2S, "SSH_CMSG_SESSION_KEY"), (S2C, "SSH_SMSG_SUCCESS"),
        (C2S, "SSH_CMSG_USER"), (S2C, "SSH_SMSG_FAILURE"), (C2S, "SSH_CMSG_AUTH_PASSWORD"),
        (S2C, "SSH_SMSG_SUCCESS"), (C2S, "SSH_CMSG_REQUEST_PTY"), (S2C, "SSH_SMSG_SUCCESS"),
        (C2S, "SSH_CMSG_EXEC_SHELL"), (C2S, "SSH_CMSG_STDIN_DATA"), (C2S, "SSH_CMSG_STDIN_DATA"),
        (S2C, "SSH_SMSG_STDOUT_DATA"), (S2C, "SSH_SMSG_EXITSTATUS"),
        (C2S, "SSH_CMSG_EXIT_CONFIRMATION"),
    ]:  # fmt: skip
        flow.packet(direction, name, 20)
    flow.auth("password", "success")
    flow.exit(0)
    flow.close("session finished")
    record = json.loads(json.dumps(flow.to_dict()))
    assert record["v"] == 1 and record["protocol"] == "ssh1" and record["role"] == "server"
    assert record["versions"] == {
        "server": "SSH-1.99-sshgateway_0.1.0", "client": "SSH-1.5-PuTTY_Release_0.78"
    }  # fmt: skip
    stages = {s["name"]: s for s in record["stages"]}
    assert list(stages) == list(STAGES)
    assert stages["kex"]["messages"] == 3 and stages["kex"]["round_trips"] == 1
    assert stages["auth"]["messages"] == 4 and stages["auth"]["round_trips"] == 2
    assert stages["session"]["messages"] == 3
    assert stages["interaction"]["messages"] == 3
    assert stages["close"]["messages"] == 2
    stdin = [m for m in record["messages"] if m["name"] == "SSH_CMSG_STDIN_DATA"]
    assert stdin == [{"t": stdin[0]["t"], "dir": "c2s", "name": "SSH_CMSG_STDIN_DATA",
                      "size": 40, "stage": "interaction", "count": 2}]  # fmt: skip
    assert record["exit_status"] == 0 and record["close_reason"] == "session finished"
    assert record["id"].startswith("f-") and record["link"] is None


def test_message_cap_and_stage_never_goes_back():
    flow = FlowRecorder("server", "p", "ssh2", clock=Ticks())
    flow.packet(S2C, "SSH2_MSG_CHANNEL_DATA", 10)
    flow.packet(C2S, "SSH2_MSG_KEXINIT", 10)  # a re-key during the interaction
    assert flow.to_dict()["messages"][-1]["stage"] == "interaction"
    for i in range(MAX_MESSAGES * 2):
        flow.packet(C2S if i % 2 else S2C, "SSH2_MSG_CHANNEL_DATA", 1)
    record = flow.to_dict()
    assert len(record["messages"]) == MAX_MESSAGES and record["messages_truncated"]
    assert record["stages"][0]["start"] is None  # no version stage seen
    flow.close()
    assert flow.to_dict()["stages"][-1]["start"] is not None  # closed without a message


def test_ssh2_names_depend_on_kex_and_auth_method():
    assert ssh2_name(30, "curve25519-sha256") == "SSH2_MSG_KEX_ECDH_INIT"
    assert ssh2_name(31, "diffie-hellman-group14-sha256") == "SSH2_MSG_KEXDH_REPLY"
    assert ssh2_name(34, "diffie-hellman-group-exchange-sha256") == "SSH2_MSG_KEX_DH_GEX_REQUEST"
    assert ssh2_name(60, auth_method="publickey") == "SSH2_MSG_USERAUTH_PK_OK"
    assert ssh2_name(60, auth_method="keyboard-interactive") == "SSH2_MSG_USERAUTH_INFO_REQUEST"
    assert ssh2_name(20) == "SSH2_MSG_KEXINIT" and ssh2_name(199) == "SSH2_MSG_199"


def test_writer_rotates_by_size_and_keeps_n(tmp_path):
    writer = FlowWriter(tmp_path / "flows", max_bytes=300, keep=2)
    for i in range(12):
        writer.write({"id": f"f-{i:02d}", "pad": "x" * 100})
    store = FlowStore(tmp_path / "flows")
    files = store.files()
    assert [p.name for p in files] == ["flows.jsonl.2", "flows.jsonl.1", "flows.jsonl"]
    ids = [r["id"] for r in store.raw_records()]
    assert ids == sorted(ids) and ids[-1] == "f-11" and len(ids) < 12
    assert all(p.stat().st_size <= 300 for p in files)
    assert (tmp_path / "flows").stat().st_mode & 0o777 == 0o700


def test_flows_config_keys():
    base = '[users.a]\npassword = "$2b$12$' + "x" * 53 + '"\n' + LOCAL_ACCESS
    config = parse_config(base + "[flows]\nenabled = false\nmax_bytes = 8192\nkeep = 0\n")
    assert (config.flows.enabled, config.flows.max_bytes, config.flows.keep) == (False, 8192, 0)
    assert parse_config(base).flows.enabled is True
    with pytest.raises(ConfigError, match="max_bytes"):
        parse_config(base + "[flows]\nmax_bytes = 10\n")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(base + "[flows]\nenable = true\n")


class ListSink:
    def __init__(self) -> None:
        self.flows: list[FlowRecorder] = []

    def write_flow(self, flow: FlowRecorder) -> None:
        flow.close()
        self.flows.append(flow)


def test_bridged_ssh1_session_gives_a_linked_upstream_flow(tmp_path):
    from gateway.known_hosts import KnownHosts
    from tests.support.ssh1.target_rig import Rig

    rig = Rig(tmp_path, KnownHosts(tmp_path / "known_hosts"))
    device_sink, upstream_sink = ListSink(), ListSink()
    rig.device.dispatcher.flows = device_sink
    rig.target.flows = upstream_sink
    rig.client.flow_id = "f-20261121T140501Z-0123abcd"
    bridge = rig.open(SessionRequest(command=b"echo hi"))
    bridge.close_stdin()
    rig.flush()
    rig.device.target.client.write_stdout(b"secret-output\n")
    rig.device.target.client.exited(ExitInfo(status=3))
    rig.flush()
    rig.pump.flush()
    rig.client_transport.loseConnection()
    rig.server_transport.loseConnection()
    rig.flush()
    [upstream] = [f.to_dict() for f in upstream_sink.flows]
    [device] = [f.to_dict() for f in device_sink.flows]
    assert upstream["role"] == "client" and upstream["protocol"] == "ssh1"
    assert upstream["link"] == "f-20261121T140501Z-0123abcd"
    assert upstream["target"] == "dev" and upstream["user"] == "admin"
    assert upstream["versions"]["server"] == device["versions"]["server"]
    names = [m["name"] for m in upstream["messages"]]
    assert names[:5] == ["version", "version", "SSH_SMSG_PUBLIC_KEY", "SSH_CMSG_SESSION_KEY",
                         "SSH_SMSG_SUCCESS"]  # fmt: skip
    assert [m["dir"] for m in upstream["messages"][2:4]] == ["s2c", "c2s"]
    assert upstream["exit_status"] == 3
    assert {"method": "password", "result": "success"} in [
        {k: a[k] for k in ("method", "result")} for a in upstream["auth"]
    ]
    assert upstream["negotiated"]["host_key_fingerprint"].startswith("MD5:")
    assert (
        upstream["negotiated"]["host_key_fingerprint"]
        == device["negotiated"]["host_key_fingerprint"]
    )
    # The two sides of the one connection agree on what crossed it.
    assert [(m["name"], m["size"]) for m in upstream["messages"]] == [
        (m["name"], m["size"]) for m in device["messages"]
    ]
    text = json.dumps([upstream, device])
    assert "devpass" not in text and "secret-output" not in text


def test_telnet_leg_records_commands_and_data_sizes_only():
    from twisted.internet import error
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from twisted.python.failure import Failure

    from gateway.targets import TargetConfig
    from gateway.targets.telnet import TelnetTarget
    from tests.support.doubles import FakeSessionClient

    cfg = TargetConfig(
        name="dev", protocol="telnet", host="192.0.2.5", port=23, username="admin",
        password="s3cret-pw", connect_timeout=10.0, password_prompt="Password:",
    )  # fmt: skip
    target = TelnetTarget(MemoryReactorClock(), cfg, None)
    sink = ListSink()
    target.flows = sink
    client = FakeSessionClient()
    client.flow_id = "f-20261121T140501Z-00000001"
    target.open_session("alice", SessionRequest(command=None), client)
    factory = target.reactor.tcpClients[0][2]
    telnet = factory.buildProtocol(None)
    telnet.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.5", 23)))
    telnet.dataReceived(b"\xff\xfd\x18\xff\xfb\x01Password: ")
    telnet.dataReceived(b"welcome\r\n$ ")
    telnet.connectionLost(Failure(error.ConnectionDone()))
    [record] = [f.to_dict() for f in sink.flows]
    assert record["protocol"] == "telnet" and record["role"] == "client"
    assert record["link"] == "f-20261121T140501Z-00000001" and record["target"] == "dev"
    names = [(m["dir"], m["name"]) for m in record["messages"]]
    assert ("s2c", "IAC DO TTYPE") in names and ("s2c", "IAC WILL ECHO") in names
    assert ("c2s", "data") in names and ("s2c", "data") in names
    assert record["stages"][4]["messages"] > 0  # interaction
    assert "s3cret-pw" not in json.dumps(record) and "welcome" not in json.dumps(record)


# -- user and target of a client leg, through the real front ends (issue 9, item 13) ---------


@pytest.fixture
def front_ends(monkeypatch):
    """The SSH-1 server rig and the SSH-2 harness, each connection with a flow recorder as
    the dispatcher gives it, in front of the real portal and Router with fake targets."""
    from gateway.auth import build_portal, run_inline
    from gateway.routing import Router
    from protocols.record import ConnectionRecord
    from tests.support.doubles import fake_targets
    from tests.support.gateway_helpers import OWN_ACCOUNT, ROUTED_TARGETS, fast_hash
    from tests.support.ssh1 import server_rig
    from tests.support.ssh2 import harness

    def recorded(protocol):
        def record(peer):
            return ConnectionRecord(peer=peer, flow=FlowRecorder("server", peer, protocol))

        return record

    monkeypatch.setattr(server_rig, "ConnectionRecord", recorded("ssh1"))
    monkeypatch.setattr(harness, "ConnectionRecord", recorded("ssh2"))
    config = parse_config(
        f'[users.alice]\npassword = "{fast_hash("alice-pw")}"\n'
        'targets = ["local", "sw1", "tn"]\n'
        f'os_user = "{OWN_ACCOUNT}"\n' + ROUTED_TARGETS
    )
    targets = fake_targets(config.targets)
    portal = build_portal(config, Router(config, targets, Clock()), blocking=run_inline)
    portal.targets = targets  # the fake targets, to drive the sessions they opened
    return portal


def ssh1_exec(portal, login, eof=False):
    from protocols.auth import AuthLimits
    from protocols.ssh1 import messages as m
    from tests.support.ssh1.minclient import string
    from tests.support.ssh1.server_rig import SSH1ServerRig

    rig = SSH1ServerRig(portal, limits=AuthLimits(failure_delay=0))
    assert rig.login(login, b"alice-pw") == [(m.SSH_SMSG_SUCCESS, b"")]
    rig.send(m.SSH_CMSG_EXEC_CMD, string(b"show run"))
    rig.clock.advance(0)
    if eof:
        rig.send(m.SSH_CMSG_EOF)
        _finish(portal)
        rig.received()
    return rig.record.flow


def _finish(portal):
    """The session's program ends without a byte of output: EOF, then exit status 0."""
    [session] = [s for t in portal.targets.values() for s in t.opened]
    session.client.send_eof()
    session.client.exited(ExitInfo(status=0))


def ssh2_exec(portal, login, eof=False):
    from twisted.conch.ssh import common

    from protocols.auth import AuthLimits
    from tests.support.ssh2.harness import wire

    w = wire(portal=portal, user=login, password=b"alice-pw", limits=AuthLimits(failure_delay=0))
    session = w.open_session()
    session.request(b"exec", common.NS(b"show run"))
    w.flush()
    if eof:
        w.conn.sendEOF(session)
        w.flush()
        _finish(portal)
        w.flush()
    return w.record.flow


@pytest.mark.parametrize("exec_", [ssh1_exec, ssh2_exec], ids=["ssh1", "ssh2"])
@pytest.mark.parametrize(
    "login, target",
    [(b"alice+sw1", "sw1"), (b"alice+tn", "tn"), (b"alice+secret", None), (b"alice", "local")],
)
def test_client_leg_records_the_gateway_user_and_the_routed_target(
    tmp_path, front_ends, exec_, login, target
):
    """The same user and target whatever the protocol: the gateway user (never the login
    name ``alice+sw1``) and the target the session was routed to (none when refused)."""
    flow = exec_(front_ends, login)
    FlowWriter(tmp_path).write_flow(flow)
    [record] = [json.loads(line) for line in (tmp_path / "flows.jsonl").read_text().splitlines()]
    assert (record["role"], record["user"], record["target"]) == ("server", "alice", target)


def test_writer_keeps_an_upstream_legs_login_as_it_is(tmp_path):
    flow = FlowRecorder("client", "192.0.2.1:22", "ssh2")
    flow.user, flow.target = "admin+ops", "sw1"
    FlowWriter(tmp_path).write_flow(flow)
    record = json.loads((tmp_path / "flows.jsonl").read_text())
    assert (record["user"], record["target"]) == ("admin+ops", "sw1")


def test_open_flow_finds_open_legs_only():
    flow = FlowRecorder("server", "127.0.0.1:1", "ssh2")
    assert open_flow(flow.id) is flow and open_flow(None) is None
    flow.close()
    assert open_flow(flow.id) is None


@pytest.mark.parametrize("exec_", [ssh1_exec, ssh2_exec], ids=["ssh1", "ssh2"])
def test_eof_is_part_of_the_interaction_on_both_protocols(front_ends, exec_):
    """Issue 9, item 14: an EOF is counted in the interaction (the data flow it ends), on
    SSH-2 as on SSH-1, even when no data came before it (a command with no input and no
    output): SSH-2's CHANNEL_EOF used to stay in the session stage."""
    record = exec_(front_ends, b"alice+sw1", eof=True).to_dict()
    eofs = [(m["dir"], m["stage"]) for m in record["messages"] if m["name"].endswith("_EOF")]
    expected = {
        "ssh1": [("c2s", "interaction")],
        "ssh2": [("c2s", "interaction"), ("s2c", "interaction")],
    }
    assert eofs == expected[record["protocol"]], record["messages"]
    stages = [m["stage"] for m in record["messages"]]
    assert stages == sorted(stages, key=STAGES.index)  # stages only move forward
    assert stages[-1] == "close"


def test_ssh2_channel_eof_opens_the_interaction():
    flow = FlowRecorder("client", "192.0.2.1:22", "ssh2", clock=Ticks())
    for direction, name in [
        (C2S, "SSH2_MSG_CHANNEL_OPEN"), (S2C, "SSH2_MSG_CHANNEL_OPEN_CONFIRMATION"),
        (C2S, "SSH2_MSG_CHANNEL_REQUEST"), (S2C, "SSH2_MSG_CHANNEL_SUCCESS"),
        (C2S, "SSH2_MSG_CHANNEL_EOF"), (S2C, "SSH2_MSG_CHANNEL_REQUEST"),
        (S2C, "SSH2_MSG_CHANNEL_CLOSE"),
    ]:  # fmt: skip
        flow.packet(direction, name, 32)
    stages = {m["name"]: m["stage"] for m in flow.to_dict()["messages"][2:]}
    assert stages["SSH2_MSG_CHANNEL_EOF"] == "interaction"
    assert stages["SSH2_MSG_CHANNEL_CLOSE"] == "close"
