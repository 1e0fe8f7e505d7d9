"""Session recordings in memory: sessions routed by the Router with the recorder's tap on a
task.Clock, its writer run by the test (ManualWriter), files in tmp_path. What the file
holds (asciicast v2), when it is written, what is and is not recorded, and what happens
when the disk is slow, full or read-only: the session goes on, the recording says it was
truncated and a RECORDING_TRUNCATED event is logged."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

import gateway.recording as recording_module
from gateway.config import parse_config
from gateway.events import RECORDING_TRUNCATED, event_of
from gateway.recording import (
    COALESCE_BYTES,
    COALESCE_INTERVAL,
    FLUSH_BYTES,
    FLUSH_INTERVAL,
    RETENTION_INTERVAL,
    BackgroundWriter,
    CastFile,
    RecordingTap,
    apply_retention,
    wants_recording,
)
from gateway.routing import Router
from gateway.session_tap import SessionInfo
from protocols.flow import FlowRecorder
from protocols.session import ExitInfo, PtyRequest, SessionRequest, WindowSize
from tests.support.doubles import FakeSessionClient, FakeTarget, ManualWriter
from tests.support.gateway_helpers import LOCAL_ACCESS, ROUTED_TARGETS, fast_hash

PTY = PtyRequest("xterm-256color", WindowSize(24, 80))


def config_text(state_dir: Path, recording: str = "", alice: str = "", sw1: str = "") -> str:
    targets = ROUTED_TARGETS.replace(
        '[targets.sw1]\nprotocol = "ssh1"\n', f'[targets.sw1]\nprotocol = "ssh1"\n{sw1}\n'
    )
    return (
        f"""
state_dir = "{state_dir}"

[recording]
{recording}

[users.alice]
password = "{fast_hash("pw")}"
targets = ["sw1", "host2"]
{alice}

[users.erin]
password = "{fast_hash("pw")}"
{LOCAL_ACCESS}"""
        + targets
    )


class Gateway:
    """A Router over fake targets with the recorder's tap, on a Clock."""

    def __init__(self, tmp_path: Path, writer=None, **tap_options) -> None:
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.writer = writer if writer is not None else ManualWriter(synchronous=True)
        self.config = parse_config(config_text(tmp_path / "state", **self.config_options))
        self.tap = RecordingTap(self.config, self.clock, self.writer, **tap_options)
        self.targets = {name: FakeTarget(name) for name in self.config.targets}
        self.router = Router(self.config, self.targets, self.clock)
        self.router.session_taps = [self.tap]

    config_options: dict = {}

    def open(self, request: SessionRequest, target: str = "sw1", user: str = "alice"):
        client = FakeSessionClient()
        session = self.router.open_session(user, request, client, target=target)
        opened = self.targets[target].opened[-1]
        return client, session, opened


def gateway_with(tmp_path: Path, writer=None, **config_options) -> Gateway:
    class Configured(Gateway):
        pass

    Configured.config_options = config_options
    return Configured(tmp_path, writer)


def read_cast(path: Path) -> tuple[dict, list[list]]:
    text = path.read_bytes().decode("utf-8")  # strict: asciinema reads the file so
    lines = text.splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def the_cast(tmp_path: Path) -> Path:
    [path] = (tmp_path / "state" / "recordings").glob("*.cast")
    return path


@pytest.fixture
def events(monkeypatch):
    seen: list[dict] = []
    monkeypatch.setattr(recording_module, "log", Logger(observer=seen.append))
    return seen


def truncations(events: list[dict]) -> list[dict]:
    return [e for e in events if event_of(e) == RECORDING_TRUNCATED]


def test_a_terminal_session_becomes_an_asciicast_v2_file(tmp_path):
    gw = Gateway(tmp_path)
    flow = FlowRecorder("server", "192.0.2.7:40000", "ssh2")
    client = FakeSessionClient()
    client.flow_id = flow.id
    session = gw.router.open_session("alice", SessionRequest(pty=PTY), client, target="sw1")
    opened = gw.targets["sw1"].opened[-1]
    gw.clock.advance(0.5)
    opened.client.write_stdout(b"$ ")
    session.write_stdin(b"secret typed at a prompt\r")
    gw.clock.advance(0.25)
    session.resize(WindowSize(30, 100))
    gw.clock.advance(0.25)
    opened.client.write_stdout(b"bye\r\n")
    opened.client.exited(ExitInfo(status=0))

    path = the_cast(tmp_path)
    live = opened.client._session  # the LiveSession behind the tapped client
    assert live.recording == str(path)
    assert path.name == f"{flow.id}.{live.info.session_id}.cast"
    header, events = read_cast(path)
    assert header == {
        "version": 2,
        "width": 80,
        "height": 24,
        "timestamp": int(live.info.started),
        "title": "alice -> sw1",
        "env": {"TERM": "xterm-256color"},
    }
    assert events == [[0.5, "o", "$ "], [0.75, "r", "100x30"], [1.0, "o", "bye\r\n"]]
    # input is off by default: what was typed is not in the file
    assert b"secret" not in path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # the session itself is untouched
    assert client.out == b"$ bye\r\n" and opened.stdin == b"secret typed at a prompt\r"
    assert gw.tap.recordings == set()


def test_input_is_recorded_only_when_asked(tmp_path):
    gw = gateway_with(tmp_path, recording="input = true")
    _, session, opened = gw.open(SessionRequest(pty=PTY))
    session.write_stdin(b"show run\r")
    opened.client.exited(ExitInfo(status=0))
    _, events = read_cast(the_cast(tmp_path))
    assert events == [[0.0, "i", "show run\r"]]


def test_an_exec_session_has_its_command_in_the_header_and_stderr_marked(tmp_path):
    gw = Gateway(tmp_path)
    _, _, opened = gw.open(SessionRequest(command=b"show version"), target="host2")
    opened.client.write_stdout(b"IOS 12.4\n")
    opened.client.write_stderr(b"% warning\n")
    opened.client.exited(ExitInfo(status=1))
    header, events = read_cast(the_cast(tmp_path))
    assert header["command"] == "show version"
    assert header["title"] == "alice -> host2: show version"
    assert (header["width"], header["height"]) == (80, 24) and header["env"] == {}
    assert events == [
        [0.0, "o", "IOS 12.4\n"],
        [0.0, "m", "stderr"],
        [0.0, "o", "% warning\n"],
    ]


def test_a_local_session_names_the_accounts_shell(tmp_path):
    gw = Gateway(tmp_path)
    _, _, opened = gw.open(SessionRequest(pty=PTY), target="local", user="erin")
    opened.client.exited(ExitInfo(status=0))
    header, _ = read_cast(the_cast(tmp_path))
    import pwd

    assert header["env"]["SHELL"] == pwd.getpwuid(os.geteuid()).pw_shell


def test_output_that_is_no_utf8_still_makes_valid_json(tmp_path):
    gw = Gateway(tmp_path)
    _, _, opened = gw.open(SessionRequest(pty=PTY))
    euro = "€".encode()
    opened.client.write_stdout(b"price " + euro[:2])  # a character split across writes
    opened.client.write_stdout(euro[2:] + b" \xff\xfe bad \x1b[0m")
    opened.client.write_stdout(b"cut \xe2\x82")  # a character the session never finished
    opened.client.exited(ExitInfo(status=0))
    _, events = read_cast(the_cast(tmp_path))
    text = "".join(e[2] for e in events if e[1] == "o")
    assert text == "price € \ufffd\ufffd bad \x1b[0mcut \ufffd"


def test_sftp_and_other_subsystem_sessions_are_not_recorded(tmp_path):
    gw = Gateway(tmp_path)
    client = FakeSessionClient()
    gw.router.open_session("alice", SessionRequest(subsystem="sftp"), client, target="host2")
    assert not (tmp_path / "state" / "recordings").exists()
    assert gw.writer.jobs == []


@pytest.mark.parametrize(
    ("enabled", "user", "target", "recorded"),
    [
        ("true", None, None, True),
        ("false", None, None, False),
        ("true", False, None, False),
        ("true", None, False, False),
        ("false", True, None, True),
        ("false", None, True, True),
        # when both say something and differ, true wins
        ("true", True, False, True),
        ("true", False, True, True),
        ("false", False, False, False),
    ],
)
def test_who_is_recorded(tmp_path, enabled, user, target, recorded):
    def record(value):
        return "" if value is None else f"record = {str(value).lower()}"

    config = parse_config(
        config_text(tmp_path, f"enabled = {enabled}", alice=record(user), sw1=record(target))
    )
    info = SessionInfo("s1", "alice", "sw1", "ssh1", "ssh2", "", None, None, None, PTY)
    assert wants_recording(config, info) is recorded


def test_record_on_the_local_target(tmp_path):
    text = (
        config_text(tmp_path, "enabled = false")
        + '\n[targets.local]\nprotocol = "local"\nrecord = true\n'
    )
    config = parse_config(text)
    assert config.targets["local"].record is True
    info = SessionInfo("s1", "erin", "local", "local", "ssh2", "", None, b"id", None, None)
    assert wants_recording(config, info)


def test_recording_config_defaults_and_checks(tmp_path):
    config = parse_config(config_text(tmp_path))
    assert config.recording.enabled and not config.recording.input
    assert config.recording.dir is None and config.users["alice"].record is None
    assert config.targets["sw1"].record is None
    with pytest.raises(Exception) as problem:
        parse_config(config_text(tmp_path, "max_age_days = -1\nenabled = 1", sw1="record = 2"))
    assert "recording.max_age_days" in str(problem.value)
    assert "recording.enabled: must be true or false" in str(problem.value)
    assert "targets.sw1.record: must be true or false" in str(problem.value)
    config = parse_config(config_text(tmp_path, f'dir = "{tmp_path / "casts"}"'))
    assert recording_module.recordings_dir(config) == tmp_path / "casts"


def test_events_reach_the_file_within_a_second_not_one_write_each(tmp_path):
    writer = ManualWriter()
    gw = Gateway(tmp_path, writer)
    _, _, opened = gw.open(SessionRequest(pty=PTY))
    writer.run_all()  # the file is created with its header
    path = the_cast(tmp_path)
    for n in range(10):
        opened.client.write_stdout(b"line %d\r\n" % n)
        gw.clock.advance(0.05)
    assert writer.jobs == [] and len(read_cast(path)[1]) == 0
    gw.clock.advance(FLUSH_INTERVAL)
    assert len(writer.jobs) == 1  # one write for the ten events
    writer.run_all()
    assert len(read_cast(path)[1]) == 10
    # A busy session hands over chunks of FLUSH_BYTES without waiting for the second.
    opened.client.write_stdout(b"x" * FLUSH_BYTES)
    assert len(writer.jobs) == 1


def test_a_slow_disk_drops_events_not_the_session_and_says_so(tmp_path, events):
    writer = ManualWriter()
    gw = Gateway(tmp_path, writer, limit=4096)
    client, session, opened = gw.open(SessionRequest(pty=PTY))
    writer.run_all()
    chunk = b"y" * 1000
    for _ in range(20):  # the disk takes nothing meanwhile
        opened.client.write_stdout(chunk)
        gw.clock.advance(0.1)
    assert client.out == chunk * 20  # every byte reached the client
    [event] = truncations(events)
    live = opened.client._session
    assert event["session"] == live.info.session_id and event["recording"] == live.recording
    assert "disk is too slow" in event["reason"]
    writer.run_all()  # the disk catches up: recording resumes after a marker
    opened.client.write_stdout(b"after")
    opened.client.exited(ExitInfo(status=0))
    writer.run_all()
    _, cast = read_cast(the_cast(tmp_path))
    codes = [(e[1], e[2][:9]) for e in cast]
    assert ("m", "truncated") in codes
    assert cast[-1][1:] == ["o", "after"]
    assert codes.index(("m", "truncated")) < len(codes) - 1
    assert len(truncations(events)) == 1  # once per recording


class FullDisk(CastFile):
    """A file on a disk that fills up after ``room`` bytes: a write that does not fit
    writes what fits, the next one fails with ENOSPC (as write(2) does)."""

    room = 300

    def _write(self, fd: int, buffers: list[memoryview]) -> int:
        room = self.room - os.fstat(fd).st_size
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, b"".join(buffers)[:room])


def test_a_full_disk_leaves_a_valid_file_and_the_session_goes_on(tmp_path, events):
    gw = Gateway(tmp_path, file_factory=FullDisk)
    client, _, opened = gw.open(SessionRequest(pty=PTY))
    for n in range(20):
        opened.client.write_stdout(b"output line %02d\r\n" % n)
        gw.clock.advance(FLUSH_INTERVAL)
    opened.client.exited(ExitInfo(status=0))
    assert client.exit == ExitInfo(status=0) and client.out.count(b"output line") == 20
    [event] = truncations(events)
    assert event["reason"] == "cannot write: No space left on device"
    header, cast = read_cast(the_cast(tmp_path))  # every line whole and valid
    assert header["version"] == 2 and cast and cast[0][2] == "output line 00\r\n"
    assert gw.tap.recordings == set()


class ShortWrites(CastFile):
    """A file whose every write takes a few bytes of the first buffer only (as write(2)
    may), and that records how many buffers each writev was given."""

    given: list[int] = []

    def _write(self, fd: int, buffers: list[memoryview]) -> int:
        self.given.append(len(buffers))
        assert os.fstat(fd).st_size < 100_000, "the same bytes written again and again"
        return os.write(fd, buffers[0][:3])


def test_a_write_in_many_pieces_and_short_writes_still_makes_the_whole_line(tmp_path):
    pieces = [b"%d," % n for n in range(3000)] + [b"\n"]
    cast = ShortWrites(tmp_path / "r" / "x.cast")
    cast.create(b"header\n")
    cast.append(pieces)
    cast.append(b"single\n")
    cast.close()
    assert (tmp_path / "r" / "x.cast").read_bytes() == b"header\n" + b"".join(pieces) + b"single\n"
    assert max(ShortWrites.given) <= recording_module._IOV_MAX < len(pieces)


class ReadOnly(CastFile):
    def create(self, header: bytes) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.path))


def test_a_file_that_cannot_be_created_means_no_recording_and_an_event(tmp_path, events):
    gw = Gateway(tmp_path, file_factory=ReadOnly)
    client, session, opened = gw.open(SessionRequest(pty=PTY))
    opened.client.write_stdout(b"still works")
    gw.clock.advance(FLUSH_INTERVAL)
    opened.client.exited(ExitInfo(status=0))
    assert client.out == b"still works" and client.exit == ExitInfo(status=0)
    [event] = truncations(events)
    assert event["reason"] == "cannot create the file: Read-only file system"
    assert gw.tap.recordings == set() and gw.writer.jobs == []


def test_a_session_ending_while_its_file_is_created_still_gets_its_events(tmp_path):
    writer = ManualWriter()
    gw = Gateway(tmp_path, writer)
    _, _, opened = gw.open(SessionRequest(command=b"true"))
    opened.client.write_stdout(b"quick")
    opened.client.exited(ExitInfo(status=0))
    writer.run_all()
    assert read_cast(the_cast(tmp_path))[1] == [[0.0, "o", "quick"]]
    assert gw.tap.recordings == set()


def test_a_writer_stuck_on_the_disk_never_stalls_the_reactor(tmp_path, events):
    """The real writer thread, blocked in write(2) (a disk that hangs): the session's output
    keeps flowing on the reactor, the recording is truncated, and once the disk answers the
    file is whole."""
    from tests.support.sshd import close_reactor, fresh_reactor, run_until

    release = threading.Event()

    class StuckDisk(CastFile):
        def append(self, data: bytes) -> None:
            release.wait(30)
            super().append(data)

    reactor = fresh_reactor()
    writer = BackgroundWriter(reactor)
    try:
        config = parse_config(config_text(tmp_path / "state"))
        tap = RecordingTap(config, reactor, writer, limit=64 * 1024, file_factory=StuckDisk)
        targets = {name: FakeTarget(name) for name in config.targets}
        router = Router(config, targets, reactor)
        router.session_taps = [tap]
        client = FakeSessionClient()
        router.open_session("alice", SessionRequest(pty=PTY), client, target="sw1")
        opened = targets["sw1"].opened[-1]
        sent = 0
        started = last = time.monotonic()
        longest = 0.0  # the longest the reactor was away between two turns
        # output for three seconds while the disk hangs (the first write is due after one)
        while last - started < 3.0:
            opened.client.write_stdout(b"z" * 4096)
            sent += 4096
            reactor.iterate(0.001)
            now = time.monotonic()
            longest, last = max(longest, now - last), now
        assert len(client.out) == sent >= 1024 * 1024
        assert longest < 2.0  # (a writer on the reactor thread: 30 s)
        assert run_until(reactor, lambda: truncations(events), 5)
        release.set()
        opened.client.exited(ExitInfo(status=0))
        assert run_until(reactor, lambda: not tap.recordings, 10)
        header, cast = read_cast(the_cast(tmp_path))
        assert header["version"] == 2 and ["m", "truncated"] in [[e[1], e[2][:9]] for e in cast]
    finally:
        release.set()
        writer.stop()
        close_reactor(reactor)


def test_retention_deletes_old_recordings_then_the_oldest_over_the_total(tmp_path):
    now = 1_000_000_000.0
    directory = tmp_path / "recordings"
    directory.mkdir()
    ages = {"ancient": 100, "old": 10, "older": 20, "new": 1, "live": 200}
    for name, days in ages.items():
        path = directory / f"{name}.cast"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - days * 86400, now - days * 86400))
    (directory / "notes.txt").write_text("not a recording")
    os.utime(directory / "notes.txt", (0, 0))
    removed = apply_retention(directory, 90 * 86400, 2500, keep=[directory / "live.cast"], now=now)
    # ancient for its age; then the oldest while the total (the live one counts, it is
    # on the disk, but stays) is over 2500 bytes
    assert sorted(p.name for p in removed) == ["ancient.cast", "old.cast", "older.cast"]
    left = sorted(p.name for p in directory.iterdir())
    assert left == ["live.cast", "new.cast", "notes.txt"]
    assert apply_retention(tmp_path / "missing", 1, 1, now=now) == []


def test_retention_runs_at_start_and_hourly_off_the_reactor(tmp_path):
    writer = ManualWriter()
    gw = gateway_with(tmp_path, writer, recording="max_total_bytes = 1")
    directory = tmp_path / "state" / "recordings"
    directory.mkdir(parents=True)
    (directory / "a.cast").write_text("x")
    (directory / "b.cast").write_text("y")
    gw.tap.start()
    assert len(writer.jobs) == 1 and (directory / "a.cast").exists()  # queued, not run here
    writer.run_all()
    assert len(list(directory.glob("*.cast"))) == 1
    (directory / "c.cast").write_text("z")
    gw.clock.advance(RETENTION_INTERVAL)
    writer.run_all()
    assert len(list(directory.glob("*.cast"))) == 1
    gw.tap.stop()
    assert writer.stopped


def test_a_reload_changes_what_new_sessions_do(tmp_path):
    gw = Gateway(tmp_path)
    gw.tap.reconfigure(parse_config(config_text(tmp_path / "state", "enabled = false")))
    _, _, opened = gw.open(SessionRequest(pty=PTY))
    opened.client.exited(ExitInfo(status=0))
    assert not (tmp_path / "state" / "recordings").exists()


def test_the_service_puts_the_recorder_first(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from gateway.service import build_session_taps

    reactor = MemoryReactorClock()
    taps = build_session_taps(parse_config(config_text(tmp_path)), reactor)
    assert isinstance(taps[0], RecordingTap)
    assert reactor.whenRunningHooks  # retention starts once the reactor runs


def test_one_event_larger_than_the_limit_leaves_a_gap_not_an_end(tmp_path, events):
    gw = Gateway(tmp_path, limit=4096)
    _, _, opened = gw.open(SessionRequest(pty=PTY))
    opened.client.write_stdout(b"w" * 5000)  # nothing waits: only this event is too big
    gw.clock.advance(FLUSH_INTERVAL)
    opened.client.write_stdout(b"later")
    opened.client.exited(ExitInfo(status=0))
    _, cast = read_cast(the_cast(tmp_path))
    assert [e[1] for e in cast] == ["m", "o"] and cast[-1][2] == "later"
    assert len(truncations(events)) == 1


# --- output coalesced into fewer events ----------------------------------------------------


def test_output_close_together_is_one_event_timed_at_its_first_chunk(tmp_path):
    gw = Gateway(tmp_path)
    _, _, opened = gw.open(SessionRequest(pty=PTY))
    gw.clock.advance(1.0)
    step = COALESCE_INTERVAL * 0.4
    for text in (b"ab", b"cd", b"ef", b"gh"):  # at 0, 0.4, 0.8 and 1.2 intervals
        opened.client.write_stdout(text)
        gw.clock.advance(step)
    gw.clock.advance(1.0)
    opened.client.write_stdout(b"later")
    opened.client.exited(ExitInfo(status=0))
    _, cast = read_cast(the_cast(tmp_path))
    assert cast == [
        [1.0, "o", "abcdef"],
        [round(1.0 + 3 * step, 6), "o", "gh"],
        [round(2.0 + 4 * step, 6), "o", "later"],
    ]


def test_a_batch_ends_at_its_size_bound(tmp_path):
    gw = Gateway(tmp_path)
    _, _, opened = gw.open(SessionRequest(pty=PTY))
    chunk = b"0123456789abcdef" * 256  # 4 KiB, all at the same instant
    count = 2 * COALESCE_BYTES // len(chunk) + 1
    for _ in range(count):
        opened.client.write_stdout(chunk)
    opened.client.exited(ExitInfo(status=0))
    _, cast = read_cast(the_cast(tmp_path))
    assert [len(e[2]) for e in cast] == [COALESCE_BYTES, COALESCE_BYTES, len(chunk)]


def test_other_events_end_a_batch_and_keep_their_order(tmp_path):
    gw = gateway_with(tmp_path, recording="input = true")
    _, session, opened = gw.open(SessionRequest(pty=PTY))
    opened.client.write_stdout(b"a")
    opened.client.write_stdout(b"b")
    opened.client.write_stderr(b"c")
    opened.client.write_stderr(b"d")
    opened.client.write_stdout(b"e")
    session.write_stdin(b"q")
    opened.client.write_stdout(b"f")
    session.resize(WindowSize(30, 100))
    opened.client.write_stdout(b"g")
    opened.client.exited(ExitInfo(status=0))
    _, cast = read_cast(the_cast(tmp_path))
    assert [e[1:] for e in cast] == [
        ["o", "ab"],
        ["m", "stderr"],
        ["o", "cd"],
        ["o", "e"],
        ["i", "q"],
        ["o", "f"],
        ["r", "100x30"],
        ["o", "g"],
    ]


def test_a_batch_still_open_reaches_the_file_within_a_second(tmp_path):
    writer = ManualWriter()
    gw = Gateway(tmp_path, writer)
    _, _, opened = gw.open(SessionRequest(pty=PTY))
    writer.run_all()  # the file is created with its header
    opened.client.write_stdout(b"last words before a crash")
    gw.clock.advance(FLUSH_INTERVAL)
    writer.run_all()
    assert read_cast(the_cast(tmp_path))[1] == [[0.0, "o", "last words before a crash"]]


def test_a_character_split_across_two_batches_survives(tmp_path):
    gw = Gateway(tmp_path)
    _, _, opened = gw.open(SessionRequest(pty=PTY))
    euro = "€".encode()
    opened.client.write_stdout(b"a" * COALESCE_BYTES + euro[:1])  # a batch of its own
    opened.client.write_stdout(euro[1:] + b"b")
    opened.client.exited(ExitInfo(status=0))
    _, cast = read_cast(the_cast(tmp_path))
    assert "".join(e[2] for e in cast) == "a" * COALESCE_BYTES + "€b"
    assert len(cast) == 2


# --- the fast path for plain terminal output ------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gateway.recording import _SEARCH_FROM, ascii_event_line, event_line  # noqa: E402

# Terminal-like bytes: printable ASCII, the usual controls, the JSON specials, a few rarer
# controls and bytes past ASCII (which must leave the fast path).
TERMINAL_BYTES = st.binary(max_size=300).map(bytes) | st.lists(
    st.sampled_from(
        [b"a", b"Z", b" ", b"~", b"\n", b"\r", b"\t", b"\x08", b"\x1b", b"[", b'"', b"\\",
         b"/", b"\x7f", b"\x00", b"\x07", b"\x0c", b"\x1f", b"\xc3\xa9", b"\xff"]
    ),
    max_size=200,
).map(b"".join)


@given(TERMINAL_BYTES, st.floats(min_value=0, max_value=1e6), st.booleans())
def test_the_fast_event_line_is_the_json_one_or_steps_aside(data, at, large):
    if large:  # a batch of output: the other controls are looked for another way
        data = b"x" * _SEARCH_FROM + data
    fast = ascii_event_line(at, "o", data)
    if fast is None:
        assert not data.isascii() or any(c < 0x20 and c not in b"\n\r\t\x08\x1b" for c in data)
    else:
        assert fast == event_line(at, "o", data.decode("ascii"))
        assert json.loads(fast)[2] == data.decode("ascii")


def test_plain_output_takes_the_fast_path_and_a_split_character_still_survives():
    assert ascii_event_line(1.0, "o", b'ls -l\r\n\x1b[0m"x"\\') is not None
    assert ascii_event_line(1.0, "o", b"bell\x07") is None
    assert ascii_event_line(1.0, "o", "é".encode()) is None


@pytest.mark.parametrize("size", [0, _SEARCH_FROM], ids=["small", "large"])
def test_every_other_control_character_leaves_the_fast_path(size):
    for code in [*range(0x20), 0x7F]:
        data = b"x" * size + bytes([code]) + b"y"
        fast = ascii_event_line(0.0, "o", data)
        if code in b"\n\r\t\x08\x1b\x7f":
            assert fast == event_line(0.0, "o", data.decode("ascii"))
        else:
            assert fast is None, code
