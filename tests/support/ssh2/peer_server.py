"""A real-socket SSH-2 front end for tests/ssh2/test_real_peers.py, without the gateway.

``python -m tests.support.ssh2.peer_server AUTHORIZED_PUBKEY_FILE [policy] [kex,...]`` listens on
127.0.0.1 (port 0), prints ``PORT n``, and serves alice (password ``secret`` or the key)
behind an ``SSH-1.99-`` banner. Its fake target answers every command with a fixed
reply: the command and request on stdout, ``err`` on stderr, exit status 3 — or for the
command ``signal``, death by SIGTERM.
"""

from __future__ import annotations

import sys

from twisted.conch.ssh import keys
from twisted.internet import protocol, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from protocols.auth import AuthLimits
from protocols.record import ConnectionRecord
from protocols.ssh2.factory import SSH2ServerFactory
from protocols.ssh2.settings import SSH2Settings
from tests.support.ssh2 import harness


def on_open(target, client) -> None:
    request = target.request
    if request.command == b"signal":
        client.exited(harness.exit_info(signal="TERM"))
        return
    line = f"command={request.command!r} pty={request.pty!r} env={request.env!r}\n"
    client.write_stdout(line.encode())
    client.write_stderr(b"err\n")
    client.exited(harness.exit_info(3))


def main() -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    key = keys.Key.fromFile(sys.argv[1])
    policy = sys.argv[2] if len(sys.argv) > 2 else "any"
    kex = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else None
    portal = harness.FakePortal(policy=policy, on_open=on_open, key_blob=key.blob())
    settings = SSH2Settings(kex=kex) if kex else SSH2Settings()
    factory = SSH2ServerFactory(
        portal, harness.host_keys(), settings, AuthLimits(failure_delay=0.1), reactor
    )

    class Listener(protocol.Factory):
        def buildProtocol(self, addr):
            return harness.MiniDispatcher(factory, ConnectionRecord(peer=f"{addr.host}:{addr.port}"))

    port = reactor.listenTCP(0, Listener(), interface="127.0.0.1")
    print("PORT", port.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
