"""SSH-2 benchmark: the gateway against OpenSSH's sshd, same machine, same run, same
algorithms, same login name. Prints each measurement for both and the gateway/sshd ratio:
logins/s and transfer rates, and beside them the server's CPU time per login and per GiB
(its process and all its children, :mod:`bench.cpu`), which a busy machine moves far
less than the rates. sshd is logged in to as an account with no shell start-up files
(:mod:`bench.account`), so a login costs sshd, not the account's ``~/.bashrc``.

    .venv/bin/python -m bench.ssh2 [--mib 256] [--connections 80] [--concurrency 1,16]
                                   [--idle 100] [--cipher aes128-ctr] [--mac hmac-sha2-256]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.account import bench_account
from bench.cpu import CpuMeter, per_gib, per_login_ms, ratio
from bench.harness import (
    gateway_server,
    make_user_key,
    openssh_server,
    ssh_argv,
    tree_private_kib,
    workdir,
)

CIPHER, MAC, KEX = "aes128-ctr", "hmac-sha2-256", "curve25519-sha256"  # --cipher, --mac


def throughput(port: int, pid: int, key: Path, user: str, mib: int) -> dict[str, float]:
    """MiB/s and the server's CPU s/GiB, client->server (into ``cat >/dev/null``) and
    server->client (``head -c`` from /dev/zero)."""
    size = mib * 1024 * 1024
    up = ssh_argv(port, key, user, "cat > /dev/null", cipher=CIPHER, mac=MAC)
    with CpuMeter(pid) as up_cpu:
        started = time.perf_counter()
        with subprocess.Popen(up, stdin=subprocess.PIPE) as proc:
            block = b"\0" * (1 << 20)
            for _ in range(mib):
                proc.stdin.write(block)
            proc.stdin.close()
            proc.wait()
        up_rate = mib / (time.perf_counter() - started)

    down = ssh_argv(port, key, user, f"head -c {size} /dev/zero", cipher=CIPHER, mac=MAC)
    with CpuMeter(pid) as down_cpu:
        started = time.perf_counter()
        with subprocess.Popen(down, stdout=subprocess.PIPE) as proc:
            received = 0
            while chunk := proc.stdout.read(1 << 20):
                received += len(chunk)
            proc.wait()
        down_rate = mib / (time.perf_counter() - started)
    assert received == size, (received, size)
    return {
        "up MiB/s": up_rate, "up CPU s/GiB": per_gib(up_cpu.seconds, size),
        "down MiB/s": down_rate, "down CPU s/GiB": per_gib(down_cpu.seconds, size),
    }


def login_rate(
    port: int, pid: int, key: Path, user: str, total: int, concurrency: int
) -> tuple[float, float]:
    """Logins/s running ``true`` from ``concurrency`` clients at once, and the server's
    CPU milliseconds per login."""
    argv = ssh_argv(port, key, user, "true", cipher=CIPHER, mac=MAC)

    def one(_: int) -> int:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode

    with CpuMeter(pid) as cpu:
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            failures = sum(1 for rc in pool.map(one, range(total)) if rc != 0)
        elapsed = time.perf_counter() - started
    if failures:
        print(f"   ({failures} of {total} connections failed)")
    return total / elapsed, per_login_ms(cpu.seconds, total)


def who_runs_commands(port: int, key: Path, user: str) -> str:
    """Which account, shell and home a command gets from this server (for the report)."""
    argv = ssh_argv(port, key, user, 'echo "$(id -un) $SHELL $HOME"', cipher=CIPHER, mac=MAC)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip()


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
    parser.add_argument("--connections", type=int, default=80, help="logins per concurrency")
    parser.add_argument("--concurrency", default="1,16", help="clients at once, comma-separated")
    parser.add_argument("--idle", type=int, default=100, help="idle sessions for the memory test")
    parser.add_argument("--cipher", default=CIPHER, help="e.g. chacha20-poly1305@openssh.com")
    parser.add_argument("--mac", default=MAC, help="e.g. hmac-sha2-256-etm@openssh.com")
    args = parser.parse_args()
    CIPHER, MAC = args.cipher, args.mac
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    wd = workdir()
    key = make_user_key(wd)
    login = bench_account().name
    results: dict[str, dict[str, float]] = {}
    servers = {
        "sshd": lambda: openssh_server(wd, key, CIPHER, MAC, KEX),
        "gateway": lambda: gateway_server(wd, key, login, CIPHER, MAC, KEX),
    }
    for name, start in servers.items():
        with start() as (port, pid):
            print(f"{name:8s} logged in to as {login}; a command runs as: "
                  f"{who_runs_commands(port, key, login)}")
            # Idle memory first, on a fresh server: after a bulk transfer the allocator's
            # freed buffers would make the per-session growth look negative.
            result = {"KiB/idle session": idle_session_kib(port, pid, key, login, args.idle)}
            for clients in concurrencies:
                rate, cpu = login_rate(port, pid, key, login, args.connections, clients)
                result[f"logins/s x{clients}"] = rate
                result[f"CPU ms/login x{clients}"] = cpu
            result.update(throughput(port, pid, key, login, args.mib))
        results[name] = result

    print(f"\nSSH-2, {CIPHER} + {MAC}, {KEX}; ratio = gateway / sshd (same run). "
          f"CPU: the server process and its children; xN: N clients at once")
    for metric in results["sshd"]:
        ref, ours = results["sshd"][metric], results["gateway"][metric]
        print(f"  {metric:18s} sshd {ref:9.2f}   gateway {ours:9.2f}   "
              f"ratio {ratio(ours, ref):5.2f}")


if __name__ == "__main__":
    main()
