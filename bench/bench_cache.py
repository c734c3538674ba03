"""Benchmark: closed-loop simulation with the key/value cache kept across trials, against re-encoding.

One synthetic participant does a structured gamble task of T trials (instructions,
then per trial two gambles, a choice and feedback for the sampled choice) with
the default model. Two sessions give the options' log-probabilities at each trial:

* ``cache``    — psysim's :class:`psysim.backends.hf.HFSession`: the cache keeps every
                 token already read, so each trial feeds only its new tokens;
* ``reencode`` — what a loop over a chat API or ``model(prefix)`` does: at every
                 trial the whole transcript so far is encoded again from scratch.

Both must give the same log-probabilities (checked); the script reports tokens
processed and seconds for T = 10, 20, 40, 80 trials: the cache grows linearly in
T, re-encoding quadratically.

    .venv/bin/python bench/bench_cache.py                 # default model (pulled), writes bench/results-cache.json
    .venv/bin/python bench/bench_cache.py --trials 10 20  # fewer sizes
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

INSTRUCTIONS = (
    "In this experiment you will choose between two gambles in each of {n} rounds. "
    "After each choice you see what you won. Press F for the left gamble and J for the right gamble.\n"
)


def trial_text(k: int, rng) -> tuple[str, dict[str, int]]:
    a, b = int(rng.integers(1, 100)), int(rng.integers(1, 100))
    p = int(rng.integers(5, 95))
    text = (
        f"Round {k + 1}: the left gamble pays {a} points with probability {p}% and nothing otherwise; "
        f"the right gamble pays {b} points for sure. You press <<"
    )
    return text, {"F": a if rng.random() < p / 100 else 0, "J": b}


def run(session_factory, trials: int, seed: int = 0):
    """Simulate one participant; returns (option logprobs per trial, tokens processed, seconds)."""
    rng = np.random.default_rng(seed)
    session = session_factory()
    session.read(INSTRUCTIONS.format(n=trials))
    out = []
    start = time.perf_counter()
    for k in range(trials):
        text, payoff = trial_text(k, rng)
        session.read(text)
        lps = session.options(["F", "J"])
        probs = np.exp(np.array(lps) - max(lps))
        choice = ["F", "J"][int(rng.choice(2, p=probs / probs.sum()))]
        session.respond(choice)
        session.read(f">>. You win {payoff[choice]} points.\n")
        out.append(lps)
    return out, session.tokens_read, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--trials", type=int, nargs="+", default=[10, 20, 40, 80])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    import transformers

    from psysim.backends.hf import HFBackend
    from psysim.config import ModelConfig

    torch.set_grad_enabled(False)
    backend = HFBackend.from_config(ModelConfig(name=args.model, source=args.model), Path("."))

    class Reencode:
        """Re-encodes the whole transcript at every trial: a fresh session reads everything so far, then the options."""

        def __init__(self):
            self.pieces: list[tuple[str, str]] = []
            self.tokens_read = 0

        def read(self, text):
            self.pieces.append(("read", text))

        def respond(self, text):
            self.pieces.append(("respond", text))

        def options(self, options):
            fresh = backend.session(add_special_tokens=True, key="bench")
            for kind, text in self.pieces:
                getattr(fresh, kind)(text)
            lps = fresh.options(options)
            self.tokens_read += fresh.tokens_read
            return lps

    results = {"machine": platform.platform(), "torch": torch.__version__, "transformers": transformers.__version__}
    rows = []
    for trials in args.trials:
        timings = {"cache": [], "reencode": []}
        tokens = {}
        ref = None
        for _ in range(args.repeats):
            for name, factory in (
                ("cache", lambda: backend.session(add_special_tokens=True, key="bench")),
                ("reencode", Reencode),
            ):
                lps, n_tokens, seconds = run(factory, trials)
                timings[name].append(seconds)
                tokens[name] = n_tokens
                if ref is None:
                    ref = lps
                else:
                    diff = max(abs(a - b) for x, y in zip(ref, lps, strict=True) for a, b in zip(x, y, strict=True))
                    assert diff < 1e-4, f"{name} differs from the cache by {diff}"
        row = {
            "trials": trials,
            "tokens_cache": tokens["cache"],
            "tokens_reencode": tokens["reencode"],
            "seconds_cache": statistics.median(timings["cache"]),
            "seconds_reencode": statistics.median(timings["reencode"]),
        }
        row["speedup"] = row["seconds_reencode"] / row["seconds_cache"]
        rows.append(row)
        print(
            f"T={trials:>3}: tokens {row['tokens_cache']:>6} vs {row['tokens_reencode']:>7}; "
            f"seconds {row['seconds_cache']:.2f} vs {row['seconds_reencode']:.2f} ({row['speedup']:.1f}× faster)"
        )
    results["rows"] = rows
    (HERE / "results-cache.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
