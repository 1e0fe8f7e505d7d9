"""SSH-2 benchmark: the gateway against OpenSSH's sshd, same machine, same run, same
algorithms. Prints each measurement for both and the gateway/sshd ratio.

    .venv/bin/python -m bench.ssh2 [--mib 256] [--connections 80] [--idle 30]
                                   [--cipher aes128-ctr] [--mac hmac-sha2-256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import (
    gateway_server,
    make_user_key,
    openssh_server,
    ssh_argv,
    tree_private_kib,
    workdir,
)

CIPHER, MAC, KEX = "aes128-ctr", "hmac-sha2-256", "curve25519-sha256"  # --cipher, --mac


def throughput(port: int, key: Path, user: str, mib: int) -> tuple[float, float]:
    """MiB/s client->server (into cat >/dev/null) and server->client (head -c from /dev/zero)."""
    size = mib * 1024 * 1024
    up = ssh_argv(port, key, user, "cat > /dev/null", cipher=CIPHER, mac=MAC)
    started = time.perf_counter()
    with subprocess.Popen(up, stdin=subprocess.PIPE) as proc:
        block = b"\0" * (1 << 20)
        for _ in range(mib):
            proc.stdin.write(block)
        proc.stdin.close()
        proc.wait()
    up_rate = mib / (time.perf_counter() - started)

    down = ssh_argv(port, key, user, f"head -c {size} /dev/zero", cipher=CIPHER, mac=MAC)
    started = time.perf_counter()
    with subprocess.Popen(down, stdout=subprocess.PIPE) as proc:
        received = 0
        while chunk := proc.stdout.read(1 << 20):
            received += len(chunk)
        proc.wait()
    down_rate = mib / (time.perf_counter() - started)
    assert received == size, (received, size)
    return up_rate, down_rate


def connection_rate(port: int, key: Path, user: str, total: int, concurrency: int = 4) -> float:
    argv = ssh_argv(port, key, user, "true", cipher=CIPHER, mac=MAC)

    def one(_: int) -> int:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        failures = sum(1 for rc in pool.map(one, range(total)) if rc != 0)
    elapsed = time.perf_counter() - started
    if failures:
        print(f"   ({failures} of {total} connections failed)")
    return total / elapsed


def idle_session_kib(port: int, pid: int, key: Path, user: str, count: int) -> float:
    argv = ssh_argv(port, key, user, "-N", cipher=CIPHER, mac=MAC)
    # Warm up first: the first connections import and cache what every later one shares
    # (and free start-up garbage), which would otherwise hide the per-session cost.
    warm = [subprocess.Popen(argv, stdin=subprocess.DEVNULL) for _ in range(5)]
    time.sleep(2)
    for c in warm:
        c.terminate()
        c.wait(10)
    time.sleep(1)
    before = tree_private_kib(pid)
    clients = [subprocess.Popen(argv, stdin=subprocess.DEVNULL) for _ in range(count)]
    try:
        time.sleep(3 + count * 0.05)  # let every client authenticate and settle
        after = tree_private_kib(pid)
    finally:
        for c in clients:
            c.terminate()
        for c in clients:
            c.wait(10)
    return (after - before) / count


def main() -> None:
    global CIPHER, MAC
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256, help="transfer size each way")
    parser.add_argument("--connections", type=int, default=80)
    parser.add_argument("--idle", type=int, default=100, help="idle sessions for the memory test")
    parser.add_argument("--cipher", default=CIPHER, help="e.g. chacha20-poly1305@openssh.com")
    parser.add_argument("--mac", default=MAC, help="e.g. hmac-sha2-256-etm@openssh.com")
    args = parser.parse_args()
    CIPHER, MAC = args.cipher, args.mac

    wd = workdir()
    key = make_user_key(wd)
    user = os.environ.get("USER") or "root"
    results: dict[str, dict[str, float]] = {}
    servers = {
        "sshd": lambda: openssh_server(wd, key, CIPHER, MAC, KEX),
        "gateway": lambda: gateway_server(wd, key, CIPHER, MAC, KEX),
    }
    for name, start in servers.items():
        login = user if name == "sshd" else "bench"
        with start() as (port, pid):
            # Idle memory first, on a fresh server: after a bulk transfer the allocator's
            # freed buffers would make the per-session growth look negative.
            idle = idle_session_kib(port, pid, key, login, args.idle)
            rate = connection_rate(port, key, login, args.connections)
            up, down = throughput(port, key, login, args.mib)
        results[name] = {"up MiB/s": up, "down MiB/s": down, "conn/s": rate, "KiB/idle": idle}
        print(f"{name:8s} " + "  ".join(f"{k} {v:8.1f}" for k, v in results[name].items()))

    print(f"\nSSH-2, {CIPHER} + {MAC}, {KEX}; ratio = gateway / sshd (same run)")
    for metric in results["sshd"]:
        ref, ours = results["sshd"][metric], results["gateway"][metric]
        ratio = ours / ref if ref else float("nan")
        print(f"  {metric:12s} sshd {ref:9.1f}   gateway {ours:9.1f}   ratio {ratio:5.2f}")


if __name__ == "__main__":
    main()
