"""``sshgateway sessions`` against a gateway with a shared store (gateway.store.sessions
answers behind the control socket): the INSTANCE column, the warnings of a list that could
not reach the database (stderr, exit status 0), and a kill the holding instance did not
carry out in time (one line, exit status 1). The socket itself: tests/tools/test_sessions_cli.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet import defer

from gateway.control import TIMEOUT
from gateway.live_sessions import SessionList, SessionRegistryError
from tests.support.doubles import FakeSessionRegistry
from tests.tools.test_sessions_cli import SUMMARIES, Served

A, B = "gw-a:/var/lib/sshgateway", "gw-b:/var/lib/sshgateway"
WARNING = "the shared session registry is unreachable (database down): only the sessions of this instance (gw-a:/var/lib/sshgateway) are listed"  # noqa: E501


class ClusterRegistry(FakeSessionRegistry):
    """Sessions of two instances; a list that warns; kills of B's sessions time out."""

    def __init__(self) -> None:
        super().__init__([replace(SUMMARIES[0], instance=A), replace(SUMMARIES[1], instance=B)])
        self.warnings: list[str] = []

    def list(self) -> defer.Deferred:
        return defer.succeed(SessionList(self.sessions, self.warnings))

    def kill(self, session_id, by, message=None) -> defer.Deferred:
        if session_id == SUMMARIES[1].id:
            return defer.fail(SessionRegistryError(TIMEOUT, f"instance {B} holds session "
                                                   f"{session_id} but did not end it within 10 s"))  # fmt: skip
        return super().kill(session_id, by, message)


@pytest.fixture
def served(tmp_path):
    gateway = Served(tmp_path, ClusterRegistry())
    yield gateway
    gateway.close()


def test_the_list_names_the_instance_of_each_session(served):
    status, out, err = served.run("sessions", "list", "--state-dir", str(served.state))
    assert (status, err) == (0, "")
    header, first, second = out.splitlines()
    assert header.split() == ["ID", "USER", "SOURCE", "FRONT", "TARGET", "STARTED", "IN", "OUT",
                              "INSTANCE", "RECORDING"]  # fmt: skip
    assert A in first.split() and B in second.split()


def test_what_the_list_could_not_reach_is_a_warning_on_stderr(served):
    served.registry.warnings.append(WARNING)
    status, out, err = served.run("sessions", "list", "--state-dir", str(served.state))
    assert status == 0 and out.startswith("ID ")
    assert err == f"sshgateway: warning: {WARNING}\n"


def test_a_kill_on_another_instance_says_where_and_a_timeout_is_an_error(served):
    status, out, err = served.run("sessions", "kill", SUMMARIES[0].id, "--state-dir", str(served.state))
    assert (status, err) == (0, "")
    assert out.rstrip().endswith(f"to sw1 on instance {A}")
    status, out, err = served.run("sessions", "kill", SUMMARIES[1].id, "--state-dir", str(served.state))
    assert (status, out) == (1, "")
    assert err == f"sshgateway: instance {B} holds session {SUMMARIES[1].id} but did not end it within 10 s\n"
