"""Serve the gateway's SFTP-over-scp on stdin/stdout, with a "device" that runs each
command through ``/bin/sh -c`` in DEVICE_DIR (so the device's scp is the real system
``scp -f``/``scp -t``): what ``sftp -D`` and a fake ``ssh`` for ``scp -S`` start, and what
the paramiko test talks to over a socketpair.

    python -m tests.support.sftp_over_scp_runner DEVICE_DIR [TRANSFER_LOG]

Each finished transfer is appended to TRANSFER_LOG as a JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from twisted.internet import error, protocol, reactor, stdio
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from gateway.targets.sftp_over_scp import SftpOverScpSession, Transfer
from protocols.session import ExitInfo, ISessionClient, ISessionTarget, WindowSize


@implementer(ISessionTarget)
class LocalExec(protocol.ProcessProtocol):
    """One command run locally, as an ISessionTarget (the test device's exec session)."""

    def __init__(self, command: bytes, client: ISessionClient, cwd: str) -> None:
        self.client = client
        self.ended = False
        client.registerProducer(self, True)
        # exec: the command is the process, so that close() kills scp itself
        argv = ["/bin/sh", "-c", "exec " + command.decode()]
        reactor.spawnProcess(self, "/bin/sh", argv, env=dict(os.environ), path=cwd)

    def outReceived(self, data: bytes) -> None:
        self.client.write_stdout(data)

    def errReceived(self, data: bytes) -> None:
        self.client.write_stderr(data)

    def processEnded(self, reason: Any) -> None:
        self.ended = True
        code = getattr(reason.value, "exitCode", None)
        self.client.unregisterProducer()  # as BridgeSession does before the exit
        self.client.exited(ExitInfo(status=code if code is not None else 255))

    # the device's output, paused by the SFTP server (until its stdout pipe is closed)
    def pauseProducing(self) -> None:
        stdout = self.transport.pipes.get(1)
        if stdout is not None:
            stdout.pauseProducing()

    def resumeProducing(self) -> None:
        stdout = self.transport.pipes.get(1)
        if stdout is not None:
            stdout.resumeProducing()

    def stopProducing(self) -> None:
        self.close()

    # ISessionTarget
    def write_stdin(self, data: bytes) -> None:
        self.transport.write(data)

    def close_stdin(self) -> None:
        self.transport.closeStdin()

    def resize(self, size: WindowSize) -> None:
        pass

    def send_signal(self, name: str) -> None:
        pass

    def close(self) -> None:
        if not self.ended:
            self.ended = True
            self.transport.loseConnection()
            with contextlib.suppress(error.ProcessExitedAlready):
                self.transport.signalProcess("KILL")

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


@implementer(ISessionClient, IHalfCloseableProtocol)
class StdioClient(protocol.Protocol):
    """The SFTP client on stdin/stdout, as the front end's ISessionClient."""

    description = "stdio"

    def __init__(self, device_dir: str, log_path: str | None) -> None:
        self.device_dir = device_dir
        self.log_path = log_path
        self.session: SftpOverScpSession | None = None

    def connectionMade(self) -> None:
        self.session = SftpOverScpSession(
            self,
            lambda command, client: LocalExec(command, client, self.device_dir),
            on_transfer=self.record,
        )

    def record(self, transfer: Transfer) -> None:
        if self.log_path:
            with open(self.log_path, "a") as log:
                log.write(json.dumps(asdict(transfer)) + "\n")

    def dataReceived(self, data: bytes) -> None:
        assert self.session is not None
        self.session.write_stdin(data)

    def readConnectionLost(self) -> None:
        assert self.session is not None
        self.session.close_stdin()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if reactor.running:
            reactor.stop()

    # ISessionClient
    def write_stdout(self, data: bytes) -> None:
        self.transport.write(data)

    def write_stderr(self, data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.flush()

    def send_eof(self) -> None:
        pass

    def exited(self, info: ExitInfo) -> None:
        self.transport.loseConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()


def main() -> None:
    device_dir = sys.argv[1]
    log_path = sys.argv[2] if len(sys.argv) > 2 else None
    if os.environ.get("SFTP_RUNNER_DEBUG"):
        from twisted.logger import globalLogBeginner, textFileLogObserver

        debug = open(os.environ["SFTP_RUNNER_DEBUG"], "a")  # noqa: SIM115 (lives as long as the process)
        globalLogBeginner.beginLoggingTo([textFileLogObserver(debug)])
    stdio.StandardIO(StdioClient(device_dir, log_path))
    reactor.run()


if __name__ == "__main__":
    main()
