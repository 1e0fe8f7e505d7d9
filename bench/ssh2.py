"""SSH-2 benchmark: the gateway against OpenSSH's sshd, same machine, same run, same
algorithms, same login name. Prints each measurement for both and the gateway/sshd ratio:
logins/s and transfer rates, and beside them the server's CPU time per login and per GiB
(its process and all its children, :mod:`bench.cpu`), which a busy machine moves far
less than the rates. sshd is logged in to as an account with no shell start-up files
(:mod:`bench.account`), so a login costs sshd, not the account's ``~/.bashrc``.

``--bridged`` adds the bulk transfers through the gateway to that same sshd as an SSH-2
device (``ssh -> gateway -> sshd -> cat``): the gateway's CPU then is a server and a
client, so it is compared with sshd's plus OpenSSH ssh's on the direct transfer (the
client's CPU is its own, from the rusage of the reaped ``ssh``). ``--bulk-only`` skips
the logins and the idle memory; ``--no-recording`` turns the gateway's session recording
off (sshd records nothing); ``--profile FILE`` runs the gateway's reactor thread under
cProfile, timed by its CPU clock, and prints where its time went.

    .venv/bin/python -m bench.ssh2 [--mib 256] [--connections 80] [--concurrency 1,16]
                                   [--idle 100] [--cipher aes128-ctr] [--mac hmac-sha2-256]
                                   [--bulk-only] [--bridged] [--no-recording]
                                   [--profile FILE]
"""

from __future__ import annotations

import argparse
import math
import os
import pstats
import resource
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
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


def client_cpu_seconds() -> float:
    """CPU seconds of this process's children reaped so far (the ssh clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_way(argv: list[str], upload: bool, mib: int, pids: dict[str, int]) -> dict[str, float]:
    """One transfer of ``mib`` MiB: MiB/s, the CPU s/GiB of each server in ``pids`` (name
    -> pid of its tree) and of the ssh client itself."""
    size = mib * 1024 * 1024
    with ExitStack() as stack:
        meters = {name: stack.enter_context(CpuMeter(pid)) for name, pid in pids.items()}
        client_before = client_cpu_seconds()
        started = time.perf_counter()
        if upload:
            with subprocess.Popen(argv, stdin=subprocess.PIPE) as proc:
                block = b"\0" * (1 << 20)
                for _ in range(mib):
                    proc.stdin.write(block)
                proc.stdin.close()
                proc.wait()
        else:
            received = 0
            with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
                while chunk := proc.stdout.read(1 << 20):
                    received += len(chunk)
                proc.wait()
            assert received == size, (received, size)
        rate = mib / (time.perf_counter() - started)
        client = client_cpu_seconds() - client_before
    result = {"MiB/s": rate, "client": per_gib(client, size)}
    result.update({name: per_gib(meter.seconds, size) for name, meter in meters.items()})
    return result


def bulk(port: int, pids: dict[str, int], key: Path, user: str, mib: int) -> dict[str, dict]:
    """Client->server (into ``cat >/dev/null``) and server->client (``head -c`` from
    /dev/zero), each as :func:`one_way` measures it."""
    size = mib * 1024 * 1024
    up = ssh_argv(port, key, user, "cat > /dev/null", cipher=CIPHER, mac=MAC)
    down = ssh_argv(port, key, user, f"head -c {size} /dev/zero", cipher=CIPHER, mac=MAC)
    return {"up": one_way(up, True, mib, pids), "down": one_way(down, False, mib, pids)}


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


def print_profile(path: Path, top: int = 40) -> None:
    """The gateway's cProfile stats: the functions with the most time of their own."""
    stats = pstats.Stats(str(path))
    print(f"\nGateway profile ({path}): top {top} by own time")
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    global CIPHER, MAC
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256, help="transfer size each way")
    parser.add_argument("--connections", type=int, default=80, help="logins per concurrency")
    parser.add_argument("--concurrency", default="1,16", help="clients at once, comma-separated")
    parser.add_argument("--idle", type=int, default=100, help="idle sessions for the memory test")
    parser.add_argument("--cipher", default=CIPHER, help="e.g. chacha20-poly1305@openssh.com")
    parser.add_argument("--mac", default=MAC, help="e.g. hmac-sha2-256-etm@openssh.com")
    parser.add_argument("--bulk-only", action="store_true", help="only the bulk transfers")
    parser.add_argument("--bridged", action="store_true",
                        help="also through the gateway to sshd as an SSH-2 device")
    parser.add_argument("--profile", type=Path, help="run the gateway under cProfile, stats here")
    parser.add_argument("--no-recording", action="store_true",
                        help="the gateway without session recording (on by default)")
    args = parser.parse_args()
    CIPHER, MAC = args.cipher, args.mac
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    load_before = os.getloadavg()

    wd = workdir()
    key = make_user_key(wd)
    login = bench_account().name
    results: dict[str, dict[str, float]] = {}
    transfers: dict[str, dict[str, dict]] = {}
    with ExitStack() as stack:
        sshd_port, sshd_pid = stack.enter_context(openssh_server(wd, key, CIPHER, MAC, KEX))
        device = {"protocol": "ssh2", "host": "127.0.0.1", "port": sshd_port,
                  "username": login, "key": str(key), "ciphers": [CIPHER], "macs": [MAC],
                  "kex": [KEX]}
        gw_port, gw_pid = stack.enter_context(gateway_server(
            wd, key, login, CIPHER, MAC, KEX,
            targets={"sshd": device} if args.bridged else None,
            profile=args.profile.resolve() if args.profile else None,
            tables={"recording": {"enabled": False}} if args.no_recording else None,
        ))
        servers = {"sshd": (sshd_port, sshd_pid), "gateway": (gw_port, gw_pid)}
        for name, (port, pid) in servers.items():
            print(f"{name:8s} logged in to as {login}; a command runs as: "
                  f"{who_runs_commands(port, key, login)}")
            result: dict[str, float] = {}
            if not args.bulk_only:
                # Idle memory first, on a fresh server: after a bulk transfer the
                # allocator's freed buffers would make the per-session growth look negative.
                result["KiB/idle session"] = idle_session_kib(port, pid, key, login, args.idle)
                for clients in concurrencies:
                    rate, cpu = login_rate(port, pid, key, login, args.connections, clients)
                    result[f"logins/s x{clients}"] = rate
                    result[f"CPU ms/login x{clients}"] = cpu
            transfers[name] = bulk(port, {name: pid}, key, login, args.mib)
            for way in ("up", "down"):
                result[f"{way} MiB/s"] = transfers[name][way]["MiB/s"]
                result[f"{way} CPU s/GiB"] = transfers[name][way][name]
            results[name] = result
        if args.bridged:
            transfers["bridged"] = bulk(
                gw_port, {"gateway": gw_pid, "sshd": sshd_pid}, key, f"{login}+sshd", args.mib
            )
    load_after = os.getloadavg()

    print(f"\nSSH-2, {CIPHER} + {MAC}, {KEX}; ratio = gateway / sshd (same run). "
          f"CPU: the server process and its children; xN: N clients at once")
    for metric in results["sshd"]:
        ref, ours = results["sshd"][metric], results["gateway"][metric]
        print(f"  {metric:18s} sshd {ref:9.2f}   gateway {ours:9.2f}   "
              f"ratio {ratio(ours, ref):5.2f}")

    recording = "off" if args.no_recording else "on"
    print(f"\nBulk, {args.mib} MiB each way, gateway recording {recording}: CPU s/GiB of "
          f"each server's process tree and of the ssh client; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"({os.cpu_count()} cores)")
    print(f"  {'case':34s} {'way':4s} {'MiB/s':>7s} {'gateway':>8s} {'sshd':>8s} "
          f"{'client':>8s} {'ratio':>6s}")
    for way in ("up", "down"):
        direct_sshd, direct_gw = transfers["sshd"][way], transfers["gateway"][way]
        rows = [
            ("ssh -> sshd -> cat", direct_sshd, math.nan, direct_sshd["sshd"], math.nan),
            ("ssh -> gateway -> cat", direct_gw, direct_gw["gateway"], math.nan,
             ratio(direct_gw["gateway"], direct_sshd["sshd"])),
        ]
        if "bridged" in transfers:
            bridged = transfers["bridged"][way]
            # The gateway is sshd's server side and ssh's client side at once.
            openssh_pair = direct_sshd["sshd"] + direct_sshd["client"]
            rows.append(("ssh -> gateway -> sshd -> cat", bridged, bridged["gateway"],
                         bridged["sshd"], ratio(bridged["gateway"], openssh_pair)))
        for label, row, gateway_cpu, sshd_cpu, rel in rows:
            print(f"  {label:34s} {way:4s} {row['MiB/s']:7.1f} {gateway_cpu:8.2f} "
                  f"{sshd_cpu:8.2f} {row['client']:8.2f} {rel:6.2f}")
    print("  ratio: gateway / sshd direct; bridged: gateway / (sshd + ssh client) direct")
    if args.profile:
        print_profile(args.profile)


if __name__ == "__main__":
    main()
