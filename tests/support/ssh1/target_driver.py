"""Runs the SSH-1 upstream target (SSH1Target) for one session on a real reactor, in a
short-lived process of its own (a reactor cannot be restarted inside pytest): ``drive``
starts it with a JSON spec (target config, known_hosts, command, pty, stdin, resize,
deadline) and returns the JSON result it prints (output digest and head, stderr, exit,
upstream description, how often the input was paused). ``pattern`` is the test data."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.gateway_process import REPO


def pattern(size: int) -> bytes:
    """Deterministic, incompressible-looking test data."""
    out = bytearray()
    block = hashlib.sha256(b"sshgateway").digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:size])


def main() -> None:  # pragma: no cover - runs in the subprocess
    from twisted.internet import reactor
    from zope.interface import implementer

    from gateway.known_hosts import KnownHosts
    from gateway.targets import TargetConfig
    from gateway.targets.ssh1 import SSH1Target
    from protocols.session import ISessionClient, PtyRequest, SessionRequest, WindowSize

    spec = json.loads(sys.argv[1])
    config = dict(spec["config"])
    config["ciphers"] = tuple(config.get("ciphers", ()))
    if config.get("key"):
        config["key"] = Path(config["key"])
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Config(TargetConfig):  # TargetConfig has no compression key (yet)
        compression: int = 0

    target = SSH1Target(reactor, Config(**config), KnownHosts(spec["known_hosts"]))
    result: dict = {"out_len": 0, "err": "", "exit": None, "description": None}
    digest = hashlib.sha256()
    head = bytearray()
    resize_on_output: list = []  # the window change to send once the first line is out

    @implementer(ISessionClient)
    class Client:
        def write_stdout(self, data: bytes) -> None:
            digest.update(data)
            result["out_len"] += len(data)
            if len(head) < 4096:
                head.extend(data[: 4096 - len(head)])
            if resize_on_output and b"\n" in head:
                # The first line is out: the window change now comes after it, however
                # long the login took on a busy machine.
                resize_on_output.pop()()

        def write_stderr(self, data: bytes) -> None:
            result["err"] += data.decode("utf-8", "replace")

        def send_eof(self) -> None:
            pass

        def exited(self, info) -> None:
            result["exit"] = info.as_status()
            if bridge.upstream is not None:
                result["description"] = bridge.upstream.description
            reactor.callLater(0, reactor.stop)

        def registerProducer(self, producer, streaming) -> None:
            pass

        def unregisterProducer(self) -> None:
            pass

    class Feeder:
        """Client input, sent while the bridge lets us (it pauses us on back-pressure)."""

        def __init__(self, data: bytes) -> None:
            self.data = memoryview(data)
            self.pos = 0
            self.paused = False
            self.pauses = 0

        def pauseProducing(self) -> None:
            self.paused = True
            self.pauses += 1

        def resumeProducing(self) -> None:
            self.paused = False
            reactor.callLater(0, self.run)

        def stopProducing(self) -> None:
            self.paused = True

        def run(self) -> None:
            while not self.paused and self.pos < len(self.data):
                bridge.write_stdin(bytes(self.data[self.pos : self.pos + 65536]))
                self.pos += 65536
            if self.pos >= len(self.data) and spec.get("eof", True):
                if not getattr(self, "eof_sent", False):
                    self.eof_sent = True
                    bridge.close_stdin()

    pty = None
    if spec.get("pty"):
        rows, cols = spec["pty"]
        pty = PtyRequest("xterm", WindowSize(rows, cols), ((128, 38400),))
    command = spec.get("command")
    request = SessionRequest(command=command.encode() if command is not None else None, pty=pty)
    bridge = target.open_session("alice", request, Client(), password=spec.get("gateway_password"))
    stdin = pattern(spec["stdin_size"]) if "stdin_size" in spec else spec.get("stdin", "").encode()
    feeder = Feeder(stdin)
    bridge.registerProducer(feeder, True)
    reactor.callLater(0, feeder.run)
    if spec.get("resize"):
        rows, cols = spec["resize"]
        if spec.get("resize_after") == "first line":
            resize_on_output.append(lambda: bridge.resize(WindowSize(rows, cols)))
        else:
            reactor.callLater(spec.get("resize_after", 1.0), bridge.resize, WindowSize(rows, cols))

    def deadline() -> None:
        result["err"] += "DRIVER DEADLINE"
        reactor.stop()

    reactor.callLater(spec.get("deadline", 60), deadline)
    reactor.run()
    result["out_sha256"] = digest.hexdigest()
    result["out_head"] = head.decode("utf-8", "replace")
    result["feeder_pauses"] = feeder.pauses
    print(json.dumps(result))


def drive(spec: dict, timeout: float = 120) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.ssh1.target_driver", json.dumps(spec)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
