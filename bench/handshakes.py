"""Handshake cost (issue 11): how many SSH-1 and SSH-2 handshakes one core of the gateway
sustains, from the gateway's own CPU time per handshake (:mod:`bench.cpu`), beside the
wall-clock rate on this machine. Not a test.

    .venv/bin/python -m bench.handshakes [--seconds 10] [--clients 4]

- SSH-1: connection, identification lines, SSH_SMSG_PUBLIC_KEY, SSH_CMSG_SESSION_KEY, and
  the server's SSH_SMSG_SUCCESS: the session key accepted. To get there the server does
  its two RSA decryptions (the 1024-bit server key, then the 2048-bit host key). The
  client is the SSH-1 tests' minimal client (tests/support/ssh1/minclient.py) driving only
  this exchange, in ``--clients`` processes: ``ssh1`` or ``plink -1`` would spend most of
  each round starting up, and would go on to authenticate.
- SSH-2: OpenSSH's ``ssh-keyscan`` (a real client) against the same gateway, once per host
  key type: connection, version exchange, KEXINIT, the key exchange (curve25519-sha256 with
  OpenSSH 9.2) and the server's signature with that host key; the server's part of the
  handshake is then done. ``--clients`` batches in parallel, each of 16 connections.

Each connection ends before authentication. The gateway runs its default settings, flow
records included. The figure that matters is "per core": handshakes per second of the
gateway's CPU time. The wall-clock rate also pays for the clients on the same two cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pwd
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cpu import CpuMeter, per_login_ms  # noqa: E402
from bench.harness import which  # noqa: E402
from protocols.ssh1 import keys  # noqa: E402
from protocols.ssh1 import messages as m  # noqa: E402
from protocols.ssh1.wire import ProtocolError  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.ssh1.minclient import MiniClient  # noqa: E402

KEYSCAN_BATCH = 16  # connections per ssh-keyscan run (it opens them in parallel)


def _read_packets(conn: socket.socket, client: MiniClient, pending: bytes = b"") -> list:
    """The next packets from the server; none if it closed or sent something else (an
    SSH-2-only gateway's plain refusal line, say)."""
    try:
        packets = client.feed(pending) if pending else []
        while not packets:
            data = conn.recv(4096)
            if not data:
                return []
            packets = client.feed(data)
    except ProtocolError:
        return []
    return packets


def ssh1_handshake(port: int, host: str = "127.0.0.1") -> bool:
    """One SSH-1 handshake up to the server's SSH_SMSG_SUCCESS for the session key;
    whether the server got there. Closes without authenticating."""
    with socket.create_connection((host, port), timeout=10) as conn:
        received = b""
        while b"\n" not in received:
            data = conn.recv(256)
            if not data:
                return False
            received += data
        _, rest = received.split(b"\n", 1)
        conn.sendall(b"SSH-1.5-bench_handshakes\n")
        client = MiniClient()
        packets = _read_packets(conn, client, rest)
        if not packets or packets[0][0] != m.SSH_SMSG_PUBLIC_KEY:
            return False
        client.parse_public_key(packets[0][1])
        conn.sendall(client.session_key_packet("3des"))
        packets = _read_packets(conn, client)
        return bool(packets) and packets[0][0] == m.SSH_SMSG_SUCCESS


def _ssh1_worker(port: int, seconds: float) -> tuple[int, int]:
    done = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ok = ssh1_handshake(port)
        except OSError:
            ok = False
        done, failed = done + ok, failed + (not ok)
    return done, failed


def ssh1_round(port: int, seconds: float, clients: int) -> tuple[int, int]:
    """(handshakes, failures) of ``clients`` processes for ``seconds``."""
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        results = pool.starmap(_ssh1_worker, [(port, seconds)] * clients)
    return sum(r[0] for r in results), sum(r[1] for r in results)


def keyscan_batch(port: int, key_type: str, hosts: Path) -> tuple[int, int]:
    """One ``ssh-keyscan`` run over ``hosts`` (the same loopback address, once a line):
    (key exchanges that ended in the server's host key, connections that did not)."""
    result = subprocess.run(
        [which("ssh-keyscan"), "-T", "10", "-t", key_type, "-p", str(port), "-f", str(hosts)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    wanted = len(hosts.read_text().splitlines())
    got = sum(1 for line in result.stdout.splitlines() if line and not line.startswith("#"))
    return got, wanted - got


def ssh2_round(
    port: int, key_type: str, seconds: float, clients: int, hosts: Path
) -> tuple[int, int]:
    """(handshakes, failures) of ``clients`` ssh-keyscan runs at a time for ``seconds``."""

    def worker() -> tuple[int, int]:
        done = failed = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got, lost = keyscan_batch(port, key_type, hosts)
            done, failed = done + got, failed + lost
        return done, failed

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: worker(), range(clients)))
    return sum(r[0] for r in results), sum(r[1] for r in results)


def raw_rsa_ms(seconds: float = 2.0) -> float:
    """CPU milliseconds of the SSH-1 server's RSA work alone, in this process: undoing a
    session key encrypted with a 1024-bit server key and a 2048-bit host key, as the
    gateway's keys are by default (``keys.decrypt_session_key``, the function it uses)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    server_key, host_key = (rsa.generate_private_key(65537, bits) for bits in (1024, 2048))
    sid = os.urandom(16)
    value = keys.encrypt_session_key(
        os.urandom(32), sid, keys.public_numbers(server_key), keys.public_numbers(host_key)
    )
    done, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        keys.decrypt_session_key(value, sid, server_key, host_key)
        done += 1
    return per_login_ms(time.process_time() - cpu_start, done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each round")
    parser.add_argument("--clients", type=int, default=4, help="client processes at a time")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sshgw-bench-handshakes-"))
    (work / "authorized_keys").write_text("")
    hosts = work / "hosts"
    hosts.write_text("127.0.0.1\n" * KEYSCAN_BATCH)
    config = {
        "protocols": ["1", "2"],
        # Only handshakes are measured; the user exists so that the config is whole.
        "users": {"bench": {
            "authorized_keys": str(work / "authorized_keys"),
            "targets": ["local"],
            "os_user": pwd.getpwuid(os.geteuid()).pw_name,
        }},  # fmt: skip
    }
    rounds = {
        "SSH-1 (session key accepted; RSA 1024 + 2048 decrypted)": lambda port: ssh1_round(
            port, args.seconds, args.clients
        ),
        "SSH-2 ssh-keyscan, ed25519 host key": lambda port: ssh2_round(
            port, "ed25519", args.seconds, args.clients, hosts
        ),
        "SSH-2 ssh-keyscan, rsa host key (3072)": lambda port: ssh2_round(
            port, "rsa", args.seconds, args.clients, hosts
        ),
    }
    rows = []
    with GatewayProcess(work, config) as gw:
        # The first SSH-1 connection builds the server key: not part of any round.
        ssh1_handshake(gw.port)
        for name, run in rounds.items():
            with CpuMeter(gw.pid) as cpu:
                started = time.perf_counter()
                done, failed = run(gw.port)
                elapsed = time.perf_counter() - started
            rows.append((name, done, failed, elapsed, cpu.seconds))
        gw.assert_no_traceback()
    rsa_ms = raw_rsa_ms()
    print(f"Handshakes against one gateway process, {args.clients} clients, "
          f"{args.seconds:g} s each; {os.cpu_count()} cores shared with the clients")  # fmt: skip
    for name, done, failed, elapsed, cpu_seconds in rows:
        per_core = done / cpu_seconds if cpu_seconds else float("nan")
        print(
            f"  {name:56s} {done:6d} done {failed:4d} failed  {done / elapsed:7.1f}/s wall  "
            f"gateway {per_login_ms(cpu_seconds, done):6.2f} CPU ms each = {per_core:6.0f}/s per core"
        )
    print(f"  the SSH-1 server's two RSA decryptions alone: {rsa_ms:.2f} CPU ms "
          f"= {1000 / rsa_ms:.0f}/s per core")  # fmt: skip


if __name__ == "__main__":
    main()
