"""What session recording costs: the gateway's CPU time per GiB of terminal output with
recording on and off, in the same run, beside the throughput; and the same for an
interactive burst (many small writes, each its own packet and its own recorded event).

Two gateways run side by side, identical but for ``[recording] enabled``; rounds alternate
between them so that machine noise hits both alike (as :mod:`bench.flows` does, whose
reasons hold here too: the verdict is CPU time, the gateway's process and its children
per GiB from each side's cheapest round; rates on a shared machine swing by more than
the 5% the issue allows).

- bulk: ``ssh -tt`` runs ``yes LINE | head -c SIZE`` (text, as a terminal shows it) and
  the client reads it all: every byte crosses the pty, the gateway and, with recording on,
  the recorder (JSON-escaped, buffered, written by its thread);
- burst: ``ssh -tt`` runs a shell loop that writes ``--writes`` short lines, one write(2)
  each: the per-event cost, not the per-byte one.

Each round's recording is deleted once it is complete, so that disk space stays flat. The
load average of every round is printed: on a shared machine the rounds are only as good as
it is low.

Last, the recorder alone, in this process (:func:`recorder_cost`): 256 MiB of typical pty
reads through a tapped session's client with recording on and off, the file on tmpfs:
CPU time that does not depend on what other processes on the machine do (only on how much
they share the caches).

    .venv/bin/python -m bench.recording [--mib 256] [--writes 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from bench.account import bench_account
from bench.cpu import CpuMeter, per_gib
from bench.harness import gateway_config, make_user_key, ssh_argv, workdir
from gateway.recording import CastFile, Recording
from gateway.session_tap import EndObserver, LiveSession, SessionInfo, TappedClient
from tests.support.gateway_process import GatewayProcess

CIPHER, MAC, KEX = "aes128-ctr", "hmac-sha2-256", "curve25519-sha256"
LOGIN = "bench"
CPU_BAR = 1 / 0.95  # recording may cost at most 5% of the throughput
LINE = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+"  # 63 + "\n" = 64 bytes


@contextmanager
def gateway(base: Path, key: Path, recording: bool):
    work = base / ("recording-on" if recording else "recording-off")
    work.mkdir()
    authorized = work / "authorized_keys"
    authorized.write_text(Path(str(key) + ".pub").read_text())
    config = gateway_config(LOGIN, authorized, CIPHER, MAC, KEX, os_user=bench_account().name)
    config["recording"] = {"enabled": recording}
    with GatewayProcess(work, config) as gw:
        yield gw


def recordings(gw: GatewayProcess) -> Path:
    return Path(gw.config["state_dir"]) / "recordings"


def settle_recordings(gw: GatewayProcess, timeout: float = 10.0) -> int:
    """Wait until the recordings stop growing (the recorder's thread writes up to a second
    after the session ended, and that work belongs to the round); their total size."""
    directory = recordings(gw)

    def total() -> int:
        return sum(p.stat().st_size for p in directory.glob("*.cast")) if directory.exists() else 0

    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        now = total()
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    return last


def clear_recordings(gw: GatewayProcess) -> None:
    for path in recordings(gw).glob("*.cast"):
        path.unlink()


def pty_argv(port: int, key: Path, command: str) -> list[str]:
    argv = ssh_argv(port, key, LOGIN, command, cipher=CIPHER, mac=MAC)
    return [argv[0], "-tt", *argv[1:]]


def read_all(argv: list[str]) -> int:
    """Run ``argv`` and count the bytes it writes to stdout."""
    received = 0
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) as proc:
        while chunk := proc.stdout.read(1 << 20):
            received += len(chunk)
        proc.wait()
    return received


def bulk(port: int, key: Path, size: int) -> float:
    """MiB/s of ``size`` bytes of text read through a pty."""
    command = f"yes {LINE} | head -c {size}"
    argv = pty_argv(port, key, command)
    started = time.perf_counter()
    received = read_all(argv)
    elapsed = time.perf_counter() - started
    expected = size + size // 64  # the pty turns each "\n" into "\r\n"
    assert received == expected, (received, expected)
    return size / (1 << 20) / elapsed


def burst(port: int, key: Path, writes: int) -> float:
    """Writes per second of a loop writing ``writes`` short lines through a pty."""
    command = f'i=0; while [ $i -lt {writes} ]; do echo "$ ls -l $i"; i=$((i+1)); done'
    argv = pty_argv(port, key, command)
    started = time.perf_counter()
    received = read_all(argv)
    elapsed = time.perf_counter() - started
    assert received >= writes * 9, received
    return writes / elapsed


def load_average() -> float:
    """The machine's 1-minute load average (the rounds are only as good as it is low)."""
    return os.getloadavg()[0]


def measure(gws, flag: bool, run) -> tuple[float, float, int]:
    """One round on one gateway: (rate, CPU seconds, bytes recorded)."""
    gw = gws[flag]
    with CpuMeter(gw.pid) as meter:
        rate = run(gw.port)
        recorded = settle_recordings(gw)
    clear_recordings(gw)
    return rate, meter.seconds, recorded


class _AtOnce:
    """A writer that does the work at once, in this thread (so that process_time has it)."""

    def run(self, work, *args):
        return succeed(work(*args))

    def stop(self) -> None:
        pass


class _TimedFile(CastFile):
    """The recording's real file, with the CPU time spent writing it kept apart."""

    spent = 0.0

    def append(self, data: bytes) -> None:
        started = time.thread_time()
        try:
            super().append(data)
        finally:
            _TimedFile.spent += time.thread_time() - started


class _EndOnly(EndObserver):
    """Stands for the observers a session has with recording off (audit, metrics...)."""

    def ended(self, info) -> None:
        pass


class _NullClient:
    def write_stdout(self, data: bytes) -> None:
        pass

    def write_stderr(self, data: bytes) -> None:
        pass


# Typical terminal output, as a pty gives it (4095 bytes a read): the bulk transfer's text
# lines, and a colored listing (escape sequences on every line).
TEXT_OUTPUT = ((LINE + "\r\n") * 64).encode()
COLORED_OUTPUT = b"".join(
    b"drwxr-xr-x 2 bench bench 4096 Jan  1 00:00 \x1b[01;34mdir%04d\x1b[0m\r\n" % n
    for n in range(64)
)
PTY_READ = 4095
RATE = 100 << 20  # bytes/s the clock advances by: a fast transfer (coalescing sees it so)


def scratch_dir() -> tuple[Path, str]:
    """A directory on tmpfs when there is one (the disk's own cost left out)."""
    for candidate in ("/dev/shm", f"/run/user/{os.getuid()}"):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            return Path(tempfile.mkdtemp(prefix="sshgw-bench-", dir=candidate)), "tmpfs"
    return Path(tempfile.mkdtemp(prefix="sshgw-bench-")), "the disk"


def feed(output: bytes, total: int, recorded: bool, directory: Path) -> tuple[float, float]:
    """CPU seconds to pass ``total`` bytes of ``output``, a pty read at a time, through a
    tapped session's client (with recording on or off), and those of them spent in the
    file's write(2)s."""
    info = SessionInfo(session_id="bench", username="bench", target="local",
                       target_protocol="local", front_protocol="ssh2", source="127.0.0.1:1",
                       flow_id=None, command=None, subsystem=None, pty=None)
    session = LiveSession(info)
    clock = Clock()
    observers: list = [_EndOnly(), _EndOnly(), _EndOnly()]
    if recorded:
        path = directory / "bench.cast"
        recording = Recording(session, path, {"version": 2}, reactor=clock, writer=_AtOnce(),
                              file_factory=_TimedFile)
        observers.insert(0, recording)
    client = TappedClient(_NullClient(), session, observers)
    data = (output * (PTY_READ // len(output) + 2))
    chunks = [data[i:i + PTY_READ] for i in range(0, len(output), 97)]  # varied cuts
    # The clock moves once a pass over the chunks (under 2 ms), not per chunk: Clock.advance
    # costs more than a real reactor's turn, and would be counted as the recorder's.
    step = len(chunks) * PTY_READ / RATE
    _TimedFile.spent = 0.0
    sent = 0
    started = time.process_time()
    while sent < total:
        for chunk in chunks:
            client.write_stdout(chunk)
        clock.advance(step)
        sent += len(chunks) * PTY_READ
    client._end(None)
    seconds = time.process_time() - started
    if recorded:
        path.unlink()
    return seconds, _TimedFile.spent


def recorder_cost(total: int = 256 << 20, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """The recorder's CPU seconds per GiB of output in this process, for each kind of
    output: (recording on minus off, of which the file's write(2)s), best of ``rounds``.
    Independent of the load on the machine, within what the caches share."""
    directory, where = scratch_dir()
    costs = {}
    try:
        for name, output in (("text", TEXT_OUTPUT), ("colored", COLORED_OUTPUT)):
            on, off, disk = [], [], []
            for _ in range(rounds):
                seconds, written = feed(output, total, True, directory)
                on.append(seconds)
                disk.append(written)
                off.append(feed(output, total, False, directory)[0])
            costs[name] = (per_gib(min(on) - min(off), total), per_gib(min(disk), total))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    costs["where"] = where
    return costs


def report(label: str, unit: str, rates, cpu, per, per_unit: str, recorded: int) -> None:
    on, off = max(rates[True]), max(rates[False])
    cpu_on, cpu_off = per(min(cpu[True])), per(min(cpu[False]))
    print(label)
    for name, flag, rate, least in (("off", False, off, cpu_off), ("on ", True, on, cpu_on)):
        print(f"  recording {name}: least {least:7.3f} CPU s/{per_unit} (rounds: "
              f"{', '.join(f'{per(c):.3f}' for c in cpu[flag])})   best {rate:9.1f} {unit} "
              f"(rounds: {', '.join(f'{r:.1f}' for r in rates[flag])})")
    verdict = "within" if cpu_on / cpu_off <= CPU_BAR else "OVER"
    print(f"  ratio on/off:  CPU {cpu_on / cpu_off:6.3f} ({verdict} the bar <= {CPU_BAR:.3f}: "
          f"recording costs at most 5%)   rate {on / off:6.3f}   "
          f"({recorded / (1 << 20):.1f} MiB of recording per round)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB of terminal output per round")
    parser.add_argument("--writes", type=int, default=50000, help="small writes per burst")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    base = workdir()
    key = make_user_key(base)
    size = args.mib << 20
    rates = {"bulk": {True: [], False: []}, "burst": {True: [], False: []}}
    loads: list[float] = [load_average()]
    cpu = {"bulk": {True: [], False: []}, "burst": {True: [], False: []}}
    recorded = {"bulk": 0, "burst": 0}
    with ExitStack() as stack:
        gws = {flag: stack.enter_context(gateway(base, key, flag)) for flag in (False, True)}
        for flag in (True, False):  # warm up both (imports, first key exchange)
            bulk(gws[flag].port, key, 1 << 20)
            burst(gws[flag].port, key, 100)
            settle_recordings(gws[flag])
            clear_recordings(gws[flag])
        for round_ in range(args.rounds):
            order = (True, False) if round_ % 2 == 0 else (False, True)
            for flag in order:
                for name, run in (("bulk", lambda port: bulk(port, key, size)),
                                  ("burst", lambda port: burst(port, key, args.writes))):
                    rate, seconds, nbytes = measure(gws, flag, run)
                    loads.append(load_average())
                    rates[name][flag].append(rate)
                    cpu[name][flag].append(seconds)
                    if flag:
                        recorded[name] = nbytes
        assert not any(recordings(gws[False]).glob("*.cast")), "recording off must write nothing"
    assert recorded["bulk"] >= size, "recording on must have recorded the transfer"

    print(f"SSH-2 {CIPHER}/{MAC} with a pty (ssh -tt), {args.rounds} rounds each; CPU: the "
          "gateway and its children (the program writing the output included)")
    print(f" load average (1 min) on {os.cpu_count()} CPUs: {min(loads):.2f} to {max(loads):.2f} "
          f"during the rounds ({', '.join(f'{load:.2f}' for load in loads)})")
    report(f" bulk: {args.mib} MiB of text through the pty", "MiB/s", rates["bulk"],
           cpu["bulk"], lambda s: per_gib(s, size), "GiB", recorded["bulk"])
    report(f" burst: {args.writes} small writes (one line each)", "writes/s",
           rates["burst"], cpu["burst"], lambda s: s * 10000 / args.writes, "10k writes",
           recorded["burst"])
    costs = recorder_cost()
    where = costs.pop("where")
    for name, (cost, disk) in costs.items():
        print(f" recorder in process, {name} output: {cost:.2f} CPU s/GiB (of which "
              f"{disk:.2f} writing the file on {where}), {PTY_READ}-byte reads")


if __name__ == "__main__":
    main()
