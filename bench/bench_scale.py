"""Benchmark, GPU-ready: psysim's backends and workers on a Psych-201-shaped workload, against Psych-201's own method.

Random-weight models of real architectures are built on the device from their
published configs (bench/make_random_model.py; no download, no network), and
score Psych-201-shaped transcripts (the shipped thoma2025riskychoice
transcripts, ``--concat`` of them per participant, so that a transcript is as
long as a typical Psych-201 one). Per architecture, in one run:

* ``full_logits`` — Psych-201's script: batch size 1, full [length × vocabulary]
  logits, cross-entropy over the response tokens (the ratio's denominator);
* ``hf``          — psysim's transformers backend: length-sorted batches, the
  vocabulary projection only where a response token is predicted;
* ``vllm``        — psysim's vLLM backend (where vLLM is importable; dummy weights of the same shapes);
* ``hf×N``        — N Ray workers, one per GPU (or two on a CPU smoke test), each scoring a share.

It reports tokens/s, seconds, peak GPU memory and the ratio to ``full_logits``,
and writes JSON. Every method stops after its share of ``--budget`` seconds
and reports the rate over what it finished, so the whole script fits a lent
GPU's time (under 8 minutes with the defaults on one H200-class GPU).

    python bench/bench_scale.py                                   # GPU: llama-3.2-1b and llama-3.1-8b, bfloat16
    python bench/bench_scale.py --arch tiny --transcripts 16      # CPU smoke test (seconds)

The random models' numbers are not comparable between engines (different
random weights); only speed and memory are measured here. Parity of numbers is
``psysim models check`` (tests/test_vllm.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from make_random_model import ARCHITECTURES  # noqa: E402

SHAPES = {
    **ARCHITECTURES,
    "tiny": (
        "LlamaConfig",
        dict(
            vocab_size=8192,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
        ),
    ),
}


def tokenizer(vocab: int):
    """SmolLM2's tokenizer where the default model is pulled; else a byte-level BPE trained here on the shipped study."""
    from psysim.registry import pulled_path

    folder = pulled_path("smollm2-135m-instruct")
    if folder is not None and vocab >= 49152:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab, 8192), special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([t for t, _ in transcripts(64, 1)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def transcripts(n: int, concat: int) -> list[tuple[str, list[tuple[int, int]]]]:
    """``n`` participants' transcripts, each ``concat`` shipped transcripts in a row (responses' spans shifted)."""
    from psysim.data.transcripts import read_psych201

    records = read_psych201(REPO / "participants" / "thoma2025riskychoice" / "prompts.jsonl")
    out = []
    for i in range(n):
        text, spans = "", []
        for k in range(concat):
            t = records[(i * concat + k) % len(records)].transcript
            spans += [(len(text) + r.start, len(text) + r.end) for r in t.responses]
            text += t.text
        out.append((text, spans))
    return out


def build(arch: str, device: str, dtype):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    config_class, kwargs = SHAPES[arch]
    config = getattr(transformers, config_class)(**kwargs)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), config


def full_logits(model, tok, work, deadline) -> tuple[int, float]:
    """Psych-201's method; returns (tokens scored, seconds)."""
    import torch

    device = next(model.parameters()).device
    started, tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for text, _ in work:
            ids = tok(text, return_tensors="pt")["input_ids"].to(device)
            logits = model(ids).logits[0, :-1].float()
            # Every position's log-probability; Psych-201 then sums those of the response tokens (a cheap mask).
            torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None]).sum()
            tokens += ids.shape[1]
            if time.perf_counter() > deadline:
                break
    _sync()
    return tokens, time.perf_counter() - started


def psysim_backend(backend, requests, deadline, chunk: int = 16) -> tuple[int, float]:
    """Score requests through a psysim backend in chunks until the deadline; returns (tokens, seconds)."""
    started, tokens = time.perf_counter(), 0
    for i in range(0, len(requests), chunk):
        tokens += sum(r.n_tokens for r in backend.score(requests[i : i + chunk]))
        if time.perf_counter() > deadline:
            break
    _sync()
    return tokens, time.perf_counter() - started


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def requests_of(work):
    from psysim.backends import ScoreRequest

    return [ScoreRequest(key=i, text=t, spans=tuple(s)) for i, (t, s) in enumerate(work)]


def vllm_backend(arch: str, tok, dtype: str, folder: Path):
    """psysim's vLLM backend on dummy weights of the architecture (config and tokenizer written to ``folder``)."""
    import transformers
    from vllm import LLM

    from psysim.backends.vllm import VLLMBackend

    config_class, kwargs = SHAPES[arch]
    getattr(transformers, config_class)(**kwargs).save_pretrained(folder)
    tok.save_pretrained(folder)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    llm = LLM(model=str(folder), load_format="dummy", dtype=dtype, seed=0, max_model_len=8192, enable_prefix_caching=True)
    return VLLMBackend(llm, tok, name=arch, identity={}, max_length=8191)


class _Worker:
    """A Ray actor holding its own random model (same seed: same weights) and psysim hf backend."""

    def __init__(self, arch, device, dtype_name, vocab):
        import torch

        from psysim.backends.hf import HFBackend

        torch.set_num_threads(1)
        self.tok = tokenizer(vocab)
        model, _ = build(arch, device, getattr(torch, dtype_name))
        self.backend = HFBackend(model, self.tok, name=arch, identity={}, batch_tokens=65536 if device == "cuda" else 8192)

    def score(self, work, seconds):
        return psysim_backend(self.backend, requests_of(work), time.perf_counter() + seconds)


def workers(arch, device, dtype_name, vocab, work, n, seconds) -> tuple[int, float]:
    """``n`` Ray workers (one GPU each on a GPU machine), each scoring every n-th transcript; (tokens, wall seconds)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(num_cpus=max(n, 1), include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        actor = ray.remote(num_gpus=1 if device == "cuda" else 0, num_cpus=1)(_Worker)
        pool = [actor.remote(arch, device, dtype_name, vocab) for _ in range(n)]
        ray.get([a.__ray_ready__.remote() for a in pool])  # model building is start-up, not throughput
        started = time.perf_counter()
        done = ray.get([a.score.remote(work[i::n], seconds) for i, a in enumerate(pool)])
        return sum(t for t, _ in done), time.perf_counter() - started
    finally:
        ray.shutdown()


def main() -> None:
    import torch

    from psysim.backends.hf import HFBackend

    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=["llama-3.2-1b", "llama-3.1-8b"] if gpu else ["tiny"], choices=sorted(SHAPES))
    p.add_argument("--transcripts", type=int, default=256 if gpu else 16)
    p.add_argument("--concat", type=int, default=6, help="shipped transcripts per participant (~3,800 tokens at 6)")
    p.add_argument("--budget", type=float, default=360 if gpu else 120, help="seconds for everything (split evenly)")
    p.add_argument("--workers", type=int, default=torch.cuda.device_count() if gpu else 2)
    p.add_argument("--out", type=Path, default=HERE / ("results-scale-gpu.json" if gpu else "results-scale-cpu.json"))
    args = p.parse_args()

    device = "cuda" if gpu else "cpu"
    dtype_name = "bfloat16" if gpu else "float32"
    dtype = getattr(torch, dtype_name)
    if not gpu:
        from psysim.backends.hf import cpu_threads

        torch.set_num_threads(cpu_threads())
    try:
        import vllm  # noqa: F401

        has_vllm = True
    except ImportError:
        has_vllm = False
    methods = ["full_logits", "hf"] + (["vllm"] if has_vllm else []) + ([f"hf×{args.workers}"] if args.workers > 1 else [])
    share = args.budget / (len(args.arch) * len(methods))
    work = transcripts(args.transcripts, args.concat)
    results = {
        "machine": {
            "platform": platform.platform(),
            "device": torch.cuda.get_device_name() if gpu else platform.processor() or "cpu",
            "gpus": torch.cuda.device_count(),
            "cpus": os.cpu_count(),
        },
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "dtype": dtype_name,
        "transcripts": len(work),
        "concat": args.concat,
        "budget_s": args.budget,
        "archs": {},
    }
    for arch in args.arch:
        tok = tokenizer(SHAPES[arch][1]["vocab_size"])
        model, _ = build(arch, device, dtype)
        params = sum(p.numel() for p in model.parameters())
        requests = requests_of(work)
        row: dict = {"parameters": params}
        for method in methods:
            if gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            deadline = time.perf_counter() + share
            if method == "full_logits":
                tokens, seconds = full_logits(model, tok, work, deadline)
            elif method == "hf":
                backend = HFBackend(model, tok, name=arch, identity={}, batch_tokens=65536 if gpu else 8192)
                tokens, seconds = psysim_backend(backend, requests, deadline)
            elif method == "vllm":
                import tempfile

                del model
                if gpu:
                    torch.cuda.empty_cache()
                with tempfile.TemporaryDirectory() as folder:
                    started = time.perf_counter()
                    backend = vllm_backend(arch, tok, dtype_name, Path(folder))
                    row["vllm_start_s"] = round(time.perf_counter() - started, 1)
                    tokens, seconds = psysim_backend(backend, requests, time.perf_counter() + share)
                    del backend
                model, _ = build(arch, device, dtype)
            else:
                tokens, seconds = workers(arch, device, dtype_name, SHAPES[arch][1]["vocab_size"], work, args.workers, share)
            row[method] = {
                "tokens": tokens,
                "seconds": round(seconds, 2),
                "tokens_per_s": round(tokens / seconds, 1) if seconds else math.nan,
                "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if gpu else None,
            }
            print(f"{arch:>14} {method:>12}: {row[method]['tokens_per_s']:>10.1f} tokens/s ({tokens} tokens, {seconds:.1f} s)")
        base = row["full_logits"]["tokens_per_s"]
        for method in methods[1:]:
            row[method]["ratio_to_full_logits"] = round(row[method]["tokens_per_s"] / base, 2)
        results["archs"][arch] = row
        del model
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
