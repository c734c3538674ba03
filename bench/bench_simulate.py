"""Benchmark: lock-step closed-loop simulation, trials per second by group size, float32 and bfloat16.

The survey journey's simulation (``experiments/big5/survey.yaml``: generated
respondents with resampled real profiles, in persona, rating Big Five
statements 1–5 with the default model; reads ../shared/data): ``--people``
respondents walk through their first ``--items`` items in lock-step groups of
1 (one participant at a time), 8, 32 and 128, where a finished respondent's
row goes to the next one (participants joining the running group, as
``psysim simulate`` does). Each (dtype, group) runs in a fresh process, so its
peak resident memory is its own. Per run: trials per second, the ratio to
group 1 of the same dtype, peak memory, the largest difference of any option
probability from group 1 (the issue asks ≤ 1e-4 in float32) and whether every
sampled response is the same.

    .venv/bin/python bench/bench_simulate.py [--people 200] [--items 10] [--sizes 1 8 32 128] \\
        [--dtypes float32 bfloat16] [--out bench/results-simulate.json]

On a GPU (``--device cuda``) the same script measures the issue's GPU target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one(args) -> None:
    """One (dtype, group size) run in this process: writes its numbers and every option probability to ``--one``."""
    import numpy as np
    import torch

    import psysim
    from psysim.backends import get_backend
    from psysim.simulate import lock_step, new_walk, plan

    exp = psysim.load_experiment(Path(args.experiment))
    model = replace(exp.config.models[0], dtype=args.dtype, device=args.device)
    backend = get_backend(model, exp.config.folder)
    people = plan(exp, args.people)
    by_id = {who.id: who for who in people}
    ci, cond = 0, exp.config.conditions[0]
    walks = []
    for index, who in enumerate(people):
        walk = new_walk(exp, backend, model, ci, cond, who, by_id, {}, index)
        walk.trials, walk.items = walk.trials[: args.items], walk.items[: args.items]
        walks.append(walk)
    started = time.perf_counter()
    for _ in lock_step(backend, walks, [1] * len(walks), args.size):  # groups of --size walks, joining as others finish
        pass
    seconds = time.perf_counter() - started
    probs = np.array([p for w in walks for r in w.rows for p in r["option_probs"]])
    responses = [r["response"] for w in walks for r in w.rows]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    out = Path(args.one)
    np.save(out.with_suffix(".npy"), probs)
    trials = sum(len(w.rows) for w in walks)
    result = {
        "dtype": args.dtype,
        "group": args.size,
        "people": len(walks),
        "trials": trials,
        "seconds": round(seconds, 1),
        "trials_per_second": round(trials / seconds, 2),
        "peak_memory_mib": round(peak),
        "memory": "GPU allocated" if args.device == "cuda" else "process peak RSS",
        "threads": torch.get_num_threads(),
        "responses": responses,
    }
    out.write_text(json.dumps(result), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(REPO / "experiments" / "big5" / "survey.yaml"))
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(REPO / "bench" / "results-simulate.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration into this file
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)

    import numpy as np
    import torch
    import transformers

    summary = {
        "experiment": Path(args.experiment).name,
        "items": args.items,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            reference = None
            for size in args.sizes:
                target = Path(tmp) / f"{dtype}-{size}.json"
                load = os.getloadavg()[0]
                command = [sys.executable, __file__, "--one", str(target), "--size", str(size), "--dtype", dtype]
                command += ["--experiment", args.experiment, "--people", str(args.people), "--items", str(args.items)]
                subprocess.run(command + ["--device", args.device], check=True)
                result = json.loads(target.read_text("utf-8"))
                probs = np.load(target.with_suffix(".npy"))
                responses = result.pop("responses")
                if reference is None:
                    reference = (result, probs, responses)
                base, base_probs, base_responses = reference
                result["load_at_start"] = round(load, 2)
                result["speedup"] = round(result["trials_per_second"] / base["trials_per_second"], 2)
                result["max_prob_difference"] = float(np.max(np.abs(probs - base_probs)))
                result["same_responses"] = responses == base_responses
                print(json.dumps(result), flush=True)
                summary["results"].append(result)
                # Written after every run, so that an interrupted benchmark keeps what it measured.
                Path(args.out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
