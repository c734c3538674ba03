"""Single-pass scoring: every response of a transcript from one forward pass.

Teacher forcing on the participant's real history: one forward pass over the
whole transcript gives p(response_t | everything before it) for every t. The
prefix is never re-encoded per trial, and the vocabulary projection is applied
only at the positions that predict a response token (never a full
[length × vocabulary] logits tensor). Transcripts are batched by length.

Tokenisation boundaries are solved here, once (:func:`encode`): the whole text
is tokenised as the model would read it, and a response's tokens are the tokens
inside its character span. If the tokenizer merges a response with a
neighbouring character (a token crosses a span boundary), that transcript is
tokenised piece by piece instead — the text is cut at every span boundary and
each piece tokenised on its own — so a response's tokens are exactly its own.

:func:`reference_scores` is the straightforward method (each response scored
from its own re-encoded prefix with a full softmax) that tests and benchmarks
compare against.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Encoded", "encode", "option_token_ids", "reference_scores", "score_encoded"]


@dataclass
class Encoded:
    """Token ids of a transcript and, per response, the half-open range of its token positions."""

    ids: list[int]
    ranges: list[tuple[int, int]]
    boundary_fixed: bool = False


def _bos(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. Llama's BOS), as ids."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return list(with_special[: len(with_special) - len(without)]) if with_special[-len(without) :] == without else []


def encode(
    tokenizer, text: str, spans: Sequence[tuple[int, int]], add_special_tokens: bool = True, piecewise: bool = False
) -> Encoded:
    """Tokenise ``text`` and find each response's tokens by its character span (see module docstring).

    ``piecewise`` always tokenizes the pieces between response boundaries
    separately, as closed-loop simulation reads them (:class:`psysim.backends.Session`).
    """
    if piecewise:
        return _pieces(tokenizer, text, spans, add_special_tokens)
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    ranges = []
    aligned = True
    for s, e in spans:
        inside = [i for i, (a, b) in enumerate(offsets) if b > a and a >= s and b <= e]
        crossing = any(b > a and a < e and b > s and not (a >= s and b <= e) for a, b in offsets)
        if crossing or not inside or inside != list(range(inside[0], inside[-1] + 1)):
            aligned = False
            break
        ranges.append((inside[0], inside[-1] + 1))
    if aligned:
        return _checked(Encoded(ids, ranges))
    # A token crosses a response boundary: tokenise the pieces between boundaries separately.
    return _pieces(tokenizer, text, spans, add_special_tokens)


def _pieces(tokenizer, text: str, spans: Sequence[tuple[int, int]], add_special_tokens: bool) -> Encoded:
    cuts = sorted({0, len(text), *(b for span in spans for b in span)})
    piece_ranges: dict[tuple[int, int], tuple[int, int]] = {}
    ids = _bos(tokenizer) if add_special_tokens else []
    for a, b in itertools.pairwise(cuts):
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        piece_ranges[(a, b)] = (len(ids), len(ids) + len(piece))
        ids += piece
    return _checked(Encoded(ids, [piece_ranges[(s, e)] for s, e in spans], boundary_fixed=True))


def _checked(enc: Encoded) -> Encoded:
    # A response's first token is predicted from the position before it; the very first token of
    # a text has none (Psych-201 text always has "<<" there, so this only catches malformed input).
    if enc.ranges and enc.ranges[0][0] == 0:
        raise ValueError("a response starts the text: there is nothing to predict its first token from")
    return enc


def option_token_ids(tokenizer, option: str) -> list[int]:
    """The tokens of an option as it would be read right after the response delimiter."""
    return list(tokenizer(option, add_special_tokens=False)["input_ids"])


def _kv_keyword(decoder) -> str:
    import inspect

    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_layers(cache) -> list[tuple[Any, Any]]:
    """(keys, values) per layer of a transformers cache, across cache API versions."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(k, v) for k, v in cache]


def _project(model, hidden, targets):
    """log p(target) at each row of ``hidden`` [N, H], projecting onto the vocabulary in chunks."""
    import torch

    head = model.get_output_embeddings()
    scale = getattr(model.config, "logit_scale", None)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    out = []
    for i in range(0, hidden.shape[0], 512):  # bounds memory: 512 × vocabulary floats at a time
        logits = head(hidden[i : i + 512]).float()
        if scale is not None:
            logits = logits * scale
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        logp = logits.log_softmax(-1)
        out.append(logp.gather(-1, targets[i : i + 512].unsqueeze(-1)).squeeze(-1) if targets is not None else logp)
    return torch.cat(out)


def score_encoded(
    model,
    batch: Sequence[Encoded],
    options: Sequence[Sequence[list[list[int]] | None]] | None = None,
    pad_id: int = 0,
) -> list[list[tuple[float, int, list[float] | None]]]:
    """One forward pass over a batch of encoded transcripts.

    Returns, per transcript and per response, ``(logprob, n_tokens, option_logprobs)``.
    ``options[b][t]`` lists the token ids of each option of response ``t`` of
    transcript ``b`` (or ``None``). Single-token options are read from the
    distribution that predicts the response's first token; longer options
    continue from the key/value cache of the shared prefix.
    """
    import torch

    device = next(model.parameters()).device
    length = max(len(e.ids) for e in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    for b, e in enumerate(batch):
        input_ids[b, : len(e.ids)] = torch.tensor(e.ids)
    multi = options is not None and any(opt is not None and any(len(o) > 1 for o in opt) for per in options for opt in per)
    decoder = model.get_decoder()
    # Right padding needs no attention mask: under causal attention a real position only sees
    # earlier positions, all real, and padded positions are never read. Without a mask the
    # attention kernels take their fast causal path (measured in BENCHMARKS.md).
    out = decoder(input_ids=input_ids.to(device), use_cache=multi)
    hidden = out.last_hidden_state

    # Every response token t at position p is predicted by the hidden state at p - 1.
    rows, cols, targets = [], [], []
    for b, e in enumerate(batch):
        for start, end in e.ranges:
            for p in range(start, end):
                rows.append(b)
                cols.append(p - 1)
                targets.append(e.ids[p])
    hid = hidden[torch.tensor(rows), torch.tensor(cols)]
    token_logp = _project(model, hid, torch.tensor(targets, device=device)).tolist()

    # Option first tokens: the full distribution at each response's first predicting position.
    first_dists = {}
    if options is not None:
        need = [(b, t) for b in range(len(batch)) for t, opt in enumerate(options[b]) if opt]
        if need:
            pos = torch.tensor([batch[b].ranges[t][0] - 1 for b, t in need])
            dists = _project(model, hidden[torch.tensor([b for b, _ in need]), pos], None)
            first_dists = {bt: dists[i] for i, bt in enumerate(need)}

    results: list[list[tuple[float, int, list[float] | None]]] = []
    k = 0
    layers = _cache_layers(out.past_key_values) if multi else None
    for b, e in enumerate(batch):
        per = []
        for t, (start, end) in enumerate(e.ranges):
            n = end - start
            lp = math.fsum(token_logp[k : k + n])
            k += n
            opt_lp = None
            if options is not None and options[b][t]:
                opt_lp = _option_logprobs(model, decoder, layers, b, start, options[b][t], first_dists[(b, t)])
            per.append((lp, n, opt_lp))
        results.append(per)
    return results


def _option_logprobs(model, decoder, layers, b: int, start: int, opts: list[list[int]], first) -> list[float]:
    """Exact log-probability of each option (token ids) after the prefix ``ids[:start]`` of row ``b``."""
    import torch
    from transformers import DynamicCache

    firsts = [float(first[o[0]]) for o in opts]
    longer = [i for i, o in enumerate(opts) if len(o) > 1]
    if not longer:
        return firsts
    device = first.device
    m = max(len(opts[i]) for i in longer)
    cache = DynamicCache()
    for idx, (keys, values) in enumerate(layers):
        cache.update(
            keys[b : b + 1, :, :start].repeat(len(longer), 1, 1, 1),
            values[b : b + 1, :, :start].repeat(len(longer), 1, 1, 1),
            idx,
        )
    # Feed each option's tokens but the last; right padding keeps real positions exact.
    feed = torch.zeros((len(longer), m - 1), dtype=torch.long)
    for r, i in enumerate(longer):
        feed[r, : len(opts[i]) - 1] = torch.tensor(opts[i][:-1])
    attention = torch.ones((len(longer), start + m - 1), dtype=torch.long)
    positions = torch.arange(start, start + m - 1).unsqueeze(0).repeat(len(longer), 1)
    hidden = decoder(
        input_ids=feed.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **{_kv_keyword(decoder): cache},
    ).last_hidden_state
    out = list(firsts)
    for r, i in enumerate(longer):
        tokens = opts[i]
        targets = torch.tensor(tokens[1:], device=device)
        lp = _project(model, hidden[r, : len(tokens) - 1], targets).tolist()
        out[i] = firsts[i] + math.fsum(lp)
    return out


def reference_scores(model, tokenizer, text: str, spans: Sequence[tuple[int, int]], add_special_tokens: bool = True):
    """The straightforward method: each response scored from its own re-encoded prefix with a full softmax.

    Tokenisation is :func:`encode`'s (solved in one place); everything else is
    deliberately naive: one forward pass per response over its prefix and the
    response, full logits at every position, log-softmax over the vocabulary.
    Returns ``[(logprob, n_tokens), ...]``.
    """
    import torch

    enc = encode(tokenizer, text, spans, add_special_tokens)
    out = []
    for start, end in enc.ranges:
        ids = torch.tensor([enc.ids[:end]])
        logits = model(input_ids=ids).logits[0].float()
        logp = logits.log_softmax(-1)
        lp = math.fsum(float(logp[p - 1, enc.ids[p]]) for p in range(start, end))
        out.append((lp, end - start))
    return out
