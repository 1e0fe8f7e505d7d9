"""User authentication through the shared LoginFlow."""

from __future__ import annotations

from twisted.conch.ssh import common, transport

from protocols.auth import AuthLimits
from tests.support.ssh2.harness import FakePortal, other_key, user_key, wire


def failure_packets(w):
    return [common.getNS(p) for p in w.auth.failures]


def test_password_login():
    w = wire(password=b"secret")
    assert w.conn.started
    assert w.record.user == "alice"
    assert w.record.auth_method == "password"
    assert w.record.auth_result == "success"
    assert w.portal.logins == [("alice", "password")]


def test_publickey_login_queries_then_signs():
    w = wire(key=user_key(), password=None)
    assert w.conn.started
    assert w.record.auth_method == "publickey"
    assert w.record.auth_result == "success"
    # The signature-less query was answered with PK_OK and cost no attempt.
    assert w.transport.login_flow.failures == 0


def test_only_publickey_and_password_are_offered():
    w = wire(password=None)  # the client has nothing to offer after "none"
    methods, partial = failure_packets(w)[0]
    assert methods == b"publickey,password"
    assert partial == b"\x00"
    assert b"keyboard-interactive" not in methods


def test_wrong_password_and_unknown_user_get_the_same_answer_after_the_delay():
    answers = []
    for user in (b"alice", b"mallory"):
        w = wire(user=user, password=b"wrong", limits=AuthLimits(failure_delay=1.0, max_attempts=6))
        sent = len(w.auth.failures)
        w.advance(0.5)
        assert len(w.auth.failures) == sent  # not before failure_delay
        w.advance(0.6)
        assert len(w.auth.failures) == sent + 1
        answers.append(w.auth.failures[-1])
        assert w.record.auth_result == "failure"
        assert not w.conn.started
    assert answers[0] == answers[1]


def test_unauthorized_key_is_refused():
    w = wire(key=other_key(), password=None, limits=AuthLimits(failure_delay=0.0))
    w.advance(0)
    assert not w.conn.started
    assert w.transport.login_flow.failures == 1


def test_policy_all_answers_partial_success_then_logs_in():
    w = wire(portal=FakePortal(policy="all"), key=user_key(), password=b"secret")
    partials = [p for p in failure_packets(w) if p[1] == b"\x01"]
    assert partials == [(b"password", b"\x01")]
    assert w.conn.started
    assert w.record.auth_method == "publickey+password"
    assert w.record.auth_result == "success"


def test_attempt_limit_disconnects():
    w = wire(password=b"wrong", limits=AuthLimits(failure_delay=0.5, max_attempts=3))
    for _ in range(5):
        w.advance(0.5)
    assert w.client.disconnect is not None
    assert w.client.disconnect[0] == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
    assert w.transport.login_flow.failures == 3
    assert w.record.auth_result == "failure"
    assert w.record.close_reason == "too many authentication failures"


def test_grace_time_disconnects_a_client_that_never_logs_in():
    w = wire(login=False, limits=AuthLimits(grace_time=10.0))
    assert w.client.secure
    w.advance(9.0)
    assert w.client.disconnect is None
    w.advance(1.5)
    assert w.client.disconnect is not None
    assert w.record.close_reason == "login grace time exceeded"
    assert w.server.transport.disconnecting


def test_grace_timer_stops_after_login():
    w = wire(password=b"secret", limits=AuthLimits(grace_time=10.0))
    w.advance(60)
    assert w.client.disconnect is None
    # Only the re-key timer is left.
    assert [c.func.__name__ for c in w.clock.getDelayedCalls()] == ["rekey"]


def test_logout_on_connection_lost():
    w = wire(password=b"secret")
    w.client.transport.loseConnection()
    w.flush()
    assert w.portal.logged_out == 1


def test_malformed_userauth_request_disconnects():
    w = wire(login=False)
    from twisted.conch.ssh import userauth

    class Bare(userauth.SSHUserAuthClient):
        def serviceStarted(self):
            self.transport.sendPacket(50, common.NS(b"alice") + b"\x00\x00\xff\xff")

    w.client.requestService(Bare(b"alice", None))
    w.flush()
    assert w.client.disconnect[0] == transport.DISCONNECT_PROTOCOL_ERROR
    assert "bad userauth request" in w.record.close_reason


def test_unknown_service_after_auth_is_refused():
    w = wire(login=False)
    from twisted.conch.ssh import userauth

    class Bare(userauth.SSHUserAuthClient):
        def serviceStarted(self):
            self.transport.sendPacket(
                50, common.NS(b"alice") + common.NS(b"ssh-nope") + common.NS(b"none")
            )

    w.client.requestService(Bare(b"alice", None))
    w.flush()
    assert w.client.disconnect[0] == transport.DISCONNECT_SERVICE_NOT_AVAILABLE


def test_login_finishing_after_grace_expiry_is_logged_out():
    from twisted.internet import defer

    class SlowPortal(FakePortal):
        pending: list = []

        def login(self, creds, mind, *interfaces):
            d = defer.Deferred()
            self.pending.append((d, creds, mind))
            return d

    portal = SlowPortal()
    w = wire(portal=portal, password=b"secret", limits=AuthLimits(grace_time=5.0))
    assert portal.pending
    w.advance(6)
    assert w.record.close_reason == "login grace time exceeded"
    d, creds, mind = portal.pending[0]
    d.callback(FakePortal._login(portal, creds, mind))
    w.flush()
    assert portal.logged_out == 1
    assert w.transport.service.name == b"ssh-userauth"


def test_pipelined_requests_are_answered_in_order_and_bounded():
    from twisted.conch.ssh import userauth

    w = wire(login=False, limits=AuthLimits(failure_delay=1.0))

    def request(password: bytes) -> bytes:
        return (common.NS(b"alice") + common.NS(b"ssh-connection") + common.NS(b"password")
                + b"\x00" + common.NS(password))

    class Pipelining(userauth.SSHUserAuthClient):
        answers = 0

        def serviceStarted(self):
            for _ in range(3):
                self.transport.sendPacket(50, request(b"wrong"))

        def ssh_USERAUTH_FAILURE(self, packet):
            Pipelining.answers += 1

    w.client.requestService(Pipelining(b"alice", None))
    w.flush()
    # One attempt at a time: the next starts only when the previous one was answered.
    assert w.transport.login_flow.failures == 1
    w.advance(1.0)
    assert w.transport.login_flow.failures == 2
    w.advance(1.0)
    assert w.transport.login_flow.failures == 3
    w.advance(1.0)
    assert Pipelining.answers == 3
    for _ in range(10):
        w.client.sendPacket(50, request(b"wrong"))
    w.flush()
    assert w.client.disconnect[0] == transport.DISCONNECT_PROTOCOL_ERROR
    assert w.record.close_reason == "too many pipelined authentication requests"


# --- a new SERVICE_REQUEST ssh-userauth before each method (paramiko) ----------------------


def raw_client(limits):
    """A wired connection whose client sends hand-made packets after the key exchange;
    the server's answers above the transport layer land in ``answers``."""
    w = wire(login=False, limits=limits)
    answers = []
    dispatch = w.client.dispatchMessage

    def record(number, payload):
        if number in (transport.MSG_SERVICE_ACCEPT,) or number >= 50:
            answers.append((number, payload))
        else:
            dispatch(number, payload)

    w.client.dispatchMessage = record
    return w, answers


def send_userauth_service_request(w):
    w.client.sendPacket(transport.MSG_SERVICE_REQUEST, common.NS(b"ssh-userauth"))
    w.flush()


def send_password(w, password):
    w.client.sendPacket(
        50,
        common.NS(b"alice") + common.NS(b"ssh-connection") + common.NS(b"password") + b"\x00"
        + common.NS(password),
    )  # fmt: skip
    w.flush()


def test_userauth_requested_again_after_a_failure_then_password_logs_in():
    # paramiko's key-then-password fallback: a failed method, SERVICE_REQUEST again, the
    # next method. OpenSSH's sshd accepts the repeated request; so must we.
    w, answers = raw_client(AuthLimits(failure_delay=0.0))
    send_userauth_service_request(w)
    running = w.transport.service
    send_password(w, b"wrong")
    w.advance(0)
    send_userauth_service_request(w)
    assert w.client.disconnect is None, w.client.disconnect
    send_password(w, b"secret")
    assert [n for n, _ in answers] == [
        transport.MSG_SERVICE_ACCEPT, 51, transport.MSG_SERVICE_ACCEPT, 52,
    ]  # fmt: skip
    assert answers[2][1] == common.NS(b"ssh-userauth")
    assert w.record.auth_method == "password" and w.record.auth_result == "success"
    assert running._finished  # accepted again, not restarted: the same service went on


def test_userauth_requested_again_keeps_the_attempt_count():
    w, answers = raw_client(AuthLimits(failure_delay=0.0, max_attempts=3))
    for _ in range(3):
        send_userauth_service_request(w)
        send_password(w, b"wrong")
        w.advance(0)
    assert w.transport.login_flow.failures == 3
    assert w.client.disconnect is not None
    assert w.client.disconnect[0] == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE


def test_userauth_requested_after_login_is_refused():
    w = wire(password=b"secret")
    assert w.conn.started
    w.client.sendPacket(transport.MSG_SERVICE_REQUEST, common.NS(b"ssh-userauth"))
    w.flush()
    assert w.client.disconnect is not None
    assert w.client.disconnect[0] == transport.DISCONNECT_SERVICE_NOT_AVAILABLE
