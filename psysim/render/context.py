"""Context fitting: which oldest trials a model's context forces out of a prompt.

A prompt longer than a model's context is either an error (``scoring.context:
error``, the default) or shortened by dropping its oldest whole trials
(``drop_oldest``; :meth:`psysim.data.transcripts.Transcript.without_first` says
what a trial is and what is kept). The decision is made here, once, for
``psysim run`` (with the loaded backend), ``psysim render`` (which shows the
shortened text) and ``psysim validate`` (which counts, before any model loads,
how many transcripts would not fit and how many responses would be dropped,
using only the model's tokenizer where the model is on this machine).
Tokens are always counted as the model reads them, never estimated from
characters: a character can be several tokens (bytes of non-ASCII text in
byte-level BPE).
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, Problem, PsysimError
from ..files import display_path

__all__ = [
    "ContextCheck",
    "ContextCount",
    "TokenCounter",
    "check_context",
    "check_counts",
    "context_counts",
    "drop_oldest_to_fit",
    "fit_prompt",
    "token_counter",
]

#: ``count(text, spans, add_special_tokens) -> tokens``, as a backend's ``count_tokens``.
Count = Callable[..., int]


def fit_prompt(exp, pid: str, condition: str, fmt: str, model: str, *, limit: int | None, count: Count):
    """``(prompt, dropped)``: the prompt ``model`` reads, its oldest trials dropped if its context demands it.

    Follows the experiment's ``scoring.context`` policy: ``error`` raises a
    :class:`~psysim.errors.ModelError` naming the participant, the length and
    the context; ``drop_oldest`` drops the fewest oldest trials that make it
    fit (an error if even the last trial alone does not fit).
    """
    prompt = exp.render(pid, condition, format=fmt, model=model)
    if not limit:
        return prompt, 0
    length = count(prompt.text, prompt.spans, fmt == "raw")
    if length <= limit:
        return prompt, 0
    if exp.config.context_policy == "error":
        raise ModelError(
            f"participant {pid}'s transcript ({condition}, {fmt}) is {length} tokens, longer than the context of "
            f"model {model!r} ({limit} tokens)",
            [
                Problem(
                    "set `scoring: {context: drop_oldest}` in the experiment file to drop the oldest trials",
                    file=display_path(exp.config.path),
                )
            ],
        )
    prompt, dropped, length = drop_oldest_to_fit(exp, pid, condition, fmt, model, limit, count, tokens=length)
    if length > limit:
        raise ModelError(
            f"participant {pid}: even the last trial alone does not fit the context of model {model!r} ({limit} tokens)"
        )
    return prompt, dropped


def drop_oldest_to_fit(
    exp, pid: str, condition: str, fmt: str, model: str | None, limit: int, count: Count, *, tokens: int | None = None
):
    """``(prompt, dropped, tokens)``: the prompt with the fewest oldest trials dropped so that it fits ``limit``.

    For a prompt already known not to fit whole. Persona and instructions are
    kept; ``count(text, spans, add_special_tokens)`` counts tokens as the model
    reads them. Token count grows with kept trials, so the search is binary.
    ``tokens > limit`` when even the last trial alone does not fit (then the
    last trial is what is returned: never an empty transcript). The search
    interpolates on characters and falls back to bisection, so it is exact
    (the fewest trials) in a handful of counts. ``tokens``: the whole
    prompt's length where the caller has counted it already (the longest
    count of all: not done twice).
    """

    def render(k):
        return exp.render(pid, condition, format=fmt, model=model, drop_oldest=k)

    def length(p):
        return count(p.text, p.spans, fmt == "raw")

    transcript = exp.transcript(pid)
    n = len(transcript.responses)
    starts = transcript.trial_starts()
    # Characters removed by dropping k trials; tokens per character are nearly constant within a transcript, so
    # interpolating on characters finds the cut in a few exact counts instead of a bisection's log2(n).
    removed = [starts[k] - starts[0] for k in range(n)]
    lo, tokens_lo = 0, tokens if tokens is not None else length(render(0))  # known not to fit
    hi = n - 1
    fitted = render(hi)
    tokens_hi = length(fitted)
    if tokens_hi > limit or hi <= lo + 1:
        return fitted, hi, tokens_hi
    for step in itertools.count():
        if hi - lo <= 1:
            break
        if step < 4 and tokens_lo > tokens_hi:
            share = (tokens_lo - limit) / (tokens_lo - tokens_hi)
            target = removed[lo] + share * (removed[hi] - removed[lo])
            k = bisect.bisect_left(removed, target, lo + 1, hi)
            k = min(max(k, lo + 1), hi - 1)
        else:
            k = (lo + hi) // 2  # a guaranteed halving when interpolation is slow to converge
        prompt = render(k)
        tokens = length(prompt)
        if tokens <= limit:
            hi, tokens_hi, fitted = k, tokens, prompt
        else:
            lo, tokens_lo = k, tokens
    return fitted, hi, tokens_hi


@dataclass
class TokenCounter:
    """A model's tokenizer and context length, without its weights (for ``validate`` and ``render``)."""

    name: str
    max_length: int | None
    reader: object  # psysim.backends.encoding.TokenReader

    def count_tokens(self, text: str, spans=(), add_special_tokens: bool = True) -> int:
        """Tokens the model reads for ``text`` (the backend's rule, :mod:`psysim.backends.encoding`)."""
        return len(self.reader.encode(text, spans, add_special_tokens).ids)


def token_counter(model, base: Path) -> tuple[TokenCounter | None, str]:
    """``(counter, "")`` for a ``models:`` entry whose files are on this machine, else ``(None, why not)``.

    Loads only the tokenizer and the config (never the weights, never the network).
    """
    if model.backend == "mock":
        return None, "the mock backend has no context limit"
    from ..registry import resolve

    try:
        resolved = resolve(model.source, base)
    except ModelError as exc:  # not on this machine: say so in one clause (the run gives the whole message)
        return None, re.split(r" \(|; known", exc.message)[0]
    try:
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as tlog

        from ..backends.encoding import TokenReader

        tlog.set_verbosity_error()
        folder, kwargs = resolved.pretrained_args()
        trust = {"trust_remote_code": bool(getattr(model, "trust_remote_code", False))}
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs, **trust)
        config = AutoConfig.from_pretrained(folder, **kwargs, **trust)
    except Exception as exc:  # a broken folder is the run's error to report in full; here it only means "not checked"
        return None, f"cannot read its tokenizer ({type(exc).__name__})"
    limit = getattr(config, "max_position_embeddings", None)
    return TokenCounter(model.name, limit, TokenReader(tokenizer)), ""


@dataclass(frozen=True)
class ContextCount:
    """Per study × condition × model × format: transcripts that do not fit the context and responses dropped."""

    study: str
    condition: str
    model: str
    format: str
    transcripts: int
    too_long: int
    responses: int
    dropped: int
    unfittable: int = 0  # transcripts whose last trial alone does not fit

    def __str__(self) -> str:
        where = f"{self.study} · {self.condition} · {self.model} ({self.format})"
        if not self.too_long:
            return f"{where}: all {self.transcripts} transcripts fit"
        text = f"{where}: {self.too_long} of {self.transcripts} transcripts longer than the context"
        if self.dropped:
            text += f"; {self.dropped} of {self.responses} responses dropped (oldest trials)"
        if self.unfittable:
            text += f"; {self.unfittable} cannot fit even their last trial"
        return text


def context_counts(exp, counters: dict[str, TokenCounter], participants=None) -> list[ContextCount]:
    """What the context policy does to every prompt of every model in ``counters``, before any model loads.

    With ``scoring.context: drop_oldest`` it counts the responses each model
    would not see; with ``error`` it counts the transcripts the run would stop at.
    """
    cfg = exp.config
    pids = [p for p in (participants or exp.participants) if p in exp.transcripts]
    out = []
    for model in cfg.models:
        counter = counters.get(model.name)
        if counter is None or not counter.max_length:
            continue
        for fmt in model.formats:
            for cond in cfg.conditions:
                per: dict[str, list[int]] = {}
                for pid in pids:
                    if cond not in exp.conditions_for(pid):
                        continue  # a study without profiles is scored without a persona only
                    transcript = exp.transcript(pid)
                    row = per.setdefault(transcript.experiment, [0, 0, 0, 0, 0])
                    row[0] += 1
                    row[2] += len(transcript.responses)
                    prompt = exp.render(pid, cond.name, format=fmt, model=model.name)
                    whole = counter.count_tokens(prompt.text, prompt.spans, fmt == "raw")
                    if whole <= counter.max_length:
                        continue
                    row[1] += 1
                    if cfg.context_policy == "drop_oldest":
                        _, dropped, tokens = drop_oldest_to_fit(
                            exp, pid, cond.name, fmt, model.name, counter.max_length, counter.count_tokens, tokens=whole
                        )
                        row[3] += dropped
                        row[4] += tokens > counter.max_length
                for study, (n_t, long, n_r, dropped, unfit) in sorted(per.items()):
                    out.append(ContextCount(study, cond.name, model.name, fmt, n_t, long, n_r, dropped, unfit))
    return out


def check_counts(exp, counts: list[ContextCount]) -> None:
    """Raise what the run would raise: a transcript too long under ``error``, or one that cannot fit at all."""
    problems = []
    for c in counts:
        if c.too_long and exp.config.context_policy == "error":
            problems.append(
                Problem(
                    f"{c.too_long} of {c.transcripts} transcripts of study {c.study} ({c.condition}, {c.format}) are longer "
                    f"than the context of model {c.model!r}; set `scoring: {{context: drop_oldest}}` to drop their oldest trials",
                    file=display_path(exp.config.path),
                )
            )
        elif c.unfittable:
            problems.append(
                Problem(
                    f"{c.unfittable} transcripts of study {c.study} ({c.condition}, {c.format}) do not fit the context of "
                    f"model {c.model!r} even with only their last trial",
                    file=display_path(exp.config.path),
                )
            )
    if problems:
        raise PsysimError("some transcripts do not fit a model's context", problems)


@dataclass
class ContextCheck:
    """What ``psysim validate`` says about contexts: counts per model that could be checked, and why others were not."""

    counts: list[ContextCount]
    unchecked: dict[str, str]  # model name -> why its context was not checked

    def lines(self) -> list[str]:
        """Per model and format: one line if every transcript fits, else one per study × condition that does not."""
        out = []
        groups: dict[tuple[str, str], list[ContextCount]] = {}
        for c in self.counts:
            groups.setdefault((c.model, c.format), []).append(c)
        for (model, fmt), counts in groups.items():
            long = [c for c in counts if c.too_long]
            if not long:
                n = sum(c.transcripts for c in counts)
                out.append(f"{model} ({fmt}): all {n} transcripts fit its context")
            out += [str(c) for c in long]
        out += [f"{name}: not checked ({why})" for name, why in self.unchecked.items()]
        return out


def check_context(exp) -> ContextCheck:
    """Count, before any model loads, what every model's context does to every prompt (see :func:`context_counts`).

    Raises what the run would raise (a transcript too long under ``error``,
    one that cannot fit at all under ``drop_oldest``).
    """
    counters, unchecked = {}, {}
    for model in exp.config.models:
        counter, why = token_counter(model, exp.config.folder)
        if counter is None:
            if model.backend != "mock":
                unchecked[model.name] = why
        elif not counter.max_length:
            unchecked[model.name] = "its config states no context length"
        else:
            counters[model.name] = counter
    counts = context_counts(exp, counters)
    check_counts(exp, counts)
    return ContextCheck(counts, unchecked)
