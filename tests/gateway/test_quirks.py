"""Quirk profiles (gateway.quirks): the table's matching, a target's ``quirks`` setting,
and the workarounds reaching the upstream clients, shown in the log line and the upstream
leg's flow record. The SSH-2 side runs against paramiko presenting old devices' lines
(the line is the only thing simulated: paramiko itself answers everything); dropbear's
and OpenSSH's own lines are modern and match no profile."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from gateway import quirks
from gateway.config import ConfigError, parse_config
from gateway.known_hosts import KnownHosts
from gateway.targets import TargetConfig
from gateway.targets.ssh2 import SSH2Target
from protocols.session import SessionRequest
from tests.support.doubles import FakeSessionClient
from tests.support.flow_records import read_jsonl
from tests.support.paramiko_device import DeviceBehaviour, ParamikoDevice
from tests.support.sshd import close_reactor, fresh_reactor, run_until

TIMEOUT = 30


@pytest.mark.parametrize(
    ("line", "profile"),
    [
        ("SSH-1.5-Cisco-1.25", "cisco-1.25"),
        ("SSH-1.5-1.2.22", "ssh-1.2.18-22"),
        ("SSH-1.5-1.2.27", None),
        ("SSH-1.99-OpenSSH_2.5.2p2", "openssh-2.x"),
        ("SSH-2.0-OpenSSH_3.9p1 Debian", "openssh-3.x"),
        ("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", None),
        ("SSH-2.0-Sun_SSH_1.0", "sun-ssh-1.0"),
        ("SSH-2.0-Sun_SSH_1.0.1", "sun-ssh-1.0"),
        ("SSH-2.0-Sun_SSH_1.1", None),
        ("SSH-2.0-dropbear_0.46", "dropbear-0.4x"),
        ("SSH-2.0-dropbear_0.52", None),
        ("SSH-2.0-dropbear_2022.83", None),
        ("SSH-2.0-DigiSSH_2.0", "digissh-2.0"),
        ("SSH-2.0-RomSShell_4.62", "romsshell"),
        ("SSH-2.0-Comware-5.20", "comware"),
        ("SSH-2.0-3Com OS-3.0", "comware"),
        ("SSH-2.0-paramiko_3.4.0", None),
        ("garbage", None),
    ],
)
def test_profiles_match_on_the_software_version(line, profile):
    found = quirks.match(line)
    assert (found.name if found else None) == profile


def test_every_profile_has_a_source_and_known_workarounds():
    for profile in quirks.PROFILES:
        assert profile.source
        assert set(profile.workarounds) <= set(quirks.WORKAROUNDS)


def test_the_setting_auto_none_and_explicit_names():
    assert quirks.resolve("none", "SSH-2.0-Sun_SSH_1.0", "ssh2") is None
    assert quirks.resolve("auto", "SSH-2.0-OpenSSH_9.2", "ssh2") is None
    auto = quirks.resolve("auto", "SSH-1.5-Cisco-1.25", "ssh1")
    assert auto.profile == "cisco-1.25"
    assert auto.switched() == {"no-rsa-auth"}
    # Named explicitly, whatever the line says; only the protocol's own workarounds.
    named = quirks.resolve(("no-rekey", "no-rsa-auth"), "SSH-2.0-OpenSSH_9.2", "ssh2")
    assert named.workarounds == ("no-rekey",)
    assert named.profile is None
    assert quirks.resolve(("sun-ssh-1.0",), "SSH-2.0-x", "ssh2").switched() == {"no-rekey"}


def test_a_profile_never_adds_an_algorithm_it_only_names_them():
    applied = quirks.resolve("auto", "SSH-2.0-Sun_SSH_1.0", "ssh2")
    assert "would want kex diffie-hellman-group1-sha1" in applied.describe()
    assert applied.switched() == {"no-rekey"}  # nothing else reaches the client


def target_toml(quirks_value: str) -> str:
    return f"""
[users.alice]
authorized_keys = "/dev/null"
targets = ["sw"]
[targets.sw]
protocol = "ssh2"
host = "192.0.2.1"
quirks = {quirks_value}
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"auto"', "auto"),
        ('"none"', "none"),
        ('["sun-ssh-1.0", "no-rekey"]', ("sun-ssh-1.0", "no-rekey")),
    ],
)
def test_config_takes_the_setting(tmp_path, value, expected):
    config = parse_config(target_toml(value), "t.toml", tmp_path)
    assert config.targets["sw"].quirks == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"sometimes"', "must be"),
        ('["no-such-quirk"]', "unknown quirk 'no-such-quirk'"),
        ("3", "must be"),
    ],
)
def test_config_refuses_unknown_quirks(tmp_path, value, problem):
    with pytest.raises(ConfigError) as raised:
        parse_config(target_toml(value), "t.toml", tmp_path)
    assert problem in str(raised.value)
    assert "targets.sw.quirks" in str(raised.value)


# -- a device presenting an old line: paramiko ----------------------------------------------


@pytest.fixture
def reactor():
    r = fresh_reactor()
    yield r
    close_reactor(r)


@pytest.fixture
def logs():
    events: list[str] = []

    def observe(event):
        events.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def run_against(reactor, tmp_path, version: str, monkeypatch, **extra):
    from protocols.ssh2.rekey import RekeyingTransport

    monkeypatch.setattr(RekeyingTransport, "rekey_limit", 128 * 1024)
    behaviour = DeviceBehaviour(password="secret", version=version, shell_cat=True)
    written = []
    with ParamikoDevice(behaviour) as device:
        config = TargetConfig(
            name="dev",
            protocol="ssh2",
            host="127.0.0.1",
            port=device.port,
            username="admin",
            password="secret",
            connect_timeout=20.0,
            **extra,
        )
        target = SSH2Target(reactor, config, KnownHosts(tmp_path / "kh"))
        target.flows = SimpleNamespace(write_flow=written.append)
        client = FakeSessionClient()
        session = target.open_session("alice", SessionRequest(), client)
        assert run_until(reactor, lambda: session.upstream is not None or client.exit, TIMEOUT)
        assert session.upstream is not None, bytes(client.err)
        transport = session.upstream.channel.attempt.transport
        session.write_stdin(b"x" * (1024 * 1024))
        assert run_until(reactor, lambda: len(client.out) >= 1024 * 1024, TIMEOUT)
        session.close_stdin()
        assert run_until(reactor, lambda: written and client.exit is not None, TIMEOUT)
    return transport, written[0]


@pytest.mark.peer
def test_a_sun_ssh_device_gets_no_rekey_logged_and_in_the_flow(
    reactor, tmp_path, monkeypatch, logs
):
    transport, flow = run_against(reactor, tmp_path, "SSH-2.0-Sun_SSH_1.0", monkeypatch)
    assert transport.key_exchanges == 1  # 1 MiB past a 128 KiB limit, and no re-key
    assert flow.negotiated["quirks"] == {"profile": "sun-ssh-1.0", "workarounds": ["no-rekey"]}
    line = [x for x in logs if "quirks sun-ssh-1.0" in x]
    assert line and "device Sun_SSH_1.0" in line[0] and "no-rekey" in line[0], logs
    assert "would want kex diffie-hellman-group1-sha1" in line[0]


@pytest.mark.peer
def test_quirks_none_leaves_the_same_device_alone(reactor, tmp_path, monkeypatch, logs):
    transport, flow = run_against(
        reactor, tmp_path, "SSH-2.0-Sun_SSH_1.0", monkeypatch, quirks="none"
    )
    assert transport.key_exchanges > 1
    assert "quirks" not in flow.negotiated
    assert not [x for x in logs if "quirks" in x]


@pytest.mark.peer
def test_a_modern_line_matches_nothing_and_named_quirks_apply_anyway(
    reactor, tmp_path, monkeypatch
):
    transport, flow = run_against(reactor, tmp_path, "SSH-2.0-OpenSSH_9.2", monkeypatch)
    assert transport.key_exchanges > 1 and "quirks" not in flow.negotiated
    transport, flow = run_against(
        reactor, tmp_path, "SSH-2.0-OpenSSH_9.2", monkeypatch, quirks=("no-rekey",)
    )
    assert transport.key_exchanges == 1
    assert flow.negotiated["quirks"] == {"profile": None, "workarounds": ["no-rekey"]}


# -- SSH-1: the gateway's own SSH-1 server presenting Cisco's line (in memory) ---------------


def ssh1_login(tmp_path, line: bytes | None, **config):
    from protocols.ssh1 import keyfile
    from tests.support.ssh1.minclient import user_key
    from tests.support.ssh1.target_rig import Rig

    path = tmp_path / "device_key"
    path.write_bytes(keyfile.dump_private_key(user_key(), "gw"))
    rig = Rig(tmp_path, KnownHosts(tmp_path / "kh"), key=path, **config)
    if line is not None:
        rig.device.dispatcher.generation.server_version = line  # a device's line, simulated
    written = []
    rig.target.flows = SimpleNamespace(write_flow=written.append)
    bridge = rig.open(SessionRequest(command=b"id"))
    assert rig.device.target.request.command == b"id"
    bridge.close()
    rig.flush()
    [flow] = written
    return [a["method"] for a in flow.auth_attempts], flow


def test_ssh1_cisco_line_gets_no_rsa_auth_in_flow_and_log(tmp_path, logs):
    methods, flow = ssh1_login(tmp_path, b"SSH-1.5-Cisco-1.25")
    assert methods == ["none", "password"]  # the key is configured, but never tried
    # no-ssh1-ignore and plain-ssh1-password hold for every device: no IGNORE goes out.
    assert "SSH_MSG_IGNORE" not in [name for _t, _dir, name, *_ in flow.messages]
    assert "SSH_CMSG_AUTH_PASSWORD" in [name for _t, _dir, name, *_ in flow.messages]
    assert flow.negotiated["quirks"] == {
        "profile": "cisco-1.25",
        "workarounds": ["no-ssh1-ignore", "plain-ssh1-password", "no-rsa-auth"],
    }
    assert [x for x in logs if "ssh1 target dev: device Cisco-1.25: quirks cisco-1.25" in x], logs


def test_ssh1_same_device_with_quirks_none_tries_rsa_first(tmp_path):
    methods, flow = ssh1_login(tmp_path, b"SSH-1.5-Cisco-1.25", quirks="none")
    assert methods[:2] == ["none", "rsa"]
    assert "quirks" not in flow.negotiated


def test_ssh1_own_line_matches_nothing(tmp_path):
    methods, flow = ssh1_login(tmp_path, None)
    assert "rsa" in methods and "quirks" not in flow.negotiated


def test_the_log_names_only_the_wanted_algorithms_the_target_does_not_list():
    applied = quirks.resolve("auto", "SSH-2.0-Sun_SSH_1.0", "ssh2")
    words = applied.describe({"kex": ("diffie-hellman-group1-sha1",), "macs": ("hmac-sha1",)})
    assert "kex diffie-hellman-group-exchange-sha1;" in words
    assert "group1" not in words and "macs" not in words


@pytest.mark.peer
def test_acceptance_a_gateway_process_shows_the_profile_in_its_log_and_flow_record(tmp_path):
    """Acceptance 4 end to end: OpenSSH's ssh through a running gateway to a device whose
    line is Sun_SSH_1.0 (paramiko presenting it): the connection log line names the
    profile and its workarounds, the upstream leg's record in flows.jsonl has them."""
    import subprocess

    from tests.support.clients import keyed_config, ssh_argv
    from tests.support.gateway_process import GatewayProcess

    behaviour = DeviceBehaviour(password="secret", version="SSH-2.0-Sun_SSH_1.0")
    with ParamikoDevice(behaviour) as device:
        config, key = keyed_config(tmp_path)
        config["users"]["alice"]["targets"] = ["sun"]
        del config["users"]["alice"]["os_user"]
        config["targets"] = {
            "sun": {"protocol": "ssh2", "host": "127.0.0.1", "port": device.port,
                    "username": "admin", "password": "secret", "connect_timeout": 20},
        }  # fmt: skip
        (tmp_path / "gw").mkdir()
        with GatewayProcess(tmp_path / "gw", config) as gw:
            result = subprocess.run(
                ssh_argv(gw, key, "show version", user="alice+sun"),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert (result.returncode, result.stdout) == (3, "exec show version\n"), result.stderr
            line = gw.wait_for_log(
                r"ssh2 target sun: device Sun_SSH_1\.0: quirks sun-ssh-1\.0: no-rekey.*"
            )
            assert "would want kex diffie-hellman-group1-sha1" in line.group(0)
            flows = Path(gw.config["state_dir"]) / "flows" / "flows.jsonl"
            records = read_jsonl(flows)
            gw.assert_no_traceback()
    [upstream] = [r for r in records if r["target"] == "sun" and r["role"] == "client"]
    assert upstream["negotiated"]["quirks"] == {
        "profile": "sun-ssh-1.0",
        "workarounds": ["no-rekey"],
    }
