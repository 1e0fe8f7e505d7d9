"""``sshgateway sessions list|kill`` against a real control socket (gateway.control on a
private reactor, a registry double behind it): the text and JSON listings, kill and its
message, and one clear line with exit status 1 for every way it can fail."""

from __future__ import annotations

import io
import json
import os
import pwd
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.control import ControlFactory, listen_control
from gateway.live_sessions import Operator, SessionSummary
from tests.support.doubles import FakeSessionRegistry
from tests.support.gateway_helpers import LOCAL_ACCESS
from tests.support.sshd import close_reactor, fresh_reactor, run_until
from tools.cli import main

SUMMARIES = [
    SessionSummary(
        id="6b1-2a-1", user="alice", source="192.0.2.7:40000", front_protocol="ssh1",
        target="sw1", target_protocol="ssh1", started=1_700_000_000.0, bytes_in=9,
        bytes_out=1234, recording="/state/recordings/f-1.cast", pty=True,
    ),
    SessionSummary(
        id="6b1-2a-2", user="bob", source="[2001:db8::1]:22022", front_protocol="ssh2",
        target="local", target_protocol="local", started=1_700_000_060.0, bytes_in=0,
        bytes_out=0, recording=None, command="uptime",
    ),
]  # fmt: skip


class Served:
    """A control socket in ``state`` over ``registry``, on a reactor that turns while the
    command runs (in a thread: the command's client blocks)."""

    def __init__(self, state: Path, registry: FakeSessionRegistry) -> None:
        self.state = state
        self.registry = registry
        self.reactor = fresh_reactor()
        self.port = listen_control(
            self.reactor, state / "control.sock", ControlFactory(registry, self.reactor)
        )

    def run(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(*argv, reactor=self.reactor)

    def close(self) -> None:
        self.port.stopListening()
        run_until(self.reactor, lambda: False, timeout=0.1)
        close_reactor(self.reactor)


def run_cli(*argv: str, reactor=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(main(list(argv), stdout=out, stderr=err)))
    thread.start()
    if reactor is not None:
        assert run_until(reactor, lambda: not thread.is_alive(), timeout=30)
    thread.join(30)
    return status[0], out.getvalue(), err.getvalue()


@pytest.fixture
def served(tmp_path):
    gateway = Served(tmp_path, FakeSessionRegistry(SUMMARIES))
    yield gateway
    gateway.close()


def test_list_as_text(served):
    status, out, err = served.run("sessions", "list", "--state-dir", str(served.state))
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "ID        USER   SOURCE               FRONT  TARGET  STARTED               IN  OUT   RECORDING",
        "6b1-2a-1  alice  192.0.2.7:40000      ssh1   sw1     2023-11-14T22:13:20Z  9   1234  /state/recordings/f-1.cast",
        "6b1-2a-2  bob    [2001:db8::1]:22022  ssh2   local   2023-11-14T22:14:20Z  0   0     -",
    ]  # fmt: skip


def test_list_as_json(served):
    status, out, _ = served.run("sessions", "list", "--format", "json", "--state-dir", str(served.state))
    assert status == 0
    assert [SessionSummary.from_json(s) for s in json.loads(out)] == SUMMARIES


def test_an_empty_list(tmp_path):
    gateway = Served(tmp_path, FakeSessionRegistry())
    try:
        assert gateway.run("sessions", "list", "--state-dir", str(tmp_path)) == (
            0, "no live sessions\n", ""
        )  # fmt: skip
        status, out, _ = gateway.run("sessions", "list", "--format", "json", "--state-dir", str(tmp_path))
        assert (status, json.loads(out)) == (0, [])
    finally:
        gateway.close()


def test_kill_says_what_it_ended_and_the_gateway_knows_who_asked(served):
    status, out, err = served.run(
        "sessions", "kill", "6b1-2a-1", "--message", "back at 6", "--state-dir", str(served.state)
    )
    assert (status, err) == (0, "")
    assert out == "ended session 6b1-2a-1: alice from 192.0.2.7:40000 (SSH-1) to sw1\n"
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert served.registry.kills == [("6b1-2a-1", Operator(me, os.geteuid(), os.getpid()), "back at 6")]


def test_kill_of_an_unknown_id_is_an_error(served):
    status, out, err = served.run("sessions", "kill", "nope", "--state-dir", str(served.state))
    assert (status, out) == (1, "")
    assert err == "sshgateway: no live session nope (`sshgateway sessions list` shows the open ones)\n"


def test_the_config_names_the_socket(served, tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(
        f'state_dir = "/nonexistent"\n[control]\nsocket = "{served.state / "control.sock"}"\n'
        f'[users.alice]\nauthorized_keys = "/nonexistent"\n{LOCAL_ACCESS}\n'
    )
    status, out, _ = served.run("sessions", "list", "--config", str(config))
    assert status == 0 and out.startswith("ID ")
    status, _, _ = served.run("sessions", "list", "--socket", str(served.state / "control.sock"))
    assert status == 0


def test_no_gateway_running(tmp_path):
    status, _, err = run_cli("sessions", "list", "--state-dir", str(tmp_path))
    assert status == 1
    assert err == f"sshgateway: no control socket at {tmp_path / 'control.sock'}: is the gateway running?\n"


def test_a_stale_socket(tmp_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()
    status, _, err = run_cli("sessions", "kill", "x", "--state-dir", str(tmp_path))
    assert status == 1 and "nothing answers" in err and "not running" in err


def test_a_bad_config(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text("[control]\nsocket = 5\n")
    status, _, err = run_cli("sessions", "list", "--config", str(config))
    assert status == 1 and "control.socket" in err
    status, _, err = run_cli("sessions", "list", "--config", str(tmp_path / "missing.toml"))
    assert status == 1 and "cannot read" in err


def test_something_else_on_the_socket(tmp_path):
    # Not a gateway: it answers with something that is not an answer.
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "control.sock"))
    listener.listen(1)

    def answer_garbage() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1000)
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer_garbage)
    thread.start()
    try:
        status, _, err = run_cli("sessions", "list", "--state-dir", str(tmp_path))
    finally:
        thread.join(10)
        listener.close()
    assert status == 1 and "not a gateway's answer" in err


def test_one_of_state_dir_config_or_socket_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sessions", "list"])
    assert exit_.value.code == 2
    assert "one of the arguments --state-dir --config --socket is required" in capsys.readouterr().err


def test_a_refusal_is_shown_even_when_it_came_before_the_request(tmp_path, monkeypatch):
    # The gateway refuses a peer at once and closes: the request then meets a closed
    # socket (EPIPE), and the refusal waiting to be read must still be what is shown.
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "control.sock"))
    listener.listen(1)
    closed = threading.Event()

    def refuse() -> None:
        conn, _ = listener.accept()
        conn.sendall(b'{"ok": false, "error": "refused", "message": "only root may use this socket"}\n')
        conn.close()
        closed.set()

    class LateSender(socket.socket):
        def sendall(self, data, *args):
            assert closed.wait(10)
            return super().sendall(data, *args)

    from gateway import control_client  # where the CLI's client lives

    monkeypatch.setattr(
        control_client, "socket",
        SimpleNamespace(AF_UNIX=socket.AF_UNIX, SOCK_STREAM=socket.SOCK_STREAM, socket=LateSender),
    )  # fmt: skip
    thread = threading.Thread(target=refuse)
    thread.start()
    try:
        status, _, err = run_cli("sessions", "list", "--state-dir", str(tmp_path))
    finally:
        thread.join(10)
        listener.close()
    assert (status, err) == (1, "sshgateway: only root may use this socket\n")
