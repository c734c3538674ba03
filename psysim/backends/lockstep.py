"""Lock-step groups of the ``hf`` backend: closed-loop sessions that advance together over one batched cache.

A :class:`Group` holds the key/value cache of every session in it as one
tensor per layer, ``[rows, heads, columns, head size]``: row ``b`` holds its
session's keys and values at columns ``0:length``; columns past a row's
length are stale and masked. The buffers persist from trial to trial and grow
geometrically, so a step copies only what it adds (each row's new tokens,
moved from where the pass wrote them to the end of the row), never the caches
themselves. Sessions join an empty row (a participant joining a running group)
and leave by swapping the last row into theirs.

:func:`options_pass` is one trial of every session: each row feeds its
pending text and its options' tokens at its own positions under an additive
mask that lets it see only its own columns, its pending tokens causally and,
per option, those plus the option's own earlier tokens (a block-causal mask);
a padding query sees only itself. So every row's numbers are its session's
alone, whoever shares the pass (tested against one session at a time).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ModelError

if TYPE_CHECKING:
    from .hf import HFBackend, HFSession

#: Sessions starting together share a common beginning (the same instructions, no persona) of at least this many
#: tokens before it is worth a pass of its own.
SHARED_PREFIX = 16

#: How much a group's buffers grow when a row outgrows them (amortises the copy into the larger buffer).
GROWTH = 1.5


def _inference(method):
    """Run ``method`` under ``torch.inference_mode``: the buffers are made in a pass, and only such code may write them."""

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return method(*args, **kwargs)

    return wrapped


@functools.cache
def _columns_class():
    """The transformers cache layer over a group's buffers (made once, on first use: transformers loads lazily)."""
    from transformers.cache_utils import DynamicLayer

    class Columns(DynamicLayer):
        """One layer of a pass: the group's cached columns ``0:at`` of every row, the pass's new ones after them."""

        def __init__(self, group: Group, index: int, at: int):
            super().__init__()
            self.group, self.index, self.at = group, index, at
            self.is_initialized = True
            self.keys, self.values = group.view(index, at)

        def update(self, key_states, value_states, *args, **kwargs):
            # The pass writes its new keys and values into the group's buffers after the cached columns and
            # attends over a view of them: no concatenation, no copy of the cache.
            self.keys, self.values = self.group.write(self.index, self.at, key_states, value_states)
            return self.keys, self.values

    return Columns


class Group:
    """The sessions of one lock-step group and their batched key/value cache (module docstring)."""

    def __init__(self, backend: HFBackend):
        self.backend = backend
        self.sessions: list[HFSession] = []  # row b is sessions[b]
        self.buffers: list[list[Any]] | None = None  # per layer [keys, values], each [rows, heads, columns, head size]
        self.prefix: tuple[list[int], list[tuple[Any, Any]], Any] | None = None  # a beginning read once: ids, layers, hidden

    # -- rows -------------------------------------------------------------------------------------------------------

    @_inference
    def join(self, session: HFSession) -> None:
        """Give ``session`` the next row; what it read before (a cache of its own, if any) is copied in."""
        row = len(self.sessions)
        self.sessions.append(session)
        saved, session.saved = session.saved, None
        session.group, session.row = self, row
        if saved is not None and session.length:
            self._reserve(row + 1, session.length, saved)
            for (keys, values), (k, v) in zip(self.buffers, saved, strict=True):
                keys[row, :, : session.length] = k[0]
                values[row, :, : session.length] = v[0]

    @_inference
    def leave(self, session: HFSession, keep: bool) -> None:
        """Take ``session`` out; ``keep`` its cache as its own (it may read on later), else forget it (closed)."""
        row, last = session.row, len(self.sessions) - 1
        if keep and session.length:
            session.saved = [
                (keys[row : row + 1, :, : session.length].clone(), values[row : row + 1, :, : session.length].clone())
                for keys, values in self.buffers
            ]
        if row != last:  # the last row moves into the free one, so rows 0..n-1 stay the group's (no gaps to compute)
            moved = self.sessions[last]
            for keys, values in self.buffers or ():
                keys[row, :, : moved.length] = keys[last, :, : moved.length]
                values[row, :, : moved.length] = values[last, :, : moved.length]
            self.sessions[row], moved.row = moved, row
        self.sessions.pop()
        session.group, session.row = None, None

    # -- buffers ----------------------------------------------------------------------------------------------------

    @_inference
    def _reserve(self, rows: int, columns: int, like: Sequence[tuple[Any, Any]]) -> None:
        """Room for ``rows`` × ``columns`` in every layer, buffers shaped like ``like``'s layers (grown geometrically)."""
        if self.buffers is None:
            self.buffers = [None] * len(like)
        for index, (k, v) in enumerate(like):
            self._reserve_layer(index, rows, columns, k, v)

    def _reserve_layer(self, index: int, rows: int, columns: int, k, v) -> None:
        old = self.buffers[index]
        if old is not None:
            have_rows, have_cols = old[0].shape[0], old[0].shape[2]
            if rows <= have_rows and columns <= have_cols:
                return
            if rows > have_rows:
                rows = max(rows, math.ceil(have_rows * GROWTH))
            if columns > have_cols:
                columns = max(columns, math.ceil(have_cols * GROWTH))
        keys = k.new_zeros((rows, k.shape[1], columns, k.shape[3]))
        values = v.new_zeros((rows, v.shape[1], columns, v.shape[3]))
        if old is not None:  # what the rows hold so far (columns past the longest row are stale)
            n, used = min(old[0].shape[0], rows), min(max((s.length for s in self.sessions), default=0), old[0].shape[2])
            keys[:n, :, :used] = old[0][:n, :, :used]
            values[:n, :, :used] = old[1][:n, :, :used]
        self.buffers[index] = [keys, values]

    def view(self, index: int, at: int):
        """Layer ``index``'s cached keys and values, columns ``0:at`` of every row (views, or empty)."""
        import torch

        if self.buffers is None or self.buffers[index] is None or at == 0:
            return torch.empty(0), torch.empty(0)
        keys, values = self.buffers[index]
        n = len(self.sessions)
        return keys[:n, :, :at], values[:n, :, :at]

    def write(self, index: int, at: int, new_keys, new_values):
        """Store a pass's new keys and values at columns ``at:`` of layer ``index``; the layer's keys and values so far."""
        n, q = new_keys.shape[0], new_keys.shape[2]
        if self.buffers is None:
            self.buffers = [None] * len(self.backend.model.get_decoder().layers)
        self._reserve_layer(index, n, at + q, new_keys, new_values)
        keys, values = self.buffers[index]
        keys[:n, :, at : at + q] = new_keys
        values[:n, :, at : at + q] = new_values
        return keys[:n, :, : at + q], values[:n, :, : at + q]

    def settle(self, at: int, plans: Sequence[dict[str, Any]]) -> None:
        """After a pass written at column ``at``: move each row's pending tokens to the end of its own columns."""
        for session, plan in zip(self.sessions, plans, strict=True):
            start, pending = plan["start"], plan["pending"]
            if pending and start != at:
                b = session.row
                for keys, values in self.buffers:
                    # clone: the source and the destination overlap when the row is almost as long as the longest
                    keys[b, :, start : start + pending] = keys[b, :, at : at + pending].clone()
                    values[b, :, start : start + pending] = values[b, :, at : at + pending].clone()
            session.length = start + pending
            session.tokens_read += pending
            session.pending = []

    # -- shared beginnings ------------------------------------------------------------------------------------------

    @_inference
    def share_prefix(self, plans: Sequence[dict[str, Any]]) -> None:
        """Read the beginning that fresh rows have in common once, and copy its cache into each of their rows.

        Fresh rows (nothing cached yet) whose pending token ids begin the same
        way (the same instructions, no persona before them), with each other or
        with a beginning read earlier in this group (participants joining
        later), are read once up to the end of that common beginning. The ids
        are those each session reads anyway, at the same positions, so its
        numbers are its own.
        """
        import torch
        from transformers import DynamicCache

        from .forward import cache_layers, decode

        fresh = [b for b, p in enumerate(plans) if p["start"] == 0 and p["pending"] > 0]
        if not fresh:
            return
        reads = [plans[b]["feed"][: plans[b]["pending"]] for b in fresh]
        common = _common(reads)
        remembered = _common([self.prefix[0], *reads]) if self.prefix is not None else 0
        if remembered >= SHARED_PREFIX:
            common = remembered
        elif len(fresh) >= 2 and common >= SHARED_PREFIX:
            model = self.backend.model
            device = next(model.parameters()).device
            cache = DynamicCache()
            ids = reads[0][:common]
            positions = torch.arange(common, device=device)[None]
            with torch.inference_mode():
                hidden = decode(model.get_decoder(), cache, torch.tensor([ids], device=device), positions)
            self.prefix = (ids, cache_layers(cache), hidden[0])
        else:
            return
        _, layers, hidden = self.prefix
        self._reserve(len(self.sessions), common, layers)
        for b in fresh:
            session, plan = self.sessions[b], plans[b]
            for (keys, values), (k, v) in zip(self.buffers, layers, strict=True):
                keys[b, :, :common] = k[0, :, :common]
                values[b, :, :common] = v[0, :, :common]
            session.length = common
            session.tokens_read += common
            session.last_hidden = hidden[common - 1 : common]
            plan["start"], plan["pending"] = common, plan["pending"] - common
            plan["feed"], plan["positions"] = plan["feed"][common:], plan["positions"][common:]
            plan["blocks"] = [(first - common, last - common) for first, last in plan["blocks"]]


def _common(seqs: Sequence[Sequence[int]]) -> int:
    """The length of the longest common beginning of ``seqs``."""
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def _group_of(backend: HFBackend, sessions: Sequence[HFSession]) -> Group:
    """The group these sessions advance in: theirs, with newcomers joined and absent members taken out."""
    group = next((s.group for s in sessions if s.group is not None), None) or Group(backend)
    here = {id(s) for s in sessions}
    for member in list(group.sessions):
        if id(member) not in here:  # not asked this trial: it keeps its cache and may read on later
            member.group.leave(member, keep=True)
    for s in sessions:
        if s.closed:
            raise ModelError(f"{s.key or 'a simulated transcript'}: the session was closed")
        if s.group is not group:
            if s.group is not None:  # in another group: take its cache along
                s.group.leave(s, keep=True)
            group.join(s)
    return group


def options_pass(backend: HFBackend, sessions: Sequence[HFSession], options: Sequence[Sequence[str]]) -> list[list[float]]:
    """Every session's pending text and options in one batched forward pass over their group's cache.

    Returns each session's option log-probabilities (natural log, summed over
    each option's tokens and its closing text), in the order given.
    Afterwards each session's row holds its cache plus its pending tokens; the
    options leave no trace.
    """
    import torch
    from transformers import DynamicCache

    from .forward import block_causal_mask, decode, project

    group = _group_of(backend, sessions)
    asked = {id(s): list(o) for s, o in zip(sessions, options, strict=True)}
    plans = [s.step_plan(asked[id(s)]) for s in group.sessions]  # in row order
    model = backend.model
    decoder = model.get_decoder()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    group.share_prefix(plans)
    rows = len(plans)
    at = max(p["start"] for p in plans)  # columns in use: the new tokens are written after them
    q = max(len(p["feed"]) for p in plans)
    input_ids = torch.full((rows, q), backend.pad_id, dtype=torch.long)
    position_ids = torch.zeros((rows, q), dtype=torch.long)
    masks = []
    blocked = torch.finfo(dtype).min
    for b, p in enumerate(plans):
        n = len(p["feed"])
        input_ids[b, :n] = torch.tensor(p["feed"], dtype=torch.long)
        position_ids[b, :n] = torch.tensor(p["positions"], dtype=torch.long)
        blocks = [(at + p["pending"], first, last) for first, last in p["blocks"]]
        mask = block_causal_mask(at, q, blocks, dtype, pending=p["pending"])
        mask[:, p["start"] : at] = blocked  # this row's columns end at its start: the rest is another row's length
        for i in range(n, q):  # a padding query reads only itself: never all-blocked, never read by anyone
            mask[i, :] = blocked
            mask[i, at + i] = 0
        masks.append(mask)
    mask = torch.stack(masks).unsqueeze(1)
    cache = DynamicCache()
    cache.layers = [_columns_class()(group, index, at) for index in range(len(decoder.layers))]
    with torch.inference_mode():
        hidden = decode(decoder, cache, input_ids.to(device), position_ids.to(device), mask.to(device))
        states, targets, spans = [], [], []
        for b, (s, p) in enumerate(zip(group.sessions, plans, strict=True)):
            if p["pending"]:
                s.last_hidden = hidden[b, p["pending"] - 1 : p["pending"]]
            begin = len(states)
            states += [s.last_hidden[0]] * len(p["tokens"])
            states += [hidden[b, first + k] for first, last in p["blocks"] for k in range(last - first)]
            targets += [t[0] for t in p["tokens"]] + p["targets"]
            spans.append(begin)
        lps = project(model, torch.stack(states), torch.tensor(targets, device=device)).tolist()
        group.settle(at, plans)
    out = {}
    for s, p, begin in zip(group.sessions, plans, spans, strict=True):
        tokens = p["tokens"]
        mine, k, values = lps[begin:], len(tokens), []
        for j, t in enumerate(tokens):
            values.append(mine[j] + math.fsum(mine[k : k + len(t) - 1]))
            k += len(t) - 1
        out[id(s)] = values
    return [out[id(s)] for s in sessions]
