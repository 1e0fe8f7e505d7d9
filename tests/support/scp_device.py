"""An in-memory device that runs ``scp -f``/``scp -t`` on a dict of files, for the tests
of gateway.targets.sftp_over_scp: ``FakeScpDevice.open_exec`` is the factory the SFTP
server takes; each command is a FakeScpCommand (an ISessionTarget) that speaks the rcp
protocol as OpenSSH's scp does, written apart from gateway.targets.rcp so that the two
check each other. It sends file data only while the client has not paused it, in
``chunk``-sized writes, and records the commands, pauses and closes."""

from __future__ import annotations

import shlex
from typing import Any

from zope.interface import implementer

from protocols.session import ExitInfo, ISessionClient, ISessionTarget, WindowSize


class FakeScpDevice:
    def __init__(
        self, files: dict[str, tuple[int, bytes]] | None = None, *, chunk: int = 8192
    ) -> None:
        self.files: dict[str, tuple[int, bytes]] = dict(files or {})  # path -> (mode, data)
        self.directories: set[str] = {"/tmp"}
        self.read_only: set[str] = set()
        self.chunk = chunk
        self.commands: list[bytes] = []
        self.sessions: list[FakeScpCommand] = []

    def open_exec(self, command: bytes, client: ISessionClient) -> FakeScpCommand:
        self.commands.append(command)
        session = FakeScpCommand(self, command, client)
        self.sessions.append(session)
        if not session.sending:
            session.start_sink()  # at once, before open_exec has even returned
        return session


@implementer(ISessionTarget)
class FakeScpCommand:
    def __init__(self, device: FakeScpDevice, command: bytes, client: ISessionClient) -> None:
        self.device, self.client = device, client
        argv = shlex.split(command.decode())
        assert argv[0] == "scp", argv
        self.sending = "-f" in argv
        self.recursive = "-r" in argv
        self.path = argv[-1]
        self.stdin = bytearray()
        self.state = "start"
        self.paused = False
        self.pauses = 0
        self.closed = False
        self.eof = False
        self.exit: ExitInfo | None = None
        self.producer: Any = None
        self.to_send = b""
        self.received = bytearray()
        self.expect = 0
        self.mode = 0
        client.registerProducer(self, True)

    # the device's output side, paused by the SFTP server
    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self._send_data()

    def stopProducing(self) -> None:
        self.paused = True

    def _exit(self, status: int) -> None:
        if self.exit is None:
            self.exit = ExitInfo(status=status)
            self.client.exited(self.exit)

    def _error(self, message: str, status: int = 1) -> None:
        self.client.write_stdout(b"\x01scp: " + message.encode() + b"\n")
        self._exit(status)

    def _send_data(self) -> None:
        while self.state == "data" and not self.paused and self.exit is None and not self.closed:
            chunk, self.to_send = (
                self.to_send[: self.device.chunk],
                self.to_send[self.device.chunk :],
            )
            if not self.to_send:
                self.state = "final-ack"
            if chunk:
                self.client.write_stdout(chunk)
            if self.state == "final-ack":
                self.client.write_stdout(b"\0")

    # ISessionTarget
    def write_stdin(self, data: bytes) -> None:
        assert not self.closed, "input after close"
        self.stdin += data
        if self.sending:
            self._source(data)
        else:
            self._sink(data)

    def _source(self, data: bytes) -> None:
        for byte in data:
            assert byte == 0, f"sink sent {byte}"
            if self.state == "start":
                if self.path in self.device.directories:
                    if not self.recursive:
                        return self._error(f"{self.path}: not a regular file")
                    self.state = "dir"
                    self.client.write_stdout(
                        b"D0755 0 %s\n" % self.path.rsplit("/", 1)[-1].encode()
                    )
                    continue
                if self.path not in self.device.files:
                    return self._error(f"{self.path}: No such file or directory")
                mode, content = self.device.files[self.path]
                name = self.path.rsplit("/", 1)[-1].encode()
                self.state = "header-ack"  # before writing: the answer may come at once
                self.client.write_stdout(b"C%04o %d %s\n" % (mode, len(content), name))
            elif self.state == "header-ack":
                self.to_send = self.device.files[self.path][1]
                self.state = "data"
                self._send_data()
            elif self.state == "final-ack":
                self.state = "done"

    def _sink(self, data: bytes) -> None:
        while self.exit is None:
            if self.state == "start":
                end = self.stdin.find(b"\n")
                if end < 0:
                    return
                line = bytes(self.stdin[:end])
                del self.stdin[: end + 1]
                mode, size, _name = line[1:].split(b" ", 2)
                directory = self.path.rsplit("/", 1)[0] if "/" in self.path else "."
                if self.path in self.device.read_only or (
                    directory not in self.device.directories and directory != "."
                ):
                    return self._error(f"{self.path}: Permission denied")
                self.mode, self.expect = int(mode, 8), int(size)
                self.state = "data"
                self.client.write_stdout(b"\0")
            elif self.state == "data":
                take = min(self.expect - len(self.received), len(self.stdin))
                self.received += self.stdin[:take]
                del self.stdin[:take]
                if len(self.received) < self.expect or not self.stdin:
                    return
                assert self.stdin[:1] == b"\0"
                del self.stdin[:1]
                self.device.files[self.path] = (self.mode, bytes(self.received))
                self.state = "done"
                self.client.write_stdout(b"\0")
            else:
                return

    def close_stdin(self) -> None:
        self.eof = True
        if self.state == "done":
            self._exit(0)
        else:
            self._exit(1)

    def resize(self, size: WindowSize) -> None:
        pass

    def send_signal(self, name: str) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def start_sink(self) -> None:
        """scp -t says it is ready as soon as it runs."""
        self.client.write_stdout(b"\0")
