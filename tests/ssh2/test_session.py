"""Session channels: requests reach the target, output and exit reach the client, and flow
control holds in both directions."""

from __future__ import annotations

import struct

from twisted.conch.ssh import common, connection

from protocols.session import PtyRequest, WindowSize
from tests.support.doubles import FakeProducer
from tests.support.ssh2.harness import FakePortal, exit_info, wire


def logged_in(**kw):
    w = wire(password=b"secret", **kw)
    assert w.conn.started
    return w


def start(w, command=b"cmd", **kw):
    session = w.open_session(**kw)
    session.request(b"exec", common.NS(command))
    w.flush()
    assert session.replies == [True]
    target = w.portal.users["alice"].targets[-1]
    return session, target


def pty_req(term=b"xterm-256color", cols=80, rows=24, modes=b""):
    return common.NS(term) + struct.pack(">4L", cols, rows, 640, 480) + common.NS(modes)


def test_exec_stdout_stderr_exit_status_in_order():
    w = logged_in()
    session, target = start(w, b"echo hi; echo err >&2; exit 3")
    assert target.request.command == b"echo hi; echo err >&2; exit 3"
    target.client.write_stdout(b"hi\n")
    target.client.write_stderr(b"err\n")
    target.client.exited(exit_info(3))
    w.flush()
    assert bytes(session.out) == b"hi\n"
    assert bytes(session.err) == b"err\n"
    assert session.exit_status == 3
    assert session.events == ["data", "ext", "eof", "exit-status", "closed"]
    assert target.closed


def test_exit_signal():
    w = logged_in()
    session, target = start(w)
    target.client.exited(exit_info(signal="TERM", core_dumped=True, message="killed"))
    w.flush()
    assert session.exit_signal == (b"TERM", True, b"killed")
    assert session.exit_status is None
    assert session.is_closed


def test_target_that_ends_at_once_still_gets_its_reply_first():
    def fail_fast(target, client):
        client.write_stderr(b"cannot start\n")
        client.exited(exit_info(1))

    w = logged_in(portal=FakePortal(on_open=fail_fast))
    session = w.open_session()
    session.request(b"exec", common.NS(b"x"))
    w.flush()
    assert session.replies == [True]
    assert bytes(session.err) == b"cannot start\n"
    assert session.exit_status == 1
    assert session.is_closed


def test_pty_env_window_change_and_signal_reach_the_target():
    w = logged_in()
    session = w.open_session()
    modes = bytes([128]) + struct.pack(">L", 38400) + bytes([3]) + struct.pack(">L", 127) + bytes([0])
    session.request(b"pty-req", pty_req(modes=modes))
    session.request(b"env", common.NS(b"LANG") + common.NS(b"C.UTF-8"))
    session.request(b"env", common.NS(b"LD_PRELOAD") + common.NS(b"/tmp/evil.so"))
    session.request(b"shell")
    w.flush()
    assert session.replies == [True, True, False, True]
    target = w.portal.users["alice"].targets[-1]
    assert target.request.command is None
    assert target.request.pty == PtyRequest(
        term="xterm-256color", size=WindowSize(rows=24, cols=80, xpixel=640, ypixel=480),
        modes=((128, 38400), (3, 127)),
    )
    assert target.request.env == {"LANG": "C.UTF-8"}
    session.request(b"window-change", struct.pack(">4L", 132, 50, 0, 0), want_reply=False)
    session.request(b"signal", common.NS(b"INT"), want_reply=False)
    w.flush()
    assert target.sizes == [WindowSize(rows=50, cols=132)]
    assert target.signals == ["INT"]


def test_unknown_modes_are_dropped_and_parsing_stops_at_160():
    from protocols.ssh2.session import parse_modes

    encoded = (
        bytes([1]) + struct.pack(">L", 3)
        + bytes([99]) + struct.pack(">L", 5)  # undefined opcode below 160: skipped
        + bytes([42]) + struct.pack(">L", 1)
        + bytes([160]) + b"garbage"
    )
    assert parse_modes(encoded) == ((1, 3), (42, 1))


def test_second_exec_and_late_pty_are_refused():
    w = logged_in()
    session, target = start(w)
    session.request(b"exec", common.NS(b"again"))
    session.request(b"pty-req", pty_req())
    session.request(b"x11-req", b"")
    w.flush()
    assert session.replies == [True, False, False, False]
    assert len(w.portal.users["alice"].targets) == 1


def test_malformed_request_is_refused_not_fatal():
    w = logged_in()
    session = w.open_session()
    session.request(b"pty-req", common.NS(b"xterm") + b"\x00\x00")  # truncated sizes
    session.request(b"env", struct.pack(">L", 10**6) + b"x")  # length beyond the packet
    w.flush()
    assert session.replies == [False, False]
    assert w.client.disconnect is None


def test_stdin_and_eof_reach_the_target():
    w = logged_in()
    session, target = start(w, b"cat")
    session.write(b"hello ")
    session.write(b"world")
    w.conn.sendEOF(session)
    w.flush()
    assert bytes(target.stdin) == b"hello world"
    assert target.eof


def test_several_channels_per_connection():
    w = logged_in()
    (s1, t1), (s2, t2) = start(w, b"one"), start(w, b"two")
    t2.client.write_stdout(b"2")
    t1.client.write_stdout(b"1")
    t1.client.exited(exit_info(0))
    w.flush()
    assert (bytes(s1.out), bytes(s2.out)) == (b"1", b"2")
    assert s1.is_closed and not s2.is_closed
    t2.client.exited(exit_info(4))
    w.flush()
    assert s2.exit_status == 4


def test_channel_limit_and_unknown_channel_types():
    from tests.support.ssh2.harness import ClientSession

    w = logged_in()
    failed = []

    class Refused(ClientSession):
        def openFailed(self, reason):
            failed.append(reason)

    class Forward(Refused):
        name = b"direct-tcpip"

    class Unknown(Refused):
        name = b"x11"

    # direct-tcpip is a known type, refused here (this avatar offers no forwarding).
    w.conn.openChannel(Forward(conn=w.conn))
    w.conn.openChannel(Unknown(conn=w.conn))
    w.flush()
    for _ in range(10):
        w.open_session()
    w.conn.openChannel(Refused(conn=w.conn))
    w.flush()
    assert [f.data for f in failed] == [
        connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
        connection.OPEN_UNKNOWN_CHANNEL_TYPE,
        connection.OPEN_RESOURCE_SHORTAGE,
    ]


def test_exit_status_after_the_clients_close_goes_before_our_close():
    # PuTTY and OpenSSH (multiplexed) send CLOSE once EOF went both ways, which can be
    # before the program ended: its status must still reach them, ahead of our CLOSE.
    w = logged_in()
    session, target = start(w, b"exec >/dev/null 2>&1; sleep 1; exit 3")
    target.client.send_eof()  # the program closed its output
    w.conn.sendEOF(session)
    w.conn.sendClose(session)
    w.flush()
    assert session.events == ["eof"]
    assert not target.closed  # the program is not stopped
    w.advance(1)
    target.client.write_stdout(b"dropped")  # output after the client's CLOSE goes nowhere
    target.client.exited(exit_info(3))
    w.flush()
    assert session.exit_status == 3
    assert session.events == ["eof", "exit-status", "closed"]
    assert target.closed
    assert [c for c in w.clock.getDelayedCalls() if "exit_wait" in repr(c)] == []


def test_exit_signal_after_the_clients_close():
    w = logged_in()
    session, target = start(w)
    w.conn.sendClose(session)
    w.flush()
    assert target.eof  # the client sends nothing more: the program gets EOF
    target.client.exited(exit_info(signal="HUP"))
    w.flush()
    assert session.exit_signal == (b"HUP", False, b"")
    assert session.events == ["exit-signal", "closed"]


def test_program_that_does_not_end_after_the_clients_close_is_stopped():
    from protocols.ssh2.session import EXIT_STATUS_WAIT

    w = logged_in()
    session, target = start(w, b"sleep 1000")
    w.conn.sendClose(session)
    w.flush()
    w.advance(EXIT_STATUS_WAIT - 0.5)
    assert not target.closed and not session.is_closed
    w.advance(0.5)
    assert target.closed
    assert session.is_closed
    assert session.exit_status is None and session.exit_signal is None
    target.client.exited(exit_info(0))  # too late: nothing more is sent, nothing breaks
    w.flush()
    assert session.events == ["closed"]


def test_clients_close_unblocks_output_held_by_the_window():
    w = logged_in()
    StingyClientConnection.install(w.conn)
    session, target = start(w, localWindow=32 * 1024)
    producer = FakeProducer()
    target.client.registerProducer(producer, True)
    target.client.write_stdout(b"x" * 40 * 1024)
    w.flush()
    assert producer.paused
    w.conn.sendClose(session)
    w.flush()
    assert not producer.paused  # the rest is read and dropped, so the program can end
    assert not w.server_channel().buf
    target.client.exited(exit_info(0))
    w.flush()
    assert session.exit_status == 0 and session.is_closed


def test_exit_held_by_the_window_goes_at_once_when_the_client_closes():
    w = logged_in()
    StingyClientConnection.install(w.conn)
    session, target = start(w, localWindow=32 * 1024)
    target.client.write_stdout(b"y" * 48 * 1024)
    target.client.exited(exit_info(5))
    w.flush()
    assert session.exit_status is None
    w.conn.sendClose(session)
    w.flush()
    assert session.exit_status == 5
    assert session.events[-2:] == ["exit-status", "closed"]


def test_client_close_before_any_program_closes_at_once():
    w = logged_in()
    session = w.open_session()
    w.conn.sendClose(session)
    w.flush()
    assert session.is_closed
    assert w.portal.users == {} or w.portal.users["alice"].targets == []


def test_connection_loss_closes_every_target():
    w = logged_in()
    (_, t1), (_, t2) = start(w), start(w)
    w.client.transport.loseConnection()
    w.flush()
    assert t1.closed and t2.closed


class StingyClientConnection:
    """Stops the client from granting window (a client that does not read)."""

    @staticmethod
    def install(conn):
        conn.hold = True
        original = conn.adjustWindow

        def adjust(channel, n):
            if not conn.hold:
                original(channel, n)

        conn.adjustWindow = adjust
        return original


def test_exhausted_client_window_pauses_the_target_and_resumes_it():
    w = logged_in()
    adjust = StingyClientConnection.install(w.conn)
    session, target = start(w, localWindow=64 * 1024)
    producer = FakeProducer()
    target.client.registerProducer(producer, True)
    chunk = b"x" * 16 * 1024
    for _ in range(4):
        target.client.write_stdout(chunk)
    w.flush()
    assert not producer.paused  # exactly the window: nothing buffered yet
    target.client.write_stdout(chunk)  # one more than the window
    w.flush()
    assert producer.paused
    assert len(session.out) == 64 * 1024
    channel = w.server_channel()
    assert len(channel.buf) == 16 * 1024  # bounded: one write beyond the window
    w.conn.hold = False
    adjust(session, 64 * 1024)
    w.flush()
    assert not producer.paused
    assert len(session.out) == 80 * 1024
    assert not channel.buf


def test_exit_waits_for_buffered_output():
    w = logged_in()
    adjust = StingyClientConnection.install(w.conn)
    session, target = start(w, localWindow=32 * 1024)
    target.client.write_stdout(b"y" * 48 * 1024)
    target.client.exited(exit_info(0))
    w.flush()
    assert "eof" not in session.events and not session.is_closed
    w.conn.hold = False
    adjust(session, 32 * 1024)
    w.flush()
    assert len(session.out) == 48 * 1024
    assert session.events[-3:] == ["eof", "exit-status", "closed"]


def test_input_back_pressure_stops_window_adjust():
    w = logged_in()
    session, target = start(w, b"sleep 100")
    channel = w.server_channel()
    window = channel.localWindowSize
    assert window >= 2 * 1024 * 1024 and channel.localMaxPacket == 32 * 1024
    target.producer.pauseProducing()  # the program does not read stdin
    data = b"z" * (3 * window)
    session.write(data)
    w.flush()
    # The client stopped at the window and keeps the rest; the target got at most a window.
    assert len(target.stdin) == window
    assert len(session.buf) == 2 * window
    assert channel.localWindowLeft == 0
    target.producer.resumeProducing()
    w.flush()
    assert len(target.stdin) == 3 * window
    assert bytes(target.stdin) == data


def test_client_data_beyond_window_closes_the_channel():
    w = logged_in()
    session, target = start(w)
    channel = w.server_channel()
    target.producer.pauseProducing()
    channel.localWindowLeft = 10
    w.conn.sendData(session, b"q" * 100)
    w.flush()
    assert len(target.stdin) == 0
    assert session.is_closed


def test_full_tcp_send_buffer_pauses_every_session():
    w = logged_in()
    (_, t1), (_, t2) = start(w), start(w)
    p1, p2 = FakeProducer(), FakeProducer()
    t1.client.registerProducer(p1, True)
    t2.client.registerProducer(p2, True)
    assert w.server.transport.producer is w.transport  # registered with the TCP transport
    w.transport.pauseProducing()
    assert p1.paused and p2.paused
    (_, t3) = start(w)  # a session opened meanwhile starts paused
    p3 = FakeProducer()
    t3.client.registerProducer(p3, True)
    assert p3.paused
    w.transport.resumeProducing()
    assert not (p1.paused or p2.paused or p3.paused)


def test_tcp_resume_keeps_a_window_blocked_session_paused():
    w = logged_in()
    StingyClientConnection.install(w.conn)
    session, target = start(w, localWindow=32 * 1024)
    producer = FakeProducer()
    target.client.registerProducer(producer, True)
    target.client.write_stdout(b"x" * 40 * 1024)
    w.flush()
    assert producer.paused
    w.transport.pauseProducing()
    w.transport.resumeProducing()
    assert producer.paused  # still no window
    assert producer.resumes == 0


def test_disconnect_unregisters_from_the_tcp_transport():
    from protocols.auth import AuthLimits

    w = wire(login=False, limits=AuthLimits(grace_time=5.0))
    assert w.server.transport.producer is w.transport
    w.advance(6)
    assert w.server.transport.producer is None


def test_shutdown_drain_hook_tells_each_session_then_disconnects_by_application():
    """IDrainable: no session before a channel is open; then the message reaches the
    session's stderr and the clean close is DISCONNECT reason 11 (by application)."""
    from twisted.conch.ssh import transport
    from zope.interface.verify import verifyObject

    from protocols.handoff import IDrainable

    w = logged_in()
    server = w.transport
    assert verifyObject(IDrainable, server)
    assert not server.has_session()
    session, _ = start(w)
    assert server.has_session()
    server.tell_sessions("gateway going down")
    w.flush()
    assert bytes(session.err) == b"gateway going down\r\n"
    server.disconnect_by_application("going down")
    w.flush()
    assert w.client.disconnect == (transport.DISCONNECT_BY_APPLICATION, b"going down")
    assert w.record.close_reason == "going down"


def test_the_request_carries_the_connections_addresses():
    # What the local target turns into SSH_CLIENT and SSH_CONNECTION: the client connection's
    # two ends as its transport reports them.
    from twisted.internet.address import IPv4Address

    from protocols.session import ConnectionAddresses

    w = logged_in()
    w.pump.serverIO.peerAddress = IPv4Address("TCP", "192.0.2.7", 50123)
    w.pump.serverIO.hostAddress = IPv4Address("TCP", "198.51.100.1", 2222)
    session, target = start(w, b"echo $SSH_CONNECTION")
    assert target.request.addresses == ConnectionAddresses("192.0.2.7", 50123, "198.51.100.1", 2222)
