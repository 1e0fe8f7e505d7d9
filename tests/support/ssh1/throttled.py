"""An SSH-1 bridge under back-pressure in memory, for the tests of issue 15's stalled
download: the gateway's SSH-1 client and a device (the gateway's own SSH-1 server, whose
program writes in bursts and stops while it is paused) joined by a :class:`Link` that,
unlike twisted.test.iosim, honours flow control the way TCP and Twisted do; and a front
end, :class:`WindowedClient`, that grants output window as SSH-2 does (Conch's channel
and protocols/ssh2/session.py's pause rules, reimplemented: no Conch here).

A schedule is a seeded random sequence of steps (bytes moved each way, bytes the front
end's reader takes, bursts the program writes), so a failing seed replays exactly. :func:`connect_bridge` gives the pieces for tests that
script the steps themselves (tests/ssh1/test_bridge_back_pressure.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address

from protocols.session import ExitInfo, SessionRequest
from tests.support.doubles import FakeProducer, FakeSessionClient
from tests.support.ssh1.target_rig import Rig


class LinkEnd:
    """One side's transport: writes queue for the peer; reading stops while paused
    (``pauseProducing``); a registered streaming producer is paused while more than
    ``high`` bytes wait and resumed once they have all gone, as Twisted's TCP does."""

    def __init__(self, high: int) -> None:
        self.high = high
        self.out = bytearray()
        self.reading = True
        self.producer: Any = None
        self.producer_paused = False
        self.disconnecting = False
        self.protocol: Any = None
        self.peer: LinkEnd | None = None

    def write(self, data: bytes) -> None:
        if self.disconnecting:
            return
        self.out += data
        if self.producer is not None and len(self.out) > self.high:
            self.producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, seq: list[bytes]) -> None:
        self.write(b"".join(seq))

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def stopProducing(self) -> None:
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.1", 22)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def send(self, limit: int) -> int:
        """Move up to ``limit`` bytes to the peer, if it reads; returns how many."""
        assert self.peer is not None
        if not self.peer.reading or not self.out:
            return 0
        chunk = bytes(self.out[:limit])
        del self.out[:limit]
        self.peer.protocol.dataReceived(chunk)
        if self.producer_paused and not self.out and self.producer is not None:
            self.producer_paused = False
            self.producer.resumeProducing()
        return len(chunk)


class WindowedClient(FakeSessionClient):
    """A front end with an SSH-2 output window of ``window`` bytes, shared by stdout and
    stderr (extended data): output beyond it is held and the producer paused (Conch's
    ``stopWriting``); the reader's ``read`` takes stdout (stderr is taken as it comes)
    and grants window back once half is used, which resumes the producer *before* the
    held output is sent again, as Conch's ``addWindowBytes`` does."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.size = window
        self.left = window
        self.held: list[tuple[bool, bytes]] = []  # (stderr?, data) beyond the window
        self.sent = bytearray()  # stdout within the window, not read yet
        self.consumed = 0
        self.writing = True
        self.blocked = False
        self.output_paused = False
        self.written_while_paused = 0  # output given after the producer was paused

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.output_paused = False
        self._update()

    def write_stdout(self, data: bytes) -> None:
        assert self.exit is None, "output after the exit"
        self._late(data)
        self._write(False, data)

    def write_stderr(self, data: bytes) -> None:
        assert self.exit is None, "output after the exit"
        self._late(data)
        self._write(True, data)

    def _late(self, data: bytes) -> None:
        if self.output_paused:
            self.written_while_paused += len(data)

    def _write(self, stderr: bool, data: bytes) -> None:
        if self.held:
            self.held.append((stderr, data))
            return
        if len(data) > self.left:
            data, rest = data[: self.left], data[self.left :]
            self.held.append((stderr, rest))
            self.writing = False
            self.blocked = True
            self._update()
        self.left -= len(data)
        if stderr:
            self.err += data
            self.consumed += len(data)
        else:
            self.sent += data

    def _update(self) -> None:
        if self.producer is None or self.blocked == self.output_paused:
            return
        self.output_paused = self.blocked
        if self.blocked:
            self.producer.pauseProducing()
        else:
            self.producer.resumeProducing()

    def read(self, limit: int) -> int:
        data = bytes(self.sent[:limit])
        del self.sent[:limit]
        self.out += data
        self.consumed += len(data)
        if self.consumed >= self.size // 2:
            granted, self.consumed = self.consumed, 0
            self.left += granted
            if not self.writing:
                self.writing = True
                self.blocked = False
                self._update()
            held, self.held = self.held, []
            for stderr, chunk in held:
                self._write(stderr, chunk)
        return len(data)

    @property
    def waiting(self) -> int:
        """Output the gateway has given the front end that the reader has not taken."""
        return len(self.sent) + sum(len(chunk) for _, chunk in self.held)


@dataclass
class Outcome:
    total: int  # bytes the program wrote
    received: bytes  # what the front end's reader got
    exit: ExitInfo | None
    stalled: str  # empty, or the state in which nothing moved any more


@dataclass
class Bridged:
    """An open bridged session: ``ours`` is the gateway's transport to the device,
    ``theirs`` the device's; ``program`` the device's session (``program.client`` takes
    the program's output), ``paused`` its producer, which the device pauses under
    back-pressure."""

    rig: Rig
    front: WindowedClient
    client: Any  # the gateway's SSH1ClientProtocol
    ours: LinkEnd
    theirs: LinkEnd
    program: Any
    paused: FakeProducer

    def check_paused_means_not_reading(self) -> None:
        """While the front end holds the bridge paused, the gateway reads nothing from the
        device (its transport is paused) and gives the front end nothing."""
        if self.front.output_paused:
            assert not self.ours.reading, "front end paused, but the gateway reads the device"
        assert self.front.written_while_paused == 0, (
            f"{self.front.written_while_paused} bytes reached the front end after it paused"
        )


def connect_bridge(
    tmp_path: Path, known_hosts: Any, window: int, high: int = 65536, device_high: int = 65536
) -> Bridged:
    """ssh-like front end (SSH-2 window of ``window`` bytes) -> bridge -> the gateway's
    SSH-1 client -> :class:`LinkEnd` pair -> the device, logged in with its session open."""
    rig = Rig(tmp_path, known_hosts)
    front = WindowedClient(window)
    rig.client = front
    rig.open(SessionRequest(command=b"bursts"), connect=False)
    _host, _port, factory, _timeout, _bind = rig.reactor.tcpClients[-1]
    client = factory.buildProtocol(None)
    device = rig.device.dispatcher.buildProtocol(None)
    ours, theirs = LinkEnd(high), LinkEnd(device_high)
    ours.peer, theirs.peer = theirs, ours
    ours.protocol, theirs.protocol = client, device
    client.makeConnection(ours)
    device.makeConnection(theirs)
    for _ in range(100):  # the handshake and login
        ours.send(65536) + theirs.send(65536)
        rig.reactor.advance(0)
    program = rig.device.target
    paused = FakeProducer()  # the program stops writing while the device pauses it
    program.client.registerProducer(paused, True)
    return Bridged(rig, front, client, ours, theirs, program, paused)


def run_schedule(tmp_path: Path, known_hosts: Any, seed: int) -> Outcome:
    """One bridged download under a random schedule; ends when the front end has the
    exit status and every byte, or reports the state once nothing can move. The program
    writes a line on stderr now and then (a packet that ends a run of stdout packets, so
    a pause can come with whole packets still unread in the client's core)."""
    rnd = random.Random(seed)
    window, high = rnd.choice([1000, 8192, 32768, 131072]), rnd.choice([4096, 65536])
    b = connect_bridge(tmp_path, known_hosts, window, high, rnd.choice([4096, 65536]))
    rig, front, ours, theirs = b.rig, b.front, b.ours, b.theirs
    client = getattr(b.client, "_wrappedProtocol", b.client)
    program, paused = b.program, b.paused
    sizes = [100, 1500, 4096, 65536]
    stderr_lines = 0
    total = rnd.choice([100_000, 300_000])
    burst = rnd.choice([512, 16384, 100_000])
    written, idle = 0, 0
    while idle < 100:
        moved = 0
        if written < total and not paused.paused and rnd.random() < 0.3:
            n = min(burst, total - written)
            program.client.write_stdout(bytes(range(256)) * (n // 256) + bytes(n % 256))
            written += n
            moved += n
            if rnd.random() < 0.3:
                stderr_lines += 1
                program.client.write_stderr(b"line %d\n" % stderr_lines)
            if written == total:
                program.client.exited(ExitInfo(status=0))
        moved += ours.send(rnd.choice(sizes)) + theirs.send(rnd.choice(sizes))
        rig.reactor.advance(rnd.choice([0, 0.01]))
        if rnd.random() < 0.5:
            moved += front.read(rnd.choice([10, 1000, 30000]))
        b.check_paused_means_not_reading()
        if front.exit is not None and not front.waiting:
            expected_err = b"".join(b"line %d\n" % i for i in range(1, stderr_lines + 1))
            assert bytes(front.err) == expected_err
            return Outcome(total, bytes(front.out), front.exit, "")
        blocked_program = written < total and paused.paused
        idle = idle + 1 if not moved and (written == total or blocked_program) else 0
    stalled = (
        f"seed {seed}: nothing moves: program wrote {written}/{total}"
        f"{' (paused)' if paused.paused else ''}, front end has {len(front.out)} read and "
        f"{front.waiting} waiting (window left {front.left}), gateway->device "
        f"{len(ours.out)} and device->gateway {len(theirs.out)} bytes in flight, gateway "
        f"reading {ours.reading}, device reading {theirs.reading}, client pauses "
        f"{sorted(client._input_pauses)}, decoder holds {client.core._decoder.buffered}"
    )
    return Outcome(total, bytes(front.out), front.exit, stalled)
