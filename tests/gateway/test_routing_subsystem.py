"""The Router's choice of what serves a subsystem request (``subsystem sftp``), in memory:
sftp-server as the user's os_user on ``local``, relayed to an SSH-2 device, refused with a
reason on stderr and a log line on SSH-1 and telnet devices, for unknown subsystems and
when the gateway host has no sftp-server; never the target menu; a forced command wins."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from gateway.config import parse_config
from gateway.routing import ORIGINAL_COMMAND, RefusedSession, Router, find_sftp_server
from gateway.sftp_watch import WatchedTarget
from protocols.flow import FlowRecorder
from protocols.session import ExitInfo, SessionRequest
from tests.support.doubles import FakeSessionClient, FakeTarget
from tests.support.gateway_helpers import OWN_ACCOUNT, ROUTED_TARGETS, fast_hash
from tests.support.sftp_packets import put_steps

HASH = fast_hash("pw")
SFTP = SessionRequest(subsystem="sftp")


def sftp_server(tmp_path: Path) -> Path:
    program = tmp_path / "sftp-server"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    return program


class Setup:
    def __init__(self, tmp_path: Path, sftp_server: Path | None = None) -> None:
        session = f'[session]\nsftp_server = "{sftp_server}"\n' if sftp_server else ""
        self.config = parse_config(
            session
            + f"""
[users.alice]
password = "{HASH}"
targets = ["local", "sw1", "host2", "tn"]
os_user = "{OWN_ACCOUNT}"

[users.dave]
password = "{HASH}"
targets = ["sw1", "host2"]
"""
            + ROUTED_TARGETS
        )
        self.clock = Clock()
        self.targets = {
            name: FakeTarget(name, takes_password=name != "local") for name in self.config.targets
        }
        self.router = Router(self.config, self.targets, self.clock)

    def open(self, user: str, target: str | None, request=SFTP, **kw):
        client = FakeSessionClient()
        session = self.router.open_session(user, request, client, target=target, **kw)
        self.clock.advance(0)
        return session, client


@pytest.fixture
def logs():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: "\n".join(formatEvent(e) for e in events)
    globalLogPublisher.removeObserver(events.append)


def test_local_runs_sftp_server_as_the_os_user(tmp_path, logs):
    program = sftp_server(tmp_path)
    s = Setup(tmp_path, program)
    session, client = s.open("alice", "local")
    (opened,) = s.targets["local"].opened
    assert isinstance(session, WatchedTarget) and session._target is opened  # see below
    # As sshd's Subsystem: the program's path is the command the account's shell runs.
    assert opened.request.command == str(program).encode()
    assert opened.request.subsystem == "sftp"
    assert opened.kwargs == {"os_user": OWN_ACCOUNT}
    assert f"alice: sftp on local: {program}" in logs()


def test_sftp_goes_to_local_without_a_target_menu(tmp_path):
    # alice may reach several targets and has no default: a shell would get the menu, a
    # subsystem goes to local as a command would.
    s = Setup(tmp_path, sftp_server(tmp_path))
    s.open("alice", None)
    assert len(s.targets["local"].opened) == 1


def test_sftp_without_a_target_and_no_local_is_refused_not_a_menu(tmp_path):
    s = Setup(tmp_path, sftp_server(tmp_path))
    session, client = s.open("dave", None)
    assert isinstance(session, RefusedSession)
    assert b"no target given: log in as dave+TARGET" in client.err


def test_local_without_an_sftp_server_is_refused_with_a_log_line(tmp_path, logs):
    s = Setup(tmp_path, tmp_path / "missing")
    session, client = s.open("alice", "local")
    assert isinstance(session, RefusedSession) and s.targets["local"].opened == []
    assert client.err == b"sshgateway: sftp on local: the gateway host has no sftp-server\r\n"
    assert client.exit == ExitInfo(status=255)
    assert f"no sftp-server for local: {tmp_path / 'missing'} is not an executable file" in logs()


def test_ssh2_device_gets_the_subsystem_request_relayed(tmp_path, logs):
    s = Setup(tmp_path)
    s.open("alice", "host2")
    (opened,) = s.targets["host2"].opened
    assert (opened.request.subsystem, opened.request.command) == ("sftp", None)
    assert "alice: sftp on host2: relayed to the device" in logs()


@pytest.mark.parametrize("target", ["local", "host2"])
def test_files_of_a_relayed_sftp_session_are_noted_in_the_clients_flow(tmp_path, target):
    s = Setup(tmp_path, sftp_server(tmp_path))
    flow = FlowRecorder("server", "127.0.0.1:5000", "ssh2")
    client = FakeSessionClient()
    client.flow_id = flow.id  # type: ignore[attr-defined]
    session = s.router.open_session("alice", SFTP, client, target=target)
    (opened,) = s.targets[target].opened
    for side, data in put_steps(b"/srv/up.bin"):
        (session.write_stdin if side == "c" else opened.client.write_stdout)(data)
    assert [(f["direction"], f["path"], f["size"], f["result"]) for f in flow.files] == [
        ("put", "/srv/up.bin", 32868, "ok")
    ]
    assert opened.client.flow_id == flow.id  # the device leg still links to the client's
    flow.close()


def test_ssh1_device_gets_sftp_served_by_the_gateway_over_its_scp(tmp_path, logs):
    """SSH-1 has no subsystems: the gateway's own SFTP server answers, and opens nothing on
    the device until a file is asked for (then an scp exec session, with the user's
    target credentials)."""
    from gateway.targets.sftp_over_scp import SftpOverScpSession

    s = Setup(tmp_path)
    s.config = dataclasses.replace(s.config, state_dir=tmp_path / "state")
    (tmp_path / "state").mkdir()
    s.router = Router(s.config, s.targets, s.clock)
    session, client = s.open("alice", "sw1")
    assert isinstance(session, SftpOverScpSession) and s.targets["sw1"].opened == []
    assert client.err == b"" and client.exit is None
    assert "alice: sftp on sw1: served by the gateway over the device's scp" in logs()
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "sftp-spool").st_mode) == 0o700


def test_telnet_device_refuses_sftp_with_a_reason_and_a_log_line(tmp_path, logs):
    s = Setup(tmp_path)
    session, client = s.open("alice", "tn", password="pw")
    assert isinstance(session, RefusedSession) and s.targets["tn"].opened == []
    assert client.err == b"sshgateway: sftp on tn: telnet devices have no SFTP or file transfer\r\n"
    assert client.exit == ExitInfo(status=255)
    assert "alice asked for subsystem 'sftp' on tn: refused (telnet devices" in logs()


@pytest.mark.parametrize("target", ["local", "host2"])
def test_unknown_subsystem_is_refused_with_a_log_line(tmp_path, logs, target):
    # The SSH-2 front end refuses unknown names at the request already; the Router does
    # not rely on it.
    s = Setup(tmp_path, sftp_server(tmp_path))
    session, client = s.open("alice", target, SessionRequest(subsystem="netconf"))
    assert isinstance(session, RefusedSession) and s.targets[target].opened == []
    assert b"netconf on " + target.encode() + b": unknown subsystem" in client.err
    assert f"alice asked for subsystem 'netconf' on {target}: refused (unknown subsystem)" in logs()


def test_a_forced_command_replaces_the_subsystem(tmp_path, logs):
    # As sshd: the key's command runs instead, with what the subsystem would have run in
    # SSH_ORIGINAL_COMMAND on local.
    program = sftp_server(tmp_path)
    s = Setup(tmp_path, program)
    s.open("alice", "local", forced_command=b"/usr/local/bin/audit-sftp")
    (opened,) = s.targets["local"].opened
    assert opened.request.command == b"/usr/local/bin/audit-sftp"
    assert opened.request.subsystem is None
    assert opened.request.env[ORIGINAL_COMMAND] == str(program)
    assert "the key's forced command replaces the client's subsystem sftp" in logs()
    s.open("alice", "host2", forced_command=b"show version")
    (upstream,) = s.targets["host2"].opened
    assert (upstream.request.command, upstream.request.subsystem) == (b"show version", None)


def test_find_sftp_server_takes_the_first_executable_of_the_usual_places(tmp_path):
    missing, plain, program = tmp_path / "missing", tmp_path / "plain", sftp_server(tmp_path)
    plain.write_text("not executable")
    plain.chmod(0o644)
    usual = (str(missing), str(plain), str(program))
    assert find_sftp_server(None, usual) == str(program)
    assert find_sftp_server(None, usual[:2]) is None
    assert find_sftp_server(program, ()) == str(program)
    assert find_sftp_server(missing, usual) is None  # a configured one is the only choice
    assert find_sftp_server(tmp_path, usual) is None  # a directory is no program
