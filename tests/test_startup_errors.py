"""Start-up errors in memory: each becomes one ``sshgateway: ...`` line on stderr and a
SystemExit with status 1 (tests/integration/test_operator_errors.py runs the real twistd)."""

from __future__ import annotations

import errno
import socket

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from gateway.config import parse_config
from gateway.service import (
    ListenError,
    ListenerService,
    StartupFailure,
    listen_error,
    make_service,
    startup_failure,
)
from tests.support.gateway_helpers import LOCAL_ACCESS


def start_listening(tmp_path, reactor, endpoint: str) -> None:
    """Build the whole service on ``reactor`` with one endpoint and start it as twistd
    does (privilegedStartService binds)."""
    config = parse_config(
        f'listen = ["{endpoint}"]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[users.alice]\nauthorized_keys = "{tmp_path}/ak"\n{LOCAL_ACCESS}',
        "gw.toml",
        tmp_path,
    )
    make_service(config, reactor).privilegedStartService()


class RefusingReactor(MemoryReactorClock):
    """listenTCP fails as a real reactor's does when the port is taken."""

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))


def test_port_in_use_is_one_line_and_status_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        start_listening(tmp_path, RefusingReactor(), "tcp:2222:interface=127.0.0.1")
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        "sshgateway: cannot listen on tcp:2222:interface=127.0.0.1: Address already in use "
        "(another program listens there)\n"
    )


def test_privileged_port_says_what_it_needs():
    error = CannotListenError("", 22, OSError(errno.EACCES, "Permission denied"))
    assert listen_error("tcp:22", error) == (
        "cannot listen on tcp:22: Permission denied "
        "(ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    )


@pytest.mark.parametrize("endpoint", ["systemd:domain=INET:index=0", "systemd:domain=INET:name=ssh"])
def test_systemd_endpoint_without_the_socket(endpoint, tmp_path, capsys):
    with pytest.raises(StartupFailure) as stopped:
        start_listening(tmp_path, MemoryReactorClock(), endpoint)
    assert str(stopped.value).startswith(f"sshgateway: cannot listen on {endpoint}: systemd passed")
    assert capsys.readouterr().err.count("\n") == 1


def test_unparsable_endpoint_at_start(capsys):
    # The listener says what is wrong in one line; the start-up turns it into the exit.
    listener = ListenerService(MemoryReactorClock(), "nosuchtype:1", object())
    with pytest.raises(ListenError, match="^bad endpoint 'nosuchtype:1': "):
        listener.startService()
    assert capsys.readouterr().err == ""  # nothing printed until the start-up says so


def test_state_dir_that_cannot_be_a_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = parse_config(
        f'state_dir = "{blocker / "state"}"\n[users.alice]\nauthorized_keys = "{tmp_path}/ak"\n{LOCAL_ACCESS}',
        "gw.toml",
        tmp_path,
    )
    with pytest.raises(StartupFailure) as stopped:
        make_service(config, MemoryReactorClock())
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        f"sshgateway: state_dir {blocker / 'state'} is not writable: Not a directory\n"
    )


def test_startup_failure_prints_once_and_exits_1(capsys):
    failure = startup_failure("something is wrong")
    assert isinstance(failure, SystemExit) and failure.code == 1
    assert str(failure) == "sshgateway: something is wrong"
    assert capsys.readouterr().err == "sshgateway: something is wrong\n"


def test_real_port_in_use_message():
    """The reactor's own error for a taken port gives the same line."""
    from twisted.internet import reactor

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        try:
            reactor.listenTCP(port, None, interface="127.0.0.1")
        except CannotListenError as e:
            error = e
        else:  # pragma: no cover
            pytest.fail("listening on a taken port succeeded")
    assert listen_error(f"tcp:{port}", error).endswith("Address already in use (another program listens there)")
