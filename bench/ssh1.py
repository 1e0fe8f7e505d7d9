"""SSH-1 cost per cipher and direction (issue 15): the gateway's CPU seconds per GiB moved,
on the SSH-1 front (``plink -1`` -> gateway -> its local command) and on the SSH-1
upstream client (the gateway's client -> an SSH-1 device), each beside the cipher's own
cost per GiB measured in the same run, and their ratio. Not a test.

    .venv/bin/python -m bench.ssh1 [--mib 32] [--ciphers 3des,des,blowfish] [--side front,client]

Directions are the user's: *upload* is data towards the program (``cat > /dev/null``),
*download* is data from it (``head -c N /dev/zero``). On the front the gateway decrypts
an upload and encrypts a download; its client does the opposite.

- front: the CPU time of the gateway process itself (all its threads), not of the
  command it runs nor of plink (plink's own 3DES is slower than the gateway's and sets
  the wall-clock rate, so rates are printed only for orientation);
- client: :mod:`bench.ssh1_client` runs the gateway's SSH-1 client in a process of its
  own against a second gateway as the device, and reports its own CPU time;
- cipher: the stream the gateway uses (``protocols.ssh1.ciphers``) over 32 KiB updates in
  this process, in the direction the gateway does it; beside it the same cipher built on
  ``cryptography`` only (single DES there is a full TripleDES pass), for comparison.

The ratios are gateway / cipher and gateway / cryptography: 1.0 would mean the gateway
spends nothing but the cipher. ``--quick`` (``python -m bench --quick``) moves 4 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.account import bench_account  # noqa: E402
from bench.cpu import CLOCK_TICKS, PROC, parse_stat, per_gib, ratio  # noqa: E402
from protocols.ssh1 import ciphers  # noqa: E402
from tests.support.clients import hash_password, plink1_argv  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.peers import putty_cipher_session  # noqa: E402

CIPHERS = tuple(c.name for c in ciphers.CIPHERS if c.encrypts)
SIDES = ("front", "client")
DIRECTIONS = ("upload", "download")
PASSWORD = "bench password"
UPDATE = 32 * 1024


def cipher_cost(stream: ciphers.Stream, seconds: float = 1.0) -> float:
    """CPU s/GiB of ``stream`` over 32 KiB updates, in this process."""
    block = os.urandom(UPDATE)
    done, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        stream.update(block)
        done += UPDATE
    return per_gib(elapsed, done)


def gateway_encrypts(side: str, direction: str) -> bool:
    """Whether the gateway encrypts (True) or decrypts the bulk data of this transfer."""
    return (side == "front") == (direction == "download")


def own_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` itself (every thread; not its children)."""
    return parse_stat((PROC / str(pid) / "stat").read_text()).own / CLOCK_TICKS


def front(gw: GatewayProcess, cipher: str, direction: str, nbytes: int, upload: Path) -> tuple[float, float]:
    """(CPU s/GiB of the gateway, MB/s) for one plink -1 transfer. The gateway's CPU for
    the same login running ``true`` (key exchange, password hash, starting and reaping
    the command) is measured first and taken off: it is per session, not per byte."""
    command = "cat > /dev/null" if direction == "upload" else f"head -c {nbytes} /dev/zero"
    with putty_cipher_session(cipher) as session:
        login = _plink_cpu(gw, plink1_argv(gw, "true", user="bench", password=PASSWORD, load=session), None)[0]
        argv = plink1_argv(gw, command, user="bench", password=PASSWORD, load=session)
        cpu, elapsed, result = _plink_cpu(gw, argv, upload if direction == "upload" else None)
    if result.returncode != 0 or (direction == "download" and result.received != nbytes):
        raise SystemExit(f"front {cipher} {direction}: plink failed: {result.stderr[-300:]!r}")
    return per_gib(max(cpu - login, 0.0), nbytes), nbytes / elapsed / 1e6


def _plink_cpu(gw: GatewayProcess, argv: list[str], stdin_path: Path | None) -> tuple[float, float, _Plink]:
    """(gateway CPU seconds, wall seconds, result) of one plink run."""
    with open(stdin_path or os.devnull, "rb") as stdin:
        cpu = own_cpu(gw.pid)
        started = time.perf_counter()
        result = _run_plink(argv, stdin)
        elapsed = time.perf_counter() - started
        time.sleep(0.2)  # the session's end (reaping, logging) is the gateway's too
        return own_cpu(gw.pid) - cpu, elapsed, result


class _Plink:
    def __init__(self, returncode: int, received: int, stderr: bytes) -> None:
        self.returncode, self.received, self.stderr = returncode, received, stderr


def _run_plink(argv: list[str], stdin) -> _Plink:
    """plink with its output counted and dropped (read from a pipe, in big reads)."""
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received = 0
    while chunk := proc.stdout.read(1 << 20):
        received += len(chunk)
    stderr = proc.stderr.read()
    return _Plink(proc.wait(3600), received, stderr)


def client(device: GatewayProcess, cipher: str, direction: str, nbytes: int) -> tuple[float, float]:
    """(CPU s/GiB of the gateway's SSH-1 client, MB/s) for one transfer to ``device``."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.ssh1_client", "--port", str(device.port), "--user", "bench",
         "--password", PASSWORD, "--cipher", cipher, f"--{direction}", str(nbytes)],
        capture_output=True, text=True, cwd=REPO, timeout=3600,
    )
    if out.returncode != 0:
        raise SystemExit(f"client {cipher} {direction}: {out.stderr[-500:]}")
    result = json.loads(out.stdout.splitlines()[-1])
    moved = result["sent"] or result["received"]
    if moved != nbytes or result["status"] != 0:
        raise SystemExit(f"client {cipher} {direction}: moved {moved} of {nbytes}: {result}")
    return per_gib(result["cpu"], nbytes), nbytes / result["seconds"] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32, help="MiB per transfer")
    parser.add_argument("--ciphers", default=",".join(CIPHERS))
    parser.add_argument("--side", default=",".join(SIDES))
    args = parser.parse_args()
    names = [n for n in args.ciphers.split(",") if n]
    sides = [s for s in args.side.split(",") if s]
    for name in names:
        if name not in CIPHERS:
            raise SystemExit(f"unknown cipher {name!r}; SSH-1 has {', '.join(CIPHERS)}")
    nbytes = args.mib * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="sshgw-bench-ssh1-"))
    upload = work / "upload"
    upload.write_bytes(os.urandom(nbytes))
    config = {
        "protocols": ["1"],
        "users": {"bench": {"password": hash_password(PASSWORD), "targets": ["local"],
                            "os_user": bench_account().name}},
        "ssh1": {"ciphers": list(CIPHERS)},
        "auth": {"failure_delay": 0.2},
    }
    rows = []
    with GatewayProcess(work, config) as gw:
        for name in names:
            spec = ciphers.BY_NAME[name]
            for side in sides:
                for direction in DIRECTIONS:
                    if side == "front":
                        ours, rate = front(gw, name, direction, nbytes, upload)
                    else:
                        ours, rate = client(gw, name, direction, nbytes)
                    key = os.urandom(32)
                    encrypts = gateway_encrypts(side, direction)
                    used = cipher_cost(spec.encryptor(key) if encrypts else spec.decryptor(key))
                    plain = cipher_cost(ciphers.cryptography_stream(name, key, encrypts))
                    rows.append((name, side, direction, encrypts, ours, used, plain, rate))
    print(f"SSH-1 CPU seconds per GiB, {args.mib} MiB per transfer; cipher = the gateway's "
          f"stream alone (32 KiB updates); 'cryptography' = the same cipher built on "
          f"cryptography only")
    print(f"  {'cipher':8s} {'side':6s} {'direction':9s} {'does':7s} {'gateway':>8s} "
          f"{'cipher':>8s} {'ratio':>6s} {'cryptography':>12s} {'ratio':>6s} {'MB/s':>7s}")
    for name, side, direction, encrypts, ours, used, plain, rate in rows:
        print(f"  {name:8s} {side:6s} {direction:9s} {'encrypt' if encrypts else 'decrypt':7s} "
              f"{ours:8.2f} {used:8.2f} {ratio(ours, used):6.2f} {plain:12.2f} "
              f"{ratio(ours, plain):6.2f} {rate:7.2f}")


if __name__ == "__main__":
    main()
