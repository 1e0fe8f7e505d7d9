"""The gateway's SSH-1 upstream client on its own, for :mod:`bench.ssh1`: one session to
an SSH-1 device, sending (``--upload``) or receiving (``--download``) a number of bytes,
then one line of JSON with the CPU seconds this process spent from the session's start
to its exit status (``cpu``; ``sys``: of them in the kernel). Not a test, nor a benchmark of its own (bench.ssh1 runs it).

    .venv/bin/python -m bench.ssh1_client --port P --user U --password W --cipher C \
        --upload BYTES [--command "cat > /dev/null"]

The client is :class:`protocols.ssh1.client.SSH1ClientProtocol`, as a bridged session
drives it; the sink here only counts what arrives and follows the client's flow
control, so nearly all the CPU time is the SSH-1 client's own (packets, cipher, CRC,
attack detector, socket).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402

from protocols.session import ExitInfo, SessionRequest  # noqa: E402
from protocols.ssh1.client import SSH1ClientOptions, SSH1ClientProtocol  # noqa: E402

CHUNK = 32 * 1024  # what an SSH-2 front end hands the bridge per packet


class CountingSink:
    """The bridge's part: takes output, follows the client's back-pressure on input."""

    def __init__(self) -> None:
        self.received = 0
        self.paused = False
        self.done: defer.Deferred = defer.Deferred()
        self.on_resume = lambda: None

    def stdout(self, data: bytes) -> None:
        self.received += len(data)

    def stderr(self, data: bytes) -> None:
        sys.stderr.buffer.write(data)

    def exited(self, info: ExitInfo) -> None:
        self.done.callback(info.status)

    def failed(self, message: str) -> None:
        self.done.errback(RuntimeError(message))

    def pause_input(self) -> None:
        self.paused = True

    def resume_input(self) -> None:
        self.paused = False
        self.on_resume()


async def session(reactor, args: argparse.Namespace) -> dict:
    sink = CountingSink()
    command = args.command or ("cat > /dev/null" if args.upload else f"head -c {args.download} /dev/zero")
    options = SSH1ClientOptions(
        username=args.user, verify_host_key=lambda e, n: None, password=args.password,
        ciphers=(args.cipher,), peer=f"127.0.0.1:{args.port}",
    )
    protocol = SSH1ClientProtocol(options, SessionRequest(command=command.encode()), sink)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", args.port), protocol)
    await protocol.opened
    cpu_start, sys_start, started = time.process_time(), os.times().system, time.perf_counter()
    block = bytes(CHUNK)
    left = args.upload

    def produce() -> None:
        nonlocal left
        while left and not sink.paused:
            n = min(left, CHUNK)
            protocol.write(block[:n])
            left -= n
        if not left:
            sink.on_resume = lambda: None
            protocol.send_eof()

    if args.upload:
        sink.on_resume = lambda: reactor.callLater(0, produce)
        produce()
    status = await sink.done
    return {
        "cpu": time.process_time() - cpu_start,
        "sys": os.times().system - sys_start,
        "seconds": time.perf_counter() - started,
        "sent": args.upload,
        "received": sink.received,
        "status": status,
    }


def run_session_from_arguments() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--cipher", required=True)
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument("--upload", type=int, default=0, help="bytes to send to the device")
    way.add_argument("--download", type=int, default=0, help="bytes to receive")
    parser.add_argument("--command", help="the device's command (default: cat > /dev/null "
                        "for an upload, head -c BYTES /dev/zero for a download)")
    args = parser.parse_args()

    async def run(reactor) -> None:
        print(json.dumps(await session(reactor, args)), flush=True)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    run_session_from_arguments()
