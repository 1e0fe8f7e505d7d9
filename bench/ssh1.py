"""SSH-1 throughput benchmark (issue 3): MB/s per cipher through ``cat`` with ``plink -1``
against a gateway subprocess, beside the raw speed of the same cipher in ``cryptography``
measured in the same run (the ceiling), and their ratio. Not a test.

    .venv/bin/python -m bench.ssh1 [--mib 32]

The transfer is timed end to end (up through the gateway, through ``cat``, and back), so
each byte is decrypted once and encrypted once by the gateway; the ceiling is the raw
one-direction speed of the cipher, which the gateway must do twice per byte — a ratio of
0.5 would mean the gateway spends all its time in the cipher. plink's own cipher speed
is part of the measurement, as it is for a real user.

Beside the rates, CPU time per GiB through cat: the gateway's (its process and its
children, :mod:`bench.cpu`) and the raw cipher's (this process, one direction); their
"cipher share" (2 x raw / gateway) is the part of the gateway's CPU the cipher itself
must take, and does not swing with the machine's load as the rates do.
"""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.account import bench_account  # noqa: E402
from bench.cpu import CpuMeter, per_gib  # noqa: E402
from protocols.ssh1 import ciphers  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402

CIPHERS = ("3des", "blowfish", "des")


def raw_speed(name: str, seconds: float = 1.0) -> tuple[float, float]:
    """MB/s and CPU s/GiB of the bare cipher (one direction, 32 KiB updates) in
    ``cryptography``."""
    stream = ciphers.BY_NAME[name].encryptor(os.urandom(32))
    block = os.urandom(32768)
    done, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        stream.update(block)
        done += len(block)
    return done / elapsed / 1e6, per_gib(time.process_time() - cpu_start, done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=32, help="bytes sent through cat, in MiB")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sshgw-bench-ssh1-"))
    key = work / "rsa1"
    subprocess.run(
        ["puttygen", "-t", "rsa1", "-b", "2048", "-o", str(key), "--new-passphrase", "/dev/null"],
        check=True, capture_output=True,
    )
    public = subprocess.run(
        ["puttygen", str(key), "-O", "public"], check=True, capture_output=True, text=True
    ).stdout
    (work / "authorized_keys").write_text(public)
    config = {
        "protocols": ["1"],
        "users": {"bench": {"authorized_keys": str(work / "authorized_keys"),
                            "targets": ["local"], "os_user": bench_account().name}},
        "ssh1": {"ciphers": list(CIPHERS)},
    }
    data = os.urandom(args.mib * 1024 * 1024)
    sessions = Path(pwd.getpwuid(os.geteuid()).pw_dir) / ".putty" / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    rows = []
    with GatewayProcess(work, config) as gw:
        out = subprocess.run(
            [sys.executable, "-c", "import sys; from tools.cli import main; sys.exit(main())",
             "fingerprints", "--config", str(gw.config_path)],
            capture_output=True, text=True, cwd=REPO, check=True,
        ).stdout
        fingerprint = next(line.split()[3] for line in out.splitlines() if line.startswith("SSH-1"))
        for name in CIPHERS:
            session = sessions / f"sshgateway-bench-ssh1-{name}-{os.getpid()}"
            session.write_text(f"Cipher={name},WARN,aes,3des,blowfish,des\nSshProt=0\nHostName=127.0.0.1\n")
            try:
                with CpuMeter(gw.pid) as cpu:
                    start = time.perf_counter()
                    result = subprocess.run(
                        ["plink", "-batch", "-load", session.name, "-hostkey", fingerprint,
                         "-P", str(gw.port), "-l", "bench", "-i", str(key), "cat"],
                        input=data, capture_output=True, timeout=3600,
                    )
                    elapsed = time.perf_counter() - start
            finally:
                session.unlink()
            if result.stdout != data:
                raise SystemExit(f"{name}: data came back different: {result.stderr!r}")
            rows.append((name, len(data) / elapsed / 1e6, per_gib(cpu.seconds, len(data)),
                         *raw_speed(name)))
    print(f"SSH-1 through cat, {args.mib} MiB, plink -1; ceiling = raw cipher in cryptography; "
          f"CPU per GiB through cat (gateway and children) or enciphered once (raw)")
    for name, ours, ours_cpu, ceiling, raw_cpu in rows:
        print(f"  {name:9s} gateway {ours:7.2f} MB/s {ours_cpu:7.2f} CPU s/GiB   "
              f"raw cipher {ceiling:7.2f} MB/s {raw_cpu:7.2f} CPU s/GiB   "
              f"ratio {ours / ceiling:5.2f}   cipher share {2 * raw_cpu / ours_cpu:5.2f}")


if __name__ == "__main__":
    main()
