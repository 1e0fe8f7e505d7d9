"""Every benchmark in turn, each in its own process: ``.venv/bin/python -m bench [--quick]``.

``--quick`` runs them with small sizes, to check that they work (the rates then say
little; the CPU times per login and per GiB are still meaningful, if coarser).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from bench.harness import REPO

# Module, then its arguments for --quick.
BENCHMARKS: dict[str, list[str]] = {
    "bench.ssh2": ["--mib", "32", "--connections", "20", "--idle", "10", "--bridged"],
    "bench.ssh1": ["--mib", "4"],
    "bench.bridge": ["--mib", "4"],
    "bench.flows": ["--mib", "32", "--rounds", "3"],
    "bench.recording": ["--mib", "16", "--writes", "2000", "--rounds", "1"],
    "bench.handshakes": ["--seconds", "2", "--clients", "2"],
    "bench.workers": ["--mib", "8", "--connections", "16"],
}


def commands(quick: bool) -> list[list[str]]:
    """The command line of each benchmark, in the order they run."""
    return [
        [sys.executable, "-m", module, *(quick_args if quick else [])]
        for module, quick_args in BENCHMARKS.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check they run")
    args = parser.parse_args()
    failed = []
    for argv in commands(args.quick):
        print(f"\n$ python {' '.join(argv[1:])}", flush=True)
        if subprocess.run(argv, cwd=REPO).returncode != 0:
            failed.append(argv[2])
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
