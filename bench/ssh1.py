"""SSH-1 cost per cipher and direction (issue 15): the gateway's CPU seconds per GiB moved,
on the SSH-1 front (``plink -1`` -> gateway -> its local command) and on the SSH-1
upstream client (the gateway's client -> an SSH-1 device), each beside the cipher's own
cost per GiB measured in the same run, and their ratio. Not a test.

    .venv/bin/python -m bench.ssh1 [--mib 32] [--rounds 3] [--ciphers 3des,des,blowfish]
        [--side front,client] [--directions upload,download]

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
spends nothing but the cipher. Each transfer runs ``--rounds`` times, each followed by
the cipher's own measurement; the table has the best (least CPU) of each and the 1-minute
load average of the machine at the gateway's best round (the machine is shared). ``sys``
is the kernel's part of the gateway's figure (sockets, pipes, epoll). Session recording
is off (its cost is bench.recording's); flow recording is on, as by default.

Then the core's receive path in this process (no sockets), which shows what is left per
packet: the server core fed a run of STDIN_DATA packets of plink's size (512 bytes of
data) and of the gateway's own (16 KiB), 64 KiB at a time, beside the cipher alone and
the attack detector alone over the same ciphertext; last, what moving the bytes costs the
kernel with nothing done to them (loopback TCP, a pipe). ``--quick`` (``python -m bench
--quick``) moves 4 MiB, one round.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.account import bench_account  # noqa: E402
from bench.cpu import CLOCK_TICKS, GIB, PROC, parse_stat, per_gib, ratio  # noqa: E402
from protocols.flow import C2S, FlowRecorder  # noqa: E402
from protocols.ssh1 import ciphers, deattack  # noqa: E402
from protocols.ssh1 import events as ev  # noqa: E402
from protocols.ssh1 import messages as m  # noqa: E402
from protocols.ssh1.wire import Writer  # noqa: E402
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


def own_sys(pid: int) -> float:
    """Kernel-mode CPU seconds of process ``pid`` itself (stime)."""
    fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[15 - 3]) / CLOCK_TICKS


def load_average() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def front(gw: GatewayProcess, cipher: str, direction: str, nbytes: int, upload: Path) -> tuple[float, float, float]:
    """(CPU s/GiB of the gateway, of it in the kernel, MB/s) for one plink -1 transfer.
    The gateway's CPU for the same login running ``true`` (key exchange, password hash,
    starting and reaping the command) is measured first and taken off: it is per
    session, not per byte."""
    command = "cat > /dev/null" if direction == "upload" else f"head -c {nbytes} /dev/zero"
    with putty_cipher_session(cipher) as session:
        login, login_sys, _, _ = _plink_cpu(gw, plink1_argv(gw, "true", user="bench", password=PASSWORD, load=session), None)
        argv = plink1_argv(gw, command, user="bench", password=PASSWORD, load=session)
        cpu, kernel, elapsed, result = _plink_cpu(gw, argv, upload if direction == "upload" else None)
    if result.returncode != 0 or (direction == "download" and result.received != nbytes):
        raise SystemExit(f"front {cipher} {direction}: plink failed: {result.stderr[-300:]!r}")
    return (per_gib(max(cpu - login, 0.0), nbytes), per_gib(max(kernel - login_sys, 0.0), nbytes),
            nbytes / elapsed / 1e6)


def _plink_cpu(gw: GatewayProcess, argv: list[str], stdin_path: Path | None) -> tuple[float, float, float, _Plink]:
    """(gateway CPU seconds, of them in the kernel, wall seconds, result) of one plink run."""
    with open(stdin_path or os.devnull, "rb") as stdin:
        cpu, kernel = own_cpu(gw.pid), own_sys(gw.pid)
        started = time.perf_counter()
        result = _run_plink(argv, stdin)
        elapsed = time.perf_counter() - started
        time.sleep(0.2)  # the session's end (reaping, logging) is the gateway's too
        return own_cpu(gw.pid) - cpu, own_sys(gw.pid) - kernel, elapsed, result


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


def client(device: GatewayProcess, cipher: str, direction: str, nbytes: int) -> tuple[float, float, float]:
    """(CPU s/GiB of the gateway's SSH-1 client, of it in the kernel, MB/s) for one
    transfer to ``device``."""
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
    return per_gib(result["cpu"], nbytes), per_gib(result["sys"], nbytes), nbytes / result["seconds"] / 1e6


def core_path(name: str, data_size: int, nbytes: int, read: int = 64 * 1024) -> tuple[float, float, float]:
    """(core, cipher, detector) CPU s/GiB of session data through the SSH-1 server core in
    this process: STDIN_DATA packets of ``data_size`` bytes fed ``read`` bytes at a time
    and drained as the Twisted protocol does; beside it the same ciphertext through the
    decrypting cipher alone and through the attack detector alone, in the same reads."""
    from tests.ssh1.test_server_core import interactive

    server, peer = interactive(name, (name,))
    flow = FlowRecorder("server", "bench", "1")
    server.on_packet_in = partial(flow.packet, C2S)
    data = os.urandom(data_size)
    count = max(1, nbytes // data_size)
    packets = [peer.packet(m.SSH_CMSG_STDIN_DATA, Writer().string(data).getvalue()) for _ in range(count)]
    wire = b"".join(packets)
    reads = [wire[i : i + read] for i in range(0, len(wire), read)]
    moved = count * data_size

    started = time.process_time()
    got = 0
    for chunk in reads:
        server.receive_data(chunk)
        while type(event := server.next_event()) is ev.StdinData:
            got += len(event.data)
    core = time.process_time() - started
    if got != moved:
        raise SystemExit(f"core path {name}: {got} of {moved} bytes")

    # The same ciphertext bodies (without the clear lengths), in the same reads.
    bodies = [p[4:] for p in packets]
    per_read = max(1, read // len(packets[0]))
    runs = [bodies[i : i + per_read] for i in range(0, len(bodies), per_read)]
    joined = [(b"".join(run), [len(b) for b in run]) for run in runs]
    stream = ciphers.BY_NAME[name].decryptor(os.urandom(32))
    started = time.process_time()
    for ciphertext, _ in joined:
        stream.update(ciphertext)
    cipher = time.process_time() - started
    started = time.process_time()
    for ciphertext, sizes in joined:
        deattack.check_run(ciphertext, None, sizes)
    detector = time.process_time() - started
    return per_gib(core, moved), per_gib(cipher, moved), per_gib(detector, moved)


def io_floor(nbytes: int = 256 << 20, chunk: int = 64 * 1024) -> tuple[float, float, float]:
    """(send, receive, pipe write) kernel-bound CPU s/GiB of moving bytes with nothing
    else done to them, in this process, ``chunk`` bytes per call: a loopback TCP
    connection's sending and receiving ends (one thread each, each timing itself) and
    writes to a pipe that ``cat > /dev/null`` reads, as the local target's stdin is."""
    nbytes -= nbytes % chunk
    block = os.urandom(chunk)
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    listener.close()
    times: dict[str, float] = {}

    def receive() -> None:
        started, buffer, left = time.thread_time(), bytearray(chunk), nbytes
        while left > 0:
            got = receiver.recv_into(buffer)
            if not got:
                break
            left -= got
        times["receive"] = time.thread_time() - started

    reader = threading.Thread(target=receive)
    reader.start()
    started = time.thread_time()
    for _ in range(nbytes // chunk):
        sender.sendall(block)
    times["send"] = time.thread_time() - started
    reader.join()
    sender.close()
    receiver.close()
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    fd = cat.stdin.fileno()
    started = time.thread_time()
    for _ in range(nbytes // chunk):
        view = memoryview(block)
        while view:
            view = view[os.write(fd, view):]
    times["pipe"] = time.thread_time() - started
    cat.stdin.close()
    cat.wait()
    return per_gib(times["send"], nbytes), per_gib(times["receive"], nbytes), per_gib(times["pipe"], nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32, help="MiB per transfer")
    parser.add_argument("--rounds", type=int, default=3, help="transfers per case; the best counts")
    parser.add_argument("--ciphers", default=",".join(CIPHERS))
    parser.add_argument("--side", default=",".join(SIDES))
    parser.add_argument("--directions", default=",".join(DIRECTIONS))
    args = parser.parse_args()
    names = [n for n in args.ciphers.split(",") if n]
    sides = [s for s in args.side.split(",") if s]
    directions = [d for d in args.directions.split(",") if d]
    for name in names:
        if name not in CIPHERS:
            raise SystemExit(f"unknown cipher {name!r}; SSH-1 has {', '.join(CIPHERS)}")
    rounds = 1 if args.mib <= 4 else max(1, args.rounds)
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
        "recording": {"enabled": False},
    }
    rows = []
    with GatewayProcess(work, config) as gw:
        for name in names:
            spec = ciphers.BY_NAME[name]
            for side in sides:
                for direction in directions:
                    encrypts = gateway_encrypts(side, direction)
                    best = (math.inf, math.nan, math.nan, math.nan)  # (cpu, sys, rate, load)
                    used = plain = math.inf
                    for _ in range(rounds):
                        if side == "front":
                            ours, kernel, rate = front(gw, name, direction, nbytes, upload)
                        else:
                            ours, kernel, rate = client(gw, name, direction, nbytes)
                        if ours < best[0]:
                            best = (ours, kernel, rate, load_average())
                        key = os.urandom(32)
                        used = min(used, cipher_cost(spec.encryptor(key) if encrypts else spec.decryptor(key)))
                        plain = min(plain, cipher_cost(ciphers.cryptography_stream(name, key, encrypts)))
                    rows.append((name, side, direction, encrypts, *best, used, plain))
    print(f"SSH-1 CPU seconds per GiB, {args.mib} MiB per transfer, best of {rounds}; cipher = "
          f"the gateway's stream alone (32 KiB updates); 'cryptography' = the same cipher built "
          f"on cryptography only; load = 1-min load average at the best round")
    print(f"  {'cipher':8s} {'side':6s} {'direction':9s} {'does':7s} {'gateway':>8s} {'sys':>6s} "
          f"{'cipher':>8s} {'ratio':>6s} {'cryptography':>12s} {'ratio':>6s} {'MB/s':>7s} {'load':>5s}")
    for name, side, direction, encrypts, ours, kernel, rate, load, used, plain in rows:
        print(f"  {name:8s} {side:6s} {direction:9s} {'encrypt' if encrypts else 'decrypt':7s} "
              f"{ours:8.2f} {kernel:6.2f} {used:8.2f} {ratio(ours, used):6.2f} {plain:12.2f} "
              f"{ratio(ours, plain):6.2f} {rate:7.2f} {load:5.2f}")
    print("\nThe server core's receive path in this process (no sockets): STDIN_DATA packets "
          "fed 64 KiB at a time, CPU s/GiB of data; best of "
          f"{rounds}; per packet = (core - cipher - detector) / packets")
    print(f"  {'cipher':8s} {'packet':>7s} {'core':>7s} {'cipher':>7s} {'detector':>8s} "
          f"{'rest':>6s} {'per packet':>10s} {'load':>5s}")
    for name in names:
        for data_size in (512, 16 * 1024):
            figures = [core_path(name, data_size, min(nbytes, 32 << 20)) for _ in range(rounds)]
            core, cipher, detector = (min(f[i] for f in figures) for i in range(3))
            rest = core - cipher - detector
            packets_per_gib = GIB / data_size
            print(f"  {name:8s} {data_size:7d} {core:7.2f} {cipher:7.2f} {detector:8.2f} "
                  f"{rest:6.2f} {rest / packets_per_gib * 1e6:8.2f}us {load_average():5.2f}")
    print("\nMoving the bytes and nothing else, in this process, 64 KiB per call "
          f"(CPU s/GiB, best of {rounds}): the kernel's floor under every figure above")
    floors = [io_floor(min(nbytes * 4, 256 << 20)) for _ in range(rounds)]
    send, receive, pipe = (min(f[i] for f in floors) for i in range(3))
    print(f"  loopback TCP send {send:.2f}, receive {receive:.2f}; pipe write {pipe:.2f}; "
          f"load {load_average():.2f}")


if __name__ == "__main__":
    main()
