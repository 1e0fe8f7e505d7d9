"""The passive SFTP observer (gateway.sftp_watch), in memory: the files a relayed SFTP
session moves (put: acknowledged WRITE data; get: DATA replies), a failed OPEN, packets
split at every byte, hostile lengths and the other surprises that make it stop watching
with one log line, its bounds; the taps forward every call unchanged (verifyObject)."""

from __future__ import annotations

import struct

import pytest
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from gateway import sftp_watch
from gateway.sftp_watch import (
    FXF_READ,
    FXF_WRITE,
    MAX_PACKET,
    SftpWatch,
    WatchedClient,
    WatchedTarget,
    watch_session,
)
from protocols.session import ExitInfo, ISessionClient, ISessionTarget, WindowSize
from tests.support.doubles import FakeProducer, FakeSessionClient, FakeSessionTarget
from tests.support.sftp_packets import (
    close,
    get_steps,
    handle_reply,
    init,
    open_,
    packet,
    put_steps,
    status,
    string,
    version,
    write,
)


class Watched:
    def __init__(self) -> None:
        self.files: list[tuple[str, str, int, str]] = []
        self.watch = SftpWatch(lambda *file: self.files.append(file), "alice on host2")

    def exchange(self, *steps: tuple[str, bytes], split: int | None = None) -> None:
        for side, data in steps:
            feed = self.watch.client_bytes if side == "c" else self.watch.server_bytes
            if split is None:
                feed(data)
            else:
                for at in range(0, len(data), split):
                    feed(data[at : at + split])


@pytest.fixture
def logs():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: [formatEvent(e) for e in events if "sftp-watch" in formatEvent(e)]
    globalLogPublisher.removeObserver(events.append)


# -- what is counted -----------------------------------------------------------------------------


def test_a_put_counts_the_acknowledged_write_data():
    w = Watched()
    w.exchange(*put_steps())
    assert w.files == [("put", "up.bin", 32868, "ok")]
    assert w.watch.stopped is None


def test_a_get_counts_the_data_replies_not_the_reads_asked():
    w = Watched()
    w.exchange(*get_steps())
    assert w.files == [("get", "/tmp/down.bin", 33768, "ok")]


@pytest.mark.parametrize("steps", [put_steps, get_steps])
def test_packets_split_at_every_byte_give_the_same_record(steps):
    whole, bytewise = Watched(), Watched()
    whole.exchange(*steps())
    bytewise.exchange(*steps(), split=1)
    assert bytewise.files == whole.files != []


def test_a_failed_open_is_noted_with_the_servers_status():
    w = Watched()
    w.exchange(("c", init()), ("s", version()), ("c", open_(1, b"/etc/shadow", FXF_READ)),
               ("s", status(1, 3, b"Permission denied")))  # fmt: skip
    assert w.files == [("get", "/etc/shadow", 0, "permission denied")]


def test_a_refused_write_makes_the_file_failed_and_is_not_counted():
    w = Watched()
    w.exchange(*put_steps()[:6], ("s", status(10, 4, b"disk full")), ("s", status(11)),
               ("c", close(99, b"H1")), ("s", status(99)))  # fmt: skip
    assert w.files == [("put", "up.bin", 100, "failure")]


def test_a_file_still_open_when_the_session_ends_is_noted_as_not_closed():
    w = Watched()
    w.exchange(*put_steps()[:7])  # the first write acknowledged, the second not yet
    w.watch.finish()
    assert w.files == [("put", "up.bin", 32768, "not closed")]


def test_a_read_write_open_is_a_put_and_an_open_without_either_is_not_watched():
    w = Watched()
    w.exchange(("c", init()), ("s", version()),
               ("c", open_(1, b"rw", FXF_READ | FXF_WRITE)), ("s", handle_reply(1, b"A")),
               ("c", open_(2, b"none", 0)), ("s", handle_reply(2, b"B")),
               ("c", close(3, b"A")), ("s", status(3)), ("c", close(4, b"B")), ("s", status(4)))  # fmt: skip
    assert w.files == [("put", "rw", 0, "ok")]


# -- giving up -------------------------------------------------------------------------------------


def hostile_cases():
    big = struct.pack(">IB", MAX_PACKET + 1, 6)
    return {
        "a length over the bound": [("c", init()), ("s", version()), ("c", big)],
        "a zero length": [("c", init()), ("s", version()), ("s", struct.pack(">IB", 0, 0))],
        "version 6": [("c", init()), ("s", version(6))],
        "no INIT first": [("c", open_(1, b"x", FXF_READ))],
        "a handle over 256 bytes": [
            ("c", init()), ("s", version()), ("c", open_(1, b"x", FXF_READ)),
            ("s", handle_reply(1, b"h" * 257)),
        ],
        "a string longer than its packet": [
            ("c", init()), ("s", version()),
            ("c", packet(3, struct.pack(">II", 1, 1000) + b"short")),
        ],
        "a WRITE data longer than its packet": [
            *put_steps()[:4], ("c", packet(6, struct.pack(">I", 5) + string(b"H1")
                                             + struct.pack(">QI", 0, 9999) + b"abc")),
        ],
    }  # fmt: skip


@pytest.mark.parametrize("case", list(hostile_cases()))
def test_hostile_input_stops_the_watch_with_one_log_line(case, logs):
    w = Watched()
    w.exchange(*hostile_cases()[case])
    assert w.watch.stopped is not None
    (line,) = logs()
    assert line.startswith("sftp-watch: alice on host2: stopped watching the SFTP stream: ")
    # after that, nothing is parsed, nothing is noted, nothing raised
    w.exchange(*put_steps(), ("c", b"\xff" * 100000))
    w.watch.finish()
    assert w.files == []
    assert len(logs()) == 1


def test_a_huge_length_is_refused_before_anything_is_kept():
    w = Watched()
    w.exchange(("c", init()), ("s", version()))
    w.watch.client_bytes(struct.pack(">IB", 0xFFFFFFFF, 3) + b"\x00" * 10)
    assert w.watch.stopped == f"a packet of {0xFFFFFFFF} bytes"
    assert len(w.watch._client.kept) == 0


def test_what_is_kept_of_a_write_is_its_header_never_its_data():
    w = Watched()
    w.exchange(*put_steps()[:4])
    w.watch.client_bytes(write(5, b"H1", 0, b"z" * 200000)[:150000])
    reader = w.watch._client
    assert len(reader.kept) == 0 and reader.skip == 27 + 200000 - 150000  # 27: header


def test_requests_in_flight_are_bounded(monkeypatch, logs):
    monkeypatch.setattr(sftp_watch, "MAX_PENDING", 3)
    w = Watched()
    w.exchange(("c", init()), ("s", version()),
               *[("c", open_(n, b"f", FXF_READ)) for n in range(4)])  # fmt: skip
    assert w.watch.stopped == "more than 3 requests awaiting a reply"
    assert w.watch._pending == {}


def test_open_files_are_bounded(monkeypatch):
    monkeypatch.setattr(sftp_watch, "MAX_HANDLES", 2)
    w = Watched()
    steps = [("c", init()), ("s", version())]
    for n in range(3):
        steps += [("c", open_(n, b"f", FXF_READ)), ("s", handle_reply(n, bytes([n])))]
    w.exchange(*steps)
    assert w.watch.stopped == "more than 2 files open"


def test_a_bug_in_the_watcher_stops_it_and_never_reaches_the_stream(monkeypatch, logs):
    def broken(*args):
        raise KeyError("boom")

    w = Watched()
    monkeypatch.setattr(w.watch, "_server_packet", broken)
    w.watch._server.on_packet = broken
    w.exchange(("c", init()), ("s", version()))
    assert w.watch.stopped == "KeyError: 'boom'"


# -- the taps ---------------------------------------------------------------------------------------


def tapped():
    files: list = []
    client = FakeSessionClient()
    client.flow_id = "flow-1"  # type: ignore[attr-defined]
    targets: list[FakeSessionTarget] = []

    def start(watched):
        targets.append(FakeSessionTarget(None, watched))  # type: ignore[arg-type]
        return targets[0]

    session = watch_session(client, start, lambda *f: files.append(f), "alice on local")
    return session, targets[0], client, files


def test_the_taps_provide_the_session_interfaces():
    session, target, client, _ = tapped()
    assert isinstance(session, WatchedTarget) and isinstance(target.client, WatchedClient)
    assert verifyObject(ISessionTarget, session)
    assert verifyObject(ISessionClient, target.client)
    assert target.client.flow_id == "flow-1" and target.client.description == "fake client"


def test_the_taps_forward_every_call_unchanged_and_watch_the_bytes():
    session, target, client, files = tapped()
    watched = target.client
    steps = put_steps()
    for side, data in steps:
        if side == "c":
            session.write_stdin(data)
        else:
            watched.write_stdout(data)
    assert bytes(target.stdin) == b"".join(d for s, d in steps if s == "c")
    assert bytes(client.out) == b"".join(d for s, d in steps if s == "s")
    producer, other = FakeProducer(), FakeProducer()
    session.registerProducer(producer, True)
    watched.registerProducer(other, True)
    assert target.producer is producer and client.producer is other
    session.unregisterProducer()
    watched.unregisterProducer()
    assert target.producer is None and client.producer is None
    session.resize(WindowSize(80, 24, 0, 0))
    session.send_signal("TERM")
    session.close_stdin()
    session.close()
    assert target.calls == [WindowSize(80, 24, 0, 0), ("signal", "TERM"), "eof", "close"]
    watched.write_stderr(b"oops")
    watched.send_eof()
    watched.exited(ExitInfo(status=0))
    assert (bytes(client.err), client.eof, client.exit) == (b"oops", True, ExitInfo(status=0))
    assert files == [("put", "up.bin", 32868, "ok")]
