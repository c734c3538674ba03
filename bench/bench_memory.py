"""Benchmark: peak memory (and time) of scoring responses *with their options*, for two psysim source trees.

Each measurement runs in its own fresh subprocess with ``--src`` first on
``sys.path``, so the same script measures the code before and after a change
in one run (e.g. a ``git worktree`` of an older commit beside this checkout):

* ``busch``     — busch2024_stroop (84 responses each, ~3,600 tokens), options
                  ``left``/``down``/``right`` on every trial (single tokens);
* ``synthetic`` — 100 trials of a Likert item per transcript, five options of
                  one to three tokens (``strongly agree`` … ``strongly disagree``).

Reported: the process's peak resident memory (``ru_maxrss``), its resident
memory after loading the model, the difference (what scoring itself needs),
and the scoring time; default model, float32, CPU.

    .venv/bin/python bench/bench_memory.py --src . --src /tmp/before      # after, before
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data" / "psych201"
LIKERT = ("strongly agree", "agree", "neutral", "disagree", "strongly disagree")


def requests(kind: str, n: int):
    from psysim.backends import ScoreRequest
    from psysim.data.transcripts import read_psych201

    out = []
    if kind == "busch":
        for r in read_psych201(SHARED / "busch2024_stroop" / "prompts.jsonl")[:n]:
            t = r.transcript
            spans = tuple((x.start, x.end) for x in t.responses)
            out.append(ScoreRequest(t.participant, t.text, spans, (("left", "down", "right"),) * len(spans)))
        return out
    for p in range(n):
        text, spans = "Rate each statement about yourself.\n", []
        for i in range(100):
            text += f"Statement {i + 1}: I am someone who likes item number {i * 7 % 13}. You answer <<"
            answer = LIKERT[(i * 3 + p) % 5]
            spans.append((len(text), len(text) + len(answer)))
            text += answer + ">>.\n"
        out.append(ScoreRequest(p, text, tuple(spans), (LIKERT,) * len(spans)))
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(kind: str, n: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psysim import registry
    from psysim.backends.hf import HFBackend

    torch.set_num_threads(threads)
    folder = registry.pulled_path("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    reqs = requests(kind, n)
    loaded = rss_mb()
    backend = HFBackend(model, tok, name="bench", identity={})
    start = time.perf_counter()
    results = backend.score(reqs)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = sum(r.n_tokens for r in results)
    return {
        "study": kind,
        "transcripts": len(reqs),
        "tokens": tokens,
        "responses": sum(len(r.responses) for r in results),
        "seconds": round(seconds, 2),
        "rss_after_load_mb": round(loaded),
        "peak_rss_mb": round(peak),
        "scoring_peak_mb": round(peak - loaded),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", action="append", required=True, help="a psysim source tree (repeat to compare)")
    parser.add_argument("--busch", type=int, default=8, help="busch2024_stroop participants")
    parser.add_argument("--synthetic", type=int, default=8, help="synthetic 100-trial transcripts")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, n, threads = args.worker
        print(json.dumps(worker(kind, int(n), int(threads))))
        return
    rows = []
    for src in args.src:
        commit = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        for kind, n in (("busch", args.busch), ("synthetic", args.synthetic)):
            env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
            cmd = [sys.executable, __file__, "--src", src, "--worker", kind, str(n), str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            row = {"src": src, "commit": commit.strip(), **json.loads(done.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    (HERE / "results-memory.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
