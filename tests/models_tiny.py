"""Tiny random-weight models and locally trained tokenizers for scoring tests (no hub, no downloads)."""

from __future__ import annotations

import functools
import json

from conftest import REPO

THOMA = REPO / "participants" / "thoma2025riskychoice" / "prompts.jsonl"


def corpus(n: int = 40) -> list[str]:
    """Real transcripts (the shipped Psych-201 study) to train the tiny tokenizers on."""
    lines = THOMA.read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line)["text"] for line in lines]


@functools.cache
def tokenizer(merge_boundaries: bool = False, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on real transcripts.

    With ``merge_boundaries`` the pre-tokenizer does not split at punctuation,
    so BPE learns tokens such as ``<<O`` that cross a response boundary: the
    nasty case :func:`psysim.backends.forward.encode` must repair.
    """
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not merge_boundaries)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = corpus()
    if merge_boundaries:
        texts = texts + ["You predict <<O>>. You predict <<Q>>. " * 50]
    tok.train_from_iterator(texts, trainer)
    if merge_boundaries:
        tok = _with_first_merges(tok, [("<", "<"), ("<<", "O"), ("Q", ">>")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


#: Tokenizer families built locally, as the scoring reference tests name them.
FAMILIES = ("bytelevel", "bytelevel-bos", "sentencepiece", "merging")

# Non-ASCII text (German, an emoji, a Greek letter) for the tokenizers to learn and the tests to read.
NON_ASCII = "Möchten Sie würfeln 🎲? Wählen Sie α oder ß: <<ß>>. Äpfel: <<α>>.\n"


@functools.cache
def family(name: str, vocab_size: int = 400):
    """A tokenizer of one family, trained on real transcripts (plus a little non-ASCII text).

    - ``bytelevel``: byte-level BPE with a pre-tokenizing regex, no prefix space, no BOS (GPT-2, Qwen);
    - ``bytelevel-bos``: the same with a BOS added before every text (Llama-3);
    - ``sentencepiece``: SentencePiece-style BPE (``▁`` for spaces and a prefix space before every
      input, byte fallback) with a BOS (Llama-2, Mistral): ``O`` alone reads ``▁O``, inside a
      transcript after ``<<`` it reads ``O``;
    - ``merging``: byte-level BPE that merges responses with their delimiters (``<<O``, ``Q>>``).
    """
    if name == "merging":
        return tokenizer(merge_boundaries=True, vocab_size=vocab_size)
    import tokenizers
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [*corpus(), NON_ASCII * 20, "You chose <<1>>, then <<10>>, then <<100>>. " * 20]
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    if name in ("bytelevel", "bytelevel-bos"):
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif name == "sentencepiece":
        tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        alphabet = []
        specials += [f"<0x{b:02X}>" for b in range(256)]
    else:
        raise ValueError(f"unknown tokenizer family {name!r}; known: {', '.join(FAMILIES)}")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(specials), special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    if name != "bytelevel":
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def _with_first_merges(tok, pairs):
    """The same tokenizer with ``pairs`` as its highest-priority BPE merges (e.g. '<<' + 'O' -> '<<O')."""
    import tokenizers

    spec = json.loads(tok.to_str())
    bpe = spec["model"]
    as_lists = bool(bpe["merges"]) and isinstance(bpe["merges"][0], list)
    new = [[a, b] if as_lists else f"{a} {b}" for a, b in pairs]
    bpe["merges"] = new + [m for m in bpe["merges"] if m not in new]
    for a, b in pairs:
        bpe["vocab"].setdefault(a + b, len(bpe["vocab"]) + len(spec.get("added_tokens", [])))
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


@functools.cache
def model(vocab_size: int, seed: int = 0, layers: int = 2):
    """A tiny random-weight Llama (float32) built from a config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()
