"""Benchmark: psysim's single-pass scoring against the two common alternatives, in one run.

Methods, each run in its own fresh subprocess so that peak memory is its own:

* ``psysim``      — psysim.backends.forward via the hf backend: batches sorted by length,
                    one forward pass per transcript, vocabulary projection only
                    where a response token is predicted.
* ``per_trial``   — (a) per-trial prompting, what chat-API simulation frameworks
                    do: each response scored from its own re-encoded prefix with a
                    full softmax (psysim.backends.forward.reference_scores).
* ``full_logits`` — (b) Psych-201's own script: one forward pass per participant at
                    batch size 1 with full [length × vocabulary] logits, then a
                    cross-entropy over the response tokens.

All methods score the same transcripts (raw, no persona) and must agree on every
response's log-probability; throughput is transcript tokens per second. Also
measured: this machine's float32 matmul peak (for the roofline ratio
2 × parameters × tokens/s ÷ peak FLOP/s) and bfloat16 scoring's speed and
numeric difference from float32.

    .venv/bin/python bench/bench_scoring.py                 # default model, thoma + busch, writes bench/results.json
    .venv/bin/python bench/bench_scoring.py --studies thoma2025riskychoice:4
    .venv/bin/python bench/bench_scoring.py --skip-per-trial --repeats 3     # medians of 3 timings, without (a)

Results go into BENCHMARKS.md by hand, with the machine and versions this prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data" / "psych201"


def load_texts(study: str, n: int) -> list[tuple[str, list[tuple[int, int]]]]:
    from psysim.data.transcripts import read_psych201

    local = REPO / "participants" / study / "prompts.jsonl"
    path = local if local.exists() else SHARED / study / "prompts.jsonl"
    records = read_psych201(path)[:n]
    return [(r.transcript.text, [(x.start, x.end) for x in r.transcript.responses]) for r in records]


def score(method: str, model, tok, texts) -> list[float]:
    """Every response's log-probability by ``method`` (see the module docstring)."""
    import torch

    logprobs: list[float] = []
    with torch.inference_mode():
        if method == "psysim":
            from psysim.backends import ScoreRequest
            from psysim.backends.hf import HFBackend

            backend = HFBackend(model, tok, name="bench", identity={})
            results = backend.score([ScoreRequest(i, t, tuple(s)) for i, (t, s) in enumerate(texts)])
            logprobs = [r.logprob for res in results for r in res.responses]
        elif method == "per_trial":
            from psysim.backends.forward import reference_scores

            for t, s in texts:
                logprobs += [lp for lp, _ in reference_scores(model, tok, t, s)]
        elif method == "full_logits":
            from psysim.backends.encoding import TokenReader

            reader = TokenReader(tok)
            for t, s in texts:
                enc = reader.encode(t, s)
                ids = torch.tensor([enc.ids])
                logits = model(input_ids=ids).logits[0, :-1].float()  # [T-1, V]: the Psych-201 script's tensor
                labels = torch.full((ids.shape[1] - 1,), -100)
                for a, b in enc.ranges:
                    labels[a - 1 : b - 1] = ids[0, a:b]
                nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                logprobs += [-float(nll[a - 1 : b - 1].sum()) for a, b in enc.ranges]
        else:
            raise SystemExit(f"unknown method {method}")
    return logprobs


def worker(method: str, model_path: str, study: str, n: int, dtype: str, threads: int, repeats: int = 1) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
    texts = load_texts(study, n)
    n_tokens = sum(len(tok(t)["input_ids"]) for t, _ in texts)
    n_responses = sum(len(s) for _, s in texts)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):  # the median of several passes tames this shared machine's noise
        t0 = time.perf_counter()
        logprobs = score(method, model, tok, texts)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    attention_flops = sum(2 * cfg.num_hidden_layers * len(tok(t)["input_ids"]) ** 2 * cfg.hidden_size for t, _ in texts)
    return {
        "method": method,
        "study": study,
        "participants": len(texts),
        "tokens": n_tokens,
        "responses": n_responses,
        "seconds": seconds,
        "tokens_per_s": n_tokens / seconds,
        "peak_rss_mb": peak / 1024,
        "peak_rss_over_load_mb": (peak - rss_before) / 1024,
        "params": params,
        "dtype": dtype,
        "logprobs": logprobs,
        "attention_flops": attention_flops,
    }


def matmul_peak(threads: int, size: int = 2048, repeats: int = 20) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - t0)


def run_sub(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default=str(Path(os.environ.get("PSYSIM_CACHE", Path.home() / ".cache" / "psysim")) / "models" / "smollm2-135m-instruct"),
    )
    p.add_argument(
        "--studies",
        nargs="+",
        default=["thoma2025riskychoice:8", "busch2024_stroop:2"],
        help="STUDY:N (N participants); per-trial prompting is quadratic in trials, so keep N small for long studies",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-per-trial", action="store_true", help="skip method (a), which is quadratic in trials")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--repeats", type=int, default=1, help="time each method this many times and report the median")
    p.add_argument("--worker", nargs=7, metavar=("METHOD", "MODEL", "STUDY", "N", "DTYPE", "THREADS", "REPEATS"))
    a = p.parse_args()
    if a.worker:
        method, model, study, n, dtype, threads, repeats = a.worker
        print(json.dumps(worker(method, model, study, int(n), dtype, int(threads), int(repeats))))
        return

    import torch
    import transformers

    peak = matmul_peak(a.threads)
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "threads": a.threads,
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        "matmul_peak_gflops_float32": peak / 1e9,
        "command": " ".join(sys.argv),
        "studies": {},
    }
    for spec in a.studies:
        study, _, n = spec.partition(":")
        n = n or "8"
        methods = ("psysim", "full_logits") if a.skip_per_trial else ("psysim", "per_trial", "full_logits")
        # (a) is quadratic in trials: it is timed once.
        runs = {
            m: run_sub([m, a.model, study, n, "float32", str(a.threads), "1" if m == "per_trial" else str(a.repeats)])
            for m in methods
        }
        runs["psysim_bf16"] = run_sub(["psysim", a.model, study, n, "bfloat16", str(a.threads), str(a.repeats)])
        ref = runs["per_trial" if "per_trial" in runs else "full_logits"]["logprobs"]
        agree = {m: max(abs(x - y) for x, y in zip(r["logprobs"], ref, strict=True)) for m, r in runs.items()}
        ps = runs["psysim"]
        summary = {
            "participants": ps["participants"],
            "responses": ps["responses"],
            "tokens": ps["tokens"],
            "responses_per_participant": ps["responses"] / ps["participants"],
            "tokens_per_s": {m: r["tokens_per_s"] for m, r in runs.items()},
            "peak_rss_mb": {m: r["peak_rss_mb"] for m, r in runs.items()},
            "speedup_vs_per_trial": ps["tokens_per_s"] / runs["per_trial"]["tokens_per_s"] if "per_trial" in runs else None,
            "speedup_vs_full_logits": ps["tokens_per_s"] / runs["full_logits"]["tokens_per_s"],
            "bf16_speedup_vs_fp32": runs["psysim_bf16"]["tokens_per_s"] / ps["tokens_per_s"],
            "max_abs_logprob_diff_vs_reference": agree,
            "roofline_fraction_fp32": 2 * ps["params"] * ps["tokens_per_s"] / peak,
            # The same with causal attention's FLOPs counted (2 · layers · T² · d per transcript of T tokens).
            "roofline_fraction_fp32_with_attention": (2 * ps["params"] * ps["tokens"] + ps["attention_flops"])
            / ps["seconds"]
            / peak,
        }
        report["studies"][study] = summary
        print(json.dumps({study: summary}, indent=2), flush=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
