"""An SSH-1 bridge under back-pressure in memory, for the tests of issue 15's stalled
download: the gateway's SSH-1 client and a device (the gateway's own SSH-1 server, whose
program writes in bursts and stops while it is paused) joined by a :class:`Link` that,
unlike twisted.test.iosim, honours flow control the way TCP and Twisted do; and a front
end, :class:`WindowedClient`, that grants output window as SSH-2 does (Conch's channel
and protocols/ssh2/session.py's pause rules, reimplemented: no Conch here).

A schedule is a seeded random sequence of steps (bytes moved each way, bytes the front
end's reader takes, bursts the program writes), so a failing seed replays exactly.
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
    """A front end with an SSH-2 output window of ``window`` bytes: output beyond it is
    held and the producer paused (Conch's ``stopWriting``); the reader's ``read`` grants
    window back once half is used, which resumes the producer *before* the held output is
    sent again, as Conch's ``addWindowBytes`` does."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.size = window
        self.left = window
        self.held = b""  # output beyond the window (Conch's channel buf)
        self.sent = bytearray()  # within the window, not read yet
        self.consumed = 0
        self.writing = True
        self.blocked = False
        self.output_paused = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.output_paused = False
        self._update()

    def write_stdout(self, data: bytes) -> None:
        assert self.exit is None, "output after the exit"
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.held:
            self.held += data
            return
        if len(data) > self.left:
            data, self.held = data[: self.left], data[self.left :]
            self.writing = False
            self.blocked = True
            self._update()
        self.sent += data
        self.left -= len(data)

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
            if self.held:
                held, self.held = self.held, b""
                self._write(held)
        return len(data)

    @property
    def waiting(self) -> int:
        """Output the gateway has given the front end that the reader has not taken."""
        return len(self.sent) + len(self.held)


@dataclass
class Outcome:
    total: int  # bytes the program wrote
    received: bytes  # what the front end's reader got
    exit: ExitInfo | None
    stalled: str  # empty, or the state in which nothing moved any more


def run_schedule(tmp_path: Path, known_hosts: Any, seed: int) -> Outcome:
    """One bridged download under a random schedule; ends when the front end has the
    exit status and every byte, or reports the state once nothing can move."""
    rnd = random.Random(seed)
    rig = Rig(tmp_path, known_hosts)
    front = WindowedClient(rnd.choice([1000, 8192, 32768, 131072]))
    rig.client = front
    rig.open(SessionRequest(command=b"bursts"), connect=False)
    _host, _port, factory, _timeout, _bind = rig.reactor.tcpClients[-1]
    client = factory.buildProtocol(None)
    device = rig.device.dispatcher.buildProtocol(None)
    ours, theirs = LinkEnd(rnd.choice([4096, 65536])), LinkEnd(rnd.choice([4096, 65536]))
    ours.peer, theirs.peer = theirs, ours
    ours.protocol, theirs.protocol = client, device
    client.makeConnection(ours)
    device.makeConnection(theirs)
    sizes = [100, 1500, 4096, 65536]
    for _ in range(100):  # the handshake and login
        ours.send(65536) + theirs.send(65536)
        rig.reactor.advance(0)
    program = rig.device.target
    paused = FakeProducer()  # the program stops writing while the device pauses it
    program.client.registerProducer(paused, True)
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
            if written == total:
                program.client.exited(ExitInfo(status=0))
        moved += ours.send(rnd.choice(sizes)) + theirs.send(rnd.choice(sizes))
        rig.reactor.advance(rnd.choice([0, 0.01]))
        if rnd.random() < 0.5:
            moved += front.read(rnd.choice([10, 1000, 30000]))
        if front.exit is not None and not front.waiting:
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
