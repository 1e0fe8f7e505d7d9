"""The gateway's SSH-1 server (dispatcher and SSH1ServerFactory, as the gateway builds
them) on a real reactor in a process of its own, whose server key is regenerated on
command: the rig for measuring what a regeneration costs logins that arrive meanwhile.

``python -m tests.support.ssh1.key_rotation_server BITS`` prints ``port N``; each
``rotate`` line on stdin marks the server key used and makes the next rotation due
(the factory's rotation timer runs on a clock of its own, advanced here: the real
regeneration, in Twisted's thread pool, is what is measured), answered ``rotating``;
``rotated SECONDS`` follows when the new key is in place. EOF on stdin stops it.
"""

from __future__ import annotations

import sys
import time

LIFETIME = 3600.0


def main() -> None:  # pragma: no cover - runs in the subprocess
    from twisted.internet import reactor, stdio, task
    from twisted.protocols.basic import LineReceiver

    from gateway.dispatch import DispatcherFactory
    from protocols.auth import AuthLimits
    from protocols.ssh1 import keygen
    from protocols.ssh1.server import SSH1ServerFactory
    from protocols.ssh1.settings import SSH1Settings

    bits = int(sys.argv[1])
    rotation_clock = task.Clock()  # the factory's timers: rotation, and logins' (unused here)
    made = []

    def generate(size: int):
        # The first key quickly (1024 bits); every later one the real way, of ``bits``.
        if not made:
            made.append(size)
            return keygen.generate_private_key(1024)
        from protocols.ssh1.server import generate_server_key

        made.append(size)
        return generate_server_key(size)

    factory = SSH1ServerFactory(
        None, keygen.generate_private_key(2048), SSH1Settings(server_key_bits=bits,
        server_key_lifetime=LIFETIME), AuthLimits(), rotation_clock, key_generator=generate,
    )  # fmt: skip
    dispatcher = DispatcherFactory({"ssh1": factory}, reactor)
    port = reactor.listenTCP(0, dispatcher, interface="127.0.0.1")
    state = {"generations": factory.server_key_generations, "started": 0.0}

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"rotate":
                factory.server_key()  # used: a regeneration is due
                state["started"] = time.monotonic()
                rotation_clock.advance(LIFETIME)
                self.say("rotating")

        def connectionLost(self, reason: object = None) -> None:
            reactor.stop()

        def say(self, text: str) -> None:
            self.transport.write(text.encode() + b"\n")

    control = Control()
    stdio.StandardIO(control)

    def watch() -> None:
        if factory.server_key_generations != state["generations"]:
            state["generations"] = factory.server_key_generations
            control.say(f"rotated {time.monotonic() - state['started']:.3f}")

    task.LoopingCall(watch).start(0.01)
    control.say(f"port {port.getHost().port}")
    reactor.run()


if __name__ == "__main__":
    main()
