"""Start-up time of the command line: ``adatsq --help`` must not import torch or diffusers.

Each command runs in a fresh process, ``--repeats`` times; the median wall time is reported
beside a bare interpreter and ``import torch`` measured in the same run.

    python benchmarks/bench_cli.py [--repeats 7]

writes runs/cli/report.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from adatsq.files import write_json

GOAL_SECONDS = 1.5
COMMANDS = {"python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "adatsq --help": [sys.executable, "-m", "adatsq.cli", "--help"],
            "adatsq --version": [sys.executable, "-m", "adatsq.cli", "--version"],
            "adatsq methods": [sys.executable, "-m", "adatsq.cli", "methods"]}


def seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("runs/cli"))
    args = parser.parse_args()
    rows = [{"command": name, "seconds": seconds(argv, args.repeats)}
            for name, argv in COMMANDS.items()]
    for r in rows:
        print(f"{r['command']:<28} {r['seconds']:.2f} s")
    help_s = next(r["seconds"] for r in rows if r["command"] == "adatsq --help")
    write_json({"rows": rows, "repeats": args.repeats, "help_seconds": help_s,
                "goal_seconds": GOAL_SECONDS}, args.out / "report.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
