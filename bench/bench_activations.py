"""What one training part keeps for its backward pass without checkpointing, for several models' architectures.

``finetune.gradient_checkpointing: auto`` runs ``none`` when this fits in
``finetune.activation_budget_mib`` (2,048 MiB by default) and ``selective``
otherwise (:func:`psysim.finetune.choose_checkpointing`). This script measures
it as psysim does (:func:`psysim.finetune.activation_mib`, on torch's fake
tensors) for architectures of ``bench/make_random_model.py``, each built from
its published configuration with uninitialised weights (nothing is
downloaded or computed), with psysim's default LoRA settings and a response
token every 20 tokens. docs/experiment-file.md and BENCHMARKS.md (run 8) quote
the results.

    .venv/bin/python bench/bench_activations.py [--tokens 1024] [--arch smollm2-135m smollm2-360m ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_random_model import ARCHITECTURES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="the part's length (finetune.batch_tokens)")
    parser.add_argument(
        "--arch",
        nargs="+",
        default=["smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "smollm2-1.7b"],
        choices=sorted(ARCHITECTURES),
    )
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from psysim.config import FinetuneConfig
    from psysim.finetune import activation_mib, lora_model

    results = {}
    for name in args.arch:
        config_class, kwargs = ARCHITECTURES[name]
        with torch.device("meta"):  # built without initialising the weights, then given (untouched) CPU memory
            model = AutoModelForCausalLM.from_config(getattr(transformers, config_class)(**kwargs), dtype=torch.float32)
        model = model.to_empty(device="cpu")
        model.tie_weights()  # to_empty gives a tied head its own tensor
        model.config._attn_implementation = "sdpa"  # what a loaded model runs on CPU
        results[name] = round(activation_mib(lora_model(model, FinetuneConfig()), args.tokens, 0, 0.05))
        print(f"{name}: {results[name]} MiB for a part of {args.tokens} tokens", flush=True)
    print(json.dumps({"tokens": args.tokens, "activation_mib": results}))


if __name__ == "__main__":
    main()
