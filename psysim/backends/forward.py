"""Single-pass scoring: every response of a transcript, and every option of every trial, from its forward passes.

Teacher forcing on the participant's real history: one forward pass over the
whole transcript gives p(response_t | everything before it) for every t. The
prefix is never re-encoded per trial, and the vocabulary projection is applied
only at the positions that predict a scored token, at most :data:`ROWS` rows
at a time (never a full [length × vocabulary] logits tensor). Transcripts are
batched by length.

Token ids come from :class:`psysim.backends.encoding.TokenReader` (the one
tokenisation rule). An option is scored as its tokens followed by the
response's closing text (``option + ">>"`` in raw text), so options that are
prefixes of one another (``1`` and ``10``) are mutually exclusive: its first
token is read from the distribution that predicts the response, the rest in a
second pass over the transcript's key/value cache, where every option of every
trial attends to exactly the text before its own trial (a block-causal mask),
so all options of a transcript cost one extra pass over a few tokens each.
Only rows with options keep a key/value cache.

:func:`reference_scores` is the straightforward method (each response scored
from its own re-encoded prefix with a full softmax) that benchmarks compare against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .encoding import Encoded, TokenReader

__all__ = ["QUERIES", "ROWS", "reference_scores", "score_encoded"]

#: At most this many positions are projected onto the vocabulary at once (bounds memory: ROWS × vocabulary floats).
ROWS = 512
#: At most this many option tokens are fed to the model in one continuation pass.
QUERIES = 256


def kv_keyword(decoder) -> str:
    """The name under which ``decoder.forward`` takes a key/value cache (it changed across transformers versions)."""
    import inspect

    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def decode(decoder, cache, input_ids, position_ids, attention_mask=None):
    """The decoder's last hidden states for ``input_ids`` read after ``cache`` (which the call extends)."""
    return decoder(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        use_cache=True,
        **{kv_keyword(decoder): cache},
    ).last_hidden_state


def cache_layers(cache) -> list[tuple[Any, Any]]:
    """(keys, values) per layer of a transformers cache, across cache API versions."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(k, v) for k, v in cache]


def cache_of(layers):
    """A transformers ``DynamicCache`` holding these per-layer ``(keys, values)``, without copying them where it can.

    (Filling a cache through ``update`` copies every layer once more: for a
    long transcript that copy is as large as the cache itself.)
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    try:
        from transformers.cache_utils import DynamicLayer

        built = []
        for keys, values in layers:
            layer = DynamicLayer()
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            built.append(layer)
        if not hasattr(cache, "layers"):
            raise AttributeError("layers")
        cache.layers = built
        return cache
    except (ImportError, AttributeError, TypeError):  # an older cache API: fill it the documented way
        cache = DynamicCache()
        for idx, (keys, values) in enumerate(layers):
            cache.update(keys, values, idx)
        return cache


def project(model, hidden, targets):
    """log p(target) at each row of ``hidden`` [N, H]: the vocabulary projection, :data:`ROWS` rows at a time."""
    import torch

    head = model.get_output_embeddings()
    scale = getattr(model.config, "logit_scale", None)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    out = []
    for i in range(0, hidden.shape[0], ROWS):
        logits = head(hidden[i : i + ROWS]).float()
        if scale is not None:
            logits = logits * scale
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        logp = logits.log_softmax(-1)
        out.append(logp.gather(-1, targets[i : i + ROWS].unsqueeze(-1)).squeeze(-1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def block_causal_mask(cached: int, q: int, blocks, dtype, pending: int = 0):
    """The additive attention mask [q, cached + q] of ``q`` queries fed after ``cached`` cached positions.

    The first ``pending`` queries are ordinary new text (causal, after the
    whole cache). Each block ``(prefix_end, first, last)`` is one
    continuation, queries ``first:last``: it sees key positions before
    ``prefix_end`` (the cache, and the pending queries when ``prefix_end``
    reaches past the cache) and its own earlier tokens, nothing else.
    Queries in no block see only the first position (padding; never read).
    """
    import torch

    blocked = torch.finfo(dtype).min
    mask = torch.full((q, cached + q), blocked, dtype=dtype)
    mask[:, 0] = 0
    causal = torch.full((q, q), blocked, dtype=dtype).triu(1)
    if pending:
        mask[:pending, :cached] = 0
        mask[:pending, cached : cached + pending] = causal[:pending, :pending]
    for prefix_end, first, last in blocks:
        mask[first:last, :prefix_end] = 0
        mask[first:last, cached + first : cached + last] = causal[: last - first, : last - first]
    return mask


def continuation_logprobs(model, layers, rows: Sequence[Sequence[tuple[int, list[int]]]]) -> list[list[float]]:
    """Per row, for each ``(start, tokens)``: log p(tokens[1:] | ids[:start] + tokens[:1]) (the first token is the caller's).

    ``layers`` is the key/value cache (per layer ``(keys, values)``, one batch
    row per entry of ``rows``) of the text read so far; ``start`` may be
    anywhere in it. All continuations of all rows are fed together,
    :data:`QUERIES` tokens per row at a time, each token attending to its
    row's cache before its own ``start`` and to the earlier tokens of its own
    continuation (a block-causal mask), so every number equals the one a
    separate forward pass over ``ids[:start] + tokens`` would give.
    """
    import torch

    out = [[0.0] * len(conts) for conts in rows]
    # Per row, chunks of whole continuations (a continuation never spans two passes); pass k takes chunk k of every row.
    chunks: list[list[list[int]]] = []
    for conts in rows:
        mine, chunk, size = [], [], 0
        for i, (_, tokens) in enumerate(conts):
            n = len(tokens) - 1
            if n < 1:
                continue
            if chunk and size + n > QUERIES:
                mine.append(chunk)
                chunk, size = [], 0
            chunk.append(i)
            size += n
        if chunk:
            mine.append(chunk)
        chunks.append(mine)
    passes = max((len(c) for c in chunks), default=0)
    if not passes:
        return out
    decoder = model.get_decoder()
    device = layers[0][0].device
    dtype = layers[0][0].dtype
    cached = layers[0][0].shape[-2]
    for k in range(passes):
        plans = []
        for r, conts in enumerate(rows):
            feed, positions, targets, owner, blocks = [], [], [], [], []
            for i in chunks[r][k] if k < len(chunks[r]) else []:
                start, tokens = conts[i]
                first = len(feed)
                for j in range(len(tokens) - 1):
                    feed.append(tokens[j])
                    positions.append(start + j)
                    targets.append(tokens[j + 1])
                    owner.append(i)
                blocks.append((start, first, len(feed)))
            plans.append((feed, positions, targets, owner, blocks))
        q = max(len(p[0]) for p in plans)
        input_ids = torch.zeros((len(rows), q), dtype=torch.long)
        position_ids = torch.zeros((len(rows), q), dtype=torch.long)
        mask = torch.stack([block_causal_mask(cached, q, p[4], dtype) for p in plans]).unsqueeze(1)
        for r, (feed, positions, _, _, _) in enumerate(plans):
            input_ids[r, : len(feed)] = torch.tensor(feed, dtype=torch.long)
            position_ids[r, : len(feed)] = torch.tensor(positions, dtype=torch.long)
        cache = cache_of(layers)
        hidden = decode(decoder, cache, input_ids.to(device), position_ids.to(device), mask.to(device))
        del cache
        rows_idx = [r for r, p in enumerate(plans) for _ in p[0]]
        cols_idx = [c for p in plans for c in range(len(p[0]))]
        targets = [t for p in plans for t in p[2]]
        lps = project(model, hidden[torch.tensor(rows_idx), torch.tensor(cols_idx)], torch.tensor(targets, device=device))
        lps = lps.tolist()
        pos = 0
        for r, (feed, _, _, owner, _) in enumerate(plans):
            per: dict[int, list[float]] = {}
            for i, lp in zip(owner, lps[pos : pos + len(feed)], strict=True):
                per.setdefault(i, []).append(lp)
            pos += len(feed)
            for i, values in per.items():
                out[r][i] = math.fsum(values)
    return out


def score_encoded(model, batch: Sequence[Encoded], pad_id: int = 0) -> list[list[tuple[float, int, list[float] | None]]]:
    """One forward pass over a batch of encoded transcripts (plus a short pass for the options' tails).

    Returns, per transcript and per response, ``(logprob, n_tokens,
    option_logprobs)``: the response's own tokens (Psych-201's convention:
    its content only), and each option with the response's closing text
    (``Encoded.options``; ``None`` where the trial has none).
    """
    import torch

    device = next(model.parameters()).device
    length = max(len(e.ids) for e in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    for b, e in enumerate(batch):
        input_ids[b, : len(e.ids)] = torch.tensor(e.ids)
    with_options = [b for b, e in enumerate(batch) if e.options and any(e.options)]
    decoder = model.get_decoder()
    # Right padding needs no attention mask: under causal attention a real position only sees
    # earlier positions, all real, and padded positions are never read. Without a mask the
    # attention kernels take their fast causal path (measured in BENCHMARKS.md).
    out = decoder(input_ids=input_ids.to(device), use_cache=bool(with_options))
    hidden = out.last_hidden_state

    # Every scored token at position p is predicted by the hidden state at p - 1; an option's first
    # token by the state that predicts its response's first token.
    rows, cols, targets = [], [], []
    for b, e in enumerate(batch):
        for start, end in e.ranges:
            for p in range(start, end):
                rows.append(b)
                cols.append(p - 1)
                targets.append(e.ids[p])
        for (start, _), opts in zip(e.ranges, e.options or [], strict=False):
            for tokens in opts or []:
                rows.append(b)
                cols.append(start - 1)
                targets.append(tokens[0])
    token_logp = project(model, hidden[torch.tensor(rows), torch.tensor(cols)], torch.tensor(targets, device=device)).tolist()

    tails: dict[int, list[float]] = {}
    if with_options:
        # transformers 5 names the output's cache `cache` (the old name warns); older versions `past_key_values`.
        layers = cache_layers(out.get("cache") or out.get("past_key_values"))
        pick = torch.tensor(with_options, device=device)
        conts = [
            [(start, tokens) for (start, _), opts in zip(batch[b].ranges, batch[b].options, strict=True) for tokens in opts or []]
            for b in with_options
        ]
        if len(with_options) < len(batch):  # the backend batches rows with options apart, so this rarely copies
            layers = [(k.index_select(0, pick), v.index_select(0, pick)) for k, v in layers]
        got = continuation_logprobs(model, layers, conts)
        tails = dict(zip(with_options, got, strict=True))
        del layers
    del out, hidden

    results: list[list[tuple[float, int, list[float] | None]]] = []
    k = 0
    for b, e in enumerate(batch):
        per = []
        for start, end in e.ranges:
            n = end - start
            per.append([math.fsum(token_logp[k : k + n]), n])
            k += n
        tail = iter(tails.get(b, ()))
        for t, opts in enumerate(e.options or []):
            if opts:
                per[t].append([token_logp[k + j] + next(tail) for j in range(len(opts))])
                k += len(opts)
        results.append([(lp, n, rest[0] if rest else None) for lp, n, *rest in per])
    return results


def reference_scores(model, tokenizer, text: str, spans: Sequence[tuple[int, int]], add_special_tokens: bool = True):
    """The straightforward method: each response scored from its own re-encoded prefix with a full softmax.

    Tokenisation is :class:`~psysim.backends.encoding.TokenReader`'s (solved
    in one place); everything else is deliberately naive: one forward pass
    per response over its prefix and the response, full logits at every
    position, log-softmax over the vocabulary. Returns ``[(logprob, n_tokens), ...]``.
    """
    import torch

    enc = TokenReader(tokenizer).encode(text, spans, add_special_tokens)
    out = []
    for start, end in enc.ranges:
        ids = torch.tensor([enc.ids[:end]])
        logits = model(input_ids=ids).logits[0].float()
        logp = logits.log_softmax(-1)
        lp = math.fsum(float(logp[p - 1, enc.ids[p]]) for p in range(start, end))
        out.append((lp, end - start))
    return out
