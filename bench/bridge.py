"""Bridged throughput and memory (issue 4), beside the direct speed of each leg, same run.

    .venv/bin/python -m bench.bridge [--mib 32]

Bridge A: OpenSSH ssh (SSH-2) -> gateway -> SSH-1 device (a second gateway, SSH-1 only).
Bridge B: plink -1 (SSH-1)   -> gateway -> OpenSSH sshd (SSH-2).
Each leg is also measured on its own (client -> gateway's local `cat`; client -> device
directly); the ratio is bridge / slower leg, 1.0 meaning the bridge costs nothing beyond
its slowest hop. Then the gateway's peak resident memory while a client reads a fast
stream at about 100 KB/s. SSH-1 legs use blowfish (3DES is ~10x slower in Python).

Beside each rate, the CPU time per GiB through cat of all the servers involved (each
gateway and sshd with their children, :mod:`bench.cpu`); the CPU ratio is bridge /
(leg 1 + leg 2). Above 1 is the bridging plus the upstream leg's client side, which the
gateway does in the bridge and the client does on the direct leg. sshd is logged in to
as an account with no shell start-up files (:mod:`bench.account`).
"""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from bench.account import bench_account
from bench.cpu import CpuMeter, per_gib, ratio
from bench.harness import (
    REPO,
    make_user_key,
    openssh_server,
    ssh_argv,
    which,
    workdir,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import run_to_file

CIPHER, MAC, KEX = "aes128-ctr", "hmac-sha2-256", "curve25519-sha256"
PASSWORD = "bench password"


def cli(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from tools.cli import main; sys.exit(main())", *args],
        input=stdin, capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout


def ssh1_fingerprint(gw: GatewayProcess) -> str:
    out = cli("fingerprints", "--config", str(gw.config_path))
    return next(line.split()[3] for line in out.splitlines() if line.startswith("SSH-1"))


class Plink1:
    """plink -1 with blowfish chosen through a saved session (plink has no cipher flag)."""

    def __init__(self) -> None:
        home = Path(pwd.getpwuid(os.geteuid()).pw_dir)
        self.session = home / ".putty" / "sessions" / f"sshgateway-bench-bridge-{os.getpid()}"
        self.session.parent.mkdir(parents=True, exist_ok=True)
        self.session.write_text("Cipher=blowfish,3des,WARN,aes,des\nSshProt=0\nHostName=127.0.0.1\n")

    def argv(self, gw: GatewayProcess, user: str, *command: str) -> list[str]:
        return [which("plink"), "-batch", "-load", self.session.name, "-hostkey",
                ssh1_fingerprint(gw), "-P", str(gw.port), "-l", user, "-pw", PASSWORD, *command]

    def close(self) -> None:
        self.session.unlink(missing_ok=True)


def through_cat(argv: list[str], data: bytes, servers: list[int]) -> tuple[float, float]:
    """MB/s for data sent through a remote `cat` and back (each byte crosses twice), and
    the CPU s/GiB that the ``servers`` (pids) spent on it together."""
    with CpuMeter(*servers) as cpu:
        started = time.perf_counter()
        result = run_to_file(argv, input=data, timeout=3600)  # plink: see run_to_file
        elapsed = time.perf_counter() - started
    if result.stdout != data:
        raise SystemExit(f"data came back different from {argv[0]}: {result.stderr[-300:]!r}")
    return len(data) / elapsed / 1e6, per_gib(cpu.seconds, len(data))


def peak_rss_slow_reader(gw: GatewayProcess, argv: list[str], seconds: float = 10) -> int:
    before = gw.rss_kib()
    peak = before
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            client.stdout.read(10_000)  # about 100 KB/s
            time.sleep(0.1)
            peak = max(peak, gw.rss_kib())
    finally:
        client.kill()
        client.wait(10)
    return peak - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=32)
    args = parser.parse_args()
    wd = workdir()
    key = make_user_key(wd)
    hashed = cli("hash-password", stdin=PASSWORD + "\n").strip()
    authorized = wd / "front_authorized_keys"
    authorized.write_text(Path(str(key) + ".pub").read_text())
    authorized.chmod(0o600)
    data = os.urandom(args.mib * 1024 * 1024)
    login = bench_account().name
    plink = Plink1()
    with ExitStack() as stack:
        stack.callback(plink.close)
        (wd / "device").mkdir()
        device = stack.enter_context(GatewayProcess(wd / "device", {
            "protocols": ["1"],
            "users": {"admin": {"password": hashed, "targets": ["local"], "os_user": login}},
            "ssh1": {"ciphers": ["blowfish", "3des"]},
        }))
        sshd_port, sshd_pid = stack.enter_context(openssh_server(wd, key, CIPHER, MAC, KEX))
        (wd / "front").mkdir()
        front = stack.enter_context(GatewayProcess(wd / "front", {
            "protocols": ["1", "2"],
            "ssh1": {"ciphers": ["blowfish", "3des"]},
            "ssh2": {"ciphers": [CIPHER], "macs": [MAC], "kex": [KEX]},
            "users": {"bench": {"password": hashed, "authorized_keys": str(authorized),
                                "targets": ["local", "dev1", "host2"], "os_user": login}},
            "targets": {
                "dev1": {"protocol": "ssh1", "host": "127.0.0.1", "port": device.port,
                         "username": "admin", "password": PASSWORD, "ciphers": ["blowfish"]},
                "host2": {"protocol": "ssh2", "host": "127.0.0.1", "port": sshd_port,
                          "username": login, "key": str(key), "ciphers": [CIPHER],
                          "macs": [MAC], "kex": [KEX]},
            },
        }))

        def ssh(port: int, user: str, *command: str) -> list[str]:
            return ssh_argv(port, key, user, *command, cipher=CIPHER, mac=MAC)

        servers = [front.pid, device.pid, sshd_pid]
        a_bridge = through_cat(ssh(front.port, "bench+dev1", "cat"), data, servers)
        a_leg1 = through_cat(ssh(front.port, "bench", "cat"), data, servers)
        a_leg2 = through_cat(plink.argv(device, "admin", "cat"), data, servers)
        b_bridge = through_cat(plink.argv(front, "bench+host2", "cat"), data, servers)
        b_leg1 = through_cat(plink.argv(front, "bench", "cat"), data, servers)
        b_leg2 = through_cat(ssh(sshd_port, login, "cat"), data, servers)
        mem_a = peak_rss_slow_reader(front, ssh(front.port, "bench+dev1", "cat /dev/zero"))
        mem_b = peak_rss_slow_reader(front, plink.argv(front, "bench+host2", "cat /dev/zero"))

    print(f"Bridged throughput, {args.mib} MiB through cat and back (MB/s), and the servers' "
          f"CPU s/GiB; SSH-2 {CIPHER}+{MAC}, SSH-1 blowfish")
    for name, bridge, leg1, leg2, l1, l2 in (
        ("A ssh -> gw -> SSH-1 device", a_bridge, a_leg1, a_leg2,
         "ssh -> gw local", "plink -1 -> device"),
        ("B plink -1 -> gw -> sshd", b_bridge, b_leg1, b_leg2,
         "plink -1 -> gw local", "ssh -> sshd"),
    ):
        print(f"  {name:28s} {bridge[0]:7.2f} MB/s {bridge[1]:6.2f} CPU s/GiB   "
              f"ratio to slower leg {ratio(bridge[0], min(leg1[0], leg2[0])):5.2f}   CPU ratio "
              f"to both legs {ratio(bridge[1], leg1[1] + leg2[1]):5.2f}")
        for label, (rate, cpu) in ((l1, leg1), (l2, leg2)):
            print(f"      leg {label:22s} {rate:7.2f} MB/s {cpu:6.2f} CPU s/GiB")
    print("Gateway peak RSS growth while the client reads at ~100 KB/s (limit 32 MiB):")
    print(f"  A (SSH-1 device) {mem_a / 1024:6.1f} MiB   B (sshd) {mem_b / 1024:6.1f} MiB")


if __name__ == "__main__":
    main()
