"""Benchmark: one fine-tuning step (forward + backward) of the default model, psysim's loss against the plain one.

Measured in one run, each method in its own fresh subprocess (so peak memory
is its own), on the same batch of thoma2025riskychoice participants
(``experiments/finetune.yaml``'s rendering), with that file's LoRA settings
(rank 8 on all linear layers, no dropout):

* ``naive``  — ``model(input_ids, attention_mask).logits`` at every position,
               shifted cross-entropy where a label is a response token (the
               textbook loss; psysim 0.2.0 before this benchmark);
* ``psysim-nockpt`` — :func:`psysim.finetune.batch_loss` on the whole batch:
               no attention mask for the right-padded batch (causal attention
               never reads the padding), the vocabulary projection only where a
               response token is predicted;
* ``psysim-parts-nockpt`` — the same loss through :func:`psysim.finetune.accumulate`
               in parts of at most ``finetune.batch_tokens`` (1024) tokens,
               without gradient checkpointing (each adapted layer one autograd
               node, :func:`psysim.finetune.fused_adapters`, as in every
               ``accumulate`` method below; ``psysim-nockpt`` runs peft's
               forward);
* ``psysim-dropout`` — as shipped but with dropout 0.05 on the adapters'
               inputs (the default until run 4);
* ``psysim-selective`` / ``psysim-full`` — parts, with selective / full
               gradient checkpointing;
* ``psysim`` — as shipped: parts of at most ``finetune.batch_tokens`` tokens,
               checkpointing as ``finetune.gradient_checkpointing`` says
               (``auto``: measured, then ``none`` within
               ``finetune.activation_budget_mib``; ``checkpointing`` in the
               results says what it chose, and how long measuring took).

All give the same loss (printed). Reported: seconds per step (each, and the
median of ``--steps``, measured after one first step timed apart: a process's
first step also faults its pages in), peak resident memory of the process and what the step
added on top of the loaded model, and the step's FLOP bound: the matrix
products a step cannot avoid, divided by this machine's float32
matrix-product rate, measured in the same process (2048 × 2048 ``torch.mm``,
between the steps): 2 FLOPs per weight per token forward and as many again
for the gradients with respect to the inputs that the adapters need (the
frozen weights need no weight gradients), and the attention products, which
no method avoids either (``QKᵀ`` and ``PV`` forward, four products of the same
size backward, each over the causal half: 6·L²·d per layer for an example of
L tokens and attention width d). Checkpointing's
recomputed forward is counted against the method. ``flop_bound_seconds_weights``
is the older bound without the attention products (runs 1–3 of BENCHMARKS.md).

On a machine shared with other tenants the rate moves by ±30% within
minutes, so it is measured before the first step and after every step; each
step is set against the bound at the mean of the rates just before and after
it (``times_the_bound_each_step``), and ``times_the_bound`` is the median of
these ratios. ``flop_bound_seconds`` is at the median rate.

    .venv/bin/python bench/bench_finetune.py [--batch 4] [--steps 5] [--methods naive,psysim,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def matmul_rate() -> float:
    """This machine's float32 matrix-product rate now (FLOP/s of a 2048 x 2048 ``torch.mm``)."""
    import torch

    a = torch.randn(2048, 2048)
    torch.mm(a, a)
    started = time.perf_counter()
    for _ in range(5):
        torch.mm(a, a)
    return 5 * 2 * 2048**3 / (time.perf_counter() - started)


def step(method: str, batch: int, steps: int) -> dict:
    import torch

    import psysim
    from psysim.backends import get_backend
    from psysim.finetune import accumulate, batch_loss, choose_checkpointing, lora_model, training_example

    exp = psysim.load_experiment(REPO / "experiments" / "finetune.yaml")
    backend = get_backend(exp.model(None), exp.config.folder)
    tok = backend.tokenizer
    prompts = [exp.render(pid, "no_persona") for pid in exp.participants[:batch]]
    examples = [training_example(tok, p.text, p.spans) for p in prompts]
    torch.manual_seed(0)
    ft = exp.config.finetune  # the experiment's LoRA settings, as psysim finetune builds them
    if method == "psysim-dropout":
        ft = dataclasses.replace(ft, dropout=0.05)
    elif method != "psysim":  # the shipped setting for psysim; the others name theirs
        named = {"psysim-full": "full", "psysim-selective": "selective"}
        ft = dataclasses.replace(ft, gradient_checkpointing=named.get(method, "none"))
    model = lora_model(backend.model, ft)
    started = time.perf_counter()
    checkpointing = choose_checkpointing(model, ft, examples, backend.pad_id)  # what `auto` settles on, as finetune does
    checkpointing["seconds"] = round(time.perf_counter() - started, 2)
    model.train()
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def naive(b):
        length = max(len(ids) for ids, _ in b)
        ids = torch.tensor([i + [backend.pad_id] * (length - len(i)) for i, _ in b])
        labels = torch.tensor([lab + [-100] * (length - len(lab)) for _, lab in b])
        mask = torch.tensor([[1] * len(i) + [0] * (length - len(i)) for i, _ in b])
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )

    def plain(loss_of):
        def step(b):
            loss = loss_of(b)
            loss.backward()
            return loss.item()

        return step

    if method == "naive":
        run_step = plain(naive)
    elif method == "psysim-nockpt":
        run_step = plain(lambda b: batch_loss(model, b, backend.pad_id))
    else:  # as psysim finetune's loop (which gives the heap's freed pages back once per epoch, not per step)
        run_step = lambda b: accumulate(model, b, backend.pad_id, ft.batch_tokens)  # noqa: E731

    # The first step of a process also faults its activations' pages in and fills allocator caches: timed apart,
    # as a training run's first step (the rest, what a run of many steps spends, are the steps measured below).
    model.zero_grad()
    torch.manual_seed(1)
    started = time.perf_counter()
    run_step(examples)
    first = time.perf_counter() - started
    rates, times, losses = [matmul_rate()], [], []
    for _ in range(steps):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks for every method
        started = time.perf_counter()
        losses.append(run_step(examples))
        times.append(time.perf_counter() - started)
        rates.append(matmul_rate())  # between steps: the rate the step had, as near as it can be measured
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The step's unavoidable matrix products, and how fast this machine does them.
    weights = sum(p.numel() for n, p in backend.model.named_parameters() if "embed" not in n and "lora" not in n)
    tokens = sum(len(ids) for ids, _ in examples)
    flops_weights = 2 * weights * tokens * 2  # forward + the input gradients (checkpointing's recomputation is on top)
    config = backend.model.config
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    flops_attention = sum(6 * len(ids) ** 2 * width * config.num_hidden_layers for ids, _ in examples)
    flops = flops_weights + flops_attention
    # A shared machine's rate drifts within minutes: each step is set against the bound at the mean of the rates
    # measured just before and just after it, and the median of these ratios is reported.
    ratios = [t / (flops / ((a + b) / 2)) for t, a, b in zip(times, rates[:-1], rates[1:], strict=True)]
    rate = statistics.median(rates)
    return {
        "method": method,
        "tokens": [len(ids) for ids, _ in examples],
        "seconds_per_step": round(statistics.median(times), 2),
        "first_step_seconds": round(first, 2),
        "peak_mib": round(peak / 1024),
        "step_added_mib": round((peak - loaded) / 1024),
        "loss": round(losses[0], 6),
        "threads": torch.get_num_threads(),
        "matmul_gflops": round(rate / 1e9),
        "matmul_gflops_each": [round(r / 1e9) for r in rates],
        "seconds_each_step": [round(t, 2) for t in times],
        "checkpointing": checkpointing,
        "flop_bound_seconds": round(flops / rate, 2),
        "flop_bound_seconds_weights": round(flops_weights / rate, 2),
        "times_the_bound": round(statistics.median(ratios), 2),
        "times_the_bound_each_step": [round(r, 2) for r in ratios],
        "times_the_weights_bound": round(statistics.median(times) / (flops_weights / rate), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", default="naive,psysim-nockpt,psysim-parts-nockpt,psysim-selective,psysim-full,psysim")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(step(args.method, args.batch, args.steps)))
        return
    results = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--method", method, "--batch", str(args.batch), "--steps", str(args.steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps(results, indent=2))
    by = {r["method"]: r for r in results}
    if "naive" in by and "psysim" in by:
        naive, ours = by["naive"], by["psysim"]
        print(
            f"speed-up {naive['seconds_per_step'] / ours['seconds_per_step']:.1f}x, "
            f"memory added by a step {naive['step_added_mib']} -> {ours['step_added_mib']} MiB"
        )


if __name__ == "__main__":
    main()
