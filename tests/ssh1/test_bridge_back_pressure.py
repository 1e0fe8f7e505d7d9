"""Issue 15, the stalled bursty download, step by step: the front end pauses the bridge
while the gateway's SSH-1 client is in the middle of handling one read from the device,
with whole packets (more stdout, stderr, the exit status) still unread in its core, and
the device has nothing more to send. The client must stop at once (neither read the
device nor hand the front end anything until it resumes) and, once resumed, handle what
it holds without waiting for new data, which would never come.

Both legs honour flow control as TCP and Twisted do (tests/support/ssh1/throttled.py);
the device is the gateway's own SSH-1 server, its program's output written up front."""

from __future__ import annotations

import pytest

from gateway.known_hosts import KnownHosts
from protocols.session import ExitInfo
from tests.support.ssh1.throttled import Bridged, connect_bridge

CHUNK = bytes(range(256))


def stdout_burst(size: int, offset: int = 0) -> bytes:
    return (CHUNK * (size // 256 + 2))[offset % 256 :][:size]


@pytest.fixture
def bridged(tmp_path) -> Bridged:
    return connect_bridge(tmp_path, KnownHosts(tmp_path / "known_hosts"), window=8192)


def device_sends(b: Bridged, *parts: tuple[str, bytes], status: int | None = 0) -> None:
    """The device's program writes ``parts`` (("out"|"err", data)) and exits; everything
    is in the device's socket buffer, to reach the gateway in one read."""
    for stream, data in parts:
        if stream == "out":
            b.program.client.write_stdout(data)
        else:
            b.program.client.write_stderr(data)
    if status is not None:
        b.program.client.exited(ExitInfo(status=status))


def drain_slowly(b: Bridged, step: int, rounds: int = 2000) -> None:
    """The front end's reader takes ``step`` bytes at a time; the links move everything
    they may; the invariants of a pause are checked after every step."""
    for _ in range(rounds):
        b.check_paused_means_not_reading()
        b.front.read(step)
        b.check_paused_means_not_reading()
        b.ours.send(1 << 20)
        b.theirs.send(1 << 20)
        b.rig.reactor.advance(0)
        b.check_paused_means_not_reading()
        if b.front.exit is not None and not b.front.waiting:
            return


def test_a_pause_during_one_read_holds_the_rest_until_resumed_then_delivers_it(bridged):
    b = bridged
    first, second = stdout_burst(20_000), stdout_burst(30_000, 7)
    device_sends(b, ("out", first), ("err", b"warning 1\n"), ("out", second), ("err", b"done\n"))
    assert b.theirs.send(1 << 20) > 50_000  # the whole lot in one read
    # The first run of stdout overflowed the 8 KiB window: the front end paused the bridge
    # in the middle of that read, and nothing after the run was handed over.
    assert b.front.output_paused and not b.ours.reading
    assert b.front.written_while_paused == 0
    assert bytes(b.front.err) == b"" and b.front.exit is None
    b.check_paused_means_not_reading()
    # The device has nothing more to send: only the resume can deliver the rest.
    drain_slowly(b, 1000)
    assert bytes(b.front.out) == first + second
    assert bytes(b.front.err) == b"warning 1\ndone\n"
    assert b.front.exit == ExitInfo(status=0)


def test_a_pause_from_a_stderr_write_stops_the_stdout_behind_it(bridged):
    """The front end's window runs out on a stderr packet (not the batched stdout): the
    stdout packets read with it wait for the resume."""
    b = bridged
    head, tail = stdout_burst(4096), stdout_burst(40_000, 3)
    device_sends(b, ("out", head), ("err", b"E" * 6000), ("out", tail))
    b.theirs.send(1 << 20)
    assert b.front.output_paused and not b.ours.reading
    assert bytes(b.front.sent) == head and b.front.written_while_paused == 0
    drain_slowly(b, 700)
    assert bytes(b.front.out) == head + tail
    assert bytes(b.front.err) == b"E" * 6000
    assert b.front.exit == ExitInfo(status=0)


@pytest.mark.parametrize("burst", [1000, 16_384, 65_536])
def test_a_device_that_throttles_itself_under_back_pressure(tmp_path, burst):
    """A device that writes its next burst only when its socket has drained (the
    program's producer resumed) and a clock tick has passed, over links with a small
    high-water mark, to a reader slower than the device: 1 MiB and the exit arrive."""
    b = connect_bridge(
        tmp_path, KnownHosts(tmp_path / "known_hosts"), window=16_384, high=4096,
        device_high=4096,
    )  # fmt: skip
    total, written, bursts = 1 << 20, 0, 0
    for _ in range(20_000):
        for _ in range(8):  # a burst: writes until the device pauses the program
            if written == total or b.paused.paused:
                break
            n = min(burst, total - written)
            b.program.client.write_stdout(stdout_burst(n, written))
            written += n
            bursts += 1
            if bursts % 5 == 0:
                b.program.client.write_stderr(b"burst %d\n" % bursts)
            if written == total:
                b.program.client.exited(ExitInfo(status=0))
        b.theirs.send(3000)
        b.ours.send(3000)
        b.rig.reactor.advance(0.01)
        b.check_paused_means_not_reading()
        b.front.read(1500)
        b.check_paused_means_not_reading()
        if b.front.exit is not None and not b.front.waiting:
            break
    assert b.paused.pauses > 0, "the device was never throttled: the test proves nothing"
    assert len(b.front.out) == total and bytes(b.front.out) == stdout_burst(total)
    assert b.front.err == b"".join(b"burst %d\n" % i for i in range(5, bursts + 1, 5))
    assert b.front.exit == ExitInfo(status=0)
