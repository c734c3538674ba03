"""Build a random-weight model of a real architecture from its config (no download), with the default model's tokenizer.

For benchmarks of architectures that cannot be downloaded here (and on lent GPU
machines, which have no network): the weights are random, the shapes and the
cost are the real model's. The tokenizer is SmolLM2's (49,152 tokens), so every
token id is valid for the larger vocabularies.

    .venv/bin/python bench/make_random_model.py qwen2.5-0.5b /tmp/qwen-random
    .venv/bin/python bench/bench_scoring.py --model /tmp/qwen-random --skip-per-trial
"""

from __future__ import annotations

import sys
from pathlib import Path

# Published hyperparameters of each architecture (from the models' config.json files).
ARCHITECTURES = {
    "smollm2-135m": (
        "LlamaConfig",
        dict(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        ),
    ),
    "smollm2-360m": (
        "LlamaConfig",
        dict(
            vocab_size=49152,
            hidden_size=960,
            intermediate_size=2560,
            num_hidden_layers=32,
            num_attention_heads=15,
            num_key_value_heads=5,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        ),
    ),
    "smollm2-1.7b": (
        "LlamaConfig",
        dict(
            vocab_size=49152,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=8192,
            rope_theta=130000.0,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-0.5b": (
        "Qwen2Config",
        dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-1b": (
        "LlamaConfig",
        dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=131072,
            rope_theta=500000.0,
            tie_word_embeddings=True,
            head_dim=64,
        ),
    ),
    "llama-3.1-8b": (
        "LlamaConfig",
        dict(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=131072,
            rope_theta=500000.0,
            tie_word_embeddings=False,
        ),
    ),
}


def main() -> None:
    name, dest = sys.argv[1], Path(sys.argv[2])
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from psysim.registry import pulled_path

    config_class, kwargs = ARCHITECTURES[name]
    config = getattr(transformers, config_class)(**kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(pulled_path("smollm2-135m-instruct")).save_pretrained(dest)
    print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, random weights, saved to {dest}")


if __name__ == "__main__":
    main()
