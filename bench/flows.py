"""What flow recording costs: the gateway's CPU time per GiB through ``cat`` with recording
on and off, in the same run, beside the throughput, plus the per-packet cost of the
recorder itself.

Two gateways run side by side, identical but for ``[flows] enabled``; rounds alternate
between them so that machine noise hits both alike. The issue's bar: recording lowers
throughput by at most 5%. On a shared machine rates swing by more than that from one
minute to the next (0.84, then 1.06), so the verdict is CPU time: the gateway's process
and its children (:mod:`bench.cpu`) per GiB, on/off <= 1/0.95, from each side's cheapest
round: a busy neighbour only ever adds CPU time (cache misses, a stolen core), never
removes it. The in-process cost per recorded packet is the steadiest figure of all.

    .venv/bin/python -m bench.flows [--mib 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.account import bench_account
from bench.cpu import CpuMeter, per_gib
from bench.harness import gateway_config, make_user_key, ssh_argv, workdir
from protocols.flow import C2S, S2C, FlowRecorder
from tests.support.gateway_process import GatewayProcess

CIPHER, MAC, KEX = "aes128-ctr", "hmac-sha2-256", "curve25519-sha256"
LOGIN = "bench"  # only the gateway is measured; its local target runs as the bench account
CPU_BAR = 1 / 0.95  # recording may cost at most 5% of the throughput


@contextmanager
def gateway(base: Path, key: Path, recording: bool):
    work = base / ("recording-on" if recording else "recording-off")
    work.mkdir()
    authorized = work / "authorized_keys"
    authorized.write_text(Path(str(key) + ".pub").read_text())
    config = gateway_config(LOGIN, authorized, CIPHER, MAC, KEX, os_user=bench_account().name)
    config["flows"] = {"enabled": recording}
    with GatewayProcess(work, config) as gw:
        yield gw


def through_cat(port: int, key: Path, mib: int) -> float:
    """MiB/s of ``mib`` MiB sent into ``cat`` and read back at the same time."""
    argv = ssh_argv(port, key, LOGIN, "cat", cipher=CIPHER, mac=MAC)
    block = b"\x5a" * (1 << 20)
    started = time.perf_counter()
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:

        def feed() -> None:
            for _ in range(mib):
                proc.stdin.write(block)
            proc.stdin.close()

        writer = threading.Thread(target=feed)
        writer.start()
        received = 0
        while chunk := proc.stdout.read(1 << 20):
            received += len(chunk)
        writer.join()
        proc.wait()
    elapsed = time.perf_counter() - started
    assert received == mib << 20, (received, mib << 20)
    return mib / elapsed


def recorder_cost(packets: int = 1_000_000) -> float:
    """Nanoseconds per recorded packet (bulk data: the merged-message path)."""
    flow = FlowRecorder("server", "bench", "ssh2")
    flow.packet(C2S, "SSH2_MSG_CHANNEL_OPEN", 64)
    started = time.perf_counter()
    for i in range(packets):
        flow.packet(C2S if i & 1 else S2C, "SSH2_MSG_CHANNEL_DATA", 32804)
    return (time.perf_counter() - started) / packets * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB through cat per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    base = workdir()
    key = make_user_key(base)
    rates: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    with ExitStack() as stack:
        gws = {flag: stack.enter_context(gateway(base, key, flag)) for flag in (False, True)}
        through_cat(gws[True].port, key, 1)  # warm up both (imports, first key exchange)
        through_cat(gws[False].port, key, 1)
        for round_ in range(args.rounds):
            order = (True, False) if round_ % 2 == 0 else (False, True)
            for flag in order:
                with CpuMeter(gws[flag].pid) as meter:
                    rates[flag].append(through_cat(gws[flag].port, key, args.mib))
                cpu[flag].append(meter.seconds)
        records = Path(gws[True].config["state_dir"]) / "flows" / "flows.jsonl"
        recorded = len(records.read_text().splitlines()) if records.exists() else 0
        off_dir = Path(gws[False].config["state_dir"]) / "flows"
        assert not off_dir.exists(), "recording off must write nothing"

    size = args.mib << 20
    on, off = max(rates[True]), max(rates[False])
    cpu_on, cpu_off = per_gib(min(cpu[True]), size), per_gib(min(cpu[False]), size)
    print(f"SSH-2 {CIPHER}/{MAC}, {args.mib} MiB through cat and back, {args.rounds} rounds "
          f"each; CPU: the gateway and its children, per GiB through cat")
    for label, flag, rate, per in (("off", False, off, cpu_off), ("on ", True, on, cpu_on)):
        print(f"  recording {label}: least {per:5.2f} CPU s/GiB (rounds: "
              f"{', '.join(f'{per_gib(c, size):.2f}' for c in cpu[flag])})   "
              f"best {rate:7.1f} MiB/s  (rounds: {', '.join(f'{r:.1f}' for r in rates[flag])})")
    print(f"  ratio on/off:  CPU {cpu_on / cpu_off:6.3f} (bar <= {CPU_BAR:.3f}: recording costs "
          f"at most 5% of the throughput)   rate {on / off:6.3f}   ({recorded} flows recorded)")
    cost = recorder_cost()
    # A GiB through cat crosses the gateway both ways in 32 KiB channel packets (window
    # adjusts and the merged entries' bookkeeping are within the same per-call cost).
    packets_per_gib = 2 * (1 << 30) / 32768
    recorder_per_gib = packets_per_gib * cost / 1e9
    print(f"  recorder cost: {cost:6.0f} ns per packet (in process), about "
          f"{recorder_per_gib:.3f} CPU s/GiB through cat, "
          f"{100 * recorder_per_gib / cpu_off:.1f}% of the gateway's CPU with recording off")


if __name__ == "__main__":
    main()
