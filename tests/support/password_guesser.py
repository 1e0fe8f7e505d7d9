"""A bounded password-guessing load on loopback: N asyncssh connections from one source
address, each sending wrong passwords one after another until the gateway disconnects it,
then reconnecting, until the time is up. Cheap on the client's CPU (one event loop, one
key exchange per max_attempts guesses).

Run as a separate process, so that its CPU use is not the measuring test's:
``python -m tests.support.password_guesser --port P --connections 150 --seconds 30``. It prints
``ready`` once every connection has sent its first guess, and a summary line at the end.
Only loopback addresses are accepted as the target.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import sys
import time

import asyncssh


class Counters:
    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.guesses = 0
        self.reconnects = 0
        self.errors = 0
        self.started: set[int] = set()
        self.all_started = asyncio.Event()

    def first_guess(self, number: int) -> None:
        self.started.add(number)
        if len(self.started) == self.connections:
            self.all_started.set()


def guessing_client(number: int, counters: Counters, words: itertools.count) -> type:
    class Guesser(asyncssh.SSHClient):
        def validate_host_public_key(self, host: str, addr: str, port: int, key: object) -> bool:
            return True  # a load generator: any host key will do

        def password_auth_requested(self) -> str:
            counters.first_guess(number)
            counters.guesses += 1
            return f"guess-{next(words)}"

    return Guesser


async def one_connection(
    number: int, host: str, port: int, source: str, user: str, deadline: float,
    counters: Counters, words: itertools.count,
) -> None:  # fmt: skip
    factory = guessing_client(number, counters, words)
    while time.monotonic() < deadline:
        try:
            conn = await asyncssh.connect(
                host, port, username=user, local_addr=(source, 0), known_hosts=([], [], []),
                client_factory=factory, client_keys=None, agent_path=None,
                password_auth=True, kbdint_auth=False, connect_timeout=30,
                login_timeout=max(1.0, deadline - time.monotonic()),
            )  # fmt: skip
        except asyncssh.Error:  # refused after max_attempts guesses: next connection
            counters.reconnects += 1
            continue
        except OSError:  # TimeoutError included; do not spin if the gateway is gone
            counters.reconnects += 1
            await asyncio.sleep(0.1)
            continue
        conn.close()  # a guess succeeded: not expected, but stop using it
        counters.errors += 1
        await asyncio.sleep(1)


async def run(
    host: str, port: int, source: str, user: str, connections: int, seconds: float
) -> Counters:
    for address in (host, source):
        if not ipaddress.ip_address(address).is_loopback:
            raise SystemExit(f"{address} is not a loopback address")
    counters = Counters(connections)
    words = itertools.count()
    deadline = time.monotonic() + seconds

    async def announce() -> None:
        await counters.all_started.wait()
        print("ready", flush=True)

    announcer = asyncio.ensure_future(announce())
    tasks = []
    for number in range(connections):
        args = (number, host, port, source, user, deadline, counters, words)
        tasks.append(asyncio.ensure_future(one_connection(*args)))
        await asyncio.sleep(0.005)  # stay under the listen backlog
    await asyncio.gather(*tasks)
    announcer.cancel()
    return counters


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source", default="127.0.0.1")
    p.add_argument("--user", default="alice")
    p.add_argument("--connections", type=int, default=150)
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args(argv)
    counters = asyncio.run(
        run(args.host, args.port, args.source, args.user, args.connections, args.seconds)
    )
    print(
        f"guesses={counters.guesses} reconnects={counters.reconnects} "
        f"started={len(counters.started)} unexpected_logins={counters.errors}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
