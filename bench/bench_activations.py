"""What one training part keeps for its backward pass without checkpointing, for several models' architectures.

``finetune.gradient_checkpointing: auto`` runs ``none`` when this fits in
``finetune.activation_budget_mib`` (2,048 MiB by default) and ``selective``
otherwise (:func:`psysim.finetune.choose_checkpointing`). This script measures
it as psysim does (:func:`psysim.finetune.activation_mib`, on torch's fake
tensors) for each architecture below, built from its published configuration
with uninitialised weights (nothing is downloaded; memory is touched only by
the weights' allocation), with psysim's default LoRA settings and a response
token every 20 tokens. docs/experiment-file.md quotes the results.

    .venv/bin/python bench/bench_activations.py [--tokens 1024]
"""

from __future__ import annotations

import argparse
import json

#: (transformers config class, model class, configuration) of each architecture.
ARCHITECTURES = {
    "SmolLM2-135M": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        ),
    ),
    "SmolLM2-360M": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            vocab_size=49152,
            hidden_size=960,
            intermediate_size=2560,
            num_hidden_layers=32,
            num_attention_heads=15,
            num_key_value_heads=5,
            tie_word_embeddings=True,
        ),
    ),
    "Qwen2.5-0.5B": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
    ),
    "SmolLM2-1.7B": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            vocab_size=49152,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            num_key_value_heads=32,
            tie_word_embeddings=True,
        ),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="the part's length (finetune.batch_tokens)")
    args = parser.parse_args()

    import torch
    import transformers

    from psysim.config import FinetuneConfig
    from psysim.finetune import activation_mib, lora_model

    results = {}
    for name, (config_class, model_class, config) in ARCHITECTURES.items():
        with torch.device("meta"):  # built without initialising the weights, then given (untouched) CPU memory
            model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
        model = model.to_empty(device="cpu")
        model.tie_weights()  # to_empty gives the tied head its own tensor
        model.config._attn_implementation = "sdpa"  # what a loaded model runs on CPU
        results[name] = round(activation_mib(lora_model(model, FinetuneConfig()), args.tokens, 0, 0.05))
        print(f"{name}: {results[name]} MiB for a part of {args.tokens} tokens", flush=True)
    print(json.dumps({"tokens": args.tokens, "activation_mib": results}))


if __name__ == "__main__":
    main()
