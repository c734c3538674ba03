"""Benchmark: `psysim run` and `psysim simulate` with torch's CPU threads at psysim's default, 1 and 2.

Each measurement is a fresh `psysim` process (so model loading is included,
as a user sees it) writing into a temporary folder:

* ``run``      — ``psysim --threads N run experiments/quickstart.yaml --limit 5``
                 (5 participants × 3 conditions, default model);
* ``simulate`` — ``psysim --threads N simulate experiments/holt_laury/holt_laury.yaml --n 2``
                 (2 twins × 3 conditions × 10 trials; reads ../shared/data).

``default`` runs without ``--threads`` (psysim's choice: the CPUs the process
may use). Prints seconds per command and the machine's load average at the
start, since threads matter most when other jobs share the CPUs.

    .venv/bin/python bench/bench_threads.py [--repeat 1]
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

REPO = Path(__file__).resolve().parent.parent
PSYSIM = [sys.executable, "-m", "psysim"]
COMMANDS = {
    "run": ["run", "experiments/quickstart.yaml", "--limit", "5", "-q"],
    "simulate": ["simulate", "experiments/holt_laury/holt_laury.yaml", "--n", "2", "-q"],
}


def timed(threads: str, command: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("PSYSIM_THREADS", "OMP_NUM_THREADS")}
    option = [] if threads == "default" else ["--threads", threads]
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run([*PSYSIM, *option, *command, "--out", out], cwd=REPO, env=env, check=True, capture_output=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for name, command in COMMANDS.items():
        for threads in ("default", "1", "2"):
            for _ in range(args.repeat):
                load = os.getloadavg()[0]
                rows.append({"command": name, "threads": threads, "seconds": round(timed(threads, command), 1), "load": load})
                print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"cpus_available": len(os.sched_getaffinity(0)), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
