"""Benchmark: lock-step closed-loop simulation, trials per second by group size (``simulation.batch_tokens``).

The Big Five questionnaire (``experiments/big5/big5.yaml``: 50 statements
rated 1–5; reads ../shared/data) simulated closed loop with the default model:
``--people`` synthetic twins (no persona) walk through ``--items`` items each,
in lock-step groups of 1 (one participant at a time: psysim before lock-step
groups), 8, 32 and 128 participants. Per group size: trials per second,
the ratio to group size 1, the process's peak resident memory so far, and the
largest difference of any option probability from group size 1 (they must
agree within 1e-4 in float32) and whether every sampled response is the same.

    .venv/bin/python bench/bench_lockstep.py [--people 32] [--items 50] [--sizes 1 8 32] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=32)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    import numpy as np
    import torch

    import psysim
    from psysim.backends import get_backend
    from psysim.simulate import Walk, lock_step, plan

    exp = psysim.load_experiment(REPO / "experiments" / "big5" / "big5.yaml")
    model = exp.config.models[0]
    backend = get_backend(replace(model, dtype=args.dtype), exp.config.folder)
    people = plan(exp, args.people)
    for who in people:  # the first --items items of each person's questionnaire
        exp.task.trials[who.design_of]  # built on demand for wide tables
    results, reference = [], None
    for size in args.sizes:
        walks = []
        for i, who in enumerate(people):
            session = backend.session(add_special_tokens=True, key=who.id)
            walk = Walk(exp, session, who, "", temperature=1.0, rng=np.random.default_rng([exp.config.seed, 0, 0, i]))
            walk.trials = walk.trials[: args.items]
            walks.append(walk)
        started = time.perf_counter()
        for g in range(0, len(walks), size):
            lock_step(backend, walks[g : g + size])
        seconds = time.perf_counter() - started
        probs = [p for w in walks for r in w.rows for p in r["option_probs"]]
        responses = [r["response"] for w in walks for r in w.rows]
        if reference is None:
            reference = (probs, responses)
        trials = sum(len(w.rows) for w in walks)
        results.append(
            {
                "group": size,
                "trials": trials,
                "seconds": round(seconds, 1),
                "trials_per_second": round(trials / seconds, 2),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "max_prob_difference": float(np.max(np.abs(np.array(probs) - np.array(reference[0])))),
                "same_responses": responses == reference[1],
            }
        )
        base = results[0]["trials_per_second"]
        results[-1]["speedup"] = round(results[-1]["trials_per_second"] / base, 2)
        print(json.dumps(results[-1]), flush=True)
    print(
        json.dumps(
            {
                "people": len(people),
                "items": args.items,
                "dtype": args.dtype,
                "threads": torch.get_num_threads(),
                "machine": platform.platform(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
