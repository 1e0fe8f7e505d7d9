"""The rcp state machines (gateway.targets.rcp): in memory with hostile and truncated
input, and against the real system ``scp -f``/``scp -t`` (what the test device runs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gateway.targets import rcp
from tests.support.peers import require_peer


def feed_all(machine: rcp.RcpSink, data: bytes, step: int = 1) -> list:
    events = []
    for at in range(0, len(data), step):
        events += machine.feed(data[at : at + step])
    return events


def data_of(events: list) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, rcp.FileData))


# ----------------------------------------------------------------- sink (scp -f)
@pytest.mark.parametrize("step", [1, 3, 1000])
def test_sink_receives_a_file_in_any_split(step: int) -> None:
    sink = rcp.RcpSink()
    sink.start()
    assert sink.data_to_send() == b"\0"
    events = feed_all(sink, b"C0640 5 name.txt\nhello\0", step)
    assert events[0] == rcp.FileHeader(0o640, 5, b"name.txt")
    assert data_of(events) == b"hello"
    assert isinstance(events[-1], rcp.FileDone)
    assert sink.data_to_send() == b"\0\0"  # header ack, final ack
    assert sink.done


def test_sink_empty_file_and_times_line() -> None:
    sink = rcp.RcpSink()
    events = sink.feed(b"T1 0 2 0\nC0600 0 e\n\0")
    assert events == [rcp.FileHeader(0o600, 0, b"e"), rcp.FileDone()]
    assert sink.data_to_send() == b"\0\0\0"


def test_sink_reports_device_errors() -> None:
    sink = rcp.RcpSink()
    assert sink.feed(b"\x01scp: /x: No such file or directory\n") == [
        rcp.RemoteError("scp: /x: No such file or directory", fatal=False)
    ]
    sink = rcp.RcpSink()
    assert sink.feed(b"No match.\n") == [rcp.RemoteError("No match.", fatal=True)]
    assert sink.done


def test_sink_error_after_the_data() -> None:
    sink = rcp.RcpSink()
    events = sink.feed(b"C0644 3 f\nabc\x01scp: read error: Input/output error\n")
    assert events[-1] == rcp.RemoteError("scp: read error: Input/output error", fatal=False)
    assert not any(isinstance(e, rcp.FileDone) for e in events)


def test_sink_directory_header() -> None:
    sink = rcp.RcpSink()
    assert sink.feed(b"D0755 0 tmp\n") == [rcp.DirectoryHeader(0o755, b"tmp")]


@pytest.mark.parametrize(
    "hostile",
    [
        b"C0644 5\n",  # no name
        b"C9999 5 f\n",  # not octal
        b"C0644 -5 f\n",
        b"C0644 99999999999999999999 f\n",  # past 2**63
        b"C0644 5 ../f\n",
        b"C0644 5 ..\n",
        b"C0644 5 \n",
        b"C0644 1 f\nx\x00more",  # data after the end
    ],
)
def test_sink_hostile_headers_are_protocol_errors(hostile: bytes) -> None:
    sink = rcp.RcpSink()
    with pytest.raises(rcp.RcpProtocolError):
        sink.feed(hostile)


def test_header_only_sink_takes_any_name_and_acknowledges_nothing() -> None:
    sink = rcp.RcpSink(header_only=True)
    sink.start()
    assert sink.feed(b"D0755 0 \n") == [rcp.DirectoryHeader(0o755, b"")]  # scp -r -f /
    assert sink.data_to_send() == b"\0" and sink.done
    sink = rcp.RcpSink(header_only=True)
    assert sink.feed(b"C0600 9 f\n") == [rcp.FileHeader(0o600, 9, b"f")]
    assert sink.data_to_send() == b"" and sink.done


def test_sink_bounds_lines_without_newline() -> None:
    sink = rcp.RcpSink()
    sink.feed(b"C0644 1 " + b"a" * (rcp.MAX_LINE - 100))
    with pytest.raises(rcp.RcpProtocolError, match="too long"):
        sink.feed(b"a" * 200)
    errors = rcp.RcpSink()
    with pytest.raises(rcp.RcpProtocolError, match="too long"):
        errors.feed(b"C0644 1 f\nx\x01" + b"e" * (rcp.MAX_LINE + 1))


def test_sink_truncated_transfer_is_visible() -> None:
    sink = rcp.RcpSink()
    sink.feed(b"C0644 10 f\nabc")
    assert sink.in_file and not sink.done


def test_error_messages_are_printable_and_bounded() -> None:
    sink = rcp.RcpSink()
    (event,) = sink.feed(b"\x01\x1b[31mbad\xff" + b"x" * 5000 + b"\n")
    assert event.message.isprintable() and len(event.message) <= rcp.MAX_MESSAGE


# ----------------------------------------------------------------- source (scp -t)
def test_source_sends_header_then_waits_for_data() -> None:
    source = rcp.RcpSource(0o600, 3, b"f")
    assert source.feed(b"\0") == []
    assert source.data_to_send() == b"C0600 3 f\n"
    assert source.feed(b"\0") == [rcp.Ready()]
    assert source.awaiting_data
    source.end_of_data()
    assert source.data_to_send() == b"\0"
    assert source.feed(b"\0") == [rcp.Stored()]
    assert source.done


def test_source_reports_refusal() -> None:
    source = rcp.RcpSource(0o644, 3, b"f")
    source.feed(b"\0")
    assert source.feed(b"\x01scp: /ro/f: Permission denied\n") == [
        rcp.RemoteError("scp: /ro/f: Permission denied", fatal=False)
    ]
    assert source.done


def test_source_hostile_input() -> None:
    source = rcp.RcpSource(0o644, 3, b"f")
    source.feed(b"\0\0")
    with pytest.raises(rcp.RcpProtocolError):
        source.feed(b"\0")  # nothing is due while we send the data
    with pytest.raises(ValueError):
        rcp.RcpSource(0o644, 1, b"a/b")
    with pytest.raises(ValueError):
        rcp.RcpSource(0o644, 1, b"a\nC0777 1 b")


# ----------------------------------------------------------------- real scp
def scp_binary() -> str:
    return require_peer("scp")["scp"]


def run_sink_against_scp_f(path: Path, cwd: Path) -> tuple[list, int]:
    process = subprocess.Popen(
        [scp_binary(), "-f", str(path)],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin and process.stdout
    sink = rcp.RcpSink()
    sink.start()
    events: list = []
    while not sink.done:
        out = sink.data_to_send()
        if out:
            process.stdin.write(out)
            process.stdin.flush()
        chunk = os.read(process.stdout.fileno(), 65536)
        if not chunk:
            break
        events += sink.feed(chunk)
        if any(isinstance(e, rcp.RemoteError) for e in events):
            break
    process.stdin.write(sink.data_to_send())
    process.stdin.close()
    return events, process.wait(timeout=10)


@pytest.mark.peer
def test_sink_against_real_scp_f(tmp_path: Path) -> None:
    content = os.urandom(1024 * 1024 + 7)
    source = tmp_path / "big.bin"
    source.write_bytes(content)
    source.chmod(0o640)
    events, status = run_sink_against_scp_f(source, tmp_path)
    assert events[0] == rcp.FileHeader(0o640, len(content), b"big.bin")
    assert data_of(events) == content
    assert isinstance(events[-1], rcp.FileDone)
    assert status == 0


@pytest.mark.peer
def test_sink_against_real_scp_f_missing_file(tmp_path: Path) -> None:
    events, status = run_sink_against_scp_f(tmp_path / "nope", tmp_path)
    (error,) = events
    assert isinstance(error, rcp.RemoteError) and "No such file or directory" in error.message
    assert status != 0


@pytest.mark.peer
def test_source_against_real_scp_t(tmp_path: Path) -> None:
    content = os.urandom(1024 * 1024 + 3)
    target = tmp_path / "up.bin"
    process = subprocess.Popen(
        [scp_binary(), "-t", str(target)],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin and process.stdout
    source = rcp.RcpSource(0o600, len(content), b"ignored-name")
    events: list = []
    while not source.done:
        chunk = os.read(process.stdout.fileno(), 65536)
        assert chunk, process.stderr.read() if process.stderr else ""
        events += source.feed(chunk)
        process.stdin.write(source.data_to_send())
        if events and isinstance(events[-1], rcp.Ready):
            process.stdin.write(content)
            source.end_of_data()
            process.stdin.write(source.data_to_send())
        process.stdin.flush()
    assert events == [rcp.Ready(), rcp.Stored()]
    process.stdin.close()
    assert process.wait(timeout=10) == 0
    assert target.read_bytes() == content
    assert target.stat().st_mode & 0o777 == 0o600


@pytest.mark.peer
def test_source_against_real_scp_t_refused(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [scp_binary(), "-t", str(tmp_path / "missing-dir" / "f")],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin and process.stdout
    source = rcp.RcpSource(0o644, 1, b"f")
    events: list = []
    while not source.done:
        chunk = os.read(process.stdout.fileno(), 65536)
        assert chunk
        events += source.feed(chunk)
        process.stdin.write(source.data_to_send())
        process.stdin.flush()
        if events and isinstance(events[-1], rcp.Ready):
            process.stdin.write(b"x")
            source.end_of_data()
            process.stdin.write(source.data_to_send())
            process.stdin.flush()
    process.stdin.close()
    process.wait(timeout=10)
    assert isinstance(events[-1], rcp.RemoteError)
    assert "No such file or directory" in events[-1].message
