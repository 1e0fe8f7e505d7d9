"""Worker processes (``workers = N``): logins/s and aggregate bulk throughput of the
gateway with 1 and 2 workers, beside OpenSSH's sshd, same machine, same run, same
algorithms and login name as bench.ssh2. Aggregate throughput: ``parallel`` downloads at
once (``head -c SIZE /dev/zero`` each), total bytes over the time until the last ends.

    .venv/bin/python -m bench.workers [--mib 64] [--connections 80] [--parallel 4,16]
                                      [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.account import bench_account
from bench.cpu import CpuMeter, per_gib, ratio
from bench.harness import gateway_server, make_user_key, openssh_server, ssh_argv, workdir
from bench.ssh2 import CIPHER, KEX, MAC, login_rate


def aggregate_throughput(
    port: int, pid: int, key: Path, user: str, mib: int, parallel: int
) -> tuple[float, float]:
    """MiB/s of ``parallel`` downloads of ``mib`` MiB each at once, and the server's CPU
    s/GiB."""
    size = mib * 1024 * 1024
    argv = ssh_argv(port, key, user, f"head -c {size} /dev/zero", cipher=CIPHER, mac=MAC)

    def one(_: int) -> int:
        received = 0
        with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
            while chunk := proc.stdout.read(1 << 20):
                received += len(chunk)
        return received

    with CpuMeter(pid) as cpu:
        started = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            received = sum(pool.map(one, range(parallel)))
        elapsed = time.perf_counter() - started
    if received != size * parallel:
        print(f"   (received {received} of {size * parallel} bytes)")
    return received / (1 << 20) / elapsed, per_gib(cpu.seconds, received)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=64, help="size of each parallel download")
    parser.add_argument("--connections", type=int, default=80, help="logins, 16 at a time")
    parser.add_argument("--parallel", default="4,16", help="downloads at once, comma-separated")
    parser.add_argument("--workers", default="1,2", help="gateway worker counts to measure")
    args = parser.parse_args()
    parallels = [int(p) for p in args.parallel.split(",")]

    wd = workdir()
    key = make_user_key(wd)
    login = bench_account().name
    servers = {"sshd": lambda: openssh_server(wd, key, CIPHER, MAC, KEX)}
    for count in (int(w) for w in args.workers.split(",")):
        servers[f"gw x{count}"] = lambda count=count: gateway_server(
            wd, key, login, CIPHER, MAC, KEX, workers=count
        )
    results: dict[str, dict[str, float]] = {}
    for name, start in servers.items():
        with start() as (port, pid):
            rate, cpu = login_rate(port, pid, key, login, args.connections, 16)
            result = {"logins/s x16": rate, "CPU ms/login": cpu}
            for parallel in parallels:
                mibs, cpu_gib = aggregate_throughput(port, pid, key, login, args.mib, parallel)
                result[f"MiB/s x{parallel}"] = mibs
                result[f"CPU s/GiB x{parallel}"] = cpu_gib
        results[name] = result
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)

    print(
        f"\nSSH-2, {CIPHER} + {MAC}; {os.cpu_count()} cores on this machine (shared: rates "
        "move with whatever else runs); ratio = gateway / sshd (same run)"
    )
    names = list(results)
    print(
        "  "
        + " " * 16
        + "".join(f"{n:>12s}" for n in names)
        + "".join(f"{'ratio ' + n.split()[-1]:>12s}" for n in names[1:])
    )
    for metric in results["sshd"]:
        row = [results[n][metric] for n in names]
        ratios = [ratio(v, row[0]) for v in row[1:]]
        print(
            f"  {metric:16s}"
            + "".join(f"{v:12.2f}" for v in row)
            + "".join(f"{r:12.2f}" for r in ratios)
        )


if __name__ == "__main__":
    main()
